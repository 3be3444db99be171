// The Cache concept: answers for identical requests without asking the provider again.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/health.hpp"
#include "chatkit/task.hpp"

#include <chrono>
#include <concepts>
#include <optional>
#include <string_view>
#include <variant>

namespace chatkit {

namespace detail {
template <class C>
concept cache_has_get = requires(C& c, std::string_view key) {
    { c.get(key) } -> std::same_as<std::optional<completion>>;
};
template <class C>
concept cache_has_put = requires(C& c, std::string_view key, const completion& value, std::chrono::seconds ttl) {
    c.put(key, value, ttl);
};
template <class C>
concept cache_has_health = requires(C& c) {
    { c.health() } -> std::same_as<component_health>;
};
template <class C>
concept cache_has_async_get = requires(C& c, std::string key) {
    { c.get(key) } -> std::same_as<task<std::optional<completion>>>;
};
template <class C>
concept cache_has_async_put = requires(C& c, std::string key, completion value, std::chrono::seconds ttl) {
    { c.put(key, value, ttl) } -> std::same_as<task<void>>;
};
} // namespace detail

/// A Cache model provides:
///   1. `std::optional<completion> get(std::string_view key)` — a live entry, or nullopt when it
///      is absent or older than its TTL.
///   2. `put(std::string_view key, const completion&, std::chrono::seconds ttl)` — may evict.
///   3. `component_health health()`.
/// Keys are built by the service from everything that affects an answer, scoped per user.
/// Threading: called concurrently. A cache never fails a request: on trouble it misses.
///
/// The asynchronous form (a networked cache such as Redis, awaited on the event loop) replaces
/// get and put with `task<std::optional<completion>> get(std::string)` and
/// `task<void> put(std::string, completion, std::chrono::seconds)`, which must never block the
/// loop. A blocking cache runs on the worker pool, unless it declares
/// `static constexpr bool nonblocking = true;` (the in-memory LRU does).
template <class C>
concept blocking_cache = detail::cache_has_get<C> && detail::cache_has_put<C> && detail::cache_has_health<C>;
template <class C>
concept async_cache = detail::cache_has_async_get<C> && detail::cache_has_async_put<C> && detail::cache_has_health<C>;
template <class C>
concept cache = blocking_cache<C> || async_cache<C>;

template <class C>
struct cache_check;
template <async_cache C>
struct cache_check<C> {
    static constexpr bool value = true;
};
template <class C>
struct cache_check {
    static_assert(detail::cache_has_get<C>, "chatkit::cache: missing `std::optional<chatkit::completion> get(std::string_view)`");
    static_assert(detail::cache_has_put<C>,
                  "chatkit::cache: missing `put(std::string_view, const chatkit::completion&, std::chrono::seconds)`");
    static_assert(detail::cache_has_health<C>, "chatkit::cache: missing `chatkit::component_health health()`");
    static constexpr bool value = cache<C>;
};

/// The reference model and the stand-in when caching is off: every lookup misses.
struct no_cache {
    static constexpr bool nonblocking = true;
    std::optional<completion> get(std::string_view) { return std::nullopt; }
    void put(std::string_view, const completion&, std::chrono::seconds) {}
    component_health health() { return {.ok = true, .detail = "disabled"}; }
};
static_assert(cache<no_cache>);

/// One of several caches chosen at run time (e.g. `lru_cache` or `no_cache` when its size is 0).
template <blocking_cache... Cs>
class cache_variant {
public:
    static constexpr bool nonblocking = (declared_nonblocking<Cs> && ...);
    // Whether the cache it holds declared itself nonblocking: the service then calls it inline.
    [[nodiscard]] bool holds_nonblocking() const noexcept {
        return std::visit([](const auto& x) { return declared_nonblocking<std::remove_cvref_t<decltype(x)>>; }, v_);
    }
    template <class C>
        requires(std::same_as<std::remove_cvref_t<C>, Cs> || ...)
    cache_variant(C&& c) : v_(std::forward<C>(c)) {}

    std::optional<completion> get(std::string_view key) {
        return std::visit([&](auto& c) { return c.get(key); }, v_);
    }
    void put(std::string_view key, const completion& value, std::chrono::seconds ttl) {
        std::visit([&](auto& c) { c.put(key, value, ttl); }, v_);
    }
    component_health health() {
        return std::visit([](auto& c) { return c.health(); }, v_);
    }
    template <class C>
    C* get_if() noexcept {
        return std::get_if<C>(&v_);
    }

private:
    std::variant<Cs...> v_;
};

} // namespace chatkit
