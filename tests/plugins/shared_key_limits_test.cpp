// shared_key_limits: the limits of keys and teams on counters that replicas share. Each case runs
// two middlewares — two replicas — on one memory_counter_store, as the service calls them; the
// DynamoDB store itself is tested in dynamodb_counter_store_test.cpp, and through the server in
// tests/server/shared_limits_test.cpp.
#include "chatkit/shared_key_limits.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using limits_under_test = chatkit::shared_key_limits<chatkit::memory_counter_store>;

// 2026-01-01T00:00:10Z, moved by the tests.
std::atomic<chatkit::unix_ms> wall{1'767'225'610'000};

struct fleet {
    std::shared_ptr<chatkit::memory_counter_store> counters = std::make_shared<chatkit::memory_counter_store>();
    limits_under_test a{counters, options()};
    limits_under_test b{counters, options()};

    static chatkit::shared_key_limits_options options() {
        chatkit::shared_key_limits_options o;
        o.clock = [] { return wall.load(); };
        return o;
    }
    limits_under_test& replica(std::size_t i) { return i % 2 ? b : a; }
};

chatkit::http_request caller(std::string key_id, std::string team_id, chatkit::usage_limits key, chatkit::usage_limits team = {}) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.request_id = "req-1";
    req.caller = {.key_id = std::move(key_id), .team_id = std::move(team_id), .key_limits = std::move(key), .team_limits = std::move(team)};
    return req;
}

// A request that may use 60 + 40 = 100 tokens and, priced, up to `usd`.
chatkit::chat_admission bounds(std::optional<double> usd = std::nullopt) {
    return {.model = "m", .prompt_token_bound = 60, .max_completion_tokens = 40, .worst_case_usd = usd};
}

// One request through one replica: `before`, then `admit`, held open until settle() (its finish).
struct held {
    limits_under_test* limits;
    chatkit::http_request req;
    limits_under_test::context ctx{};
    std::optional<chatkit::http_response> refused{};

    bool passed() const { return !refused; }
    chatkit::http_response response() {
        chatkit::http_response res = refused.value_or(chatkit::http_response{});
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

// A chat request is admitted as the service admits it (with `a`, else bounds()); any other
// request only goes through `before`.
held send(limits_under_test& limits, chatkit::http_request req, std::optional<chatkit::chat_admission> a = std::nullopt) {
    held h{&limits, std::move(req)};
    h.refused = limits.before(h.req, h.ctx);
    if (!h.refused && chatkit::is_chat_request(h.req.method, h.req.path)) {
        auto admission = a.value_or(bounds());
        if (auto e = limits.admit(h.req, admission, h.ctx)) h.refused = chatkit::error_response(*e, h.req.request_id);
    }
    return h;
}

// Counts the round trips a store is asked for.
struct counted_store {
    chatkit::memory_counter_store inner;
    std::atomic<int> takes{0}, adds{0};
    chatkit::result<chatkit::counters_taken> take(std::span<const chatkit::counter_add> a) {
        ++takes;
        return inner.take(a);
    }
    chatkit::result<void> add(std::span<const chatkit::counter_add> a) {
        ++adds;
        return inner.add(a);
    }
};

std::string header_of(const chatkit::http_response& res, std::string_view name) {
    auto it = res.headers.find(name);
    return it == res.headers.end() ? std::string{} : it->second;
}

std::string code_of(const chatkit::http_response& res) { return nlohmann::json::parse(res.body)["error"]["code"]; }

} // namespace

TEST_CASE("shared_key_limits: 50 concurrent requests over two replicas against 10 per minute: exactly 10 pass") {
    fleet f;
    const chatkit::usage_limits rpm{.requests_per_minute = 10};
    std::atomic<int> passed{0}, refused{0};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < 50; ++i)
        threads.emplace_back([&f, &rpm, &passed, &refused, i] {
            auto h = send(f.replica(i), caller("key_a", "t", rpm));
            (h.passed() ? passed : refused)++;
            if (!h.passed()) {
                const auto res = h.response();
                if (res.status != 429 || code_of(res) != "rate_limit_exceeded" || header_of(res, "x-ratelimit-remaining-requests") != "0")
                    refused += 1000; // fails the count below, naming nothing a thread cannot report
            }
        });
    for (auto& t : threads) t.join();
    CHECK(passed == 10);
    CHECK(refused == 40);

    // A refusal says who and when: the minute ends in 50 s.
    auto late = send(f.b, caller("key_a", "t", rpm));
    REQUIRE_FALSE(late.passed());
    const auto res = late.response();
    CHECK(header_of(res, "Retry-After") == "50");
    CHECK(header_of(res, "x-ratelimit-limit-requests") == "10");
    CHECK(header_of(res, "x-ratelimit-reset-requests") == "50s");
    CHECK_THAT(nlohmann::json::parse(res.body)["error"]["message"].get<std::string>(),
               Catch::Contains("API key key_a allows 10 requests per minute"));

    // Another key is counted apart; the next minute starts from zero.
    CHECK(send(f.a, caller("key_b", "t", rpm)).passed());
    wall += 60'000;
    auto next = send(f.a, caller("key_a", "t", rpm));
    CHECK(next.passed());
    CHECK(header_of(next.response(), "x-ratelimit-remaining-requests") == "9");
}

TEST_CASE("shared_key_limits: a team's requests are shared by its keys, and a refusal by the team takes nothing from the key") {
    fleet f;
    const chatkit::usage_limits team{.requests_per_minute = 3};
    const chatkit::usage_limits key{.requests_per_minute = 5};
    for (int i = 0; i < 3; ++i)
        CHECK(send(f.replica(static_cast<std::size_t>(i)), caller("key_" + std::to_string(i), "t", {}, team)).passed());
    auto by_team = send(f.a, caller("key_a", "t", key, team));
    REQUIRE_FALSE(by_team.passed());
    CHECK_THAT(nlohmann::json::parse(by_team.response().body)["error"]["message"].get<std::string>(),
               Catch::Contains("team 't' allows 3 requests per minute"));
    // key_a's counter was given back: the key alone would still let 5 through in another team.
    CHECK(f.counters->value("key#key_a#rpm#" + std::to_string(wall.load() / 60'000)) == 0);
    for (int i = 0; i < 5; ++i) CHECK(send(f.b, caller("key_a", "u", key)).passed());
    CHECK_FALSE(send(f.b, caller("key_a", "u", key)).passed());
}

TEST_CASE("shared_key_limits: tokens are reserved at their bound on one replica and given back by finish on another's counters") {
    fleet f;
    wall = 1'767'225'610'000;
    const chatkit::usage_limits tpm{.tokens_per_minute = 1000};
    std::vector<held> open;
    for (std::size_t i = 0; i < 10; ++i) {
        open.push_back(send(f.replica(i), caller("key_a", "t", tpm), bounds()));
        REQUIRE(open.back().passed());
        CHECK(header_of(open.back().response(), "x-ratelimit-remaining-tokens") == std::to_string(900 - 100 * static_cast<int>(i)));
    }
    auto refused = send(f.a, caller("key_a", "t", tpm), bounds());
    REQUIRE_FALSE(refused.passed());
    const auto res = refused.response();
    CHECK(res.status == 429);
    CHECK(header_of(res, "x-ratelimit-remaining-tokens") == "0");
    CHECK(header_of(res, "Retry-After") == "50"); // the minute's end
    // Three answers used 30 tokens each: 3 × 70 come back, enough for two more requests of 100.
    for (std::size_t i = 0; i < 3; ++i) open[i].settle(30, std::nullopt);
    CHECK(send(f.b, caller("key_a", "t", tpm), bounds()).passed());
    CHECK(send(f.a, caller("key_a", "t", tpm), bounds()).passed());
    CHECK_FALSE(send(f.b, caller("key_a", "t", tpm), bounds()).passed());
    // More than a minute's worth can never fit: refused outright, naming max_tokens.
    auto huge = send(f.a, caller("key_a", "t", {.tokens_per_minute = 50}), bounds());
    REQUIRE_FALSE(huge.passed());
    CHECK(nlohmann::json::parse(huge.response().body)["error"]["param"] == "max_tokens");
}

TEST_CASE("shared_key_limits: 50 concurrent requests over two replicas against a budget that fits 10 worst cases: exactly 10 pass, none "
          "overspends") {
    fleet f;
    wall = 1'767'225'610'000; // 2026-01-01T00:00:10Z
    const chatkit::usage_limits team{.budget_usd = 1.0, .budget_period = "day"};
    std::atomic<int> passed{0};
    std::vector<held> open(50);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < 50; ++i)
        threads.emplace_back([&f, &team, &open, &passed, i] {
            open[i] = send(f.replica(i), caller("key_" + std::to_string(i % 3), "t", {}, team), bounds(0.10));
            if (open[i].passed()) ++passed;
        });
    for (auto& t : threads) t.join();
    CHECK(passed == 10);
    const std::string counter = "team#t#day#1767225600000";
    CHECK(f.counters->value(counter) == 1'000'000);

    // Each answer cost 2 cents: $0.80 comes back, room for 8 more worst cases.
    for (auto& h : open)
        if (h.passed()) h.settle(20, 0.02);
    CHECK(f.counters->value(counter) == 200'000);
    int more = 0;
    while (send(f.replica(static_cast<std::size_t>(more)), caller("key_0", "t", {}, team), bounds(0.10)).passed()) ++more;
    CHECK(more == 8);

    auto over = send(f.a, caller("key_0", "t", {}, team), bounds(0.10));
    const auto res = over.response();
    CHECK(res.status == 429);
    CHECK(code_of(res) == "insufficient_quota");
    CHECK(header_of(res, "Retry-After") == std::to_string(24 * 3600 - 10)); // the day's end
    CHECK_THAT(nlohmann::json::parse(res.body)["error"]["message"].get<std::string>(),
               Catch::Contains("team 't' has spent or reserved $1.000000 of its $1.000000 daily budget") &&
                   Catch::Contains("resets at 2026-01-02T00:00:00.000Z"));

    // A cache hit costs nothing: its whole reservation comes back. A new day starts from zero.
    wall += 24LL * 3600 * 1000;
    auto hit = send(f.a, caller("key_0", "t", {}, team), bounds(0.10));
    REQUIRE(hit.passed());
    hit.settle(0, 0.0);
    CHECK(f.counters->value("team#t#day#1767312000000") == 0);
}

TEST_CASE("shared_key_limits: a budgeted key cannot use an unpriced model") {
    fleet f;
    auto h = send(f.a, caller("key_a", "t", {.budget_usd = 5, .budget_period = "month"}), bounds(std::nullopt));
    REQUIRE_FALSE(h.passed());
    const auto res = h.response();
    CHECK(res.status == 403);
    CHECK(code_of(res) == "model_not_priced");
}

namespace {
// A store that is down, or that refuses only settlements.
struct broken_counters {
    bool take_fails = true;
    chatkit::result<chatkit::counters_taken> take(std::span<const chatkit::counter_add> adds) {
        if (take_fails) return chatkit::error{chatkit::error_kind::unavailable, "DynamoDB is unreachable", "upstream_unreachable"};
        return chatkit::counters_taken{true, 0, std::vector<std::int64_t>(adds.size(), 1)};
    }
    chatkit::result<void> add(std::span<const chatkit::counter_add>) {
        return chatkit::error{chatkit::error_kind::unavailable, "DynamoDB is unreachable", "upstream_unreachable"};
    }
};
} // namespace

TEST_CASE(
    "shared_key_limits: when the store cannot be reached, limited requests get 503 limits_unavailable, and a lost settlement is reported") {
    auto counters = std::make_shared<broken_counters>();
    std::vector<std::string> reported;
    chatkit::shared_key_limits_options o;
    o.on_error = [&reported](const chatkit::error& e) { reported.push_back(e.message); };
    chatkit::shared_key_limits<broken_counters> limits{counters, o};
    chatkit::shared_key_limits<broken_counters>::context ctx;
    auto req = caller("key_a", "t", {.requests_per_minute = 5});
    req.method = "GET"; // checked before routing; a chat request's check is at admission
    req.path = "/v1/models";
    auto res = limits.before(req, ctx);
    REQUIRE(res);
    CHECK(res->status == 503);
    CHECK(code_of(*res) == "limits_unavailable");
    CHECK(header_of(*res, "Retry-After") == "1");
    auto chat = caller("key_a", "t", {.requests_per_minute = 5});
    chatkit::shared_key_limits<broken_counters>::context chat_ctx;
    CHECK_FALSE(limits.before(chat, chat_ctx));
    auto chat_bounds = bounds();
    auto refused = limits.admit(chat, chat_bounds, chat_ctx);
    REQUIRE(refused);
    CHECK(refused->code == "limits_unavailable");

    // A key without limits never touches the store.
    auto open = caller("key_b", "t", {});
    chatkit::shared_key_limits<broken_counters>::context open_ctx;
    CHECK_FALSE(limits.before(open, open_ctx));

    counters->take_fails = false;
    auto tpm = caller("key_a", "t", {.tokens_per_minute = 1000});
    chatkit::shared_key_limits<broken_counters>::context tctx;
    auto a = bounds();
    CHECK_FALSE(limits.admit(tpm, a, tctx));
    CHECK(a.bounds_reserved);
    chatkit::response_summary s;
    s.usage = {10, 5};
    limits.finish(tpm, s, tctx);
    REQUIRE(reported.size() == 1);
    CHECK(reported[0] == "DynamoDB is unreachable");
}

TEST_CASE("shared_key_limits: with fall_back_to_local, a store that cannot be reached is replaced by this process's count, reported, and "
          "settled where it was reserved") {
    auto counters = std::make_shared<broken_counters>();
    std::vector<std::string> fell_back, lost;
    chatkit::shared_key_limits_options o;
    o.fall_back_to_local = true;
    o.on_fallback = [&fell_back](const chatkit::error& e) { fell_back.push_back(e.message); };
    o.on_error = [&lost](const chatkit::error& e) { lost.push_back(e.message); };
    chatkit::shared_key_limits<broken_counters> limits{counters, o};

    // Two requests a minute: both served while the store is down, the third refused, by the
    // local count.
    for (int i = 0; i < 3; ++i) {
        chatkit::shared_key_limits<broken_counters>::context ctx;
        auto req = caller("key_a", "t", {.requests_per_minute = 2});
        req.method = "GET"; // checked before routing
        req.path = "/v1/models";
        auto res = limits.before(req, ctx);
        CAPTURE(i);
        if (i < 2) {
            CHECK_FALSE(res);
        } else {
            REQUIRE(res);
            CHECK(res->status == 429);
            CHECK(code_of(*res) == "rate_limit_exceeded");
        }
    }
    CHECK(fell_back.size() == 3);
    CHECK(fell_back[0] == "DynamoDB is unreachable");

    // A reservation made locally is settled locally: the store, which refuses settlements, is not
    // asked, and nothing is reported lost.
    auto tpm = caller("key_a", "t", {.tokens_per_minute = 1000});
    chatkit::shared_key_limits<broken_counters>::context tctx;
    auto a = bounds();
    CHECK_FALSE(limits.admit(tpm, a, tctx));
    CHECK(tctx.reserved_locally);
    chatkit::response_summary s;
    s.usage = {10, 5};
    limits.finish(tpm, s, tctx);
    CHECK(lost.empty());

    // Once the store answers again, it counts, and its own reservations are settled in it.
    counters->take_fails = false;
    chatkit::shared_key_limits<broken_counters>::context back;
    auto b = bounds();
    CHECK_FALSE(limits.admit(tpm, b, back));
    CHECK_FALSE(back.reserved_locally);
    limits.finish(tpm, s, back);
    CHECK(lost.size() == 1); // this store refuses settlements: reported, as without the fallback
}

TEST_CASE(
    "shared_key_limits: a chat request with every limit set costs one take before its answer and one add after, other requests one take") {
    auto store = std::make_shared<counted_store>();
    using counted_limits = chatkit::shared_key_limits<counted_store>;
    counted_limits limits{store, fleet::options()};
    const chatkit::usage_limits all{.requests_per_minute = 10, .tokens_per_minute = 1000, .budget_usd = 5.0};
    const chatkit::usage_limits team{.requests_per_minute = 20, .tokens_per_minute = 2000, .budget_usd = 50.0};
    auto req = caller("key_rt", "t_rt", all, team);
    counted_limits::context ctx;
    REQUIRE_FALSE(limits.before(req, ctx));
    CHECK(store->takes == 0); // a chat request's requests per minute wait for admit
    auto a = bounds(0.01);
    REQUIRE_FALSE(limits.admit(req, a, ctx));
    CHECK(store->takes == 1); // 2 request counters, 2 token counters, 2 budgets: one take
    CHECK(a.bounds_reserved);
    chatkit::http_response res;
    limits.after(req, res, ctx);
    CHECK(header_of(res, "x-ratelimit-remaining-requests") == "9");
    CHECK(header_of(res, "x-ratelimit-remaining-tokens") == "900");
    chatkit::response_summary s;
    s.usage = {30, 0};
    s.cost_usd = 0.001;
    limits.finish(req, s, ctx);
    CHECK(store->adds == 1); // the tokens and money not used, given back at once; the request stays counted
    const auto minute = std::to_string(wall.load() / 60'000);
    CHECK(store->inner.value("key#key_rt#rpm#" + minute) == 1);
    CHECK(store->inner.value("key#key_rt#tpm#" + minute) == 30);

    auto models = caller("key_rt", "t_rt", all, team);
    models.method = "GET";
    models.path = "/v1/models";
    counted_limits::context other;
    REQUIRE_FALSE(limits.before(models, other));
    CHECK(store->takes == 2);
    CHECK(store->inner.value("key#key_rt#rpm#" + minute) == 2);
}

TEST_CASE("shared_key_limits: a chat request refused by its requests per minute reserves no tokens, and one refused by its tokens takes no "
          "request") {
    fleet f;
    const chatkit::usage_limits key{.requests_per_minute = 1, .tokens_per_minute = 150};
    const auto minute = std::to_string(wall.load() / 60'000);
    auto first = send(f.a, caller("key_x", "t", key));
    REQUIRE(first.passed()); // 1 request, 100 tokens reserved
    auto second = send(f.b, caller("key_x", "t", key));
    REQUIRE_FALSE(second.passed());
    const auto res = second.response();
    CHECK(res.status == 429);
    CHECK_THAT(nlohmann::json::parse(res.body)["error"]["message"].get<std::string>(), Catch::Contains("allows 1 requests per minute"));
    CHECK(f.counters->value("key#key_x#tpm#" + minute) == 100); // nothing more reserved

    const chatkit::usage_limits roomy{.requests_per_minute = 5, .tokens_per_minute = 150};
    auto third = send(f.b, caller("key_y", "t", roomy));
    REQUIRE(third.passed());
    auto fourth = send(f.a, caller("key_y", "t", roomy)); // 100 more tokens would exceed 150
    REQUIRE_FALSE(fourth.passed());
    CHECK_THAT(nlohmann::json::parse(fourth.response().body)["error"]["message"].get<std::string>(), Catch::Contains("tokens per minute"));
    CHECK(f.counters->value("key#key_y#rpm#" + minute) == 1); // the refused request took no request
}

TEST_CASE(
    "shared_key_limits with a client limit: the client, the key and the team in one take, each refusal taking nothing from the others") {
    wall = 1'767'225'610'000; // 10 s into a minute
    auto store = std::make_shared<counted_store>();
    chatkit::shared_key_limits_options o;
    o.clock = [] { return wall.load(); };
    o.client_limit = chatkit::rate_limit{3, std::chrono::minutes{1}};
    chatkit::shared_key_limits<counted_store> a{store, o}, b{store, o};
    const chatkit::usage_limits team{.requests_per_minute = 10, .tokens_per_minute = 1000};
    auto chat = [&](chatkit::shared_key_limits<counted_store>& limits) {
        auto req = caller("key_a", "t", {}, team);
        chatkit::shared_key_limits<counted_store>::context ctx;
        std::optional<chatkit::http_response> refused = limits.before(req, ctx);
        if (!refused) {
            auto admission = bounds();
            if (auto e = limits.admit(req, admission, ctx)) refused = chatkit::error_response(*e, req.request_id);
        }
        chatkit::http_response res = refused.value_or(chatkit::http_response{});
        limits.after(req, res, ctx);
        if (!refused) limits.finish(req, chatkit::response_summary{}, ctx);
        return res;
    };
    const std::string team_rpm = "team#t#rpm#" + std::to_string(wall / 60'000);

    // Three chats over both replicas: one take each before the answer (and one settle after).
    for (int i = 0; i < 3; ++i) {
        const auto res = chat(i % 2 ? b : a);
        CHECK(res.status == 200);
        CHECK(header_of(res, "X-RateLimit-Limit") == "3");
        CHECK(header_of(res, "X-RateLimit-Remaining") == std::to_string(2 - i));
        CHECK(header_of(res, "x-ratelimit-remaining-requests") == std::to_string(9 - i));
    }
    CHECK(store->takes == 3);

    // The client's fourth: refused as shared_rate_limiter refuses, and the team's count untouched.
    const auto fourth = chat(b);
    CHECK(fourth.status == 429);
    CHECK(header_of(fourth, "Retry-After") == "50");
    CHECK(header_of(fourth, "X-RateLimit-Remaining") == "0");
    CHECK(nlohmann::json::parse(fourth.body)["error"]["message"] == "rate limit of 3/minute exceeded; retry in 50 s");
    CHECK(store->inner.value(team_rpm) == 3);
    CHECK(store->takes == 4);

    // A team refusal takes nothing from the client either: another key of the team, a full team.
    REQUIRE(store->inner.add(std::vector<chatkit::counter_add>{{team_rpm, 7, 0, wall + 3'600'000}}));
    auto other = caller("key_b", "t", {}, team);
    chatkit::shared_key_limits<counted_store>::context ctx;
    REQUIRE_FALSE(a.before(other, ctx));
    auto admission = bounds();
    const auto refused = a.admit(other, admission, ctx);
    REQUIRE(refused);
    CHECK_THAT(refused->message, Catch::Contains("team 't' allows 10 requests per minute"));
    CHECK(store->inner.value("client#id:key_b#60#" + std::to_string(wall / 60'000)) == 0);

    // A health probe (which authentication lets through without a key) is neither counted nor a round trip.
    chatkit::http_request health;
    health.method = "GET";
    health.path = "/health";
    CHECK_FALSE(a.blocks(health));
    CHECK_FALSE(a.before(health, ctx));
    CHECK(store->takes == 5);
}
