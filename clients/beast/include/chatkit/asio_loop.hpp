// One Asio event loop as the core sees it: a `chatkit::scheduler` (resume a coroutine here, call
// something after a delay) over an io_context run by one thread. chatkit::beast_server runs one
// per core; chatkit::beast_client finds the loop a request runs on through the task's environment
// and keeps its connections there, so no loop touches another's sockets.
#pragma once

#include "chatkit/task.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <coroutine>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>

namespace chatkit {

class asio_loop : public scheduler {
public:
    asio_loop() : owned_(std::in_place, 1), ioc_(*owned_) {}
    // A loop over an io_context its caller owns and runs, on one thread (an application's own,
    // see chatkit::beast_handler); it must outlive this object.
    explicit asio_loop(boost::asio::io_context& ioc) noexcept : ioc_(ioc) {}
    asio_loop(const asio_loop&) = delete;
    asio_loop& operator=(const asio_loop&) = delete;
    virtual ~asio_loop() = default;

    [[nodiscard]] boost::asio::io_context& context() noexcept { return ioc_; }

    void post(std::coroutine_handle<> h) override {
        boost::asio::post(ioc_, [h] { h.resume(); });
    }
    bool call_after(std::chrono::nanoseconds delay, std::function<void()> fn, std::stop_token stop = {}) override {
        auto p = std::make_shared<pending>(ioc_, delay);
        if (stop.stop_possible()) {
            // The stop may come from any thread: the timer is cancelled on its own loop.
            std::weak_ptr<pending> weak = p;
            boost::asio::io_context* ioc = &ioc_;
            std::function<void()> cancel = [weak, ioc] {
                boost::asio::post(*ioc, [weak] {
                    if (auto alive = weak.lock()) alive->timer.cancel();
                });
            };
            p->on_stop.emplace(std::move(stop), std::move(cancel));
        }
        p->timer.async_wait([p, fn = std::move(fn)](const boost::system::error_code& ec) {
            p->on_stop.reset();
            if (!ec) fn();
        });
        return true;
    }

    // The Asio loop a task runs on, or null when it runs elsewhere (sync_wait, another adapter).
    static asio_loop* of(const task_env& env) noexcept { return dynamic_cast<asio_loop*>(env.loop); }

private:
    struct pending {
        pending(boost::asio::io_context& ioc, std::chrono::nanoseconds d) : timer(ioc, d) {}
        boost::asio::steady_timer timer;
        std::optional<std::stop_callback<std::function<void()>>> on_stop{};
    };

    // Concurrency hint 1: one thread runs it, other threads only post to it.
    std::optional<boost::asio::io_context> owned_{};
    boost::asio::io_context& ioc_;
};

} // namespace chatkit
