// A one-thread event loop for the core's tests: what an adapter's loop is to the service (a
// scheduler that resumes coroutines on its own thread), without a socket.
#pragma once

#include <chatkit/task.hpp>

#include <condition_variable>
#include <coroutine>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace test_support {

class test_loop final : public chatkit::scheduler {
public:
    test_loop() : thread_([this] { run(); }) {}
    ~test_loop() {
        {
            std::lock_guard lock{m_};
            stopping_ = true;
        }
        cv_.notify_one();
        thread_.join();
    }

    void post(std::coroutine_handle<> h) override {
        run_on([h] { h.resume(); });
    }
    void run_on(std::function<void()> fn) {
        {
            std::lock_guard lock{m_};
            queue_.push_back(std::move(fn));
        }
        cv_.notify_one();
    }
    [[nodiscard]] bool on_loop_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

private:
    void run() {
        for (;;) {
            std::function<void()> fn;
            {
                std::unique_lock lock{m_};
                cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
                if (queue_.empty()) return;
                fn = std::move(queue_.front());
                queue_.pop_front();
            }
            fn();
        }
    }

    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> queue_;
    bool stopping_ = false;
    std::thread thread_;
};

} // namespace test_support
