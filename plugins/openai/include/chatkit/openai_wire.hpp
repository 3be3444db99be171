// What chatkit::openai_provider (blocking, over cpp-httplib) and chatkit::async_openai_provider
// (over chatkit::http_client) share: the options, the request body and headers, the reading of a
// chat.completion.chunk stream, and the mapping of upstream errors. Wire format: OpenAI's Chat
// Completions API reference (streaming chunks, errors, retry headers) and the WHATWG SSE spec.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/upstream_health.hpp"
#include "chatkit/sse.hpp"

#include <nlohmann/json.hpp>
#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct openai_options {
    std::string base_url = "https://api.openai.com/v1";
    std::string api_key{}; // sent upstream only; never logged, never put in an error message
    // Asked for the key before each call instead of `api_key`, when set: a key that rotates, e.g.
    // from Secrets Manager (chatkit/aws/secrets_manager.hpp). Its error fails the call as it is
    // and counts against health(); it must be safe from any thread and cheap (cache what it fetches).
    std::function<result<std::string>()> api_key_source{};
    // Told the key the upstream refused with HTTP 401, so that a key source can read its key again
    // early (cached_secret::expire). Called on the calling thread; must not block.
    std::function<void(const std::string& rejected_key)> on_key_rejected{};
    std::string organization{}; // OpenAI-Organization header, when set
    std::string project{};      // OpenAI-Project header, when set
    std::string model = "gpt-4o-mini";
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{60'000}; // the longest silence while waiting for bytes
    std::chrono::milliseconds deadline{120'000};    // the whole call, retries included
    int max_retries = 2;
    // Told of each failed attempt that will be retried (retry_policy::on_retry): e.g. to count
    // retries by error code. Called on the calling thread or loop; it must be cheap.
    std::function<void(const upstream_failure&)> on_retry{};
    std::size_t max_idle_connections = 64;
    // Azure OpenAI: base_url https://RESOURCE.openai.azure.com, the `api-key` header, and
    // /openai/deployments/{deployment}/chat/completions?api-version=...
    std::string azure_deployment{};
    std::string azure_api_version = "2024-10-21";
};

namespace detail {

class openai_wire {
public:
    // Throws std::invalid_argument for a base URL it cannot use (a start-up error).
    explicit openai_wire(openai_options o) : options(std::move(o)) {
        const auto scheme_end = options.base_url.find("://");
        if (scheme_end == std::string::npos) throw std::invalid_argument("OpenAI base URL must start with http:// or https://");
        const auto scheme = options.base_url.substr(0, scheme_end);
        if (scheme != "http" && scheme != "https") throw std::invalid_argument("OpenAI base URL must start with http:// or https://");
        const auto path_start = options.base_url.find('/', scheme_end + 3);
        origin = options.base_url.substr(0, path_start);
        std::string prefix = path_start == std::string::npos ? "" : options.base_url.substr(path_start);
        while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
        path = options.azure_deployment.empty() ? prefix + "/chat/completions"
                                                : prefix + "/openai/deployments/" + options.azure_deployment +
                                                      "/chat/completions?api-version=" + options.azure_api_version;
        if (origin.size() <= scheme_end + 3) throw std::invalid_argument("OpenAI base URL has no host");
    }

    openai_options options;
    std::string origin; // scheme://host[:port]
    std::string path;   // the chat completions path on that origin
    upstream_health health;

    // The key for this call: the key source's answer when there is one.
    [[nodiscard]] result<std::string> key() const {
        return options.api_key_source ? options.api_key_source() : result<std::string>{options.api_key};
    }

    // The request's headers, as (name, value) pairs for either client.
    [[nodiscard]] std::vector<std::pair<std::string, std::string>> request_headers(const chat_request& r, bool streaming,
                                                                                   const std::string& key) const {
        std::vector<std::pair<std::string, std::string>> h;
        h.emplace_back("Content-Type", "application/json");
        h.emplace_back("Accept", streaming ? "text/event-stream" : "application/json");
        if (!options.azure_deployment.empty()) {
            if (!key.empty()) h.emplace_back("api-key", key);
        } else if (!key.empty()) h.emplace_back("Authorization", "Bearer " + key);
        if (!options.organization.empty()) h.emplace_back("OpenAI-Organization", options.organization);
        if (!options.project.empty()) h.emplace_back("OpenAI-Project", options.project);
        if (!r.request_id.empty()) h.emplace_back("X-Request-ID", r.request_id);
        if (!r.traceparent.empty()) h.emplace_back("traceparent", r.traceparent);
        return h;
    }

    // The request body, written as text (chatkit/json_text.hpp): the same fields as a tree would
    // hold, without building one per call. A message's extra fields and the request's
    // extensions are relayed as the client sent them; where they name a field written here,
    // the extra field wins in a message and chatkit's own value wins in the request.
    std::string request_body(const chat_request& r, bool streaming) const {
        std::string out;
        out.reserve(256 + r.messages.size() * 64);
        out += R"({"model":)";
        append_json_string(out, r.model.empty() ? options.model : r.model);
        out += R"(,"messages":[)";
        for (std::size_t i = 0; i < r.messages.size(); ++i) {
            const auto& m = r.messages[i];
            const nlohmann::json* extra = m.extra.is_object() && !m.extra.empty() ? &m.extra : nullptr;
            auto extra_field = [extra](const char* key) -> const nlohmann::json* {
                if (!extra) return nullptr;
                const auto it = extra->find(key);
                return it == extra->end() ? nullptr : &*it;
            };
            out += i ? R"(,{"role":)" : R"({"role":)";
            if (const auto* role = extra_field("role")) append_json(out, *role);
            else append_json_string(out, to_string(m.role));
            out += R"(,"content":)";
            if (const auto* content = extra_field("content")) append_json(out, *content);
            else append_json_string(out, m.content);
            if (extra)
                for (const auto& [key, value] : extra->items()) {
                    if (key == "role" || key == "content") continue;
                    append_member(out, key, value);
                }
            out += '}';
        }
        out += ']';
        const bool temperature = r.temperature.has_value();
        const bool completion_tokens = r.extensions.is_object() && r.extensions.contains("max_completion_tokens");
        const bool max_tokens = r.max_tokens && !completion_tokens;
        const bool user = r.user_id != anonymous_user;
        if (r.extensions.is_object())
            for (const auto& [key, value] : r.extensions.items()) {
                if (key == "model" || key == "messages" || (temperature && key == "temperature") || (max_tokens && key == "max_tokens") ||
                    (user && key == "user") || (streaming && (key == "stream" || key == "stream_options")))
                    continue;
                append_member(out, key, value);
            }
        if (temperature) append_member(out, "temperature", nlohmann::json(*r.temperature));
        if (max_tokens) {
            out += R"(,"max_tokens":)";
            append_json_int(out, *r.max_tokens);
        }
        if (user) {
            out += R"(,"user":)";
            append_json_string(out, r.user_id);
        }
        if (streaming) out += R"(,"stream":true,"stream_options":{"include_usage":true})";
        out += '}';
        return out;
    }

    // Reads a chat.completion.chunk stream into a completion, passing each text
    // delta on as it arrives.
    struct stream_reader {
        const delta_sink& sink;
        completion c{};
        std::optional<std::string> broken{}; // why the stream cannot be trusted
        bool done = false;                   // [DONE] seen
        bool finished = false;               // a finish_reason seen (completion's own default is "stop")
        bool delivered = false;              // a delta reached the sink
        bool client_gone = false;            // the sink said stop
        nlohmann::json tool_calls = nlohmann::json::array();
        // Where tool calls' pieces go as they arrive; none: they reach the client whole, at the end.
        const tool_call_sink* tool_sink = nullptr;
        std::optional<std::size_t> live_call{}; // the index of the call whose pieces were passed on last

        // Each chunk is read with simdjson, without a tree (see parse_answer); tool-call
        // fragments, rare and merged across chunks, become nlohmann values.
        void operator()(const sse_message& m) {
            if (broken || done || client_gone) return;
            if (m.data == "[DONE]") return void(done = true);
            json_reader reader{m.data.size()};
            simdjson::dom::element doc;
            simdjson::dom::object j;
            if (reader.parser().parse(m.data).get(doc) || doc.get_object().get(j))
                return void(broken = "upstream sent a malformed stream chunk");
            if (const auto e = j["error"]; !e.error() && !e.is_null()) {
                std::string_view message;
                if (e["message"].get_string().get(message)) message = "unknown";
                return void(broken = "upstream error mid-stream: " + (e.is_object() ? std::string{message} : simdjson::minify(e)));
            }
            if (std::string_view model; !j["model"].get_string().get(model)) c.model = model;
            if (simdjson::dom::object usage; !j["usage"].get_object().get(usage)) {
                c.usage.prompt_tokens = token_count(usage["prompt_tokens"]);
                c.usage.completion_tokens = token_count(usage["completion_tokens"]);
                read_usage_details(usage, c.usage);
            }
            simdjson::dom::array choices;
            if (j["choices"].get_array().get(choices)) return;
            for (const auto item : choices) {
                simdjson::dom::object choice;
                if (item.get_object().get(choice)) continue;
                if (std::int64_t index = 0; !choice["index"].get_int64().get(index) && index != 0) continue; // we ask for one choice
                if (std::string_view reason; !choice["finish_reason"].get_string().get(reason)) {
                    c.finish_reason = reason;
                    finished = true;
                }
                simdjson::dom::object delta;
                if (choice["delta"].get_object().get(delta)) continue;
                if (simdjson::dom::array calls; !delta["tool_calls"].get_array().get(calls))
                    merge_tool_calls(nlohmann::json::parse(simdjson::minify(calls), nullptr, false));
                if (std::string_view text; !delta["content"].get_string().get(text) && !text.empty()) {
                    c.content += text;
                    delivered = true;
                    if (!sink(text)) client_gone = true;
                }
            }
        }

        static constexpr std::size_t max_tool_calls = 128;

        // Tool-call fragments carry only an index after the first; arguments are concatenated.
        void merge_tool_calls(const nlohmann::json& calls) {
            for (const auto& call : calls) {
                if (!call.is_object()) continue;
                // The index names one of the calls; an upstream's bogus one must not make us
                // build a million empty calls, nor throw.
                std::size_t index = 0;
                if (const auto i = call.find("index"); i != call.end() && i->is_number_unsigned()) index = i->get<std::size_t>();
                else if (i != call.end() && !i->is_null()) continue;
                if (index >= max_tool_calls) continue;
                while (tool_calls.size() <= index)
                    tool_calls.push_back({{"id", ""}, {"type", "function"}, {"function", {{"name", ""}, {"arguments", ""}}}});
                auto& merged = tool_calls[index];
                if (call.contains("id") && call["id"].is_string()) merged["id"] = call["id"];
                if (call.contains("type") && call["type"].is_string()) merged["type"] = call["type"];
                std::string fragment;
                if (auto f = call.find("function"); f != call.end() && f->is_object()) {
                    if (f->contains("name") && (*f)["name"].is_string()) merged["function"]["name"] = (*f)["name"];
                    if (f->contains("arguments") && (*f)["arguments"].is_string()) {
                        fragment = (*f)["arguments"].get<std::string>();
                        merged["function"]["arguments"] = merged["function"]["arguments"].get<std::string>() + fragment;
                    }
                }
                if (tool_sink) pass_on(index, merged, std::move(fragment));
            }
        }

        // A call's piece to the client. Its first piece names it (OpenAI sends id and name first);
        // pieces of an earlier call after a later one's cannot be shown in order (see
        // tool_call_delta), which OpenAI never does, so the stream is refused rather than garbled.
        void pass_on(std::size_t index, const nlohmann::json& merged, std::string fragment) {
            if (live_call && index < *live_call) return void(broken = "upstream sent pieces of its tool calls out of order");
            tool_call_delta piece{.index = index, .arguments = std::move(fragment)};
            if (!live_call || index != *live_call) {
                piece.id = merged["id"].get<std::string>();
                piece.name = merged["function"]["name"].get<std::string>();
            }
            live_call = index;
            delivered = true;
            if (!(*tool_sink)(piece)) client_gone = true;
        }
    };

    // A stream that ended: whole, truncated, or broken (the reader's verdict), as a completion.
    result<completion, upstream_failure> finish_stream(stream_reader& reader, const std::string& key) const {
        if (reader.broken)
            return upstream_failure{
                {error_kind::upstream, redact(*reader.broken, key), "upstream_error"}, !reader.delivered, {}, reader.delivered};
        if (!reader.done && !reader.finished)
            return upstream_failure{{error_kind::upstream, "upstream stream ended before it finished", "upstream_truncated"},
                                    !reader.delivered,
                                    {},
                                    reader.delivered};
        if (!reader.tool_calls.empty()) reader.c.extra = {{"tool_calls", reader.tool_calls}};
        return std::move(reader.c);
    }

    // Maps an upstream error status to chatkit's kinds, keeping the upstream's message.
    template <class Headers>
    upstream_failure status_failure(int status, const std::string& raw, const Headers& headers, const std::string& key) const {
        if (status == 401 && options.on_key_rejected) options.on_key_rejected(key);
        const auto body = nlohmann::json::parse(raw, nullptr, false);
        const nlohmann::json e = body.is_object() && body.contains("error") && body["error"].is_object() ? body["error"]
                                                                                                         : nlohmann::json::object();
        auto text = [&](const char* key) { return e.contains(key) && e[key].is_string() ? e[key].get<std::string>() : std::string{}; };
        std::string message = redact(text("message"), key);
        if (message.empty()) message = "upstream answered HTTP " + std::to_string(status);

        upstream_failure f{{error_kind::upstream, message, text("code"), text("param")}, false};
        if (status == 400 || status == 422) f.e.kind = error_kind::invalid_request;
        else if (status == 401 || status == 403) {
            f.e.message = "upstream rejected the credentials: " + message;
            f.e.code = "upstream_credentials";
        } else if (status == 404) f.e.kind = error_kind::not_found;
        else if (status == 413) f.e.kind = error_kind::payload_too_large;
        else if (status == 429) {
            f.e.kind = error_kind::rate_limited;
            f.retryable = text("code") != "insufficient_quota" && text("type") != "insufficient_quota";
        } else if (status == 408 || status == 409 || status >= 500) {
            f.e.message = "upstream error (HTTP " + std::to_string(status) + "): " + message;
            f.retryable = true;
        }
        if (f.e.code.empty()) f.e.code = "upstream_" + std::to_string(status);
        f.retry_after = retry_after(headers);
        if (auto should = header(headers, "x-should-retry"); should == "true") f.retryable = true;
        else if (should == "false") f.retryable = false;
        return f;
    }

    template <class Headers>
    static std::string header(const Headers& headers, const char* name) {
        for (const auto& [key, value] : headers)
            if (std::equal(key.begin(), key.end(), name, name + std::strlen(name),
                           [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; }))
                return value;
        return {};
    }

    // retry-after-ms, then retry-after in seconds, as the official OpenAI SDKs read them. HTTP dates are not used.
    template <class Headers>
    static std::optional<std::chrono::milliseconds> retry_after(const Headers& headers) {
        auto number = [](const std::string& text) -> std::optional<double> {
            if (text.empty()) return std::nullopt;
            char* end = nullptr;
            const double v = std::strtod(text.c_str(), &end);
            if (end == text.c_str() || *end != '\0' || !(v >= 0) || v > 1e9) return std::nullopt;
            return v;
        };
        if (auto ms = number(header(headers, "retry-after-ms"))) return std::chrono::milliseconds(static_cast<long>(*ms));
        if (auto s = number(header(headers, "retry-after"))) return std::chrono::milliseconds(static_cast<long>(*s * 1000));
        return std::nullopt;
    }

    // A `chat.completion` body into a completion. simdjson reads it without building a tree:
    // through nlohmann's tree this parse cost a seventh of a relayed request's CPU
    // (docs/performance.md). Only the message's extra fields (tool calls, a refusal), which the
    // completion keeps as nlohmann values, are converted.
    static result<completion, upstream_failure> parse_answer(const std::string& raw) {
        const upstream_failure malformed{{error_kind::upstream, "upstream sent a malformed answer", "upstream_malformed"}, false};
        json_reader reader{raw.size()};
        simdjson::dom::element doc;
        if (reader.parser().parse(raw).get(doc)) return malformed;
        simdjson::dom::object root, choice, message;
        simdjson::dom::array choices;
        if (doc.get_object().get(root) || root["choices"].get_array().get(choices) || choices.at(0).get_object().get(choice) ||
            choice["message"].get_object().get(message))
            return malformed;
        completion c;
        for (const auto field : message) {
            if (field.key == "role") continue;
            if (field.key == "content") {
                if (field.value.is_string()) c.content = std::string_view{field.value};
                continue;
            }
            if (field.value.is_null()) continue;
            if (simdjson::dom::array a; !field.value.get_array().get(a) && a.size() == 0) continue;
            c.extra[std::string{field.key}] = nlohmann::json::parse(simdjson::minify(field.value), nullptr, false);
        }
        if (std::string_view reason; !choice["finish_reason"].get_string().get(reason)) c.finish_reason = reason;
        if (std::string_view model; !root["model"].get_string().get(model)) c.model = model;
        if (simdjson::dom::object usage; !root["usage"].get_object().get(usage)) {
            c.usage.prompt_tokens = token_count(usage["prompt_tokens"]);
            c.usage.completion_tokens = token_count(usage["completion_tokens"]);
            read_usage_details(usage, c.usage);
        }
        return c;
    }

    static void append_member(std::string& out, std::string_view key, const nlohmann::json& value) {
        out += ',';
        append_json_string(out, key);
        out += ':';
        append_json(out, value);
    }

    // A per-thread parser keeps its buffers between answers; one for a rare large answer is
    // dropped with it, so an outlier does not pin megabytes to every loop thread.
    class json_reader {
    public:
        explicit json_reader(std::size_t bytes) {
            if (bytes > reusable_bytes) own_.emplace();
        }
        simdjson::dom::parser& parser() {
            if (own_) return *own_;
            thread_local simdjson::dom::parser shared;
            return shared;
        }

    private:
        static constexpr std::size_t reusable_bytes = 1 << 20;
        std::optional<simdjson::dom::parser> own_{};
    };

    // The cached and reasoning counts inside OpenAI's usage, when the upstream reports them.
    static void read_usage_details(simdjson::dom::object usage, token_usage& u) {
        if (simdjson::dom::object d; !usage["prompt_tokens_details"].get_object().get(d))
            u.cached_tokens = std::min(token_count(d["cached_tokens"]), u.prompt_tokens);
        if (simdjson::dom::object d; !usage["completion_tokens_details"].get_object().get(d))
            u.reasoning_tokens = std::min(token_count(d["reasoning_tokens"]), u.completion_tokens);
    }

    // A token count, 0 when absent or not a count (an upstream's usage is advisory, not fatal).
    static int token_count(simdjson::simdjson_result<simdjson::dom::element> v) {
        std::int64_t n = 0;
        if (v.get_int64().get(n) || n < 0) return 0;
        return static_cast<int>(std::min<std::int64_t>(n, std::numeric_limits<int>::max()));
    }

    // Upstream messages sometimes quote the key they were given; it must not reach a client.
    static std::string redact(std::string text, const std::string& key) {
        if (key.size() < 4) return text;
        for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at)) text.replace(at, key.size(), "[redacted]");
        return text;
    }
};

} // namespace detail
} // namespace chatkit
