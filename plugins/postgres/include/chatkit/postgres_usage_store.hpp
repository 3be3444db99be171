// chatkit::postgres_usage_store: usage records in the PostgreSQL database of the history (table
// chatkit_usage, created by postgres_store's migrations, whichever opens the database first). A
// chatkit::usage_store that every replica writes: a batch is one transaction, sent in one round
// trip (libpq's pipeline mode); reports are indexed GROUP BYs; a range's records are read in
// pages, so a large range never sits in memory whole.
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/postgres_connection_pool.hpp"
#include "chatkit/postgres_store.hpp"
#include "chatkit/usage_store.hpp"

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

namespace postgres_usage_store_detail {

inline const postgres_statement insert_usage{
    "chatkit_insert_usage",
    "INSERT INTO chatkit_usage (time, request_id, team_id, key_id, model, provider, status, prompt_tokens, completion_tokens, "
    "cached_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, cached, streamed, cancelled, estimated) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 <> 0, $16 <> 0, $17 <> 0, $18 <> 0)",
    {20, 17, 17, 17, 17, 17, 20, 20, 20, 20, 20, 701, 701, 701, 20, 20, 20, 20}};

// A group's totals, after its key: requests, tokens, the priced records' cost, and the records
// that used tokens without a price.
#define CHATKIT_POSTGRES_USAGE_TOTALS                                                                                                      \
    "count(*), coalesce(sum(prompt_tokens + completion_tokens), 0)::int8, coalesce(sum(cost_usd), 0)::float8, "                            \
    "count(*) FILTER (WHERE cost_usd IS NULL AND prompt_tokens + completion_tokens > 0) "
inline const postgres_statement usage_by_model{
    "chatkit_usage_by_model",
    "SELECT model, " CHATKIT_POSTGRES_USAGE_TOTALS
    "FROM chatkit_usage WHERE team_id = $1 AND time >= $2 AND time < $3 GROUP BY model ORDER BY 4 DESC, model",
    {17, 20, 20}};
inline const postgres_statement usage_by_day{
    "chatkit_usage_by_day",
    "SELECT to_char(to_timestamp(time / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, " CHATKIT_POSTGRES_USAGE_TOTALS
    "FROM chatkit_usage WHERE team_id = $1 AND time >= $2 AND time < $3 GROUP BY day ORDER BY day",
    {17, 20, 20}};
#undef CHATKIT_POSTGRES_USAGE_TOTALS

// A page of a range's records after `seq` $3 (columns in usage_record's order, then seq).
#define CHATKIT_POSTGRES_USAGE_COLUMNS                                                                                                     \
    "SELECT time, request_id, team_id, key_id, model, provider, status::int8, prompt_tokens::int8, completion_tokens::int8, "              \
    "cached_tokens::int8, reasoning_tokens::int8, cost_usd, latency_ms, ttft_ms, cached::int::int8, streamed::int::int8, "                 \
    "cancelled::int::int8, estimated::int::int8, seq FROM chatkit_usage "
inline const postgres_statement records_of_team{"chatkit_usage_records_of_team",
                                                CHATKIT_POSTGRES_USAGE_COLUMNS
                                                "WHERE team_id = $5 AND time >= $1 AND time < $2 AND seq > $3 ORDER BY seq LIMIT $4",
                                                {20, 20, 20, 20, 17}};
// The whole range of every team has no index of its own (both lead with a team or key): a
// dashboard's occasional read scans, rather than every write paying for one more index.
inline const postgres_statement records_of_all{"chatkit_usage_records_of_all",
                                               CHATKIT_POSTGRES_USAGE_COLUMNS
                                               "WHERE time >= $1 AND time < $2 AND seq > $3 ORDER BY seq LIMIT $4",
                                               {20, 20, 20, 20}};
#undef CHATKIT_POSTGRES_USAGE_COLUMNS

inline const postgres_statement spent_by_key{
    "chatkit_usage_spent_by_key",
    "SELECT coalesce(sum(cost_usd), 0)::float8 FROM chatkit_usage WHERE key_id = $1 AND time >= $2",
    {17, 20}};
inline const postgres_statement spent_by_team{
    "chatkit_usage_spent_by_team",
    "SELECT coalesce(sum(cost_usd), 0)::float8 FROM chatkit_usage WHERE team_id = $1 AND time >= $2",
    {17, 20}};

inline constexpr std::int64_t page_size = 2000;

} // namespace postgres_usage_store_detail

class postgres_usage_store {
public:
    // Connects (a pool of its own: the recorder writes one batch at a time, reports are occasional)
    // and migrates the schema as postgres_store does; throws as it does.
    explicit postgres_usage_store(postgres_options options) : pool_(std::move(options)) { postgres_store_detail::migrate(pool_); }

    postgres_usage_store(postgres_usage_store&&) noexcept = default;
    postgres_usage_store& operator=(postgres_usage_store&&) noexcept = default;

    // One transaction for the batch: all of it is stored, durably (once COMMIT returns), or none.
    result<void> append(std::span<const usage_record> batch) {
        using namespace postgres_usage_store_detail;
        if (batch.empty()) return {};
        postgres_connection_pool::lease::calls calls;
        calls.reserve(batch.size() + 2);
        calls.push_back({&postgres_store_detail::begin_transaction, {}});
        for (const auto& r : batch)
            calls.push_back(
                {&insert_usage,
                 {r.time, std::string_view{r.request_id}, std::string_view{r.team_id}, std::string_view{r.key_id},
                  std::string_view{r.model}, std::string_view{r.provider}, std::int64_t{r.status}, std::int64_t{r.usage.prompt_tokens},
                  std::int64_t{r.usage.completion_tokens}, std::int64_t{r.usage.cached_tokens}, std::int64_t{r.usage.reasoning_tokens},
                  r.cost_usd ? postgres_param::float8(*r.cost_usd) : postgres_param::null(), postgres_param::float8(r.latency_ms),
                  postgres_param::float8(r.time_to_first_token_ms), std::int64_t{r.cached}, std::int64_t{r.streamed},
                  std::int64_t{r.cancelled}, std::int64_t{r.estimated}}});
        calls.push_back({&postgres_store_detail::commit, {}});
        // BEGIN, the inserts and COMMIT in one round trip. A failure anywhere rolls the whole
        // transaction back (the server skips the rest of a failed pipeline), so the recorder may
        // write the batch again. Not retried here: a connection lost after COMMIT was sent leaves
        // it unknown whether the batch was stored.
        auto acquired = pool_.acquire();
        if (!acquired) return unavailable("write usage records to", acquired.error());
        auto done = acquired->pipeline(calls);
        if (!done) {
            if (!acquired->broken()) (void)acquired->exec("ROLLBACK");
            else pool_.close_idle();
            return unavailable("write usage records to", done.error());
        }
        return {};
    }

    result<usage_summary> summarize(const usage_query& q) {
        using namespace postgres_usage_store_detail;
        usage_summary out;
        const std::vector<postgres_param> params{std::string_view{q.team_id}, q.since, q.until};
        for (auto [statement, groups] : {std::pair{&usage_by_model, &out.by_model}, std::pair{&usage_by_day, &out.by_day}}) {
            auto rows = read("read usage from", *statement, params);
            if (!rows) return std::move(rows).error();
            const PGresult* r = rows->get();
            for (int i = 0; i < PQntuples(r); ++i)
                groups->emplace_back(postgres_bytes(r, i, 0), usage_totals{postgres_int8(r, i, 1), postgres_int8(r, i, 2),
                                                                           postgres_float8(r, i, 3), postgres_int8(r, i, 4)});
        }
        for (const auto& [model, t] : out.by_model) {
            out.total.requests += t.requests;
            out.total.tokens += t.tokens;
            out.total.cost_usd += t.cost_usd;
            out.total.unpriced_requests += t.unpriced_requests;
        }
        return out;
    }

    result<void> for_each_record(const usage_range& range, const usage_record_visitor& each) {
        using namespace postgres_usage_store_detail;
        // Pages in seq order: each is one short statement, and a large range never sits in memory.
        for (std::int64_t after = 0;;) {
            std::vector<postgres_param> params{range.since, range.until, after, page_size};
            if (range.team_id) params.emplace_back(std::string_view{*range.team_id});
            auto rows = read("read usage records from", range.team_id ? records_of_team : records_of_all, params);
            if (!rows) return std::move(rows).error();
            const PGresult* r = rows->get();
            const int n = PQntuples(r);
            for (int i = 0; i < n; ++i) {
                usage_record u;
                u.time = postgres_int8(r, i, 0);
                u.request_id = postgres_bytes(r, i, 1);
                u.team_id = postgres_bytes(r, i, 2);
                u.key_id = postgres_bytes(r, i, 3);
                u.model = postgres_bytes(r, i, 4);
                u.provider = postgres_bytes(r, i, 5);
                u.status = static_cast<int>(postgres_int8(r, i, 6));
                u.usage = {static_cast<int>(postgres_int8(r, i, 7)), static_cast<int>(postgres_int8(r, i, 8)),
                           static_cast<int>(postgres_int8(r, i, 9)), static_cast<int>(postgres_int8(r, i, 10))};
                if (!PQgetisnull(r, i, 11)) u.cost_usd = postgres_float8(r, i, 11);
                u.latency_ms = postgres_float8(r, i, 12);
                u.time_to_first_token_ms = postgres_float8(r, i, 13);
                u.cached = postgres_int8(r, i, 14) != 0;
                u.streamed = postgres_int8(r, i, 15) != 0;
                u.cancelled = postgres_int8(r, i, 16) != 0;
                u.estimated = postgres_int8(r, i, 17) != 0;
                each(u);
            }
            if (n < page_size) return {};
            after = postgres_int8(r, n - 1, 18);
        }
    }

    result<double> spent_usd(std::string_view scope, std::string_view id, unix_ms since) {
        using namespace postgres_usage_store_detail;
        auto rows = read("read spending from", scope == "team" ? spent_by_team : spent_by_key, {id, since});
        if (!rows) return std::move(rows).error();
        return postgres_float8(rows->get(), 0, 0);
    }

private:
    // A read: retried once on a fresh connection when an idle one had broken.
    result<postgres_result> read(std::string_view action, const postgres_statement& st, const std::vector<postgres_param>& params) {
        auto r = pool_.with_connection([&](postgres_connection_pool::lease& c) { return c.prepared(st, params); });
        if (!r) return unavailable(action, r.error());
        return r;
    }

    static error unavailable(std::string_view action, const error& why) {
        // The pool's messages name the server, never the password or a bound value.
        return {error_kind::unavailable, "cannot " + std::string{action} + " chatkit_usage: " + why.message, "store_unavailable"};
    }

    postgres_connection_pool pool_;
};
static_assert(usage_store<postgres_usage_store>);

} // namespace chatkit
