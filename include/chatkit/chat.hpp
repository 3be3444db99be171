// The domain: messages, a chat request, a completion and its token usage, with their JSON forms
// (`to_json`/`from_json` found by ADL, so users can (de)serialize them too). What a client may
// send, and how a POST /chat body is checked, is chatkit/chat_body.hpp.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/json_text.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

enum class role { system, user, assistant, tool };

NLOHMANN_JSON_SERIALIZE_ENUM(role, {{role::system, "system"}, {role::user, "user"}, {role::assistant, "assistant"}, {role::tool, "tool"}})

[[nodiscard]] constexpr std::string_view to_string(role r) noexcept {
    switch (r) {
    case role::system: return "system";
    case role::user: return "user";
    case role::assistant: return "assistant";
    case role::tool: return "tool";
    }
    return "user";
}

[[nodiscard]] inline std::optional<role> parse_role(std::string_view s) noexcept {
    if (s == "system") return role::system;
    if (s == "user") return role::user;
    if (s == "assistant") return role::assistant;
    if (s == "tool") return role::tool;
    return std::nullopt;
}

struct message {
    chatkit::role role = role::user;
    std::string content{}; // the text; what stores keep and text-only providers read
    // Fields an OpenAI client sent beyond role and text (tool_calls, tool_call_id, name, or the
    // original content array when it holds images): relayed as-is to an OpenAI upstream.
    nlohmann::json extra{};
    friend bool operator==(const message&, const message&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(message, role, content)

inline constexpr std::string_view anonymous_user = "anonymous";

struct chat_request {
    std::vector<message> messages{};
    std::string model{};                 // empty: the provider's default model
    std::optional<double> temperature{}; // 0–2
    std::optional<int> max_tokens{};     // 1–request_limits::max_tokens
    std::string user_id{anonymous_user};
    bool stream = false;
    bool use_cache = true;    // a client opts out with "cache": false
    std::string request_id{}; // set by the service; a provider forwards it upstream
    // A W3C Trace Context `traceparent` (00-TRACE-PARENT-FLAGS) a provider sends upstream, so
    // that the upstream's spans join the client's trace. Set by the service from the request's
    // header, which a tracing middleware rewrites to name its own span for the upstream call.
    std::string traceparent{};
    // Requested when the client has left or the request's deadline has passed: a blocking provider
    // stops waiting on its upstream and returns. Set by the service.
    std::stop_token stop{};
    // Request fields chatkit does not model (tools, response_format, seed, stop, ...): passed to an
    // upstream that understands them; a provider that cannot honour one refuses the request (400).
    nlohmann::json extensions = nlohmann::json::object();
};

// Token counts as OpenAI reports them: the prompt's count includes its cached tokens, the
// completion's its reasoning tokens. The details are what pricing and usage records need (cached
// input is billed at a lower rate); they appear in JSON only when non-zero, so a provider that
// reports none keeps the plain three-field object.
struct token_usage {
    int prompt_tokens = 0;
    int completion_tokens = 0;
    int cached_tokens = 0;    // of prompt_tokens: read from the provider's prompt cache
    int reasoning_tokens = 0; // of completion_tokens: spent thinking, not shown
    // Saturates: providers clamp each count an upstream reports to an int, so two of them may
    // not fit one.
    [[nodiscard]] int total_tokens() const noexcept {
        const std::int64_t sum = std::int64_t{prompt_tokens} + completion_tokens;
        constexpr std::int64_t most = std::numeric_limits<int>::max(), least = std::numeric_limits<int>::min();
        return static_cast<int>(sum > most ? most : sum < least ? least : sum);
    }
    friend bool operator==(const token_usage&, const token_usage&) = default;
};

inline void to_json(nlohmann::json& j, const token_usage& u) {
    j = {{"prompt_tokens", u.prompt_tokens}, {"completion_tokens", u.completion_tokens}, {"total_tokens", u.total_tokens()}};
    if (u.cached_tokens > 0) j["prompt_tokens_details"] = {{"cached_tokens", u.cached_tokens}};
    if (u.reasoning_tokens > 0) j["completion_tokens_details"] = {{"reasoning_tokens", u.reasoning_tokens}};
}
// The same object as text (chatkit/json_text.hpp), for answers written without a tree.
inline void append_usage(std::string& out, const token_usage& u) {
    out += R"({"prompt_tokens":)";
    append_json_int(out, u.prompt_tokens);
    out += R"(,"completion_tokens":)";
    append_json_int(out, u.completion_tokens);
    out += R"(,"total_tokens":)";
    append_json_int(out, u.total_tokens());
    if (u.cached_tokens > 0) {
        out += R"(,"prompt_tokens_details":{"cached_tokens":)";
        append_json_int(out, u.cached_tokens);
        out += '}';
    }
    if (u.reasoning_tokens > 0) {
        out += R"(,"completion_tokens_details":{"reasoning_tokens":)";
        append_json_int(out, u.reasoning_tokens);
        out += '}';
    }
    out += '}';
}
inline void from_json(const nlohmann::json& j, token_usage& u) {
    j.at("prompt_tokens").get_to(u.prompt_tokens);
    j.at("completion_tokens").get_to(u.completion_tokens);
    if (auto d = j.find("prompt_tokens_details"); d != j.end() && d->is_object()) u.cached_tokens = d->value("cached_tokens", 0);
    if (auto d = j.find("completion_tokens_details"); d != j.end() && d->is_object()) u.reasoning_tokens = d->value("reasoning_tokens", 0);
}

struct completion {
    std::string id{};
    std::string model{};
    std::string content{};
    std::string finish_reason = "stop"; // "stop" | "length" | "content_filter" | ...
    token_usage usage{};
    double latency_ms = 0;
    double time_to_first_token_ms = 0; // streams: when the first delta arrived
    double upstream_ms = 0;            // of latency_ms, the time spent waiting on the provider (0 for a cache hit)
    // When the provider call began (none for a cache hit): where a trace's upstream span starts.
    std::chrono::steady_clock::time_point upstream_started{};
    unix_ms created_at = 0;
    bool cached = false;
    // What the answer cost in USD at the service's prices (chatkit/pricing.hpp): 0 for a cache
    // hit, empty when the model has no price (unpriced, never reported as $0).
    std::optional<double> cost_usd{};
    // Fields of the reply beyond its text (tool_calls, refusal, ...), relayed to OpenAI clients.
    nlohmann::json extra{};
    // Which provider answered, when the service's provider chose among several (a router names
    // its member); empty: the service's provider itself. Told to the client and the log.
    std::string provider{};
};

// One piece of a tool call, streamed as the model produces it. The first piece of a call names
// it (`id`, `name`); every piece may add the next fragment of its JSON `arguments` text. A
// call's pieces come together and calls come in order (index 0, 1, ...), because Anthropic's and
// the Responses API's streams can only show one call at a time. The completion returned at the
// end still lists the whole calls in `extra["tool_calls"]`: what is stored, cached and answered
// to a client that does not stream.
struct tool_call_delta {
    std::size_t index = 0; // which call of the answer
    std::string id{};
    std::string name{};
    std::string arguments{};
};

inline void to_json(nlohmann::json& j, const completion& c) {
    j = {{"id", c.id},
         {"model", c.model},
         {"content", c.content},
         {"finish_reason", c.finish_reason},
         {"usage", c.usage},
         {"latency_ms", c.latency_ms},
         {"created_at", format_rfc3339(c.created_at)},
         {"cached", c.cached},
         {"cost_usd", c.cost_usd ? nlohmann::json(*c.cost_usd) : nlohmann::json(nullptr)}};
}

} // namespace chatkit
