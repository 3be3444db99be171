// What chatkit::gemini_provider (blocking, over cpp-httplib) and chatkit::async_gemini_provider
// (over chatkit::http_client) share: the options, the generateContent body and headers, the
// reading of an answer and of its event stream (streamGenerateContent?alt=sse), and the mapping
// of Google's error envelope. docs/providers.md ("The Gemini provider") describes the mapping;
// the event stream follows the WHATWG SSE rules (docs/protocols.md §7).
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/sse.hpp"
#include "chatkit/upstream_health.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct gemini_options {
    // The API's origin; /v1beta/models/{model}:generateContent (or :streamGenerateContent) is appended.
    std::string base_url = "https://generativelanguage.googleapis.com";
    std::string api_key{}; // sent as x-goog-api-key only; never logged, never put in an error message
    // Asked for the key before each call instead of `api_key`, when set (a key that rotates); it
    // must be safe from any thread and cheap (cache what it fetches).
    std::function<result<std::string>()> api_key_source{};
    // Told the key the upstream refused (HTTP 401, or Google's 400 API_KEY_INVALID), so that a key source can read its key again
    // early (cached_secret::expire). Called on the calling thread; must not block.
    std::function<void(const std::string& rejected_key)> on_key_rejected{};
    std::string api_version = "v1beta"; // the path's version segment
    std::string model = "gemini-2.5-flash";
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{60'000}; // the longest silence while waiting for bytes
    std::chrono::milliseconds deadline{120'000};    // the whole call, retries included
    int max_retries = 2;
    // Told of each failed attempt that will be retried (retry_policy::on_retry): e.g. to count
    // retries by error code. Called on the calling thread or loop; it must be cheap.
    std::function<void(const upstream_failure&)> on_retry{};
    std::size_t max_idle_connections = 64;
};

namespace detail {

class gemini_wire {
public:
    // Throws std::invalid_argument for a base URL it cannot use (a start-up error).
    explicit gemini_wire(gemini_options o) : options(std::move(o)) {
        const auto scheme_end = options.base_url.find("://");
        if (scheme_end == std::string::npos) throw std::invalid_argument("Gemini base URL must start with http:// or https://");
        const auto scheme = options.base_url.substr(0, scheme_end);
        if (scheme != "http" && scheme != "https") throw std::invalid_argument("Gemini base URL must start with http:// or https://");
        const auto path_start = options.base_url.find('/', scheme_end + 3);
        origin = options.base_url.substr(0, path_start);
        if (origin.size() <= scheme_end + 3) throw std::invalid_argument("Gemini base URL has no host");
        prefix = path_start == std::string::npos ? "" : options.base_url.substr(path_start);
        while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
        if (options.api_version.empty() || !valid_model_id(options.api_version))
            throw std::invalid_argument("Gemini API version must be a plain path segment such as v1beta");
        if (!valid_model_id(model_id(options.model)))
            throw std::invalid_argument("Gemini default model '" + options.model + "' is not a model id");
    }

    gemini_options options;
    std::string origin; // scheme://host[:port]
    std::string prefix; // the base URL's own path, without a trailing slash
    upstream_health health;

    [[nodiscard]] result<std::string> key() const {
        return options.api_key_source ? options.api_key_source() : result<std::string>{options.api_key};
    }

    // The model id sent upstream: the request's (or the default), without the "models/" that
    // Google's resource names carry.
    [[nodiscard]] std::string upstream_model(const chat_request& r) const { return model_id(r.model.empty() ? options.model : r.model); }

    // The method's path on the origin. The model id is a path segment, so it was checked by
    // request_body (letters, digits, '.', '-', '_' only) before this is called.
    [[nodiscard]] std::string path(const std::string& model, bool streaming) const {
        return prefix + "/" + options.api_version + "/models/" + model +
               (streaming ? ":streamGenerateContent?alt=sse" : ":generateContent");
    }

    [[nodiscard]] std::vector<std::pair<std::string, std::string>> request_headers(const chat_request& r, bool streaming,
                                                                                   const std::string& key) const {
        std::vector<std::pair<std::string, std::string>> h;
        h.emplace_back("Content-Type", "application/json");
        h.emplace_back("Accept", streaming ? "text/event-stream" : "application/json");
        if (!key.empty()) h.emplace_back("x-goog-api-key", key);
        if (!r.request_id.empty()) h.emplace_back("X-Request-ID", r.request_id);
        if (!r.traceparent.empty()) h.emplace_back("traceparent", r.traceparent);
        return h;
    }

    // OpenAI request fields with no Gemini counterpart that change nothing about the answer.
    static constexpr std::string_view ignorable_fields[] = {"metadata", "store", "service_tier", "stream_options",
                                                            "max_completion_tokens" /* already in max_tokens */,
                                                            // OpenAI's prompt-cache and abuse-monitoring hints (Codex sends the first)
                                                            "prompt_cache_key", "safety_identifier"};
    // A chat request → a generateContent body, or a 400 naming the field it cannot honour.
    // System messages become systemInstruction's parts; user and assistant turns become contents
    // with the roles "user" and "model". Tool use takes Gemini's form: an assistant message's
    // OpenAI `tool_calls` become `functionCall` parts, `tool` messages `functionResponse` parts
    // (named by the call they answer, as Gemini matches them by name) of one user turn, and
    // function tools `functionDeclarations`.
    [[nodiscard]] result<std::string> request_body(const chat_request& r) const {
        if (!valid_model_id(upstream_model(r)))
            return invalid("a Gemini model id has letters, digits, '.', '-' and '_' only", "model", "invalid_model");
        nlohmann::json system_parts = nlohmann::json::array();
        nlohmann::json contents = nlohmann::json::array();
        std::map<std::string, std::string, std::less<>> call_names; // tool_call id → function name
        bool last_is_results = false;                               // the last content holds functionResponse parts
        for (std::size_t i = 0; i < r.messages.size(); ++i) {
            const auto& m = r.messages[i];
            const std::string at = "messages[" + std::to_string(i) + "]";
            if (m.extra.is_object())
                for (const auto& [key, value] : m.extra.items())
                    if (!value.is_null() && !(key == "tool_calls" && m.role == role::assistant) &&
                        !(key == "tool_call_id" && m.role == role::tool))
                        return invalid("the gemini provider cannot relay '" + key + "' in " + at, at + "." + key, "unsupported_parameter");
            if (m.role == role::tool) {
                const auto id = m.extra.is_object() ? m.extra.find("tool_call_id") : m.extra.end();
                if (!m.extra.is_object() || id == m.extra.end() || !id->is_string())
                    return invalid(at + " is a tool message without a tool_call_id", at + ".tool_call_id", "invalid_type");
                const auto name = call_names.find(id->get_ref<const std::string&>());
                if (name == call_names.end())
                    return invalid(at + " answers no tool call of an earlier assistant message", at + ".tool_call_id", "invalid_value");
                nlohmann::json part = {{"functionResponse", {{"name", name->second}, {"response", {{"result", m.content}}}}}};
                if (last_is_results) contents.back()["parts"].push_back(std::move(part));
                else contents.push_back({{"role", "user"}, {"parts", nlohmann::json::array({std::move(part)})}});
                last_is_results = true;
                continue;
            }
            last_is_results = false;
            const bool calls = m.extra.is_object() && m.extra.contains("tool_calls");
            // Gemini refuses a part with empty text ("empty text parameter").
            if (m.content.empty() && !calls)
                return invalid("Gemini refuses an empty message: " + at + " has no content", at + ".content", "empty_message");
            nlohmann::json parts = nlohmann::json::array();
            if (!m.content.empty()) parts.push_back({{"text", m.content}});
            if (calls) {
                const auto& list = m.extra["tool_calls"];
                if (!list.is_array()) return invalid(at + ".tool_calls must be an array", at + ".tool_calls", "invalid_type");
                for (std::size_t j = 0; j < list.size(); ++j) {
                    const auto& call = list[j];
                    const std::string cat = at + ".tool_calls[" + std::to_string(j) + "]";
                    const auto fn = call.is_object() ? call.find("function") : call.end();
                    if (!call.is_object() || string_field(call, "id").empty() || fn == call.end() || string_field(*fn, "name").empty())
                        return invalid(cat + " needs an id and a function name", cat, "invalid_type");
                    // Gemini takes the arguments as an object; OpenAI carries them as JSON text.
                    const std::string arguments = string_field(*fn, "arguments");
                    auto args = nlohmann::json::parse(arguments.empty() ? std::string{"{}"} : arguments, nullptr, false);
                    if (!args.is_object()) return invalid(cat + ".function.arguments must be a JSON object", cat + ".function.arguments");
                    call_names[string_field(call, "id")] = string_field(*fn, "name");
                    parts.push_back({{"functionCall", {{"name", (*fn)["name"]}, {"args", std::move(args)}}}});
                }
                if (parts.empty()) return invalid(at + " has neither text nor tool calls", at + ".tool_calls", "invalid_value");
            }
            if (m.role == role::system) {
                for (auto& part : parts) system_parts.push_back(std::move(part));
                continue;
            }
            contents.push_back({{"role", m.role == role::user ? "user" : "model"}, {"parts", std::move(parts)}});
        }
        if (contents.empty()) return invalid("a Gemini conversation needs a user message", "messages", "invalid_conversation");

        nlohmann::json body = nlohmann::json::object();
        body["contents"] = std::move(contents);
        if (!system_parts.empty()) body["systemInstruction"] = {{"parts", std::move(system_parts)}};
        nlohmann::json config = nlohmann::json::object();
        if (r.temperature) config["temperature"] = *r.temperature;
        if (r.max_tokens) config["maxOutputTokens"] = *r.max_tokens;
        for (const auto& [key, value] : r.extensions.items()) {
            if (key == "stop" && value.is_string()) config["stopSequences"] = nlohmann::json::array({value});
            else if (key == "stop" && value.is_array()) config["stopSequences"] = value;
            else if (key == "stop" && value.is_null()) continue;
            else if (key == "top_p" && value.is_number()) config["topP"] = value;
            else if (key == "seed" && value.is_number_integer()) config["seed"] = value;
            else if (key == "tools") {
                auto tools = tools_of(value);
                if (!tools) return std::move(tools).error();
                body["tools"] = nlohmann::json::array({{{"functionDeclarations", std::move(tools).value()}}});
            } else if (key == "tool_choice") {
                auto choice = tool_choice_of(value);
                if (!choice) return std::move(choice).error();
                body["toolConfig"] = {{"functionCallingConfig", std::move(choice).value()}};
            } else if (key == "parallel_tool_calls" && value == true) {
                continue; // what Gemini does anyway
            } else if (std::find(std::begin(ignorable_fields), std::end(ignorable_fields), key) == std::end(ignorable_fields))
                return error{error_kind::invalid_request,
                             key == "parallel_tool_calls" ? "the gemini provider cannot turn parallel tool calls off"
                                                          : "the gemini provider cannot honour '" + key + "'",
                             "unsupported_parameter", key};
        }
        if (body.contains("toolConfig") && !body.contains("tools")) body.erase("toolConfig");
        if (!config.empty()) body["generationConfig"] = std::move(config);
        return dump_json(body);
    }

    // OpenAI function tools as Gemini function declarations. The parameters go as
    // parametersJsonSchema, which takes JSON Schema as OpenAI clients write it (the older
    // `parameters` takes only an OpenAPI subset and refuses, e.g., additionalProperties).
    static result<nlohmann::json> tools_of(const nlohmann::json& tools) {
        if (!tools.is_array() || tools.empty()) return invalid("'tools' must be a non-empty array", "tools", "invalid_type");
        nlohmann::json out = nlohmann::json::array();
        for (std::size_t i = 0; i < tools.size(); ++i) {
            const auto& t = tools[i];
            const std::string at = "tools[" + std::to_string(i) + "]";
            const auto fn = t.is_object() ? t.find("function") : t.end();
            if (!t.is_object() || string_field(t, "type") != "function" || fn == t.end() || string_field(*fn, "name").empty())
                return invalid("the gemini provider relays function tools only: " + at + " is not one", at, "unsupported_parameter");
            nlohmann::json declaration = {{"name", (*fn)["name"]}};
            if (fn->contains("description") && (*fn)["description"].is_string()) declaration["description"] = (*fn)["description"];
            if (fn->contains("parameters") && (*fn)["parameters"].is_object()) declaration["parametersJsonSchema"] = (*fn)["parameters"];
            out.push_back(std::move(declaration));
        }
        return out;
    }

    // OpenAI's tool_choice as Gemini's functionCallingConfig.
    static result<nlohmann::json> tool_choice_of(const nlohmann::json& choice) {
        if (choice == "auto") return nlohmann::json{{"mode", "AUTO"}};
        if (choice == "required") return nlohmann::json{{"mode", "ANY"}};
        if (choice == "none") return nlohmann::json{{"mode", "NONE"}};
        if (choice.is_object() && string_field(choice, "type") == "function" && choice.contains("function") &&
            !string_field(choice["function"], "name").empty())
            return nlohmann::json{{"mode", "ANY"}, {"allowedFunctionNames", {choice["function"]["name"]}}};
        return invalid("the gemini provider takes tool_choice auto, required, none or a function", "tool_choice", "unsupported_parameter");
    }

    // Gemini's finish reasons in OpenAI's vocabulary; one this code does not know, lowercased.
    static std::string finish_reason(std::string_view reason) {
        if (reason == "STOP") return "stop";
        if (reason == "MAX_TOKENS") return "length";
        if (reason == "SAFETY" || reason == "RECITATION" || reason == "BLOCKLIST" || reason == "PROHIBITED_CONTENT" || reason == "SPII" ||
            reason == "IMAGE_SAFETY")
            return "content_filter";
        return lower(std::string{reason});
    }

    // usageMetadata. The prompt count holds the cached part (as OpenAI's does); the completion
    // count is the candidates' tokens plus the thinking tokens, which are reported apart and
    // billed as output.
    struct usage_counts {
        std::int64_t prompt = 0, candidates = 0, thoughts = 0, cached = 0;

        static usage_counts read(const nlohmann::json& usage) {
            usage_counts u;
            if (!usage.is_object()) return u;
            read_count(usage, "promptTokenCount", u.prompt);
            read_count(usage, "candidatesTokenCount", u.candidates);
            read_count(usage, "thoughtsTokenCount", u.thoughts);
            read_count(usage, "cachedContentTokenCount", u.cached);
            return u;
        }
        [[nodiscard]] token_usage to_token_usage() const {
            constexpr std::int64_t most = std::numeric_limits<int>::max();
            token_usage t;
            t.prompt_tokens = static_cast<int>(std::min(prompt, most));
            t.cached_tokens = static_cast<int>(std::min(cached, prompt));
            t.completion_tokens = static_cast<int>(std::min(candidates + thoughts, most));
            t.reasoning_tokens = static_cast<int>(std::min(thoughts, most));
            return t;
        }

    private:
        // A count that is absent, negative or not a count is 0 (usage is advisory, not fatal).
        static void read_count(const nlohmann::json& usage, const char* name, std::int64_t& into) {
            const auto it = usage.find(name);
            if (it == usage.end() || !it->is_number_integer()) return;
            const auto n = it->get<std::int64_t>();
            if (n >= 0) into = std::min<std::int64_t>(n, std::numeric_limits<int>::max());
        }
    };

    // What one GenerateContentResponse (an answer, or one chunk of a stream) says.
    struct response_view {
        std::string text;                               // candidates[0]'s text parts, thoughts skipped
        nlohmann::json calls = nlohmann::json::array(); // its functionCall parts, as OpenAI tool_calls
        std::optional<std::string> finish_reason;       // candidates[0].finishReason, mapped
        std::optional<usage_counts> usage;              // when it carries usageMetadata
        std::string model_version;                      // modelVersion, when present
        std::optional<std::string> block_reason;        // promptFeedback.blockReason with no candidate
        std::optional<std::string> error_message;       // an error object in place of an answer
        std::string error_code;
    };

    static response_view read_response(const nlohmann::json& j) {
        response_view v;
        if (const auto e = j.find("error"); e != j.end() && e->is_object()) {
            v.error_message = string_field(*e, "message", "unknown");
            v.error_code = lower(string_field(*e, "status", "upstream_error"));
            return v;
        }
        v.model_version = string_field(j, "modelVersion");
        if (const auto u = j.find("usageMetadata"); u != j.end() && u->is_object()) v.usage = usage_counts::read(*u);
        const auto candidates = j.find("candidates");
        const bool has_candidate = candidates != j.end() && candidates->is_array() && !candidates->empty() && (*candidates)[0].is_object();
        if (!has_candidate) {
            if (const auto f = j.find("promptFeedback"); f != j.end() && f->is_object()) {
                const std::string reason = string_field(*f, "blockReason");
                if (!reason.empty()) v.block_reason = reason;
            }
            return v;
        }
        const auto& candidate = (*candidates)[0];
        const std::string reason = string_field(candidate, "finishReason");
        if (!reason.empty()) v.finish_reason = finish_reason(reason);
        const auto content = candidate.find("content");
        if (content == candidate.end() || !content->is_object()) return v;
        const auto parts = content->find("parts");
        if (parts == content->end() || !parts->is_array()) return v;
        for (const auto& part : *parts) {
            if (!part.is_object()) continue;
            if (const auto thought = part.find("thought"); thought != part.end() && thought->is_boolean() && thought->get<bool>()) continue;
            if (const auto text = part.find("text"); text != part.end() && text->is_string()) v.text += text->get_ref<const std::string&>();
            if (const auto call = part.find("functionCall"); call != part.end() && call->is_object()) {
                const auto args = call->find("args");
                v.calls.push_back({{"id", string_field(*call, "id")}, // Gemini may leave it out: numbered once the answer is whole
                                   {"type", "function"},
                                   {"function",
                                    {{"name", string_field(*call, "name")},
                                     {"arguments", args != call->end() && args->is_object() ? dump_json(*args) : std::string{"{}"}}}}});
            }
        }
        return v;
    }

    // Function calls into the completion: each without an id from Gemini gets one (a client must
    // name the call its result answers), and the finish reason says a tool is to be called, as
    // OpenAI's does (Gemini answers STOP).
    static void attach_calls(completion& c, nlohmann::json calls) {
        if (calls.empty()) return;
        for (std::size_t i = 0; i < calls.size(); ++i)
            if (calls[i]["id"] == "") calls[i]["id"] = "call_" + std::to_string(i);
        c.extra = {{"tool_calls", std::move(calls)}};
        if (c.finish_reason == "stop" || c.finish_reason.empty()) c.finish_reason = "tool_calls";
    }

    // A prompt Gemini blocked: the client's to change, so a 400 naming the reason.
    static error blocked(const std::string& reason) {
        return {error_kind::invalid_request, "Gemini blocked the prompt (" + reason + ")", "content_blocked", "messages"};
    }

    // Reads a streamGenerateContent?alt=sse stream into a completion, passing each text delta on
    // as it arrives. Each event's data is a whole GenerateContentResponse; the stream has no end
    // marker of its own, so the finish reason is what says it is whole.
    struct stream_reader {
        const delta_sink& sink;
        completion c{};
        usage_counts usage{};
        std::optional<error> broken{};                  // why the stream cannot be trusted
        bool finished = false;                          // a finishReason seen
        bool delivered = false;                         // a delta reached the sink
        bool client_gone = false;                       // the sink said stop
        nlohmann::json calls = nlohmann::json::array(); // function calls so far (Gemini sends each whole)
        static constexpr std::size_t max_calls = 128;   // an upstream's bound, not a client's
        // Where tool calls go as they arrive (each in one piece); none: they reach the client at the end.
        const tool_call_sink* tool_sink = nullptr;

        void operator()(const sse_message& m) {
            if (broken || client_gone) return;
            const auto j = nlohmann::json::parse(m.data, nullptr, false);
            if (!j.is_object())
                return void(broken = error{error_kind::upstream, "upstream sent a malformed stream event", "upstream_malformed"});
            auto v = read_response(j);
            if (v.error_message)
                return void(broken = error{error_kind::upstream, "upstream error mid-stream (" + v.error_code + "): " + *v.error_message,
                                           v.error_code});
            if (v.block_reason) return void(broken = blocked(*v.block_reason));
            if (!v.model_version.empty()) c.model = v.model_version;
            if (v.usage) usage = *v.usage; // each chunk's counts are the totals so far
            if (v.finish_reason) {
                c.finish_reason = *v.finish_reason;
                finished = true;
            }
            if (!v.text.empty()) {
                c.content += v.text;
                c.usage = usage.to_token_usage(); // what a client that leaves now was charged for so far
                delivered = true;
                if (!sink(v.text)) client_gone = true;
            }
            for (auto& call : v.calls) {
                if (calls.size() >= max_calls) break;
                if (call["id"] == "") call["id"] = "call_" + std::to_string(calls.size()); // as attach_calls names it
                calls.push_back(std::move(call));
                if (!tool_sink || client_gone) continue;
                const auto& fn = calls.back()["function"];
                delivered = true;
                if (!(*tool_sink)({calls.size() - 1, calls.back()["id"].get<std::string>(), fn["name"].get<std::string>(),
                                   fn["arguments"].get<std::string>()}))
                    client_gone = true;
            }
        }
    };

    // A stream that ended: whole, truncated, or broken (the reader's verdict), as a completion.
    // Before any delta reached the client, an upstream failure may be retried; a blocked prompt
    // never is.
    result<completion, upstream_failure> finish_stream(stream_reader& reader, const std::string& key) const {
        if (reader.broken) {
            error e = std::move(*reader.broken);
            e.message = redact(std::move(e.message), key);
            const bool retryable = e.kind == error_kind::upstream && !reader.delivered;
            return upstream_failure{std::move(e), retryable, {}, reader.delivered};
        }
        if (!reader.finished)
            return upstream_failure{{error_kind::upstream, "upstream stream ended before a finish reason", "upstream_truncated"},
                                    !reader.delivered,
                                    {},
                                    reader.delivered};
        reader.c.usage = reader.usage.to_token_usage();
        attach_calls(reader.c, std::move(reader.calls));
        return std::move(reader.c);
    }

    // A GenerateContentResponse body into a completion: candidates[0]'s text and function calls. `model` is the
    // requested one, kept when the answer names no modelVersion.
    static result<completion, upstream_failure> parse_answer(const std::string& raw, const std::string& model, const std::string& key) {
        const auto j = nlohmann::json::parse(raw, nullptr, false);
        if (!j.is_object())
            return upstream_failure{{error_kind::upstream, "upstream sent a malformed answer", "upstream_malformed"}, false};
        auto v = read_response(j);
        if (v.error_message)
            return upstream_failure{
                {error_kind::upstream, "upstream error (" + v.error_code + "): " + redact(*v.error_message, key), v.error_code}, false};
        if (v.block_reason) return upstream_failure{blocked(*v.block_reason), false};
        const auto candidates = j.find("candidates");
        if (candidates == j.end() || !candidates->is_array() || candidates->empty())
            return upstream_failure{{error_kind::upstream, "upstream answered without a candidate", "upstream_malformed"}, false};
        completion c;
        c.model = v.model_version.empty() ? model : v.model_version;
        c.content = std::move(v.text);
        if (v.finish_reason) c.finish_reason = *v.finish_reason;
        if (v.usage) c.usage = v.usage->to_token_usage();
        attach_calls(c, std::move(v.calls));
        return c;
    }

    // An error status: Google's envelope {"error":{"code","message","status","details"}} mapped
    // to chatkit's kinds. Retried as Google's SDKs retry: 408, 429 and 5xx other than 501, after
    // Retry-After or the RetryInfo detail's retryDelay.
    template <class Headers>
    upstream_failure status_failure(int status, const std::string& raw, const Headers& headers, const std::string& key) const {
        auto body = nlohmann::json::parse(raw, nullptr, false);
        if (body.is_array() && !body.empty()) body = body[0]; // the envelope, as a stream without alt=sse wraps it
        const nlohmann::json e = body.is_object() && body.contains("error") && body["error"].is_object() ? body["error"]
                                                                                                         : nlohmann::json::object();
        if ((status == 401 || error_reason(e) == "API_KEY_INVALID") && options.on_key_rejected) options.on_key_rejected(key);
        const std::string google_status = string_field(e, "status");
        std::string message = redact(string_field(e, "message"), key);
        if (message.empty()) message = "upstream answered HTTP " + std::to_string(status);

        upstream_failure f{
            {error_kind::upstream, message, google_status.empty() ? "upstream_" + std::to_string(status) : lower(google_status)}, false};
        if (status == 401 || status == 403 || error_reason(e).starts_with("API_KEY_")) {
            // Google answers a key it does not know with 400 INVALID_ARGUMENT (reason API_KEY_INVALID):
            // an operator's to fix, never the client's.
            f.e.message = "upstream rejected the credentials: " + message;
            f.e.code = "upstream_credentials";
        } else if (status == 400 || status == 422) f.e.kind = error_kind::invalid_request;
        else if (status == 404) f.e.kind = error_kind::not_found;
        else if (status == 413) f.e.kind = error_kind::payload_too_large;
        else if (status == 429) {
            f.e.kind = error_kind::rate_limited;
            f.retryable = true;
        } else if (status == 408 || (status >= 500 && status != 501)) {
            f.e.message = "upstream error (HTTP " + std::to_string(status) + "): " + message;
            f.retryable = true;
        }
        f.retry_after = retry_after(headers);
        if (!f.retry_after) f.retry_after = retry_delay_detail(e);
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

    // Retry-After in seconds (HTTP dates are not used).
    template <class Headers>
    static std::optional<std::chrono::milliseconds> retry_after(const Headers& headers) {
        return seconds(header(headers, "retry-after"));
    }

    // The RetryInfo detail's retryDelay, a protobuf Duration in JSON ("12s", "0.5s").
    static std::optional<std::chrono::milliseconds> retry_delay_detail(const nlohmann::json& e) {
        const auto details = e.find("details");
        if (details == e.end() || !details->is_array()) return std::nullopt;
        for (const auto& d : *details)
            if (string_field(d, "@type").ends_with("google.rpc.RetryInfo")) {
                std::string delay = string_field(d, "retryDelay");
                if (delay.size() < 2 || delay.back() != 's') return std::nullopt;
                delay.pop_back();
                return seconds(delay);
            }
        return std::nullopt;
    }

    // The ErrorInfo detail's reason ("API_KEY_INVALID"), if any.
    static std::string error_reason(const nlohmann::json& e) {
        const auto details = e.find("details");
        if (details == e.end() || !details->is_array()) return {};
        for (const auto& d : *details)
            if (string_field(d, "@type").ends_with("google.rpc.ErrorInfo")) return string_field(d, "reason");
        return {};
    }

    // A string member of an upstream's object, else `fallback`: never throws on a field of
    // another type, as nlohmann's value() would.
    static std::string string_field(const nlohmann::json& j, const char* name, std::string fallback = {}) {
        if (!j.is_object()) return fallback;
        const auto it = j.find(name);
        return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
    }

    // Upstream messages sometimes quote the key they were given; it must not reach a client.
    static std::string redact(std::string text, const std::string& key) {
        if (key.size() < 4) return text;
        for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at)) text.replace(at, key.size(), "[redacted]");
        return text;
    }

    // "models/gemini-2.5-flash" (a resource name) → "gemini-2.5-flash".
    static std::string model_id(std::string_view name) {
        if (name.starts_with("models/")) name.remove_prefix(7);
        return std::string{name};
    }

    // A model id is one path segment of the URL: nothing that could leave it ('/', '?', '#',
    // ':', '%', spaces).
    static bool valid_model_id(std::string_view id) {
        return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char ch) {
            return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_';
        });
    }

private:
    static std::string lower(std::string s) {
        for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        return s;
    }

    static std::optional<std::chrono::milliseconds> seconds(const std::string& text) {
        if (text.empty()) return std::nullopt;
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0' || !(v >= 0) || v > 1e9) return std::nullopt;
        return std::chrono::milliseconds(static_cast<long>(v * 1000));
    }
};

} // namespace detail
} // namespace chatkit
