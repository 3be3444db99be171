// key_usage_limits: tokens per minute and USD budgets per key and team, reserved at admission and
// settled with the real usage in finish, as the service calls them.
#include "chatkit/key_usage_limits.hpp"

#include "../support/manual_clock.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace {

using usage_limits_under_test = chatkit::key_usage_limits<std::mutex, test_support::manual_clock>;

chatkit::http_request caller(std::string key_id, std::string team_id, chatkit::usage_limits key, chatkit::usage_limits team = {}) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.request_id = "req-1";
    req.caller = {.key_id = std::move(key_id), .team_id = std::move(team_id), .key_limits = std::move(key), .team_limits = std::move(team)};
    return req;
}

// A request that may use 60 + 40 = 100 tokens and, priced, up to `usd`.
chatkit::chat_admission bounds(std::optional<double> usd = std::nullopt, std::int64_t prompt = 60, std::int64_t max_tokens = 40) {
    return {.model = "m", .prompt_token_bound = prompt, .max_completion_tokens = max_tokens, .worst_case_usd = usd};
}

// One admitted request, held open until settle() (its finish) with the usage it really had.
struct held {
    usage_limits_under_test* limits;
    chatkit::http_request req;
    usage_limits_under_test::context ctx{};
    std::optional<chatkit::error> refused{};

    chatkit::http_response response() {
        chatkit::http_response res;
        if (refused) res = chatkit::error_response(*refused, req.request_id);
        limits->after(req, res, ctx);
        return res;
    }
    void settle(int tokens, std::optional<double> cost) {
        chatkit::response_summary s;
        s.usage = {tokens, 0};
        s.cost_usd = cost;
        limits->finish(req, s, ctx);
    }
};

held admit(usage_limits_under_test& limits, chatkit::http_request req, chatkit::chat_admission a) {
    held h{&limits, std::move(req)};
    h.refused = limits.admit(h.req, a, h.ctx);
    return h;
}

std::string header_of(const chatkit::http_response& res, std::string_view name) {
    auto it = res.headers.find(name);
    return it == res.headers.end() ? std::string{} : it->second;
}

} // namespace

TEST_CASE("key_usage_limits: tokens per minute reserve each request's bound, and finish gives back what it did not use") {
    usage_limits_under_test limits;
    const chatkit::usage_limits tpm{.tokens_per_minute = 1000};
    std::vector<held> open;
    for (int i = 0; i < 10; ++i) {
        open.push_back(admit(limits, caller("key_a", "t", tpm), bounds()));
        REQUIRE_FALSE(open.back().refused);
        CHECK(header_of(open.back().response(), "x-ratelimit-remaining-tokens") == std::to_string(900 - 100 * i));
    }
    auto refused = admit(limits, caller("key_a", "t", tpm), bounds());
    REQUIRE(refused.refused);
    const auto res = refused.response();
    CHECK(res.status == 429);
    CHECK(header_of(res, "x-ratelimit-limit-tokens") == "1000");
    CHECK(header_of(res, "x-ratelimit-remaining-tokens") == "0");
    CHECK(header_of(res, "Retry-After") == "6"); // 100 tokens are earned in 6 s at 1000 per minute
    CHECK(nlohmann::json::parse(res.body)["error"]["code"] == "rate_limit_exceeded");

    // Three answers used 30 tokens each: 3 × 70 come back, enough for two more requests of 100.
    for (int i = 0; i < 3; ++i) open[static_cast<std::size_t>(i)].settle(30, std::nullopt);
    CHECK_FALSE(admit(limits, caller("key_a", "t", tpm), bounds()).refused);
    CHECK_FALSE(admit(limits, caller("key_a", "t", tpm), bounds()).refused);
    CHECK(admit(limits, caller("key_a", "t", tpm), bounds()).refused);

    // The bucket refills with time: a minute later it is full again.
    test_support::manual_clock::advance(std::chrono::minutes{1});
    auto later = admit(limits, caller("key_a", "t", tpm), bounds());
    CHECK_FALSE(later.refused);
    CHECK(header_of(later.response(), "x-ratelimit-remaining-tokens") == "900");
}

TEST_CASE("key_usage_limits: a team's tokens are shared by its keys, and a request refused by one bucket takes from none") {
    usage_limits_under_test limits;
    const chatkit::usage_limits team{.tokens_per_minute = 300};
    const chatkit::usage_limits key{.tokens_per_minute = 150};
    CHECK_FALSE(admit(limits, caller("key_a", "t", key, team), bounds()).refused);
    CHECK_FALSE(admit(limits, caller("key_b", "t", {}, team), bounds()).refused);
    // key_a has 50 left of its own: refused by the key, so the team keeps its 100.
    auto by_key = admit(limits, caller("key_a", "t", key, team), bounds());
    REQUIRE(by_key.refused);
    CHECK_THAT(by_key.refused->message, Catch::Contains("API key key_a allows 150 tokens per minute"));
    CHECK_FALSE(admit(limits, caller("key_b", "t", {}, team), bounds()).refused);
    auto by_team = admit(limits, caller("key_c", "t", {}, team), bounds());
    REQUIRE(by_team.refused);
    CHECK_THAT(by_team.refused->message, Catch::Contains("team 't' allows 300 tokens per minute"));
}

TEST_CASE("key_usage_limits: a request larger than a whole minute's tokens is refused outright, without Retry-After") {
    usage_limits_under_test limits;
    auto huge = admit(limits, caller("key_a", "t", {.tokens_per_minute = 50}), bounds());
    REQUIRE(huge.refused);
    CHECK(huge.refused->code == "rate_limit_exceeded");
    CHECK(huge.refused->param == "max_tokens");
    CHECK_FALSE(huge.refused->retry_after_seconds);
    CHECK_THAT(huge.refused->message, Catch::Contains("up to 100 tokens") && Catch::Contains("lower max_tokens"));
}

TEST_CASE("key_usage_limits: a budget reserves each request's worst case and is charged its real cost, never overspent") {
    usage_limits_under_test limits;
    const chatkit::usage_limits daily{.budget_usd = 1.0, .budget_period = "day"};
    std::vector<held> open;
    for (int i = 0; i < 10; ++i) {
        open.push_back(admit(limits, caller("key_a", "t", daily), bounds(0.1)));
        REQUIRE_FALSE(open.back().refused);
    }
    auto over = admit(limits, caller("key_a", "t", daily), bounds(0.1));
    REQUIRE(over.refused);
    CHECK(over.refused->kind == chatkit::error_kind::rate_limited);
    CHECK(over.refused->code == "insufficient_quota");
    CHECK_THAT(over.refused->message, Catch::Contains("API key key_a") && Catch::Contains("$1.000000 daily budget") &&
                                          Catch::Contains("requests in flight reserve $1.000000") && Catch::Contains("resets at"));
    REQUIRE(over.refused->retry_after_seconds);
    CHECK(*over.refused->retry_after_seconds <= 86400);

    // Each answer cost 2 cents: $0.20 spent, $0.80 left, room for 8 more worst cases of $0.10.
    for (auto& h : open) h.settle(10, 0.02);
    CHECK(limits.spent_usd("key", "key_a") == Approx(0.2));
    for (int i = 0; i < 8; ++i) CHECK_FALSE(admit(limits, caller("key_a", "t", daily), bounds(0.1)).refused);
    CHECK(admit(limits, caller("key_a", "t", daily), bounds(0.1)).refused);
}

TEST_CASE("key_usage_limits: a cache hit or a failed request costs nothing, and its whole reservation comes back") {
    usage_limits_under_test limits;
    const chatkit::usage_limits team{.budget_usd = 0.3, .budget_period = "month"};
    for (int round = 0; round < 5; ++round) {
        std::vector<held> open;
        for (int i = 0; i < 3; ++i) open.push_back(admit(limits, caller("key_a", "team-m", {}, team), bounds(0.1)));
        for (auto& h : open) REQUIRE_FALSE(h.refused);
        CHECK(admit(limits, caller("key_a", "team-m", {}, team), bounds(0.1)).refused);
        open[0].settle(0, 0.0);          // a cache hit
        open[1].settle(0, std::nullopt); // an error: nothing used
        open[2].settle(0, 0.0);
    }
    CHECK(limits.spent_usd("team", "team-m") == 0.0);
}

TEST_CASE("key_usage_limits: a budgeted key may not use an unpriced model (403), an unbudgeted one may") {
    usage_limits_under_test limits;
    auto refused = admit(limits, caller("key_a", "t", {.budget_usd = 5.0, .budget_period = "day"}), bounds(std::nullopt));
    REQUIRE(refused.refused);
    CHECK(refused.refused->kind == chatkit::error_kind::permission_denied);
    CHECK(refused.refused->code == "model_not_priced");
    CHECK_FALSE(admit(limits, caller("key_b", "t", {.tokens_per_minute = 1000}), bounds(std::nullopt)).refused);
    CHECK_FALSE(admit(limits, caller("", "", {}), bounds(std::nullopt)).refused); // no caller: authentication is off
}

TEST_CASE("key_usage_limits: what was spent before the process started counts against the budget, once per period") {
    int calls = 0;
    chatkit::key_usage_limits_options o;
    o.spent_before = [&calls](std::string_view scope, const std::string& id, chatkit::unix_ms start) -> std::optional<double> {
        ++calls;
        CHECK(scope == "team");
        CHECK(id == "t");
        CHECK(start == chatkit::limit_terms::budget_period("day", chatkit::now_unix_ms()).first);
        return 0.95;
    };
    usage_limits_under_test limits{o};
    const chatkit::usage_limits team{.budget_usd = 1.0, .budget_period = "day"};
    auto first = admit(limits, caller("key_a", "t", {}, team), bounds(0.04));
    CHECK_FALSE(first.refused);
    CHECK(admit(limits, caller("key_a", "t", {}, team), bounds(0.04)).refused); // 0.95 + 0.04 + 0.04 > 1
    CHECK(calls == 1);
}

TEST_CASE("key_usage_limits: when what was spent cannot be read, the request is refused with 503 and the next one asks again") {
    bool store_down = true;
    chatkit::key_usage_limits_options o;
    o.spent_before = [&store_down](std::string_view, const std::string&, chatkit::unix_ms) -> std::optional<double> {
        if (store_down) return std::nullopt;
        return 0.0;
    };
    usage_limits_under_test limits{o};
    const chatkit::usage_limits key{.budget_usd = 1.0, .budget_period = "month"};
    auto refused = admit(limits, caller("key_a", "t", key), bounds(0.1));
    REQUIRE(refused.refused);
    CHECK(refused.refused->kind == chatkit::error_kind::unavailable);
    CHECK(refused.refused->code == "budget_unavailable");
    store_down = false;
    CHECK_FALSE(admit(limits, caller("key_a", "t", key), bounds(0.1)).refused);
}

TEST_CASE("limit_terms: budget periods are UTC calendar days and months") {
    const chatkit::unix_ms t = 1'767'225'599'000; // 2025-12-31T23:59:59Z
    CHECK(chatkit::limit_terms::budget_period("day", t) ==
          std::pair<chatkit::unix_ms, chatkit::unix_ms>{1'767'139'200'000, 1'767'225'600'000});
    CHECK(chatkit::limit_terms::budget_period("month", t) ==
          std::pair<chatkit::unix_ms, chatkit::unix_ms>{1'764'547'200'000, 1'767'225'600'000});
    CHECK(chatkit::limit_terms::budget_period("month", 1'767'225'600'000).first == 1'767'225'600'000); // 2026-01-01 starts a month
}

TEST_CASE("key_usage_limits: 50 requests on 10 threads against a team budget that fits 10 let exactly 10 through") {
    chatkit::key_usage_limits<std::mutex> limits;
    const chatkit::usage_limits team{.budget_usd = 1.05, .budget_period = "day"};
    std::atomic<int> admitted{0}, refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 10; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 5; ++i) {
                auto req = caller("key_" + std::to_string(t), "shared", {}, team);
                chatkit::key_usage_limits<std::mutex>::context ctx;
                auto a = bounds(0.1);
                if (limits.admit(req, a, ctx)) ++refused;
                else ++admitted; // held: none finishes during the burst
            }
        });
    for (auto& th : threads) th.join();
    CHECK(admitted == 10);
    CHECK(refused == 40);
}
