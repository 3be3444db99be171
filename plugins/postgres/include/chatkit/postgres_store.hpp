// chatkit::postgres_store: conversation history in PostgreSQL, the Store that several replicas
// share. Writes use group commit as sqlite_store's do: concurrent append() calls share one
// transaction, and each returns only after its COMMIT succeeded. Blocking: it runs on the worker pool.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/postgres_connection_pool.hpp"
#include "chatkit/store.hpp"

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
#include <vector>

namespace chatkit {

struct postgres_store_options {
    postgres_options connection{};
    // Told of each group commit that succeeded: how many append() calls it answered and how long
    // its transaction took (BEGIN to COMMIT), as sqlite_options::on_commit. Called by the caller
    // that wrote the batch, after the batch's other callers are woken; cheap and thread-safe.
    std::function<void(std::size_t batch, std::chrono::duration<double> seconds)> on_commit{};
};

namespace postgres_store_detail {

// Migration n takes the schema from version n-1 to n (chatkit_schema_version holds one row per
// migration run). Append new ones; never edit a shipped one, since databases in the field have
// already run it.
inline constexpr std::string_view migrations[] = {
    // The identity never reuses a value, so ids order a user's history by time and stay valid as
    // cursors. The strings are bytea, not text: content must round-trip byte for byte (a NUL, or
    // bytes that are not UTF-8, which a text column refuses), and one bad value must not fail the
    // other exchanges of its batch.
    R"sql(
    CREATE TABLE chatkit_messages (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id    bytea  NOT NULL,
        role       text   NOT NULL,
        content    bytea  NOT NULL,
        model      bytea  NOT NULL,
        created_at bigint NOT NULL, -- unix ms
        request_id bytea  NOT NULL
    );
    CREATE INDEX chatkit_messages_by_user ON chatkit_messages (user_id, id);
    )sql",
};

// Advisory lock keys ("chatkit" and a number), held until the end of their transaction.
// Migrating: two replicas starting at once take turns, the second finding the work done.
inline constexpr std::int64_t migration_lock = 0x636861746b697401;
// Writing: one batch at a time across every replica, so ids are handed out in commit order. A
// reader paging back with a cursor then never misses a row that an older transaction committed
// after the reader had passed its id, and an exchange's messages have consecutive ids.
inline constexpr std::int64_t write_lock = 0x636861746b697402;

inline const postgres_statement lock_writes{"chatkit_lock_writes", "SELECT pg_advisory_xact_lock(7163082359978947586)"};
static_assert(write_lock == 7163082359978947586);
inline const postgres_statement commit{"chatkit_commit", "COMMIT"};
inline const postgres_statement insert_message{
    "chatkit_insert_message",
    "INSERT INTO chatkit_messages (user_id, role, content, model, created_at, request_id) VALUES ($1, $2, $3, $4, $5, $6)",
    {17, 25, 17, 17, 20, 17}};
inline const postgres_statement select_page{
    "chatkit_select_page",
    "SELECT id, role, content, model, created_at, request_id FROM chatkit_messages "
    "WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    {17, 20, 20}};

// Start-up failures throw: a service without its store must not start.
[[noreturn]] inline void fail(std::string_view what, const std::string& why) {
    throw std::runtime_error("chatkit::postgres_store: " + std::string(what) + ": " + why);
}

// Applies the migrations the database has not run yet, in one transaction: a failure leaves the
// old version, never half of a new one.
inline void migrate(postgres_connection_pool& pool) {
    constexpr auto latest = static_cast<long>(std::size(migrations));
    auto lease = pool.acquire();
    if (!lease) fail("cannot migrate the schema", lease.error().message);
    auto run = [&](const std::string& sql) {
        auto r = lease->exec(sql.c_str());
        if (!r) {
            if (!lease->broken()) (void)lease->exec("ROLLBACK");
            fail("cannot migrate the schema", r.error().message);
        }
        return std::move(*r);
    };
    run("BEGIN");
    run("SELECT pg_advisory_xact_lock(" + std::to_string(migration_lock) + ")");
    run("CREATE TABLE IF NOT EXISTS chatkit_schema_version (version integer PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())");
    const auto current = run("SELECT coalesce(max(version), 0) FROM chatkit_schema_version");
    const long version = std::stol(PQgetvalue(current.get(), 0, 0));
    if (version > latest) {
        run("ROLLBACK");
        fail("cannot use " + pool.described(), "schema version " + std::to_string(version) +
                                                   " is newer than this chatkit's (" + std::to_string(latest) + ")");
    }
    for (long v = version; v < latest; ++v) {
        run(std::string(migrations[v]));
        run("INSERT INTO chatkit_schema_version (version) VALUES (" + std::to_string(v + 1) + ")");
    }
    run("COMMIT");
}

} // namespace postgres_store_detail

class postgres_store {
public:
    // Connects, and migrates the schema; throws (std::runtime_error, or std::invalid_argument for
    // a URL libpq cannot read) naming the server but never the password.
    explicit postgres_store(postgres_store_options options)
        : state_(std::make_unique<state>(postgres_connection_pool{std::move(options.connection)})) {
        state_->on_commit = std::move(options.on_commit);
        postgres_store_detail::migrate(state_->pool);
    }

    postgres_store(postgres_store&&) noexcept = default;
    postgres_store& operator=(postgres_store&&) noexcept = default;

    // Returns once the exchange is committed. Callers that arrive while a batch is being written
    // queue up; the first to find the writer free writes the whole queue in one transaction.
    result<void> append(const exchange& e) {
        if (e.messages.empty()) return {};
        auto& s = *state_;
        pending self{&e};
        std::unique_lock lock(s.queue_mutex);
        s.queue.push_back(&self);
        s.queue_changed.wait(lock, [&] { return self.done || !s.writing; });
        if (!self.done) write_queue(lock); // our exchange is in it
        if (self.failure) return *self.failure;
        return {};
    }

    result<history_page> history(const history_query& q) {
        using namespace postgres_store_detail;
        std::int64_t before = std::numeric_limits<std::int64_t>::max();
        if (!q.before.empty() && !parse_cursor(q.before, before))
            return error{error_kind::invalid_request, "'before' is not a valid cursor", "invalid_cursor", "before"};
        history_page page;
        if (q.limit == 0) return page;
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);
        // One more than asked for: are there older ones?
        const std::vector<postgres_param> params{std::string_view{q.user_id}, before, static_cast<std::int64_t>(limit) + 1};
        auto rows = with_retry([&](postgres_connection_pool::lease& c) { return c.prepared(select_page, params); });
        if (!rows) return unavailable("read history", rows.error());
        const PGresult* r = rows->get();
        for (int i = 0; i < PQntuples(r); ++i) {
            if (page.messages.size() == limit) {
                page.next_cursor = page.messages.back().id; // the smallest id in the page
                break;
            }
            const auto role = parse_role(postgres_bytes(r, i, 1));
            if (!role) return error{error_kind::internal, "stored message has an unknown role", "store_corrupt"};
            page.messages.push_back({std::to_string(postgres_int8(r, i, 0)), *role, postgres_bytes(r, i, 2),
                                     postgres_bytes(r, i, 3), postgres_int8(r, i, 4), postgres_bytes(r, i, 5)});
        }
        std::reverse(page.messages.begin(), page.messages.end()); // oldest first
        return page;
    }

    component_health health() {
        auto r = with_retry([](postgres_connection_pool::lease& c) { return c.exec("SELECT 1"); });
        if (!r) return {.ok = false, .detail = r.error().message}; // names the server, never the password
        return {};
    }

private:
    struct pending {
        const exchange* entry;
        std::optional<error> failure{};
        bool done = false;
    };

    struct state {
        explicit state(postgres_connection_pool p) : pool(std::move(p)) {}
        postgres_connection_pool pool;
        std::mutex queue_mutex;
        std::condition_variable queue_changed;
        std::vector<pending*> queue; // each entry lives on its caller's stack until `done`
        bool writing = false;
        std::function<void(std::size_t, std::chrono::duration<double>)> on_commit;
    };

    static error unavailable(std::string_view action, const error& why) {
        // The pool's messages name the server and quote PostgreSQL's, which never quote a bound
        // parameter's value, so no content leaks (and the password was scrubbed).
        return error{error_kind::unavailable, "history store could not " + std::string(action) + ": " + why.message,
                     "store_unavailable"};
    }

    // A cursor is a row id: a positive decimal integer.
    static bool parse_cursor(std::string_view text, std::int64_t& id) noexcept {
        if (text.empty() || text.front() < '0' || text.front() > '9') return false;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
        return ec == std::errc{} && end == text.data() + text.size() && id > 0;
    }

    // Runs `f` on a connection. A connection that lay idle may have broken unnoticed (the server
    // restarted): when `f` finds it broken, the idle ones are dropped and `f` runs once more on a
    // fresh connection. Only for work that changed nothing when it failed (a read, or a
    // transaction whose BEGIN failed).
    template <class F>
    auto with_retry(F&& f) -> decltype(f(std::declval<postgres_connection_pool::lease&>())) {
        auto& pool = state_->pool;
        for (int attempt = 0;; ++attempt) {
            auto lease = pool.acquire();
            if (!lease) return std::move(lease).error();
            auto r = f(*lease);
            if (r || !lease->broken()) return r;
            const bool retry = lease->reused() && attempt == 0;
            pool.close_idle();
            if (!retry) return r;
        }
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
            // (The lease's connection, left inside its transaction, is closed, not lent again.)
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
        if (!failure && s.on_commit) s.on_commit(size, took);
    }

    // One transaction for the batch. A failure after BEGIN is not retried: the caller does not
    // know whether the server committed it before the connection broke, so it is not acknowledged
    // (the client may retry), and nothing acknowledged can be lost.
    std::optional<error> write(const std::vector<pending*>& batch) {
        using namespace postgres_store_detail;
        auto& pool = state_->pool;
        std::optional<postgres_connection_pool::lease> held;
        auto begun = with_retry([&](postgres_connection_pool::lease& c) {
            auto r = c.exec("BEGIN");
            if (r) held.emplace(std::move(c)); // keeps the connection for the rest of the transaction
            return r;
        });
        if (!begun) return unavailable("save the exchange", begun.error());
        auto& c = *held;
        auto step = [&]() -> result<void> {
            // The rest of the transaction in one round trip: the lock, every insert, the COMMIT.
            std::vector<std::pair<const postgres_statement*, std::vector<postgres_param>>> calls;
            calls.emplace_back(&lock_writes, std::vector<postgres_param>{});
            for (const pending* p : batch) {
                const exchange& e = *p->entry;
                for (const message& m : e.messages)
                    calls.emplace_back(&insert_message,
                                       std::vector<postgres_param>{std::string_view{e.user_id}, to_string(m.role),
                                                                   std::string_view{m.content}, std::string_view{e.model},
                                                                   std::int64_t{e.created_at}, std::string_view{e.request_id}});
            }
            calls.emplace_back(&commit, std::vector<postgres_param>{});
            auto r = c.pipeline(calls);
            if (!r) return std::move(r).error();
            // COMMIT of a transaction that failed answers ROLLBACK, not an error.
            if (std::string_view{PQcmdStatus(r->get())} != "COMMIT")
                return error{error_kind::unavailable, "PostgreSQL " + pool.described() + ": the transaction was rolled back",
                             "store_unavailable"};
            return {};
        };
        auto done = step();
        if (done) return std::nullopt;
        if (c.broken()) pool.close_idle(); // the server went away: the idle connections are as stale
        else (void)c.exec("ROLLBACK"); // its failure only closes the connection (see lease)
        return unavailable("save the exchange", done.error());
    }

    std::unique_ptr<state> state_;
};

static_assert(store<postgres_store>);

} // namespace chatkit
