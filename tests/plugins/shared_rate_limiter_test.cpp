// shared_rate_limiter: CHAT_RATE_LIMIT's per-client limit on counters that replicas share. Each
// case runs two middlewares — two replicas — on one counter store, as the service calls them; the
// Redis store itself is tested in redis_counter_store_test.cpp, and two sample_server replicas on
// one Redis in tests/server/redis_fleet_test.cpp.
#include "chatkit/shared_rate_limiter.hpp"

#include "limiter_calls.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

// 2026-01-01T00:00:10Z, moved by the tests.
std::atomic<chatkit::unix_ms> wall{1'767'225'610'000};

// A counter store that keeps every counter name it is given (to check what a shared store would
// hold) and can be made unreachable.
class watched_counters {
public:
    chatkit::result<chatkit::counters_taken> take(std::span<const chatkit::counter_add> adds) {
        if (down) return chatkit::error{chatkit::error_kind::unavailable, "connection refused"};
        {
            std::lock_guard lock{mutex_};
            for (const auto& a : adds) names_.push_back(a.name);
        }
        return inner_.take(adds);
    }
    chatkit::result<void> add(std::span<const chatkit::counter_add> adds) { return inner_.add(adds); }
    std::vector<std::string> names() {
        std::lock_guard lock{mutex_};
        return names_;
    }
    std::atomic<bool> down{false};

private:
    chatkit::memory_counter_store inner_;
    std::mutex mutex_;
    std::vector<std::string> names_;
};
static_assert(chatkit::counter_store<watched_counters>);

using limiter = chatkit::shared_rate_limiter<watched_counters>;

chatkit::shared_rate_limiter_options options(bool fall_back = false, std::atomic<int>* fell_back = nullptr) {
    chatkit::shared_rate_limiter_options o;
    o.clock = [] { return wall.load(); };
    o.fall_back_to_local = fall_back;
    if (fell_back) o.on_fallback = [fell_back](const chatkit::error&) { ++*fell_back; };
    return o;
}

using limiter_calls::per_minute;
using limiter_calls::send;
chatkit::http_request from(std::string addr, std::string path = "/chat") {
    return limiter_calls::request_from(std::move(addr), std::move(path));
}
std::string header_of(const limiter_calls::outcome& out, std::string_view name) { return limiter_calls::header(out.response, name); }

} // namespace

TEST_CASE("shared_rate_limiter: two replicas on one store let exactly the limit through, concurrently", "[shared_rate_limiter]") {
    auto counters = std::make_shared<watched_counters>();
    limiter a{counters, per_minute(10), options()}, b{counters, per_minute(10), options()};
    std::atomic<int> passed{0}, refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 5; ++i) {
                auto out = send(t % 2 ? b : a, from("10.0.0.7"));
                ++(out.refused ? refused : passed);
            }
        });
    for (auto& t : threads) t.join();
    CHECK(passed == 10);
    CHECK(refused == 30);

    // Another client has its own 10.
    CHECK_FALSE(send(a, from("10.0.0.8")).refused);
}

TEST_CASE("shared_rate_limiter: the answers carry X-RateLimit-* and a refusal is 429 with Retry-After to the window's end",
          "[shared_rate_limiter]") {
    wall = 1'767'225'610'000; // 10 s into a minute: 50 s left
    auto counters = std::make_shared<watched_counters>();
    limiter a{counters, per_minute(2), options()}, b{counters, per_minute(2), options()};
    auto first = send(a, from("10.0.0.7"));
    CHECK(header_of(first, "X-RateLimit-Limit") == "2");
    CHECK(header_of(first, "X-RateLimit-Remaining") == "1");
    CHECK(header_of(first, "X-RateLimit-Reset") == "50");
    CHECK(header_of(send(b, from("10.0.0.7")), "X-RateLimit-Remaining") == "0");

    auto third = send(a, from("10.0.0.7"));
    REQUIRE(third.refused);
    CHECK(third.response.status == 429);
    CHECK(header_of(third, "Retry-After") == "50");
    CHECK(header_of(third, "X-RateLimit-Remaining") == "0");
    const auto body = nlohmann::json::parse(third.response.body);
    CHECK(body["error"]["code"] == "rate_limit_exceeded");
    CHECK(body["error"]["message"] == "rate limit of 2/minute exceeded; retry in 50 s");

    // The next minute is a new window.
    wall = 1'767'225'660'000;
    CHECK_FALSE(send(b, from("10.0.0.7")).refused);
}

TEST_CASE("shared_rate_limiter: GET /health is neither counted nor sent to the store", "[shared_rate_limiter]") {
    auto counters = std::make_shared<watched_counters>();
    limiter a{counters, per_minute(1), options()};
    CHECK_FALSE(a.blocks(from("10.0.0.7", "/health")));
    CHECK(a.blocks(from("10.0.0.7")));
    for (int i = 0; i < 3; ++i) {
        auto out = send(a, from("10.0.0.7", "/health"));
        CHECK_FALSE(out.refused);
        CHECK(header_of(out, "X-RateLimit-Limit") == "<absent>");
    }
    CHECK(counters->names().empty());
    CHECK_FALSE(send(a, from("10.0.0.7")).refused);
}

TEST_CASE("shared_rate_limiter: a key the client sends is its bucket, and the store sees a hash of it, never the key",
          "[shared_rate_limiter]") {
    auto counters = std::make_shared<watched_counters>();
    limiter a{counters, per_minute(1), options()};
    auto keyed = [](std::string key) {
        auto req = from("10.0.0.7");
        req.headers.emplace("Authorization", "Bearer " + key);
        return req;
    };
    CHECK_FALSE(send(a, keyed("sk-secret-one")).refused);
    CHECK(send(a, keyed("sk-secret-one")).refused);
    CHECK_FALSE(send(a, keyed("sk-secret-two")).refused); // same address, another key: another client
    const auto names = counters->names();
    REQUIRE(names.size() == 3);
    CHECK(names[0] == names[1]);
    CHECK(names[0] != names[2]);
    for (const auto& n : names) {
        CHECK(n.find("secret") == std::string::npos);
        CHECK(n.starts_with("client#keyhash:"));
    }
}

TEST_CASE("shared_rate_limiter: a store that cannot be reached gets 503, or with fall_back_to_local each replica counts alone",
          "[shared_rate_limiter]") {
    auto counters = std::make_shared<watched_counters>();
    counters->down = true;
    SECTION("refuse") {
        limiter a{counters, per_minute(5), options()};
        auto out = send(a, from("10.0.0.7"));
        REQUIRE(out.refused);
        CHECK(out.response.status == 503);
        CHECK(header_of(out, "Retry-After") == "1");
        const auto body = nlohmann::json::parse(out.response.body);
        CHECK(body["error"]["code"] == "limits_unavailable");
        CHECK_THAT(body["error"]["message"].get<std::string>(), Catch::Contains("connection refused"));
    }
    SECTION("fall back") {
        std::atomic<int> fell_back{0};
        limiter a{counters, per_minute(2), options(true, &fell_back)};
        CHECK_FALSE(send(a, from("10.0.0.7")).refused);
        CHECK_FALSE(send(a, from("10.0.0.7")).refused);
        CHECK(send(a, from("10.0.0.7")).response.status == 429);
        CHECK(fell_back == 3);
    }
}
