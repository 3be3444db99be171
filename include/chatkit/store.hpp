// The Store concept: where conversation history lives (SQLite, DynamoDB, ...).
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/task.hpp"

#include <concepts>
#include <optional>
#include <string>
#include <vector>

namespace chatkit {

// One request/reply pair to append: the client's last message and the assistant's reply.
struct exchange {
    std::string user_id{};
    std::string request_id{};
    std::string model{};
    std::vector<message> messages{};
    unix_ms created_at = 0;
};

struct stored_message {
    std::string id{}; // opaque, unique, and ordered by time within a user's history
    chatkit::role role = role::user;
    std::string content{};
    std::string model{};
    unix_ms created_at = 0;
    std::string request_id{};
};

inline void to_json(nlohmann::json& j, const stored_message& m) {
    j = {{"id", m.id},
         {"role", m.role},
         {"content", m.content},
         {"model", m.model},
         {"created_at", format_rfc3339(m.created_at)},
         {"request_id", m.request_id}};
}

struct history_query {
    std::string user_id{};
    std::size_t limit = 50;
    std::string before{}; // a next_cursor from the previous page; empty for the newest page
};

struct history_page {
    std::vector<stored_message> messages{};   // oldest first within the page
    std::optional<std::string> next_cursor{}; // set when older messages remain
};

namespace detail {
template <class S>
concept store_has_append = requires(S& s, const exchange& e) {
    { s.append(e) } -> std::same_as<result<void>>;
};
template <class S>
concept store_has_history = requires(S& s, const history_query& q) {
    { s.history(q) } -> std::same_as<result<history_page>>;
};
template <class S>
concept store_has_health = requires(S& s) {
    { s.health() } -> std::same_as<component_health>;
};
template <class S>
concept store_has_async_append = requires(S& s, exchange e) {
    { s.append(e) } -> std::same_as<task<result<void>>>;
};
template <class S>
concept store_has_async_history = requires(S& s, history_query q) {
    { s.history(q) } -> std::same_as<task<result<history_page>>>;
};
} // namespace detail

/// A Store model provides:
///   1. `result<void> append(const exchange&)` — returns only once the messages are durable: the
///      service acknowledges a reply after append succeeds, so a crash must not lose it. The
///      messages of one exchange keep their order.
///   2. `result<history_page> history(const history_query&)` — a user's messages, newest page
///      first: the `limit` newest messages older than `before`, returned oldest first, and a
///      `next_cursor` (opaque to the client) when older ones remain.
///   3. `component_health health()`.
/// Threading: all calls arrive concurrently from many threads.
/// Errors: an unreachable or failing store returns `error_kind::unavailable`; a malformed cursor
/// returns `error_kind::invalid_request`.
///
/// The asynchronous form (a client of a networked database that awaits its replies, e.g. over
/// the server's event loop) replaces 1 and 2 with coroutines that must never block the loop:
///   1'. `task<result<void>> append(exchange)` — the same durability promise.
///   2'. `task<result<history_page>> history(history_query)`.
/// They take their arguments by value and see the request's stop token through
/// `co_await chatkit::current_stop_token()`. A blocking store runs on the worker pool, unless it
/// declares `static constexpr bool nonblocking = true;` (chatkit::store_variant tells the service at run
/// time, through `holds_nonblocking()`, when the store it holds made that declaration).
template <class S>
concept blocking_store = detail::store_has_append<S> && detail::store_has_history<S> && detail::store_has_health<S>;
template <class S>
concept async_store = detail::store_has_async_append<S> && detail::store_has_async_history<S> && detail::store_has_health<S>;
template <class S>
concept store = blocking_store<S> || async_store<S>;

template <class S>
struct store_check;
template <async_store S>
struct store_check<S> {
    static constexpr bool value = true;
};
template <class S>
struct store_check {
    static_assert(detail::store_has_append<S>, "chatkit::store: missing `chatkit::result<void> append(const chatkit::exchange&)`");
    static_assert(detail::store_has_history<S>,
                  "chatkit::store: missing `chatkit::result<chatkit::history_page> history(const chatkit::history_query&)`");
    static_assert(detail::store_has_health<S>, "chatkit::store: missing `chatkit::component_health health()`");
    static constexpr bool value = store<S>;
};

/// The reference model and the stand-in when history is off: keeps nothing.
struct no_store {
    static constexpr bool nonblocking = true;
    result<void> append(const exchange&) { return {}; }
    result<history_page> history(const history_query&) { return history_page{}; }
    component_health health() { return {.ok = true, .detail = "disabled"}; }
};
static_assert(store<no_store>);

} // namespace chatkit
