// What chatkit::bedrock_provider (blocking, over cpp-httplib) and chatkit::async_bedrock_provider
// (over chatkit::http_client) share: options and model aliases, the Converse body, SigV4 (or
// API key) headers, the reading of ConverseStream's event stream, and the mapping of Bedrock's
// errors. Wire format: the Bedrock Runtime API reference (Converse, ConverseStream), the AWS
// event-stream encoding and Signature Version 4.
#pragma once

#include "chatkit/aws/credentials.hpp"
#include "chatkit/aws/eventstream.hpp"
#include "chatkit/aws/sigv4.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/provider.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/upstream_health.hpp"

#include <nlohmann/json.hpp>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <optional>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

// A model a deployment can name by alias. Its prices are data, in the service's price table
// (chatkit/pricing.hpp; sample_server ships data/pricing.json, keyed by these aliases too).
struct bedrock_model {
    std::string id;            // the base model id, e.g. "amazon.nova-micro-v1:0"
    bool cross_region = false; // called through the geographic inference profile ("us." + id)
};

// Aliases → models. Plain data: add to it, or replace it, in bedrock_options::models.
using bedrock_model_table = std::map<std::string, bedrock_model, std::less<>>;

inline bedrock_model_table default_bedrock_models() {
    return {
        {"nova-micro", {"amazon.nova-micro-v1:0", true}},
        {"nova-lite", {"amazon.nova-lite-v1:0", true}},
        {"nova-pro", {"amazon.nova-pro-v1:0", true}},
        {"claude-3-haiku", {"anthropic.claude-3-haiku-20240307-v1:0", false}},
        {"claude-3-5-haiku", {"anthropic.claude-3-5-haiku-20241022-v1:0", true}},
        {"claude-3-5-sonnet", {"anthropic.claude-3-5-sonnet-20240620-v1:0", false}},
        {"claude-3-7-sonnet", {"anthropic.claude-3-7-sonnet-20250219-v1:0", true}},
        {"titan-text-express", {"amazon.titan-text-express-v1", false}},
        {"titan-text-lite", {"amazon.titan-text-lite-v1", false}},
        {"llama3-8b", {"meta.llama3-8b-instruct-v1:0", false}},
        {"llama3-70b", {"meta.llama3-70b-instruct-v1:0", false}},
        {"mistral-large", {"mistral.mistral-large-2402-v1:0", false}},
    };
}

// The geographic prefix of inference profiles for a region: us-east-1 → "us.", eu-west-3 → "eu.".
inline std::string inference_profile_prefix(std::string_view region) {
    if (region.starts_with("us-gov-")) return "us-gov.";
    if (region.starts_with("us-") || region.starts_with("ca-")) return "us.";
    if (region.starts_with("eu-")) return "eu.";
    if (region.starts_with("ap-")) return "apac.";
    return "";
}

struct bedrock_options {
    std::string region;               // empty: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region
    std::string endpoint;             // empty: AWS_ENDPOINT_URL_BEDROCK_RUNTIME, AWS_ENDPOINT_URL, then the public endpoint
    std::string model = "nova-micro"; // an alias from `models`, or any Bedrock model id, profile id or ARN
    bedrock_model_table models = default_bedrock_models();
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{60'000};
    std::chrono::milliseconds deadline{120'000};
    int max_retries = 3;
    // Told of each failed attempt that will be retried (retry_policy::on_retry): e.g. to count
    // retries by error code. Called on the calling thread or loop; it must be cheap.
    std::function<void(const upstream_failure&)> on_retry{};
    std::size_t max_idle_connections = 64;
    std::string bearer_token{}; // AWS_BEARER_TOKEN_BEDROCK: an API key used instead of SigV4
};

namespace detail {

class bedrock_wire {
public:
    // Resolves region, endpoint and credentials from `env`. Throws std::invalid_argument when no
    // region can be found or the endpoint is unusable.
    bedrock_wire(bedrock_options o, aws::environment e) : options(std::move(o)), env(std::move(e)), credentials(env) {
        region = !options.region.empty() ? options.region : aws::resolve_region(env).value_or("");
        if (region.empty()) throw std::invalid_argument("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)");
        const auto where = aws::service_endpoint::parse(
            !options.endpoint.empty()
                ? options.endpoint
                : aws::endpoint_override(env, "BEDROCK_RUNTIME").value_or("https://bedrock-runtime." + region + ".amazonaws.com"),
            "the Bedrock");
        endpoint = where.origin;
        host = where.host;
    }

    bedrock_options options;
    aws::environment env;
    aws::credentials_provider credentials;
    std::string region, endpoint, host;
    upstream_health health;

    [[nodiscard]] std::vector<std::string> models() const {
        std::vector<std::string> out{options.model};
        for (const auto& [alias, model] : options.models)
            if (alias != options.model) out.push_back(alias);
        return out;
    }

    // Down when credentials cannot be found, or after three calls in a row were refused their
    // credentials or could not reach Bedrock.
    component_health report() {
        if (options.bearer_token.empty())
            if (auto creds = credentials.get(); !creds) return {false, creds.error().message};
        return health.report(region + " via " + credentials.source());
    }

    // The Bedrock model id a request goes to: an alias resolved (through the region's inference
    // profile where the model needs one), anything else as given.
    [[nodiscard]] std::string resolve_model(std::string_view requested) const {
        const auto& o = options;
        if (requested.empty()) requested = o.model;
        auto it = o.models.find(requested);
        if (it == o.models.end()) return std::string{requested};
        return (it->second.cross_region ? inference_profile_prefix(region) : "") + it->second.id;
    }

    // Request fields Bedrock's Converse can express; any other OpenAI field is refused.
    static constexpr std::string_view ignorable_fields[] = {"metadata", "store", "service_tier", "stream_options",
                                                            "max_completion_tokens" /* already in max_tokens */,
                                                            // OpenAI's prompt-cache and abuse-monitoring hints (Codex sends the first)
                                                            "prompt_cache_key", "safety_identifier"};

    // chatkit messages → a Converse body: system messages go to `system`; the conversation must
    // open with a user turn and alternate, so consecutive turns of one role are merged. Tool use
    // takes Converse's form: an assistant message's OpenAI `tool_calls` become `toolUse` blocks,
    // `tool` messages `toolResult` blocks of the next user turn, and function tools `toolConfig`.
    // The request id goes in `requestMetadata`, where Bedrock's invocation logs show it.
    static result<nlohmann::json> converse_body(const chat_request& r) {
        using detail::invalid;
        nlohmann::json body = nlohmann::json::object();
        nlohmann::json system = nlohmann::json::array(), messages = nlohmann::json::array();
        bool tool_history = false;
        for (std::size_t i = 0; i < r.messages.size(); ++i) {
            const auto& m = r.messages[i];
            const std::string at = "messages[" + std::to_string(i) + "]";
            auto content = content_blocks(m, at);
            if (!content) return std::move(content).error();
            if (m.role == role::system) {
                system.push_back({{"text", m.content}});
                continue;
            }
            if (m.role == role::tool || (m.extra.is_object() && m.extra.contains("tool_calls"))) tool_history = true;
            const char* name = m.role == role::assistant ? "assistant" : "user"; // a tool result is the user's turn
            if (messages.empty() && m.role != role::user)
                return invalid("a Bedrock conversation must start with a user message", at, "invalid_conversation");
            if (!messages.empty() && messages.back()["role"] == name)
                for (auto& block : *content) messages.back()["content"].push_back(std::move(block));
            else messages.push_back({{"role", name}, {"content", std::move(content).value()}});
        }
        if (messages.empty()) return invalid("a Bedrock conversation needs a user message", "messages", "invalid_conversation");
        body["messages"] = std::move(messages);
        if (!system.empty()) body["system"] = std::move(system);

        nlohmann::json config = nlohmann::json::object();
        nlohmann::json tool_config = nlohmann::json::object();
        if (r.max_tokens) config["maxTokens"] = *r.max_tokens;
        if (r.temperature) {
            if (*r.temperature > 1.0) return invalid("Bedrock accepts a temperature from 0 to 1", "temperature");
            config["temperature"] = *r.temperature;
        }
        for (const auto& [key, value] : r.extensions.items()) {
            if (key == "top_p" && value.is_number()) config["topP"] = value;
            else if (key == "stop" && (value.is_string() || value.is_array()))
                config["stopSequences"] = value.is_string() ? nlohmann::json::array({value}) : value;
            else if (key == "tools") {
                auto tools = tools_of(value);
                if (!tools) return std::move(tools).error();
                tool_config["tools"] = std::move(tools).value();
            } else if (key == "tool_choice") {
                auto choice = tool_choice_of(value);
                if (!choice) return std::move(choice).error();
                tool_config["toolChoice"] = std::move(choice).value();
            } else if (key == "parallel_tool_calls" && value == true) {
                continue; // what Converse does anyway
            } else if (std::find(std::begin(ignorable_fields), std::end(ignorable_fields), key) == std::end(ignorable_fields))
                return error{error_kind::invalid_request,
                             key == "parallel_tool_calls" ? "the bedrock provider cannot turn parallel tool calls off"
                                                          : "the bedrock provider cannot honour '" + key + "'",
                             "unsupported_parameter", key};
        }
        if (tool_config.contains("toolChoice") && !tool_config.contains("tools")) tool_config.erase("toolChoice");
        // Bedrock refuses toolUse and toolResult blocks without a toolConfig: say so before the call.
        if (tool_history && !tool_config.contains("tools"))
            return invalid("a conversation with tool calls needs the 'tools' that were offered (Bedrock requires them)", "tools",
                           "missing_field");
        if (!config.empty()) body["inferenceConfig"] = std::move(config);
        if (!tool_config.empty()) body["toolConfig"] = std::move(tool_config);
        if (!r.request_id.empty()) body["requestMetadata"] = {{"chatkit_request_id", r.request_id}};
        return body;
    }

    // A message's Converse content blocks. A field beyond role, text and tool use (a name, image
    // parts) cannot be relayed and is refused by name; a null one is absent.
    static result<nlohmann::json> content_blocks(const message& m, const std::string& at) {
        using detail::invalid;
        if (m.extra.is_object())
            for (const auto& [key, value] : m.extra.items())
                if (!value.is_null() && !(key == "tool_calls" && m.role == role::assistant) &&
                    !(key == "tool_call_id" && m.role == role::tool))
                    return invalid("the bedrock provider cannot relay '" + key + "' in " + at, at + "." + key, "unsupported_parameter");
        if (m.role == role::tool) {
            const auto id = m.extra.is_object() ? m.extra.find("tool_call_id") : m.extra.end();
            if (!m.extra.is_object() || id == m.extra.end() || !id->is_string())
                return invalid(at + " is a tool message without a tool_call_id", at + ".tool_call_id", "invalid_type");
            return nlohmann::json::array({{{"toolResult", {{"toolUseId", *id}, {"content", {{{"text", m.content}}}}}}}});
        }
        nlohmann::json blocks = nlohmann::json::array();
        const bool calls = m.extra.is_object() && m.extra.contains("tool_calls");
        if (!calls || !m.content.empty()) blocks.push_back({{"text", m.content}});
        if (!calls) return blocks;
        const auto& list = m.extra["tool_calls"];
        if (!list.is_array()) return invalid(at + ".tool_calls must be an array", at + ".tool_calls", "invalid_type");
        for (std::size_t j = 0; j < list.size(); ++j) {
            const auto& call = list[j];
            const std::string cat = at + ".tool_calls[" + std::to_string(j) + "]";
            const auto fn = call.is_object() ? call.find("function") : call.end();
            if (!call.is_object() || string_field(call, "id", "").empty() || fn == call.end() || string_field(*fn, "name", "").empty())
                return invalid(cat + " needs an id and a function name", cat, "invalid_type");
            // Converse takes the input as an object; OpenAI carries it as JSON text (empty for a
            // call without arguments).
            const std::string arguments = string_field(*fn, "arguments", "");
            auto input = nlohmann::json::parse(arguments.empty() ? std::string{"{}"} : arguments, nullptr, false);
            if (!input.is_object()) return invalid(cat + ".function.arguments must be a JSON object", cat + ".function.arguments");
            blocks.push_back({{"toolUse", {{"toolUseId", call["id"]}, {"name", (*fn)["name"]}, {"input", std::move(input)}}}});
        }
        if (blocks.empty()) return invalid(at + " has neither text nor tool calls", at + ".tool_calls", "invalid_value");
        return blocks;
    }

    // OpenAI function tools as Converse toolSpecs: parameters become inputSchema.json.
    static result<nlohmann::json> tools_of(const nlohmann::json& tools) {
        using detail::invalid;
        if (!tools.is_array() || tools.empty()) return invalid("'tools' must be a non-empty array", "tools", "invalid_type");
        nlohmann::json out = nlohmann::json::array();
        for (std::size_t i = 0; i < tools.size(); ++i) {
            const auto& t = tools[i];
            const std::string at = "tools[" + std::to_string(i) + "]";
            const auto fn = t.is_object() ? t.find("function") : t.end();
            if (!t.is_object() || string_field(t, "type", "") != "function" || fn == t.end() || string_field(*fn, "name", "").empty())
                return invalid("the bedrock provider relays function tools only: " + at + " is not one", at, "unsupported_parameter");
            nlohmann::json spec = {{"name", (*fn)["name"]}};
            if (fn->contains("description") && (*fn)["description"].is_string()) spec["description"] = (*fn)["description"];
            spec["inputSchema"] = {{"json", fn->contains("parameters") && (*fn)["parameters"].is_object()
                                                ? (*fn)["parameters"]
                                                : nlohmann::json{{"type", "object"}}}};
            out.push_back({{"toolSpec", std::move(spec)}});
        }
        return out;
    }

    // OpenAI's tool_choice as Converse's. Converse has no "none": sending the tools with it would
    // let the model call them, so it is refused rather than dropped.
    static result<nlohmann::json> tool_choice_of(const nlohmann::json& choice) {
        if (choice == "auto") return nlohmann::json{{"auto", nlohmann::json::object()}};
        if (choice == "required") return nlohmann::json{{"any", nlohmann::json::object()}};
        if (choice.is_object() && string_field(choice, "type", "") == "function" && choice.contains("function") &&
            !string_field(choice["function"], "name", "").empty())
            return nlohmann::json{{"tool", {{"name", choice["function"]["name"]}}}};
        return detail::invalid("the bedrock provider takes tool_choice auto, required or a function (Converse has no 'none')",
                               "tool_choice", "unsupported_parameter");
    }

    // Converse's toolUse blocks (their input an object) as OpenAI tool_calls (arguments as text).
    static nlohmann::json tool_call(const std::string& id, const std::string& name, std::string arguments) {
        return {{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", std::move(arguments)}}}};
    }

    // Bedrock's stop reasons in OpenAI's vocabulary.
    static std::string finish_reason(std::string_view stop_reason) {
        if (stop_reason == "end_turn" || stop_reason == "stop_sequence") return "stop";
        if (stop_reason == "max_tokens" || stop_reason == "model_context_window_exceeded") return "length";
        if (stop_reason == "content_filtered" || stop_reason == "guardrail_intervened") return "content_filter";
        if (stop_reason == "tool_use") return "tool_calls";
        return std::string{stop_reason};
    }

    // The headers of a call to `path`: the API key, or a SigV4 signature with `creds`. The
    // trace context (`traceparent`) is sent unsigned, as AWS's SDKs send theirs: a signature
    // covers only the headers it names.
    [[nodiscard]] std::vector<std::pair<std::string, std::string>> request_headers(const std::string& path, const std::string& payload,
                                                                                   const aws::credentials* creds,
                                                                                   std::string_view traceparent = {}) const {
        std::vector<std::pair<std::string, std::string>> h;
        h.emplace_back("Host", host);
        h.emplace_back("Content-Type", "application/json");
        if (!traceparent.empty()) h.emplace_back("traceparent", std::string{traceparent});
        if (!options.bearer_token.empty()) {
            h.emplace_back("Authorization", "Bearer " + options.bearer_token);
            return h;
        }
        const auto sig = aws::sign(
            {.method = "POST", .host = host, .path = path, .query = {}, .headers = {{"content-type", "application/json"}}, .body = payload},
            *creds, region, "bedrock", std::chrono::system_clock::now());
        h.emplace_back("Authorization", sig.authorization);
        h.emplace_back("X-Amz-Date", sig.amz_date);
        if (!sig.content_sha256.empty()) h.emplace_back("X-Amz-Content-Sha256", sig.content_sha256);
        if (!sig.security_token.empty()) h.emplace_back("X-Amz-Security-Token", sig.security_token);
        return h;
    }

    // A non-200 answer: its modelled error type (X-Amzn-ErrorType, else the body's __type/code).
    template <class Headers>
    static upstream_failure status_failure(int status, const std::string& raw, const Headers& headers) {
        const auto body = nlohmann::json::parse(raw, nullptr, false);
        std::string message, kind;
        if (body.is_object()) {
            message = string_field(body, "message", "");
            if (message.empty()) message = string_field(body, "Message", "");
            kind = string_field(body, "__type", "");
            if (kind.empty()) kind = string_field(body, "code", "");
        }
        for (const auto& [k, v] : headers)
            if (k.size() == 16 && strncasecmp(k.c_str(), "x-amzn-errortype", 16) == 0) kind = v;
        return classify(kind, message, status);
    }

    // Reads ConverseStream's events: text deltas go to the sink; the stop
    // reason and usage arrive at the end; an exception frame ends the stream with an error.
    struct stream_reader {
        const delta_sink& sink;
        completion c{};
        std::optional<upstream_failure> failed{};
        bool delivered = false, client_gone = false, stopped = false, metadata = false;
        // toolUse blocks by contentBlockIndex: their id, name and input JSON as its fragments arrive.
        struct tool_block {
            std::int64_t index;
            std::string id, name, input;
        };
        std::vector<tool_block> tools{};
        static constexpr std::size_t max_tools = 128; // an upstream's bound, not a client's
        // Where tool calls' pieces go as they arrive; none: they reach the client whole, at the end.
        const tool_call_sink* tool_sink = nullptr;

        tool_block* tool_at(const nlohmann::json& payload) {
            const auto i = payload.find("contentBlockIndex");
            if (i == payload.end() || !i->is_number_integer()) return nullptr;
            for (auto& t : tools)
                if (t.index == i->get<std::int64_t>()) return &t;
            return nullptr;
        }
        // Bedrock streams one content block at a time, so its calls' pieces come in order.
        void pass_on(const tool_block& t, tool_call_delta piece) {
            if (!tool_sink) return;
            piece.index = static_cast<std::size_t>(&t - tools.data());
            delivered = true;
            if (!(*tool_sink)(piece)) client_gone = true;
        }
        void finish_tools() {
            if (tools.empty()) return;
            nlohmann::json calls = nlohmann::json::array();
            for (auto& t : tools) calls.push_back(tool_call(t.id, t.name, t.input.empty() ? "{}" : std::move(t.input)));
            c.extra = {{"tool_calls", std::move(calls)}};
        }

        void operator()(const aws::event_message& m) {
            if (failed || client_gone) return;
            const std::string* type = m.header_string(":message-type");
            if (type && *type == "exception") {
                const std::string* kind = m.header_string(":exception-type");
                const auto payload = nlohmann::json::parse(m.payload, nullptr, false);
                const std::string message = string_field(payload, "message", "");
                failed = classify(kind ? *kind : std::string{"exception"}, message, 0);
                failed->delivered = delivered;
                return;
            }
            if (type && *type == "error") {
                const std::string* code = m.header_string(":error-code");
                const std::string* message = m.header_string(":error-message");
                failed = upstream_failure{
                    {error_kind::upstream,
                     "Bedrock stream error " + (code ? *code : std::string{}) + ": " + (message ? *message : std::string{}),
                     "upstream_error"},
                    false,
                    {},
                    delivered};
                return;
            }
            const std::string* event = m.header_string(":event-type");
            if (!event) return;
            const auto payload = nlohmann::json::parse(m.payload, nullptr, false);
            if (!payload.is_object()) {
                failed = upstream_failure{
                    {error_kind::upstream, "Bedrock sent a malformed event", "upstream_malformed"}, false, {}, delivered};
                return;
            }
            if (*event == "contentBlockStart") {
                const auto start = payload.contains("start") ? payload["start"] : nlohmann::json{};
                const auto i = payload.find("contentBlockIndex");
                if (!start.is_object() || !start.contains("toolUse") || i == payload.end() || !i->is_number_integer() ||
                    tools.size() >= max_tools)
                    return;
                tools.push_back({i->get<std::int64_t>(),
                                 string_field(start["toolUse"], "toolUseId", ""),
                                 string_field(start["toolUse"], "name", ""),
                                 {}});
                pass_on(tools.back(), {.id = tools.back().id, .name = tools.back().name});
            } else if (*event == "contentBlockDelta") {
                const auto& delta = payload.contains("delta") ? payload["delta"] : nlohmann::json{};
                if (delta.is_object() && delta.contains("toolUse")) {
                    if (auto* tool = tool_at(payload)) {
                        std::string fragment = string_field(delta["toolUse"], "input", "");
                        tool->input += fragment;
                        if (!fragment.empty()) pass_on(*tool, {.arguments = std::move(fragment)});
                    }
                } else if (delta.is_object() && delta.contains("text") && delta["text"].is_string()) {
                    const auto& text = delta["text"].get_ref<const std::string&>();
                    c.content += text;
                    delivered = true;
                    if (!sink(text)) client_gone = true;
                }
            } else if (*event == "messageStop") {
                stopped = true;
                c.finish_reason = finish_reason(string_field(payload, "stopReason", "end_turn"));
            } else if (*event == "metadata") {
                metadata = true;
                read_usage(payload, c.usage);
            }
        }
    };

    // A stream that ended: whole only when messageStop and then the metadata event (the usage)
    // came and no error frame did. Without its metadata the usage is unknown, and billing it as
    // zero would be wrong, so the stream is an error.
    static result<completion, upstream_failure> finish_stream(stream_reader& reader) {
        if (reader.failed) return std::move(*reader.failed);
        if (!reader.stopped)
            return upstream_failure{{error_kind::upstream, "Bedrock stream ended before it finished", "upstream_truncated"},
                                    !reader.delivered,
                                    {},
                                    reader.delivered};
        if (!reader.metadata)
            return upstream_failure{
                {error_kind::upstream, "Bedrock stream ended without its metadata event (the usage)", "upstream_truncated"},
                !reader.delivered,
                {},
                reader.delivered};
        reader.finish_tools();
        return std::move(reader.c);
    }

    // A field of Bedrock's JSON, or the fallback when it is absent or of another type: a malformed
    // answer is an upstream error, never an exception from the JSON library.
    static std::string string_field(const nlohmann::json& j, const char* key, const char* fallback) {
        if (!j.is_object()) return fallback;
        const auto it = j.find(key);
        return it != j.end() && it->is_string() ? it->get<std::string>() : std::string{fallback};
    }
    static int count_field(const nlohmann::json& j, const char* key) {
        const auto it = j.find(key);
        if (it == j.end() || !it->is_number_integer()) return 0;
        const auto n = it->get<std::int64_t>();
        return n < 0 ? 0 : static_cast<int>(std::min<std::int64_t>(n, std::numeric_limits<int>::max()));
    }

    // Bedrock counts the prompt in three parts: inputTokens (read fresh), cacheReadInputTokens
    // (read from the prompt cache) and cacheWriteInputTokens (written to it); token_usage's
    // prompt_tokens is all of them, of which cached_tokens were read from the cache, as OpenAI
    // reports it. A cache write is counted as ordinary input (the price table has no write price).
    static void read_usage(const nlohmann::json& j, token_usage& usage) {
        if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
            const auto fresh = static_cast<std::int64_t>(count_field(*u, "inputTokens"));
            const auto read = static_cast<std::int64_t>(count_field(*u, "cacheReadInputTokens"));
            const auto written = static_cast<std::int64_t>(count_field(*u, "cacheWriteInputTokens"));
            usage.prompt_tokens = static_cast<int>(std::min<std::int64_t>(fresh + read + written, std::numeric_limits<int>::max()));
            usage.cached_tokens = static_cast<int>(read);
            usage.completion_tokens = count_field(*u, "outputTokens");
        }
    }

    // What an AWS error message may carry that the gateway's clients, to whom it is passed on, must
    // not see: SigV4's explanation of a signature mismatch (the canonical request, whose signed
    // headers include the session token), access key ids, and the account id in ARNs
    // ("User: arn:aws:sts::123456789012:assumed-role/..."). The rest stays: it says what to fix.
    static std::string redacted(std::string text) {
        if (const auto cut = text.find("The Canonical String"); cut != std::string::npos) {
            text.erase(cut);
            while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
        }
        auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
        // Access key ids: a four-letter kind (AKIA long-term, ASIA temporary, ...) and 16 more.
        for (std::size_t i = 0; i + 20 <= text.size(); ++i) {
            const std::string_view head{text.data() + i, 4};
            if ((i > 0 && word(text[i - 1])) || (i + 20 < text.size() && word(text[i + 20]))) continue;
            if (head != "AKIA" && head != "ASIA" && head != "AIDA" && head != "AROA" && head != "AIPA" && head != "ANPA" && head != "APKA")
                continue;
            if (!std::all_of(
                    text.begin() + static_cast<std::ptrdiff_t>(i) + 4, text.begin() + static_cast<std::ptrdiff_t>(i) + 20,
                    [](char c) { return std::isupper(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)); }))
                continue;
            text.replace(i + 4, 16, "****************");
            i += 19;
        }
        // ARNs: arn:partition:service:region:ACCOUNT:resource.
        for (std::size_t at = text.find("arn:"); at != std::string::npos; at = text.find("arn:", at + 4)) {
            if (at > 0 && word(text[at - 1])) continue;
            std::size_t field = at;
            for (int colons = 0; colons < 4 && field != std::string::npos; ++colons) field = text.find(':', field + 1);
            if (field == std::string::npos) break;
            std::size_t end = field + 1;
            while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
            if (end - field - 1 == 12) text.replace(field + 1, 12, "************");
        }
        return text;
    }

    // A modelled error, from the X-Amzn-ErrorType header or an exception frame's type (§2.4, §2.5).
    static upstream_failure classify(std::string kind, const std::string& message, int status) {
        if (auto colon = kind.find(':'); colon != std::string::npos) kind.erase(colon);
        if (auto hash = kind.find('#'); hash != std::string::npos) kind.erase(0, hash + 1);
        if (!kind.empty()) kind[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(kind[0])));
        const std::string text = message.empty() ? "Bedrock answered HTTP " + std::to_string(status) : redacted(message);
        auto fail = [&](error_kind k, std::string msg, bool retryable) {
            return upstream_failure{{k, std::move(msg), kind.empty() ? "bedrock_" + std::to_string(status) : kind}, retryable};
        };
        if (kind == "ThrottlingException") return fail(error_kind::rate_limited, text, true);
        if (kind == "ModelNotReadyException" || kind == "ServiceUnavailableException") return fail(error_kind::unavailable, text, true);
        if (kind == "InternalServerException" || kind == "InternalFailure")
            return fail(error_kind::upstream, "Bedrock internal error: " + text, true);
        if (kind == "ValidationException") return fail(error_kind::invalid_request, text, false);
        if (kind == "ResourceNotFoundException") return fail(error_kind::not_found, text, false);
        if (kind == "ModelTimeoutException") return fail(error_kind::timeout, text, false);
        if (kind == "ModelErrorException" || kind == "ModelStreamErrorException")
            return fail(error_kind::upstream, "Bedrock model error: " + text, false);
        if (kind == "AccessDeniedException" || kind == "UnrecognizedClientException" || kind == "InvalidSignatureException" ||
            kind == "ExpiredTokenException" || kind == "InvalidClientTokenId" || kind == "IncompleteSignature" || status == 401 ||
            status == 403) {
            auto f = fail(error_kind::upstream, "Bedrock rejected the credentials: " + text, false);
            f.e.code = "upstream_credentials";
            return f;
        }
        if (status == 429) return fail(error_kind::rate_limited, text, true);
        if (status == 408) return fail(error_kind::timeout, text, false);
        if (status >= 500) return fail(error_kind::upstream, "Bedrock error (HTTP " + std::to_string(status) + "): " + text, status != 501);
        if (status >= 400) return fail(error_kind::invalid_request, text, false);
        return fail(error_kind::upstream, text, false);
    }

    static result<completion, upstream_failure> parse_answer(const std::string& raw) {
        const auto j = nlohmann::json::parse(raw, nullptr, false);
        const nlohmann::json* content = nullptr;
        if (j.is_object() && j.contains("output") && j["output"].is_object() && j["output"].contains("message") &&
            j["output"]["message"].is_object() && j["output"]["message"].contains("content") &&
            j["output"]["message"]["content"].is_array())
            content = &j["output"]["message"]["content"];
        if (!content) return upstream_failure{{error_kind::upstream, "Bedrock sent a malformed answer", "upstream_malformed"}, false};
        completion c;
        nlohmann::json calls = nlohmann::json::array();
        for (const auto& block : *content) {
            if (block.is_object() && block.contains("text") && block["text"].is_string()) c.content += block["text"].get<std::string>();
            else if (block.is_object() && block.contains("toolUse") && block["toolUse"].is_object()) {
                const auto& use = block["toolUse"];
                calls.push_back(tool_call(string_field(use, "toolUseId", ""), string_field(use, "name", ""),
                                          use.contains("input") && use["input"].is_object() ? dump_json(use["input"]) : "{}"));
            }
        }
        if (!calls.empty()) c.extra = {{"tool_calls", std::move(calls)}};
        c.finish_reason = finish_reason(string_field(j, "stopReason", "end_turn"));
        read_usage(j, c.usage);
        return c;
    }
};

} // namespace detail
} // namespace chatkit
