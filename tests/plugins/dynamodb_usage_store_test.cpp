// chatkit::dynamodb_usage_store against real DynamoDB emulators (dynalite and moto_server, each
// case on both): the same records as the SQLite store's test, summed as the reference model sums
// them, across Query pages; spending by key (through the index) and by team; the item as stored,
// its TTL included; batches larger than one BatchWriteItem, written twice without duplicates; and,
// through a proxy in front of moto, DynamoDB's UnprocessedItems, sent again or given up on.
#include "chatkit/dynamodb_usage_store.hpp"

#include "../support/usage_history.hpp"
#include "../support/aws_emulators.hpp"
#include "../support/dynamodb_proxy.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <vector>

using chatkit::dynamodb_usage_store;
using chatkit::dynamodb_usage_store_options;
using chatkit::error_kind;
using chatkit::usage_record;

namespace {

constexpr chatkit::unix_ms day = test_support::day_ms;
using test_support::dec1;
constexpr auto record = &test_support::usage_record_of;

test_support::emulator_process& dynalite() {
    static test_support::emulator_process e = test_support::start_dynalite();
    return e;
}
test_support::emulator_process& moto() {
    static test_support::emulator_process e = test_support::start_moto();
    return e;
}

std::string unique_table() {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    return "usage-" + std::to_string(run) + "-" + std::to_string(++n);
}

// A store on a new table of the emulator named "dynalite" or "moto".
dynamodb_usage_store make_store(const std::string& emulator, std::size_t query_page_size = 0) {
    dynamodb_usage_store_options o;
    o.table = unique_table();
    o.query_page_size = query_page_size;
    dynamodb_usage_store store{o, (emulator == "moto" ? moto() : dynalite()).aws_environment()};
    test_support::create_table(store.client(), dynamodb_usage_store::create_table_input(o.table));
    return store;
}

void check_same(const chatkit::usage_summary& got, const chatkit::usage_summary& want) {
    CHECK(got.total.requests == want.total.requests);
    CHECK(got.total.tokens == want.total.tokens);
    CHECK(got.total.cost_usd == Approx(want.total.cost_usd));
    CHECK(got.total.unpriced_requests == want.total.unpriced_requests);
    for (const auto& [got_groups, want_groups] : {std::pair{&got.by_model, &want.by_model}, std::pair{&got.by_day, &want.by_day}}) {
        REQUIRE(got_groups->size() == want_groups->size());
        for (std::size_t i = 0; i < got_groups->size(); ++i) {
            INFO("group " << (*want_groups)[i].first);
            CHECK((*got_groups)[i].first == (*want_groups)[i].first);
            CHECK((*got_groups)[i].second.requests == (*want_groups)[i].second.requests);
            CHECK((*got_groups)[i].second.tokens == (*want_groups)[i].second.tokens);
            CHECK((*got_groups)[i].second.cost_usd == Approx((*want_groups)[i].second.cost_usd));
            CHECK((*got_groups)[i].second.unpriced_requests == (*want_groups)[i].second.unpriced_requests);
        }
    }
}

nlohmann::json scan_all(dynamodb_usage_store& store) {
    auto all = store.client().call("Scan", {{"TableName", store.options().table}});
    REQUIRE(all);
    return (*all)["Items"];
}

} // namespace

TEST_CASE("dynamodb_usage_store: a team's usage by model and by day, as the reference model sums it, across Query pages") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    const std::size_t page_size = GENERATE(as<std::size_t>{}, 0, 2); // 2: every range spans several pages
    INFO("on " << emulator << ", pages of " << page_size);
    auto dynamodb = make_store(emulator, page_size);
    chatkit::memory_usage_store memory;
    const auto history = test_support::usage_history();
    REQUIRE(dynamodb.append(history));
    REQUIRE(memory.append(history));

    const chatkit::usage_query q{"t1", dec1, dec1 + 5 * day};
    auto got = dynamodb.summarize(q);
    auto want = memory.summarize(q);
    REQUIRE(got);
    REQUIRE(want);
    // What usage_test.cpp checks of the SQLite store, and then every group against the model.
    CHECK(got->total.requests == 5);
    CHECK(got->total.tokens == 100 + 50 + 10 + 5 + 40 + 10);
    CHECK(got->total.cost_usd == Approx(0.0035));
    CHECK(got->total.unpriced_requests == 1);
    REQUIRE(got->by_model.size() == 3);
    CHECK(got->by_model[0].first == "mini"); // the largest cost first
    CHECK(got->by_model[1].first == "gpt-4o");
    CHECK(got->by_model[2].first == "unpriced");
    CHECK(got->by_day.front().first == "2025-12-01");
    check_same(*got, *want);

    // The range is [since, until): a record at `until` is left out, one at `since` counted.
    check_same(dynamodb.summarize({"t1", dec1 + 1000, dec1 + 2 * day}).value(),
               memory.summarize({"t1", dec1 + 1000, dec1 + 2 * day}).value());
    CHECK(dynamodb.summarize({"t1", dec1 + 1000, dec1 + 2 * day})->total.requests == 3);
    // The requests made without authentication are a team of their own, "".
    check_same(dynamodb.summarize({"", dec1, dec1 + 5 * day}).value(), memory.summarize({"", dec1, dec1 + 5 * day}).value());
    CHECK(dynamodb.summarize({"", dec1, dec1 + 5 * day})->total.cost_usd == Approx(0.25));
    // An empty range is asked nothing.
    CHECK(dynamodb.summarize({"t1", dec1 + day, dec1 + day})->total.requests == 0);

    // Spending, per key (through the key_id-sk index) and per team, since a time.
    CHECK(dynamodb.spent_usd("key", "key_a", dec1).value() == Approx(5.0015));
    CHECK(dynamodb.spent_usd("key", "key_a", dec1 + day).value() == Approx(5.0005));
    CHECK(dynamodb.spent_usd("key", "key_b", dec1).value() == Approx(0.002)); // the unpriced ones add nothing
    CHECK(dynamodb.spent_usd("team", "t1", dec1 + day).value() == Approx(memory.spent_usd("team", "t1", dec1 + day).value()));
    CHECK(dynamodb.spent_usd("team", "t2", 0).value() == Approx(1.0));
    CHECK(dynamodb.spent_usd("team", "nobody", 0).value() == 0.0);
    CHECK(dynamodb.spent_usd("key", "", 0).value() == 0.0);
}

TEST_CASE("dynamodb_usage_store: a range's records, of one team (a Query) or of every team (a Scan), come back whole, across pages") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    const std::size_t page_size = GENERATE(as<std::size_t>{}, 0, 2);
    INFO("on " << emulator << ", pages of " << page_size);
    auto dynamodb = make_store(emulator, page_size);
    chatkit::memory_usage_store memory;
    auto history = test_support::usage_history();
    history[0].streamed = history[1].cached = history[2].cancelled = history[3].estimated = true;
    history[0].time_to_first_token_ms = 3.25;
    history[4].status = 429;
    REQUIRE(dynamodb.append(history));
    REQUIRE(memory.append(history));
    auto records_of = [](auto& store, const chatkit::usage_range& range) {
        std::vector<usage_record> out;
        REQUIRE(store.for_each_record(range, [&out](const usage_record& r) { out.push_back(r); }));
        std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.time < b.time; });
        return out;
    };
    for (const auto& range : {chatkit::usage_range{"t1", dec1, dec1 + 5 * day}, chatkit::usage_range{std::nullopt, dec1, dec1 + 5 * day},
                              chatkit::usage_range{"", dec1, dec1 + 5 * day}, chatkit::usage_range{std::nullopt, dec1 + 1000, dec1 + day},
                              chatkit::usage_range{"t1", dec1 + day, dec1 + day}}) {
        INFO("team " << range.team_id.value_or("(every team)") << ", from " << range.since << " to " << range.until);
        CHECK(records_of(dynamodb, range) == records_of(memory, range));
    }
    CHECK(records_of(dynamodb, {std::nullopt, dec1, dec1 + 5 * day}).size() == 7);
}

TEST_CASE(
    "dynamodb_usage_store: every field of a record is stored, an unpriced cost is absent, never 0, and expires_at is time + 90 days") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto store = make_store(emulator);
    auto priced = record("t1", "key_a", "gpt-4o", dec1 + 1234, 10, 20, 0.125);
    priced.usage = {10, 20, 4, 6};
    priced.latency_ms = 321.5;
    priced.time_to_first_token_ms = 45.25;
    priced.streamed = true;
    priced.cancelled = true;
    priced.estimated = true;
    auto unpriced = record("", "", "unpriced", dec1 + 5678, 7, 3, std::nullopt);
    unpriced.status = 502;
    unpriced.cached = true;
    REQUIRE(store.append(std::vector{priced, unpriced}));

    const auto items = scan_all(store);
    REQUIRE(items.size() == 2);
    for (const auto& item : items) {
        const bool is_priced = item["model"]["S"] == "gpt-4o";
        const auto& r = is_priced ? priced : unpriced;
        INFO(item.dump());
        CHECK(item["sk"]["S"] == (is_priced ? "1764547201234#req-1764547201234" : "1764547205678#req-1764547205678"));
        CHECK(item["pk"]["S"] == (is_priced ? "team#t1" : "team#"));
        CHECK(item["expires_at"]["N"] == std::to_string(r.time / 1000 + 90 * 86'400));
        CHECK(item["time"]["N"] == std::to_string(r.time));
        CHECK(item["status"]["N"] == std::to_string(r.status));
        CHECK(item["provider"]["S"] == "echo");
        CHECK(item["cached"]["BOOL"] == r.cached);
        CHECK(item["streamed"]["BOOL"] == r.streamed);
        CHECK(item["cancelled"]["BOOL"] == r.cancelled);
        CHECK(item["estimated"]["BOOL"] == r.estimated);
        CHECK(item["cached_tokens"]["N"] == std::to_string(r.usage.cached_tokens));
        CHECK(item["reasoning_tokens"]["N"] == std::to_string(r.usage.reasoning_tokens));
        if (is_priced) {
            CHECK(item["cost_usd"]["N"] == "0.125");
            CHECK(item["latency_ms"]["N"] == "321.5");
            CHECK(item["ttft_ms"]["N"] == "45.25");
            CHECK(item["key_id"]["S"] == "key_a");
            CHECK(item["team_id"]["S"] == "t1");
        } else {
            CHECK_FALSE(item.contains("cost_usd"));
            CHECK_FALSE(item.contains("key_id")); // not in the key index
            CHECK_FALSE(item.contains("team_id"));
        }
    }
    // Read back, the unpriced record counts as unpriced, not as free.
    auto s = store.summarize({"", dec1, dec1 + day});
    REQUIRE(s);
    CHECK(s->total.requests == 1);
    CHECK(s->total.unpriced_requests == 1);
    CHECK(s->total.cost_usd == 0.0);
}

TEST_CASE("dynamodb_usage_store: a batch larger than one BatchWriteItem is stored whole, and writing it again duplicates nothing") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto store = make_store(emulator, 10);
    std::vector<usage_record> batch;
    for (int i = 0; i < 60; ++i) batch.push_back(record("t", "key_" + std::to_string(i % 2), "m", dec1 + i, 1, 1, 0.5));
    // A client may send the same X-Request-ID twice; two records in one millisecond are both kept.
    batch.push_back(batch.back());
    REQUIRE(store.append(batch));
    CHECK(store.summarize({"t", dec1, dec1 + day})->total.requests == 61);

    // The recorder writes a batch again after a failure; the items are the same ones.
    REQUIRE(store.append(batch));
    CHECK(scan_all(store).size() == 61);
    CHECK(store.summarize({"t", dec1, dec1 + day})->total.cost_usd == Approx(30.5));
    CHECK(store.spent_usd("key", "key_1", dec1).value() == Approx(15.5));
    CHECK(store.spent_usd("team", "t", dec1 + 50).value() == Approx(5.5));
}

TEST_CASE("dynamodb_usage_store: a ttl of 0 writes no expires_at") {
    dynamodb_usage_store_options o;
    o.table = unique_table();
    o.ttl = std::chrono::seconds{0};
    dynamodb_usage_store store{o, dynalite().aws_environment()};
    test_support::create_table(store.client(), dynamodb_usage_store::create_table_input(o.table));
    REQUIRE(store.append(std::vector{record("t", "k", "m", dec1, 1, 1, 0.1)}));
    const auto items = scan_all(store);
    REQUIRE(items.size() == 1);
    CHECK_FALSE(items[0].contains("expires_at"));
}

TEST_CASE("dynamodb_usage_store: a missing table is an unavailable error that names it, never an exception") {
    dynamodb_usage_store_options o;
    o.table = "no-such-table-" + unique_table();
    o.client.retries.max_retries = 0;
    dynamodb_usage_store store{o, dynalite().aws_environment()};
    auto written = store.append(std::vector{record("t", "k", "m", dec1, 1, 1, 0.1)});
    REQUIRE_FALSE(written);
    CHECK(written.error().kind == error_kind::unavailable);
    CHECK(written.error().message.find(o.table) != std::string::npos);
    auto summary = store.summarize({"t", 0, dec1});
    REQUIRE_FALSE(summary);
    CHECK(summary.error().kind == error_kind::unavailable);
    auto spent = store.spent_usd("key", "k", 0);
    REQUIRE_FALSE(spent);
    CHECK(spent.error().kind == error_kind::unavailable);
}

TEST_CASE("dynamodb_usage_store: the database URL names the usage table, TABLE-usage unless usage_table says otherwise") {
    auto plain = chatkit::parse_dynamodb_url("dynamodb://chat-history?region=eu-west-1");
    REQUIRE(plain);
    CHECK(plain->usage_table == "chat-history-usage");
    const auto o = dynamodb_usage_store_options::of(*plain);
    CHECK(o.table == "chat-history-usage");
    CHECK(o.client.region == "eu-west-1");
    CHECK(o.ttl == std::chrono::hours{24 * 90});

    auto named = chatkit::parse_dynamodb_url("dynamodb://chat-history?usage_table=team-usage&keys_table=team-keys");
    REQUIRE(named);
    CHECK(dynamodb_usage_store_options::of(*named).table == "team-usage");

    CHECK(chatkit::parse_dynamodb_url("dynamodb://chat?usage_table=x").error().code == "invalid_database_url");
    auto too_long = chatkit::parse_dynamodb_url("dynamodb://" + std::string(250, 'h') + "?keys_table=keys");
    REQUIRE_FALSE(too_long);
    CHECK(too_long.error().message.find("usage_table") != std::string::npos);
}

namespace {

// A store that talks to moto through `proxy`, on a table created directly.
dynamodb_usage_store store_behind(const test_support::dynamodb_proxy& proxy, const std::string& table, int unprocessed_retries) {
    dynamodb_usage_store_options o;
    o.table = table;
    o.unprocessed_retries = unprocessed_retries;
    o.unprocessed_backoff = std::chrono::milliseconds{1};
    return dynamodb_usage_store{o, moto().aws_environment({{"AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint()}})};
}

// BatchWriteItem's answer with `count` of the request's puts (the last ones) as unprocessed.
void answer_unprocessed(const std::string& request_body, std::size_t count, httplib::Response& res) {
    const auto request = nlohmann::json::parse(request_body)["RequestItems"];
    nlohmann::json unprocessed = nlohmann::json::object();
    for (const auto& [table, puts] : request.items()) {
        const auto from = puts.size() - std::min(count, puts.size());
        unprocessed[table] = nlohmann::json(std::vector<nlohmann::json>(puts.begin() + static_cast<std::ptrdiff_t>(from), puts.end()));
    }
    res.status = 200;
    res.set_content(nlohmann::json{{"UnprocessedItems", unprocessed}}.dump(), "application/x-amz-json-1.0");
}

} // namespace

TEST_CASE("dynamodb_usage_store: UnprocessedItems are sent again until every record is written") {
    const auto table = unique_table();
    {
        dynamodb_usage_store admin{{.table = table}, moto().aws_environment()};
        test_support::create_table(admin.client(), dynamodb_usage_store::create_table_input(table));
    }
    // The first two BatchWriteItems are forwarded but answered as if their last 7 puts had not
    // been processed (a throttled partition): the store sends those 7 again.
    std::atomic<int> throttled{0};
    std::vector<std::size_t> sizes;
    std::mutex sizes_mutex;
    test_support::dynamodb_proxy proxy{
        moto().port(), [&](const std::string& target, const std::string& body, const auto& forward, httplib::Response& res) {
            if (target != "DynamoDB_20120810.BatchWriteItem") return false;
            {
                std::lock_guard lock{sizes_mutex};
                sizes.push_back(nlohmann::json::parse(body)["RequestItems"][table].size());
            }
            if (throttled++ >= 2) return false;
            REQUIRE(forward());
            answer_unprocessed(body, 7, res);
            return true;
        }};
    auto store = store_behind(proxy, table, 6);
    std::vector<usage_record> batch;
    for (int i = 0; i < 30; ++i) batch.push_back(record("t", "k", "m", dec1 + i, 1, 1, 0.25));
    REQUIRE(store.append(batch));
    // 30 records: 25 (7 unprocessed), those 7 again (7 unprocessed), those 7 once more, then 5.
    CHECK(sizes == std::vector<std::size_t>{25, 7, 7, 5});
    CHECK(store.summarize({"t", dec1, dec1 + day})->total.requests == 30);
    CHECK(store.summarize({"t", dec1, dec1 + day})->total.cost_usd == Approx(7.5));
}

TEST_CASE(
    "dynamodb_usage_store: puts still unprocessed after the bounded retries are an unavailable error, and the batch can be written again") {
    const auto table = unique_table();
    {
        dynamodb_usage_store admin{{.table = table}, moto().aws_environment()};
        test_support::create_table(admin.client(), dynamodb_usage_store::create_table_input(table));
    }
    // Every BatchWriteItem is forwarded, but answered with all its puts but the first unprocessed.
    std::atomic<bool> throttling{true};
    test_support::dynamodb_proxy proxy{
        moto().port(), [&](const std::string& target, const std::string& body, const auto& forward, httplib::Response& res) {
            if (target != "DynamoDB_20120810.BatchWriteItem" || !throttling) return false;
            REQUIRE(forward());
            const auto n = nlohmann::json::parse(body)["RequestItems"][table].size();
            answer_unprocessed(body, n - 1, res);
            return true;
        }};
    auto store = store_behind(proxy, table, 2);
    std::vector<usage_record> batch;
    for (int i = 0; i < 10; ++i) batch.push_back(record("t", "k", "m", dec1 + i, 1, 1, 0.5));
    auto failed = store.append(batch);
    REQUIRE_FALSE(failed);
    CHECK(failed.error().kind == error_kind::unavailable);
    CHECK(failed.error().message.find(table) != std::string::npos);
    CHECK(failed.error().message.find("unprocessed") != std::string::npos);
    CHECK(proxy.count("DynamoDB_20120810.BatchWriteItem") == 3); // the first call and 2 retries

    // The recorder writes the whole batch again once the table takes writes: every record once.
    throttling = false;
    REQUIRE(store.append(batch));
    CHECK(scan_all(store).size() == 10);
    CHECK(store.spent_usd("key", "k", 0).value() == Approx(5.0));
}
