// Usage records: the SQLite store against the in-memory reference model, the recorder that batches
// them off the request path, and the GET /v1/usage report built from them.
#include "chatkit/sqlite_usage_store.hpp"
#include "chatkit/usage_recorder.hpp"
#include "chatkit/usage_report.hpp"

#include "../support/usage_history.hpp"
#include "../support/temp_db.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <thread>

using chatkit::usage_record;

namespace {

constexpr chatkit::unix_ms day = test_support::day_ms;
using test_support::dec1;
constexpr auto record = &test_support::usage_record_of;

} // namespace

TEST_CASE("sqlite_usage_store: a team's usage by model and by day, as the reference model sums it") {
    test_support::temp_db db;
    chatkit::sqlite_usage_store sqlite{chatkit::sqlite_options{.path = db.path()}};
    chatkit::memory_usage_store memory;
    const auto history = test_support::usage_history();
    REQUIRE(sqlite.append(history));
    REQUIRE(memory.append(history));

    const chatkit::usage_query q{"t1", dec1, dec1 + 5 * day};
    auto got = sqlite.summarize(q);
    auto want = memory.summarize(q);
    REQUIRE(got);
    REQUIRE(want);
    CHECK(got->total.requests == 5);
    CHECK(got->total.tokens == 100 + 50 + 10 + 5 + 40 + 10);
    CHECK(got->total.cost_usd == Approx(0.0035));
    CHECK(got->total.unpriced_requests == 1);
    CHECK(got->total.requests == want->total.requests);
    CHECK(got->total.tokens == want->total.tokens);
    CHECK(got->total.unpriced_requests == want->total.unpriced_requests);
    REQUIRE(got->by_model.size() == 3);
    CHECK(got->by_model[0].first == "mini"); // the largest cost first
    CHECK(got->by_model[1].first == "gpt-4o");
    CHECK(got->by_model[1].second.requests == 2);
    CHECK(got->by_model[1].second.cost_usd == Approx(0.0015));
    CHECK(got->by_model[2].first == "unpriced");
    CHECK(got->by_model[2].second.cost_usd == 0.0);
    REQUIRE(got->by_day.size() == 3);
    CHECK(got->by_day[0].first == "2025-12-01");
    CHECK(got->by_day[1].first == "2025-12-02");
    CHECK(got->by_day[1].second.requests == 2);
    CHECK(got->by_day[2].first == "2025-12-03");
    REQUIRE(want->by_day.size() == got->by_day.size());
    for (std::size_t i = 0; i < got->by_day.size(); ++i) {
        CHECK(got->by_day[i].first == want->by_day[i].first);
        CHECK(got->by_day[i].second.tokens == want->by_day[i].second.tokens);
    }

    // Spending, per key and per team, since a time: what budgets read after a restart.
    CHECK(sqlite.spent_usd("key", "key_a", dec1).value() == Approx(5.0015));
    CHECK(sqlite.spent_usd("key", "key_a", dec1 + day).value() == Approx(5.0005));
    CHECK(sqlite.spent_usd("team", "t2", 0).value() == Approx(1.0));
    CHECK(sqlite.spent_usd("team", "nobody", 0).value() == 0.0);
    CHECK(memory.spent_usd("key", "key_a", dec1).value() == Approx(5.0015));

    // A second handle on the same file reads what the first wrote: the records are in the file.
    chatkit::sqlite_usage_store reopened{chatkit::sqlite_options{.path = db.path()}};
    CHECK(reopened.summarize(q)->total.requests == 5);
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
    finish(recorder, chat_request("/health", "GET"), s);       // not a chat route
    finish(recorder, chat_request("/v1/models", "GET"), s);    // not a chat route
    finish(recorder, chat_request("/chat", "GET"), s);         // a 405, not a chat
    REQUIRE(recorder.flush());
    std::lock_guard lock{store->mutex};
    REQUIRE(store->records.size() == 3);
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
    store->down = false;
    // A write that was failing as the store came back may still end flush() once.
    bool written = recorder.flush();
    for (int attempt = 0; !written && attempt < 5; ++attempt) written = recorder.flush();
    REQUIRE(written);
    CHECK(store->records.size() == 50);
    CHECK(recorder.dropped() == 0);
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
    REQUIRE(store.append(std::vector{record("t1", "key_a", "m", now - 1000, 10, 20, 0.5), record("t1", "key_a", "m", now - 40 * day, 1, 1, 9.0),
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
