// chatkit::sqlite_store: history and conversations in one local SQLite file, the Store (and
// ConversationStore) for a single node. Writes use group commit: concurrent writes (appends, and
// every conversation change) share one transaction and one fsync, so the durability cost is paid
// per batch, not per request. Reads use their own connection (WAL).
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/conversation_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/store.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace chatkit {

struct sqlite_options {
    std::string path = "chatkit.db"; // a file: WAL and the separate read connection need one
    std::chrono::milliseconds busy_timeout{5000};
    bool durable = true; // true: synchronous=FULL, a commit survives power loss; false: NORMAL,
                         // a commit survives a crash of the process but maybe not of the machine
    // Told of each group commit that succeeded: how many append() calls it answered and how long
    // its transaction took (BEGIN to COMMIT, the fsync included), for metrics of batch size and
    // commit latency. Called by the caller that wrote the batch, after the queue's lock is released
    // and the batch's other callers are woken; it must be cheap and thread-safe.
    std::function<void(std::size_t batch, std::chrono::duration<double> seconds)> on_commit{};
};

namespace sqlite_detail {

// Migration n takes the schema from user_version n-1 to n. Append new ones; never edit a shipped
// one, since databases in the field have already run it.
inline constexpr std::string_view migrations[] = {
    // AUTOINCREMENT: ids are never reused, so they order a user's history by time and stay valid
    // as cursors even after rows are deleted.
    R"sql(
    CREATE TABLE messages (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id    TEXT    NOT NULL,
        role       TEXT    NOT NULL,
        content    TEXT    NOT NULL,
        model      TEXT    NOT NULL,
        created_at INTEGER NOT NULL, -- unix ms
        request_id TEXT    NOT NULL
    );
    CREATE INDEX messages_by_user ON messages (user_id, id);
    )sql",
    // API keys and their teams (chatkit::sqlite_key_directory, docs/gateway.md). A key is stored
    // only as its SHA-256 digest and a display prefix. Limits are NULL when unset; `models` is a
    // JSON array of the models a key may use, NULL for any.
    R"sql(
    CREATE TABLE teams (
        id            TEXT    PRIMARY KEY,
        name          TEXT    NOT NULL DEFAULT '',
        rpm           INTEGER,
        tpm           INTEGER,
        budget_usd    REAL,
        budget_period TEXT    CHECK (budget_period IN ('day', 'month')),
        created_at    INTEGER NOT NULL -- unix ms
    );
    CREATE TABLE api_keys (
        id            TEXT    PRIMARY KEY,
        team_id       TEXT    NOT NULL REFERENCES teams (id),
        name          TEXT    NOT NULL DEFAULT '',
        prefix        TEXT    NOT NULL,
        digest        BLOB    NOT NULL UNIQUE, -- SHA-256 of the whole key, 32 bytes
        created_at    INTEGER NOT NULL,        -- unix ms
        expires_at    INTEGER,
        revoked_at    INTEGER,
        rpm           INTEGER,
        tpm           INTEGER,
        budget_usd    REAL,
        budget_period TEXT    CHECK (budget_period IN ('day', 'month')),
        models        TEXT
    );
    CREATE INDEX api_keys_by_team ON api_keys (team_id);
    )sql",
    // One row per chat request as billed (chatkit::sqlite_usage_store, docs/gateway.md). team_id and
    // key_id are '' without authentication; cost_usd is NULL for an unpriced model, never 0.
    R"sql(
    CREATE TABLE usage (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        time              INTEGER NOT NULL, -- unix ms, when the request finished
        request_id        TEXT    NOT NULL,
        team_id           TEXT    NOT NULL,
        key_id            TEXT    NOT NULL,
        model             TEXT    NOT NULL,
        provider          TEXT    NOT NULL,
        status            INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens     INTEGER NOT NULL,
        reasoning_tokens  INTEGER NOT NULL,
        cost_usd          REAL,
        latency_ms        REAL    NOT NULL,
        ttft_ms           REAL    NOT NULL,
        cached            INTEGER NOT NULL,
        streamed          INTEGER NOT NULL,
        cancelled         INTEGER NOT NULL,
        estimated         INTEGER NOT NULL
    );
    CREATE INDEX usage_by_team ON usage (team_id, time);
    CREATE INDEX usage_by_key ON usage (key_id, time);
    )sql",
    // Conversations (chatkit/conversation_store.hpp). `seq` orders rows by insertion and serves
    // as the cursor; ids are the service's UUIDs. `owner` is '' without authentication. Times are
    // unix ms. Token counts and costs are NULL on a user's message; metadata is a JSON object.
    R"sql(
    CREATE TABLE conversations (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT    NOT NULL UNIQUE,
        owner      TEXT    NOT NULL,
        user_id    TEXT    NOT NULL,
        title      TEXT,
        metadata   TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        -- Running totals, added to by each append in its transaction: a turn reads them in O(1)
        -- however long the conversation is (a SUM over its messages grows with every turn).
        message_count  INTEGER NOT NULL DEFAULT 0,
        total_tokens   INTEGER NOT NULL DEFAULT 0,
        total_cost_usd REAL    NOT NULL DEFAULT 0
    );
    CREATE INDEX conversations_by_user ON conversations (owner, user_id, seq);
    CREATE TABLE conversation_messages (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT,
        id                TEXT    NOT NULL UNIQUE,
        conversation_id   TEXT    NOT NULL,
        role              TEXT    NOT NULL,
        content           TEXT    NOT NULL,
        provider          TEXT    NOT NULL,
        model             TEXT    NOT NULL,
        prompt_tokens     INTEGER,
        completion_tokens INTEGER,
        cost_usd          REAL,
        latency_ms        REAL,
        ttft_ms           REAL,
        request_id        TEXT    NOT NULL,
        created_at        INTEGER NOT NULL
    );
    CREATE INDEX conversation_messages_by_conversation ON conversation_messages (conversation_id, seq);
    CREATE TABLE feedback (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT    NOT NULL UNIQUE,
        conversation_id TEXT    NOT NULL,
        message_id      TEXT    NOT NULL,
        feedback_type   TEXT    NOT NULL CHECK (feedback_type IN ('thumbs_up', 'thumbs_down', 'flag')),
        rating          INTEGER CHECK (rating BETWEEN 1 AND 5),
        comment         TEXT,
        created_at      INTEGER NOT NULL
    );
    CREATE INDEX feedback_by_conversation ON feedback (conversation_id, seq);
    )sql",
};

struct close_db {
    void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct finalize {
    void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using db_handle = std::unique_ptr<sqlite3, close_db>;
using statement = std::unique_ptr<sqlite3_stmt, finalize>;

// Resets a prepared statement when one use of it ends: the next use starts clean, no binding
// points at a caller's string once it is gone, and a reader does not keep its snapshot open
// (which would stop WAL checkpoints).
class statement_use {
public:
    explicit statement_use(sqlite3_stmt* s) noexcept : s_(s) {}
    statement_use(const statement_use&) = delete;
    statement_use& operator=(const statement_use&) = delete;
    ~statement_use() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }

private:
    sqlite3_stmt* s_;
};

inline int bind_text(sqlite3_stmt* s, int index, std::string_view text) noexcept {
    // SQLITE_STATIC: the text outlives the statement's use; no copy.
    return sqlite3_bind_text64(s, index, text.data(), text.size(), SQLITE_STATIC, SQLITE_UTF8);
}

inline int bind_optional(sqlite3_stmt* s, int index, const std::optional<double>& v) noexcept {
    return v ? sqlite3_bind_double(s, index, *v) : sqlite3_bind_null(s, index);
}

inline std::optional<double> column_optional_double(sqlite3_stmt* s, int column) noexcept {
    if (sqlite3_column_type(s, column) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_double(s, column);
}

inline std::string column_text(sqlite3_stmt* s, int column) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(s, column));
    return text ? std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(s, column))) : std::string{};
}

// The db's message describes its last failure; a bind error may not have set it.
inline std::string describe(sqlite3* db, int rc) { return sqlite3_errcode(db) == (rc & 0xff) ? sqlite3_errmsg(db) : sqlite3_errstr(rc); }

// Start-up failures throw: a service without its store must not start.
[[noreturn]] inline void fail(const std::string& path, std::string_view what, std::string_view why) {
    throw std::runtime_error("chatkit::sqlite_store: " + std::string(what) + " '" + path + "': " + std::string(why));
}

// The busy handler of every connection: polls every 250 µs until `timeout_ms` (the pointer's
// value) is spent. SQLite's own (sqlite3_busy_timeout) backs off to sleeps of up to 100 ms, so a
// writer waiting behind a steady one wakes too late for the gaps between its commits and starves:
// the usage records' writer, behind the history's group commits a millisecond or two apart, fell
// hundreds of records behind under load, and a crash lost them. `count` (calls so far) stands for
// the time waited; sleeps run long, never short, so the timeout is never cut.
inline int wait_for_the_lock(void* timeout_ms, int count) {
    constexpr std::int64_t poll_us = 250;
    if (static_cast<std::int64_t>(count) * poll_us >= static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(timeout_ms)) * 1000)
        return 0;
    std::this_thread::sleep_for(std::chrono::microseconds{poll_us});
    return 1;
}

inline db_handle open_db(const std::string& path, int flags, std::chrono::milliseconds busy_timeout) {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    db_handle db(raw); // closed on every path, even when open failed
    if (rc != SQLITE_OK) fail(path, "cannot open", db ? sqlite3_errmsg(db.get()) : sqlite3_errstr(rc));
    const auto timeout_ms = static_cast<std::intptr_t>(std::clamp<std::int64_t>(busy_timeout.count(), 0, INT32_MAX));
    sqlite3_busy_handler(db.get(), wait_for_the_lock, reinterpret_cast<void*>(timeout_ms));
    return db;
}

inline statement prepare(sqlite3* db, const std::string& path, std::string_view sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK)
        fail(path, "cannot prepare statements for", sqlite3_errmsg(db));
    return statement(s);
}

inline void exec(sqlite3* db, const std::string& path, const std::string& sql) {
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) fail(path, "cannot set up", sqlite3_errmsg(db));
}

// The first column of a one-row query (a PRAGMA's value).
inline std::string query_value(sqlite3* db, const std::string& path, std::string_view sql) {
    const statement s = prepare(db, path, sql);
    if (sqlite3_step(s.get()) != SQLITE_ROW) fail(path, "cannot set up", sqlite3_errmsg(db));
    return column_text(s.get(), 0);
}

// Applies the migrations the file has not run yet, all in one transaction: a crash mid-way leaves
// the old version, never half of a new one. IMMEDIATE so two processes cannot both migrate.
inline void migrate(sqlite3* db, const std::string& path) {
    constexpr auto latest = static_cast<long>(std::size(migrations));
    exec(db, path, "BEGIN IMMEDIATE");
    try {
        const long version = std::stol(query_value(db, path, "PRAGMA user_version"));
        if (version > latest)
            fail(path, "schema of",
                 "version " + std::to_string(version) + " is newer than this chatkit's (" + std::to_string(latest) + ")");
        for (long v = version; v < latest; ++v) exec(db, path, std::string(migrations[v]));
        if (version < latest) exec(db, path, "PRAGMA user_version = " + std::to_string(latest));
        exec(db, path, "COMMIT");
    } catch (...) {
        sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
}

} // namespace sqlite_detail

class sqlite_store {
public:
    // Opens or creates the file and migrates it; throws std::runtime_error naming the path.
    explicit sqlite_store(sqlite_options options = {}) : state_(std::make_unique<state>()) {
        using namespace sqlite_detail;
        const std::string& path = options.path;
        if (path.empty() || path == ":memory:") fail(path, "cannot use", "sqlite_store needs a database file");
        auto& s = *state_;
        s.on_commit = std::move(options.on_commit);
        s.writer = open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, options.busy_timeout);
        sqlite3* w = s.writer.get();
        // Catches in-memory and temporary databases however they were named (e.g. URIs).
        if (const char* file = sqlite3_db_filename(w, "main"); !file || !*file)
            fail(path, "cannot use", "sqlite_store needs a database file, not an in-memory one");
        if (query_value(w, path, "PRAGMA journal_mode = WAL") != "wal")
            fail(path, "cannot use", "the file does not support WAL journaling");
        exec(w, path, options.durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
        migrate(w, path);
        s.begin = prepare(w, path, "BEGIN IMMEDIATE");
        s.commit = prepare(w, path, "COMMIT");
        s.rollback = prepare(w, path, "ROLLBACK");
        s.insert = prepare(w, path,
                           "INSERT INTO messages (user_id, role, content, model, created_at, request_id) "
                           "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
        auto& cw = s.conversation_writes;
        cw.insert_conversation = prepare(w, path,
                                         "INSERT INTO conversations (id, owner, user_id, title, metadata, created_at, updated_at) "
                                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        cw.touch = prepare(w, path,
                           "UPDATE conversations SET updated_at = ?3, message_count = message_count + ?4, "
                           "total_tokens = total_tokens + ?5, total_cost_usd = total_cost_usd + ?6 WHERE id = ?1 AND owner = ?2");
        cw.update = prepare(w, path,
                            "UPDATE conversations SET title = CASE WHEN ?3 THEN ?4 ELSE title END, "
                            "metadata = CASE WHEN ?5 THEN ?6 ELSE metadata END, updated_at = ?7 WHERE id = ?1 AND owner = ?2");
        cw.remove = prepare(w, path, "DELETE FROM conversations WHERE id = ?1 AND owner = ?2");
        cw.remove_messages = prepare(w, path, "DELETE FROM conversation_messages WHERE conversation_id = ?1");
        cw.remove_feedback = prepare(w, path, "DELETE FROM feedback WHERE conversation_id = ?1");
        cw.insert_message = prepare(w, path,
                                    "INSERT INTO conversation_messages (id, conversation_id, role, content, provider, model, "
                                    "prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, request_id, created_at) "
                                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
        cw.exists = prepare(w, path, "SELECT 1 FROM conversations WHERE id = ?1 AND owner = ?2");
        cw.message_exists = prepare(w, path, "SELECT 1 FROM conversation_messages WHERE id = ?1 AND conversation_id = ?2");
        cw.insert_feedback = prepare(w, path,
                                     "INSERT INTO feedback (id, conversation_id, message_id, feedback_type, rating, comment, created_at) "
                                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        // Opened after migrating, so its statements see the current schema.
        s.reader = open_db(path, SQLITE_OPEN_READONLY, options.busy_timeout);
        s.select_page = prepare(s.reader.get(), path,
                                "SELECT id, role, content, model, created_at, request_id FROM messages "
                                "WHERE user_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3");
        s.select_one = prepare(s.reader.get(), path, "SELECT 1");
        auto& cr = s.conversation_reads;
        sqlite3* r = s.reader.get();
        cr.one = prepare(r, path,
                         "SELECT seq, id, owner, user_id, title, metadata, created_at, updated_at, "
                         "message_count, total_tokens, total_cost_usd FROM conversations WHERE id = ?1 AND owner = ?2");
        cr.page = prepare(r, path,
                          "SELECT seq, id, owner, user_id, title, metadata, created_at, updated_at FROM conversations "
                          "WHERE owner = ?1 AND user_id = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4");
        constexpr std::string_view message_columns =
            "SELECT seq, id, conversation_id, role, content, provider, model, prompt_tokens, completion_tokens, cost_usd, "
            "latency_ms, ttft_ms, request_id, created_at FROM conversation_messages ";
        cr.messages_after = prepare(r, path,
                                    std::string(message_columns) + "WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
        cr.messages_newest = prepare(r, path, std::string(message_columns) + "WHERE conversation_id = ?1 ORDER BY seq DESC LIMIT ?2");
        cr.feedback = prepare(r, path,
                              "SELECT id, conversation_id, message_id, feedback_type, rating, comment, created_at FROM feedback "
                              "WHERE conversation_id = ?1 ORDER BY seq");
    }

    sqlite_store(sqlite_store&&) noexcept = default;
    sqlite_store& operator=(sqlite_store&&) noexcept = default;

    // Returns once the exchange is committed. Callers that arrive while a batch is being written
    // queue up; the first to find the writer free writes the whole queue in one transaction.
    result<void> append(const exchange& e) {
        if (e.messages.empty()) return {};
        pending self{&e};
        return submit(self);
    }

    result<history_page> history(const history_query& q) {
        using namespace sqlite_detail;
        std::int64_t before = std::numeric_limits<std::int64_t>::max();
        if (!q.before.empty() && !parse_cursor(q.before, before))
            return error{error_kind::invalid_request, "'before' is not a valid cursor", "invalid_cursor", "before"};
        history_page page;
        if (q.limit == 0) return page;
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);

        auto& s = *state_;
        const std::lock_guard lock(s.read_mutex);
        sqlite3_stmt* st = s.select_page.get();
        const statement_use use(st);
        bind_text(st, 1, q.user_id);
        sqlite3_bind_int64(st, 2, before);
        sqlite3_bind_int64(st, 3, static_cast<std::int64_t>(limit) + 1); // one more: are there older ones?
        int rc = SQLITE_DONE;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (page.messages.size() == limit) {
                page.next_cursor = page.messages.back().id; // the smallest id in the page
                break;
            }
            const auto role = parse_role(column_text(st, 1));
            if (!role) return error{error_kind::internal, "stored message has an unknown role", "store_corrupt"};
            page.messages.push_back({std::to_string(sqlite3_column_int64(st, 0)), *role, column_text(st, 2), column_text(st, 3),
                                     sqlite3_column_int64(st, 4), column_text(st, 5)});
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) return unavailable("read history", describe(s.reader.get(), rc));
        std::reverse(page.messages.begin(), page.messages.end()); // oldest first
        return page;
    }

    // ConversationStore (chatkit/conversation_store.hpp). Writes join the group commit; a write's
    // own refusal (not found) is its answer alone and rolls back nothing of the batch's others.
    result<void> create_conversation(const conversation& c) {
        const std::string metadata = dump_json(c.metadata);
        return write([&](refusal&) {
            using sqlite_detail::bind_text;
            sqlite3_stmt* st = state_->conversation_writes.insert_conversation.get();
            const sqlite_detail::statement_use use(st);
            int rc = bind_text(st, 1, c.id);
            if (rc == SQLITE_OK) rc = bind_text(st, 2, c.owner);
            if (rc == SQLITE_OK) rc = bind_text(st, 3, c.user_id);
            if (rc == SQLITE_OK) rc = c.title ? bind_text(st, 4, *c.title) : sqlite3_bind_null(st, 4);
            if (rc == SQLITE_OK) rc = bind_text(st, 5, metadata);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 6, c.created_at);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 7, c.updated_at);
            return rc == SQLITE_OK ? sqlite3_step(st) : rc;
        });
    }

    result<conversation_page> conversations(const conversation_query& q) {
        std::int64_t before = std::numeric_limits<std::int64_t>::max();
        if (!q.cursor.empty() && !parse_cursor(q.cursor, before))
            return error{error_kind::invalid_request, "'cursor' is not a valid cursor", "invalid_cursor", "cursor"};
        conversation_page page;
        if (q.limit == 0) return page;
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);
        auto& s = *state_;
        const std::lock_guard lock(s.read_mutex);
        sqlite3_stmt* st = s.conversation_reads.page.get();
        const sqlite_detail::statement_use use(st);
        sqlite_detail::bind_text(st, 1, q.owner);
        sqlite_detail::bind_text(st, 2, q.user_id);
        sqlite3_bind_int64(st, 3, before);
        sqlite3_bind_int64(st, 4, static_cast<std::int64_t>(limit) + 1);
        int rc = SQLITE_DONE;
        std::int64_t last_seq = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (page.conversations.size() == limit) {
                page.next_cursor = std::to_string(last_seq);
                break;
            }
            auto c = conversation_row(st);
            if (!c) return std::move(c).error();
            last_seq = sqlite3_column_int64(st, 0);
            page.conversations.push_back(std::move(*c));
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) return unavailable("read conversations", sqlite_detail::describe(s.reader.get(), rc));
        return page;
    }

    result<conversation> find_conversation(const conversation_ref& r) {
        const std::lock_guard lock(state_->read_mutex);
        return read_conversation(r); // with its totals
    }

    result<conversation> update_conversation(const conversation_update& u) {
        std::string metadata = u.metadata ? dump_json(*u.metadata) : std::string{};
        auto written = write([&](refusal& refused) {
            using sqlite_detail::bind_text;
            sqlite3_stmt* st = state_->conversation_writes.update.get();
            const sqlite_detail::statement_use use(st);
            int rc = bind_text(st, 1, u.conversation.id);
            if (rc == SQLITE_OK) rc = bind_text(st, 2, u.conversation.owner);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int(st, 3, u.title.has_value());
            if (rc == SQLITE_OK) rc = u.title && *u.title ? bind_text(st, 4, **u.title) : sqlite3_bind_null(st, 4);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int(st, 5, u.metadata.has_value());
            if (rc == SQLITE_OK) rc = bind_text(st, 6, metadata);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 7, u.at);
            if (rc == SQLITE_OK) rc = sqlite3_step(st);
            if (rc == SQLITE_DONE && sqlite3_changes(state_->writer.get()) == 0) refused = detail::conversation_not_found();
            return rc;
        });
        if (!written) return std::move(written).error();
        const std::lock_guard lock(state_->read_mutex);
        return read_conversation(u.conversation);
    }

    // The conversation's row first, owner-checked: once it is gone nothing of it can be read, and
    // its messages and feedback go in the same transaction.
    result<void> delete_conversation(const conversation_ref& r) {
        return write([&](refusal& refused) {
            auto& cw = state_->conversation_writes;
            int rc = run_with_id(cw.remove.get(), r.id, &r.owner);
            if (rc != SQLITE_DONE) return rc;
            if (sqlite3_changes(state_->writer.get()) == 0) {
                refused = detail::conversation_not_found();
                return rc;
            }
            rc = run_with_id(cw.remove_messages.get(), r.id, nullptr);
            if (rc == SQLITE_DONE) rc = run_with_id(cw.remove_feedback.get(), r.id, nullptr);
            return rc;
        });
    }

    result<void> append_to_conversation(const conversation_append& a) {
        return write([&](refusal& refused) {
            using sqlite_detail::bind_text;
            auto& cw = state_->conversation_writes;
            int rc = SQLITE_OK;
            {
                sqlite3_stmt* st = cw.touch.get();
                const sqlite_detail::statement_use use(st);
                rc = bind_text(st, 1, a.conversation.id);
                if (rc == SQLITE_OK) rc = bind_text(st, 2, a.conversation.owner);
                if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 3, a.at);
                std::int64_t tokens = 0;
                double cost = 0;
                for (const auto& m : a.messages) {
                    if (m.usage) tokens += m.usage->total_tokens();
                    if (m.cost_usd) cost += *m.cost_usd;
                }
                if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 4, static_cast<std::int64_t>(a.messages.size()));
                if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 5, tokens);
                if (rc == SQLITE_OK) rc = sqlite3_bind_double(st, 6, cost);
                if (rc == SQLITE_OK) rc = sqlite3_step(st);
            }
            if (rc != SQLITE_DONE) return rc;
            if (sqlite3_changes(state_->writer.get()) == 0) {
                refused = detail::conversation_not_found();
                return rc;
            }
            for (const auto& m : a.messages)
                if ((rc = insert_message(a.conversation.id, m)) != SQLITE_DONE) return rc;
            return rc;
        });
    }

    result<conversation_message_page> conversation_messages(const conversation_message_query& q) {
        std::int64_t after = 0;
        if (!q.newest && !q.after.empty() && !parse_cursor(q.after, after))
            return error{error_kind::invalid_request, "'cursor' is not a valid cursor", "invalid_cursor", "cursor"};
        auto& s = *state_;
        const std::lock_guard lock(s.read_mutex);
        if (auto c = read_conversation(q.conversation); !c) return std::move(c).error();
        conversation_message_page page;
        if (q.limit == 0) return page;
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);
        sqlite3_stmt* st = q.newest ? s.conversation_reads.messages_newest.get() : s.conversation_reads.messages_after.get();
        const sqlite_detail::statement_use use(st);
        sqlite_detail::bind_text(st, 1, q.conversation.id);
        if (q.newest) {
            sqlite3_bind_int64(st, 2, static_cast<std::int64_t>(limit));
        } else {
            sqlite3_bind_int64(st, 2, after);
            sqlite3_bind_int64(st, 3, static_cast<std::int64_t>(limit) + 1);
        }
        int rc = SQLITE_DONE;
        std::int64_t last_seq = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (page.messages.size() == limit) {
                page.next_cursor = std::to_string(last_seq);
                break;
            }
            auto m = message_row(st);
            if (!m) return std::move(m).error();
            last_seq = sqlite3_column_int64(st, 0);
            page.messages.push_back(std::move(*m));
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) return unavailable("read messages", sqlite_detail::describe(s.reader.get(), rc));
        if (q.newest) std::reverse(page.messages.begin(), page.messages.end());
        return page;
    }

    result<void> add_feedback(const feedback_submission& f) {
        return write([&](refusal& refused) {
            using sqlite_detail::bind_text;
            auto& cw = state_->conversation_writes;
            const auto& fb = f.feedback;
            int rc = SQLITE_OK;
            bool found = false;
            if ((rc = exists(cw.exists.get(), fb.conversation_id, f.owner, found)) != SQLITE_DONE) return rc;
            if (!found) {
                refused = detail::conversation_not_found();
                return rc;
            }
            if ((rc = exists(cw.message_exists.get(), fb.message_id, fb.conversation_id, found)) != SQLITE_DONE) return rc;
            if (!found) {
                refused = detail::message_not_found();
                return rc;
            }
            sqlite3_stmt* st = cw.insert_feedback.get();
            const sqlite_detail::statement_use use(st);
            rc = bind_text(st, 1, fb.id);
            if (rc == SQLITE_OK) rc = bind_text(st, 2, fb.conversation_id);
            if (rc == SQLITE_OK) rc = bind_text(st, 3, fb.message_id);
            if (rc == SQLITE_OK) rc = bind_text(st, 4, fb.feedback_type);
            if (rc == SQLITE_OK) rc = fb.rating ? sqlite3_bind_int(st, 5, *fb.rating) : sqlite3_bind_null(st, 5);
            if (rc == SQLITE_OK) rc = fb.comment ? bind_text(st, 6, *fb.comment) : sqlite3_bind_null(st, 6);
            if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 7, fb.created_at);
            return rc == SQLITE_OK ? sqlite3_step(st) : rc;
        });
    }

    result<std::vector<feedback>> conversation_feedback(const conversation_ref& r) {
        using sqlite_detail::column_text;
        auto& s = *state_;
        const std::lock_guard lock(s.read_mutex);
        if (auto c = read_conversation(r); !c) return std::move(c).error();
        std::vector<feedback> all;
        sqlite3_stmt* st = s.conversation_reads.feedback.get();
        const sqlite_detail::statement_use use(st);
        sqlite_detail::bind_text(st, 1, r.id);
        int rc = SQLITE_DONE;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            feedback f{column_text(st, 0), column_text(st, 1), column_text(st, 2), column_text(st, 3)};
            if (sqlite3_column_type(st, 4) != SQLITE_NULL) f.rating = sqlite3_column_int(st, 4);
            if (sqlite3_column_type(st, 5) != SQLITE_NULL) f.comment = column_text(st, 5);
            f.created_at = sqlite3_column_int64(st, 6);
            all.push_back(std::move(f));
        }
        if (rc != SQLITE_DONE) return unavailable("read feedback", sqlite_detail::describe(s.reader.get(), rc));
        return all;
    }

    component_health health() {
        using namespace sqlite_detail;
        auto& s = *state_;
        const std::lock_guard lock(s.read_mutex);
        const statement_use use(s.select_one.get());
        if (const int rc = sqlite3_step(s.select_one.get()); rc != SQLITE_ROW)
            return {.ok = false, .detail = "sqlite: " + describe(s.reader.get(), rc)};
        return {};
    }

private:
    // A write's own refusal (not found), decided inside the batch's transaction.
    using refusal = std::optional<error>;
    // A queued write: an exchange to append, or a conversation change run on the writer inside
    // the batch's transaction. A change returns SQLite's code (anything but SQLITE_DONE fails and
    // rolls back the whole batch) and may refuse itself without writing.
    struct pending {
        const exchange* entry = nullptr;
        const std::function<int(refusal&)>* change = nullptr;
        std::optional<error> failure{};
        refusal refused{};
        bool done = false;
    };

    result<void> submit(pending& self) {
        auto& s = *state_;
        std::unique_lock lock(s.queue_mutex);
        s.queue.push_back(&self);
        s.queue_changed.wait(lock, [&] { return self.done || !s.writing; });
        if (!self.done) write_queue(lock); // our write is in it
        if (self.failure) return *self.failure;
        if (self.refused) return *self.refused;
        return {};
    }
    template <class F>
    result<void> write(F f) {
        const std::function<int(refusal&)> change = std::move(f);
        pending self;
        self.change = &change;
        return submit(self);
    }

    // Binds an id (and an owner) to a one-step statement and runs it.
    static int run_with_id(sqlite3_stmt* st, const std::string& id, const std::string* owner) {
        const sqlite_detail::statement_use use(st);
        int rc = sqlite_detail::bind_text(st, 1, id);
        if (rc == SQLITE_OK && owner) rc = sqlite_detail::bind_text(st, 2, *owner);
        return rc == SQLITE_OK ? sqlite3_step(st) : rc;
    }
    // SQLITE_DONE with `found` set when the two-key query has a row.
    static int exists(sqlite3_stmt* st, const std::string& first, const std::string& second, bool& found) {
        const sqlite_detail::statement_use use(st);
        int rc = sqlite_detail::bind_text(st, 1, first);
        if (rc == SQLITE_OK) rc = sqlite_detail::bind_text(st, 2, second);
        if (rc != SQLITE_OK) return rc;
        rc = sqlite3_step(st);
        found = rc == SQLITE_ROW;
        return rc == SQLITE_ROW ? SQLITE_DONE : rc;
    }

    int insert_message(const std::string& conversation_id, const conversation_message& m) {
        using sqlite_detail::bind_text;
        sqlite3_stmt* st = state_->conversation_writes.insert_message.get();
        const sqlite_detail::statement_use use(st);
        int rc = bind_text(st, 1, m.id);
        if (rc == SQLITE_OK) rc = bind_text(st, 2, conversation_id);
        if (rc == SQLITE_OK) rc = bind_text(st, 3, to_string(m.role));
        if (rc == SQLITE_OK) rc = bind_text(st, 4, m.content);
        if (rc == SQLITE_OK) rc = bind_text(st, 5, m.provider);
        if (rc == SQLITE_OK) rc = bind_text(st, 6, m.model);
        if (rc == SQLITE_OK) rc = m.usage ? sqlite3_bind_int(st, 7, m.usage->prompt_tokens) : sqlite3_bind_null(st, 7);
        if (rc == SQLITE_OK) rc = m.usage ? sqlite3_bind_int(st, 8, m.usage->completion_tokens) : sqlite3_bind_null(st, 8);
        if (rc == SQLITE_OK) rc = sqlite_detail::bind_optional(st, 9, m.cost_usd);
        if (rc == SQLITE_OK) rc = sqlite_detail::bind_optional(st, 10, m.latency_ms);
        if (rc == SQLITE_OK) rc = sqlite_detail::bind_optional(st, 11, m.time_to_first_token_ms);
        if (rc == SQLITE_OK) rc = bind_text(st, 12, m.request_id);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 13, m.created_at);
        return rc == SQLITE_OK ? sqlite3_step(st) : rc;
    }

    // With read_mutex held.
    result<conversation> read_conversation(const conversation_ref& r) {
        auto& s = *state_;
        sqlite3_stmt* st = s.conversation_reads.one.get();
        const sqlite_detail::statement_use use(st);
        sqlite_detail::bind_text(st, 1, r.id);
        sqlite_detail::bind_text(st, 2, r.owner);
        const int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) return detail::conversation_not_found();
        if (rc != SQLITE_ROW) return unavailable("read a conversation", sqlite_detail::describe(s.reader.get(), rc));
        auto c = conversation_row(st);
        if (c) c->totals = {sqlite3_column_int64(st, 8), sqlite3_column_int64(st, 9), sqlite3_column_double(st, 10)};
        return c;
    }
    // Columns: seq, id, owner, user_id, title, metadata, created_at, updated_at.
    static result<conversation> conversation_row(sqlite3_stmt* st) {
        using sqlite_detail::column_text;
        conversation c;
        c.id = column_text(st, 1);
        c.owner = column_text(st, 2);
        c.user_id = column_text(st, 3);
        if (sqlite3_column_type(st, 4) != SQLITE_NULL) c.title = column_text(st, 4);
        c.metadata = nlohmann::json::parse(column_text(st, 5), nullptr, false);
        if (!c.metadata.is_object()) return error{error_kind::internal, "stored conversation has malformed metadata", "store_corrupt"};
        c.created_at = sqlite3_column_int64(st, 6);
        c.updated_at = sqlite3_column_int64(st, 7);
        return c;
    }
    // Columns: seq, id, conversation_id, role, content, provider, model, prompt_tokens,
    // completion_tokens, cost_usd, latency_ms, ttft_ms, request_id, created_at.
    static result<conversation_message> message_row(sqlite3_stmt* st) {
        using sqlite_detail::column_text;
        conversation_message m;
        m.id = column_text(st, 1);
        m.conversation_id = column_text(st, 2);
        const auto role = parse_role(column_text(st, 3));
        if (!role) return error{error_kind::internal, "stored message has an unknown role", "store_corrupt"};
        m.role = *role;
        m.content = column_text(st, 4);
        m.provider = column_text(st, 5);
        m.model = column_text(st, 6);
        if (sqlite3_column_type(st, 7) != SQLITE_NULL) m.usage = token_usage{sqlite3_column_int(st, 7), sqlite3_column_int(st, 8)};
        m.cost_usd = sqlite_detail::column_optional_double(st, 9);
        m.latency_ms = sqlite_detail::column_optional_double(st, 10);
        m.time_to_first_token_ms = sqlite_detail::column_optional_double(st, 11);
        m.request_id = column_text(st, 12);
        m.created_at = sqlite3_column_int64(st, 13);
        return m;
    }

    // Declaration order matters: members are destroyed in reverse, so statements are finalized
    // before their connection closes, and the writer closes last to checkpoint the WAL.
    struct state {
        sqlite_detail::db_handle writer; // used only by the caller holding `writing`
        sqlite_detail::statement begin, commit, rollback, insert;
        struct {
            sqlite_detail::statement insert_conversation, touch, update, remove, remove_messages, remove_feedback, insert_message, exists,
                message_exists, insert_feedback;
        } conversation_writes;
        sqlite_detail::db_handle reader;
        sqlite_detail::statement select_page, select_one;
        struct {
            sqlite_detail::statement one, page, messages_after, messages_newest, feedback;
        } conversation_reads;
        std::mutex read_mutex; // guards reader and its statements (opened NOMUTEX)
        std::mutex queue_mutex;
        std::condition_variable queue_changed;
        std::vector<pending*> queue; // each entry lives on its caller's stack until `done`
        bool writing = false;
        std::function<void(std::size_t, std::chrono::duration<double>)> on_commit;
    };

    static error unavailable(std::string_view action, const std::string& why) {
        // SQLite's messages name tables and constraints, never bound values, so no content leaks.
        return error{error_kind::unavailable, "history store could not " + std::string(action) + ": " + why, "store_unavailable"};
    }

    // A cursor is a row id: a positive decimal integer.
    static bool parse_cursor(std::string_view text, std::int64_t& id) noexcept {
        if (text.empty() || text.front() < '0' || text.front() > '9') return false;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
        return ec == std::errc{} && end == text.data() + text.size() && id > 0;
    }

    // Called as leader with the lock held; takes the queue, writes it unlocked, reports to all.
    // Returns with the lock released (on_commit runs unlocked, so it delays no other caller).
    void write_queue(std::unique_lock<std::mutex>& lock) {
        auto& s = *state_;
        s.writing = true;
        std::vector<pending*> batch;
        batch.swap(s.queue);
        lock.unlock();
        const auto started = std::chrono::steady_clock::now();
        std::optional<error> failure;
        try {
            failure = write(batch);
        } catch (...) {
            // The batch holds other callers' exchanges: they must be answered, not left waiting.
            roll_back();
            failure = error{error_kind::internal, "history store failed while saving"};
        }
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
        lock.lock();
        for (pending* p : batch) {
            p->failure = failure;
            p->done = true;
        }
        s.writing = false;
        s.queue_changed.notify_all(); // wakes this batch's callers, and one queued caller to lead
        const std::size_t size = batch.size();
        lock.unlock();
        // `batch`'s entries may be gone now (their callers were woken), but its size is ours.
        if (!failure && s.on_commit) s.on_commit(size, took);
    }

    // One transaction for the batch; an exchange's messages are inserted in a row, so their ids are
    // consecutive (this is the only writer while the transaction holds the write lock).
    std::optional<error> write(const std::vector<pending*>& batch) {
        auto& s = *state_;
        int rc = step_once(s.begin.get());
        for (auto it = batch.begin(); rc == SQLITE_DONE && it != batch.end(); ++it) {
            if ((*it)->change) {
                rc = (*(*it)->change)((*it)->refused);
                continue;
            }
            for (const message& m : (*it)->entry->messages)
                if ((rc = insert(*(*it)->entry, m)) != SQLITE_DONE) break;
        }
        if (rc == SQLITE_DONE) rc = step_once(s.commit.get());
        if (rc == SQLITE_DONE) return std::nullopt;
        auto failure = unavailable("save the exchange", sqlite_detail::describe(s.writer.get(), rc));
        roll_back(); // a failed statement or COMMIT can leave the transaction open
        return failure;
    }

    int insert(const exchange& e, const message& m) {
        using sqlite_detail::bind_text;
        sqlite3_stmt* st = state_->insert.get();
        const sqlite_detail::statement_use use(st);
        int rc = bind_text(st, 1, e.user_id);
        if (rc == SQLITE_OK) rc = bind_text(st, 2, to_string(m.role));
        if (rc == SQLITE_OK) rc = bind_text(st, 3, m.content);
        if (rc == SQLITE_OK) rc = bind_text(st, 4, e.model);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 5, e.created_at);
        if (rc == SQLITE_OK) rc = bind_text(st, 6, e.request_id);
        return rc == SQLITE_OK ? sqlite3_step(st) : rc;
    }

    static int step_once(sqlite3_stmt* st) noexcept {
        const sqlite_detail::statement_use use(st);
        return sqlite3_step(st);
    }

    void roll_back() noexcept {
        if (!sqlite3_get_autocommit(state_->writer.get())) step_once(state_->rollback.get());
    }

    std::unique_ptr<state> state_;
};

static_assert(store<sqlite_store>);
static_assert(conversation_store<sqlite_store>);

} // namespace chatkit
