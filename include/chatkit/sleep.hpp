// `co_await sleep_for(d)`: waits on the request's loop without holding a thread, and wakes early
// when the request's stop token is requested (the client left, the deadline passed). Yields true
// when the whole delay passed, false when it was cut short.
//
// Requirements, and why:
//   1. Never blocks a loop thread: the wait is a loop timer (`scheduler::call_after`).
//   2. Cancellable: a retry that waits out a two-minute Retry-After must end when the client does.
//   3. Works without a loop (sync_wait, the Lambda runtime): it then waits on the calling thread.
#pragma once

#include "chatkit/task.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>

namespace chatkit {

// Waits `delay`, or less when `stop` is requested first. False when it was cut short.
inline bool wait_unless_stopped(std::chrono::nanoseconds delay, const std::stop_token& stop) {
    if (!stop.stop_possible()) {
        std::this_thread::sleep_for(delay);
        return true;
    }
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock{m};
    return !cv.wait_for(lock, stop, delay, [] { return false; }) && !stop.stop_requested();
}

class sleep_awaiter {
public:
    explicit sleep_awaiter(std::chrono::nanoseconds delay) noexcept : delay_(delay) {}

    bool await_ready() const noexcept { return false; }

    template <detail::chatkit_promise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        const task_env& env = h.promise().env;
        // `false`: do not suspend, the wait is over (or never began).
        if (env.stop.stop_requested()) {
            cut_short_ = true;
            return false;
        }
        if (delay_.count() <= 0) return false;
        if (!env.loop) {
            cut_short_ = !wait_unless_stopped(delay_, env.stop);
            return false;
        }
        // The timer and the stop callback race to resume; the flag lets exactly one do it. The
        // state outlives this frame: the loop may still hold the timer's callback.
        state_ = std::make_shared<state>(h, env.loop);
        on_stop_.emplace(env.stop, wake_on_stop{state_});
        auto fire = [s = state_] {
            if (!s->resumed.exchange(true)) s->h.resume();
        };
        if (env.loop->call_after(delay_, std::move(fire), env.stop)) return true;
        // No timers on this loop: wait here, unless the stop callback already claimed the resume.
        if (state_->resumed.load()) return true;
        cut_short_ = !wait_unless_stopped(delay_, env.stop);
        return state_->resumed.exchange(true);
    }

    bool await_resume() const noexcept { return !(cut_short_ || (state_ && state_->stopped)); }

private:
    struct state {
        state(std::coroutine_handle<> handle, scheduler* l) : h(handle), loop(l) {}
        std::coroutine_handle<> h;
        scheduler* loop;
        std::atomic<bool> resumed{false};
        bool stopped = false;
    };
    struct wake_on_stop {
        std::shared_ptr<state> s;
        void operator()() const {
            if (s->resumed.exchange(true)) return;
            s->stopped = true;
            s->loop->post(s->h); // the stop may be requested from any thread; resume on the loop
        }
    };

    std::chrono::nanoseconds delay_;
    bool cut_short_ = false;
    std::shared_ptr<state> state_{};
    std::optional<std::stop_callback<wake_on_stop>> on_stop_{};
};

[[nodiscard]] inline sleep_awaiter sleep_for(std::chrono::nanoseconds delay) noexcept { return sleep_awaiter{delay}; }

} // namespace chatkit
