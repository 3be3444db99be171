// Tokens per minute, budgets and cost through the real sample_server binary (CHAT_AUTH=keys):
// limits made with its command line, prices from a CHAT_PRICING_FILE, concurrent clients over
// real HTTP. What a gateway's users are billed and refused by.
#include "../support/key_commands.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;
using test_support::bearer;
using test_support::cli;
using test_support::create_key;
using test_support::create_team;
using test_support::last_json;
using test_support::run_to_exit;
using test_support::server_process;
using test_support::temp_dir;

namespace {

// echo-1 at `input` and `output` USD per 1M tokens.
std::filesystem::path pricing_file(const temp_dir& dir, double input, double output) {
    const auto path = dir.path() / "prices.json";
    std::ofstream{path} << json{{"models", {{"echo-1", {{"input", input}, {"output", output}}}}}}.dump();
    return path;
}

// A streamed chat of three echoed words, as the burst sends it: fixed-width user ids, so every
// body has the same size and so the same reservation.
std::string burst_body(int i) {
    char user[8];
    std::snprintf(user, sizeof user, "u%02d", i % 100);
    return json{{"user_id", user}, {"content", "one two three"}, {"stream", true}, {"max_tokens", 100}}.dump();
}
// What the server reserves for one: the body's bytes and 8 per message (the prompt bound), plus max_tokens.
std::int64_t burst_reservation() { return static_cast<std::int64_t>(burst_body(0).size()) + 8 + 100; }

struct burst_outcome {
    int ok = 0, limited = 0, other = 0;
    std::vector<std::string> codes; // of the 429s
    bool every_200_has_token_headers = true;
};

// `count` streamed chats at once, each read to its end.
burst_outcome burst(const server_process& server, const std::string& key, int count) {
    std::atomic<int> ok{0}, limited{0}, other{0};
    std::atomic<bool> headers{true}, go{false};
    std::mutex codes_mutex;
    std::vector<std::string> codes;
    std::vector<std::thread> threads;
    for (int i = 0; i < count; ++i)
        threads.emplace_back([&, i] {
            auto c = server.client();
            while (!go) std::this_thread::yield();
            auto r = c.Post("/chat", bearer(key), burst_body(i), "application/json");
            if (!r) return void(++other);
            if (r->status == 200) {
                ++ok;
                if (r->get_header_value("x-ratelimit-limit-tokens").empty() && r->get_header_value("x-ratelimit-limit-requests").empty())
                    headers = false;
            } else if (r->status == 429) {
                ++limited;
                const auto body = json::parse(r->body, nullptr, false);
                std::lock_guard lock{codes_mutex};
                codes.push_back(body.is_discarded() ? "unparsable" : body["error"].value("code", "none"));
            } else {
                ++other;
            }
        });
    go = true;
    for (auto& t : threads) t.join();
    return {ok.load(), limited.load(), other.load(), codes, headers.load()};
}

bool all_equal(const std::vector<std::string>& codes, std::string_view code) {
    for (const auto& c : codes)
        if (c != code) return false;
    return true;
}

} // namespace

TEST_CASE("gateway: 50 concurrent streams against a key's --tpm that fits 10 reservations get exactly 10 answers, and settling gives the "
          "unused tokens back") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    create_team(db, {"--id", "t"});
    const std::int64_t reservation = burst_reservation();
    const std::int64_t tpm = 10 * reservation + reservation / 2;
    const std::string key = create_key(db, {"--team", "t", "--tpm", std::to_string(tpm)});
    // Each stream lasts about a second, so every request is admitted before any is settled.
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ECHO_DELAY_MS", "400"}}, db);

    const auto outcome = burst(server, key, 50);
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 40);
    CHECK(outcome.other == 0);
    CHECK(all_equal(outcome.codes, "rate_limit_exceeded"));

    // The ten answers used 6 tokens each (3 words in, 3 out): the rest of their reservations came
    // back when they finished, so another request fits at once. Without settlement the bucket
    // would hold only what a few seconds of refill earn, less than one reservation.
    auto c = server.client();
    auto r = c.Post("/chat", bearer(key), burst_body(0), "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("x-ratelimit-limit-tokens") == std::to_string(tpm));
    const auto remaining = std::stoll(r->get_header_value("x-ratelimit-remaining-tokens"));
    CHECK(remaining >= tpm - 10 * 6 - reservation);
    CHECK(remaining <= tpm - reservation);
}

TEST_CASE(
    "gateway: 50 concurrent streams against a team budget that fits 10 worst cases get exactly 10 answers and 40 insufficient_quota") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    // $1 per 1,000 tokens: a reservation of N tokens costs N/1000 dollars at worst.
    const auto prices = pricing_file(dir, 1000, 1000);
    const double worst = static_cast<double>(burst_reservation()) / 1000.0;
    char budget[32];
    std::snprintf(budget, sizeof budget, "%.6f", 10.5 * worst);
    create_team(db, {"--id", "t", "--budget-usd", budget, "--budget-period", "day"});
    const std::string key = create_key(db, {"--team", "t"});
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ECHO_DELAY_MS", "400"}, {"CHAT_PRICING_FILE", prices.string()}}, db);

    const auto outcome = burst(server, key, 50);
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 40);
    CHECK(outcome.other == 0);
    CHECK(all_equal(outcome.codes, "insufficient_quota"));

    // The answers cost 6 tokens each ($0.006): the team has spent $0.06, so a worst case fits again.
    auto c = server.client();
    auto r = c.Post("/chat", bearer(key), burst_body(0), "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    // A request that names no max_tokens is admitted with CHAT_DEFAULT_MAX_TOKENS (4096): over this budget.
    auto big = c.Post("/chat", bearer(key), json{{"content", "hi"}}.dump(), "application/json");
    REQUIRE(big);
    CHECK(big->status == 429);
    const auto body = json::parse(big->body);
    CHECK(body["error"]["code"] == "insufficient_quota");
    CHECK_THAT(body["error"]["message"].get<std::string>(),
               Catch::Contains("team 't'") && Catch::Contains("daily budget") && Catch::Contains("resets at"));
    CHECK(std::stoi(big->get_header_value("Retry-After")) >= 1);
}

TEST_CASE("gateway: every answer costs its usage at the model's price, streamed or not, and /v1/models shows the price") {
    temp_dir dir;
    const auto prices = pricing_file(dir, 2.0, 8.0);
    server_process server({{"CHAT_PRICING_FILE", prices.string()}});
    auto c = server.client();
    const auto cost = [](const json& usage) {
        return (usage["prompt_tokens"].get<double>() * 2.0 + usage["completion_tokens"].get<double>() * 8.0) / 1e6;
    };
    const json messages = {{{"role", "user"}, {"content", "the quick brown fox jumps"}}};

    auto plain = c.Post("/v1/chat/completions", json{{"model", "echo-1"}, {"messages", messages}, {"cache", false}}.dump(),
                        "application/json");
    REQUIRE(plain);
    REQUIRE(plain->status == 200);
    const auto answer = json::parse(plain->body);
    CHECK(answer["usage"]["total_tokens"] == 10);
    const double expected = cost(answer["usage"]);
    CHECK(answer["gateway_metadata"]["cost_usd"].get<double>() == Approx(expected));
    CHECK(answer["gateway_metadata"]["provider"] == "echo");
    CHECK(answer["gateway_metadata"]["key_id"].is_null()); // CHAT_AUTH=none

    // The same request streamed: the last chunk carries the usage, then the same cost.
    std::string sse;
    auto streamed = c.Post(
        "/v1/chat/completions",
        json{{"model", "echo-1"}, {"messages", messages}, {"cache", false}, {"stream", true}, {"stream_options", {{"include_usage", true}}}}
            .dump(),
        "application/json");
    REQUIRE(streamed);
    REQUIRE(streamed->status == 200);
    json last;
    for (std::size_t pos = 0; (pos = streamed->body.find("data: ", pos)) != std::string::npos;) {
        const auto end = streamed->body.find("\n\n", pos);
        const auto data = streamed->body.substr(pos + 6, end - pos - 6);
        if (data != "[DONE]") last = json::parse(data);
        pos = end;
    }
    CHECK(last["usage"] == answer["usage"]);
    CHECK(last["gateway_metadata"]["cost_usd"].get<double>() == Approx(expected));

    // POST /v1/chat is the same route; /chat carries cost_usd; a cache hit costs nothing.
    auto alias = c.Post("/v1/chat", json{{"messages", messages}, {"cache", false}}.dump(), "application/json");
    REQUIRE(alias);
    CHECK(json::parse(alias->body)["gateway_metadata"]["cost_usd"].get<double>() == Approx(expected));
    auto chat = c.Post("/chat", json{{"content", "the quick brown fox jumps"}}.dump(), "application/json");
    REQUIRE(chat);
    CHECK(json::parse(chat->body)["cost_usd"].get<double>() == Approx(expected));
    auto hit = c.Post("/chat", json{{"content", "the quick brown fox jumps"}}.dump(), "application/json");
    REQUIRE(hit);
    CHECK(json::parse(hit->body)["cached"] == true);
    CHECK(json::parse(hit->body)["cost_usd"] == 0.0);

    auto models = c.Get("/v1/models");
    REQUIRE(models);
    const auto listed = json::parse(models->body)["data"];
    REQUIRE(listed.size() == 1);
    CHECK(listed[0]["id"] == "echo-1");
    CHECK(listed[0]["pricing"]["input_per_1k"].get<double>() == Approx(0.002));
    CHECK(listed[0]["pricing"]["output_per_1k"].get<double>() == Approx(0.008));
}

TEST_CASE("gateway: a stream the client abandons is billed, and the access log says what it cost") {
    temp_dir dir;
    const auto prices = pricing_file(dir, 1000, 1000);
    server_process server({{"CHAT_PRICING_FILE", prices.string()}, {"CHAT_ECHO_DELAY_MS", "200"}});
    // A raw socket, so that the client can leave mid-body: it reads until the first delta, then closes.
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(server.port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    const std::string body = json{{"content", "a b c d e f g h i j"}, {"stream", true}}.dump();
    const std::string request = "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body;
    REQUIRE(::send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size()));
    std::string received;
    char buf[4096];
    while (received.find("event: delta") == std::string::npos) {
        const auto n = ::recv(fd, buf, sizeof buf, 0);
        REQUIRE(n > 0);
        received.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    // The server notices at its next write; its access log line follows.
    json line;
    for (int i = 0; i < 100 && line.is_null(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds{50});
        for (const auto& l : server.request_logs())
            if (l.value("path", "") == "/chat") line = l;
    }
    REQUIRE(line.is_object());
    CHECK(line["client_left"] == true);
    CHECK(line["prompt_tokens"] == 10);
    CHECK(line["completion_tokens"].get<int>() >= 1);
    CHECK(line["completion_tokens"].get<int>() < 10);
    CHECK(line["cost_usd"].get<double>() ==
          Approx((line["prompt_tokens"].get<double>() + line["completion_tokens"].get<double>()) / 1000.0));
}

TEST_CASE("gateway: a pricing file that cannot be read or parsed stops start-up with a message naming it") {
    temp_dir dir;
    const auto bad = dir.path() / "bad.json";
    std::ofstream{bad} << R"({"models": {"m": {"input": "cheap", "output": 1}}})";
    auto r = run_to_exit({{"CHAT_PRICING_FILE", bad.string()}, {"CHAT_PORT", "0"}, {"CHAT_DATABASE_URL", "none"}}, {});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("CHAT_PRICING_FILE") && Catch::Contains("'m'"));
    auto missing = run_to_exit(
        {{"CHAT_PRICING_FILE", (dir.path() / "nope.json").string()}, {"CHAT_PORT", "0"}, {"CHAT_DATABASE_URL", "none"}}, {});
    CHECK(missing.exit_code != 0);
    CHECK_THAT(missing.output, Catch::Contains("cannot read"));
}

TEST_CASE("gateway: GET /v1/usage totals equal the sum of the answers' costs, for the caller's team only") {
    temp_dir dir;
    const auto db = dir.path() / "gw.db";
    const auto prices = pricing_file(dir, 3.0, 15.0);
    create_team(db, {"--id", "research", "--name", "Research"});
    create_team(db, {"--id", "other"});
    const std::string key = create_key(db, {"--team", "research"});
    const std::string second = create_key(db, {"--team", "research"});
    const std::string outsider = create_key(db, {"--team", "other"});
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_PRICING_FILE", prices.string()}}, db);
    auto c = server.client();

    double billed = 0;
    std::int64_t tokens = 0;
    for (int i = 0; i < 6; ++i) {
        const bool stream = i % 2 == 1;
        const json messages = {{{"role", "user"}, {"content", "request number " + std::to_string(i) + " with some words"}}};
        json body = {{"model", "echo-1"}, {"messages", messages}, {"stream", stream}};
        if (stream) body["stream_options"] = {{"include_usage", true}};
        auto r = c.Post("/v1/chat/completions", bearer(i == 4 ? second : key), body.dump(), "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        json answer;
        if (!stream) {
            answer = json::parse(r->body);
        } else {
            for (std::size_t pos = 0; (pos = r->body.find("data: ", pos)) != std::string::npos;) {
                const auto end = r->body.find("\n\n", pos);
                const auto data = r->body.substr(pos + 6, end - pos - 6);
                if (data != "[DONE]") answer = json::parse(data);
                pos = end;
            }
        }
        billed += answer["gateway_metadata"]["cost_usd"].get<double>();
        tokens += answer["usage"]["total_tokens"].get<std::int64_t>();
        CHECK(answer["gateway_metadata"]["team_id"] == "research");
    }
    REQUIRE(c.Post("/chat", bearer(outsider), json{{"content", "not research"}}.dump(), "application/json")->status == 200);

    // The records are written off the request path, in batches: poll until all six are in.
    json usage;
    for (int i = 0; i < 100; ++i) {
        auto r = c.Get("/v1/usage?days=7", bearer(key));
        REQUIRE(r);
        REQUIRE(r->status == 200);
        usage = json::parse(r->body);
        if (usage["summary"]["total_requests"] == 6) break;
        std::this_thread::sleep_for(std::chrono::milliseconds{50});
    }
    INFO(usage.dump());
    CHECK(usage["team_id"] == "research");
    CHECK(usage["team_name"] == "Research");
    CHECK(usage["period"]["days"] == 7);
    CHECK(usage["summary"]["total_requests"] == 6);
    CHECK(usage["summary"]["total_tokens"] == tokens);
    CHECK(usage["summary"]["total_cost_usd"].get<double>() == Approx(billed));
    CHECK(usage["summary"]["avg_daily_cost_usd"].get<double>() == Approx(billed / 7));
    REQUIRE(usage["by_model"].size() == 1);
    CHECK(usage["by_model"][0]["model"] == "echo-1");
    CHECK(usage["by_model"][0]["requests"] == 6);
    REQUIRE(usage["by_day"].size() >= 1);

    // The other team sees its own request only, and may not ask for research's.
    auto theirs = c.Get("/v1/usage", bearer(outsider));
    REQUIRE(theirs);
    const auto their_usage = json::parse(theirs->body);
    CHECK(their_usage["team_id"] == "other");
    CHECK(their_usage["period"]["days"] == 30);
    auto forbidden = c.Get("/v1/usage?team=research", bearer(outsider));
    REQUIRE(forbidden);
    CHECK(forbidden->status == 403);
    auto bad = c.Get("/v1/usage?days=0", bearer(key));
    REQUIRE(bad);
    CHECK(bad->status == 400);
    auto anonymous = c.Get("/v1/usage");
    REQUIRE(anonymous);
    CHECK(anonymous->status == 401);
}

TEST_CASE("gateway: a budget's spending survives a restart, read back from the usage records") {
    temp_dir dir;
    const auto db = dir.path() / "gw.db";
    const auto prices = pricing_file(dir, 1000, 1000); // $0.001 per token
    const double worst = static_cast<double>(burst_reservation()) / 1000.0;
    char budget[32];
    // Room for four worst cases: three answers of 6 tokens spend $0.018, well under one worst case.
    std::snprintf(budget, sizeof budget, "%.6f", 4 * worst);
    create_team(db, {"--id", "t", "--budget-usd", budget, "--budget-period", "month"});
    const std::string key = create_key(db, {"--team", "t"});
    {
        server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_PRICING_FILE", prices.string()}}, db);
        auto c = server.client();
        for (int i = 0; i < 3; ++i) REQUIRE(c.Post("/chat", bearer(key), burst_body(i), "application/json")->status == 200);
        REQUIRE(server.stop() == 0); // a clean stop writes the queued records
    }
    // A new process: the records say $0.018 was spent this month, so four worst cases no longer fit
    // in the budget together, and the fourth request in flight is refused.
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_PRICING_FILE", prices.string()}, {"CHAT_ECHO_DELAY_MS", "400"}}, db);
    const auto outcome = burst(server, key, 4);
    CHECK(outcome.ok == 3);
    CHECK(outcome.limited == 1);
    CHECK(all_equal(outcome.codes, "insufficient_quota"));
}
