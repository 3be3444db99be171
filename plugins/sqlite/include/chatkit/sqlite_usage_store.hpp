// chatkit::sqlite_usage_store: usage records in the same SQLite file as the history (table `usage`,
// created by sqlite_store's migrations, whichever opens the file first). A chatkit::usage_store:
// a batch is one transaction (the recorder's group commit), reports are indexed GROUP BYs, and a
// range's records are read back row by row.
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/sqlite_store.hpp"
#include "chatkit/usage_store.hpp"

#include <sqlite3.h>

#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

namespace chatkit {

class sqlite_usage_store {
public:
    // Opens or creates the file and migrates it (as sqlite_store does); throws std::runtime_error
    // naming the path.
    explicit sqlite_usage_store(sqlite_options options = {}) : state_(std::make_unique<state>()) {
        using namespace sqlite_detail;
        const std::string& path = options.path;
        if (path.empty() || path == ":memory:") fail(path, "cannot use", "sqlite_usage_store needs a database file");
        auto& s = *state_;
        s.path = path;
        s.writer = open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, options.busy_timeout);
        sqlite3* w = s.writer.get();
        if (query_value(w, path, "PRAGMA journal_mode = WAL") != "wal")
            fail(path, "cannot use", "the file does not support WAL journaling");
        exec(w, path, options.durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
        migrate(w, path);
        s.insert = prepare(
            w, path,
            "INSERT INTO usage (time, request_id, team_id, key_id, model, provider, status, prompt_tokens, "
            "completion_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, cached, streamed, "
            "cancelled, estimated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)");
        // Reads on their own connection (WAL): a report never waits for a batch's fsync.
        s.reader = open_db(path, SQLITE_OPEN_READONLY, options.busy_timeout);
        sqlite3* r = s.reader.get();
        constexpr std::string_view totals = "COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost_usd), 0), "
                                            "COALESCE(SUM(cost_usd IS NULL AND prompt_tokens + completion_tokens > 0), 0)";
        s.by_model = prepare(r, path,
                             "SELECT model, " + std::string{totals} +
                                 " FROM usage WHERE team_id = ?1 AND time >= ?2 AND time < ?3 GROUP BY model ORDER BY 4 DESC, model");
        s.by_day = prepare(r, path,
                           "SELECT strftime('%Y-%m-%d', time / 1000, 'unixepoch') AS day, " + std::string{totals} +
                               " FROM usage WHERE team_id = ?1 AND time >= ?2 AND time < ?3 GROUP BY day ORDER BY day");
        // The whole range for every team has no index of its own (usage_by_team leads with the team):
        // a dashboard's occasional read scans the table rather than every write paying for one more index.
        constexpr std::string_view columns = "SELECT time, request_id, team_id, key_id, model, provider, status, prompt_tokens, "
                                             "completion_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, "
                                             "cached, streamed, cancelled, estimated FROM usage ";
        s.records_of_team = prepare(r, path, std::string{columns} + "WHERE team_id = ?3 AND time >= ?1 AND time < ?2");
        s.records_of_all = prepare(r, path, std::string{columns} + "WHERE time >= ?1 AND time < ?2");
        s.spent_by_key = prepare(r, path, "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE key_id = ?1 AND time >= ?2");
        s.spent_by_team = prepare(r, path, "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE team_id = ?1 AND time >= ?2");
    }

    sqlite_usage_store(sqlite_usage_store&&) noexcept = default;
    sqlite_usage_store& operator=(sqlite_usage_store&&) noexcept = default;

    // One transaction for the batch: all of it is stored, durably, or none.
    result<void> append(std::span<const usage_record> batch) {
        using namespace sqlite_detail;
        if (batch.empty()) return {};
        auto& s = *state_;
        const std::lock_guard lock{s.write_mutex};
        sqlite3* w = s.writer.get();
        if (int rc = sqlite3_exec(w, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr); rc != SQLITE_OK)
            return unavailable(w, "write usage records to", rc);
        sqlite3_stmt* st = s.insert.get();
        for (const auto& r : batch) {
            statement_use use{st};
            sqlite3_bind_int64(st, 1, r.time);
            bind_text(st, 2, r.request_id);
            bind_text(st, 3, r.team_id);
            bind_text(st, 4, r.key_id);
            bind_text(st, 5, r.model);
            bind_text(st, 6, r.provider);
            sqlite3_bind_int(st, 7, r.status);
            sqlite3_bind_int(st, 8, r.usage.prompt_tokens);
            sqlite3_bind_int(st, 9, r.usage.completion_tokens);
            sqlite3_bind_int(st, 10, r.usage.cached_tokens);
            sqlite3_bind_int(st, 11, r.usage.reasoning_tokens);
            if (r.cost_usd) sqlite3_bind_double(st, 12, *r.cost_usd);
            else sqlite3_bind_null(st, 12);
            sqlite3_bind_double(st, 13, r.latency_ms);
            sqlite3_bind_double(st, 14, r.time_to_first_token_ms);
            sqlite3_bind_int(st, 15, r.cached);
            sqlite3_bind_int(st, 16, r.streamed);
            sqlite3_bind_int(st, 17, r.cancelled);
            sqlite3_bind_int(st, 18, r.estimated);
            if (int rc = sqlite3_step(st); rc != SQLITE_DONE) {
                auto e = unavailable(w, "write usage records to", rc);
                sqlite3_exec(w, "ROLLBACK", nullptr, nullptr, nullptr);
                return e;
            }
        }
        if (int rc = sqlite3_exec(w, "COMMIT", nullptr, nullptr, nullptr); rc != SQLITE_OK) {
            auto e = unavailable(w, "commit usage records to", rc);
            sqlite3_exec(w, "ROLLBACK", nullptr, nullptr, nullptr);
            return e;
        }
        return {};
    }

    result<usage_summary> summarize(const usage_query& q) {
        auto& s = *state_;
        const std::lock_guard lock{s.read_mutex};
        usage_summary out;
        if (auto e = group(s.by_model.get(), q, out.by_model)) return *e;
        if (auto e = group(s.by_day.get(), q, out.by_day)) return *e;
        for (const auto& [model, t] : out.by_model) {
            out.total.requests += t.requests;
            out.total.tokens += t.tokens;
            out.total.cost_usd += t.cost_usd;
            out.total.unpriced_requests += t.unpriced_requests;
        }
        return out;
    }

    result<void> for_each_record(const usage_range& range, const usage_record_visitor& each) {
        using namespace sqlite_detail;
        auto& s = *state_;
        const std::lock_guard lock{s.read_mutex};
        sqlite3_stmt* st = range.team_id ? s.records_of_team.get() : s.records_of_all.get();
        statement_use use{st};
        sqlite3_bind_int64(st, 1, range.since);
        sqlite3_bind_int64(st, 2, range.until);
        if (range.team_id) bind_text(st, 3, *range.team_id);
        int rc = SQLITE_DONE;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            usage_record r;
            r.time = sqlite3_column_int64(st, 0);
            r.request_id = column_text(st, 1);
            r.team_id = column_text(st, 2);
            r.key_id = column_text(st, 3);
            r.model = column_text(st, 4);
            r.provider = column_text(st, 5);
            r.status = sqlite3_column_int(st, 6);
            r.usage = {sqlite3_column_int(st, 7), sqlite3_column_int(st, 8), sqlite3_column_int(st, 9), sqlite3_column_int(st, 10)};
            if (sqlite3_column_type(st, 11) != SQLITE_NULL) r.cost_usd = sqlite3_column_double(st, 11);
            r.latency_ms = sqlite3_column_double(st, 12);
            r.time_to_first_token_ms = sqlite3_column_double(st, 13);
            r.cached = sqlite3_column_int(st, 14) != 0;
            r.streamed = sqlite3_column_int(st, 15) != 0;
            r.cancelled = sqlite3_column_int(st, 16) != 0;
            r.estimated = sqlite3_column_int(st, 17) != 0;
            each(r);
        }
        if (rc != SQLITE_DONE) return unavailable(s.reader.get(), "read usage records from", rc);
        return {};
    }

    result<double> spent_usd(std::string_view scope, std::string_view id, unix_ms since) {
        using namespace sqlite_detail;
        auto& s = *state_;
        const std::lock_guard lock{s.read_mutex};
        sqlite3_stmt* st = scope == "team" ? s.spent_by_team.get() : s.spent_by_key.get();
        statement_use use{st};
        bind_text(st, 1, id);
        sqlite3_bind_int64(st, 2, since);
        if (int rc = sqlite3_step(st); rc != SQLITE_ROW) return unavailable(s.reader.get(), "read spending from", rc);
        return sqlite3_column_double(st, 0);
    }

private:
    struct state {
        std::string path;
        std::mutex write_mutex, read_mutex;
        sqlite_detail::db_handle writer, reader;
        sqlite_detail::statement insert, by_model, by_day, records_of_team, records_of_all, spent_by_key, spent_by_team;
    };

    std::optional<error> group(sqlite3_stmt* st, const usage_query& q, std::vector<std::pair<std::string, usage_totals>>& out) {
        using namespace sqlite_detail;
        statement_use use{st};
        bind_text(st, 1, q.team_id);
        sqlite3_bind_int64(st, 2, q.since);
        sqlite3_bind_int64(st, 3, q.until);
        int rc = SQLITE_DONE;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            out.emplace_back(column_text(st, 0), usage_totals{sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2),
                                                              sqlite3_column_double(st, 3), sqlite3_column_int64(st, 4)});
        if (rc != SQLITE_DONE) return unavailable(state_->reader.get(), "read usage from", rc);
        return std::nullopt;
    }

    error unavailable(sqlite3* db, std::string_view action, int rc) const {
        return {error_kind::unavailable,
                "cannot " + std::string{action} + " the usage table of '" + state_->path + "': " + sqlite_detail::describe(db, rc),
                "store_unavailable"};
    }

    std::unique_ptr<state> state_;
};
static_assert(usage_store<sqlite_usage_store>);

} // namespace chatkit
