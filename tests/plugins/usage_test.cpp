// Usage records: the SQLite store against the in-memory reference model, the recorder that batches
// them off the request path, and the GET /v1/usage report built from them.
#include "chatkit/sqlite_usage_store.hpp"
#include "chatkit/usage_recorder.hpp"
#include "chatkit/usage_dashboard.hpp"
#include "chatkit/usage_report.hpp"

#include <chatkit/testing/usage_store.hpp>

#include "../support/usage_history.hpp"
#include "../support/temp_db.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <list>
#include <thread>

using chatkit::usage_record;

namespace {

constexpr chatkit::unix_ms day = test_support::day_ms;
using test_support::dec1;
constexpr auto record = &test_support::usage_record_of;

} // namespace

TEST_CASE("sqlite_usage_store passes the usage store conformance checks") {
    std::list<test_support::temp_db> files;
    chatkit::testing::check_usage_store_conformance(
        [&] { return chatkit::sqlite_usage_store{chatkit::sqlite_options{.path = files.emplace_back().path()}}; });
}

TEST_CASE("memory_usage_store, the reference model, passes the usage store conformance checks") {
    chatkit::testing::check_usage_store_conformance([] { return chatkit::memory_usage_store{}; });
}

TEST_CASE("sqlite_usage_store: a second handle on the same file reads what the first wrote") {
    test_support::temp_db db;
    chatkit::sqlite_usage_store first{chatkit::sqlite_options{.path = db.path()}};
    REQUIRE(first.append(test_support::usage_history()));
    chatkit::sqlite_usage_store reopened{chatkit::sqlite_options{.path = db.path()}};
    CHECK(reopened.summarize({"t1", dec1, dec1 + 5 * day})->total.requests == 5);
}

TEST_CASE("sqlite_usage_store: every field of a record is stored, and an unpriced cost stays NULL, never 0") {
    test_support::temp_db db;
    chatkit::sqlite_usage_store store{chatkit::sqlite_options{.path = db.path()}};
    auto r = record("t", "k", "m", dec1, 3, 4, std::nullopt);
    r.streamed = r.cancelled = r.estimated = true;
    REQUIRE(store.append(std::vector{r}));
    // Read back through SQLite itself.
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open_v2(db.path().c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(raw, "SELECT cost_usd IS NULL, streamed, cancelled, estimated, cached_tokens, provider FROM usage", -1, &st,
                               nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK(sqlite3_column_int(st, 0) == 1);
    CHECK(sqlite3_column_int(st, 1) == 1);
    CHECK(sqlite3_column_int(st, 2) == 1);
    CHECK(sqlite3_column_int(st, 3) == 1);
    CHECK(sqlite3_column_int(st, 4) == 1);
    CHECK(std::string{reinterpret_cast<const char*>(sqlite3_column_text(st, 5))} == "echo");
    sqlite3_finalize(st);
    sqlite3_close(raw);
}

namespace {

// A store that fails while `down`, and counts its batches.
struct flaky_store {
    std::mutex mutex;
    std::vector<usage_record> records;
    std::atomic<bool> down{false};
    std::atomic<int> batches{0};

    chatkit::result<void> append(std::span<const usage_record> batch) {
        if (down) return chatkit::error{chatkit::error_kind::unavailable, "disk on fire", "store_unavailable"};
        std::lock_guard lock{mutex};
        records.insert(records.end(), batch.begin(), batch.end());
        ++batches;
        return {};
    }
    chatkit::result<chatkit::usage_summary> summarize(const chatkit::usage_query&) { return chatkit::usage_summary{}; }
    chatkit::result<double> spent_usd(std::string_view, std::string_view, chatkit::unix_ms) { return 0.0; }
    chatkit::result<void> for_each_record(const chatkit::usage_range&, const chatkit::usage_record_visitor&) { return {}; }
};

chatkit::http_request chat_request(std::string path = "/v1/chat/completions", std::string method = "POST") {
    chatkit::http_request req;
    req.method = std::move(method);
    req.path = std::move(path);
    req.request_id = "req-1";
    req.caller.key_id = "key_a";
    req.caller.team_id = "t1";
    return req;
}

void finish(chatkit::usage_recorder<flaky_store>& recorder, const chatkit::http_request& req, chatkit::response_summary s) {
    chatkit::no_context ctx;
    recorder.finish(req, s, ctx);
}

} // namespace

TEST_CASE("usage_recorder: one record per chat request, with what the summary says, written off the request path") {
    auto store = std::make_shared<flaky_store>();
    chatkit::usage_recorder<flaky_store> recorder{store};
    chatkit::response_summary s;
    s.status = 200;
    s.model = "m";
    s.provider = "echo";
    s.usage = {5, 7};
    s.cost_usd = 0.25;
    s.streamed = true;
    s.client_left = true;
    s.usage_estimated = true;
    s.duration_ms = 42;
    s.time_to_first_token_ms = 3;
    finish(recorder, chat_request(), s);
    finish(recorder, chat_request("/chat"), s);
    finish(recorder, chat_request("/v1/chat"), s);
    finish(recorder, chat_request("/v1/messages"), s);      // the Anthropic and Responses surfaces
    finish(recorder, chat_request("/v1/responses"), s);     // bill as every chat does
    finish(recorder, chat_request("/health", "GET"), s);    // not a chat route
    finish(recorder, chat_request("/v1/models", "GET"), s); // not a chat route
    finish(recorder, chat_request("/chat", "GET"), s);      // a 405, not a chat
    REQUIRE(recorder.flush());
    std::lock_guard lock{store->mutex};
    REQUIRE(store->records.size() == 5);
    const auto& r = store->records[0];
    CHECK(r.request_id == "req-1");
    CHECK(r.team_id == "t1");
    CHECK(r.key_id == "key_a");
    CHECK(r.model == "m");
    CHECK(r.provider == "echo");
    CHECK(r.usage == chatkit::token_usage{5, 7});
    CHECK(r.cost_usd == 0.25);
    CHECK(r.streamed);
    CHECK(r.cancelled);
    CHECK(r.estimated);
    CHECK(r.latency_ms == 42);
    CHECK(r.time_to_first_token_ms == 3);
    CHECK(r.time > 0);
}

TEST_CASE("usage_recorder: a store that is down loses nothing: the batch is retried until it is written") {
    auto store = std::make_shared<flaky_store>();
    std::atomic<int> errors{0};
    chatkit::usage_recorder_options o;
    o.retry_after = std::chrono::milliseconds{20};
    o.on_error = [&errors](const chatkit::error&) { ++errors; };
    chatkit::usage_recorder<flaky_store> recorder{store, o};
    store->down = true;
    for (int i = 0; i < 50; ++i) finish(recorder, chat_request(), chatkit::response_summary{});
    // flush() gives up at the first failed write, not after its timeout (an hour here): the Lambda
    // runtime calls it after every invocation, which a store that is down must not hold.
    CHECK_FALSE(recorder.flush(std::chrono::hours{1}));
    CHECK(errors > 0);
    // What a metrics scrape reads: the queue holds them all, writes have failed, none is written.
    const auto figures = recorder.figures_source();
    auto moved = std::move(recorder); // the handle outlives the move into a service
    CHECK(figures().queued == 50);
    CHECK(figures().failed_writes > 0);
    CHECK(figures().written == 0);
    auto& recorder_now = moved;
    store->down = false;
    // A write that was failing as the store came back may still end flush() once.
    bool written = recorder_now.flush();
    for (int attempt = 0; !written && attempt < 5; ++attempt) written = recorder_now.flush();
    REQUIRE(written);
    CHECK(store->records.size() == 50);
    CHECK(recorder_now.dropped() == 0);
    CHECK(figures().written == 50);
    CHECK(figures().queued == 0);
}

TEST_CASE("usage_recorder: records are written in batches, a full queue drops and counts, and stopping writes what is queued") {
    auto store = std::make_shared<flaky_store>();
    {
        chatkit::usage_recorder_options o;
        o.max_batch = 10;
        o.max_queued = 100;
        chatkit::usage_recorder<flaky_store> recorder{store, o};
        store->down = true; // hold the queue until it is full
        for (int i = 0; i < 130; ++i) finish(recorder, chat_request(), chatkit::response_summary{});
        CHECK(recorder.dropped() == 30);
        store->down = false;
        // Leaving the scope stops the recorder: the 100 queued records are written first, even
        // when the writer's last try failed just as the stop came.
    }
    CHECK(store->records.size() == 100);
    CHECK(store->batches >= 10);
}

TEST_CASE("usage_recorder: a store still down when the recorder stops gets a few more tries, then the rest is dropped and counted") {
    auto store = std::make_shared<flaky_store>();
    store->down = true;
    std::atomic<int> errors{0};
    {
        chatkit::usage_recorder_options o;
        o.retry_after = std::chrono::milliseconds{50};
        o.on_error = [&errors](const chatkit::error&) { ++errors; };
        chatkit::usage_recorder<flaky_store> recorder{store, o};
        for (int i = 0; i < 5; ++i) finish(recorder, chat_request(), chatkit::response_summary{});
    }
    CHECK(store->records.empty());
    CHECK(errors >= 2); // the failed try before the stop, and at least one after it
}

TEST_CASE("usage report: days from 1 to 366, a team's own usage, and another team's for the admin key only") {
    chatkit::memory_usage_store store;
    const auto now = chatkit::now_unix_ms();
    REQUIRE(
        store.append(std::vector{record("t1", "key_a", "m", now - 1000, 10, 20, 0.5), record("t1", "key_a", "m", now - 40 * day, 1, 1, 9.0),
                                 record("t2", "key_c", "m", now - 1000, 1, 1, 3.0)}));
    const auto names = [](const std::string& id) { return id == "t1" ? std::string{"Team One"} : std::string{}; };

    auto req = chat_request("/v1/usage", "GET");
    auto res = chatkit::usage_report_response(store, req, names);
    REQUIRE(res.status == 200);
    auto body = nlohmann::json::parse(res.body);
    CHECK(body["team_id"] == "t1");
    CHECK(body["team_name"] == "Team One");
    CHECK(body["period"]["days"] == 30);
    CHECK(body["period"]["end"] == chatkit::format_rfc3339(now).substr(0, 10));
    CHECK(body["summary"]["total_requests"] == 1); // the record 40 days ago is outside the period
    CHECK(body["summary"]["total_tokens"] == 30);
    CHECK(body["summary"]["total_cost_usd"] == 0.5);
    CHECK(body["summary"]["avg_daily_cost_usd"].get<double>() == Approx(0.5 / 30));
    CHECK(body["by_model"] == nlohmann::json::parse(R"([{"model":"m","requests":1,"tokens":30,"cost_usd":0.5}])"));
    CHECK(body["by_day"][0]["date"] == chatkit::format_rfc3339(now - 1000).substr(0, 10));

    req.query["days"] = "60";
    CHECK(nlohmann::json::parse(chatkit::usage_report_response(store, req, names).body)["summary"]["total_requests"] == 2);
    for (const char* bad : {"0", "367", "x", "1.5", ""}) {
        req.query["days"] = bad;
        auto refused = chatkit::usage_report_response(store, req, names);
        CHECK(refused.status == 400);
        CHECK(nlohmann::json::parse(refused.body)["error"]["param"] == "days");
    }
    req.query.erase("days");

    req.query["team"] = "t2";
    CHECK(chatkit::usage_report_response(store, req, names).status == 403);
    req.caller.admin = true;
    auto other = chatkit::usage_report_response(store, req, names);
    REQUIRE(other.status == 200);
    CHECK(nlohmann::json::parse(other.body)["summary"]["total_cost_usd"] == 3.0);
    CHECK(nlohmann::json::parse(other.body)["team_name"].is_null());
}

TEST_CASE("usage dashboard: series per hour or day, breakdowns, rates and percentiles, with the totals of the usage report") {
    chatkit::memory_usage_store store;
    // A fixed period: the 7 days up to 2025-12-07T12:00Z, and the one day of 2025-12-07 to noon.
    const chatkit::unix_ms now = dec1 + 6 * day + 12 * 3'600'000;
    std::vector<usage_record> rs;
    for (int i = 0; i < 10; ++i) {
        auto r = record("t1", "key_a", "gpt-4o", dec1 + 6 * day + i * 60'000, 10, 10, 0.01);
        r.latency_ms = i + 1;                                 // 1..10 ms
        r.time_to_first_token_ms = i < 5 ? 0.5 * (i + 1) : 0; // five streamed answers
        r.cached = i == 0;
        rs.push_back(r);
    }
    auto limited = record("t1", "key_b", "mini", dec1 + 6 * day + 3 * 3'600'000, 0, 0, std::nullopt);
    limited.status = 429;
    limited.latency_ms = 0.01;
    rs.push_back(limited);
    auto failed = record("t2", "key_c", "mini", dec1 + 2 * day, 5, 0, std::nullopt); // unpriced, failed
    failed.status = 502;
    rs.push_back(failed);
    rs.push_back(record("t2", "key_c", "mini", dec1 + 3 * day, 100, 100, 2.0));
    rs.push_back(record("t1", "key_a", "gpt-4o", dec1 - day, 1, 1, 9.0)); // before the period
    REQUIRE(store.append(rs));
    const auto names = [](const std::string& id) { return id == "t1" ? std::string{"Team One"} : std::string{}; };

    chatkit::usage_dashboard_query week;
    week.period = chatkit::usage_period::last_days(7, now);
    auto all = chatkit::usage_dashboard_json(store, week, names).value();
    CHECK(all["all_teams"] == true);
    CHECK(all["period"]["bucket"] == "day");
    CHECK(all["series"]["label"].size() == 7);
    CHECK(all["series"]["label"][0] == "2025-12-01");
    CHECK(all["series"]["time"][0] == dec1 / 1000);
    CHECK(all["series"]["requests"] == nlohmann::json::parse("[0,0,1,1,0,0,11]"));
    CHECK(all["summary"]["total_requests"] == 13);
    CHECK(all["summary"]["total_cost_usd"].get<double>() == Approx(2.1));
    CHECK(all["summary"]["unpriced_requests"] == 1); // the 502 used 5 tokens; the 429 none
    CHECK(all["summary"]["errors"] == 2);
    CHECK(all["summary"]["rate_limited"] == 1);
    CHECK(all["summary"]["rate_limited_rate"].get<double>() == Approx(1.0 / 13));
    CHECK(all["summary"]["cache_hits"] == 1);
    CHECK(all["summary"]["cache_hit_ratio"].get<double>() == Approx(1.0 / 11));
    // Nearest rank over the 11 answers' latencies: 1..10 ms and t2's 12.5 ms.
    CHECK(all["latency_ms"] == nlohmann::json::parse(R"({"p50":6.0,"p90":10.0,"p99":12.5})"));
    CHECK(all["ttft_ms"] == nlohmann::json::parse(R"({"p50":1.5,"p90":2.5,"p99":2.5})"));
    REQUIRE(all["by_team"].size() == 2);
    CHECK(all["by_team"][0]["team_id"] == "t2"); // the largest cost first
    CHECK(all["by_team"][1]["team_name"] == "Team One");
    CHECK(all["top_keys"][0]["key_id"] == "key_c");
    CHECK(all["top_keys"][0]["team_id"] == "t2");
    CHECK(all["series"]["by_model"].size() == 2);
    CHECK(all["series"]["by_team"][1]["requests"][6] == 11);

    // One team, as GET /v1/usage reports it for the same period.
    auto t1 = week;
    t1.team_id = "t1";
    auto team = chatkit::usage_dashboard_json(store, t1, names).value();
    auto report = chatkit::usage_report_json("t1", "Team One", week.period,
                                             store.summarize({"t1", week.period.since, week.period.until}).value());
    for (const char* field : {"total_requests", "total_tokens", "total_cost_usd", "avg_daily_cost_usd", "unpriced_requests"})
        CHECK(team["summary"][field] == report["summary"][field]);
    CHECK(team["team_name"] == "Team One");
    REQUIRE(team["by_model"].size() == report["by_model"].size());
    for (std::size_t i = 0; i < report["by_model"].size(); ++i)
        for (const char* field : {"model", "requests", "tokens", "cost_usd"})
            CHECK(team["by_model"][i][field] == report["by_model"][i][field]);

    // One model; and one day, by the hour up to the current one.
    auto mini = week;
    mini.model = "mini";
    CHECK(chatkit::usage_dashboard_json(store, mini, names).value()["summary"]["total_requests"] == 3);
    chatkit::usage_dashboard_query today;
    today.period = chatkit::usage_period::last_days(1, now);
    auto hours = chatkit::usage_dashboard_json(store, today, names).value();
    CHECK(hours["period"]["bucket"] == "hour");
    CHECK(hours["series"]["label"].size() == 12);
    CHECK(hours["series"]["label"][3] == "2025-12-07T03:00Z");
    CHECK(hours["series"]["requests"][0] == 10);
    CHECK(hours["series"]["requests"][3] == 1);

    // Nothing in the period: rates and percentiles are null, not 0.
    chatkit::usage_dashboard_query empty;
    empty.period = chatkit::usage_period::last_days(1, dec1 + 40 * day);
    auto none = chatkit::usage_dashboard_json(store, empty, names).value();
    CHECK(none["summary"]["error_rate"].is_null());
    CHECK(none["summary"]["cache_hit_ratio"].is_null());
    CHECK(none["latency_ms"]["p50"].is_null());
}

TEST_CASE("usage dashboard route: a team key sees its own team only, the admin key every team or one, bad input is a 400") {
    chatkit::memory_usage_store store;
    const auto now = chatkit::now_unix_ms();
    REQUIRE(
        store.append(std::vector{record("t1", "key_a", "m", now - 1000, 10, 20, 0.5), record("t2", "key_c", "m", now - 1000, 1, 1, 3.0)}));
    const auto names = [](const std::string&) { return std::string{}; };

    auto req = chat_request("/v1/usage/dashboard", "GET");
    auto own = nlohmann::json::parse(chatkit::usage_dashboard_response(store, req, names).body);
    CHECK(own["team_id"] == "t1");
    CHECK(own["summary"]["total_requests"] == 1);
    CHECK(own["period"]["days"] == 30);
    req.query["team"] = "t2";
    auto refused = chatkit::usage_dashboard_response(store, req, names);
    CHECK(refused.status == 403);
    CHECK(nlohmann::json::parse(refused.body)["error"]["code"] == "permission_denied");
    req.query["team"] = "t1";
    CHECK(chatkit::usage_dashboard_response(store, req, names).status == 200);

    req.caller = {};
    req.caller.key_id = "admin";
    req.caller.admin = true;
    req.query.erase("team");
    auto every = nlohmann::json::parse(chatkit::usage_dashboard_response(store, req, names).body);
    CHECK(every["all_teams"] == true);
    CHECK(every["summary"]["total_requests"] == 2);
    req.query["team"] = "t2";
    CHECK(nlohmann::json::parse(chatkit::usage_dashboard_response(store, req, names).body)["summary"]["total_cost_usd"] == 3.0);

    for (const char* bad : {"0", "367", "x"}) {
        req.query["days"] = bad;
        CHECK(chatkit::usage_dashboard_response(store, req, names).status == 400);
    }
    req.query["days"] = "1";
    req.query["model"] = "";
    auto no_model = chatkit::usage_dashboard_response(store, req, names);
    CHECK(no_model.status == 400);
    CHECK(nlohmann::json::parse(no_model.body)["error"]["param"] == "model");
}
