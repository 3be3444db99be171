// chatkit::redis_counter_store against a real redis-server the test starts on 127.0.0.1: counters
// that never pass their limit, all or none across counters, settling, exact counts from several
// stores (several replicas) at once, expiries, a Redis that forgot the scripts, and a Redis that
// is down.
#include <chatkit/redis_counter_store.hpp>

#include <catch2/catch.hpp>

#include "../support/redis_server.hpp"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

using chatkit::counter_add;
using chatkit::redis_counter_store;
using test_support::redis_server;

namespace {

redis_counter_store store_on(const redis_server& redis) {
    chatkit::redis_counter_store_options o;
    o.redis = chatkit::parse_redis_url(redis.url()).value();
    o.redis.retry_after = std::chrono::milliseconds{50};
    return redis_counter_store{std::move(o)};
}

counter_add add(std::string name, std::int64_t amount, std::int64_t limit, chatkit::unix_ms expires_at = 0) {
    return {std::move(name), amount, limit, expires_at ? expires_at : chatkit::now_unix_ms() + 3'600'000};
}

// Runs one command on its own connection: what the test reads of Redis directly.
chatkit::redis_reply raw(const redis_server& redis, std::initializer_list<std::string_view> args) {
    chatkit::redis_connection_pool pool{chatkit::parse_redis_url(redis.url()).value()};
    auto r = pool.command(args);
    REQUIRE(r);
    return std::move(*r);
}

} // namespace

TEST_CASE("redis_counter_store: a counter grows while it fits its limit, and a refusal says its value") {
    redis_server redis;
    auto store = store_on(redis);
    for (int i = 1; i <= 3; ++i) {
        const std::vector<counter_add> adds{add("key#k#tpm#1", 40, 100)};
        auto t = store.take(adds);
        REQUIRE(t);
        if (i < 3) {
            CHECK(t->taken);
            CHECK(t->values == std::vector<std::int64_t>{40 * i});
        } else {
            CHECK_FALSE(t->taken);
            CHECK(t->refused == 0);
            CHECK(t->values == std::vector<std::int64_t>{80});
        }
    }
    CHECK(store.value("key#k#tpm#1").value() == 80);
    // A reservation given back is never refused, and a settlement passes the limit if it must.
    const std::vector<counter_add> back{add("key#k#tpm#1", -30, 100)};
    REQUIRE(store.take(back)->taken);
    CHECK(store.value("key#k#tpm#1").value() == 50);
    const std::vector<counter_add> over{add("key#k#tpm#1", 70, 100)};
    REQUIRE(store.add(over));
    CHECK(store.value("key#k#tpm#1").value() == 120);
}

TEST_CASE("redis_counter_store: several counters are taken all or none") {
    redis_server redis;
    auto store = store_on(redis);
    const std::vector<counter_add> first{add("key#k#rpm#5", 1, 10), add("team#t#rpm#5", 1, 1)};
    auto t = store.take(first);
    REQUIRE(t);
    CHECK(t->taken);
    CHECK(t->values == std::vector<std::int64_t>{1, 1});
    // The team is full: the key's counter must not move either.
    auto refused = store.take(first);
    REQUIRE(refused);
    CHECK_FALSE(refused->taken);
    CHECK(refused->refused == 1);
    CHECK(refused->values == std::vector<std::int64_t>{0, 1});
    CHECK(store.value("key#k#rpm#5").value() == 1);
    CHECK(store.value("team#t#rpm#5").value() == 1);
}

TEST_CASE("redis_counter_store: 50 concurrent takes from four stores (four replicas) against a limit of 10: exactly 10 fit") {
    redis_server redis;
    std::vector<redis_counter_store> stores;
    for (int i = 0; i < 4; ++i) stores.push_back(store_on(redis));
    std::atomic<int> taken{0}, refused{0}, failed{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 50; ++i)
        threads.emplace_back([&, i] {
            const std::vector<counter_add> adds{add("team#busy#rpm#7", 1, 10)};
            auto t = stores[static_cast<std::size_t>(i % 4)].take(adds);
            if (!t) ++failed;
            else if (t->taken) ++taken;
            else ++refused;
        });
    for (auto& t : threads) t.join();
    CHECK(failed == 0);
    CHECK(taken == 10);
    CHECK(refused == 40);
    CHECK(stores[0].value("team#busy#rpm#7").value() == 10);
}

TEST_CASE("redis_counter_store: a counter expires at its expires_at, the later one when two differ") {
    redis_server redis;
    auto store = store_on(redis);
    const auto now = chatkit::now_unix_ms();
    const std::vector<counter_add> later{add("team#t#day#1", 5, 100, now + 7'200'000)};
    REQUIRE(store.take(later)->taken);
    const std::vector<counter_add> sooner{add("team#t#day#1", 5, 100, now + 60'000)};
    REQUIRE(store.add(sooner));
    const auto expiry = raw(redis, {"PEXPIRETIME", "chatkit:limits:team#t#day#1"});
    CHECK(expiry->integer == now + 7'200'000);
    // One already past its time is gone: a new window starts from zero.
    const std::vector<counter_add> past{add("key#k#rpm#2", 3, 10, now - 1)};
    REQUIRE(store.take(past)->taken);
    CHECK(store.value("key#k#rpm#2").value() == 0);
}

TEST_CASE("redis_counter_store: a Redis that forgot the scripts (a restart, SCRIPT FLUSH) gets them again") {
    redis_server redis;
    auto store = store_on(redis);
    const std::vector<counter_add> adds{add("key#k#rpm#9", 1, 10)};
    REQUIRE(store.take(adds)->taken);
    raw(redis, {"SCRIPT", "FLUSH"});
    auto again = store.take(adds);
    REQUIRE(again);
    CHECK(again->taken);
    CHECK(again->values == std::vector<std::int64_t>{2});
}

TEST_CASE("redis_counter_store: a Redis that is down is an unavailable error, not a refusal, and one that is back counts again") {
    redis_server redis;
    auto store = store_on(redis);
    const std::vector<counter_add> adds{add("key#k#rpm#3", 1, 10)};
    REQUIRE(store.take(adds)->taken);
    redis.stop();
    auto t = store.take(adds);
    REQUIRE_FALSE(t);
    CHECK(t.error().kind == chatkit::error_kind::unavailable);
    CHECK(t.error().code == "limits_unavailable");
    REQUIRE_FALSE(store.add(adds));
    redis.start(); // an empty Redis: the counters and the scripts are gone
    for (int i = 0; i < 100 && !store.take(adds); ++i) std::this_thread::sleep_for(std::chrono::milliseconds{20});
    CHECK(store.value("key#k#rpm#3").value() >= 1);
}

TEST_CASE("redis_counter_store: a password is sent, and never shown in an error") {
    redis_server redis{"s3cret-counter-pass"};
    auto store = store_on(redis);
    const std::vector<counter_add> adds{add("key#k#rpm#4", 1, 10)};
    REQUIRE(store.take(adds)->taken);
    chatkit::redis_counter_store_options wrong;
    wrong.redis = chatkit::parse_redis_url("redis://:not-the-pass-xyz@127.0.0.1:" + std::to_string(redis.port())).value();
    redis_counter_store refused{wrong};
    auto t = refused.take(adds);
    REQUIRE_FALSE(t);
    CHECK(t.error().kind == chatkit::error_kind::unavailable);
    CHECK(t.error().message.find("not-the-pass-xyz") == std::string::npos);
}
