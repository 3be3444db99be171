// chatkit::asio_loop as the core's scheduler: `sleep_for` waits on a loop timer without holding
// the loop, and the request's stop token cuts it short; chatkit::beast_client refuses, with a
// clear error, a call that does not run on an Asio loop.
#include <chatkit/asio_loop.hpp>
#include <chatkit/beast_client.hpp>
#include <chatkit/sleep.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <future>
#include <stop_token>
#include <thread>

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// One loop on its own thread, as beast_server runs each of its loops.
struct running_loop {
    chatkit::asio_loop loop;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work = boost::asio::make_work_guard(loop.context());
    std::thread thread{[this] { loop.context().run(); }};
    ~running_loop() {
        work.reset();
        thread.join();
    }

    // Starts `t` on the loop with `stop`; the future gets its value.
    template <class T>
    std::future<T> start(chatkit::task<T> t, std::stop_token stop = {}) {
        auto done = std::make_shared<std::promise<T>>();
        auto future = done->get_future();
        auto holder = std::make_shared<chatkit::task<T>>(std::move(t));
        boost::asio::post(loop.context(), [this, holder, done, stop] {
            chatkit::start_detached(std::move(*holder), chatkit::task_env{stop, &loop, nullptr},
                                    [done](std::optional<T> v, std::exception_ptr e) {
                                        if (e) done->set_exception(e);
                                        else done->set_value(std::move(*v));
                                    });
        });
        return future;
    }
};

chatkit::task<bool> nap(std::chrono::milliseconds d) {
    const bool whole = co_await chatkit::sleep_for(d);
    co_return whole;
}

chatkit::task<int> tick() { co_return 1; }

// True when the client refuses the origin as unusable.
chatkit::task<bool> refused(std::shared_ptr<chatkit::beast_client> client, std::string origin) {
    chatkit::client_request req;
    req.origin = std::move(origin);
    req.target = "/";
    auto opened = co_await client->open(std::move(req));
    co_return !opened && opened.error().kind == chatkit::client_error_kind::unreachable;
}

} // namespace

TEST_CASE("sleep_for waits on a loop timer while the loop keeps serving, and reports a whole wait") {
    running_loop l;
    const auto started = clock_type::now();
    auto sleeping = l.start(nap(2s));
    // The loop is free while the nap waits: a second task finishes long before it.
    auto other = l.start(tick());
    REQUIRE(other.wait_for(1s) == std::future_status::ready);
    CHECK(sleeping.wait_for(0ms) == std::future_status::timeout);
    CHECK(sleeping.get());
    CHECK(clock_type::now() - started >= 2s);
}

TEST_CASE("a stop requested from another thread cuts a loop sleep short, and cancels its timer") {
    const auto started = clock_type::now();
    {
        running_loop l;
        std::stop_source stop;
        auto sleeping = l.start(nap(60s), stop.get_token());
        std::this_thread::sleep_for(50ms);
        stop.request_stop();
        REQUIRE(sleeping.wait_for(5s) == std::future_status::ready);
        CHECK_FALSE(sleeping.get());
    } // the loop's run() returns only once no timer is pending: a live 60 s timer would hold it
    CHECK(clock_type::now() - started < 5s);
}

TEST_CASE("a sleep whose stop was already requested returns at once, and one without a loop waits on its thread") {
    std::stop_source stop;
    stop.request_stop();
    CHECK_FALSE(chatkit::sync_wait(nap(60s), chatkit::task_env{stop.get_token(), nullptr, nullptr}));
    const auto started = clock_type::now();
    CHECK(chatkit::sync_wait(nap(50ms)));
    CHECK(clock_type::now() - started >= 50ms);
}

TEST_CASE("beast_client called off an Asio loop fails with a clear error instead of blocking") {
    chatkit::beast_client client;
    chatkit::client_request req;
    req.origin = "http://127.0.0.1:9";
    req.target = "/";
    auto opened = chatkit::sync_wait(client.open(req));
    REQUIRE_FALSE(opened);
    CHECK(opened.error().kind == chatkit::client_error_kind::unreachable);
    CHECK(opened.error().detail.find("Asio loop") != std::string::npos);
}

TEST_CASE("beast_client refuses an origin it cannot use") {
    running_loop l;
    auto client = std::make_shared<chatkit::beast_client>();
    CHECK(l.start(refused(client, "ftp://127.0.0.1")).get());
    CHECK(l.start(refused(client, "http://")).get());
    CHECK(l.start(refused(client, "http://[::1")).get());
    // A port that is not a number in range is refused as the rest are, not thrown.
    CHECK(l.start(refused(client, "http://127.0.0.1:http")).get());
    CHECK(l.start(refused(client, "http://127.0.0.1:99999")).get());
    CHECK(l.start(refused(client, "http://[::1]:0")).get());
}
