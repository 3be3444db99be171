#include <chatkit/rate_limiter.hpp>
#include <chatkit/service.hpp>

#include <catch2/catch.hpp>

#include "../support/manual_clock.hpp"
#include "limiter_calls.hpp"
#include <nlohmann/json.hpp>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>

namespace {

using test_support::manual_clock;

using test_limiter = chatkit::rate_limiter<chatkit::null_mutex, manual_clock>;
static_assert(chatkit::middleware<test_limiter>);

using limiter_calls::header;
using limiter_calls::outcome;
using limiter_calls::per_minute;
using limiter_calls::request_from;
outcome send(test_limiter& limiter, chatkit::http_request req) { return limiter_calls::send(limiter, std::move(req)); }

} // namespace

TEST_CASE("rate_limit::parse accepts N per second, minute or hour", "[rate_limiter]") {
    using chatkit::rate_limit;
    using std::chrono::seconds;
    CHECK(rate_limit::parse("60/minute") == rate_limit{60, seconds{60}});
    CHECK(rate_limit::parse("60/min") == rate_limit{60, seconds{60}});
    CHECK(rate_limit::parse("60/m") == rate_limit{60, seconds{60}});
    CHECK(rate_limit::parse("5/second") == rate_limit{5, seconds{1}});
    CHECK(rate_limit::parse("5/sec") == rate_limit{5, seconds{1}});
    CHECK(rate_limit::parse("5/s") == rate_limit{5, seconds{1}});
    CHECK(rate_limit::parse("1000/hour") == rate_limit{1000, seconds{3600}});
    CHECK(rate_limit::parse("1/h") == rate_limit{1, seconds{3600}});
    CHECK(rate_limit::parse("4294967295/s") == rate_limit{4294967295u, seconds{1}});
}

TEST_CASE("rate_limit::parse rejects anything else", "[rate_limiter]") {
    using chatkit::rate_limit;
    for (const char* text : {"",      "/minute", "60",        "60/",           "0/minute",    "abc",       "abc/minute", "5/fortnight",
                             "-1/s",  "+1/s",    " 5/minute", "5/minute ",     "5 /minute",   "5/ minute", "5/Minute",   "5/minutes",
                             "1.5/s", "0x10/s",  "5//minute", "5/minute/hour", "4294967296/s"}) {
        INFO("text: \"" << text << "\"");
        CHECK_FALSE(rate_limit::parse(text));
    }
}

TEST_CASE("rate_limit::to_string round-trips through parse", "[rate_limiter]") {
    using chatkit::rate_limit;
    CHECK(rate_limit{}.to_string() == "60/minute");
    CHECK(rate_limit{5, std::chrono::seconds{1}}.to_string() == "5/second");
    CHECK(rate_limit{2, std::chrono::hours{1}}.to_string() == "2/hour");
    CHECK(rate_limit{10, std::chrono::seconds{30}}.to_string() == "10/30s");
    for (const char* text : {"60/minute", "5/second", "2/hour"}) CHECK(rate_limit::parse(text)->to_string() == text);
}

TEST_CASE("a limit that allows nothing is refused at construction", "[rate_limiter]") {
    CHECK_THROWS_AS(test_limiter(chatkit::rate_limit{0, std::chrono::seconds{60}}), std::invalid_argument);
    CHECK_THROWS_AS(test_limiter(chatkit::rate_limit{1, std::chrono::seconds{0}}), std::invalid_argument);
}

TEST_CASE("N requests pass, then the next gets a 429 envelope with Retry-After", "[rate_limiter]") {
    test_limiter limiter{per_minute(3)}; // a token every 20 s

    for (int i = 0; i < 3; ++i) {
        auto out = send(limiter, request_from("10.0.0.1"));
        CHECK_FALSE(out.refused);
        CHECK(header(out.response, "X-RateLimit-Limit") == "3");
        CHECK(header(out.response, "X-RateLimit-Remaining") == std::to_string(2 - i));
        CHECK(header(out.response, "X-RateLimit-Reset") == std::to_string(20 * (i + 1)));
    }

    manual_clock::advance(std::chrono::milliseconds{500});
    auto out = send(limiter, request_from("10.0.0.1"));
    REQUIRE(out.refused);
    const auto& res = out.response;
    CHECK(res.status == 429);
    CHECK(header(res, "Content-Type") == "application/json");
    CHECK(header(res, "Retry-After") == "20"); // 19.5 s, rounded up
    CHECK(header(res, "X-RateLimit-Limit") == "3");
    CHECK(header(res, "X-RateLimit-Remaining") == "0");
    CHECK(header(res, "X-RateLimit-Reset") == "60"); // 59.5 s, rounded up

    const auto body = nlohmann::json::parse(res.body);
    CHECK(body["error"]["type"] == "rate_limit_exceeded");
    CHECK(body["error"]["code"] == "rate_limit_exceeded");
    CHECK(body["error"]["message"] == "rate limit of 3/minute exceeded; retry in 20 s");
    CHECK(body["request_id"] == "req-1");
}

TEST_CASE("a refused request does not use up tokens", "[rate_limiter]") {
    test_limiter limiter{per_minute(1)};
    CHECK_FALSE(send(limiter, request_from("a")).refused);
    for (int i = 0; i < 5; ++i) CHECK(send(limiter, request_from("a")).refused);
    manual_clock::advance(std::chrono::seconds{60});
    CHECK_FALSE(send(limiter, request_from("a")).refused);
}

TEST_CASE("tokens refill continuously as time passes", "[rate_limiter]") {
    test_limiter limiter{per_minute(3)};
    for (int i = 0; i < 3; ++i) REQUIRE_FALSE(send(limiter, request_from("a")).refused);
    REQUIRE(send(limiter, request_from("a")).refused);

    manual_clock::advance(std::chrono::seconds{19});
    auto early = send(limiter, request_from("a"));
    CHECK(early.refused);
    CHECK(header(early.response, "Retry-After") == "1");

    manual_clock::advance(std::chrono::seconds{1}); // 20 s: exactly one token back
    auto allowed = send(limiter, request_from("a"));
    CHECK_FALSE(allowed.refused);
    CHECK(header(allowed.response, "X-RateLimit-Remaining") == "0");
    CHECK(header(allowed.response, "X-RateLimit-Reset") == "60");
    CHECK(send(limiter, request_from("a")).refused);

    manual_clock::advance(std::chrono::minutes{10}); // a long idle refills to N, never beyond
    for (int i = 0; i < 3; ++i) CHECK_FALSE(send(limiter, request_from("a")).refused);
    CHECK(send(limiter, request_from("a")).refused);
}

TEST_CASE("each address has its own bucket", "[rate_limiter]") {
    test_limiter limiter{per_minute(2)};
    for (int i = 0; i < 2; ++i) REQUIRE_FALSE(send(limiter, request_from("10.0.0.1")).refused);
    CHECK(send(limiter, request_from("10.0.0.1")).refused);

    auto other = send(limiter, request_from("10.0.0.2"));
    CHECK_FALSE(other.refused);
    CHECK(header(other.response, "X-RateLimit-Remaining") == "1");
}

TEST_CASE("an API key is limited apart from the address it comes from", "[rate_limiter]") {
    test_limiter limiter{per_minute(1)};
    auto with_key = [](std::string name, std::string value) {
        auto req = request_from("10.0.0.1");
        req.headers[std::move(name)] = std::move(value);
        return req;
    };

    CHECK_FALSE(send(limiter, with_key("Authorization", "Bearer sk-alice")).refused);
    CHECK(send(limiter, with_key("authorization", "bearer sk-alice")).refused); // same key, any case
    CHECK(send(limiter, with_key("X-API-Key", "sk-alice")).refused);            // same key, other header
    CHECK(send(limiter, with_key("api-key", "sk-alice")).refused);

    CHECK_FALSE(send(limiter, with_key("Authorization", "Bearer sk-bob")).refused);
    CHECK_FALSE(send(limiter, request_from("10.0.0.1")).refused); // the peer address, without a key
    CHECK(send(limiter, request_from("10.0.0.1")).refused);

    // A key that spells an address does not share that address's bucket.
    CHECK_FALSE(send(limiter, with_key("X-API-Key", "10.0.0.1")).refused);
    // Basic auth carries no API key: the address is the client.
    CHECK(send(limiter, with_key("Authorization", "Basic dXNlcjpwYXNz")).refused);
}

TEST_CASE("an authenticated caller is limited by its key id, whatever key headers it adds", "[rate_limiter]") {
    test_limiter limiter{per_minute(1)};
    auto as = [](std::string key_id, std::string claimed) {
        auto req = request_from("10.0.0.1");
        req.caller = {.key_id = std::move(key_id), .team_id = "team-a"};
        req.headers["Authorization"] = "Bearer " + std::move(claimed);
        return req;
    };
    CHECK_FALSE(send(limiter, as("key_a", "ck-one")).refused);
    // Inventing another key in the header does not give a fresh bucket: the caller is the same.
    CHECK(send(limiter, as("key_a", "ck-two")).refused);
    CHECK(send(limiter, as("key_a", "")).refused);
    // Another authenticated key has its own bucket, even from the same address.
    CHECK_FALSE(send(limiter, as("key_b", "ck-one")).refused);
    // A key id does not share the bucket of a client-sent key spelling it.
    auto claimed = request_from("10.0.0.2");
    claimed.headers["X-API-Key"] = "key_a";
    CHECK_FALSE(send(limiter, claimed).refused);
}

TEST_CASE("GET /health is never limited and gets no rate-limit headers", "[rate_limiter]") {
    test_limiter limiter{per_minute(1)};
    REQUIRE_FALSE(send(limiter, request_from("a")).refused);
    REQUIRE(send(limiter, request_from("a")).refused);

    for (int i = 0; i < 5; ++i) {
        auto out = send(limiter, request_from("a", "/health"));
        CHECK_FALSE(out.refused);
        CHECK(out.response.headers.empty());
    }
    CHECK(send(limiter, request_from("a", "/healthz")).refused); // only the exact path
}

TEST_CASE("buckets that are full again are forgotten, so many clients do not pile up", "[rate_limiter]") {
    test_limiter limiter{per_minute(10)};
    for (int i = 0; i < 5000; ++i) send(limiter, request_from("10.1." + std::to_string(i)));
    CHECK(limiter.clients() <= 5000);

    manual_clock::advance(std::chrono::seconds{6}); // one request is refilled after 6 s
    for (int i = 0; i < 5000; ++i) send(limiter, request_from("10.2." + std::to_string(i)));
    // The first wave was dropped at the next sweep; only the second wave can remain.
    CHECK(limiter.clients() <= 5000);

    manual_clock::advance(std::chrono::seconds{6});
    for (int i = 0; i < 2000; ++i) send(limiter, request_from("10.3." + std::to_string(i)));
    CHECK(limiter.clients() <= 4000);
}

TEST_CASE("a flood of distinct clients within one refill period stays under max_clients", "[rate_limiter]") {
    test_limiter limiter{{1, std::chrono::hours{1}}, 1000};
    for (int i = 0; i < 20000; ++i) {
        send(limiter, request_from("flood-" + std::to_string(i)));
        if (limiter.clients() > 1000) FAIL("tracked " << limiter.clients() << " clients");
        manual_clock::advance(std::chrono::milliseconds{1}); // no bucket refills in these 20 s
    }

    // Past the cap the clients closest to a full bucket are forgotten: the newest are still limited,
    // the oldest start over.
    CHECK(send(limiter, request_from("flood-19999")).refused);
    CHECK_FALSE(send(limiter, request_from("flood-0")).refused);
}

TEST_CASE("the limiter composes into a service: headers on 200s, 429 to the client", "[rate_limiter][service]") {
    chatkit::service<chatkit::no_provider, chatkit::no_store, chatkit::no_cache, chatkit::rate_limiter_st> svc{
        chatkit::no_provider{}, chatkit::no_store{}, chatkit::no_cache{},
        chatkit::rate_limiter_st{chatkit::rate_limit{2, std::chrono::hours{1}}}};
    auto chat = [] {
        chatkit::http_request req;
        req.method = "POST";
        req.path = "/chat";
        req.remote_addr = "192.0.2.7";
        req.headers["Content-Type"] = "application/json";
        req.body = R"({"content":"hi"})";
        return req;
    };

    auto first = svc.handle(chat());
    CHECK(first.status == 200);
    CHECK(header(first, "X-RateLimit-Limit") == "2");
    CHECK(header(first, "X-RateLimit-Remaining") == "1");
    CHECK(header(first, "X-RateLimit-Reset") == "1800");

    auto second = svc.handle(chat());
    CHECK(second.status == 200);
    CHECK(header(second, "X-RateLimit-Remaining") == "0");
    CHECK(header(second, "X-RateLimit-Reset") == "3600");

    auto third = svc.handle(chat());
    CHECK(third.status == 429);
    CHECK(header(third, "Retry-After") == "1800");
    CHECK(header(third, "X-RateLimit-Remaining") == "0");
    CHECK(nlohmann::json::parse(third.body)["error"]["type"] == "rate_limit_exceeded");

    chatkit::http_request health;
    health.method = "GET";
    health.path = "/health";
    health.remote_addr = "192.0.2.7";
    auto ok = svc.handle(health);
    CHECK(ok.status == 200);
    CHECK(header(ok, "X-RateLimit-Limit") == "<absent>");

    CHECK(svc.middleware<chatkit::rate_limiter_st>().clients() == 1);
}
