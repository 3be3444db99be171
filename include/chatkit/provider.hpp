// The Provider concept: where completions come from (a local echo, OpenAI, Bedrock, ...).
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/task.hpp"
#include "chatkit/worker_pool.hpp"

#include <concepts>
#include <functional>
#include <string_view>
#include <string>
#include <variant>
#include <vector>

namespace chatkit {

// Receives one text delta of a streamed completion, in order. Returns false when the client has
// gone away: the provider should stop generating and return promptly.
using delta_sink = std::function<bool(std::string_view)>;

// Receives one piece of a streamed tool call, as delta_sink receives text.
using tool_call_sink = std::function<bool(const tool_call_delta&)>;

// What an asynchronous provider writes its stream's deltas to. `co_await out.write(text)`
// suspends while the client's socket is full and yields false once the client is gone: stop and
// return promptly.
class delta_writer {
public:
    class target {
    public:
        virtual task<bool> write(std::string_view text) = 0;
        // The same without suspending, for a blocking provider run inline where there is no
        // worker pool (the blocking adapters' bridge, whose writes complete at once).
        virtual bool write_now(std::string_view text) = 0;
        // A tool call's piece, valid until the write first suspends (as `text` is). A target that
        // does not show calls as they come may ignore them: the completion carries them whole.
        virtual task<bool> write_tool_call(const tool_call_delta& piece) {
            (void)piece;
            co_return true;
        }

    protected:
        ~target() = default;
    };
    explicit delta_writer(target* t) noexcept : t_(t) {}
    [[nodiscard]] task<bool> write(std::string_view text) const { return t_->write(text); }
    [[nodiscard]] bool write_now(std::string_view text) const { return t_->write_now(text); }
    // `co_await out.write_tool_call(piece)` with a named piece: GCC 12 mishandles a temporary with
    // a destructor inside a co_await expression.
    [[nodiscard]] task<bool> write_tool_call(const tool_call_delta& piece) const { return t_->write_tool_call(piece); }

private:
    target* t_;
};

// What a stream reader found in one read from upstream, text and tool-call pieces in their
// order, held until the provider writes them (awaiting the client's socket) before its next
// read. The readers are shared with the blocking form, which calls sinks; this collects what
// those sinks receive.
class delta_batch {
public:
    delta_batch() = default;
    delta_batch(const delta_batch&) = delete; // the sinks point at it
    delta_batch& operator=(const delta_batch&) = delete;

    [[nodiscard]] const delta_sink& text_sink() const noexcept { return text_; }
    [[nodiscard]] const tool_call_sink& tool_sink() const noexcept { return tools_; }

    // Writes what was collected, in order, and forgets it; false as soon as the client is gone.
    task<bool> write_to(delta_writer out) {
        for (auto& piece : pieces_) {
            bool ok = false;
            if (const auto* text = std::get_if<std::string>(&piece)) ok = co_await out.write(*text);
            else ok = co_await out.write_tool_call(std::get<tool_call_delta>(piece));
            if (!ok) {
                pieces_.clear();
                co_return false;
            }
        }
        pieces_.clear();
        co_return true;
    }

private:
    std::vector<std::variant<std::string, tool_call_delta>> pieces_;
    delta_sink text_ = [this](std::string_view d) {
        pieces_.emplace_back(std::string{d});
        return true;
    };
    tool_call_sink tools_ = [this](const tool_call_delta& d) {
        pieces_.emplace_back(d);
        return true;
    };
};

namespace detail {
template <class P>
concept provider_has_async_complete = requires(P& p, chat_request r) {
    { p.complete(r) } -> std::same_as<task<result<completion>>>;
};
template <class P>
concept provider_has_async_stream = requires(P& p, chat_request r, delta_writer out) {
    { p.stream(r, out) } -> std::same_as<task<result<completion>>>;
};
template <class P>
concept provider_has_name = requires(const P& p) {
    { p.name() } -> std::convertible_to<std::string_view>;
};
template <class P>
concept provider_has_complete = requires(P& p, const chat_request& r) {
    { p.complete(r) } -> std::same_as<result<completion>>;
};
template <class P>
concept provider_has_stream = requires(P& p, const chat_request& r, const delta_sink& sink) {
    { p.stream(r, sink) } -> std::same_as<result<completion>>;
};
template <class P>
concept provider_has_health = requires(P& p) {
    { p.health() } -> std::same_as<component_health>;
};
} // namespace detail

/// A Provider model provides:
///   1. `std::string_view name() const` — a short name for logs and /health ("echo", "openai").
///   2. `result<completion> complete(const chat_request&)` — the whole answer at once. Fill
///      `content`, `model` (the one that answered), `finish_reason` and `usage`.
///   3. `result<completion> stream(const chat_request&, const delta_sink&)` — call the sink with
///      each text delta as it arrives, then return the same completion as `complete` would
///      (content = all deltas joined). Stop early when the sink returns false.
///   The service sets a completion's `id`, `created_at` and `latency_ms` itself.
///   4. `component_health health()` — cheap; called by GET /health.
///   Optionally `std::vector<std::string> models() const`: the models it serves, its default first
///   (GET /v1/models lists them).
///   Fields of `chat_request::extensions` that it cannot honour must be refused with
///   `error_kind::invalid_request`, never silently ignored.
/// Threading: one instance serves every request, so all four are called concurrently.
/// Errors: failures are returned as `chatkit::error` values (upstream → 502, timeout → 504, ...),
/// never thrown. A stream that fails after some deltas returns the error; the service turns it
/// into an SSE error event.
///
/// The asynchronous form replaces 2 and 3 with coroutines that run on the request's event loop
/// and must never block it (await I/O instead):
///   2'. `task<result<completion>> complete(chat_request)`
///   3'. `task<result<completion>> stream(chat_request, delta_writer)` — `co_await out.write(d)`,
///       and `co_await out.write_tool_call(piece)` for each piece of a tool call as it arrives
///       (a blocking provider's tool calls reach the client whole, with the completion).
///   Both take their arguments by value (they outlive the caller's expression) and see the
///   request's stop token through `co_await chatkit::current_stop_token()`.
/// A blocking provider runs on the service's worker pool and sees the stop token as
/// `chat_request::stop`: when it is requested (the client left, or the request's deadline passed)
/// it should close its upstream call and return. One that never blocks may declare
/// `static constexpr bool nonblocking = true;` to be called on the loop.
template <class P>
concept blocking_provider = detail::provider_has_name<P> && detail::provider_has_complete<P> && detail::provider_has_stream<P> &&
    detail::provider_has_health<P>;
template <class P>
concept async_provider = detail::provider_has_name<P> && detail::provider_has_async_complete<P> && detail::provider_has_async_stream<P> &&
    detail::provider_has_health<P>;
template <class P>
concept provider = blocking_provider<P> || async_provider<P>;

// Names the first missing member, so a plugin author reads one line instead of a template dump.
template <class P>
struct provider_check;
template <async_provider P>
struct provider_check<P> {
    static constexpr bool value = true;
};
template <class P>
struct provider_check {
    static_assert(detail::provider_has_name<P>, "chatkit::provider: missing `std::string_view name() const`");
    static_assert(detail::provider_has_complete<P>,
                  "chatkit::provider: missing `chatkit::result<chatkit::completion> complete(const chatkit::chat_request&)`");
    static_assert(detail::provider_has_stream<P>,
                  "chatkit::provider: missing `chatkit::result<chatkit::completion> stream(const chatkit::chat_request&, "
                  "const chatkit::delta_sink&)`");
    static_assert(detail::provider_has_health<P>, "chatkit::provider: missing `chatkit::component_health health()`");
    static constexpr bool value = provider<P>;
};

// Calling a provider of either form from a task: an async one is awaited where the task runs
// (the loop); a blocking one runs on the environment's worker pool and resumes on the loop
// (a complete() inline when it declares itself nonblocking; anything inline without a pool). `req` lives in the
// caller's frame until the task ends.
template <provider P>
task<result<completion>> call_complete(P* p, const chat_request* req) {
    if constexpr (async_provider<P>) {
        co_return co_await p->complete(*req);
    } else if constexpr (declared_nonblocking<P>) {
        co_return p->complete(*req);
    } else {
        auto call = [p, req] { return p->complete(*req); };
        co_return co_await run_blocking(call);
    }
}

template <provider P>
task<result<completion>> call_stream(P* p, const chat_request* req, delta_writer out) {
    if constexpr (async_provider<P>) {
        co_return co_await p->stream(*req, out);
    } else {
        const auto env = co_await current_env();
        if (!env.pool) { // a stream's writes may suspend on a loop: only the pool's handoff can wait for them
            const delta_sink sink = [out](std::string_view d) { return out.write_now(d); };
            co_return p->stream(*req, sink);
        }
        // The provider runs on a worker; each delta crosses to the loop, is written, and the
        // worker waits for the outcome: backpressure, and `false` once the client is gone.
        auto produce = [p, req](blocking_channel& ch) {
            const delta_sink sink = [&ch](std::string_view d) { return ch.put(d); };
            return p->stream(*req, sink);
        };
        blocking_producer<decltype(produce)> job{produce, env.pool};
        while (auto delta = co_await job.channel().next()) {
            const bool ok = co_await out.write(*delta);
            job.channel().ack(ok);
        }
        co_return co_await job;
    }
}

/// The reference model: answers every request with an empty completion, instantly. Also the
/// baseline the benchmarks measure the service's own overhead against.
struct no_provider {
    static constexpr bool nonblocking = true;
    std::string_view name() const { return "null"; }
    result<completion> complete(const chat_request& r) { return completion{.model = r.model}; }
    result<completion> stream(const chat_request& r, const delta_sink&) { return complete(r); }
    component_health health() { return {}; }
};
static_assert(provider<no_provider>);
// The null models are spelled no_ (no_store, no_cache, no_middleware); the old name still compiles.
using null_provider [[deprecated("renamed chatkit::no_provider")]] = no_provider;

/// One of several providers, chosen at run time (e.g. from configuration) and still a Provider:
/// `provider_variant<echo_provider, openai_provider>`. Of the blocking form when every alternative
/// is; of the async form as soon as one is, the blocking alternatives then running on the worker
/// pool as the service would run them.
template <provider... Ps>
class provider_variant {
    static constexpr bool any_async = (async_provider<Ps> || ...);

public:
    static constexpr bool nonblocking = !any_async && (declared_nonblocking<Ps> && ...);

    template <class P>
        requires(std::same_as<std::remove_cvref_t<P>, Ps> || ...)
    provider_variant(P&& p) : v_(std::forward<P>(p)) {}

    std::string_view name() const {
        return std::visit([](const auto& p) -> std::string_view { return p.name(); }, v_);
    }
    result<completion> complete(const chat_request& r) requires(!any_async) {
        return std::visit([&](auto& p) { return p.complete(r); }, v_);
    }
    result<completion> stream(const chat_request& r, const delta_sink& sink) requires(!any_async) {
        return std::visit([&](auto& p) { return p.stream(r, sink); }, v_);
    }
    task<result<completion>> complete(chat_request r) requires any_async {
        const chat_request* req = &r;
        auto pick = [req](auto& p) { return call_complete(&p, req); };
        auto call = std::visit(pick, v_);
        co_return co_await std::move(call);
    }
    task<result<completion>> stream(chat_request r, delta_writer out) requires any_async {
        const chat_request* req = &r;
        auto pick = [req, out](auto& p) { return call_stream(&p, req, out); };
        auto call = std::visit(pick, v_);
        co_return co_await std::move(call);
    }
    component_health health() {
        return std::visit([](auto& p) { return p.health(); }, v_);
    }
    std::vector<std::string> models() const {
        return std::visit(
            [](const auto& p) -> std::vector<std::string> {
                if constexpr (requires { p.models(); }) return p.models();
                else return {std::string{p.name()}};
            },
            v_);
    }
    template <class P>
    P* get_if() noexcept {
        return std::get_if<P>(&v_);
    }

private:
    std::variant<Ps...> v_;
};

} // namespace chatkit
