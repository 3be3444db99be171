// CHAT_AUTH=keys through the real sample_server binary: teams and keys made with its command line
// in a temporary SQLite file, then requests with and without keys, a revocation seen by the running
// server, history scoped to the key, and no key or digest in the file or the log.
#include "../support/key_commands.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>
#include <openssl/sha.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;
using test_support::bearer;
using test_support::cli;
using test_support::hex;
using test_support::last_json;
using test_support::run_to_exit;
using test_support::server_process;
using test_support::sha256;
using test_support::temp_dir;

namespace {

json create_key(const std::filesystem::path& db, const std::string& team, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"keys", "create", "--team", team};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = cli(db, args);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return last_json(r.output);
}

std::string read_bytes(const std::filesystem::path& p) {
    std::ifstream in{p, std::ios::binary};
    return {std::istreambuf_iterator<char>{in}, {}};
}

httplib::Result chat(httplib::Client& c, const httplib::Headers& headers, const std::string& user = "ada",
                     const std::string& content = "hello") {
    return c.Post("/chat", headers, json{{"user_id", user}, {"content", content}}.dump(), "application/json");
}

void check_401(const httplib::Result& r) {
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == 401);
    const auto body = json::parse(r->body);
    CHECK(body["error"]["code"] == "invalid_api_key");
    CHECK(body["request_id"].is_string());
}

} // namespace

TEST_CASE("auth: keys made with the CLI open the server, while no key, a wrong key and a revoked key get 401") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    {
        const auto team = cli(db, {"teams", "create", "--id", "team-a", "--name", "Team A", "--rpm", "100"});
        INFO(team.output);
        REQUIRE(team.exit_code == 0);
        CHECK(last_json(team.output)["id"] == "team-a");
        CHECK(last_json(team.output)["rpm"] == 100);
    }
    // Room for the three chats below to hold their token reservations (about 4.1k each: the
    // default max_tokens plus the prompt) at once: a reservation is settled by the finish hook,
    // after the last byte, so the client may already be sending its next request.
    const json created = create_key(db, "team-a", {"--name", "ci", "--expires-in", "30d", "--tpm", "50000"});
    const std::string key = created["key"];
    const std::string key_id = created["id"];
    CHECK(key.starts_with("ck-"));
    CHECK(key.size() >= 3 + 43);
    CHECK(key_id.starts_with("key_"));
    CHECK(created["team"] == "team-a");
    CHECK(created["tpm"] == 50000);
    CHECK(created["expires_at"].is_string());
    CHECK(key.starts_with(created["prefix"].get<std::string>()));

    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_RATE_LIMIT", "100/minute"}}, db);
    auto c = server.client();

    // /health stays open; everything else needs the key.
    auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
    check_401(chat(c, {}));
    check_401(c.Get("/v1/models"));
    check_401(c.Get("/history/ada"));
    check_401(chat(c, bearer("ck-" + std::string(43, 'A'))));
    check_401(chat(c, {{"Authorization", "Basic " + key}}));
    {
        auto r = chat(c, {});
        REQUIRE(r);
        CHECK(r->get_header_value("WWW-Authenticate") == "Bearer");
    }

    auto ok = chat(c, bearer(key));
    REQUIRE(ok);
    INFO(ok->body);
    CHECK(ok->status == 200);
    CHECK(json::parse(ok->body)["content"] == "hello");
    // The rate limiter counts the key: its headers are there, and the same key sent by
    // x-api-key is the same client.
    CHECK(ok->get_header_value("X-RateLimit-Remaining") == "99");
    auto by_x = chat(c, {{"x-api-key", key}});
    REQUIRE(by_x);
    CHECK(by_x->status == 200);
    CHECK(by_x->get_header_value("X-RateLimit-Remaining") == "98");
    auto openai = c.Post("/v1/chat/completions", bearer(key),
                         json{{"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}}.dump(), "application/json");
    REQUIRE(openai);
    CHECK(openai->status == 200);

    // `keys list` shows the key without its secret.
    {
        const auto list = cli(db, {"keys", "list", "--team", "team-a"});
        REQUIRE(list.exit_code == 0);
        const auto entry = last_json(list.output);
        CHECK(entry["id"] == key_id);
        CHECK(entry["revoked_at"].is_null());
        CHECK_FALSE(entry.contains("key"));
        CHECK(list.output.find(key.substr(3)) == std::string::npos);
        CHECK(list.output.find(hex(sha256(key))) == std::string::npos);
    }

    // Revoked from the command line while the server runs: refused within 5 s.
    {
        const auto revoke = cli(db, {"keys", "revoke", key_id});
        INFO(revoke.output);
        REQUIRE(revoke.exit_code == 0);
        const auto revoked_at = std::chrono::steady_clock::now();
        bool refused = false;
        while (!refused && std::chrono::steady_clock::now() - revoked_at < std::chrono::seconds(5)) {
            auto r = chat(c, bearer(key));
            REQUIRE(r);
            refused = r->status == 401;
            if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        CHECK(refused);
        check_401(chat(c, bearer(key)));
    }

    // Neither the file nor the log holds the key, nor its digest (raw or hex).
    const std::string digest = sha256(key);
    const std::string secret = key.substr(3);
    for (const char* suffix : {"", "-wal"}) {
        const auto bytes = read_bytes(db.string() + suffix);
        CHECK(bytes.find(secret) == std::string::npos);
        CHECK(bytes.find(hex(digest)) == std::string::npos);
    }
    CHECK(read_bytes(db).size() + read_bytes(db.string() + "-wal").size() > 0);
    server.stop();
    const std::string log = server.log();
    CHECK(log.find(secret) == std::string::npos);
    CHECK(log.find(digest) == std::string::npos);
    CHECK(log.find(hex(digest)) == std::string::npos);
    // The access log names the key by its id.
    bool named = false;
    for (const auto& line : server.request_logs())
        if (line.value("key_id", "") == key_id && line.value("team_id", "") == "team-a") named = true;
    CHECK(named);
}

TEST_CASE("auth: a new key works within 5 s without a restart, and a key limited to some models gets 403 for others") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    REQUIRE(cli(db, {"teams", "create", "--id", "t"}).exit_code == 0);
    server_process server({{"CHAT_AUTH", "keys"}}, db);
    auto c = server.client();

    const json created = create_key(db, "t", {"--models", "echo-1,other"});
    const std::string key = created["key"];
    CHECK(created["models"] == json::array({"echo-1", "other"}));
    const auto made = std::chrono::steady_clock::now();
    int status = 0;
    while (status != 200 && std::chrono::steady_clock::now() - made < std::chrono::seconds(5)) {
        auto r = chat(c, bearer(key));
        REQUIRE(r);
        status = r->status;
        if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(status == 200); // the default model, echo-1, is allowed

    auto denied = c.Post("/chat", bearer(key), json{{"content", "hi"}, {"model", "gpt-4o"}}.dump(), "application/json");
    REQUIRE(denied);
    CHECK(denied->status == 403);
    CHECK(json::parse(denied->body)["error"]["code"] == "model_not_allowed");
    // The refusal is the key's own: its access-log line names the key.
    server.stop();
    bool named = false;
    for (const auto& line : server.request_logs())
        if (line.value("status", 0) == 403 && line.value("key_id", "") == created["id"].get<std::string>()) named = true;
    CHECK(named);
}

TEST_CASE("auth: a key reads and writes only its own history, whatever user id it claims") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    REQUIRE(cli(db, {"teams", "create", "--id", "t"}).exit_code == 0);
    const json key_a = create_key(db, "t");
    const std::string a = key_a["key"];
    const std::string b = create_key(db, "t")["key"];
    server_process server({{"CHAT_AUTH", "keys"}}, db);
    auto c = server.client();

    auto wrote = chat(c, bearer(a), "ada", "secret of A");
    REQUIRE(wrote);
    REQUIRE(wrote->status == 200);

    auto mine = c.Get("/history/ada", bearer(a));
    REQUIRE(mine);
    REQUIRE(mine->status == 200);
    const auto page = json::parse(mine->body);
    CHECK(page["user_id"] == "ada");
    REQUIRE(page["messages"].size() == 2);
    CHECK(page["messages"][0]["content"] == "secret of A");

    // B claims the same user id: an empty history, and its writes do not reach A's.
    auto theirs = c.Get("/history/ada", bearer(b));
    REQUIRE(theirs);
    CHECK(theirs->status == 200);
    CHECK(json::parse(theirs->body)["messages"].empty());
    CHECK(theirs->body.find("secret of A") == std::string::npos);
    REQUIRE(chat(c, bearer(b), "ada", "from B")->status == 200);
    CHECK(json::parse(c.Get("/history/ada", bearer(a))->body)["messages"].size() == 2);
    // Nor can B name A's scoped id.
    const std::string a_id = key_a["id"];
    auto scoped = c.Get(("/history/" + a_id + ":ada").c_str(), bearer(b));
    REQUIRE(scoped);
    CHECK(scoped->body.find("secret of A") == std::string::npos);
}

TEST_CASE("auth: the CLI refuses bad usage with exit code 2, and CHAT_AUTH=keys with CHAT_DATABASE_URL=none stops at start-up") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    CHECK(cli(db, {"keys", "create"}).exit_code == 2); // no --team
    CHECK(cli(db, {"keys", "frobnicate"}).exit_code == 2);
    CHECK(cli(db, {"teams", "create", "--id", "x", "--budget-usd", "5"}).exit_code == 2); // no period
    CHECK(cli(db, {"teams", "create", "--id", "x", "--rpm", "lots"}).exit_code == 2);
    CHECK(cli(db, {"keys", "create", "--team", "x", "--expires-in", "soon"}).exit_code == 2);
    CHECK(cli(db, {"keys", "revoke"}).exit_code == 2);
    // Refusals: exit code 1, with a message.
    const auto no_team = cli(db, {"keys", "create", "--team", "nope"});
    CHECK(no_team.exit_code == 1);
    CHECK(no_team.output.find("no team 'nope'") != std::string::npos);
    REQUIRE(cli(db, {"teams", "create", "--id", "x", "--budget-usd", "5", "--budget-period", "month"}).exit_code == 0);
    CHECK(cli(db, {"teams", "create", "--id", "x"}).exit_code == 1);
    CHECK(cli(db, {"keys", "revoke", "key_unknown"}).exit_code == 1);

    // With no database there is nowhere to keep keys (DynamoDB: tests/server/aws_backends_test.cpp).
    const auto cli_run = run_to_exit({{"CHAT_DATABASE_URL", "none"}}, {"keys", "list"});
    CHECK(cli_run.exit_code == 2);
    CHECK(cli_run.output.find(
              "sample_server keys list needs CHAT_DATABASE_URL=sqlite:PATH, dynamodb://TABLE or postgresql://HOST/DB (it is 'none')") !=
          std::string::npos);
    const auto start = run_to_exit({{"CHAT_DATABASE_URL", "none"}, {"CHAT_AUTH", "keys"}, {"CHAT_PORT", "0"}}, {});
    INFO(start.output);
    CHECK(start.exit_code == 2);
    CHECK(
        start.output.find("CHAT_AUTH=keys needs CHAT_DATABASE_URL=sqlite:PATH, dynamodb://TABLE or postgresql://HOST/DB (it is 'none')") !=
        std::string::npos);
}

TEST_CASE("auth: with CHAT_AUTH=none on a non-loopback address the server warns at start-up") {
    server_process open(std::map<std::string, std::string>{{"CHAT_HOST", "0.0.0.0"}});
    bool warned = false;
    for (const auto& line : open.log_lines()) {
        const auto j = json::parse(line, nullptr, false);
        if (j.is_object() && j.value("level", "") == "warning" && j.value("msg", "").find("CHAT_AUTH=none") != std::string::npos)
            warned = true;
    }
    CHECK(warned);
    server_process local;
    CHECK(local.log().find("CHAT_AUTH=none") == std::string::npos);
}

namespace {

// What 50 concurrent chats answered: each thread has its own client, so the requests truly overlap.
struct burst_outcome {
    int ok = 0;
    int limited = 0;
    int other = 0;
    bool every_429_well_formed = true;
    bool every_200_has_headers = true;
};

burst_outcome burst_of_chats(const server_process& server, const std::vector<std::string>& keys, int count) {
    std::atomic<int> ok{0}, limited{0}, other{0};
    std::atomic<bool> good_429{true}, good_200{true};
    std::vector<std::thread> threads;
    std::atomic<bool> go{false};
    for (int i = 0; i < count; ++i)
        threads.emplace_back([&, i] {
            auto c = server.client();
            while (!go) std::this_thread::yield();
            auto r = chat(c, bearer(keys[static_cast<std::size_t>(i) % keys.size()]), "u" + std::to_string(i));
            if (!r) {
                ++other;
                return;
            }
            const bool has_headers = !r->get_header_value("x-ratelimit-limit-requests").empty() &&
                                     !r->get_header_value("x-ratelimit-remaining-requests").empty() &&
                                     !r->get_header_value("x-ratelimit-reset-requests").empty();
            if (r->status == 200) {
                ++ok;
                if (!has_headers) good_200 = false;
            } else if (r->status == 429) {
                ++limited;
                const auto body = json::parse(r->body, nullptr, false);
                const std::string retry = r->get_header_value("Retry-After");
                if (!has_headers || retry.empty() || std::stoi(retry) < 1 || body.is_discarded() ||
                    body["error"]["code"] != "rate_limit_exceeded" || r->body.find("ck-") != std::string::npos)
                    good_429 = false;
            } else {
                ++other;
            }
        });
    go = true;
    for (auto& t : threads) t.join();
    return {ok.load(), limited.load(), other.load(), good_429.load(), good_200.load()};
}

// Of 50 requests against a limit of 10: exactly 10 answered 200 and 40 answered a well-formed 429.
void check_ten_of_fifty(const burst_outcome& outcome) {
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 40);
    CHECK(outcome.other == 0);
    CHECK(outcome.every_429_well_formed);
    CHECK(outcome.every_200_has_headers);
}

} // namespace

TEST_CASE("auth limits: 50 concurrent requests with a key of --rpm 10 get exactly 10 answers 200 and 40 answers 429") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    REQUIRE(cli(db, {"teams", "create", "--id", "open-team"}).exit_code == 0);
    const std::string key = create_key(db, "open-team", {"--rpm", "10"})["key"];
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_RATE_LIMIT", "off"}}, db);

    check_ten_of_fifty(burst_of_chats(server, {key}, 50));

    // The next one names the key's limit, and /health stays open.
    auto c = server.client();
    auto r = chat(c, bearer(key));
    REQUIRE(r);
    CHECK(r->status == 429);
    CHECK(r->get_header_value("x-ratelimit-limit-requests") == "10");
    CHECK(r->get_header_value("x-ratelimit-remaining-requests") == "0");
    CHECK(json::parse(r->body)["error"]["message"].get<std::string>().find("requests per minute") != std::string::npos);
    auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
    CHECK(health->get_header_value("x-ratelimit-limit-requests").empty());
}

TEST_CASE(
    "auth limits: a team with --rpm 10 lets 10 requests through in total across its two keys, and a key without limits gets no headers") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    REQUIRE(cli(db, {"teams", "create", "--id", "small", "--rpm", "10"}).exit_code == 0);
    REQUIRE(cli(db, {"teams", "create", "--id", "free"}).exit_code == 0);
    const std::string first = create_key(db, "small")["key"];
    const std::string second = create_key(db, "small")["key"];
    const std::string unlimited = create_key(db, "free")["key"];
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_RATE_LIMIT", "off"}}, db);

    check_ten_of_fifty(burst_of_chats(server, {first, second}, 50));

    auto c = server.client();
    for (int i = 0; i < 20; ++i) {
        auto r = chat(c, bearer(unlimited));
        REQUIRE(r);
        REQUIRE(r->status == 200);
        REQUIRE(r->get_header_value("x-ratelimit-limit-requests").empty());
    }
}
