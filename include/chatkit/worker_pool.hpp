// Blocking plugin calls off the event loop: a bounded pool of threads, `co_await run_blocking(f)`
// to run `f` there and resume on the request's loop, and a one-slot channel that carries a
// blocking producer's chunks (a blocking provider's stream) to the coroutine that writes them.
// Standard library only: the pool is a mutex, a condition variable and an intrusive queue, which
// is all a handful of threads handing over millisecond-scale jobs needs.
#pragma once

#include "chatkit/task.hpp"

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace chatkit {

class worker_pool {
public:
    // One unit of work; the pool never owns or copies it (it lives in the awaiting coroutine's frame).
    class job {
    public:
        virtual void run() noexcept = 0;

    protected:
        ~job() = default;

    private:
        friend class worker_pool;
        job* next_ = nullptr;
    };

    explicit worker_pool(std::size_t threads) {
        if (threads == 0) threads = 1;
        threads_.reserve(threads);
        for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
    }
    worker_pool(const worker_pool&) = delete;
    worker_pool& operator=(const worker_pool&) = delete;
    // Runs what was queued, then joins.
    ~worker_pool() {
        {
            std::lock_guard lock{m_};
            stopping_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }

    void submit(job* j) {
        {
            std::lock_guard lock{m_};
            j->next_ = nullptr;
            if (tail_) tail_->next_ = j;
            else head_ = j;
            tail_ = j;
            ++queued_;
        }
        cv_.notify_one();
    }

    [[nodiscard]] std::size_t size() const noexcept { return threads_.size(); }
    [[nodiscard]] std::size_t queued() const {
        std::lock_guard lock{m_};
        return queued_;
    }

private:
    void work() {
        for (;;) {
            job* j = nullptr;
            {
                std::unique_lock lock{m_};
                cv_.wait(lock, [this] { return head_ || stopping_; });
                if (!head_) return;
                j = head_;
                head_ = j->next_;
                if (!head_) tail_ = nullptr;
                --queued_;
            }
            j->run();
        }
    }

    mutable std::mutex m_;
    std::condition_variable cv_;
    job* head_ = nullptr;
    job* tail_ = nullptr;
    std::size_t queued_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

namespace detail {
inline void resume_on(scheduler* loop, std::coroutine_handle<> h) {
    if (loop) loop->post(h);
    else h.resume();
}

template <class F>
using blocking_result_t = std::conditional_t<std::is_void_v<std::invoke_result_t<F&>>, std::monostate, std::invoke_result_t<F&>>;

template <class F>
class blocking_call final : public worker_pool::job {
public:
    using value_type = std::invoke_result_t<F&>;
    explicit blocking_call(F f) : f_(std::move(f)) {}

    bool await_ready() const noexcept { return false; }
    template <chatkit_promise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        const auto& env = h.promise().env;
        if (!env.pool) { // no pool: the caller's thread is allowed to block
            invoke();
            return false;
        }
        h_ = h;
        loop_ = env.loop;
        env.pool->submit(this);
        return true;
    }
    value_type await_resume() {
        if (error_) std::rethrow_exception(error_);
        if constexpr (!std::is_void_v<value_type>) return std::move(*value_);
    }

private:
    void invoke() noexcept {
        try {
            if constexpr (std::is_void_v<value_type>) {
                f_();
                value_.emplace();
            } else {
                value_.emplace(f_());
            }
        } catch (...) {
            error_ = std::current_exception();
        }
    }
    void run() noexcept override {
        invoke();
        resume_on(loop_, h_);
    }

    F f_;
    std::optional<blocking_result_t<F>> value_{};
    std::exception_ptr error_{};
    std::coroutine_handle<> h_{};
    scheduler* loop_ = nullptr;
};
} // namespace detail

// `co_await run_blocking(f)`: calls f() on the request's worker pool and resumes on its loop with
// f's result (or exception); inline when the task has no pool. Name the lambda before the
// co_await (GCC 12: no capturing lambda inside a co_await expression).
template <class F>
[[nodiscard]] detail::blocking_call<F> run_blocking(F f) {
    return detail::blocking_call<F>{std::move(f)};
}

// Hands chunks from one blocking producer (on a worker thread) to one coroutine (on the loop), one
// at a time: put() waits until the coroutine has written the chunk, so a slow client slows the
// producer instead of filling memory, and it returns false once the client is gone.
class blocking_channel {
public:
    // Producer side (worker thread).
    bool put(std::string_view chunk) {
        std::unique_lock lock{m_};
        if (refused_) return false;
        chunk_ = chunk;
        has_chunk_ = true;
        acked_ = false;
        wake_consumer(lock);
        lock.lock();
        cv_.wait(lock, [this] { return acked_; });
        return !refused_;
    }
    void close() {
        std::unique_lock lock{m_};
        closed_ = true;
        wake_consumer(lock);
    }

    // Consumer side (the coroutine): the next chunk, or nullopt once the producer has closed.
    struct next_awaiter {
        blocking_channel* ch;
        bool await_ready() const noexcept { return false; }
        template <detail::chatkit_promise P>
        bool await_suspend(std::coroutine_handle<P> h) {
            std::lock_guard lock{ch->m_};
            if (ch->has_chunk_ || ch->closed_) return false;
            ch->waiting_ = h;
            ch->loop_ = h.promise().env.loop;
            return true;
        }
        std::optional<std::string_view> await_resume() const {
            std::lock_guard lock{ch->m_};
            if (ch->has_chunk_) return ch->chunk_;
            return std::nullopt;
        }
    };
    [[nodiscard]] next_awaiter next() noexcept { return {this}; }

    // The chunk has been written (ok) or the client is gone (!ok); wakes the producer.
    void ack(bool ok) {
        {
            std::lock_guard lock{m_};
            has_chunk_ = false;
            acked_ = true;
            if (!ok) refused_ = true;
        }
        cv_.notify_one();
    }

private:
    void wake_consumer(std::unique_lock<std::mutex>& lock) {
        auto h = std::exchange(waiting_, {});
        auto* loop = loop_;
        lock.unlock();
        if (h) detail::resume_on(loop, h);
    }

    std::mutex m_;
    std::condition_variable cv_;
    std::string_view chunk_{};
    bool has_chunk_ = false, acked_ = false, closed_ = false, refused_ = false;
    std::coroutine_handle<> waiting_{};
    scheduler* loop_ = nullptr;
};

// Starts a blocking producer `f(blocking_channel&)` on the pool at once, to run alongside the
// coroutine that drains the channel; `co_await` it afterwards for f's result.
template <class F>
class blocking_producer final : public worker_pool::job {
public:
    using value_type = std::invoke_result_t<F&, blocking_channel&>;
    blocking_producer(F f, worker_pool* pool) : f_(std::move(f)) { pool->submit(this); }
    blocking_producer(const blocking_producer&) = delete;
    blocking_producer& operator=(const blocking_producer&) = delete;

    blocking_channel& channel() noexcept { return channel_; }

    // Awaiting the result: close() was the producer's last act, so by the time the consumer saw
    // the channel closed only the tail of run() is left.
    bool await_ready() const noexcept { return false; }
    template <detail::chatkit_promise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        std::lock_guard lock{m_};
        if (done_) return false;
        h_ = h;
        loop_ = h.promise().env.loop;
        return true;
    }
    value_type await_resume() {
        if (error_) std::rethrow_exception(error_);
        return std::move(*value_);
    }

private:
    void run() noexcept override {
        try {
            value_.emplace(f_(channel_));
        } catch (...) {
            error_ = std::current_exception();
        }
        channel_.close();
        std::coroutine_handle<> h;
        scheduler* loop = nullptr;
        {
            std::lock_guard lock{m_};
            done_ = true;
            h = std::exchange(h_, {});
            loop = loop_;
        }
        if (h) detail::resume_on(loop, h);
    }

    F f_;
    blocking_channel channel_;
    std::mutex m_;
    bool done_ = false;
    std::optional<value_type> value_{};
    std::exception_ptr error_{};
    std::coroutine_handle<> h_{};
    scheduler* loop_ = nullptr;
};

} // namespace chatkit
