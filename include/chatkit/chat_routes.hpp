// The routes that answer a chat: the ones that use tokens, cost money and name a model. Plugins
// that count, record or restrict chats (metrics, usage records, a key's models) look for them
// here, so that a new surface cannot be forgotten by one of them.
#pragma once

#include <algorithm>
#include <array>
#include <string_view>

namespace chatkit {

inline constexpr std::string_view conversation_messages_route = "/api/v1/conversations/{id}/messages";
inline constexpr std::string_view conversation_stream_route = "/api/v1/conversations/{id}/stream";

/// `/chat`, OpenAI's Chat Completions (and its `/v1/chat` alias), Anthropic's Messages, OpenAI's
/// Responses, and a conversation's turn (POST .../messages; GET or POST .../stream): every route
/// the service answers through its provider, by its template (see route_template).
inline constexpr std::array<std::string_view, 7> chat_routes{
    "/chat", "/v1/chat/completions", "/v1/chat", "/v1/messages", "/v1/responses", conversation_messages_route, conversation_stream_route};

[[nodiscard]] constexpr bool is_chat_route(std::string_view route) noexcept {
    return std::find(chat_routes.begin(), chat_routes.end(), route) != chat_routes.end();
}

/// A conversation path's template ("/api/v1/conversations/{id}/stream"), empty for any other
/// path: metrics, spans and usage records name routes without their ids.
[[nodiscard]] constexpr std::string_view conversation_route_of(std::string_view path) noexcept {
    constexpr std::string_view prefix = "/api/v1/conversations";
    if (!path.starts_with(prefix)) return {};
    path.remove_prefix(prefix.size());
    if (path.empty()) return prefix;
    if (path.front() != '/' || path.size() == 1) return {};
    const auto slash = path.find('/', 1);
    if (slash == std::string_view::npos) return "/api/v1/conversations/{id}";
    const std::string_view rest = path.substr(slash);
    if (rest == "/messages") return conversation_messages_route;
    if (rest == "/stream") return conversation_stream_route;
    if (rest == "/feedback") return "/api/v1/conversations/{id}/feedback";
    return {};
}

/// The route a path belongs to: its conversation template, else the path itself.
[[nodiscard]] constexpr std::string_view route_template(std::string_view path) noexcept {
    const auto conversation = conversation_route_of(path);
    return conversation.empty() ? path : conversation;
}

/// Whether a request asks for a chat: a POST to a chat route, or a GET of a conversation's
/// stream (an EventSource can only GET).
[[nodiscard]] constexpr bool is_chat_request(std::string_view method, std::string_view path) noexcept {
    const auto route = route_template(path);
    if (method == "POST") return is_chat_route(route);
    return method == "GET" && route == conversation_stream_route;
}

static_assert(is_chat_route("/v1/messages") && !is_chat_route("/v1/models"));
static_assert(is_chat_request("GET", "/api/v1/conversations/1/stream") && !is_chat_request("GET", "/api/v1/conversations/1/messages"));
static_assert(is_chat_request("POST", "/api/v1/conversations/1/messages") && !is_chat_request("POST", "/api/v1/conversations"));

} // namespace chatkit
