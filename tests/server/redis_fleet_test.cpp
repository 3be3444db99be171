// Two sample_server replicas sharing one real Redis (CHAT_REDIS_URL), as behind a load balancer:
// an answer cached through one is a hit on the other; a Redis that stops costs misses, never a
// chat, is logged once (not per request), and is used again when it is back; a bad URL stops the
// start-up with a message that names the variable and never the password. With
// CHAT_LIMITS=shared, the limits of keys and teams and CHAT_RATE_LIMIT's per-client limit are one
// count in Redis for both replicas.
#include "../support/fleet_burst.hpp"
#include "../support/key_commands.hpp"
#include "../support/promtool.hpp"
#include "../support/redis_server.hpp"
#include "../support/server_process.hpp"

#include <chatkit/clock.hpp>

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;
using test_support::burst_over;
using test_support::redis_server;
using test_support::server_process;
using test_support::wait_for_a_fresh_minute;

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

// One sample's value from a replica's GET /metrics (the Prometheus text format), -1 when absent.
double metric(const server_process& server, const std::string& sample, const httplib::Headers& headers = {}) {
    auto r = server.client().Get("/metrics", headers);
    REQUIRE(r);
    REQUIRE(r->status == 200);
    const auto at = r->body.find("\n" + sample + " ");
    if (at == std::string::npos) return -1;
    return std::stod(r->body.substr(at + sample.size() + 2));
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
    // Counted where an operator looks: A's lookup missed Redis, B's hit it.
    CHECK(metric(a, "chatkit_redis_cache_lookups_total{outcome=\"miss\"}") == 1);
    CHECK(metric(b, "chatkit_redis_cache_lookups_total{outcome=\"hit\"}") == 1);
    CHECK(metric(b, "chatkit_redis_cache_failures_total") == 0);
    const auto [status, said] = test_support::promtool_check(b.client().Get("/metrics")->body);
    INFO(said);
    CHECK(status == 0); // the added families are valid exposition text

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
    CHECK(lines_with(a, "the Redis cache fails") == 1);          // once a minute, not once per failure
    CHECK(metric(a, "chatkit_redis_cache_failures_total") >= 5); // but every failure is counted

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
                            "rediss://app:hunter2-secret@cache:port/0"}) {
        const auto r = test_support::run_to_exit({{"CHAT_REDIS_URL", url}, {"CHAT_PORT", "0"}}, {});
        INFO(r.output);
        CHECK(r.exit_code == 2);
        CHECK(r.output.find("CHAT_REDIS_URL") != std::string::npos);
        CHECK(r.output.find("hunter2-secret") == std::string::npos);
    }
}

TEST_CASE("over rediss://, replicas share answers and limits through Redis's TLS port, and refuse a certificate they do not trust") {
    redis_server redis{redis_server::with_tls{}, "tls-secret-77"};
    test_support::temp_dir dir;
    // OpenSSL's default trust store, pointed at the test's certificate as a deployment points it at its CA.
    const std::map<std::string, std::string> env{{"CHAT_REDIS_URL", redis.tls_url()},
                                                 {"SSL_CERT_FILE", redis.tls_ca_file().string()},
                                                 {"CHAT_DATABASE_URL", "sqlite:" + (dir.path() / "chat.db").string()},
                                                 {"CHAT_LIMITS", "shared"},
                                                 {"CHAT_RATE_LIMIT", "3/minute"}};
    server_process a{env}, b{env};
    wait_for_a_fresh_minute();
    CHECK_FALSE(cached(ask(a, "ada", "over TLS?")));
    CHECK(cached(ask(b, "ada", "over TLS?")));
    CHECK(ask(a, "ada", "third")->status == 200);
    const auto fourth = ask(b, "ada", "fourth");
    REQUIRE(fourth);
    CHECK(fourth->status == 429); // 3 a minute, counted once for both replicas

    // Without the certificate trusted, the start-up check says why, and chats are still answered.
    auto untrusted = env;
    untrusted.erase("SSL_CERT_FILE");
    untrusted["SSL_CERT_DIR"] = dir.path().string(); // an empty store, whatever the machine trusts
    untrusted["CHAT_LIMITS"] = "local";
    server_process c{untrusted};
    CHECK(ask(c, "bob", "anyone there?")->status == 200);
    c.stop();
    CHECK(lines_with(c, "certificate") >= 1);
    CHECK(c.log().find("tls-secret-77") == std::string::npos);
}

namespace {

// What two replicas with shared limits share: the keys (a SQLite file both open), a team made with
// `team_flags` and a key of it, and Redis for the counters.
struct shared_fleet {
    test_support::temp_dir dir{};
    std::map<std::string, std::string> env{};
    std::string key{};
};
void make_fleet(shared_fleet& f, const redis_server& redis, std::vector<std::string> team_flags, const std::string& server = "beast") {
    const auto db = f.dir.path() / "keys.db";
    team_flags.insert(team_flags.begin(), {"--id", "fleet"});
    test_support::create_team(db, team_flags);
    f.key = test_support::create_key(db, {"--team", "fleet"});
    f.env = {{"CHAT_DATABASE_URL", "sqlite:" + db.string()},
             {"CHAT_AUTH", "keys"},
             {"CHAT_LIMITS", "shared"},
             {"CHAT_SERVER", server}, // beast: the checks run on its worker pool
             {"CHAT_REDIS_URL", redis.url()},
             {"CHAT_CACHE_SIZE", "0"}}; // every answer is asked for, and paid for
}

} // namespace

TEST_CASE(
    "with CHAT_LIMITS=shared on Redis, 40 concurrent requests over two replicas against a team's 10 per minute get exactly 10 answers") {
    const std::string server = GENERATE(as<std::string>{}, "beast", "httplib");
    INFO("CHAT_SERVER=" << server);
    redis_server redis;
    shared_fleet f;
    make_fleet(f, redis, {"--rpm", "10"}, server);
    server_process a{f.env}, b{f.env};
    wait_for_a_fresh_minute();
    const auto outcome = burst_over({&a, &b}, f.key, json{{"user_id", "u"}, {"content", "hello"}}.dump(), 40);
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 30);
    CHECK(outcome.other == 0);
    for (const auto& code : outcome.codes) CHECK(code == "rate_limit_exceeded");

    // Either replica now refuses the team, with the local limiter's headers and words.
    auto c = b.client();
    auto refused = c.Post("/chat", test_support::bearer(f.key), json{{"content", "again"}}.dump(), "application/json");
    REQUIRE(refused);
    CHECK(refused->status == 429);
    CHECK(refused->get_header_value("x-ratelimit-limit-requests") == "10");
    CHECK(refused->get_header_value("x-ratelimit-remaining-requests") == "0");
    CHECK(std::stoi(refused->get_header_value("Retry-After")) <= 60);
    CHECK_THAT(json::parse(refused->body)["error"]["message"].get<std::string>(),
               Catch::Contains("team 'fleet' allows 10 requests per minute"));
    CHECK(a.log().find(f.key.substr(3)) == std::string::npos);
}

TEST_CASE("with CHAT_LIMITS=shared on Redis, CHAT_RATE_LIMIT's 10 per minute is 10 for a client over two replicas, not 10 each") {
    redis_server redis;
    test_support::temp_dir dir;
    const std::map<std::string, std::string> env{{"CHAT_DATABASE_URL", "sqlite:" + (dir.path() / "chat.db").string()},
                                                 {"CHAT_LIMITS", "shared"},
                                                 {"CHAT_RATE_LIMIT", "10/minute"},
                                                 {"CHAT_REDIS_URL", redis.url()},
                                                 {"CHAT_CACHE_SIZE", "0"}};
    server_process a{env}, b{env};
    wait_for_a_fresh_minute();
    // No CHAT_AUTH: the client is the key it sends (here never checked), as for the local limiter.
    const auto outcome = burst_over({&a, &b}, "sk-client-one", json{{"user_id", "u"}, {"content", "hello"}}.dump(), 40);
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 30);
    CHECK(outcome.other == 0);
    for (const auto& code : outcome.codes) CHECK(code == "rate_limit_exceeded");

    auto c = a.client();
    auto refused = c.Post("/chat", test_support::bearer("sk-client-one"), json{{"user_id", "u"}, {"content", "again"}}.dump(),
                          "application/json");
    REQUIRE(refused);
    CHECK(refused->status == 429);
    CHECK(refused->get_header_value("X-RateLimit-Limit") == "10");
    CHECK(refused->get_header_value("X-RateLimit-Remaining") == "0");
    CHECK(std::stoi(refused->get_header_value("Retry-After")) <= 60);
    // Another client has its own 10; /health is never counted.
    auto other = c.Post("/chat", test_support::bearer("sk-client-two"), json{{"user_id", "u"}, {"content", "hi"}}.dump(),
                        "application/json");
    REQUIRE(other);
    CHECK(other->status == 200);
    CHECK(other->get_header_value("X-RateLimit-Remaining") == "9");
    auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
    CHECK_FALSE(health->has_header("X-RateLimit-Limit"));
    // Redis holds the clients' counters under a hash of their keys, never the keys.
    CHECK(redis.command({"KEYS", "*keyhash:*"}) == "2 elements");
    CHECK(redis.command({"KEYS", "*sk-client*"}) == "0 elements");
}

TEST_CASE("with CHAT_LIMITS=shared on Redis and keys, a chat makes one round trip for its client's, key's and team's requests per minute") {
    redis_server redis;
    shared_fleet f;
    make_fleet(f, redis, {"--rpm", "100"});
    f.env["CHAT_RATE_LIMIT"] = "5/minute";
    server_process a{f.env}, b{f.env};
    wait_for_a_fresh_minute();
    for (auto* s : {&a, &b}) { // connections made and scripts loaded before counting
        auto c = s->client();
        REQUIRE(c.Get("/health"));
    }
    REQUIRE(redis.command({"CONFIG", "RESETSTAT"}) == "OK");
    int ok = 0, limited = 0;
    for (int i = 0; i < 8; ++i) {
        auto c = (i % 2 ? b : a).client();
        auto r = c.Post("/chat", test_support::bearer(f.key), json{{"content", "count me " + std::to_string(i)}}.dump(),
                        "application/json");
        REQUIRE(r);
        if (r->status == 200) ++ok;
        if (r->status == 429) {
            ++limited;
            CHECK(json::parse(r->body)["error"]["message"] ==
                  json("rate limit of 5/minute exceeded; retry in " + r->get_header_value("Retry-After") + " s"));
        }
    }
    CHECK(ok == 5); // the client's 5 a minute, over both replicas
    CHECK(limited == 3);
    // Each chat's limits went to Redis in one script call: 8 chats, 8 EVALSHA (and a SCRIPT LOAD
    // per replica at most), nothing after the answers (no tokens to settle).
    const std::string stats = redis.command({"INFO", "commandstats"});
    auto calls = [&](const std::string& command) {
        const auto at = stats.find("cmdstat_" + command + ":calls=");
        return at == std::string::npos ? 0 : std::stoi(stats.substr(at + command.size() + 15));
    };
    CHECK(calls("evalsha") == 8);
    CHECK(calls("eval") == 0);
    CHECK(calls("incrby") == 10); // inside the scripts: the client and the team, for each of the 5 answered; a refusal adds nothing
    // The team counted only what the client's limit let through.
    CHECK(redis.command({"KEYS", "*team#fleet#rpm#*"}) == "1 elements");
}

TEST_CASE("with CHAT_LIMITS=shared on Redis, a team's token limit and budget hold exactly across two replicas, and settled answers give "
          "the rest back") {
    redis_server redis;
    test_support::temp_dir prices_dir;
    const auto prices = prices_dir.path() / "prices.json";
    std::ofstream{prices} << json{{"models", {{"echo-1", {{"input", 1000.0}, {"output", 1000.0}}}}}}.dump(); // $0.001 per token
    // A stream of three words lasts about a second: every request is admitted before any is settled.
    const std::string body = json{{"user_id", "u00"}, {"content", "one two three"}, {"max_tokens", 100}, {"stream", true}}.dump();
    const double worst = static_cast<double>(body.size() + 8 + 100) / 1000.0; // as gateway_test.cpp reckons a reservation
    char budget[32];
    std::snprintf(budget, sizeof budget, "%.6f", 10.5 * worst);

    SECTION("a budget that fits 10 worst cases") {
        shared_fleet f;
        make_fleet(f, redis, {"--budget-usd", budget, "--budget-period", "day"});
        f.env["CHAT_PRICING_FILE"] = prices.string();
        f.env["CHAT_ECHO_DELAY_MS"] = "400";
        server_process a{f.env}, b{f.env};
        const auto outcome = burst_over({&a, &b}, f.key, body, 40);
        CHECK(outcome.ok == 10);
        CHECK(outcome.limited == 30);
        CHECK(outcome.other == 0);
        for (const auto& code : outcome.codes) CHECK(code == "insufficient_quota");
        // Ten answers of 6 tokens spent $0.06; the rest of their reservations came back, so the
        // other replica admits another at once (its settlement is written after the last byte).
        auto c = b.client();
        bool admitted = false;
        for (int attempt = 0; attempt < 50 && !admitted; ++attempt) {
            auto r = c.Post("/chat", test_support::bearer(f.key), body, "application/json");
            REQUIRE(r);
            admitted = r->status == 200;
            if (!admitted) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        CHECK(admitted);
    }
    SECTION("a token limit that fits 10 worst cases") {
        const auto bound = static_cast<long long>(body.size() + 8 + 100); // prompt bound + max_tokens
        shared_fleet f;
        make_fleet(f, redis, {"--tpm", std::to_string(10 * bound + bound / 2)});
        f.env["CHAT_ECHO_DELAY_MS"] = "400";
        server_process a{f.env}, b{f.env};
        wait_for_a_fresh_minute();
        const auto outcome = burst_over({&a, &b}, f.key, body, 40);
        CHECK(outcome.ok == 10);
        CHECK(outcome.limited == 30);
        CHECK(outcome.other == 0);
        for (const auto& code : outcome.codes) CHECK(code == "rate_limit_exceeded");
    }
}

TEST_CASE("with CHAT_LIMITS=shared on Redis, a Redis that is down is replaced by each replica's own count (logged once), or refuses with "
          "CHAT_LIMITS_FALLBACK=refuse") {
    redis_server redis;
    shared_fleet f;
    make_fleet(f, redis, {"--rpm", "3"});
    const std::string body = json{{"content", "hello"}}.dump();
    const auto chat = [&](server_process& s) { return s.client().Post("/chat", test_support::bearer(f.key), body, "application/json"); };

    SECTION("the default: counted locally while Redis is down") {
        const std::string admin_key(40, 'a'); // /metrics needs it with keys on
        f.env["CHAT_ADMIN_KEY"] = admin_key;
        const auto fallbacks = [&](server_process& s) {
            return metric(s, "chatkit_shared_limits_fallbacks_total", test_support::bearer(admin_key));
        };
        server_process a{f.env};
        wait_for_a_fresh_minute();       // the local count below must stay in one minute
        REQUIRE(chat(a)->status == 200); // counted in Redis
        CHECK(fallbacks(a) == 0);
        redis.stop();
        // This replica alone now counts its 3 a minute, from zero: 3 answers, then 429.
        for (int i = 0; i < 3; ++i) CHECK(chat(a)->status == 200);
        auto refused = chat(a);
        REQUIRE(refused);
        CHECK(refused->status == 429);
        CHECK(eventually([&] { return lines_with(a, "the shared limits cannot be reached") == 1; })); // once a minute, not per request
        CHECK(fallbacks(a) == 4);                                                                     // but each check is counted
        redis.start(); // empty: the minute's count in Redis starts again
        CHECK(eventually([&] {
            auto r = chat(a);
            return r && r->status == 200;
        }));
    }
    SECTION("CHAT_LIMITS_FALLBACK=refuse: 503 while Redis is down") {
        f.env["CHAT_LIMITS_FALLBACK"] = "refuse";
        server_process a{f.env};
        REQUIRE(chat(a)->status == 200);
        redis.stop();
        auto down = chat(a);
        REQUIRE(down);
        CHECK(down->status == 503);
        CHECK(json::parse(down->body)["error"]["code"] == "limits_unavailable");
        CHECK(down->get_header_value("Retry-After") == "1");
        redis.start();
        CHECK(eventually([&] {
            auto r = chat(a);
            return r && r->status == 200;
        }));
    }
}
