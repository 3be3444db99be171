// task<T>: the core's own coroutine type, so the request lifecycle is asynchronous without the core
// depending on an event loop. Adapters bring the loop (Asio, a Lambda runtime's plain thread);
// the core only needs the small `scheduler` interface below.
//
// Requirements, and why:
//   1. Lazy: a task runs when awaited (or started), so a route can build a body's task before
//      the headers are sent and run it after.
//   2. Symmetric transfer: awaiting a task and finishing one jump straight to the next coroutine,
//      so a long chain of tasks that complete at once does not grow the stack.
//   3. An environment (`task_env`): the stop token, the loop to resume on, the worker pool for
//      blocking plugin calls. A child task inherits its parent's when awaited, so a provider
//      deep in the call chain sees the request's stop token with `co_await current_stop_token()`.
//   4. Exceptions travel to the awaiter, as from a function.
//
// GCC 12 coroutine pitfalls (both miscompile or dangle, silently):
//   - never put a capturing lambda inside a `co_await` expression: name it first
//     (`auto call = [&] {...}; co_await run_blocking(call);`).
//   - never put a `co_await` inside a braced initializer (`routed{co_await f()}`): the temporary
//     is destroyed twice. Await into a named variable first.
//   - take a coroutine's parameters by value (a reference parameter may dangle once the caller's
//     full-expression ends); pass pointers where the callee must reach the caller's object.
#pragma once

#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace chatkit {

// Where a suspended request resumes: one event loop (thread) of an adapter. post() may be called
// from any thread; the coroutine must then resume on the loop's own thread.
class scheduler {
public:
    virtual void post(std::coroutine_handle<> h) = 0;
    // Calls `fn` on the loop's thread once `delay` has passed (a retry's backoff, a provider's
    // pacing). When `stop` is requested first the timer is cancelled and `fn` destroyed without
    // being called, so a cancelled wait does not keep the loop busy until it would have ended.
    // A loop without timers returns false and the caller waits on its own thread.
    virtual bool call_after(std::chrono::nanoseconds delay, std::function<void()> fn, std::stop_token stop = {}) {
        (void)delay;
        (void)fn;
        (void)stop;
        return false;
    }

protected:
    ~scheduler() = default;
};

class worker_pool;

struct task_env {
    std::stop_token stop{};      // requested when the client leaves or the request's deadline passes
    scheduler* loop = nullptr;   // null: resume inline on whichever thread completes the work
    worker_pool* pool = nullptr; // null: blocking plugin calls run inline, on the caller's thread
};

namespace detail {
struct promise_base {
    task_env env{};
    std::coroutine_handle<> continuation = std::noop_coroutine();
    std::exception_ptr error{};

    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
        bool await_ready() noexcept { return false; }
        template <class P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
            return h.promise().continuation;
        }
        void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { error = std::current_exception(); }
};

template <class P>
concept chatkit_promise = std::derived_from<P, promise_base>;
} // namespace detail

namespace detail {
// Where a task's result waits for its awaiter: a value, or nothing for task<void>.
template <class T>
struct result_slot {
    std::optional<T> value{};
    template <class U = T>
        requires std::constructible_from<T, U&&>
    void return_value(U&& v) { value.emplace(std::forward<U>(v)); }
    T take() { return std::move(*value); }
};
template <>
struct result_slot<void> {
    void return_void() noexcept {}
    void take() noexcept {}
};
} // namespace detail

template <class T = void>
class [[nodiscard]] task {
public:
    struct promise_type : detail::promise_base, detail::result_slot<T> {
        task get_return_object() noexcept { return task{std::coroutine_handle<promise_type>::from_promise(*this)}; }
    };
    using handle_type = std::coroutine_handle<promise_type>;

    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            if (h_) h_.destroy();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    ~task() {
        if (h_) h_.destroy();
    }

    struct awaiter {
        handle_type h;
        bool await_ready() const noexcept { return false; }
        template <detail::chatkit_promise P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> caller) noexcept {
            h.promise().continuation = caller;
            h.promise().env = caller.promise().env;
            return h;
        }
        T await_resume() {
            if (h.promise().error) std::rethrow_exception(h.promise().error);
            return h.promise().take();
        }
    };
    awaiter operator co_await() && noexcept { return awaiter{h_}; }

    handle_type release() noexcept { return std::exchange(h_, {}); }

private:
    explicit task(handle_type h) noexcept : h_(h) {}
    handle_type h_;
};

// `co_await current_env()` / `co_await current_stop_token()`: the running task's environment,
// without suspending.
struct env_awaiter {
    const task_env* env = nullptr;
    bool await_ready() const noexcept { return false; }
    template <detail::chatkit_promise P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
        env = &h.promise().env;
        return false; // resume at once
    }
    task_env await_resume() const noexcept { return *env; }
};
[[nodiscard]] inline env_awaiter current_env() noexcept { return {}; }

struct stop_token_awaiter : env_awaiter {
    std::stop_token await_resume() const noexcept { return env->stop; }
};
[[nodiscard]] inline stop_token_awaiter current_stop_token() noexcept { return {}; }

namespace detail {
// The frame that starts a task and outlives it: destroys itself when the task has finished.
struct root_task {
    struct promise_type : promise_base {
        root_task get_return_object() noexcept { return {std::coroutine_handle<promise_type>::from_promise(*this)}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); } // drive() catches everything
    };
    std::coroutine_handle<promise_type> h;
};

template <class T, class Done>
root_task drive(task<T> t, Done done) {
    std::exception_ptr error;
    if constexpr (std::is_void_v<T>) {
        try {
            co_await std::move(t);
        } catch (...) {
            error = std::current_exception();
        }
        done(error);
    } else {
        std::optional<T> value;
        try {
            value.emplace(co_await std::move(t));
        } catch (...) {
            error = std::current_exception();
        }
        done(std::move(value), error);
    }
}
// Set once, from any thread. notify() holds the lock while it wakes the waiter, so the waiter
// cannot return (and destroy it) before notify() is done with it.
class one_shot_signal {
public:
    void notify() {
        std::lock_guard lock{m_};
        set_ = true;
        cv_.notify_one();
    }
    void wait() {
        std::unique_lock lock{m_};
        cv_.wait(lock, [this] { return set_; });
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool set_ = false;
};
} // namespace detail

// Starts `t` now, on this thread, in `env`; calls `done` when it has finished (on whichever thread
// finished it): `done(std::exception_ptr)` for task<void>, `done(std::optional<T>, std::exception_ptr)`
// otherwise. Nothing waits for it: this is how an adapter hands a request to the service.
template <class T, class Done>
void start_detached(task<T> t, task_env env, Done done) {
    auto root = detail::drive(std::move(t), std::move(done));
    root.h.promise().env = std::move(env);
    root.h.resume();
}

// A plugin whose synchronous calls never block (an in-memory cache, the echo provider without a
// delay) says so with `static constexpr bool nonblocking = true;`: the service then calls it on the
// loop thread instead of handing each call to the worker pool, which would cost two thread hops.
template <class T>
concept declared_nonblocking = requires {
    requires T::nonblocking;
};

// Runs a task to completion on the calling thread and returns its value (or throws its
// exception). For tests, for the blocking `service::handle`, and for the Lambda loop. With no
// worker pool in `env`, blocking plugin calls run inline on this thread.
template <class T>
T sync_wait(task<T> t, task_env env = {}) {
    detail::one_shot_signal signal;
    std::exception_ptr error;
    if constexpr (std::is_void_v<T>) {
        auto done = [&](std::exception_ptr e) {
            error = e;
            signal.notify();
        };
        start_detached(std::move(t), std::move(env), done);
        signal.wait();
        if (error) std::rethrow_exception(error);
    } else {
        std::optional<T> value;
        auto done = [&](std::optional<T> v, std::exception_ptr e) {
            value = std::move(v);
            error = e;
            signal.notify();
        };
        start_detached(std::move(t), std::move(env), done);
        signal.wait();
        if (error) std::rethrow_exception(error);
        return std::move(*value);
    }
}

} // namespace chatkit
