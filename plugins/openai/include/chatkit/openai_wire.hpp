// What chatkit::openai_provider (blocking, over cpp-httplib) and chatkit::async_openai_provider
// (over chatkit::http_client) share: the options, the request body and headers, the reading of a
// chat.completion.chunk stream, and the mapping of upstream errors. Wire format: OpenAI's Chat
// Completions API reference (streaming chunks, errors, retry headers) and the WHATWG SSE spec.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/http.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/sse.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct openai_options {
    std::string base_url = "https://api.openai.com/v1";
    std::string api_key{};      // sent upstream only; never logged, never put in an error message
    // Asked for the key before each call instead of `api_key`, when set: a key that rotates, e.g.
    // from Secrets Manager (chatkit/aws/secrets_manager.hpp). Its error fails the call as it is
    // and counts against health(); it must be safe from any thread and cheap (cache what it fetches).
    std::function<result<std::string>()> api_key_source{};
    std::string organization{}; // OpenAI-Organization header, when set
    std::string project{};      // OpenAI-Project header, when set
    std::string model = "gpt-4o-mini";
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{60'000}; // the longest silence while waiting for bytes
    std::chrono::milliseconds deadline{120'000};    // the whole call, retries included
    int max_retries = 2;
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
            path = options.azure_deployment.empty()
                       ? prefix + "/chat/completions"
                       : prefix + "/openai/deployments/" + options.azure_deployment +
                             "/chat/completions?api-version=" + options.azure_api_version;
            if (origin.size() <= scheme_end + 3) throw std::invalid_argument("OpenAI base URL has no host");
        }


    openai_options options;
    std::string origin; // scheme://host[:port]
    std::string path;   // the chat completions path on that origin
    upstream_health health;

    // The key for this call: the key source's answer when there is one.
    [[nodiscard]] result<std::string> key() const { return options.api_key_source ? options.api_key_source() : result<std::string>{options.api_key}; }

    // The request's headers, as (name, value) pairs for either client.
    [[nodiscard]] std::vector<std::pair<std::string, std::string>> request_headers(const chat_request& r, bool streaming, const std::string& key) const {
        std::vector<std::pair<std::string, std::string>> h;
        h.emplace_back("Content-Type", "application/json");
        h.emplace_back("Accept", streaming ? "text/event-stream" : "application/json");
        if (!options.azure_deployment.empty()) {
            if (!key.empty()) h.emplace_back("api-key", key);
        } else if (!key.empty()) h.emplace_back("Authorization", "Bearer " + key);
        if (!options.organization.empty()) h.emplace_back("OpenAI-Organization", options.organization);
        if (!options.project.empty()) h.emplace_back("OpenAI-Project", options.project);
        if (!r.request_id.empty()) h.emplace_back("X-Request-ID", r.request_id);
        return h;
    }

    nlohmann::json request_body(const chat_request& r, bool streaming) const {
        nlohmann::json messages = nlohmann::json::array();
        for (const auto& m : r.messages) {
            nlohmann::json j = {{"role", to_string(m.role)}, {"content", m.content}};
            if (m.extra.is_object())
                for (const auto& [key, value] : m.extra.items()) j[key] = value;
            messages.push_back(std::move(j));
        }
        nlohmann::json body = r.extensions.is_object() ? r.extensions : nlohmann::json::object();
        body["model"] = r.model.empty() ? options.model : r.model;
        body["messages"] = std::move(messages);
        if (r.temperature) body["temperature"] = *r.temperature;
        if (r.max_tokens && !body.contains("max_completion_tokens")) body["max_tokens"] = *r.max_tokens;
        if (r.user_id != anonymous_user) body["user"] = r.user_id;
        if (streaming) {
            body["stream"] = true;
            body["stream_options"] = {{"include_usage", true}};
        }
        return body;
    }

    // Reads a chat.completion.chunk stream into a completion, passing each text
    // delta on as it arrives.
    struct stream_reader {
        const delta_sink& sink;
        completion c{};
        std::optional<std::string> broken{}; // why the stream cannot be trusted
        bool done = false;                   // [DONE] seen
        bool delivered = false;              // a delta reached the sink
        bool client_gone = false;            // the sink said stop
        nlohmann::json tool_calls = nlohmann::json::array();

        void operator()(const sse_message& m) {
            if (broken || done || client_gone) return;
            if (m.data == "[DONE]") return void(done = true);
            const auto j = nlohmann::json::parse(m.data, nullptr, false);
            if (!j.is_object()) return void(broken = "upstream sent a malformed stream chunk");
            if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
                return void(broken = "upstream error mid-stream: " +
                                     (e->is_object() ? e->value("message", std::string{"unknown"}) : e->dump()));
            }
            if (auto model = j.find("model"); model != j.end() && model->is_string()) c.model = *model;
            if (auto usage = j.find("usage"); usage != j.end() && usage->is_object()) {
                c.usage.prompt_tokens = usage->value("prompt_tokens", 0);
                c.usage.completion_tokens = usage->value("completion_tokens", 0);
            }
            const auto choices = j.find("choices");
            if (choices == j.end() || !choices->is_array()) return;
            for (const auto& choice : *choices) {
                if (!choice.is_object() || choice.value("index", 0) != 0) continue; // we ask for one choice
                if (auto reason = choice.find("finish_reason"); reason != choice.end() && reason->is_string())
                    c.finish_reason = *reason;
                const auto delta = choice.find("delta");
                if (delta == choice.end() || !delta->is_object()) continue;
                if (auto calls = delta->find("tool_calls"); calls != delta->end() && calls->is_array()) merge_tool_calls(*calls);
                if (auto text = delta->find("content"); text != delta->end() && text->is_string() && !text->get_ref<const std::string&>().empty()) {
                    c.content += text->get_ref<const std::string&>();
                    delivered = true;
                    if (!sink(text->get_ref<const std::string&>())) client_gone = true;
                }
            }
        }

        // Tool-call fragments carry only an index after the first; arguments are concatenated.
        void merge_tool_calls(const nlohmann::json& calls) {
            for (const auto& call : calls) {
                const auto index = call.value("index", std::size_t{0});
                while (tool_calls.size() <= index) tool_calls.push_back({{"id", ""}, {"type", "function"}, {"function", {{"name", ""}, {"arguments", ""}}}});
                auto& merged = tool_calls[index];
                if (call.contains("id") && call["id"].is_string()) merged["id"] = call["id"];
                if (call.contains("type") && call["type"].is_string()) merged["type"] = call["type"];
                if (auto f = call.find("function"); f != call.end() && f->is_object()) {
                    if (f->contains("name") && (*f)["name"].is_string()) merged["function"]["name"] = (*f)["name"];
                    if (f->contains("arguments") && (*f)["arguments"].is_string())
                        merged["function"]["arguments"] = merged["function"]["arguments"].get<std::string>() + (*f)["arguments"].get<std::string>();
                }
            }
        }
    };

    // A stream that ended: whole, truncated, or broken (the reader's verdict), as a completion.
    result<completion, upstream_failure> finish_stream(stream_reader& reader, const std::string& key) const {
        if (reader.broken) return upstream_failure{{error_kind::upstream, redact(*reader.broken, key), "upstream_error"}, !reader.delivered, {}, reader.delivered};
        if (!reader.done && reader.c.finish_reason.empty())
            return upstream_failure{{error_kind::upstream, "upstream stream ended before it finished", "upstream_truncated"}, !reader.delivered, {}, reader.delivered};
        if (!reader.tool_calls.empty()) reader.c.extra = {{"tool_calls", reader.tool_calls}};
        if (reader.c.finish_reason.empty()) reader.c.finish_reason = "stop";
        return std::move(reader.c);
    }

    // Maps an upstream error status to chatkit's kinds, keeping the upstream's message.
    template <class Headers>
    upstream_failure status_failure(int status, const std::string& raw, const Headers& headers, const std::string& key) const {
        const auto body = nlohmann::json::parse(raw, nullptr, false);
        const nlohmann::json e = body.is_object() && body.contains("error") && body["error"].is_object() ? body["error"] : nlohmann::json::object();
        auto text = [&](const char* key) { return e.contains(key) && e[key].is_string() ? e[key].get<std::string>() : std::string{}; };
        std::string message = redact(text("message"), key);
        if (message.empty()) message = "upstream answered HTTP " + std::to_string(status);

        upstream_failure f{{error_kind::upstream, message, text("code"), text("param")}, false};
        if (status == 400 || status == 422) f.e.kind = error_kind::invalid_request;
        else if (status == 401 || status == 403) {
            f.e.message = "upstream rejected the credentials: " + message;
            f.e.code = "upstream_credentials";
        }
        else if (status == 404) f.e.kind = error_kind::not_found;
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

    result<completion, upstream_failure> parse_answer(const std::string& raw) const {
        const auto j = nlohmann::json::parse(raw, nullptr, false);
        const auto* choice = j.is_object() && j.contains("choices") && j["choices"].is_array() && !j["choices"].empty() &&
                                     j["choices"][0].is_object()
                                 ? &j["choices"][0]
                                 : nullptr;
        if (!choice || !choice->contains("message") || !(*choice)["message"].is_object())
            return upstream_failure{{error_kind::upstream, "upstream sent a malformed answer", "upstream_malformed"}, false};
        const auto& message = (*choice)["message"];
        completion c;
        if (message.contains("content") && message["content"].is_string()) c.content = message["content"];
        for (const auto& [key, value] : message.items())
            if (key != "role" && key != "content" && !value.is_null() && !(value.is_array() && value.empty())) c.extra[key] = value;
        if (choice->contains("finish_reason") && (*choice)["finish_reason"].is_string()) c.finish_reason = (*choice)["finish_reason"];
        if (j.contains("model") && j["model"].is_string()) c.model = j["model"];
        if (auto usage = j.find("usage"); usage != j.end() && usage->is_object()) {
            c.usage.prompt_tokens = usage->value("prompt_tokens", 0);
            c.usage.completion_tokens = usage->value("completion_tokens", 0);
        }
        return c;
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
