// The Middleware concept: code that runs around every request (ids, rate limits, auth, ...).
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/http.hpp"

#include <concepts>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

namespace chatkit {

/// Per-request state of a middleware that declares none.
struct no_context {};

namespace detail {
template <class M>
struct context_of {
    using type = no_context;
};
template <class M>
    requires requires { typename M::context; }
struct context_of<M> {
    using type = typename M::context;
};
} // namespace detail

template <class M>
using context_of_t = typename detail::context_of<M>::type;

namespace detail {
template <class M>
concept middleware_has_before = requires(M& m, http_request& req, context_of_t<M>& ctx) {
    { m.before(req, ctx) } -> std::convertible_to<std::optional<http_response>>;
};
template <class M>
concept middleware_has_after = requires(M& m, const http_request& req, http_response& res, context_of_t<M>& ctx) {
    m.after(req, res, ctx);
};
} // namespace detail

/// The most a chat request may use, known once its body is parsed: what a middleware's `admit`
/// reserves against token limits and budgets (requirement 5 below).
struct chat_admission {
    std::string model{};                    // the model asked for, or the provider's default
    std::int64_t prompt_token_bound = 0;    // chatkit::prompt_token_bound: never below the real count
    std::int64_t max_completion_tokens = 0; // the request's max_tokens, else service_options::default_max_tokens
    std::optional<double> worst_case_usd{}; // both at the model's price; none: the model is unpriced
    // Set by a middleware that reserved against these bounds. When the request named no
    // max_tokens, the service then sends max_completion_tokens upstream as its max_tokens, so the
    // answer cannot outgrow what was reserved.
    bool bounds_reserved = false;

    [[nodiscard]] std::int64_t token_bound() const noexcept { return prompt_token_bound + max_completion_tokens; }
};

/// Whether M declares the optional `admit` hook (requirement 5 below).
template <class M>
concept middleware_has_admit = requires(M& m, const http_request& req, chat_admission& a, context_of_t<M>& ctx) {
    { m.admit(req, a, ctx) } -> std::convertible_to<std::optional<error>>;
};

/// Whether M says at run time that its hooks may block (requirement 6 below).
template <class M>
concept middleware_may_block = requires(const M& m, const http_request& req) {
    { m.blocks(req) } -> std::convertible_to<bool>;
};

/// Whether M declares the optional `finish` hook (requirement 4 below).
template <class M>
concept middleware_has_finish = requires(M& m, const http_request& req, const response_summary& s, context_of_t<M>& ctx) {
    m.finish(req, s, ctx);
};

/// A Middleware model provides:
///   1. optionally a nested `context` type (default-constructible): per-request state, created
///      fresh for each request and reachable by type from the request's `request_context`.
///   2. `std::optional<http_response> before(http_request&, context&)` — runs before routing, in
///      the order the middlewares are listed; it may edit the request, and returning a response
///      answers the request at once (the rest of the chain and the route are skipped).
///   3. `void after(const http_request&, http_response&, context&)` — runs in reverse order, for
///      every middleware whose `before` ran, and may decorate the response (headers, ...). It runs
///      before the headers are sent, so a streamed answer's usage is not known yet.
///   4. optionally `void finish(const http_request&, const response_summary&, context&)` — runs
///      exactly once per request for every middleware whose `before` ran, in reverse order, after
///      the last byte was sent, or once the client left or the answer failed. The summary has the
///      status, the final usage (of a stream too), bytes sent, time to first token, duration and
///      whether the client left: what access logs, token limits and budgets need. The context
///      lives until then.
///   5. optionally `std::optional<error> admit(const http_request&, chat_admission&, context&)`
///      — runs for a chat request (POST /chat, /v1/chat/completions) once its body is valid and
///      before the cache and the provider, in the order the middlewares are listed; an error
///      refuses the request with that error's status (and no later `admit` runs). Why a hook of its
///      own: limits on tokens and money need the request's model and max_tokens, which only the
///      parsed body has, and parsing it again in `before` would cost a second JSON parse per
///      request. What `admit` reserves, `finish` settles with the real usage; a middleware that
///      reserved sets `bounds_reserved`, so that the bounds hold upstream.
///   6. optionally `bool blocks(const http_request&) const` — true when its hooks may wait on the
///      network for this request (counters shared through Redis or DynamoDB), asked before any
///      hook runs: the service then runs that request's hooks of every middleware (`before`,
///      `admit`, `finish`) on its worker pool, one hop each, never on an event loop. Why a
///      run-time answer: a middleware that configuration switched off, or a request it will not
///      count (a health probe without a key), must cost no hop.
/// Threading: one instance serves every request concurrently; per-request state goes in
/// `context`, shared state must be synchronized by the middleware.
template <class M>
concept middleware = std::default_initializable<context_of_t<M>> && detail::middleware_has_before<M> && detail::middleware_has_after<M>;

template <class M>
struct middleware_check {
    static_assert(std::default_initializable<context_of_t<M>>,
                  "chatkit::middleware: the nested `context` type must be default-constructible");
    static_assert(detail::middleware_has_before<M>,
                  "chatkit::middleware: missing `std::optional<chatkit::http_response> before(chatkit::http_request&, "
                  "context&)` (context is the nested type, or chatkit::no_context)");
    static_assert(detail::middleware_has_after<M>,
                  "chatkit::middleware: missing `void after(const chatkit::http_request&, chatkit::http_response&, "
                  "context&)` (context is the nested type, or chatkit::no_context)");
    static constexpr bool value = middleware<M>;
};

/// The reference model: does nothing.
struct no_middleware {
    std::optional<http_response> before(http_request&, no_context&) { return std::nullopt; }
    void after(const http_request&, http_response&, no_context&) {}
};
static_assert(middleware<no_middleware>);
using null_middleware [[deprecated("renamed chatkit::no_middleware")]] = no_middleware;

/// A middleware switched on or off at run time (e.g. rate limiting when configured); when off,
/// it lets every request through untouched.
template <middleware M>
class optional_middleware {
public:
    using context = context_of_t<M>;

    optional_middleware() = default;
    optional_middleware(std::optional<M> m) : m_(std::move(m)) {}

    std::optional<http_response> before(http_request& req, context& ctx) { return m_ ? m_->before(req, ctx) : std::nullopt; }
    void after(const http_request& req, http_response& res, context& ctx) {
        if (m_) m_->after(req, res, ctx);
    }
    void finish(const http_request& req, const response_summary& s, context& ctx) requires middleware_has_finish<M> {
        if (m_) m_->finish(req, s, ctx);
    }
    [[nodiscard]] bool blocks(const http_request& req) const requires middleware_may_block<M> { return m_ && m_->blocks(req); }
    std::optional<error> admit(const http_request& req, chat_admission& a, context& ctx) requires middleware_has_admit<M> {
        return m_ ? m_->admit(req, a, ctx) : std::nullopt;
    }
    [[nodiscard]] bool enabled() const noexcept { return m_.has_value(); }
    /// The middleware when enabled, else null: for what a program does with it between requests.
    [[nodiscard]] M* get() noexcept { return m_ ? &*m_ : nullptr; }

private:
    std::optional<M> m_;
};

namespace detail {
template <class M, class... Ms>
constexpr std::size_t index_of() {
    std::size_t i = 0;
    ((std::same_as<M, Ms> ? false : (++i, true)) && ...);
    return i;
}
} // namespace detail

/// The contexts of one request's middlewares; `get<M>()` reaches the one of middleware M. Looked
/// up by M's position, not by the context's type, so two middlewares may share a context type.
template <class... Ms>
class request_context {
public:
    template <class M>
    context_of_t<M>& get() {
        static_assert((std::same_as<M, Ms> || ...), "chatkit::request_context::get<M>: M is not one of the service's middlewares");
        return std::get<detail::index_of<M, Ms...>()>(contexts_);
    }
    template <std::size_t I>
    auto& at() {
        return std::get<I>(contexts_);
    }

private:
    std::tuple<context_of_t<Ms>...> contexts_;
};

} // namespace chatkit
