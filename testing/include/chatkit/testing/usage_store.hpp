// The behaviour every chatkit::usage_store model must have, as Catch2 checks against the
// reference model (chatkit::memory_usage_store) on the same records. A store's test calls
// check_usage_store_conformance(make) from a TEST_CASE, where make() returns a new, empty store.
#pragma once

#include <chatkit/usage_store.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace chatkit::testing {

inline constexpr chatkit::unix_ms day_ms = 86'400'000;
inline constexpr chatkit::unix_ms dec1 = 1'764'547'200'000; // 2025-12-01T00:00:00Z

inline chatkit::usage_record usage_record_of(std::string team, std::string key, std::string model, chatkit::unix_ms time, int prompt,
                                             int completion, std::optional<double> cost) {
    chatkit::usage_record r;
    r.time = time;
    r.request_id = "req-" + std::to_string(time);
    r.team_id = std::move(team);
    r.key_id = std::move(key);
    r.model = std::move(model);
    r.provider = "echo";
    r.status = 200;
    r.usage = {prompt, completion, 1, 0};
    r.cost_usd = cost;
    r.latency_ms = 12.5;
    return r;
}

// The usage records the checks write, compared with the reference model's summaries of them:
// team t1 over three days of December 2025 (three models, one unpriced, a failed request with no
// tokens), another team, a t1 record outside [dec1, dec1 + 5 days), and one made without authentication.
inline std::vector<chatkit::usage_record> usage_history() {
    constexpr auto day = day_ms;
    return {
        usage_record_of("t1", "key_a", "gpt-4o", dec1 + 1000, 100, 50, 0.001),
        usage_record_of("t1", "key_a", "gpt-4o", dec1 + day + 5, 10, 5, 0.0005),
        usage_record_of("t1", "key_b", "mini", dec1 + day + 6, 20, 20, 0.002),
        usage_record_of("t1", "key_b", "unpriced", dec1 + 2 * day, 7, 3, std::nullopt),
        usage_record_of("t1", "key_b", "unpriced", dec1 + 2 * day + 1, 0, 0, std::nullopt), // a failed request: no tokens, not "unpriced"
        usage_record_of("t2", "key_c", "gpt-4o", dec1 + day, 1000, 1000, 1.0),              // another team
        usage_record_of("t1", "key_a", "gpt-4o", dec1 + 9 * day, 1, 1, 5.0),                // outside the range the tests ask for
        usage_record_of("", "", "gpt-4o", dec1 + 3 * day, 4, 4, 0.25),                      // no authentication
    };
}

// A range's records, in time order (stores hand them over in no particular order).
template <class Store>
std::vector<chatkit::usage_record> records_of(Store& store, const chatkit::usage_range& range) {
    std::vector<chatkit::usage_record> out;
    REQUIRE(store.for_each_record(range, [&out](const chatkit::usage_record& r) { out.push_back(r); }));
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.time < b.time; });
    return out;
}

template <class Make>
void check_usage_store_conformance(Make make) {
    constexpr auto day = day_ms;

    SECTION("a team's usage by model and by day, as the reference model sums it") {
        auto store = make();
        chatkit::memory_usage_store memory;
        const auto history = usage_history();
        REQUIRE(store.append(history));
        REQUIRE(memory.append(history));
        const chatkit::usage_query q{"t1", dec1, dec1 + 5 * day};
        auto got = store.summarize(q);
        auto want = memory.summarize(q);
        REQUIRE(got);
        REQUIRE(want);
        CHECK(got->total.requests == 5);
        CHECK(got->total.tokens == 100 + 50 + 10 + 5 + 20 + 20 + 7 + 3);
        CHECK(got->total.cost_usd == Approx(0.0035));
        CHECK(got->total.unpriced_requests == 1); // the failed request used no tokens: not unpriced
        REQUIRE(got->by_model.size() == 3);
        CHECK(got->by_model[0].first == "mini"); // the largest cost first
        CHECK(got->by_model[1].first == "gpt-4o");
        CHECK(got->by_model[1].second.requests == 2);
        CHECK(got->by_model[1].second.cost_usd == Approx(0.0015));
        CHECK(got->by_model[2].first == "unpriced");
        CHECK(got->by_model[2].second.cost_usd == 0.0);
        REQUIRE(got->by_day.size() == want->by_day.size());
        for (std::size_t i = 0; i < got->by_day.size(); ++i) {
            CHECK(got->by_day[i].first == want->by_day[i].first);
            CHECK(got->by_day[i].second.requests == want->by_day[i].second.requests);
            CHECK(got->by_day[i].second.tokens == want->by_day[i].second.tokens);
        }
        CHECK(got->by_day.front().first == "2025-12-01");
        // Requests made without authentication are a team of their own ("").
        CHECK(store.summarize({"", dec1, dec1 + 5 * day})->total.requests == 1);
    }

    SECTION("spending per key and per team since a time, as budgets read it after a restart") {
        auto store = make();
        REQUIRE(store.append(usage_history()));
        CHECK(store.spent_usd("key", "key_a", dec1).value() == Approx(5.0015));
        CHECK(store.spent_usd("key", "key_a", dec1 + day).value() == Approx(5.0005));
        CHECK(store.spent_usd("team", "t2", 0).value() == Approx(1.0));
        CHECK(store.spent_usd("team", "nobody", 0).value() == 0.0);
    }

    SECTION("a range's records, of one team or of every team, come back whole, every field as written") {
        auto store = make();
        chatkit::memory_usage_store memory;
        auto history = usage_history();
        history[0].streamed = history[1].cached = history[2].cancelled = history[3].estimated = true;
        history[0].time_to_first_token_ms = 3.25;
        history[1].usage.reasoning_tokens = 9;
        history[4].status = 429;
        REQUIRE(store.append(history));
        REQUIRE(memory.append(history));
        const auto one = records_of(store, {"t1", dec1, dec1 + 5 * day});
        CHECK(one.size() == 5);
        CHECK(one == records_of(memory, {"t1", dec1, dec1 + 5 * day}));
        CHECK(one.front() == history[0]);
        CHECK(one.back().cost_usd == std::nullopt); // unpriced stays unpriced, never $0
        const auto all = records_of(store, {std::nullopt, dec1, dec1 + 5 * day});
        CHECK(all.size() == 7); // t1's five, t2's, and the one made without authentication
        CHECK(all == records_of(memory, {std::nullopt, dec1, dec1 + 5 * day}));
        CHECK(records_of(store, {"", dec1, dec1 + 5 * day}).size() == 1);
        CHECK(records_of(store, {std::nullopt, dec1 + 1000, dec1 + day}).size() == 1); // [since, until)
    }

    SECTION("an empty batch is stored as nothing, and batches add up") {
        auto store = make();
        REQUIRE(store.append(std::vector<chatkit::usage_record>{}));
        const auto history = usage_history();
        REQUIRE(store.append(std::span{history}.first(3)));
        REQUIRE(store.append(std::span{history}.subspan(3)));
        CHECK(records_of(store, {std::nullopt, 0, dec1 + 30 * day}).size() == history.size());
    }
}

} // namespace chatkit::testing
