// chatkit::sqlite_key_directory: API keys and teams in the same SQLite file as the history (tables
// `teams` and `api_keys`, created by sqlite_store's migrations, whichever opens the file first).
// A chatkit::key_directory for the authenticating middleware, plus what the command line needs to
// administer keys: create a team or a key, list, revoke.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/key_directory.hpp"
#include "chatkit/sqlite_store.hpp"

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

class sqlite_key_directory {
public:
    // Opens or creates the file and migrates it (as sqlite_store does); throws std::runtime_error
    // naming the path.
    explicit sqlite_key_directory(sqlite_options options = {}) : state_(std::make_unique<state>()) {
        using namespace sqlite_detail;
        const std::string& path = options.path;
        if (path.empty() || path == ":memory:") fail(path, "cannot use", "sqlite_key_directory needs a database file");
        state_->path = path;
        state_->db = open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, options.busy_timeout);
        sqlite3* db = state_->db.get();
        if (query_value(db, path, "PRAGMA journal_mode = WAL") != "wal")
            fail(path, "cannot use", "the file does not support WAL journaling");
        exec(db, path, options.durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
        exec(db, path, "PRAGMA foreign_keys = ON"); // a key's team must exist
        migrate(db, path);
    }

    sqlite_key_directory(sqlite_key_directory&&) noexcept = default;
    sqlite_key_directory& operator=(sqlite_key_directory&&) noexcept = default;

    // Every key, revoked and expired ones included, oldest first.
    result<std::vector<key_record>> keys() {
        const std::lock_guard lock{state_->mutex};
        // The team's limits come with each key (a LEFT JOIN, so a key whose team row is missing still
        // reads, with no team limits): the rate limiting middleware then needs no read per request.
        auto st = prepare("SELECT k.id, k.team_id, k.name, k.prefix, k.digest, k.created_at, k.expires_at, k.revoked_at, "
                          "k.rpm, k.tpm, k.budget_usd, k.budget_period, k.models, t.rpm, t.tpm, t.budget_usd, t.budget_period "
                          "FROM api_keys AS k LEFT JOIN teams AS t ON t.id = k.team_id ORDER BY k.created_at, k.id");
        if (!st) return st.error();
        std::vector<key_record> out;
        int rc = SQLITE_DONE;
        sqlite3_stmt* s = st->get();
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            key_record k;
            k.id = sqlite_detail::column_text(s, 0);
            k.team_id = sqlite_detail::column_text(s, 1);
            k.name = sqlite_detail::column_text(s, 2);
            k.prefix = sqlite_detail::column_text(s, 3);
            const auto* blob = static_cast<const char*>(sqlite3_column_blob(s, 4));
            k.digest.assign(blob ? blob : "", static_cast<std::size_t>(sqlite3_column_bytes(s, 4)));
            k.created_at = sqlite3_column_int64(s, 5);
            k.expires_at = optional_int(s, 6);
            k.revoked_at = optional_int(s, 7);
            k.limits = read_limits(s, 8);
            k.team_limits = read_limits(s, 13);
            if (sqlite3_column_type(s, 12) != SQLITE_NULL) {
                const auto models = nlohmann::json::parse(sqlite_detail::column_text(s, 12), nullptr, false);
                if (!models.is_array())
                    return error{error_kind::internal, "api_keys: key " + k.id + " has an unreadable model list", "store_corrupt"};
                for (const auto& m : models)
                    if (m.is_string()) k.models.push_back(m.get<std::string>());
            }
            out.push_back(std::move(k));
        }
        if (rc != SQLITE_DONE) return unavailable("read the API keys", rc);
        return out;
    }

    // Fails with conflict ("team_exists") when the id is taken.
    result<void> create_team(const team_record& t) {
        const std::lock_guard lock{state_->mutex};
        auto st = prepare("INSERT INTO teams (id, name, rpm, tpm, budget_usd, budget_period, created_at) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        if (!st) return st.error();
        sqlite3_stmt* s = st->get();
        sqlite_detail::bind_text(s, 1, t.id);
        sqlite_detail::bind_text(s, 2, t.name);
        bind_limits(s, 3, t.limits);
        sqlite3_bind_int64(s, 7, t.created_at);
        const int rc = sqlite3_step(s);
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT)
            return error{error_kind::conflict, "team '" + t.id + "' already exists", "team_exists"};
        if (rc != SQLITE_DONE) return unavailable("create the team", rc);
        return {};
    }

    result<std::optional<team_record>> team(std::string_view id) {
        const std::lock_guard lock{state_->mutex};
        auto st = prepare("SELECT id, name, rpm, tpm, budget_usd, budget_period, created_at FROM teams WHERE id = ?1");
        if (!st) return st.error();
        sqlite3_stmt* s = st->get();
        sqlite_detail::bind_text(s, 1, id);
        const int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) return std::optional<team_record>{};
        if (rc != SQLITE_ROW) return unavailable("read the team", rc);
        return std::optional<team_record>{
            team_record{sqlite_detail::column_text(s, 0), sqlite_detail::column_text(s, 1), read_limits(s, 2), sqlite3_column_int64(s, 6)}};
    }

    // Stores a key record (its digest, never the key). Fails with invalid_request ("team_not_found")
    // when its team does not exist, and with conflict ("key_exists") when its id is taken.
    result<void> create_key(const key_record& k) {
        if (auto invalid = invalid_key_record(k)) return *invalid;
        {
            auto t = team(k.team_id);
            if (!t) return t.error();
            if (!*t) return error{error_kind::invalid_request, "no team '" + k.team_id + "'", "team_not_found", "team"};
        }
        const std::lock_guard lock{state_->mutex};
        auto st = prepare("INSERT INTO api_keys (id, team_id, name, prefix, digest, created_at, expires_at, revoked_at, rpm, "
                          "tpm, budget_usd, budget_period, models) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
        if (!st) return st.error();
        sqlite3_stmt* s = st->get();
        sqlite_detail::bind_text(s, 1, k.id);
        sqlite_detail::bind_text(s, 2, k.team_id);
        sqlite_detail::bind_text(s, 3, k.name);
        sqlite_detail::bind_text(s, 4, k.prefix);
        sqlite3_bind_blob64(s, 5, k.digest.data(), k.digest.size(), SQLITE_STATIC);
        sqlite3_bind_int64(s, 6, k.created_at);
        bind_optional(s, 7, k.expires_at);
        bind_optional(s, 8, k.revoked_at);
        bind_limits(s, 9, k.limits);
        const std::string models = k.models.empty() ? std::string{} : nlohmann::json(k.models).dump();
        if (k.models.empty()) sqlite3_bind_null(s, 13);
        else sqlite_detail::bind_text(s, 13, models);
        const int rc = sqlite3_step(s);
        // A key is never overwritten; a taken id is the caller's to fix, not an outage.
        if ((rc & 0xff) == SQLITE_CONSTRAINT && sqlite3_extended_errcode(state_->db.get()) == SQLITE_CONSTRAINT_PRIMARYKEY)
            return error{error_kind::conflict, "a key with id '" + k.id + "' exists already", "key_exists", "id"};
        // SQLite's messages name the constraint, never the bound values: no digest can leak.
        if (rc != SQLITE_DONE) return unavailable("create the key", rc);
        return {};
    }

    // Marks the key revoked at `at` and returns when it is revoked (an earlier revocation stands).
    // Fails with not_found ("key_not_found") for an unknown id.
    result<unix_ms> revoke_key(std::string_view id, unix_ms at) {
        const std::lock_guard lock{state_->mutex};
        {
            auto st = prepare("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL");
            if (!st) return st.error();
            sqlite_detail::bind_text(st->get(), 1, id);
            sqlite3_bind_int64(st->get(), 2, at);
            if (const int rc = sqlite3_step(st->get()); rc != SQLITE_DONE) return unavailable("revoke the key", rc);
        }
        auto st = prepare("SELECT revoked_at FROM api_keys WHERE id = ?1");
        if (!st) return st.error();
        sqlite_detail::bind_text(st->get(), 1, id);
        const int rc = sqlite3_step(st->get());
        if (rc == SQLITE_DONE) return error{error_kind::not_found, "no key '" + std::string{id} + "'", "key_not_found"};
        if (rc != SQLITE_ROW) return unavailable("revoke the key", rc);
        return sqlite3_column_int64(st->get(), 0);
    }

private:
    struct state {
        std::string path;
        sqlite_detail::db_handle db; // opened NOMUTEX: guarded by `mutex`
        std::mutex mutex;
    };

    result<sqlite_detail::statement> prepare(std::string_view sql) {
        sqlite3_stmt* s = nullptr;
        if (const int rc = sqlite3_prepare_v2(state_->db.get(), sql.data(), static_cast<int>(sql.size()), &s, nullptr); rc != SQLITE_OK)
            return unavailable("prepare a statement", rc);
        return sqlite_detail::statement(s);
    }

    error unavailable(std::string_view action, int rc) const {
        return error{error_kind::unavailable,
                     "key directory could not " + std::string(action) + ": " + sqlite_detail::describe(state_->db.get(), rc),
                     "store_unavailable"};
    }

    static std::optional<std::int64_t> optional_int(sqlite3_stmt* s, int column) {
        if (sqlite3_column_type(s, column) == SQLITE_NULL) return std::nullopt;
        return sqlite3_column_int64(s, column);
    }
    static void bind_optional(sqlite3_stmt* s, int index, const std::optional<std::int64_t>& v) {
        if (v) sqlite3_bind_int64(s, index, *v);
        else sqlite3_bind_null(s, index);
    }
    // Four columns from `first`: rpm, tpm, budget_usd, budget_period.
    static usage_limits read_limits(sqlite3_stmt* s, int first) {
        usage_limits l;
        l.requests_per_minute = optional_int(s, first);
        l.tokens_per_minute = optional_int(s, first + 1);
        if (sqlite3_column_type(s, first + 2) != SQLITE_NULL) l.budget_usd = sqlite3_column_double(s, first + 2);
        l.budget_period = sqlite_detail::column_text(s, first + 3);
        return l;
    }
    static void bind_limits(sqlite3_stmt* s, int first, const usage_limits& l) {
        bind_optional(s, first, l.requests_per_minute);
        bind_optional(s, first + 1, l.tokens_per_minute);
        if (l.budget_usd) sqlite3_bind_double(s, first + 2, *l.budget_usd);
        else sqlite3_bind_null(s, first + 2);
        if (l.budget_period.empty()) sqlite3_bind_null(s, first + 3);
        else sqlite_detail::bind_text(s, first + 3, l.budget_period);
    }

    std::unique_ptr<state> state_;
};

static_assert(key_directory<sqlite_key_directory>);

} // namespace chatkit
