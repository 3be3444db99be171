// The Anthropic Messages API on the serving side (docs/http-api.md#post-v1messages): a `POST /v1/messages`
// body into a chat_request, a completion into a `message`, the event sequence of a stream, and
// Anthropic's error envelope. The service uses it so that Anthropic clients (the official SDKs,
// Claude Code) talk to any provider chatkit serves, translated through the same chat_request the
// OpenAI surface fills: tool definitions, tool calls and tool results take their OpenAI form there
// (what the OpenAI and Anthropic providers relay), and a provider that cannot honour them refuses
// with a 400.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/sse.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit::anthropic_api {

using chatkit::detail::invalid;

// Request fields this surface translates; any other is refused by name, never dropped (a field the
// client relies on, such as `thinking` or `top_k`, would otherwise change the answer unnoticed).
inline constexpr std::string_view known_fields[] = {"model",          "messages", "max_tokens", "system", "temperature", "top_p",
                                                    "stop_sequences", "stream",   "metadata",   "tools",  "tool_choice", "cache"};

namespace detail {

inline error unsupported(const std::string& what, const std::string& param) {
    return invalid(what + " is not supported by this gateway's /v1/messages", param, "unsupported_parameter");
}

// The text of a `tool_result` content: a string, or text blocks.
inline result<std::string> tool_result_text(const nlohmann::json& content, const std::string& at) {
    if (content.is_null()) return std::string{};
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) return invalid(at + ".content must be a string or an array of blocks", at + ".content", "invalid_type");
    std::string text;
    for (std::size_t i = 0; i < content.size(); ++i) {
        const auto& b = content[i];
        const std::string bat = at + ".content[" + std::to_string(i) + "]";
        if (!b.is_object() || b.value("type", "") != "text" || !b.contains("text") || !b["text"].is_string())
            return unsupported("a tool_result block other than text", bat);
        text += b["text"].get<std::string>();
    }
    return text;
}

// One Anthropic message into chat messages: tool results become `tool` messages (before the
// message's text, as the tool answered before the user spoke again), tool uses become the
// assistant message's OpenAI `tool_calls`.
inline result<void> append_message(const nlohmann::json& m, const std::string& at, std::vector<message>& out) {
    if (!m.is_object()) return invalid(at + " must be an object", at, "invalid_type");
    const auto r = m.find("role");
    if (r == m.end() || !r->is_string() || (*r != "user" && *r != "assistant"))
        return invalid(at + ".role must be user or assistant", at + ".role", "invalid_role");
    const role who = *r == "user" ? role::user : role::assistant;
    const auto c = m.find("content");
    if (c == m.end()) return invalid(at + ".content is required", at + ".content", "missing_field");
    if (c->is_string()) {
        out.push_back({who, c->get<std::string>(), nullptr});
        return {};
    }
    if (!c->is_array()) return invalid(at + ".content must be a string or an array of blocks", at + ".content", "invalid_type");
    std::string text;
    nlohmann::json calls = nlohmann::json::array();
    for (std::size_t i = 0; i < c->size(); ++i) {
        const auto& b = (*c)[i];
        const std::string bat = at + ".content[" + std::to_string(i) + "]";
        if (!b.is_object() || !b.contains("type") || !b["type"].is_string())
            return invalid(bat + " must be an object with a type", bat, "invalid_type");
        const auto& type = b["type"].get_ref<const std::string&>();
        if (type == "text") {
            if (!b.contains("text") || !b["text"].is_string())
                return invalid(bat + ".text must be a string", bat + ".text", "invalid_type");
            text += b["text"].get<std::string>();
        } else if (type == "tool_use" && who == role::assistant) {
            if (!b.contains("id") || !b["id"].is_string() || !b.contains("name") || !b["name"].is_string())
                return invalid(bat + " needs a string id and name", bat, "invalid_type");
            const auto input = b.contains("input") ? b["input"] : nlohmann::json::object();
            calls.push_back({{"id", b["id"]}, {"type", "function"}, {"function", {{"name", b["name"]}, {"arguments", dump_json(input)}}}});
        } else if (type == "tool_result" && who == role::user) {
            if (!b.contains("tool_use_id") || !b["tool_use_id"].is_string())
                return invalid(bat + ".tool_use_id must be a string", bat + ".tool_use_id", "invalid_type");
            auto result_text = tool_result_text(b.contains("content") ? b["content"] : nlohmann::json{}, bat);
            if (!result_text) return std::move(result_text).error();
            // OpenAI's tool message has no error flag: the model is told in the text instead.
            std::string said = b.value("is_error", false) ? "Error: " + *result_text : std::move(result_text).value();
            out.push_back({role::tool, std::move(said), {{"tool_call_id", b["tool_use_id"]}}});
        } else {
            return unsupported("a '" + type + "' block in a " + r->get<std::string>() + " message", bat);
        }
    }
    if (!calls.empty()) out.push_back({who, std::move(text), {{"tool_calls", std::move(calls)}}});
    else if (!text.empty() || out.empty() || out.back().role != role::tool) out.push_back({who, std::move(text), nullptr});
    return {};
}

// Anthropic tools ({name, description, input_schema}) as OpenAI function tools.
inline result<nlohmann::json> tools_of(const nlohmann::json& tools) {
    if (!tools.is_array()) return invalid("'tools' must be an array", "tools", "invalid_type");
    nlohmann::json out = nlohmann::json::array();
    for (std::size_t i = 0; i < tools.size(); ++i) {
        const auto& t = tools[i];
        const std::string at = "tools[" + std::to_string(i) + "]";
        if (!t.is_object() || !t.contains("name") || !t["name"].is_string())
            return invalid(at + " needs a string name", at + ".name", "invalid_type");
        // Server tools (web search, code execution, ...) carry a versioned type and run at Anthropic.
        if (t.contains("type") && !t["type"].is_null() && t["type"] != "custom")
            return unsupported("the server tool '" + t.value("type", "") + "'", at + ".type");
        nlohmann::json fn = {{"name", t["name"]},
                             {"parameters", t.contains("input_schema") ? t["input_schema"] : nlohmann::json::object()}};
        if (t.contains("description") && t["description"].is_string()) fn["description"] = t["description"];
        out.push_back({{"type", "function"}, {"function", std::move(fn)}});
    }
    return out;
}

inline result<nlohmann::json> tool_choice_of(const nlohmann::json& choice) {
    if (!choice.is_object() || !choice.contains("type") || !choice["type"].is_string())
        return invalid("'tool_choice' must be an object with a type", "tool_choice", "invalid_type");
    if (choice.value("disable_parallel_tool_use", false))
        return unsupported("'disable_parallel_tool_use'", "tool_choice.disable_parallel_tool_use");
    const auto& type = choice["type"].get_ref<const std::string&>();
    if (type == "auto") return nlohmann::json("auto");
    if (type == "any") return nlohmann::json("required");
    if (type == "none") return nlohmann::json("none");
    if (type == "tool" && choice.contains("name") && choice["name"].is_string())
        return nlohmann::json{{"type", "function"}, {"function", {{"name", choice["name"]}}}};
    return invalid("'tool_choice.type' must be auto, any, tool (with a name) or none", "tool_choice.type");
}

} // namespace detail

/// Parses and validates a Messages API request body. `model`, `messages` and `max_tokens` are
/// required, as Anthropic requires them; `cache_control` on blocks is accepted and not forwarded
/// (it only marks what may be cached, never what is answered).
[[nodiscard]] inline result<chat_request> parse_request(const nlohmann::json& body, const request_limits& limits = {}) {
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    for (const auto& [key, value] : body.items())
        if (std::find(std::begin(known_fields), std::end(known_fields), key) == std::end(known_fields))
            return detail::unsupported("'" + key + "'", key);
    for (const char* required : {"model", "max_tokens"})
        if (!body.contains(required) || body[required].is_null())
            return invalid(std::string{"'"} + required + "' is required", required, "missing_field");

    nlohmann::json common = nlohmann::json::object();
    for (const char* key : {"model", "temperature", "max_tokens", "stream", "cache"})
        if (auto it = body.find(key); it != body.end()) common[key] = *it;
    common["content"] = ""; // the messages are translated below
    auto parsed = parse_chat_request(common, limits);
    if (!parsed) return std::move(parsed).error();
    chat_request req = std::move(parsed).value();
    req.messages.clear();
    if (req.model.empty()) return invalid("'model' must not be empty", "model");
    if (req.temperature && *req.temperature > 1.0) return invalid("'temperature' must be between 0 and 1", "temperature");

    if (auto s = body.find("system"); s != body.end() && !s->is_null()) {
        std::string text;
        if (s->is_string()) {
            text = s->get<std::string>();
        } else if (s->is_array()) {
            for (std::size_t i = 0; i < s->size(); ++i) {
                const auto& b = (*s)[i];
                if (!b.is_object() || b.value("type", "") != "text" || !b.contains("text") || !b["text"].is_string())
                    return invalid("system[" + std::to_string(i) + "] must be a text block", "system[" + std::to_string(i) + "]",
                                   "invalid_type");
                if (!text.empty()) text += "\n\n";
                text += b["text"].get<std::string>();
            }
        } else {
            return invalid("'system' must be a string or an array of text blocks", "system", "invalid_type");
        }
        req.messages.push_back({role::system, std::move(text), nullptr});
    }

    const auto messages = body.find("messages");
    if (messages == body.end() || !messages->is_array()) return invalid("'messages' must be an array", "messages", "invalid_type");
    if (messages->empty()) return invalid("'messages' must not be empty", "messages", "empty_messages");
    if (messages->size() > limits.max_messages)
        return invalid("'messages' has " + std::to_string(messages->size()) + " items; the limit is " + std::to_string(limits.max_messages),
                       "messages", "too_many_messages");
    for (std::size_t i = 0; i < messages->size(); ++i)
        if (auto added = detail::append_message((*messages)[i], "messages[" + std::to_string(i) + "]", req.messages); !added)
            return std::move(added).error();

    if (auto it = body.find("top_p"); it != body.end() && !it->is_null()) {
        if (!it->is_number() || it->get<double>() < 0 || it->get<double>() > 1)
            return invalid("'top_p' must be a number from 0 to 1", "top_p");
        req.extensions["top_p"] = *it;
    }
    if (auto it = body.find("stop_sequences"); it != body.end() && !it->is_null()) {
        if (!it->is_array() || !std::all_of(it->begin(), it->end(), [](const nlohmann::json& s) { return s.is_string(); }))
            return invalid("'stop_sequences' must be an array of strings", "stop_sequences", "invalid_type");
        if (!it->empty()) req.extensions["stop"] = *it;
    }
    if (auto it = body.find("tools"); it != body.end() && !it->is_null()) {
        auto tools = detail::tools_of(*it);
        if (!tools) return std::move(tools).error();
        if (!tools->empty()) req.extensions["tools"] = std::move(tools).value();
    }
    if (auto it = body.find("tool_choice"); it != body.end() && !it->is_null()) {
        auto choice = detail::tool_choice_of(*it);
        if (!choice) return std::move(choice).error();
        if (req.extensions.contains("tools")) req.extensions["tool_choice"] = std::move(choice).value();
    }
    // metadata.user_id names the end user: it becomes the history's owner when it is a valid
    // chatkit user id (an opaque id longer than that still gets its answer, stored anonymously).
    if (auto it = body.find("metadata"); it != body.end() && !it->is_null()) {
        if (!it->is_object()) return invalid("'metadata' must be an object", "metadata", "invalid_type");
        for (const auto& [key, value] : it->items())
            if (key != "user_id") return detail::unsupported("'metadata." + key + "'", "metadata." + key);
        if (auto u = it->find("user_id"); u != it->end() && !u->is_null()) {
            if (!u->is_string()) return invalid("'metadata.user_id' must be a string", "metadata.user_id", "invalid_type");
            const auto& id = u->get_ref<const std::string&>();
            if (!id.empty() && id.size() <= limits.max_user_id_bytes && !chatkit::detail::has_control_characters(id) &&
                id.find('/') == std::string::npos)
                req.user_id = id;
        }
    }
    return req;
}

// OpenAI's finish_reason (what a completion carries) as Anthropic's stop_reason.
[[nodiscard]] inline std::string_view stop_reason(std::string_view finish_reason) noexcept {
    if (finish_reason == "length") return "max_tokens";
    if (finish_reason == "tool_calls" || finish_reason == "function_call") return "tool_use";
    if (finish_reason == "content_filter") return "refusal";
    return "end_turn";
}

// Anthropic's input_tokens leaves out the tokens read from the prompt cache; OpenAI's
// prompt_tokens (what token_usage keeps) includes them.
[[nodiscard]] inline nlohmann::json usage_object(const token_usage& u) {
    return {{"input_tokens", std::max(u.prompt_tokens - u.cached_tokens, 0)},
            {"output_tokens", u.completion_tokens},
            {"cache_creation_input_tokens", 0},
            {"cache_read_input_tokens", u.cached_tokens}};
}

// The completion's OpenAI tool_calls as `tool_use` blocks. Anthropic's input must be an object:
// arguments that are not one (a model's malformed output) become {}, with nothing invented.
[[nodiscard]] inline nlohmann::json tool_use_blocks(const completion& c) {
    nlohmann::json blocks = nlohmann::json::array();
    if (!c.extra.is_object() || !c.extra.contains("tool_calls") || !c.extra["tool_calls"].is_array()) return blocks;
    for (const auto& call : c.extra["tool_calls"]) {
        if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) continue;
        const auto& fn = call["function"];
        auto input = nlohmann::json::parse(fn.value("arguments", std::string{"{}"}), nullptr, false);
        if (!input.is_object()) input = nlohmann::json::object();
        blocks.push_back({{"type", "tool_use"}, {"id", call.value("id", "")}, {"name", fn.value("name", "")}, {"input", std::move(input)}});
    }
    return blocks;
}

/// The `message` object of a non-streamed answer.
[[nodiscard]] inline nlohmann::json message_object(const completion& c, std::string_view id) {
    nlohmann::json content = nlohmann::json::array();
    if (!c.content.empty()) content.push_back({{"type", "text"}, {"text", c.content}});
    for (auto& b : tool_use_blocks(c)) content.push_back(std::move(b));
    return {{"id", id},
            {"type", "message"},
            {"role", "assistant"},
            {"model", c.model},
            {"content", std::move(content)},
            {"stop_reason", stop_reason(c.finish_reason)},
            {"stop_sequence", nullptr},
            {"usage", usage_object(c.usage)}};
}

// Anthropic's error types by status; 503 is its `overloaded_error` (Anthropic sends it as 529).
[[nodiscard]] inline std::string_view error_type(int status) noexcept {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

/// {"type":"error","error":{"type","message"},"request_id"}: Anthropic's envelope.
[[nodiscard]] inline nlohmann::json error_body(int status, std::string_view message, std::string_view request_id) {
    nlohmann::json body = {{"type", "error"}, {"error", {{"type", error_type(status)}, {"message", message}}}};
    if (!request_id.empty()) body["request_id"] = request_id;
    return body;
}

/// Rewrites an error answer in chatkit's (OpenAI's) envelope, whoever produced it (a middleware's
/// 401 or 429 too), into Anthropic's, keeping the status and headers.
inline void to_anthropic_error(http_response& res) {
    if (res.status < 400 || res.is_stream()) return;
    const auto body = nlohmann::json::parse(res.body, nullptr, false);
    if (!body.is_object() || !body.contains("error") || !body["error"].is_object()) return;
    const auto& e = body["error"];
    res.body = dump_json(error_body(res.status, e.value("message", std::string{}), body.value("request_id", std::string{})));
}

/// An error inside a stream, once the status is out: Anthropic's `error` event.
[[nodiscard]] inline std::string error_event(const error& e, std::string_view request_id) {
    return sse_event("error", dump_json(error_body(http_status(e.kind), e.message, request_id)));
}

/// Frames one completion as the Messages stream: message_start and ping, then content blocks
/// one at a time (a text block growing by text_delta, a tool_use block growing by
/// input_json_delta, each closed by content_block_stop when the next begins), message_delta with
/// the stop reason and usage, message_stop. The head is sent with the first delta (or at the end
/// of an answer without one), so a failure before it leaves only an `error` event.
class event_writer {
public:
    event_writer(std::string id, std::string model) : id_(std::move(id)), model_(std::move(model)) {}
    [[nodiscard]] const std::string& id() const noexcept { return id_; }

    std::string delta(std::string_view text) {
        std::string out = head();
        if (open_ != block::text) {
            out += close_block();
            open_block(block::text);
            out += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":";
            out.append(std::to_string(index_)).append(",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        }
        out += "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":";
        out.append(std::to_string(index_)).append(",\"delta\":{\"type\":\"text_delta\",\"text\":");
        out.append(dump_json(nlohmann::json(text))).append("}}\n\n");
        return out;
    }

    // A tool call's piece: its first opens a tool_use block (input {} as Anthropic starts one);
    // its arguments arrive as input_json_delta fragments.
    std::string tool_call(const tool_call_delta& piece) {
        std::string out = head();
        if (open_ != block::tool || piece.index != call_) {
            out += close_block();
            open_block(block::tool);
            call_ = piece.index;
            calls_streamed_ = true;
            const nlohmann::json start = {
                {"type", "tool_use"}, {"id", piece.id}, {"name", piece.name}, {"input", nlohmann::json::object()}};
            out += sse_event("content_block_start",
                             dump_json({{"type", "content_block_start"}, {"index", index_}, {"content_block", start}}));
        }
        if (!piece.arguments.empty())
            out += sse_event("content_block_delta",
                             dump_json({{"type", "content_block_delta"},
                                        {"index", index_},
                                        {"delta", {{"type", "input_json_delta"}, {"partial_json", piece.arguments}}}}));
        return out;
    }

    std::string finish(const completion& c) {
        model_ = c.model;
        std::string out = head();
        out += close_block();
        // Tool calls not streamed as they came (a cached answer's, a blocking provider's) come whole.
        if (!calls_streamed_)
            for (auto& block : tool_use_blocks(c)) {
                const std::string input = dump_json(block["input"]);
                block["input"] = nlohmann::json::object();
                open_block(block::tool);
                out += sse_event("content_block_start",
                                 dump_json({{"type", "content_block_start"}, {"index", index_}, {"content_block", block}}));
                out += sse_event("content_block_delta", dump_json({{"type", "content_block_delta"},
                                                                   {"index", index_},
                                                                   {"delta", {{"type", "input_json_delta"}, {"partial_json", input}}}}));
                out += close_block();
            }
        out += sse_event("message_delta", dump_json({{"type", "message_delta"},
                                                     {"delta", {{"stop_reason", stop_reason(c.finish_reason)}, {"stop_sequence", nullptr}}},
                                                     {"usage", usage_object(c.usage)}}));
        out += sse_event("message_stop", R"({"type":"message_stop"})");
        return out;
    }

private:
    std::string head() {
        if (started_) return {};
        started_ = true;
        nlohmann::json message = {{"id", id_},
                                  {"type", "message"},
                                  {"role", "assistant"},
                                  {"model", model_},
                                  {"content", nlohmann::json::array()},
                                  {"stop_reason", nullptr},
                                  {"stop_sequence", nullptr},
                                  {"usage", usage_object({})}};
        return sse_event("message_start", dump_json({{"type", "message_start"}, {"message", std::move(message)}})) +
               sse_event("ping", R"({"type":"ping"})");
    }

    enum class block { none, text, tool };
    void open_block(block kind) {
        open_ = kind;
        index_ = next_index_++;
    }
    std::string close_block() {
        if (open_ == block::none) return {};
        open_ = block::none;
        return "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":" + std::to_string(index_) + "}\n\n";
    }

    std::string id_, model_;
    bool started_ = false;
    block open_ = block::none;
    int index_ = 0;        // the open block's
    int next_index_ = 0;   // the next block's
    std::size_t call_ = 0; // the tool call the open tool_use block shows
    bool calls_streamed_ = false;
};

} // namespace chatkit::anthropic_api
