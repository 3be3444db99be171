// Redis over TLS (rediss://) against a real redis-server the test starts with a TLS port: answers
// shared through it, the server's certificate checked (an untrusted one refused before any
// command), a password sent only inside TLS.
#include "../support/redis_server.hpp"

#include <chatkit/redis_cache.hpp>
#include <chatkit/redis_counter_store.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <string>

using test_support::redis_server;

namespace {

chatkit::redis_options tls_options(const redis_server& redis, const std::string& host = "localhost", bool trust = true) {
    auto o = chatkit::parse_redis_url(redis.tls_url(host)).value();
    if (trust) o.tls_ca_file = redis.tls_ca_file().string();
    o.connect_timeout = std::chrono::milliseconds{2000};
    return o;
}

chatkit::completion answer(std::string content) {
    chatkit::completion c{.id = "chatcmpl-7", .model = "m-1", .content = std::move(content)};
    c.usage = {11, 4};
    return c;
}

} // namespace

TEST_CASE("over rediss://, the cache stores and finds answers, by host name or by address", "[redis_tls]") {
    redis_server redis{redis_server::with_tls{}};
    for (const std::string host : {"localhost", "127.0.0.1"}) {
        INFO(host);
        chatkit::redis_cache cache{chatkit::redis_cache_options{.redis = tls_options(redis, host)}};
        REQUIRE(cache.ping());
        cache.put("k-" + host, answer("over TLS"), std::chrono::seconds{60});
        const auto hit = cache.get("k-" + host);
        REQUIRE(hit);
        CHECK(hit->content == "over TLS");
    }
    // The fixture's own plain connection sees what went in through TLS.
    CHECK(redis.command({"DBSIZE"}) == "2");
}

TEST_CASE("over rediss://, the shared counters take and add as over redis://", "[redis_tls]") {
    redis_server redis{redis_server::with_tls{}};
    chatkit::redis_counter_store_options o;
    o.redis = tls_options(redis);
    chatkit::redis_counter_store counters{std::move(o)};
    const chatkit::counter_add one{"tls#rpm#1", 1, 2, chatkit::now_unix_ms() + 60'000};
    CHECK(counters.take({&one, 1}).value().taken);
    CHECK(counters.take({&one, 1}).value().taken);
    CHECK_FALSE(counters.take({&one, 1}).value().taken);
}

TEST_CASE("over rediss://, a certificate the client does not trust is refused before any command", "[redis_tls]") {
    redis_server redis{redis_server::with_tls{}};
    SECTION("not trusted (OpenSSL's default store does not hold the test's certificate)") {
        auto o = tls_options(redis, "localhost", false);
        o.tls_ca_file.clear();
        chatkit::redis_connection_pool pool{o};
        const auto ping = pool.ping();
        REQUIRE_FALSE(ping);
        CHECK(ping.error().kind == chatkit::error_kind::unavailable);
        CHECK_THAT(ping.error().message, Catch::Contains("certificate"));
        CHECK_THAT(ping.error().message, Catch::StartsWith("rediss://localhost:"));
    }
    SECTION("a CA file that cannot be read") {
        auto o = tls_options(redis);
        o.tls_ca_file = "/nonexistent/ca.pem";
        chatkit::redis_connection_pool pool{o};
        const auto ping = pool.ping();
        REQUIRE_FALSE(ping);
        CHECK_THAT(ping.error().message, Catch::Contains("/nonexistent/ca.pem"));
    }
}

TEST_CASE("over rediss:// with a password: accepted, and a wrong one refused without quoting it", "[redis_tls]") {
    redis_server redis{redis_server::with_tls{}, "tls-pass-4321"};
    chatkit::redis_connection_pool good{tls_options(redis)};
    CHECK(good.ping());
    auto o = tls_options(redis);
    o.password = "wrong-tls-pass";
    chatkit::redis_connection_pool bad{o};
    const auto ping = bad.ping();
    REQUIRE_FALSE(ping);
    CHECK(ping.error().code == "redis_auth");
    CHECK(ping.error().message.find("wrong-tls-pass") == std::string::npos);
}
