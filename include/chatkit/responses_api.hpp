// The OpenAI Responses API on the serving side (docs/http-api.md#post-v1responses): a
// `POST /v1/responses` body into a chat_request, a completion into a `response` object, and the
// named events of a stream. The service uses it so that Responses clients (the official SDKs,
// Codex) talk to any provider chatkit serves. Function tools, calls and their outputs take their
// Chat Completions form in the chat_request, as on the OpenAI route. Nothing is stored for later
// retrieval, so `store: true` and `previous_response_id` are refused rather than ignored.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/sse.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit::responses_api {

using chatkit::detail::invalid;

// Request fields this surface translates or accepts; any other is refused by name, never dropped.
inline constexpr std::string_view known_fields[] = {"model",
                                                    "input",
                                                    "instructions",
                                                    "max_output_tokens",
                                                    "temperature",
                                                    "top_p",
                                                    "stream",
                                                    "tools",
                                                    "tool_choice",
                                                    "parallel_tool_calls",
                                                    "store",
                                                    "metadata",
                                                    "user",
                                                    "text",
                                                    "reasoning",
                                                    "truncation",
                                                    "include",
                                                    "stream_options",
                                                    "prompt_cache_key",
                                                    "safety_identifier",
                                                    "service_tier",
                                                    "cache"};

namespace detail {

inline error unsupported(const std::string& what, const std::string& param) {
    return invalid(what + " is not supported by this gateway's /v1/responses", param, "unsupported_parameter");
}

// The text of a message's content: a string, or input_text / output_text parts.
inline result<std::string> text_of(const nlohmann::json& content, const std::string& at) {
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) return invalid(at + " must be a string or an array of content parts", at, "invalid_type");
    std::string text;
    for (std::size_t i = 0; i < content.size(); ++i) {
        const auto& part = content[i];
        const std::string pat = at + "[" + std::to_string(i) + "]";
        const std::string type = part.is_object() ? part.value("type", "") : "";
        if (type != "input_text" && type != "output_text")
            return type.empty() ? invalid(pat + " must be an object with a type", pat, "invalid_type")
                                : unsupported("a '" + type + "' content part", pat);
        if (!part.contains("text") || !part["text"].is_string())
            return invalid(pat + ".text must be a string", pat + ".text", "invalid_type");
        text += part["text"].get<std::string>();
    }
    return text;
}

// One input item into chat messages. Consecutive function calls join one assistant message, as
// Chat Completions carries parallel calls.
inline result<void> append_item(const nlohmann::json& item, const std::string& at, std::vector<message>& out) {
    if (!item.is_object()) return invalid(at + " must be an object", at, "invalid_type");
    const std::string type = item.value("type", item.contains("role") ? "message" : "");
    if (type == "message") {
        const std::string who = item.contains("role") && item["role"].is_string() ? item["role"].get<std::string>() : "";
        role r;
        if (who == "user") r = role::user;
        else if (who == "assistant") r = role::assistant;
        else if (who == "system" || who == "developer") r = role::system;
        else return invalid(at + ".role must be one of user, assistant, system, developer", at + ".role", "invalid_role");
        if (!item.contains("content")) return invalid(at + ".content is required", at + ".content", "missing_field");
        auto text = text_of(item["content"], at + ".content");
        if (!text) return std::move(text).error();
        out.push_back({r, std::move(text).value(), nullptr});
        return {};
    }
    if (type == "function_call") {
        for (const char* field : {"call_id", "name", "arguments"})
            if (!item.contains(field) || !item[field].is_string())
                return invalid(at + "." + field + " must be a string", at + "." + field, "invalid_type");
        nlohmann::json call = {
            {"id", item["call_id"]}, {"type", "function"}, {"function", {{"name", item["name"]}, {"arguments", item["arguments"]}}}};
        const bool joins = !out.empty() && out.back().role == role::assistant && out.back().content.empty() &&
                           out.back().extra.is_object() && out.back().extra.contains("tool_calls");
        if (joins) out.back().extra["tool_calls"].push_back(std::move(call));
        else out.push_back({role::assistant, {}, {{"tool_calls", nlohmann::json::array({std::move(call)})}}});
        return {};
    }
    if (type == "function_call_output") {
        if (!item.contains("call_id") || !item["call_id"].is_string())
            return invalid(at + ".call_id must be a string", at + ".call_id", "invalid_type");
        if (!item.contains("output")) return invalid(at + ".output is required", at + ".output", "missing_field");
        auto text = text_of(item["output"], at + ".output");
        if (!text) return std::move(text).error();
        out.push_back({role::tool, std::move(text).value(), {{"tool_call_id", item["call_id"]}}});
        return {};
    }
    if (type.empty()) return invalid(at + " needs a type or a role", at + ".type", "invalid_type");
    return unsupported("an input item of type '" + type + "'", at + ".type");
}

// Function tools ({type:function, name, description, parameters, strict}) in Chat Completions form.
inline result<nlohmann::json> tools_of(const nlohmann::json& tools) {
    if (!tools.is_array()) return invalid("'tools' must be an array", "tools", "invalid_type");
    nlohmann::json out = nlohmann::json::array();
    for (std::size_t i = 0; i < tools.size(); ++i) {
        const auto& t = tools[i];
        const std::string at = "tools[" + std::to_string(i) + "]";
        if (!t.is_object() || !t.contains("type") || !t["type"].is_string())
            return invalid(at + " needs a type", at + ".type", "invalid_type");
        // Hosted tools (web search, file search, computer use, MCP, ...) run at OpenAI, not here.
        if (t["type"] != "function") return unsupported("the tool type '" + t["type"].get<std::string>() + "'", at + ".type");
        if (!t.contains("name") || !t["name"].is_string()) return invalid(at + ".name must be a string", at + ".name", "invalid_type");
        nlohmann::json fn = {{"name", t["name"]}};
        for (const char* field : {"description", "parameters", "strict"})
            if (t.contains(field) && !t[field].is_null()) fn[field] = t[field];
        out.push_back({{"type", "function"}, {"function", std::move(fn)}});
    }
    return out;
}

inline result<nlohmann::json> tool_choice_of(const nlohmann::json& choice) {
    if (choice.is_string() && (choice == "auto" || choice == "none" || choice == "required")) return choice;
    if (choice.is_object() && choice.value("type", "") == "function" && choice.contains("name") && choice["name"].is_string())
        return nlohmann::json{{"type", "function"}, {"function", {{"name", choice["name"]}}}};
    if (choice.is_object() && choice.contains("type") && choice["type"].is_string())
        return unsupported("a tool_choice of type '" + choice["type"].get<std::string>() + "'", "tool_choice.type");
    return invalid("'tool_choice' must be auto, none, required or {\"type\":\"function\",\"name\":...}", "tool_choice");
}

// text.format in the Chat Completions response_format form.
inline result<nlohmann::json> response_format_of(const nlohmann::json& text) {
    if (!text.is_object()) return invalid("'text' must be an object", "text", "invalid_type");
    for (const auto& [key, value] : text.items())
        if (key != "format" && !value.is_null()) return unsupported("'text." + key + "'", "text." + key);
    const auto format = text.find("format");
    if (format == text.end() || format->is_null()) return nlohmann::json{};
    const std::string type = format->is_object() ? format->value("type", "") : "";
    if (type == "text") return nlohmann::json{};
    if (type == "json_object") return nlohmann::json{{"type", "json_object"}};
    if (type == "json_schema") {
        nlohmann::json schema = nlohmann::json::object();
        for (const char* field : {"name", "schema", "strict", "description"})
            if (format->contains(field)) schema[field] = (*format)[field];
        return nlohmann::json{{"type", "json_schema"}, {"json_schema", std::move(schema)}};
    }
    return invalid("'text.format.type' must be text, json_object or json_schema", "text.format.type");
}

} // namespace detail

/// Parses and validates a `POST /v1/responses` body.
[[nodiscard]] inline result<chat_request> parse_request(const nlohmann::json& body, const request_limits& limits = {}) {
    if (!body.is_object()) return invalid("request body must be a JSON object", "");
    for (const auto& [key, value] : body.items())
        if (!value.is_null() && std::find(std::begin(known_fields), std::end(known_fields), key) == std::end(known_fields)) {
            if (key == "previous_response_id" || key == "conversation")
                return detail::unsupported("'" + key + "' (responses are not stored: send the whole input)", key);
            return detail::unsupported("'" + key + "'", key);
        }

    nlohmann::json common = nlohmann::json::object();
    for (const char* key : {"model", "temperature", "stream", "cache"})
        if (auto it = body.find(key); it != body.end()) common[key] = *it;
    if (auto it = body.find("max_output_tokens"); it != body.end()) common["max_tokens"] = *it;
    if (auto it = body.find("user"); it != body.end() && !it->is_null()) common["user_id"] = *it;
    common["content"] = ""; // the input is translated below
    auto parsed = parse_chat_request(common, limits);
    if (!parsed) {
        auto e = std::move(parsed).error();
        if (e.param == "max_tokens")
            e = invalid("'max_output_tokens' must be an integer from 1 to " + std::to_string(limits.max_tokens), "max_output_tokens");
        if (e.param == "user_id")
            e = invalid("'user' must be 1 to " + std::to_string(limits.max_user_id_bytes) + " bytes without control characters or '/'",
                        "user");
        return e;
    }
    chat_request req = std::move(parsed).value();
    req.messages.clear();

    if (auto it = body.find("store"); it != body.end() && !it->is_null()) {
        if (!it->is_boolean()) return invalid("'store' must be a boolean", "store", "invalid_type");
        if (*it == true)
            return detail::unsupported("'store: true' (responses are not stored for later retrieval; send store: false)", "store");
    }
    if (auto it = body.find("instructions"); it != body.end() && !it->is_null()) {
        if (!it->is_string()) return invalid("'instructions' must be a string", "instructions", "invalid_type");
        req.messages.push_back({role::system, it->get<std::string>(), nullptr});
    }
    const auto input = body.find("input");
    if (input == body.end() || input->is_null()) return invalid("'input' is required", "input", "missing_field");
    if (input->is_string()) {
        req.messages.push_back({role::user, input->get<std::string>(), nullptr});
    } else if (input->is_array()) {
        if (input->empty()) return invalid("'input' must not be empty", "input", "empty_messages");
        if (input->size() > limits.max_messages)
            return invalid("'input' has " + std::to_string(input->size()) + " items; the limit is " + std::to_string(limits.max_messages),
                           "input", "too_many_messages");
        for (std::size_t i = 0; i < input->size(); ++i)
            if (auto added = detail::append_item((*input)[i], "input[" + std::to_string(i) + "]", req.messages); !added)
                return std::move(added).error();
    } else {
        return invalid("'input' must be a string or an array of items", "input", "invalid_type");
    }

    if (auto it = body.find("top_p"); it != body.end() && !it->is_null()) {
        if (!it->is_number() || it->get<double>() < 0 || it->get<double>() > 1)
            return invalid("'top_p' must be a number from 0 to 1", "top_p");
        req.extensions["top_p"] = *it;
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
    if (auto it = body.find("parallel_tool_calls"); it != body.end() && !it->is_null()) {
        if (!it->is_boolean()) return invalid("'parallel_tool_calls' must be a boolean", "parallel_tool_calls", "invalid_type");
        if (req.extensions.contains("tools") && *it == false) req.extensions["parallel_tool_calls"] = false;
    }
    if (auto it = body.find("text"); it != body.end() && !it->is_null()) {
        auto format = detail::response_format_of(*it);
        if (!format) return std::move(format).error();
        if (!format->is_null()) req.extensions["response_format"] = std::move(format).value();
    }
    // reasoning.summary asks for summaries of the hidden reasoning, and include's
    // reasoning.encrypted_content for the reasoning itself to send back: neither changes the
    // answer, and no provider behind Chat Completions returns them, so they are accepted and the
    // response carries no reasoning items (Codex asks for both with reasoning models).
    if (auto it = body.find("reasoning"); it != body.end() && !it->is_null()) {
        if (!it->is_object()) return invalid("'reasoning' must be an object", "reasoning", "invalid_type");
        for (const auto& [key, value] : it->items()) {
            if (value.is_null() || key == "summary" || key == "generate_summary") continue;
            if (key != "effort") return detail::unsupported("'reasoning." + key + "'", "reasoning." + key);
            if (!value.is_string()) return invalid("'reasoning.effort' must be a string", "reasoning.effort", "invalid_type");
            req.extensions["reasoning_effort"] = value;
        }
    }
    if (auto it = body.find("truncation"); it != body.end() && !it->is_null() && *it != "disabled")
        return detail::unsupported("'truncation: auto' (the whole input is sent; nothing is dropped)", "truncation");
    if (auto it = body.find("include"); it != body.end() && !it->is_null()) {
        if (!it->is_array()) return invalid("'include' must be an array", "include", "invalid_type");
        for (const auto& what : *it)
            if (what != "reasoning.encrypted_content") return detail::unsupported("'include' of " + what.dump(), "include");
    }
    if (auto it = body.find("metadata"); it != body.end() && !it->is_null() && !it->is_object())
        return invalid("'metadata' must be an object", "metadata", "invalid_type");
    // Hints an OpenAI upstream honours; a provider that cannot refuses them by name.
    for (const char* key : {"prompt_cache_key", "safety_identifier", "service_tier"})
        if (auto it = body.find(key); it != body.end() && !it->is_null()) req.extensions[key] = *it;
    return req;
}

// Responses' usage: like Chat Completions' with other names; input_tokens includes the cached ones.
[[nodiscard]] inline nlohmann::json usage_object(const token_usage& u) {
    return {{"input_tokens", u.prompt_tokens},
            {"input_tokens_details", {{"cached_tokens", u.cached_tokens}}},
            {"output_tokens", u.completion_tokens},
            {"output_tokens_details", {{"reasoning_tokens", u.reasoning_tokens}}},
            {"total_tokens", u.total_tokens()}};
}

/// What a `response` object says besides its output: echoed from the request, as OpenAI does.
struct response_head {
    std::string id;    // resp_...
    std::string model; // the requested one, until the answer names its own
    std::int64_t created_at = 0;
    nlohmann::json request = nlohmann::json::object(); // the request body: instructions, tools, ...
};

namespace detail {
inline nlohmann::json response_object(const response_head& h, std::string_view status, nlohmann::json output, nlohmann::json usage) {
    const auto& r = h.request;
    auto field = [&r](const char* key, nlohmann::json fallback) {
        auto it = r.find(key);
        return it == r.end() || it->is_null() ? fallback : *it;
    };
    return {{"id", h.id},
            {"object", "response"},
            {"created_at", h.created_at},
            {"status", status},
            {"error", nullptr},
            {"incomplete_details", nullptr},
            {"instructions", field("instructions", nullptr)},
            {"max_output_tokens", field("max_output_tokens", nullptr)},
            {"model", h.model},
            {"output", std::move(output)},
            {"parallel_tool_calls", field("parallel_tool_calls", true)},
            {"previous_response_id", nullptr},
            {"reasoning",
             {{"effort",
               r.contains("reasoning") && r["reasoning"].is_object() ? r["reasoning"].value("effort", nlohmann::json()) : nlohmann::json()},
              {"summary", nullptr}}},
            {"store", false},
            {"temperature", field("temperature", 1.0)},
            {"text", field("text", {{"format", {{"type", "text"}}}})},
            {"tool_choice", field("tool_choice", "auto")},
            {"tools", field("tools", nlohmann::json::array())},
            {"top_p", field("top_p", 1.0)},
            {"truncation", "disabled"},
            {"usage", std::move(usage)},
            {"user", field("user", nullptr)},
            {"metadata", field("metadata", nlohmann::json::object())}};
}

inline nlohmann::json text_part(std::string_view text) {
    return {{"type", "output_text"}, {"text", text}, {"annotations", nlohmann::json::array()}, {"logprobs", nlohmann::json::array()}};
}

inline nlohmann::json message_item(std::string_view id, std::string_view status, nlohmann::json content) {
    return {{"id", id}, {"type", "message"}, {"status", status}, {"role", "assistant"}, {"content", std::move(content)}};
}

// A function_call item, the `n`th of the response.
inline nlohmann::json function_call_item(std::string_view response_id, std::size_t n, std::string call_id, std::string name,
                                         std::string arguments) {
    return {{"id", "fc_" + std::string{response_id.substr(std::min<std::size_t>(5, response_id.size()))} + "_" + std::to_string(n)},
            {"type", "function_call"},
            {"status", "completed"},
            {"call_id", std::move(call_id)},
            {"name", std::move(name)},
            {"arguments", std::move(arguments)}};
}

// The completion's OpenAI tool_calls as function_call items.
inline std::vector<nlohmann::json> function_calls(const completion& c, std::string_view response_id) {
    std::vector<nlohmann::json> items;
    if (!c.extra.is_object() || !c.extra.contains("tool_calls") || !c.extra["tool_calls"].is_array()) return items;
    for (const auto& call : c.extra["tool_calls"]) {
        if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) continue;
        const auto& fn = call["function"];
        items.push_back(
            function_call_item(response_id, items.size(), call.value("id", ""), fn.value("name", ""), fn.value("arguments", "")));
    }
    return items;
}

// completed, or incomplete with the reason OpenAI gives when the answer was cut short.
inline std::pair<std::string_view, nlohmann::json> outcome(const completion& c) {
    if (c.finish_reason == "length") return {"incomplete", {{"reason", "max_output_tokens"}}};
    if (c.finish_reason == "content_filter") return {"incomplete", {{"reason", "content_filter"}}};
    return {"completed", nullptr};
}

inline std::string message_id(std::string_view response_id) {
    return "msg_" + std::string{response_id.substr(std::min<std::size_t>(5, response_id.size()))};
}
} // namespace detail

/// The `response` object of a non-streamed answer.
[[nodiscard]] inline nlohmann::json response_object(const completion& c, response_head h) {
    if (!c.model.empty()) h.model = c.model;
    nlohmann::json output = nlohmann::json::array();
    if (!c.content.empty())
        output.push_back(
            detail::message_item(detail::message_id(h.id), "completed", nlohmann::json::array({detail::text_part(c.content)})));
    for (auto& item : detail::function_calls(c, h.id)) output.push_back(std::move(item));
    auto [status, incomplete] = detail::outcome(c);
    auto out = detail::response_object(h, status, std::move(output), usage_object(c.usage));
    out["incomplete_details"] = std::move(incomplete);
    return out;
}

/// Frames one completion as the Responses stream: response.created and response.in_progress,
/// then output items one at a time (a message item whose output_text part grows by
/// response.output_text.delta, a function_call item whose arguments grow by
/// response.function_call_arguments.delta, each finished when the next begins), then
/// response.completed (or response.incomplete) with the whole response. Every event is named by
/// its type and numbered.
class event_writer {
public:
    explicit event_writer(response_head head) : head_(std::move(head)) {}
    [[nodiscard]] const std::string& id() const noexcept { return head_.id; }

    std::string delta(std::string_view text) {
        std::string out = start();
        if (open_ != item::message) {
            out += close_item();
            open_ = item::message;
            // The first message item has the id a non-streamed answer gives it; a later one (text
            // after a tool call) a numbered one.
            item_id_ = detail::message_id(head_.id);
            if (messages_++ > 0) item_id_ += "_" + std::to_string(output_.size());
            text_.clear();
            out += event({{"type", "response.output_item.added"},
                          {"output_index", output_.size()},
                          {"item", detail::message_item(item_id_, "in_progress", nlohmann::json::array())}});
            out += event({{"type", "response.content_part.added"},
                          {"item_id", item_id_},
                          {"output_index", output_.size()},
                          {"content_index", 0},
                          {"part", detail::text_part("")}});
        }
        text_ += text;
        out += event({{"type", "response.output_text.delta"},
                      {"item_id", item_id_},
                      {"output_index", output_.size()},
                      {"content_index", 0},
                      {"delta", text},
                      {"logprobs", nlohmann::json::array()}});
        return out;
    }

    // A tool call's piece: its first adds a function_call item, its arguments arrive as deltas.
    std::string tool_call(const tool_call_delta& piece) {
        std::string out = start();
        if (open_ != item::function_call || piece.index != call_) {
            out += close_item();
            open_ = item::function_call;
            call_ = piece.index;
            calls_streamed_ = true;
            call_item_ = detail::function_call_item(head_.id, piece.index, piece.id, piece.name, "");
            call_item_["status"] = "in_progress";
            item_id_ = call_item_["id"].get<std::string>();
            out += event({{"type", "response.output_item.added"}, {"output_index", output_.size()}, {"item", call_item_}});
        }
        if (!piece.arguments.empty()) {
            call_item_["arguments"] = call_item_["arguments"].get<std::string>() + piece.arguments;
            out += event({{"type", "response.function_call_arguments.delta"},
                          {"item_id", item_id_},
                          {"output_index", output_.size()},
                          {"delta", piece.arguments}});
        }
        return out;
    }

    std::string finish(const completion& c) {
        if (!c.model.empty()) head_.model = c.model;
        std::string out = start();
        out += close_item();
        // Tool calls not streamed as they came (a cached answer's, a blocking provider's) come whole.
        if (!calls_streamed_)
            for (auto& item : detail::function_calls(c, head_.id)) {
                const auto index = output_.size();
                auto added = item;
                added["status"] = "in_progress";
                added["arguments"] = "";
                out += event({{"type", "response.output_item.added"}, {"output_index", index}, {"item", std::move(added)}});
                out += event({{"type", "response.function_call_arguments.delta"},
                              {"item_id", item["id"]},
                              {"output_index", index},
                              {"delta", item["arguments"]}});
                out += event({{"type", "response.function_call_arguments.done"},
                              {"item_id", item["id"]},
                              {"output_index", index},
                              {"name", item["name"]},
                              {"arguments", item["arguments"]}});
                out += event({{"type", "response.output_item.done"}, {"output_index", index}, {"item", item}});
                output_.push_back(std::move(item));
            }
        auto [status, incomplete] = detail::outcome(c);
        auto response = detail::response_object(head_, status, output_, usage_object(c.usage));
        response["incomplete_details"] = std::move(incomplete);
        out += event({{"type", status == "completed" ? "response.completed" : "response.incomplete"}, {"response", std::move(response)}});
        return out;
    }

    /// A failure once the status is out: response.failed with the error, as OpenAI ends a response
    /// that failed (the SDK's stream helper returns it as the final response, status "failed").
    std::string failure(const error& e) {
        std::string out = start();
        auto response = detail::response_object(head_, "failed", nlohmann::json::array(), nullptr);
        response["error"] = {{"code", e.code.empty() ? std::string{"server_error"} : e.code}, {"message", e.message}};
        out += event({{"type", "response.failed"}, {"response", std::move(response)}});
        return out;
    }

private:
    std::string start() {
        if (started_) return {};
        started_ = true;
        auto response = detail::response_object(head_, "in_progress", nlohmann::json::array(), nullptr);
        std::string out = event({{"type", "response.created"}, {"response", response}});
        out += event({{"type", "response.in_progress"}, {"response", std::move(response)}});
        return out;
    }

    std::string event(nlohmann::json data) {
        data["sequence_number"] = sequence_++;
        const std::string name = data["type"].get<std::string>();
        return sse_event(name, dump_json(data));
    }

    enum class item { none, message, function_call };

    // Finishes the open item: its done events, and its place in the response's output.
    std::string close_item() {
        std::string out;
        const auto index = output_.size();
        if (open_ == item::message) {
            out += event({{"type", "response.output_text.done"},
                          {"item_id", item_id_},
                          {"output_index", index},
                          {"content_index", 0},
                          {"text", text_},
                          {"logprobs", nlohmann::json::array()}});
            out += event({{"type", "response.content_part.done"},
                          {"item_id", item_id_},
                          {"output_index", index},
                          {"content_index", 0},
                          {"part", detail::text_part(text_)}});
            auto done = detail::message_item(item_id_, "completed", nlohmann::json::array({detail::text_part(text_)}));
            out += event({{"type", "response.output_item.done"}, {"output_index", index}, {"item", done}});
            output_.push_back(std::move(done));
        } else if (open_ == item::function_call) {
            call_item_["status"] = "completed";
            out += event({{"type", "response.function_call_arguments.done"},
                          {"item_id", item_id_},
                          {"output_index", index},
                          {"name", call_item_["name"]},
                          {"arguments", call_item_["arguments"]}});
            out += event({{"type", "response.output_item.done"}, {"output_index", index}, {"item", call_item_}});
            output_.push_back(std::move(call_item_));
        }
        open_ = item::none;
        return out;
    }

    response_head head_;
    nlohmann::json output_ = nlohmann::json::array(); // the items finished so far
    item open_ = item::none;
    std::string item_id_;      // the open item's
    std::string text_;         // the open message item's text
    nlohmann::json call_item_; // the open function_call item
    std::size_t call_ = 0;     // the tool call it shows
    int messages_ = 0;
    std::int64_t sequence_ = 0;
    bool started_ = false;
    bool calls_streamed_ = false;
};

} // namespace chatkit::responses_api
