// What chatkit::anthropic_provider (blocking, over cpp-httplib) and
// chatkit::async_anthropic_provider (over chatkit::http_client) share: the options and model
// aliases, the Messages API body and headers, the reading of an answer and of its event stream,
// and the mapping of Anthropic's errors. Wire format: Anthropic's Messages API reference
// (messages, streaming, errors; docs/providers.md has the links) and the WHATWG SSE spec.
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

// Names a deployment may use for a model → the id sent upstream. Plain data: add to it, or
// replace it, in anthropic_options::aliases.
using anthropic_model_aliases = std::map<std::string, std::string, std::less<>>;

// The names one reference design uses. Claude 3 Sonnet and Claude 3.5 Sonnet are retired
// upstream, so they name the current Sonnet.
inline anthropic_model_aliases default_anthropic_aliases() {
    return {{"claude-3-sonnet", "claude-sonnet-4-5"}, {"claude-3.5-sonnet", "claude-sonnet-4-5"}};
}

struct anthropic_options {
    std::string base_url = "https://api.anthropic.com"; // the API's path, /v1/messages, is appended
    std::string api_key{};                              // sent upstream only; never logged, never put in an error message
    // Asked for the key before each call instead of `api_key`, when set (a key that rotates); it
    // must be safe from any thread and cheap (cache what it fetches).
    std::function<result<std::string>()> api_key_source{};
    // Told the key the upstream refused with HTTP 401, so that a key source can read its key again
    // early (cached_secret::expire). Called on the calling thread; must not block.
    std::function<void(const std::string& rejected_key)> on_key_rejected{};
    std::string version = "2023-06-01"; // the anthropic-version header
    std::string model = "claude-sonnet-4-5";
    anthropic_model_aliases aliases = default_anthropic_aliases();
    // The Messages API requires max_tokens; sent when the request has none.
    int default_max_tokens = 4096;
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

class anthropic_wire {
public:
    // Throws std::invalid_argument for a base URL it cannot use (a start-up error).
    explicit anthropic_wire(anthropic_options o) : options(std::move(o)) {
        const auto scheme_end = options.base_url.find("://");
        if (scheme_end == std::string::npos) throw std::invalid_argument("Anthropic base URL must start with http:// or https://");
        const auto scheme = options.base_url.substr(0, scheme_end);
        if (scheme != "http" && scheme != "https") throw std::invalid_argument("Anthropic base URL must start with http:// or https://");
        const auto path_start = options.base_url.find('/', scheme_end + 3);
        origin = options.base_url.substr(0, path_start);
        if (origin.size() <= scheme_end + 3) throw std::invalid_argument("Anthropic base URL has no host");
        std::string prefix = path_start == std::string::npos ? "" : options.base_url.substr(path_start);
        while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
        path = prefix + "/v1/messages";
        if (options.default_max_tokens < 1) throw std::invalid_argument("Anthropic default max_tokens must be at least 1");
    }

    anthropic_options options;
    std::string origin; // scheme://host[:port]
    std::string path;   // the Messages API's path on that origin
    upstream_health health;

    [[nodiscard]] result<std::string> key() const {
        return options.api_key_source ? options.api_key_source() : result<std::string>{options.api_key};
    }

    // The model id sent upstream: the request's (or the default), through the aliases.
    [[nodiscard]] std::string upstream_model(const chat_request& r) const {
        const std::string& requested = r.model.empty() ? options.model : r.model;
        const auto it = options.aliases.find(requested);
        return it == options.aliases.end() ? requested : it->second;
    }

    [[nodiscard]] std::vector<std::pair<std::string, std::string>> request_headers(const chat_request& r, bool streaming,
                                                                                   const std::string& key) const {
        std::vector<std::pair<std::string, std::string>> h;
        h.emplace_back("Content-Type", "application/json");
        h.emplace_back("Accept", streaming ? "text/event-stream" : "application/json");
        if (!key.empty()) h.emplace_back("x-api-key", key);
        h.emplace_back("anthropic-version", options.version);
        if (!r.request_id.empty()) h.emplace_back("X-Request-ID", r.request_id);
        if (!r.traceparent.empty()) h.emplace_back("traceparent", r.traceparent);
        return h;
    }

    // OpenAI request fields with no Anthropic counterpart that change nothing about the answer.
    static constexpr std::string_view ignorable_fields[] = {"metadata", "store", "service_tier", "stream_options",
                                                            "max_completion_tokens" /* already in max_tokens */,
                                                            // OpenAI's prompt-cache and abuse-monitoring hints (Codex sends the first)
                                                            "prompt_cache_key", "safety_identifier"};

    // A chat request → a Messages API body, or a 400 naming the field it cannot honour. System
    // messages go to `system`; the API wants user and assistant turns to alternate, so
    // consecutive turns of one role are merged. Tool use takes Anthropic's form: an assistant
    // message's OpenAI `tool_calls` become `tool_use` blocks, `tool` messages `tool_result` blocks
    // of the next user turn, and function tools Anthropic tools.
    [[nodiscard]] result<std::string> request_body(const chat_request& r, bool streaming) const {
        nlohmann::json body = nlohmann::json::object();
        body["model"] = upstream_model(r);
        std::string system;
        nlohmann::json messages = nlohmann::json::array();
        for (std::size_t i = 0; i < r.messages.size(); ++i) {
            const auto& m = r.messages[i];
            const std::string at = "messages[" + std::to_string(i) + "]";
            auto content = message_content(m, at);
            if (!content) return std::move(content).error();
            if (m.role == role::system) {
                if (!system.empty()) system += "\n\n";
                system += m.content;
                continue;
            }
            const char* name = m.role == role::assistant ? "assistant" : "user"; // a tool result is the user's turn
            if (messages.empty() || messages.back()["role"] != name) {
                messages.push_back({{"role", name}, {"content", std::move(content).value()}});
                continue;
            }
            auto& previous = messages.back()["content"];
            if (previous.is_string() && content->is_string()) {
                previous = previous.get<std::string>() + "\n\n" + content->get<std::string>();
            } else {
                previous = as_blocks(std::move(previous));
                for (auto& block : as_blocks(std::move(content).value())) previous.push_back(std::move(block));
            }
        }
        if (messages.empty()) return invalid("an Anthropic conversation needs a user message", "messages", "invalid_conversation");
        body["messages"] = std::move(messages);
        if (!system.empty()) body["system"] = std::move(system);
        body["max_tokens"] = r.max_tokens.value_or(options.default_max_tokens);
        if (r.temperature) {
            if (*r.temperature > 1.0) return invalid("Anthropic accepts a temperature from 0 to 1", "temperature");
            body["temperature"] = *r.temperature;
        }
        if (r.user_id != anonymous_user) body["metadata"] = {{"user_id", r.user_id}};
        for (const auto& [key, value] : r.extensions.items()) {
            if (key == "stop" && value.is_string()) body["stop_sequences"] = nlohmann::json::array({value});
            else if (key == "stop" && value.is_array()) body["stop_sequences"] = value;
            else if (key == "top_p" && value.is_number()) body["top_p"] = value;
            else if (key == "tools") {
                auto tools = tools_of(value);
                if (!tools) return std::move(tools).error();
                body["tools"] = std::move(tools).value();
            } else if (key == "tool_choice") {
                auto choice = tool_choice_of(value);
                if (!choice) return std::move(choice).error();
                if (!choice->is_null()) body["tool_choice"] = std::move(choice).value();
            } else if (key == "parallel_tool_calls" && value.is_boolean()) {
                continue; // below, once tool_choice is known
            } else if (key == "functions" || key == "function_call")
                return error{error_kind::invalid_request, "the anthropic provider relays tools, not the deprecated '" + key + "'",
                             "unsupported_parameter", key};
            else if (std::find(std::begin(ignorable_fields), std::end(ignorable_fields), key) == std::end(ignorable_fields))
                return error{error_kind::invalid_request, "the anthropic provider cannot honour '" + key + "'", "unsupported_parameter",
                             key};
        }
        if (auto parallel = r.extensions.find("parallel_tool_calls");
            parallel != r.extensions.end() && *parallel == false && body.contains("tools")) {
            if (!body.contains("tool_choice")) body["tool_choice"] = {{"type", "auto"}};
            if (body["tool_choice"]["type"] != "none") body["tool_choice"]["disable_parallel_tool_use"] = true;
        }
        if (streaming) body["stream"] = true;
        return dump_json(body);
    }

    // A message's Messages API content: its text, or blocks when it carries tool use. Any other
    // OpenAI field (a name, image parts) cannot be relayed and is refused by name; a null one (the
    // `refusal: null` clients echo back with an assistant message) is absent.
    static result<nlohmann::json> message_content(const message& m, const std::string& at) {
        if (m.extra.is_object())
            for (const auto& [key, value] : m.extra.items())
                if (!value.is_null() && !(key == "tool_calls" && m.role == role::assistant) &&
                    !(key == "tool_call_id" && m.role == role::tool))
                    return invalid("the anthropic provider cannot relay '" + key + "' in " + at, at + "." + key, "unsupported_parameter");
        if (m.role == role::tool) {
            const auto id = m.extra.is_object() ? m.extra.find("tool_call_id") : m.extra.end();
            if (!m.extra.is_object() || id == m.extra.end() || !id->is_string())
                return invalid(at + " is a tool message without a tool_call_id", at + ".tool_call_id", "invalid_type");
            return nlohmann::json::array({{{"type", "tool_result"}, {"tool_use_id", *id}, {"content", m.content}}});
        }
        if (!m.extra.is_object() || !m.extra.contains("tool_calls")) return nlohmann::json(m.content);
        const auto& calls = m.extra["tool_calls"];
        if (!calls.is_array()) return invalid(at + ".tool_calls must be an array", at + ".tool_calls", "invalid_type");
        nlohmann::json blocks = nlohmann::json::array();
        if (!m.content.empty()) blocks.push_back({{"type", "text"}, {"text", m.content}});
        for (std::size_t j = 0; j < calls.size(); ++j) {
            const auto& call = calls[j];
            const std::string cat = at + ".tool_calls[" + std::to_string(j) + "]";
            const auto fn = call.is_object() ? call.find("function") : call.end();
            if (!call.is_object() || string_field(call, "id").empty() || fn == call.end() || string_field(*fn, "name").empty())
                return invalid(cat + " needs an id and a function name", cat, "invalid_type");
            // Anthropic takes the input as an object; OpenAI carries it as JSON text (empty for a
            // call without arguments).
            const std::string arguments = string_field(*fn, "arguments");
            auto input = nlohmann::json::parse(arguments.empty() ? std::string{"{}"} : arguments, nullptr, false);
            if (!input.is_object()) return invalid(cat + ".function.arguments must be a JSON object", cat + ".function.arguments");
            blocks.push_back({{"type", "tool_use"}, {"id", call["id"]}, {"name", (*fn)["name"]}, {"input", std::move(input)}});
        }
        if (blocks.empty()) return invalid(at + " has neither text nor tool calls", at + ".tool_calls", "invalid_value");
        return blocks;
    }

    static nlohmann::json as_blocks(nlohmann::json content) {
        if (content.is_array()) return content;
        nlohmann::json blocks = nlohmann::json::array();
        if (content.is_string() && !content.get_ref<const std::string&>().empty())
            blocks.push_back({{"type", "text"}, {"text", std::move(content)}});
        return blocks;
    }

    // OpenAI function tools as Anthropic tools: parameters become input_schema.
    static result<nlohmann::json> tools_of(const nlohmann::json& tools) {
        if (!tools.is_array()) return invalid("'tools' must be an array", "tools", "invalid_type");
        nlohmann::json out = nlohmann::json::array();
        for (std::size_t i = 0; i < tools.size(); ++i) {
            const auto& t = tools[i];
            const std::string at = "tools[" + std::to_string(i) + "]";
            const auto fn = t.is_object() ? t.find("function") : t.end();
            if (!t.is_object() || string_field(t, "type") != "function" || fn == t.end() || string_field(*fn, "name").empty())
                return invalid("the anthropic provider relays function tools only: " + at + " is not one", at, "unsupported_parameter");
            nlohmann::json tool = {{"name", (*fn)["name"]}};
            if (fn->contains("description") && (*fn)["description"].is_string()) tool["description"] = (*fn)["description"];
            tool["input_schema"] = fn->contains("parameters") && (*fn)["parameters"].is_object() ? (*fn)["parameters"]
                                                                                                 : nlohmann::json{{"type", "object"}};
            out.push_back(std::move(tool));
        }
        return out;
    }

    // OpenAI's tool_choice in Anthropic's form; null when there is nothing to send.
    static result<nlohmann::json> tool_choice_of(const nlohmann::json& choice) {
        if (choice == "auto") return nlohmann::json{{"type", "auto"}};
        if (choice == "required") return nlohmann::json{{"type", "any"}};
        if (choice == "none") return nlohmann::json{{"type", "none"}};
        if (choice.is_object() && string_field(choice, "type") == "function" && choice.contains("function") &&
            !string_field(choice["function"], "name").empty())
            return nlohmann::json{{"type", "tool"}, {"name", choice["function"]["name"]}};
        return invalid("the anthropic provider takes tool_choice auto, required, none or a function", "tool_choice",
                       "unsupported_parameter");
    }

    // Anthropic's tool_use blocks (their input an object) as OpenAI tool_calls (arguments as text).
    static nlohmann::json tool_call(const std::string& id, const std::string& name, std::string arguments) {
        return {{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", std::move(arguments)}}}};
    }

    // Anthropic's stop reasons in OpenAI's vocabulary.
    static std::string finish_reason(std::string_view stop_reason) {
        if (stop_reason == "end_turn" || stop_reason == "stop_sequence" || stop_reason == "pause_turn") return "stop";
        if (stop_reason == "max_tokens" || stop_reason == "model_context_window_exceeded") return "length";
        if (stop_reason == "tool_use") return "tool_calls";
        if (stop_reason == "refusal") return "content_filter";
        return std::string{stop_reason};
    }

    // Anthropic's usage object. A stream reports it in message_start and again, as counts so
    // far, in message_delta, which may leave a part out: each part keeps its last reported value.
    struct usage_counts {
        std::int64_t input = 0, cache_creation = 0, cache_read = 0, output = 0;

        void read(const nlohmann::json& usage) {
            if (!usage.is_object()) return;
            read_count(usage, "input_tokens", input);
            read_count(usage, "cache_creation_input_tokens", cache_creation);
            read_count(usage, "cache_read_input_tokens", cache_read);
            read_count(usage, "output_tokens", output);
        }
        // chatkit's prompt count holds all three input parts (cached tokens are a part of it,
        // as in OpenAI's usage); its cached count is the part read from the cache.
        [[nodiscard]] token_usage to_token_usage() const {
            constexpr std::int64_t most = std::numeric_limits<int>::max();
            token_usage u;
            u.prompt_tokens = static_cast<int>(std::min(input + cache_creation + cache_read, most));
            u.cached_tokens = static_cast<int>(std::min(cache_read, most));
            u.completion_tokens = static_cast<int>(std::min(output, most));
            return u;
        }

    private:
        // A count that is absent or not a count leaves the part as it was (usage is advisory, not fatal).
        static void read_count(const nlohmann::json& usage, const char* name, std::int64_t& into) {
            const auto it = usage.find(name);
            if (it == usage.end() || !it->is_number_integer()) return;
            const auto n = it->get<std::int64_t>();
            if (n >= 0) into = std::min<std::int64_t>(n, std::numeric_limits<int>::max());
        }
    };

    // Reads a Messages stream into a completion, passing each text delta on as it arrives.
    struct stream_reader {
        const delta_sink& sink;
        completion c{};
        usage_counts usage{};
        std::optional<std::string> broken{}; // why the stream cannot be trusted
        std::string broken_code = "upstream_error";
        bool done = false;        // message_stop seen
        bool delivered = false;   // a delta reached the sink
        bool client_gone = false; // the sink said stop
        // tool_use blocks by index: their id, name and input JSON as its fragments arrive.
        struct tool_block {
            std::int64_t index;
            std::string id, name, input;
        };
        std::vector<tool_block> tools{};
        static constexpr std::size_t max_tools = 128; // an upstream's bound, not a client's
        // Where tool calls' pieces go as they arrive; none: they reach the client whole, at the end.
        const tool_call_sink* tool_sink = nullptr;

        tool_block* tool_at(const nlohmann::json& j) {
            const auto i = j.find("index");
            if (i == j.end() || !i->is_number_integer()) return nullptr;
            for (auto& t : tools)
                if (t.index == i->get<std::int64_t>()) return &t;
            return nullptr;
        }
        // Anthropic streams one block at a time, so its calls' pieces come in order.
        void pass_on(const tool_block& t, tool_call_delta piece) {
            if (!tool_sink) return;
            piece.index = static_cast<std::size_t>(&t - tools.data());
            delivered = true;
            if (!(*tool_sink)(piece)) client_gone = true;
        }
        // The tool calls read, in OpenAI's form, once the stream is whole.
        void finish_tools() {
            if (tools.empty()) return;
            nlohmann::json calls = nlohmann::json::array();
            for (auto& t : tools) calls.push_back(tool_call(t.id, t.name, t.input.empty() ? "{}" : std::move(t.input)));
            c.extra = {{"tool_calls", std::move(calls)}};
        }

        void operator()(const sse_message& m) {
            if (broken || done || client_gone) return;
            const auto j = nlohmann::json::parse(m.data, nullptr, false);
            if (!j.is_object()) return void(broken = "upstream sent a malformed stream event");
            const std::string type = string_field(j, "type", m.event);
            if (type == "message_start") {
                const auto& message = j.contains("message") ? j["message"] : nlohmann::json{};
                if (message.is_object()) {
                    if (message.contains("model") && message["model"].is_string()) c.model = message["model"].get<std::string>();
                    if (message.contains("usage")) usage.read(message["usage"]);
                }
            } else if (type == "content_block_start") {
                const auto block = j.contains("content_block") ? j["content_block"] : nlohmann::json{};
                if (string_field(block, "type") != "tool_use" || !j.contains("index") || !j["index"].is_number_integer() ||
                    tools.size() >= max_tools)
                    return;
                tools.push_back({j["index"].get<std::int64_t>(), string_field(block, "id"), string_field(block, "name"), {}});
                pass_on(tools.back(), {.id = tools.back().id, .name = tools.back().name});
            } else if (type == "content_block_delta") {
                const auto delta = j.contains("delta") ? j["delta"] : nlohmann::json{};
                if (string_field(delta, "type") == "input_json_delta") {
                    if (auto* tool = tool_at(j)) {
                        std::string fragment = string_field(delta, "partial_json");
                        tool->input += fragment;
                        if (!fragment.empty()) pass_on(*tool, {.arguments = std::move(fragment)});
                    }
                    return;
                }
                // Other deltas (thinking_delta, signature_delta) carry no answer text.
                if (string_field(delta, "type") != "text_delta" || !delta.contains("text") || !delta["text"].is_string()) return;
                const auto& text = delta["text"].get_ref<const std::string&>();
                if (text.empty()) return;
                c.content += text;
                c.usage = usage.to_token_usage(); // what a client that leaves now was charged for so far
                delivered = true;
                if (!sink(text)) client_gone = true;
            } else if (type == "message_delta") {
                if (const auto d = j.find("delta");
                    d != j.end() && d->is_object() && d->contains("stop_reason") && (*d)["stop_reason"].is_string())
                    c.finish_reason = finish_reason((*d)["stop_reason"].get<std::string>());
                if (j.contains("usage")) usage.read(j["usage"]); // counts so far, not increments
            } else if (type == "message_stop") {
                done = true;
            } else if (type == "error") {
                const auto e = j.contains("error") && j["error"].is_object() ? j["error"] : nlohmann::json::object();
                const std::string kind = string_field(e, "type", "error"), message = string_field(e, "message", "unknown");
                broken = "upstream error mid-stream (" + kind + "): " + message;
                broken_code = kind;
            }
            // ping, content_block_stop and other blocks' starts change nothing here; an event type
            // this code does not know is skipped, as Anthropic's versioning policy asks.
        }
    };

    // A stream that ended: whole, truncated, or broken (the reader's verdict), as a completion.
    // Before any delta reached the client, a failure may be retried.
    result<completion, upstream_failure> finish_stream(stream_reader& reader, const std::string& key) const {
        if (reader.broken)
            return upstream_failure{
                {error_kind::upstream, redact(*reader.broken, key), reader.broken_code}, !reader.delivered, {}, reader.delivered};
        if (!reader.done)
            return upstream_failure{{error_kind::upstream, "upstream stream ended before message_stop", "upstream_truncated"},
                                    !reader.delivered,
                                    {},
                                    reader.delivered};
        reader.c.usage = reader.usage.to_token_usage();
        reader.finish_tools();
        return std::move(reader.c);
    }

    // A `message` body into a completion: its text blocks joined, its tool_use blocks as tool_calls.
    static result<completion, upstream_failure> parse_answer(const std::string& raw) {
        const upstream_failure malformed{{error_kind::upstream, "upstream sent a malformed answer", "upstream_malformed"}, false};
        const auto j = nlohmann::json::parse(raw, nullptr, false);
        if (!j.is_object() || !j.contains("content") || !j["content"].is_array()) return malformed;
        completion c;
        nlohmann::json calls = nlohmann::json::array();
        for (const auto& block : j["content"]) {
            const std::string type = string_field(block, "type");
            if (type == "text" && block.contains("text") && block["text"].is_string()) c.content += block["text"].get<std::string>();
            else if (type == "tool_use")
                calls.push_back(tool_call(string_field(block, "id"), string_field(block, "name"),
                                          block.contains("input") && block["input"].is_object() ? dump_json(block["input"]) : "{}"));
        }
        if (!calls.empty()) c.extra = {{"tool_calls", std::move(calls)}};
        if (j.contains("model") && j["model"].is_string()) c.model = j["model"].get<std::string>();
        if (j.contains("stop_reason") && j["stop_reason"].is_string()) c.finish_reason = finish_reason(j["stop_reason"].get<std::string>());
        if (j.contains("usage")) {
            usage_counts counts;
            counts.read(j["usage"]);
            c.usage = counts.to_token_usage();
        }
        return c;
    }

    // An error status: Anthropic's envelope {"type":"error","error":{"type","message"}} mapped to
    // chatkit's kinds. Retried as Anthropic's SDKs retry: 408, 409, 429 and 5xx (529 is
    // overloaded_error), after retry-after-ms or retry-after, unless x-should-retry says otherwise.
    template <class Headers>
    upstream_failure status_failure(int status, const std::string& raw, const Headers& headers, const std::string& key) const {
        if (status == 401 && options.on_key_rejected) options.on_key_rejected(key);
        const auto body = nlohmann::json::parse(raw, nullptr, false);
        const nlohmann::json e = body.is_object() && body.contains("error") && body["error"].is_object() ? body["error"]
                                                                                                         : nlohmann::json::object();
        const std::string type = string_field(e, "type");
        std::string message = redact(string_field(e, "message"), key);
        if (message.empty()) message = "upstream answered HTTP " + std::to_string(status);

        upstream_failure f{{error_kind::upstream, message, type.empty() ? "upstream_" + std::to_string(status) : type}, false};
        if (status == 400 || status == 422) f.e.kind = error_kind::invalid_request;
        else if (status == 401 || status == 403) {
            f.e.message = "upstream rejected the credentials: " + message;
            f.e.code = "upstream_credentials";
        } else if (status == 404) f.e.kind = error_kind::not_found;
        else if (status == 413) f.e.kind = error_kind::payload_too_large;
        else if (status == 429) {
            f.e.kind = error_kind::rate_limited;
            f.retryable = true;
        } else if (status == 408 || status == 409 || status >= 500) {
            f.e.message = (status == 529 ? "upstream overloaded (HTTP 529): " : "upstream error (HTTP " + std::to_string(status) + "): ") +
                          message;
            f.retryable = true;
        }
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

    // retry-after-ms, then retry-after in seconds, as Anthropic's SDKs read them. HTTP dates are not used.
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
};

} // namespace detail
} // namespace chatkit
