// redis_cache against a real redis-server the test starts on 127.0.0.1: hits and misses, TTL on
// Redis's own clock, per-user keys through the service, passwords, and a Redis that stops, hangs
// and comes back, during which chats keep being answered.
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/redis_cache.hpp>
#include <chatkit/testing/cache.hpp>

#include <catch2/catch.hpp>

#include "../support/redis_server.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;
using test_support::redis_server;

namespace {

constexpr std::chrono::seconds minute{60};

chatkit::redis_cache_options options_for(const std::string& url) {
    chatkit::redis_cache_options o;
    o.redis = chatkit::parse_redis_url(url).value();
    o.redis.retry_after = std::chrono::milliseconds{50}; // the reconnect tests wait for it
    return o;
}

chatkit::completion answer(std::string content) {
    chatkit::completion c{.id = "chatcmpl-7", .model = "m-1", .content = std::move(content)};
    c.usage = {11, 4};
    c.finish_reason = "length";
    c.created_at = 1'700'000'000'000;
    c.extra = {{"refusal", nullptr}};
    return c;
}

// Polls (bounded) until `f` holds.
template <class F>
bool eventually(F f, std::chrono::seconds limit = std::chrono::seconds{15}) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (f()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds{20});
    }
    return f();
}

using echo_service = chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::redis_cache>;

chatkit::http_request chat(const std::string& user, const std::string& content) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/chat";
    req.body = json{{"user_id", user}, {"content", content}}.dump();
    req.headers.emplace("Content-Type", "application/json");
    return req;
}

} // namespace

TEST_CASE("a stored answer comes back whole from Redis, and an unknown key misses", "[redis_cache]") {
    redis_server redis;
    chatkit::redis_cache cache{options_for(redis.url())};
    REQUIRE(cache.ping());

    cache.put("k", answer("hello"), minute);
    const auto hit = cache.get("k");
    REQUIRE(hit);
    CHECK(hit->content == "hello");
    CHECK(hit->id == "chatcmpl-7");
    CHECK(hit->model == "m-1");
    CHECK(hit->finish_reason == "length");
    CHECK(hit->usage == chatkit::token_usage{11, 4});
    CHECK(hit->created_at == 1'700'000'000'000);
    CHECK(hit->extra == json{{"refusal", nullptr}});
    CHECK_FALSE(cache.get("other"));
    CHECK_FALSE(cache.get("K"));

    // Under the prefix, with the service's key as it is.
    CHECK(redis.command({"EXISTS", "chatkit:cache:k"}) == "1");
    const auto stats = cache.stats();
    CHECK(stats.hits == 1);
    CHECK(stats.misses == 2);
    CHECK(stats.failures == 0);
}

// Round trips, exact and per-user keys, replacement, TTL (on Redis's clock: the kit sleeps) and
// threads. Each check gets an empty cache: a key prefix of its own in one Redis.
TEST_CASE("redis_cache passes the cache conformance checks", "[redis_cache]") {
    redis_server redis;
    int made = 0;
    chatkit::testing::check_cache_conformance<chatkit::redis_cache>([&redis, &made] {
        auto o = options_for(redis.url());
        o.key_prefix = "kit-" + std::to_string(++made) + ":";
        return chatkit::redis_cache{o};
    });
}

TEST_CASE("an entry carries its TTL in Redis and expires by Redis's clock", "[redis_cache]") {
    redis_server redis;
    chatkit::redis_cache cache{options_for(redis.url())};
    cache.put("short", answer("soon gone"), std::chrono::seconds{1});
    cache.put("long", answer("stays"), minute);
    const long pttl = std::stol(redis.command({"PTTL", "chatkit:cache:short"}));
    CHECK(pttl > 0);
    CHECK(pttl <= 1000);
    CHECK(std::stol(redis.command({"PTTL", "chatkit:cache:long"})) > 1000);

    CHECK(eventually([&] { return !cache.get("short"); }));
    CHECK(redis.command({"EXISTS", "chatkit:cache:short"}) == "0");
    CHECK(cache.get("long"));

    // A TTL of zero stores nothing.
    cache.put("never", answer("x"), std::chrono::seconds{0});
    CHECK(redis.command({"EXISTS", "chatkit:cache:never"}) == "0");
}

TEST_CASE("an entry larger than max_entry_bytes is not stored", "[redis_cache]") {
    redis_server redis;
    auto o = options_for(redis.url());
    o.max_entry_bytes = 1000;
    chatkit::redis_cache cache{o};
    cache.put("big", answer(std::string(2000, 'x')), minute);
    cache.put("small", answer("ok"), minute);
    CHECK_FALSE(cache.get("big"));
    CHECK(cache.get("small"));
}

TEST_CASE("two services sharing a Redis share answers, and only for the same user", "[redis_cache]") {
    redis_server redis;
    echo_service a{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::redis_cache{options_for(redis.url())}};
    echo_service b{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::redis_cache{options_for(redis.url())}};

    const auto first = a.handle(chat("ada", "what is shared?"));
    REQUIRE(first.status == 200);
    CHECK(json::parse(first.body)["cached"] == false);

    const auto on_b = b.handle(chat("ada", "what is shared?"));
    REQUIRE(on_b.status == 200);
    CHECK(json::parse(on_b.body)["cached"] == true);
    CHECK(json::parse(on_b.body)["content"] == json::parse(first.body)["content"]);

    // Another user asking the same is not answered from ada's entry.
    const auto other = b.handle(chat("bob", "what is shared?"));
    REQUIRE(other.status == 200);
    CHECK(json::parse(other.body)["cached"] == false);
    CHECK(b.cache().stats().hits == 1);
}

TEST_CASE("a Redis with a password is used with it", "[redis_cache]") {
    redis_server redis{"correct horse battery"};
    const std::string url = "redis://:correct%20horse%20battery@127.0.0.1:" + std::to_string(redis.port()) + "/2";
    chatkit::redis_cache cache{options_for(url)};
    REQUIRE(cache.ping());
    cache.put("k", answer("behind a password"), minute);
    REQUIRE(cache.get("k"));
    CHECK(cache.get("k")->content == "behind a password");
    // On the database the URL names, not on 0.
    CHECK(redis.command({"EXISTS", "chatkit:cache:k"}) == "0");
    CHECK(cache.stats().failures == 0);
}

TEST_CASE("a wrong password is a clear error that does not quote it, and the cache misses", "[redis_cache]") {
    redis_server redis{"the-right-one"};
    auto o = options_for("redis://:not-the-right-one@127.0.0.1:" + std::to_string(redis.port()));
    std::mutex mutex;
    std::vector<std::string> reported;
    o.on_error = [&](const chatkit::error& e) {
        std::lock_guard lock{mutex};
        reported.push_back(e.message);
    };
    chatkit::redis_cache cache{o};

    const auto checked = cache.ping();
    REQUIRE_FALSE(checked);
    const std::string message = checked.error().message;
    INFO(message);
    CHECK(message.find("credentials were refused") != std::string::npos);
    CHECK(message.find("WRONGPASS") != std::string::npos);
    CHECK(message.find("127.0.0.1:" + std::to_string(redis.port())) != std::string::npos);
    CHECK(message.find("not-the-right-one") == std::string::npos);

    cache.put("k", answer("x"), minute);
    CHECK_FALSE(cache.get("k"));
    CHECK(cache.stats().failures >= 2);
    std::lock_guard lock{mutex};
    REQUIRE(reported.size() >= 2);
    for (const auto& m : reported) CHECK(m.find("not-the-right-one") == std::string::npos);
    CHECK(cache.health().detail.find("not-the-right-one") == std::string::npos);
}

TEST_CASE("a Redis that stops costs misses, never a chat, and is used again once it is back", "[redis_cache]") {
    redis_server redis;
    std::atomic<int> errors{0};
    auto o = options_for(redis.url());
    o.on_error = [&](const chatkit::error&) { ++errors; };
    echo_service svc{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::redis_cache{o}};

    REQUIRE(svc.handle(chat("ada", "before")).status == 200);
    CHECK(json::parse(svc.handle(chat("ada", "before")).body)["cached"] == true);

    redis.stop();
    for (int i = 0; i < 5; ++i) {
        const auto res = svc.handle(chat("ada", "before"));
        REQUIRE(res.status == 200); // answered by the provider: the cache only missed
        CHECK(json::parse(res.body)["cached"] == false);
    }
    CHECK(errors > 0);
    CHECK(svc.cache().stats().failures > 0);
    CHECK(svc.cache().health().ok); // a cache that is down is no reason to take the replica out
    CHECK(svc.cache().health().detail.find("failed commands") != std::string::npos);

    redis.start(); // empty: nothing was saved
    REQUIRE(eventually([&] {
        (void)svc.handle(chat("ada", "after"));
        return json::parse(svc.handle(chat("ada", "after")).body)["cached"] == true;
    }));
}

TEST_CASE("after Redis restarts, the first command works: stale idle connections are replaced, not failed", "[redis_cache]") {
    redis_server redis;
    auto o = options_for(redis.url());
    o.redis.max_connections = 4;
    o.redis.connect_timeout = std::chrono::seconds{5};
    chatkit::redis_cache cache{o};
    std::vector<std::thread> warm; // several connections open and lying idle
    for (int t = 0; t < 4; ++t)
        warm.emplace_back([&cache, t] {
            for (int i = 0; i < 50; ++i) cache.put("warm" + std::to_string(t), answer("w"), minute);
        });
    for (auto& w : warm) w.join();
    REQUIRE(cache.stats().failures == 0);

    redis.stop();
    redis.start();
    cache.put("k", answer("after the restart"), minute);
    CHECK(cache.stats().failures == 0);
    const auto hit = cache.get("k");
    REQUIRE(hit);
    CHECK(hit->content == "after the restart");
}

TEST_CASE("a Redis that hangs is timed out: the cache misses, and recovers when it answers again", "[redis_cache]") {
    redis_server redis;
    auto o = options_for(redis.url());
    o.redis.command_timeout = std::chrono::milliseconds{100};
    o.redis.connect_timeout = std::chrono::milliseconds{200};
    chatkit::redis_cache cache{o};
    cache.put("k", answer("held"), minute);
    REQUIRE(cache.get("k"));

    redis.pause();
    CHECK_FALSE(cache.get("k")); // returns: the command timed out
    cache.put("k2", answer("dropped"), minute);
    CHECK(cache.stats().failures >= 2);
    redis.resume();

    REQUIRE(eventually([&] { return cache.get("k").has_value(); }));
}

TEST_CASE("many threads share a small pool of connections", "[redis_cache]") {
    redis_server redis;
    auto o = options_for(redis.url());
    o.redis.max_connections = 2;
    o.redis.connect_timeout = std::chrono::seconds{5}; // waiting for a free connection, not timing
    chatkit::redis_cache cache{o};
    constexpr int threads = 8, each = 50;
    std::atomic<int> hits{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            for (int i = 0; i < each; ++i) {
                const std::string key = std::to_string(t) + ":" + std::to_string(i);
                cache.put(key, answer(key), minute);
                if (auto hit = cache.get(key); hit && hit->content == key) ++hits;
            }
        });
    for (auto& w : workers) w.join();
    CHECK(hits == threads * each);
    CHECK(cache.stats().failures == 0);
}

TEST_CASE("redis URLs: host, port, database, user and password", "[redis_cache]") {
    auto o = chatkit::parse_redis_url("redis://cache.internal");
    REQUIRE(o);
    CHECK(o->host == "cache.internal");
    CHECK(o->port == 6379);
    CHECK(o->db == 0);
    CHECK(o->password.empty());

    o = chatkit::parse_redis_url("redis://app:p%40ss:word@10.0.0.5:6380/3");
    REQUIRE(o);
    CHECK(o->user == "app");
    CHECK(o->password == "p@ss:word");
    CHECK(o->host == "10.0.0.5");
    CHECK(o->port == 6380);
    CHECK(o->db == 3);
    CHECK(o->redacted_url() == "redis://app@10.0.0.5:6380/3");

    o = chatkit::parse_redis_url("redis://:only-a-password@[::1]:7000");
    REQUIRE(o);
    CHECK(o->user.empty());
    CHECK(o->password == "only-a-password");
    CHECK(o->host == "::1");
    CHECK(o->port == 7000);
    CHECK(o->redacted_url() == "redis://***@[::1]:7000/0");
}

TEST_CASE("bad redis URLs are refused with a reason that never quotes the password", "[redis_cache]") {
    for (const char* url : {"http://host:6379", "redis://", "redis://u:hunter2@host:99999", "redis://u:hunter2@host:6379/x",
                            "redis://u:hunter2%zz@host", "redis://u:hunter2@[::1"}) {
        const auto o = chatkit::parse_redis_url(url);
        INFO(url);
        REQUIRE_FALSE(o);
        CHECK(o.error().message.find("hunter2") == std::string::npos);
    }
}

TEST_CASE("rediss:// URLs ask for TLS and show as rediss:// without the password", "[redis_cache]") {
    const auto o = chatkit::parse_redis_url("rediss://u:hunter2@cache.internal:6380/2");
    REQUIRE(o);
    CHECK(o->tls);
    CHECK(o->host == "cache.internal");
    CHECK(o->port == 6380);
    CHECK(o->db == 2);
    CHECK(o->redacted_url() == "rediss://u@cache.internal:6380/2");
    CHECK_FALSE(chatkit::parse_redis_url("redis://cache:6379")->tls);
}
