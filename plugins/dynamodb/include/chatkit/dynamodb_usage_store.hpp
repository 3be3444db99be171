// chatkit::dynamodb_usage_store: usage records in a DynamoDB table, for deployments whose history
// is in DynamoDB (Lambda). A chatkit::usage_store: a batch is BatchWriteItem calls of 25 items,
// reports are Queries of one team's partition aggregated in memory (every team's records: a Scan).
//
// Table design: one item per record.
//   pk            (S, partition key)  "team#<team id>"; "team#" for requests made without
//                 authentication. A prefix rather than the bare id, because a key cannot be an
//                 empty string and any placeholder ("-") could also be some team's id.
//   sk            (S, sort key)  "<time ms, 13 digits>#<request id>", so a team's records in a
//                 period are one Query with a key range, oldest first
//   expires_at    (N, epoch seconds)  time + 90 days by default: the table's TTL attribute
//   time (N, ms), request_id, team_id, key_id, model, provider (S; absent when empty),
//   status, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens (N),
//   cost_usd (N; absent when unpriced, never 0), latency_ms, ttft_ms (N),
//   cached, streamed, cancelled, estimated (BOOL)
// and a global secondary index "key_id-sk" (partition key_id, sort sk, projecting cost_usd) that
// a key's spending is read from; records without a key (no key_id attribute) are not in it.
//
// A record's key is made of what it is (team, time, request id), not drawn at random, so writing
// a record twice overwrites the same item: when a batch fails half-way and the recorder writes it
// again, no record is stored twice. Two records of one team with the same time and request id in
// one batch (a client may choose its X-Request-ID) get "#2", "#3"... after the second and later
// ones: BatchWriteItem refuses a call that names one key twice. The table's name: the
// `usage_table` of the database URL, by default "<history table>-usage" (parse_dynamodb_url).
#pragma once

#include "chatkit/aws/json_client.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/dynamodb_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/usage_store.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace chatkit {

struct dynamodb_usage_store_options {
    std::string table;
    // Items expire this long after their record's time (the table's TTL on `expires_at` deletes
    // them, days late). 0: no expires_at, kept forever.
    std::chrono::seconds ttl = std::chrono::hours{24 * 90};
    // Items per Query page (Query's Limit); 0: DynamoDB's own pages of up to 1 MB. Only tests need
    // a smaller one, to cross page boundaries with a few records.
    std::size_t query_page_size = 0;
    // How many times a BatchWriteItem's UnprocessedItems (DynamoDB's answer when a partition is
    // throttled) are sent again, waiting unprocessed_backoff, then twice as long each time (at most
    // 2 s), before append gives up with an unavailable error and the recorder retries the batch.
    int unprocessed_retries = 6;
    std::chrono::milliseconds unprocessed_backoff{50};
    aws::json_client_options client{}; // region, endpoint (AWS_ENDPOINT_URL_DYNAMODB), timeouts, retries

    // The usage table of the database a URL names: its usage_table, in the history's region and
    // through the same endpoint settings.
    static dynamodb_usage_store_options of(const dynamodb_options& database) {
        dynamodb_usage_store_options o;
        o.table = database.usage_table.empty() ? database.table + "-usage" : database.usage_table;
        o.client = database.client;
        return o;
    }
};

class dynamodb_usage_store {
public:
    static constexpr std::string_view key_index = "key_id-sk";

    // Throws std::invalid_argument when no region can be found or the endpoint is unusable. The
    // table must exist (see create_table_input()); nothing is called until the first append.
    explicit dynamodb_usage_store(dynamodb_usage_store_options options, aws::environment env = aws::process_environment())
        : options_(std::move(options)), client_(dynamodb_store::service(), options_.client, std::move(env)) {}

    // A CreateTable input for this design (on-demand billing), e.g. for a local emulator; the
    // deployment template creates the same table with TTL and backups turned on.
    static nlohmann::json create_table_input(const std::string& table) {
        return {{"TableName", table},
                {"AttributeDefinitions",
                 {{{"AttributeName", "pk"}, {"AttributeType", "S"}},
                  {{"AttributeName", "sk"}, {"AttributeType", "S"}},
                  {{"AttributeName", "key_id"}, {"AttributeType", "S"}}}},
                {"KeySchema", {{{"AttributeName", "pk"}, {"KeyType", "HASH"}}, {{"AttributeName", "sk"}, {"KeyType", "RANGE"}}}},
                {"GlobalSecondaryIndexes",
                 {{{"IndexName", key_index},
                   {"KeySchema", {{{"AttributeName", "key_id"}, {"KeyType", "HASH"}}, {{"AttributeName", "sk"}, {"KeyType", "RANGE"}}}},
                   {"Projection", {{"ProjectionType", "INCLUDE"}, {"NonKeyAttributes", {"cost_usd"}}}}}}},
                {"BillingMode", "PAY_PER_REQUEST"}};
    }

    // Every record is stored, or the answer is an unavailable error; the batch may then be
    // written again whole without storing any record twice (see the header's comment).
    result<void> append(std::span<const usage_record> batch) {
        std::vector<nlohmann::json> requests;
        requests.reserve(batch.size());
        std::map<std::pair<std::string, std::string>, int> seen; // (pk, sk) → times used in this batch
        for (const auto& r : batch) {
            nlohmann::json item = to_item(r);
            const int n = ++seen[{item["pk"]["S"].get<std::string>(), item["sk"]["S"].get<std::string>()}];
            if (n > 1) item["sk"]["S"] = item["sk"]["S"].get<std::string>() + "#" + std::to_string(n);
            requests.push_back({{"PutRequest", {{"Item", std::move(item)}}}});
        }
        constexpr std::size_t max_per_call = 25; // BatchWriteItem's limit
        for (std::size_t at = 0; at < requests.size(); at += max_per_call) {
            const auto end = std::min(requests.size(), at + max_per_call);
            nlohmann::json pending = nlohmann::json::array();
            for (std::size_t i = at; i < end; ++i) pending.push_back(requests[i]);
            if (auto written = write_all(std::move(pending)); !written) return written;
        }
        return {};
    }

    result<usage_summary> summarize(const usage_query& q) {
        usage_summary s;
        if (q.until <= q.since) return s; // BETWEEN refuses an upper bound below the lower
        std::map<std::string, usage_totals, std::less<>> by_model, by_day;
        // BETWEEN is inclusive: "<until>" sorts before every "<until>#...", so the range is
        // exactly [since, until).
        nlohmann::json input = {
            {"TableName", options_.table},
            {"KeyConditionExpression", "pk = :pk AND sk BETWEEN :lo AND :hi"},
            {"ExpressionAttributeValues",
             {{":pk", {{"S", partition(q.team_id)}}}, {":lo", {{"S", time_key(q.since)}}}, {":hi", {{"S", time_key(q.until)}}}}}};
        auto read = for_each_item(std::move(input), [&](const nlohmann::json& item) -> bool {
            auto r = from_item(item);
            if (!r) return false;
            memory_usage_store::add(s.total, *r);
            memory_usage_store::add(by_model[r->model], *r);
            memory_usage_store::add(by_day[format_rfc3339(r->time).substr(0, 10)], *r);
            return true;
        });
        if (!read) return read.error();
        s.by_model.assign(by_model.begin(), by_model.end());
        // Largest cost first; models of equal cost by name (the map's order), as SQLite orders them.
        std::stable_sort(s.by_model.begin(), s.by_model.end(),
                         [](const auto& a, const auto& b) { return a.second.cost_usd > b.second.cost_usd; });
        s.by_day.assign(by_day.begin(), by_day.end()); // "YYYY-MM-DD" sorts oldest first
        return s;
    }

    // One team's records are a Query of its partition; every team's a Scan of the table filtered on
    // time, which reads (and pays for) the whole table: a dashboard's occasional read, not a hot path.
    result<void> for_each_record(const usage_range& range, const usage_record_visitor& each) {
        if (range.until <= range.since) return {};
        nlohmann::json input = {{"TableName", options_.table}};
        std::string_view operation = "Query";
        if (range.team_id) {
            input["KeyConditionExpression"] = "pk = :pk AND sk BETWEEN :lo AND :hi"; // [since, until), as in summarize
            input["ExpressionAttributeValues"] = {{":pk", {{"S", partition(*range.team_id)}}},
                                                  {":lo", {{"S", time_key(range.since)}}},
                                                  {":hi", {{"S", time_key(range.until)}}}};
        } else {
            operation = "Scan";
            input["FilterExpression"] = "#t >= :lo AND #t < :hi"; // "time" is a reserved word
            input["ExpressionAttributeNames"] = {{"#t", "time"}};
            input["ExpressionAttributeValues"] = {{":lo", number(range.since)}, {":hi", number(range.until)}};
        }
        return for_each_item(
            std::move(input),
            [&each](const nlohmann::json& item) {
                auto r = from_item(item);
                if (!r) return false;
                each(*r);
                return true;
            },
            operation);
    }

    // A team's spending is read from its partition; a key's from the key_id-sk index. Every Query
    // here is eventually consistent (an index allows no other, and they cost half the read units):
    // a record written a moment ago may be missed, as it may still be queued in the recorder anyway.
    result<double> spent_usd(std::string_view scope, std::string_view id, unix_ms since) {
        nlohmann::json input = {{"TableName", options_.table}, {"ProjectionExpression", "cost_usd"}};
        if (scope == "team") {
            input["KeyConditionExpression"] = "pk = :id AND sk >= :lo";
            input["ExpressionAttributeValues"] = {{":id", {{"S", partition(id)}}}, {":lo", {{"S", time_key(since)}}}};
        } else {
            if (id.empty()) return 0.0; // no record is indexed under an empty key
            input["IndexName"] = key_index;
            input["KeyConditionExpression"] = "key_id = :id AND sk >= :lo";
            input["ExpressionAttributeValues"] = {{":id", {{"S", std::string{id}}}}, {":lo", {{"S", time_key(since)}}}};
        }
        double sum = 0;
        auto read = for_each_item(std::move(input), [&sum](const nlohmann::json& item) {
            if (!item.contains("cost_usd")) return true; // unpriced
            const auto cost = decimal_attr(item, "cost_usd");
            if (!cost) return false;
            sum += *cost;
            return true;
        });
        if (!read) return read.error();
        return sum;
    }

    [[nodiscard]] const dynamodb_usage_store_options& options() const noexcept { return options_; }
    [[nodiscard]] aws::json_client& client() noexcept { return client_; }

private:
    static std::string partition(std::string_view team_id) { return "team#" + std::string{team_id}; }
    static std::string time_key(unix_ms t) {
        char key[24];
        std::snprintf(key, sizeof key, "%013lld", static_cast<long long>(std::max<unix_ms>(t, 0)));
        return key;
    }

    static nlohmann::json number(std::int64_t n) { return {{"N", std::to_string(n)}}; }
    // nlohmann writes the shortest text that reads back as the same double, as DynamoDB's N wants;
    // N holds no NaN or infinity, so a latency that is not finite is stored as 0.
    static nlohmann::json decimal(double d) { return {{"N", nlohmann::json(std::isfinite(d) ? d : 0.0).dump()}}; }

    nlohmann::json to_item(const usage_record& r) const {
        nlohmann::json item = {{"pk", {{"S", partition(r.team_id)}}},
                               {"sk", {{"S", time_key(r.time) + "#" + r.request_id}}},
                               {"time", number(r.time)},
                               {"status", number(r.status)},
                               {"prompt_tokens", number(r.usage.prompt_tokens)},
                               {"completion_tokens", number(r.usage.completion_tokens)},
                               {"cached_tokens", number(r.usage.cached_tokens)},
                               {"reasoning_tokens", number(r.usage.reasoning_tokens)},
                               {"latency_ms", decimal(r.latency_ms)},
                               {"ttft_ms", decimal(r.time_to_first_token_ms)},
                               {"cached", {{"BOOL", r.cached}}},
                               {"streamed", {{"BOOL", r.streamed}}},
                               {"cancelled", {{"BOOL", r.cancelled}}},
                               {"estimated", {{"BOOL", r.estimated}}}};
        // Empty strings are left out: key_id may not be one (it keys the index), and the others
        // read back as empty when absent.
        for (const auto& [name, value] : {std::pair{"request_id", &r.request_id}, std::pair{"team_id", &r.team_id},
                                          std::pair{"key_id", &r.key_id}, std::pair{"model", &r.model}, std::pair{"provider", &r.provider}})
            if (!value->empty()) item[name] = {{"S", *value}};
        if (r.cost_usd) item["cost_usd"] = decimal(*r.cost_usd);
        if (options_.ttl.count() > 0) item["expires_at"] = number(std::max<unix_ms>(r.time, 0) / 1000 + options_.ttl.count());
        return item;
    }

    static std::optional<std::int64_t> integer_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end()) return std::int64_t{0};
        if (!it->is_object() || !it->contains("N") || !(*it)["N"].is_string()) return std::nullopt;
        const auto& text = (*it)["N"].get_ref<const std::string&>();
        std::int64_t n = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
        if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
        return n;
    }
    static std::optional<double> decimal_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end() || !it->is_object() || !it->contains("N") || !(*it)["N"].is_string()) return std::nullopt;
        const auto& text = (*it)["N"].get_ref<const std::string&>();
        double d = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), d);
        if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
        return d;
    }
    static std::string string_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end() || !it->is_object() || !it->contains("S") || !(*it)["S"].is_string()) return {};
        return (*it)["S"].get<std::string>();
    }
    static bool bool_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        return it != item.end() && it->is_object() && it->value("BOOL", false);
    }

    // The record an item holds; nullopt when it is not one (a number that does not read).
    static std::optional<usage_record> from_item(const nlohmann::json& item) {
        usage_record r;
        const auto time = integer_attr(item, "time"), status = integer_attr(item, "status");
        const auto prompt = integer_attr(item, "prompt_tokens"), completion = integer_attr(item, "completion_tokens");
        const auto cached = integer_attr(item, "cached_tokens"), reasoning = integer_attr(item, "reasoning_tokens");
        if (!time || !status || !prompt || !completion || !cached || !reasoning) return std::nullopt;
        r.time = *time;
        r.status = static_cast<int>(*status);
        r.usage = {static_cast<int>(*prompt), static_cast<int>(*completion), static_cast<int>(*cached), static_cast<int>(*reasoning)};
        if (item.contains("cost_usd")) {
            r.cost_usd = decimal_attr(item, "cost_usd");
            if (!r.cost_usd) return std::nullopt;
        }
        r.request_id = string_attr(item, "request_id");
        r.team_id = string_attr(item, "team_id");
        r.key_id = string_attr(item, "key_id");
        r.model = string_attr(item, "model");
        r.provider = string_attr(item, "provider");
        r.latency_ms = decimal_attr(item, "latency_ms").value_or(0);
        r.time_to_first_token_ms = decimal_attr(item, "ttft_ms").value_or(0);
        r.cached = bool_attr(item, "cached");
        r.streamed = bool_attr(item, "streamed");
        r.cancelled = bool_attr(item, "cancelled");
        r.estimated = bool_attr(item, "estimated");
        return r;
    }

    // One BatchWriteItem of at most 25 puts, then its UnprocessedItems again, a bounded number of
    // times with a growing wait.
    result<void> write_all(nlohmann::json pending) {
        auto wait = options_.unprocessed_backoff;
        for (int attempt = 0;; ++attempt) {
            auto answer = client_.call("BatchWriteItem", {{"RequestItems", {{options_.table, pending}}}});
            if (!answer) return unavailable("write usage records", std::move(answer).error());
            const auto unprocessed = answer->find("UnprocessedItems");
            if (unprocessed == answer->end() || !unprocessed->is_object() || !unprocessed->contains(options_.table) ||
                (*unprocessed)[options_.table].empty())
                return {};
            pending = (*unprocessed)[options_.table];
            if (attempt == options_.unprocessed_retries)
                return error{error_kind::unavailable,
                             "usage store (DynamoDB table " + options_.table + "): " + std::to_string(pending.size()) +
                                 " records were still unprocessed after " + std::to_string(attempt + 1) + " BatchWriteItem calls",
                             "store_unavailable"};
            std::this_thread::sleep_for(wait);
            wait = std::min<std::chrono::milliseconds>(wait * 2, std::chrono::seconds{2});
        }
    }

    // Runs a Query (or a Scan) to its last page, handing each item to `each` (false: the item is
    // unreadable).
    template <class Each>
    result<void> for_each_item(nlohmann::json input, Each&& each, std::string_view operation = "Query") {
        if (options_.query_page_size > 0) input["Limit"] = options_.query_page_size;
        for (;;) {
            // Each operation named in full: the deployment template's checks read the calls made here.
            auto page = operation == "Scan" ? client_.call("Scan", input) : client_.call("Query", input);
            if (!page) return unavailable("read usage records", std::move(page).error());
            const auto items = page->find("Items");
            if (items == page->end() || !items->is_array()) return malformed(std::string{operation} + " answered without Items");
            for (const auto& item : *items)
                if (!each(item)) return malformed("the item '" + string_attr(item, "sk") + "' is not a chatkit usage record");
            // Pages end at Limit items or 1 MB; LastEvaluatedKey says where the next begins.
            const auto last = page->find("LastEvaluatedKey");
            if (last == page->end() || !last->is_object() || last->empty()) return {};
            input["ExclusiveStartKey"] = *last;
        }
    }

    // A table that cannot be written or read is unavailable, whatever DynamoDB said: the recorder
    // keeps the batch and retries it; a report or a budget answers 503.
    error unavailable(std::string_view action, error e) const {
        e.kind = error_kind::unavailable;
        e.message = "usage store (DynamoDB table " + options_.table + ") could not " + std::string{action} + ": " + e.message;
        return e;
    }
    error malformed(std::string what) const {
        return {error_kind::unavailable, "usage store (DynamoDB table " + options_.table + "): " + std::move(what), "store_malformed"};
    }

    dynamodb_usage_store_options options_;
    aws::json_client client_;
};
static_assert(usage_store<dynamodb_usage_store>);

} // namespace chatkit
