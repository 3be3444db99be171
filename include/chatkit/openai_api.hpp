// The OpenAI Chat Completions wire format on the serving side (docs/protocols.md §1): a request body
// into a chat_request, a completion into `chat.completion`, and the `chat.completion.chunk`
// events of a stream. The service uses it for POST /v1/chat/completions and GET /v1/models, so
// any OpenAI client can talk to a chatkit service unchanged.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/error.hpp"
#include "chatkit/pricing.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/sse.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit::openai_api {

using chatkit::detail::invalid;

// Request fields the core reads itself; every other field is kept in chat_request::extensions.
inline constexpr std::string_view modelled_fields[] = {"messages", "model",          "temperature", "max_tokens", "max_completion_tokens",
                                                       "stream",   "stream_options", "user",        "cache",      "n"};

namespace content {
// A message's text: a string, or the text parts of a content array. Non-text parts (images,
// audio) cannot be reduced to text, so the array itself is kept for the upstream.
inline result<std::string> text_of(const nlohmann::json& content, const std::string& at, nlohmann::json& extra) {
    if (content.is_null()) return std::string{};
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) return invalid(at + ".content must be a string, an array of parts or null", at + ".content", "invalid_type");
    std::string text;
    for (const auto& part : content) {
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
            return invalid(at + ".content parts must be objects with a type", at + ".content", "invalid_type");
        if (part["type"] == "text") {
            if (!part.contains("text") || !part["text"].is_string())
                return invalid(at + ".content text parts need a string 'text'", at + ".content", "invalid_type");
            text += part["text"].get<std::string>();
        } else {
            extra["content"] = content;
        }
    }
    return text;
}
} // namespace content

// Parses and validates a `CreateChatCompletionRequest` body.
[[nodiscard]] inline result<chat_request> parse_request(const nlohmann::json& body, const request_limits& limits = {}) {
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    // The chatkit fields shared with POST /chat are validated by the same code.
    nlohmann::json common = nlohmann::json::object();
    for (const char* key : {"model", "temperature", "stream", "cache"})
        if (auto it = body.find(key); it != body.end()) common[key] = *it;
    if (auto it = body.find("max_completion_tokens"); it != body.end() && !it->is_null()) common["max_tokens"] = *it;
    else if (auto mt = body.find("max_tokens"); mt != body.end()) common["max_tokens"] = *mt;
    if (auto it = body.find("user"); it != body.end() && !it->is_null()) {
        if (!it->is_string()) return invalid("'user' must be a string", "user", "invalid_type");
        common["user_id"] = *it;
    }
    common["content"] = ""; // messages are parsed below, with the OpenAI roles and content forms
    auto parsed = parse_chat_request(common, limits);
    if (!parsed) {
        auto e = std::move(parsed).error();
        if (e.param == "user_id")
            e = invalid("'user' must be 1 to " + std::to_string(limits.max_user_id_bytes) + " bytes without control characters or '/'",
                        "user");
        return e;
    }
    chat_request req = std::move(parsed).value();
    req.messages.clear();

    auto messages = body.find("messages");
    if (messages == body.end() || !messages->is_array()) return invalid("'messages' must be an array", "messages", "invalid_type");
    if (messages->empty()) return invalid("'messages' must not be empty", "messages", "empty_messages");
    if (messages->size() > limits.max_messages)
        return invalid("'messages' has " + std::to_string(messages->size()) + " items; the limit is " + std::to_string(limits.max_messages),
                       "messages", "too_many_messages");
    for (std::size_t i = 0; i < messages->size(); ++i) {
        const auto& m = (*messages)[i];
        const std::string at = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) return invalid(at + " must be an object", at, "invalid_type");
        const auto r = m.find("role");
        if (r == m.end() || !r->is_string()) return invalid(at + ".role must be a string", at + ".role", "invalid_type");
        const auto& role_name = r->get_ref<const std::string&>();
        auto parsed_role = role_name == "developer" ? std::optional{role::system} : parse_role(role_name);
        if (!parsed_role)
            return invalid(at + ".role must be one of system, developer, user, assistant, tool", at + ".role", "invalid_role");
        message msg{*parsed_role, {}, nlohmann::json::object()};
        auto text = content::text_of(m.contains("content") ? m["content"] : nlohmann::json{}, at, msg.extra);
        if (!text) return std::move(text).error();
        msg.content = std::move(text).value();
        for (const auto& [key, value] : m.items())
            if (key != "role" && key != "content") msg.extra[key] = value;
        if (msg.extra.empty()) msg.extra = nullptr;
        req.messages.push_back(std::move(msg));
    }

    if (auto n = body.find("n"); n != body.end() && !n->is_null() && *n != 1)
        return invalid("chatkit answers with one choice: 'n' must be 1", "n", "unsupported_value");
    if (auto options = body.find("stream_options"); options != body.end() && !options->is_null()) {
        if (!options->is_object()) return invalid("'stream_options' must be an object", "stream_options", "invalid_type");
    }
    // A null field means absent, as in the OpenAI API.
    for (const auto& [key, value] : body.items())
        if (!value.is_null() && std::find(std::begin(modelled_fields), std::end(modelled_fields), key) == std::end(modelled_fields))
            req.extensions[key] = value;
    // Newer OpenAI models take only max_completion_tokens: remember which name the client used.
    if (auto it = body.find("max_completion_tokens"); it != body.end() && !it->is_null()) req.extensions["max_completion_tokens"] = *it;
    return req;
}

// Whether the client asked for the usage chunk at the end of a stream.
[[nodiscard]] inline bool wants_stream_usage(const nlohmann::json& body) {
    const auto options = body.find("stream_options");
    return options != body.end() && options->is_object() && options->value("include_usage", false) == true;
}

[[nodiscard]] inline nlohmann::json usage_object(const token_usage& u) { return u; }

// The `chat.completion` object (docs/protocols.md §1.6), as a tree.
[[nodiscard]] inline nlohmann::json completion_object(const completion& c) {
    nlohmann::json message = {{"role", "assistant"}, {"content", c.content}, {"refusal", nullptr}};
    if (c.extra.is_object())
        for (const auto& [key, value] : c.extra.items()) message[key] = value;
    if (c.content.empty() && message.contains("tool_calls")) message["content"] = nullptr;
    return {{"id", c.id},
            {"object", "chat.completion"},
            {"created", c.created_at / 1000},
            {"model", c.model},
            {"choices", {{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason}}}},
            {"usage", c.usage},
            {"system_fingerprint", nullptr}};
}

// The same object written as text, in OpenAI's field order: what the service answers with. The
// reply's extra fields (tool_calls, a refusal, ...) take their place in the message as in
// completion_object, and a reply that is only tool calls has a null content.
[[nodiscard]] inline std::string completion_text(const completion& c) {
    const nlohmann::json* extra = c.extra.is_object() && !c.extra.empty() ? &c.extra : nullptr;
    auto extra_field = [extra](const char* key) -> const nlohmann::json* {
        if (!extra) return nullptr;
        const auto it = extra->find(key);
        return it == extra->end() ? nullptr : &*it;
    };
    std::string out;
    out.reserve(320 + c.content.size() + c.id.size() + c.model.size());
    out += R"({"id":)";
    append_json_string(out, c.id);
    out += R"(,"object":"chat.completion","created":)";
    append_json_int(out, c.created_at / 1000);
    out += R"(,"model":)";
    append_json_string(out, c.model);
    out += R"(,"choices":[{"index":0,"message":{"role":)";
    if (const auto* role = extra_field("role")) append_json(out, *role);
    else out += R"("assistant")";
    out += R"(,"content":)";
    if (const auto* content = extra_field("content")) append_json(out, *content);
    else if (c.content.empty() && extra_field("tool_calls")) out += "null";
    else append_json_string(out, c.content);
    out += R"(,"refusal":)";
    if (const auto* refusal = extra_field("refusal")) append_json(out, *refusal);
    else out += "null";
    if (extra)
        for (const auto& [key, value] : extra->items()) {
            if (key == "role" || key == "content" || key == "refusal") continue;
            out += ',';
            append_json_string(out, key);
            out += ':';
            append_json(out, value);
        }
    out += R"(},"logprobs":null,"finish_reason":)";
    append_json_string(out, c.finish_reason);
    out += R"(}],"usage":)";
    append_usage(out, c.usage);
    out += R"(,"system_fingerprint":null})";
    return out;
}

// Frames one completion as `chat.completion.chunk` events (docs/protocols.md §1.7).
class completion_chunks {
public:
    completion_chunks(std::string id, std::string model, unix_ms created)
        : id_(std::move(id)), model_(std::move(model)), created_(created / 1000) {}

    [[nodiscard]] const std::string& id() const noexcept { return id_; }

    // The first chunk carries the role; the rest carry text. Those differ only in their text, so
    // the bytes around it are built once per stream (from a chunk serialized with a marker in the
    // text's place, so they are exactly what the JSON library writes) and each delta costs one
    // string escape instead of a JSON tree and its dump.
    std::string delta(std::string_view text) {
        if (!role_sent_) {
            role_sent_ = true;
            nlohmann::json delta = {{"content", text}, {"role", "assistant"}};
            return chunk({{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
        }
        if (text_prefix_.empty()) build_text_frame();
        std::string out;
        out.reserve(text_prefix_.size() + text.size() + 8 + text_suffix_.size());
        out.append(text_prefix_).append(dump_json(nlohmann::json(text))).append(text_suffix_);
        return out;
    }
    // A tool call's piece as OpenAI streams it: the call's first chunk carries its index, id,
    // type and name with the first arguments; the next carry the index and more arguments.
    std::string tool_call(const tool_call_delta& piece) {
        std::string out;
        if (!role_sent_) {
            role_sent_ = true;
            nlohmann::json delta = {{"role", "assistant"}, {"content", nullptr}};
            out += chunk({{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
        }
        nlohmann::json call = {{"index", piece.index}};
        nlohmann::json function = {{"arguments", piece.arguments}};
        if (!calls_streamed_ || piece.index != last_call_) {
            call["id"] = piece.id;
            call["type"] = "function";
            function["name"] = piece.name;
        }
        call["function"] = std::move(function);
        calls_streamed_ = true;
        last_call_ = piece.index;
        nlohmann::json delta = {{"tool_calls", nlohmann::json::array({std::move(call)})}};
        return out + chunk({{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
    }

    // The closing chunks: the finish reason, the usage when asked for, then [DONE]. A gateway's
    // metadata (an object; null for none) rides on the last chunk before [DONE]: the usage chunk
    // when there is one, so that it comes after the usage.
    std::string finish(const completion& c, bool include_usage, const nlohmann::json& gateway_metadata = nullptr) {
        std::string out;
        if (!role_sent_) out += delta("");
        nlohmann::json delta = nlohmann::json::object();
        // Tool calls not streamed as they came (a cached answer's, a blocking provider's) come
        // whole here. A streamed tool call names its place by `index`: the SDKs assemble calls by it.
        if (!calls_streamed_ && c.extra.is_object() && c.extra.contains("tool_calls") && c.extra["tool_calls"].is_array()) {
            auto calls = c.extra["tool_calls"];
            for (std::size_t i = 0; i < calls.size(); ++i)
                if (calls[i].is_object()) calls[i]["index"] = i;
            delta["tool_calls"] = std::move(calls);
        }
        model_ = c.model;
        auto last = base();
        last["choices"] = {{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason}}};
        if (include_usage) {
            out += sse_event("", dump_json(last));
            last = base();
            last["choices"] = nlohmann::json::array();
            last["usage"] = c.usage;
        }
        if (!gateway_metadata.is_null()) last["gateway_metadata"] = gateway_metadata;
        out += sse_event("", dump_json(last));
        return out + sse_event("", "[DONE]");
    }

private:
    nlohmann::json base() const {
        return {
            {"id", id_}, {"object", "chat.completion.chunk"}, {"created", created_}, {"model", model_}, {"system_fingerprint", nullptr}};
    }
    std::string chunk(nlohmann::json choices) {
        auto j = base();
        j["choices"] = std::move(choices);
        return sse_event("", dump_json(j));
    }
    void build_text_frame() {
        static constexpr std::string_view marker = "\x01chatkit-text\x01"; // dumps as "\u0001chatkit-text\u0001"
        const std::string frame = chunk(
            {{{"index", 0}, {"delta", {{"content", marker}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
        const std::string dumped = dump_json(nlohmann::json(marker));
        const auto at = frame.find(dumped);
        text_prefix_ = frame.substr(0, at);
        text_suffix_ = frame.substr(at + dumped.size());
    }
    std::string text_prefix_, text_suffix_;

    std::string id_, model_;
    unix_ms created_;
    bool role_sent_ = false;
    bool calls_streamed_ = false; // tool calls went out piece by piece
    std::size_t last_call_ = 0;   // the index of the call streamed last
};

// An error inside a stream: the HTTP status is already 200, so it travels as an event whose JSON
// has an "error" key, which the official SDKs raise (docs/protocols.md §1.7).
[[nodiscard]] inline std::string error_event(const error& e) { return sse_event("", dump_json(to_envelope(e))); }

// `GET /v1/models` (docs/protocols.md §1.9).
// With a price table, each model also carries its `pricing` in USD per 1,000 tokens (null when
// it has no price), a gateway's extension that OpenAI clients ignore.
[[nodiscard]] inline nlohmann::json models_list(const std::vector<std::string>& ids, std::string_view owner,
                                                const price_table* prices = nullptr) {
    nlohmann::json data = nlohmann::json::array();
    for (const auto& id : ids) {
        nlohmann::json m = {{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", owner}};
        if (prices) {
            const model_price* p = prices->find(id);
            m["pricing"] = p ? nlohmann::json{{"input_per_1k", p->input / 1000}, {"output_per_1k", p->output / 1000}}
                             : nlohmann::json(nullptr);
        }
        data.push_back(std::move(m));
    }
    return {{"object", "list"}, {"data", data}};
}

} // namespace chatkit::openai_api
