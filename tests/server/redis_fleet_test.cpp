// Two sample_server replicas sharing one real Redis (CHAT_REDIS_URL), as behind a load balancer:
// an answer cached through one is a hit on the other; a Redis that stops costs misses, never a
// chat, is logged once (not per request), and is used again when it is back; a bad URL stops the
// start-up with a message that names the variable and never the password.
#include "../support/redis_server.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <string>

using nlohmann::json;
using test_support::redis_server;
using test_support::server_process;

namespace {

httplib::Result ask(const server_process& server, const std::string& user, const std::string& content) {
    auto c = server.client();
    return c.Post("/chat", json{{"user_id", user}, {"content", content}}.dump(), "application/json");
}

// Polls (bounded) until `f` holds.
template <class F>
bool eventually(F f) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{20};
    while (std::chrono::steady_clock::now() < deadline) {
        if (f()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds{50});
    }
    return f();
}

// Whether /chat answered from the cache (its JSON's `cached`; X-Cache is the OpenAI route's).
bool cached(const httplib::Result& r) {
    REQUIRE(r);
    REQUIRE(r->status == 200);
    return json::parse(r->body)["cached"].get<bool>();
}

std::size_t lines_with(const server_process& server, const std::string& text) {
    std::size_t n = 0;
    for (const auto& line : server.log_lines()) n += line.find(text) != std::string::npos;
    return n;
}

} // namespace

TEST_CASE("an answer cached through one replica is a hit on the other") {
    redis_server redis;
    server_process a{{{"CHAT_REDIS_URL", redis.url()}}};
    server_process b{{{"CHAT_REDIS_URL", redis.url()}}};

    const auto first = ask(a, "ada", "shared across the fleet?");
    CHECK_FALSE(cached(first));

    const auto on_b = ask(b, "ada", "shared across the fleet?");
    CHECK(cached(on_b));
    CHECK(json::parse(on_b->body)["content"] == json::parse(first->body)["content"]);

    // Per user: the same question from someone else is not answered from ada's entry.
    CHECK_FALSE(cached(ask(b, "bob", "shared across the fleet?")));

    // The OpenAI route too, where the X-Cache header tells.
    const json openai = {{"messages", {{{"role", "user"}, {"content", "through the OpenAI route"}}}}, {"user", "ada"}};
    auto ca = a.client();
    auto cb = b.client();
    const auto miss = ca.Post("/v1/chat/completions", openai.dump(), "application/json");
    REQUIRE(miss);
    CHECK(miss->get_header_value("X-Cache") == "miss");
    const auto hit = cb.Post("/v1/chat/completions", openai.dump(), "application/json");
    REQUIRE(hit);
    CHECK(hit->status == 200);
    CHECK(hit->get_header_value("X-Cache") == "hit");

    // Without the in-memory cache in front (CHAT_CACHE_SIZE=0), Redis alone still shares.
    server_process c{{{"CHAT_REDIS_URL", redis.url()}, {"CHAT_CACHE_SIZE", "0"}}};
    CHECK(cached(ask(c, "ada", "shared across the fleet?")));
}

TEST_CASE("replicas keep answering while Redis is down, log it once, and share again when it is back") {
    redis_server redis;
    server_process a{{{"CHAT_REDIS_URL", redis.url()}}};
    server_process b{{{"CHAT_REDIS_URL", redis.url()}}};
    REQUIRE(ask(a, "ada", "warm-up")->status == 200);

    redis.stop();
    for (int i = 0; i < 5; ++i) CHECK_FALSE(cached(ask(a, "ada", "while down " + std::to_string(i)))); // answered: 200
    // The in-memory cache in front still answers what this replica saw before.
    CHECK(cached(ask(a, "ada", "warm-up")));
    CHECK(eventually([&] { return lines_with(a, "the Redis cache fails") >= 1; }));
    CHECK(lines_with(a, "the Redis cache fails") == 1); // once a minute, not once per failure

    redis.start(); // empty
    REQUIRE(eventually([&] {
        (void)ask(a, "ada", "after the outage");
        const auto r = ask(b, "ada", "after the outage");
        return r && r->status == 200 && json::parse(r->body)["cached"] == true;
    }));
}

TEST_CASE("a wrong Redis password is logged at start-up without the password, and chats are still answered") {
    redis_server redis{"right-password-1234"};
    server_process a{{{"CHAT_REDIS_URL", "redis://:wrong-password-5678@127.0.0.1:" + std::to_string(redis.port())}}};
    const auto r = ask(a, "ada", "hello");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(eventually([&] { return lines_with(a, "cannot use Redis at start-up") == 1; }));
    CHECK(lines_with(a, "WRONGPASS") >= 1);
    CHECK(a.log().find("wrong-password-5678") == std::string::npos);
}

TEST_CASE("a bad CHAT_REDIS_URL stops the start-up, naming the variable and never the password") {
    for (const char* url : {"redis://app:hunter2-secret@cache:notaport/0", "http://app:hunter2-secret@cache:6379",
                            "rediss://app:hunter2-secret@cache:6380/0"}) {
        const auto r = test_support::run_to_exit({{"CHAT_REDIS_URL", url}, {"CHAT_PORT", "0"}}, {});
        INFO(r.output);
        CHECK(r.exit_code == 2);
        CHECK(r.output.find("CHAT_REDIS_URL") != std::string::npos);
        CHECK(r.output.find("hunter2-secret") == std::string::npos);
    }
    const auto tls = test_support::run_to_exit({{"CHAT_REDIS_URL", "rediss://cache:6380"}}, {});
    CHECK(tls.output.find("TLS") != std::string::npos);
}
