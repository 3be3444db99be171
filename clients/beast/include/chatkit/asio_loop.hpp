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

namespace chatkit {

class asio_loop : public scheduler {
public:
    asio_loop() = default;
    asio_loop(const asio_loop&) = delete;
    asio_loop& operator=(const asio_loop&) = delete;
    virtual ~asio_loop() = default;

    [[nodiscard]] boost::asio::io_context& context() noexcept { return ioc_; }

    void post(std::coroutine_handle<> h) override {
        boost::asio::post(ioc_, [h] { h.resume(); });
    }
    bool call_after(std::chrono::nanoseconds delay, std::function<void()> fn) override {
        auto timer = std::make_shared<boost::asio::steady_timer>(ioc_, delay);
        timer->async_wait([timer, fn = std::move(fn)](const boost::system::error_code& ec) {
            if (!ec) fn();
        });
        return true;
    }

    // The Asio loop a task runs on, or null when it runs elsewhere (sync_wait, another adapter).
    static asio_loop* of(const task_env& env) noexcept { return dynamic_cast<asio_loop*>(env.loop); }

private:
    // Concurrency hint 1: one thread runs it, other threads only post to it.
    boost::asio::io_context ioc_{1};
};

} // namespace chatkit
