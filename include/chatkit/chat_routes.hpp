// The routes that answer a chat: the ones that use tokens, cost money and name a model. Plugins
// that count, record or restrict chats (metrics, usage records, a key's models) look for them
// here, so that a new surface cannot be forgotten by one of them.
#pragma once

#include <algorithm>
#include <array>
#include <string_view>

namespace chatkit {

/// `/chat`, OpenAI's Chat Completions (and its `/v1/chat` alias), Anthropic's Messages and
/// OpenAI's Responses: every POST route the service answers through its provider.
inline constexpr std::array<std::string_view, 5> chat_routes{"/chat", "/v1/chat/completions", "/v1/chat", "/v1/messages", "/v1/responses"};

[[nodiscard]] constexpr bool is_chat_route(std::string_view path) noexcept {
    return std::find(chat_routes.begin(), chat_routes.end(), path) != chat_routes.end();
}

static_assert(is_chat_route("/v1/messages") && !is_chat_route("/v1/models"));

} // namespace chatkit
