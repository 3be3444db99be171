// Two sample_server replicas sharing one real PostgreSQL (CHAT_DATABASE_URL=postgresql://...), as
// behind a load balancer: history written through one is read through the other, and survives
// restarting both; a PostgreSQL restarted mid-run costs clean 503s, then the replicas reconnect;
// the URL's password is in no log line and no answer; API keys made with the command line work on
// both, a revocation reaches both, and /v1/usage sums what both recorded.
#include "../support/key_commands.hpp"
#include "../support/postgres_server.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <thread>

using nlohmann::json;
using test_support::postgres_server;
using test_support::server_process;

namespace {

httplib::Result ask(const server_process& server, const std::string& user, const std::string& content) {
    auto c = server.client();
    return c.Post("/chat", json{{"user_id", user}, {"content", content}}.dump(), "application/json");
}

// The contents of a user's history as a replica reads it, oldest first.
std::vector<std::string> history(const server_process& server, const std::string& user) {
    auto c = server.client();
    auto r = c.Get(("/history/" + user).c_str());
    REQUIRE(r);
    REQUIRE(r->status == 200);
    std::vector<std::string> out;
    const json body = json::parse(r->body); // named: a range-for over a temporary's member would dangle
    for (const auto& m : body["messages"]) out.push_back(m["content"].get<std::string>());
    return out;
}

bool mentions_password(const std::string& text) { return text.find(postgres_server::password) != std::string::npos; }

} // namespace

TEST_CASE("postgres fleet: history written through one replica is read through the other, and survives restarting both") {
    postgres_server pg;
    const std::string url = pg.url(pg.create_database());
    std::vector<std::string> expected;
    {
        server_process a{{{"CHAT_DATABASE_URL", url}}};
        server_process b{{{"CHAT_DATABASE_URL", url}}};
        auto through_a = ask(a, "ada", "written through A");
        REQUIRE(through_a);
        REQUIRE(through_a->status == 200);
        INFO("A answered: " << through_a->body);
        const auto on_b = history(b, "ada");
        REQUIRE(on_b.size() == 2);
        CHECK(on_b[0] == "written through A");

        auto through_b = ask(b, "ada", "written through B");
        REQUIRE(through_b);
        REQUIRE(through_b->status == 200);
        expected = history(a, "ada");
        REQUIRE(expected.size() == 4);
        CHECK(expected[2] == "written through B");
        CHECK(history(b, "ada") == expected);
        CHECK(history(a, "bob").empty());

        auto health = a.client().Get("/health");
        REQUIRE(health);
        CHECK(health->status == 200);
        CHECK_FALSE(mentions_password(health->body));
        CHECK_FALSE(mentions_password(a.log()));
        CHECK_FALSE(mentions_password(b.log()));
        CHECK(a.stop() == 0);
        CHECK(b.stop() == 0);
    }
    server_process a{{{"CHAT_DATABASE_URL", url}}};
    server_process b{{{"CHAT_DATABASE_URL", url}}};
    CHECK(history(a, "ada") == expected);
    CHECK(history(b, "ada") == expected);
}

TEST_CASE("postgres fleet: a key made with the command line works on both replicas, its revocation reaches both, and usage sums both") {
    postgres_server pg;
    const std::string url = pg.url(pg.create_database());
    const auto cli = [&](const std::vector<std::string>& args) {
        auto r = test_support::run_to_exit({{"CHAT_DATABASE_URL", url}}, args);
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        CHECK_FALSE(mentions_password(r.output));
        return test_support::last_json(r.output);
    };
    cli({"teams", "create", "--id", "fleet", "--name", "Fleet"});
    const auto made = cli({"keys", "create", "--team", "fleet"});
    const std::string key = made["key"];
    const std::map<std::string, std::string> env{{"CHAT_DATABASE_URL", url}, {"CHAT_AUTH", "keys"}, {"CHAT_USAGE", "on"}};
    server_process a{env}, b{env};
    const std::string body = json{{"user_id", "ada"}, {"content", "hello"}}.dump();
    for (const server_process* s : {&a, &b}) {
        auto c = s->client();
        auto refused = c.Post("/chat", body, "application/json");
        REQUIRE(refused);
        CHECK(refused->status == 401);
        auto answered = c.Post("/chat", test_support::bearer(key), body, "application/json");
        REQUIRE(answered);
        CHECK(answered->status == 200);
    }
    // Each replica's recorder writes its record after the answer: B's report sums both.
    json summary;
    for (int i = 0; i < 100; ++i) {
        auto r = b.client().Get("/v1/usage?days=1", test_support::bearer(key));
        REQUIRE(r);
        REQUIRE(r->status == 200);
        summary = json::parse(r->body);
        if (summary["summary"]["total_requests"] == 2) break;
        std::this_thread::sleep_for(std::chrono::milliseconds{100});
    }
    CHECK(summary["team_id"] == "fleet");
    CHECK(summary["team_name"] == "Fleet");
    CHECK(summary["summary"]["total_requests"] == 2);

    cli({"keys", "revoke", made["id"].get<std::string>()});
    for (const server_process* s : {&a, &b}) {
        int status = 0;
        for (int i = 0; i < 100 && status != 401; ++i) { // each replica's next refresh sees it
            auto r = s->client().Post("/chat", test_support::bearer(key), body, "application/json");
            REQUIRE(r);
            status = r->status;
            if (status != 401) std::this_thread::sleep_for(std::chrono::milliseconds{100});
        }
        CHECK(status == 401);
    }
    CHECK_FALSE(mentions_password(a.log()));
    CHECK_FALSE(mentions_password(b.log()));
}

TEST_CASE("postgres fleet: PostgreSQL restarted mid-run gives clean 503s, then both replicas reconnect") {
    postgres_server pg;
    const std::string url = pg.url(pg.create_database());
    server_process a{{{"CHAT_DATABASE_URL", url}}};
    server_process b{{{"CHAT_DATABASE_URL", url}}};
    auto first = ask(a, "ada", "before the restart");
    REQUIRE(first);
    REQUIRE(first->status == 200);

    pg.stop();
    for (const auto* replica : {&a, &b}) {
        auto refused = ask(*replica, "ada", "while PostgreSQL is down");
        REQUIRE(refused);
        CHECK(refused->status == 503);
        CHECK_FALSE(mentions_password(refused->body));
        auto ready = replica->client().Get("/ready");
        REQUIRE(ready);
        CHECK(ready->status == 503);
        CHECK_FALSE(mentions_password(ready->body));
    }

    pg.start();
    for (const auto* replica : {&a, &b}) {
        auto back = ask(*replica, "ada", "after the restart");
        REQUIRE(back);
        CHECK(back->status == 200);
    }
    // Nothing acknowledged is lost, and nothing refused was kept.
    const auto seen = history(b, "ada");
    REQUIRE(seen.size() == 6);
    CHECK(seen[0] == "before the restart");
    CHECK(seen[2] == "after the restart");
    CHECK(seen[4] == "after the restart");
    CHECK(history(a, "ada") == seen);
    CHECK_FALSE(mentions_password(a.log()));
    CHECK_FALSE(mentions_password(b.log()));
}

TEST_CASE("postgres fleet: a URL PostgreSQL refuses stops the start-up without showing the password") {
    postgres_server pg;
    std::string url = pg.url();
    const std::string wrong = "wrong-secret-4711";
    url.replace(url.find(postgres_server::password), std::string{postgres_server::password}.size(), wrong);
    const auto run = test_support::run_to_exit({{"CHAT_DATABASE_URL", url}, {"CHAT_PORT", "0"}}, {});
    CHECK(run.exit_code != 0);
    CHECK(run.output.find(wrong) == std::string::npos);
    CHECK_THAT(run.output, Catch::Contains("password authentication failed"));
}
