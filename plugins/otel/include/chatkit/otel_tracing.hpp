// A Middleware that traces every request with OpenTelemetry: a server span per request and, when
// the provider was called, a client span for that call carrying the GenAI semantic conventions'
// attributes (gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model,
// gen_ai.response.model, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens,
// gen_ai.response.finish_reasons). A client's W3C `traceparent` makes the server span its child,
// and the upstream call carries a `traceparent` naming the client span, so the upstream's own
// spans join the same trace. Spans go to an otlp_exporter, off the request path.
//
// Message content (prompts and answers) is never recorded: spans carry counts and names only.
#pragma once

#include "chatkit/chat_routes.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/otlp_exporter.hpp"
#include "chatkit/trace_context.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

/// Which traces are recorded (OTEL_TRACES_SAMPLER's choices): a trace begun here is kept with
/// probability `ratio`; with `parent_based`, a trace a client began keeps the client's choice
/// (its sampled flag), so that a trace is recorded whole or not at all.
struct trace_sampler {
    double ratio = 1.0; // 0 (always_off) to 1 (always_on)
    bool parent_based = true;

    [[nodiscard]] bool sample(const std::optional<trace_context>& parent, const trace_id& id) const noexcept {
        if (parent && parent_based) return parent->sampled();
        if (ratio >= 1) return true;
        if (ratio <= 0) return false;
        // The trace id's last 8 bytes against ratio · 2^64, as TraceIdRatioBased does: every
        // process that sees this trace id decides the same way.
        std::uint64_t x = 0;
        for (std::size_t i = 8; i < 16; ++i) x = x << 8 | id[i];
        return static_cast<double>(x) < ratio * 18446744073709551616.0;
    }
};

struct otel_tracing_options {
    trace_sampler sampler{};
    // The paths named in span names and http.route; any other is traced as its method alone,
    // keeping span names low-cardinality. "/history/..." is "/history/{user_id}", a
    // conversation's path its template ("/api/v1/conversations/{id}/stream").
    std::vector<std::string> routes{
        "/chat", "/v1/chat/completions", "/v1/chat", "/v1/messages", "/v1/responses", "/v1/models", "/health", "/ready", "/", "/metrics"};
    // A router's member names, each with its provider's type ("openai", "azure", "anthropic",
    // "gemini", "bedrock"): gen_ai.provider.name names the API that answered, not the member.
    std::map<std::string, std::string, std::less<>> provider_types{};
};

/// Requirements this middleware meets, and why:
///   1. Off the request path: `finish` (after the last byte) builds at most two spans and queues
///      them; encoding and sending happen on the exporter's thread.
///   2. The trace continues across the gateway: `before` rewrites the request's `traceparent` to
///      name the client span, and the service sends that header upstream.
///   3. Nothing private: no prompt, answer or key is ever an attribute.
///   4. An unsampled request costs a random id and a header: it builds no spans.
class otel_tracing {
public:
    struct context {
        bool sampled = false;
        trace_context parent{}; // the client's, when it sent a valid traceparent
        bool has_parent = false;
        trace_id trace{};
        span_id server{}; // this request's span
        span_id client{}; // the upstream call's span, named in the upstream traceparent
        std::chrono::steady_clock::time_point began{};
        std::uint64_t began_unix_ns = 0;
        std::string request_model{}; // from admit: the model asked for
        std::int64_t max_tokens = 0;
    };

    otel_tracing(std::shared_ptr<otlp_exporter> exporter, otel_tracing_options options = {})
        : exporter_(std::move(exporter)), options_(std::move(options)) {}

    std::optional<http_response> before(http_request& req, context& ctx) {
        ctx.began = std::chrono::steady_clock::now();
        ctx.began_unix_ns = unix_ns_now();
        const auto parent = parse_traceparent(req.header("traceparent"));
        ctx.has_parent = parent.has_value();
        if (parent) ctx.parent = *parent;
        ctx.trace = parent ? parent->trace : random_trace_bytes<trace_id>();
        ctx.sampled = options_.sampler.sample(parent, ctx.trace);
        ctx.server = random_trace_bytes<span_id>();
        ctx.client = random_trace_bytes<span_id>();
        req.headers.insert_or_assign("traceparent", format_traceparent(ctx.trace, ctx.client, ctx.sampled ? 1 : 0));
        return std::nullopt;
    }
    void after(const http_request&, http_response&, context&) {}

    std::optional<error> admit(const http_request&, chat_admission& a, context& ctx) {
        if (ctx.sampled) {
            ctx.request_model = a.model;
            ctx.max_tokens = a.max_completion_tokens;
        }
        return std::nullopt;
    }

    void finish(const http_request& req, const response_summary& s, context& ctx) {
        if (!ctx.sampled) return;
        const auto at = [&](std::chrono::steady_clock::time_point t) {
            return ctx.began_unix_ns + static_cast<std::uint64_t>(std::max<std::int64_t>(
                                           0, std::chrono::duration_cast<std::chrono::nanoseconds>(t - ctx.began).count()));
        };
        const std::string_view route = route_of(req.path);
        std::array<span_data, 2> spans;
        std::size_t count = 1;

        span_data& server = spans[0];
        server.trace = ctx.trace;
        server.id = ctx.server;
        if (ctx.has_parent) {
            server.parent = ctx.parent.span;
            server.parent_is_remote = true;
        }
        server.name = route.empty() ? req.method : req.method + " " + std::string{route};
        server.kind = span_kind::server;
        server.start_unix_ns = ctx.began_unix_ns;
        server.end_unix_ns = ctx.began_unix_ns + static_cast<std::uint64_t>(s.duration_ms * 1e6);
        auto& a = server.attributes;
        a.reserve(10);
        a.push_back({"http.request.method", req.method});
        a.push_back({"url.path", req.path});
        if (!route.empty()) a.push_back({"http.route", std::string{route}});
        a.push_back({"http.response.status_code", std::int64_t{s.status}});
        if (!req.remote_addr.empty()) a.push_back({"client.address", req.remote_addr});
        a.push_back({"chatkit.request_id", req.request_id});
        if (!req.caller.team_id.empty()) a.push_back({"chatkit.team_id", req.caller.team_id});
        if (!ctx.request_model.empty()) {
            a.push_back({"gen_ai.request.model", ctx.request_model});
            a.push_back({"chatkit.cached", s.cached});
            if (s.streamed) a.push_back({"chatkit.streamed", true});
            if (s.client_left) a.push_back({"chatkit.client_left", true});
        }
        if (!s.error_code.empty()) a.push_back({"error.type", s.error_code});
        // HTTP's conventions: a server span is an error for a 5xx only (a 4xx is the client's).
        if (s.status >= 500) {
            server.error = true;
            server.status_message = s.error_code;
        }

        if (s.upstream_started != std::chrono::steady_clock::time_point{}) {
            span_data& client = spans[count++];
            client.trace = ctx.trace;
            client.id = ctx.client;
            client.parent = ctx.server;
            const std::string& model = ctx.request_model.empty() ? s.model : ctx.request_model;
            client.name = model.empty() ? std::string{"chat"} : "chat " + model;
            client.kind = span_kind::client;
            client.start_unix_ns = at(s.upstream_started);
            client.end_unix_ns = client.start_unix_ns + static_cast<std::uint64_t>(s.upstream_ms * 1e6);
            auto& c = client.attributes;
            c.reserve(12);
            c.push_back({"gen_ai.operation.name", std::string{"chat"}});
            c.push_back({"gen_ai.provider.name", provider_name(s.provider)});
            if (!model.empty()) c.push_back({"gen_ai.request.model", model});
            if (ctx.max_tokens > 0) c.push_back({"gen_ai.request.max_tokens", ctx.max_tokens});
            if (!s.model.empty()) c.push_back({"gen_ai.response.model", s.model});
            if (s.usage.total_tokens() > 0) {
                c.push_back({"gen_ai.usage.input_tokens", std::int64_t{s.usage.prompt_tokens}});
                c.push_back({"gen_ai.usage.output_tokens", std::int64_t{s.usage.completion_tokens}});
                if (s.usage.cached_tokens > 0) c.push_back({"chatkit.usage.cached_tokens", std::int64_t{s.usage.cached_tokens}});
                if (s.usage.reasoning_tokens > 0) c.push_back({"chatkit.usage.reasoning_tokens", std::int64_t{s.usage.reasoning_tokens}});
            }
            if (!s.finish_reason.empty()) c.push_back({"gen_ai.response.finish_reasons", std::vector<std::string>{s.finish_reason}});
            // The call failed when the answer is an error and it was not the client's doing.
            const bool failed = !s.error_code.empty() && (s.status >= 500 || s.status == 429 || s.status == 200);
            if (failed) {
                c.push_back({"error.type", s.error_code});
                client.error = true;
                client.status_message = s.error_code;
            }
        }
        exporter_->push(std::span{spans.data(), count});
    }

    [[nodiscard]] otlp_exporter& exporter() noexcept { return *exporter_; }

private:
    std::shared_ptr<otlp_exporter> exporter_;
    otel_tracing_options options_;

    static std::uint64_t unix_ns_now() {
        return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    }

    // gen_ai.provider.name's well-known values where chatkit's name differs; a router's member
    // by its type.
    std::string provider_name(std::string_view name) const {
        if (const auto t = options_.provider_types.find(name); t != options_.provider_types.end()) name = t->second;
        if (name == "bedrock") return "aws.bedrock";
        if (name == "gemini") return "gcp.gemini";
        if (name == "azure") return "azure.ai.openai";
        return std::string{name};
    }

    std::string_view route_of(std::string_view path) const {
        for (const auto& r : options_.routes)
            if (path == r) return r;
        if (path.starts_with("/history/")) return "/history/{user_id}";
        if (const auto conversation = conversation_route_of(path); !conversation.empty()) return conversation;
        return {};
    }
};

static_assert(middleware<otel_tracing>);
static_assert(middleware_has_finish<otel_tracing>);
static_assert(middleware_has_admit<otel_tracing>);

} // namespace chatkit
