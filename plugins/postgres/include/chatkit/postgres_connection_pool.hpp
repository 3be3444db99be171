// Blocking PostgreSQL connections (libpq) shared by the threads of a worker pool: a bounded pool,
// a timeout on connecting and on every statement, statements prepared once per connection, and a
// fresh connection after one is found broken. Errors are values; the password of the connection
// URL never appears in one (nor in anything else this header formats).
#pragma once

#include "chatkit/error.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace chatkit {

struct postgres_options {
    // postgresql://user:password@host:port/db?param=value (or postgres://, or a libpq key=value
    // string): parsed by libpq itself. A secret when it holds a password.
    std::string url{};
    // Used when the URL names no connect_timeout of its own (libpq counts whole seconds, 2 at least).
    std::chrono::seconds connect_timeout{5};
    // statement_timeout of every connection: a statement slower than this fails, and its caller
    // gets an error rather than a worker thread stuck behind a lock or a hung server.
    std::chrono::milliseconds statement_timeout{10'000};
    // Connections open at most; a caller waits up to wait_timeout for one to be free.
    std::size_t max_connections = 8;
    std::chrono::milliseconds wait_timeout{5'000};
};

/// A result, cleared with libpq's own PQclear.
struct postgres_result_deleter {
    void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using postgres_result = std::unique_ptr<PGresult, postgres_result_deleter>;

/// One parameter of a prepared statement, sent in binary: the bytes as they are (bytea, text),
/// an int8 or a float8 in network byte order, or NULL.
class postgres_param {
public:
    // An empty view may have no data, which libpq would take for NULL: it is sent as "".
    postgres_param(std::string_view bytes) noexcept
        : data_(bytes.data() ? bytes.data() : ""), size_(bytes.size()) {} // NOLINT: implicit on purpose
    postgres_param(std::int64_t value) noexcept : size_(8) {              // NOLINT
        for (int i = 0; i < 8; ++i) int8_[i] = static_cast<char>(static_cast<std::uint64_t>(value) >> (56 - 8 * i));
        data_ = int8_;
    }
    // Named, not constructors: an int would convert to int8 and to double alike.
    [[nodiscard]] static postgres_param null() noexcept { return postgres_param{}; }
    [[nodiscard]] static postgres_param float8(double value) noexcept { // IEEE 754 bits, as int8's bytes
        return postgres_param{static_cast<std::int64_t>(std::bit_cast<std::uint64_t>(value))};
    }
    postgres_param(const postgres_param& other) noexcept { *this = other; }
    postgres_param& operator=(const postgres_param& other) noexcept {
        if (this == &other) return *this;
        size_ = other.size_;
        std::copy(other.int8_, other.int8_ + 8, int8_);
        data_ = other.data_ == other.int8_ ? int8_ : other.data_; // an int8 points at its own copy
        return *this;
    }
    [[nodiscard]] const char* data() const noexcept { return data_; }
    [[nodiscard]] int size() const noexcept { return static_cast<int>(size_); }

private:
    postgres_param() noexcept = default; // NULL: libpq sends a null value pointer as NULL

    const char* data_ = nullptr;
    std::size_t size_ = 0;
    char int8_[8]{};
};

/// An int8 column of a binary result (network byte order).
[[nodiscard]] inline std::int64_t postgres_int8(const PGresult* r, int row, int column) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(r, row, column));
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
    return static_cast<std::int64_t>(v);
}
/// A float8 column of a binary result.
[[nodiscard]] inline double postgres_float8(const PGresult* r, int row, int column) noexcept {
    return std::bit_cast<double>(static_cast<std::uint64_t>(postgres_int8(r, row, column)));
}
[[nodiscard]] inline std::string postgres_bytes(const PGresult* r, int row, int column) {
    return {PQgetvalue(r, row, column), static_cast<std::size_t>(PQgetlength(r, row, column))};
}

/// A statement to prepare on each connection the first time that connection runs it.
struct postgres_statement {
    std::string_view name;
    std::string_view sql;
    std::vector<Oid> types{}; // of the parameters: 17 bytea, 25 text, 20 int8, 701 float8
};

/// The connection URL's parts that are not secret (host, port, database, user), to name the
/// server in errors and logs; and the password, to scrub it from any message that might quote it.
struct postgres_target {
    std::string described{};
    std::string password{};
};

namespace postgres_detail {
inline void replace_all(std::string& text, std::string_view what, std::string_view with) {
    if (what.empty()) return;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + with.size())) text.replace(at, what.size(), with);
}
inline std::string trim(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text;
}
} // namespace postgres_detail

/// Parses the URL (or key=value string) as libpq would. The error's message is libpq's, with the
/// URL's password, and anything after "password", never quoted.
inline result<postgres_target> parse_postgres_url(const std::string& url) {
    char* why = nullptr;
    PQconninfoOption* options = PQconninfoParse(url.c_str(), &why);
    if (!options) {
        std::string message = why ? postgres_detail::trim(why) : "out of memory";
        if (why) PQfreemem(why);
        // libpq may quote the part it could not read: keep that out when a password may be in it.
        if (url.find('@') != std::string::npos || url.find("password") != std::string::npos)
            message = "libpq cannot read it (its message is not shown: it may quote the password)";
        return error{error_kind::invalid_request, "not a PostgreSQL URL: " + message, "invalid_database_url"};
    }
    postgres_target t;
    std::string host, port, dbname, user;
    for (auto* o = options; o->keyword; ++o) {
        if (!o->val) continue;
        const std::string_view k = o->keyword;
        if (k == "host" || k == "hostaddr") host = host.empty() ? o->val : host;
        else if (k == "port") port = o->val;
        else if (k == "dbname") dbname = o->val;
        else if (k == "user") user = o->val;
        else if (k == "password") t.password = o->val;
    }
    PQconninfoFree(options);
    t.described = "postgresql://" + (user.empty() ? std::string{} : user + "@") + (host.empty() ? "localhost" : host) +
                  (port.empty() ? std::string{} : ":" + port) + "/" + dbname;
    postgres_detail::replace_all(t.described, t.password, "***"); // a password used as a user name, say
    return t;
}

/// Up to `max_connections` blocking connections, each used by one thread at a time. Threading:
/// `run` is called concurrently. Move-only; the connections close when it is destroyed.
class postgres_connection_pool {
    struct connection;

public:
    /// Throws std::invalid_argument for a URL libpq cannot read (the message quotes no password).
    explicit postgres_connection_pool(postgres_options options) : s_(std::make_unique<state>(std::move(options))) {
        auto target = parse_postgres_url(s_->options.url);
        if (!target) throw std::invalid_argument(target.error().message);
        s_->target = std::move(*target);
    }
    postgres_connection_pool(postgres_connection_pool&&) noexcept = default;
    postgres_connection_pool& operator=(postgres_connection_pool&&) noexcept = default;

    [[nodiscard]] const postgres_options& options() const noexcept { return s_->options; }
    /// The server as the URL names it, without the password: for errors and logs.
    [[nodiscard]] const std::string& described() const noexcept { return s_->target.described; }

    /// One connection lent to a caller: statements run on it through exec/prepared, in order
    /// (a transaction spans several). Returned to the pool when destroyed, or closed if it broke.
    class lease {
    public:
        lease(lease&& other) noexcept
            : pool_(std::exchange(other.pool_, nullptr)), c_(std::exchange(other.c_, nullptr)), reused_(other.reused_) {}
        lease& operator=(lease&&) = delete;
        ~lease() {
            if (pool_) pool_->release(c_);
        }
        /// Whether it lay idle in the pool before: a broken one may just have found out that the
        /// server restarted meanwhile, and a call that changed nothing yet may be retried.
        [[nodiscard]] bool reused() const noexcept { return reused_; }
        [[nodiscard]] bool broken() const noexcept { return PQstatus(c_->conn) != CONNECTION_OK; }

        /// A statement without parameters (BEGIN, COMMIT, SET ...), its result as text.
        result<postgres_result> exec(const char* sql) { return check(postgres_result{PQexec(c_->conn, sql)}); }
        /// A statement prepared on this connection the first time it runs here; parameters and
        /// results in binary.
        result<postgres_result> prepared(const postgres_statement& st, const std::vector<postgres_param>& params) {
            if (auto made = prepare(st); !made) return std::move(made).error();
            const binary_params b{params};
            return check(postgres_result{
                PQexecPrepared(c_->conn, std::string{st.name}.c_str(), b.count(), b.values.data(), b.lengths.data(), b.formats.data(), 1)});
        }

        using calls = std::vector<std::pair<const postgres_statement*, std::vector<postgres_param>>>;

        /// Prepared statements run in one round trip (libpq's pipeline mode): each is sent without
        /// waiting for the answer to the one before. The first failure skips the rest (the server
        /// ignores them up to the pipeline's end); its error is returned. On success, the result of
        /// the last statement. Meant for small answers (INSERT, COMMIT): the server's answers wait
        /// in its socket buffer until every statement is sent.
        result<postgres_result> pipeline(const calls& list) {
            auto all = pipeline_all(list);
            if (!all) return std::move(all).error();
            return std::move(all->back());
        }

        /// As pipeline, but on success the result of every statement, in order.
        result<std::vector<postgres_result>> pipeline_all(const calls& list) {
            if (list.empty()) return error{error_kind::internal, "an empty pipeline", "store_misuse"};
            for (const auto& call : list)
                if (auto made = prepare(*call.first); !made) return std::move(made).error();
            if (PQenterPipelineMode(c_->conn) != 1) return check(postgres_result{}).error();
            std::size_t sent = 0;
            for (const auto& [st, params] : list) {
                const binary_params b{params};
                if (PQsendQueryPrepared(c_->conn, std::string{st->name}.c_str(), b.count(), b.values.data(), b.lengths.data(),
                                        b.formats.data(), 1) != 1)
                    break;
                ++sent;
            }
            const bool synced = PQpipelineSync(c_->conn) == 1;
            std::optional<result<postgres_result>> failed;
            std::vector<postgres_result> all;
            // Each statement's answer is its result, then a null; a lost connection ends in nulls.
            for (std::size_t i = 0; i < sent; ++i) {
                postgres_result r{PQgetResult(c_->conn)};
                if (!r) break; // the connection is gone
                if (!failed) {
                    if (auto checked = check(std::move(r)); checked) all.push_back(std::move(*checked));
                    else failed = std::move(checked);
                }
                while (postgres_result extra{PQgetResult(c_->conn)}) {}
            }
            if (synced && !broken())
                while (postgres_result r{PQgetResult(c_->conn)})
                    if (PQresultStatus(r.get()) == PGRES_PIPELINE_SYNC) break;
            (void)PQexitPipelineMode(c_->conn); // fails only with answers unread: the connection is then broken
            if (failed) return std::move(*failed).error();
            if (sent < list.size() || !synced || all.size() < list.size()) return check(postgres_result{}).error();
            return all;
        }

    private:
        friend class postgres_connection_pool;

        // Parameters in binary, as libpq takes them.
        struct binary_params {
            explicit binary_params(const std::vector<postgres_param>& params) : formats(params.size(), 1) {
                for (const auto& p : params) {
                    values.push_back(p.data());
                    lengths.push_back(p.size());
                }
            }
            [[nodiscard]] int count() const noexcept { return static_cast<int>(values.size()); }
            std::vector<const char*> values;
            std::vector<int> lengths, formats;
        };

        result<void> prepare(const postgres_statement& st) {
            const std::string name{st.name};
            if (c_->prepared.contains(name)) return {};
            auto made = check(postgres_result{
                PQprepare(c_->conn, name.c_str(), std::string{st.sql}.c_str(), static_cast<int>(st.types.size()), st.types.data())});
            if (!made) return std::move(made).error();
            c_->prepared.insert(name);
            return {};
        }

        lease(postgres_connection_pool* pool, connection* c, bool reused) noexcept : pool_(pool), c_(c), reused_(reused) {}

        result<postgres_result> check(postgres_result r) {
            const auto status = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
            if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return r;
            std::string why = postgres_detail::trim(r ? PQresultErrorMessage(r.get()) : "");
            if (why.empty()) why = postgres_detail::trim(PQerrorMessage(c_->conn));
            return pool_->failure(broken() ? "lost its connection to " : "got an error from ", std::move(why));
        }

        postgres_connection_pool* pool_;
        connection* c_;
        bool reused_;
    };

    /// Takes an idle connection or opens one (waiting while all are busy, up to wait_timeout).
    result<lease> acquire() {
        state& s = *s_;
        std::unique_lock lock{s.mutex};
        const auto deadline = std::chrono::steady_clock::now() + s.options.wait_timeout;
        for (;;) {
            if (!s.idle.empty()) {
                connection* c = s.idle.back();
                s.idle.pop_back();
                return lease{this, c, true};
            }
            if (s.open < s.options.max_connections) {
                ++s.open;
                lock.unlock();
                auto made = connect();
                lock.lock();
                if (made) return lease{this, *made, false};
                --s.open;
                s.freed.notify_one();
                return std::move(made).error();
            }
            if (s.freed.wait_until(lock, deadline) == std::cv_status::timeout && s.idle.empty() && s.open >= s.options.max_connections)
                return error{error_kind::unavailable,
                             described() + ": all " + std::to_string(s.options.max_connections) + " connections stayed busy", "store_busy"};
        }
    }

    /// Runs `f(lease&)` on a connection. One that lay idle may have broken unnoticed (the server
    /// restarted): when `f` fails on it broken, the idle ones are dropped and `f` runs once more on
    /// a fresh connection. Only for work that changed nothing when it failed (a read, a single
    /// statement that is all or nothing, or a transaction whose BEGIN failed).
    template <class F>
    auto with_connection(F&& f) -> decltype(f(std::declval<lease&>())) {
        for (int attempt = 0;; ++attempt) {
            auto held = acquire();
            if (!held) return std::move(held).error();
            auto r = f(*held);
            if (r || !held->broken()) return r;
            const bool retry = held->reused() && attempt == 0;
            close_idle();
            if (!retry) return r;
        }
    }

    /// Closes the idle connections: after one was found broken (the server restarted), the others,
    /// opened before, are as stale.
    void close_idle() {
        state& s = *s_;
        std::vector<connection*> stale;
        {
            std::lock_guard lock{s.mutex};
            stale.swap(s.idle);
            s.open -= stale.size();
        }
        for (auto* c : stale) delete c;
        s.freed.notify_all();
    }

private:
    struct connection {
        explicit connection(PGconn* c) noexcept : conn(c) {}
        connection(const connection&) = delete;
        connection& operator=(const connection&) = delete;
        ~connection() { PQfinish(conn); }
        PGconn* conn;
        std::unordered_set<std::string> prepared{}; // names prepared on this connection
    };

    struct state {
        explicit state(postgres_options o) : options(std::move(o)) {}
        ~state() {
            for (auto* c : idle) delete c;
        }
        state(const state&) = delete;
        state& operator=(const state&) = delete;
        postgres_options options;
        postgres_target target{};
        std::mutex mutex;
        std::condition_variable freed;
        std::vector<connection*> idle;
        std::size_t open = 0;
    };

    error failure(std::string_view what, std::string why) const {
        postgres_detail::replace_all(why, s_->target.password, "***");
        return error{error_kind::unavailable, "PostgreSQL " + described() + ": " + std::string{what} + "the server: " + why,
                     "store_unavailable"};
    }

    void release(connection* c) {
        state& s = *s_;
        // A broken connection, or one left inside a transaction (a failed COMMIT or ROLLBACK), is
        // not lent again.
        const bool healthy = PQstatus(c->conn) == CONNECTION_OK && PQtransactionStatus(c->conn) == PQTRANS_IDLE;
        {
            std::lock_guard lock{s.mutex};
            if (healthy) s.idle.push_back(c);
            else --s.open;
        }
        if (!healthy) delete c;
        s.freed.notify_one();
    }

    // A new connection with the statement timeout set. connect_timeout comes before the URL in
    // the parameters, so that one the URL names wins (libpq keeps the last value of a keyword).
    result<connection*> connect() {
        const auto& o = s_->options;
        const std::string timeout = std::to_string(std::max<long long>(o.connect_timeout.count(), 1));
        const char* keywords[] = {"connect_timeout", "dbname", nullptr};
        const char* values[] = {timeout.c_str(), o.url.c_str(), nullptr};
        auto c = std::make_unique<connection>(PQconnectdbParams(keywords, values, 1));
        if (!c->conn) return error{error_kind::unavailable, "PostgreSQL " + described() + ": out of memory", "store_unavailable"};
        // Notices (CREATE TABLE IF NOT EXISTS on an existing table, say) would go to stderr.
        PQsetNoticeProcessor(
            c->conn, [](void*, const char*) {}, nullptr);
        if (PQstatus(c->conn) != CONNECTION_OK) {
            std::string why = postgres_detail::trim(PQerrorMessage(c->conn));
            postgres_detail::replace_all(why, s_->target.password, "***");
            return error{error_kind::unavailable, "PostgreSQL " + described() + ": cannot connect: " + why, "store_unavailable"};
        }
        // Errors without DETAIL: it may quote a row's values ("Failing row contains (...)"), and
        // these messages reach logs and clients.
        PQsetErrorVerbosity(c->conn, PQERRORS_TERSE);
        const std::string set = "SET statement_timeout = " + std::to_string(o.statement_timeout.count());
        postgres_result r{PQexec(c->conn, set.c_str())};
        if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
            std::string why = postgres_detail::trim(PQerrorMessage(c->conn));
            postgres_detail::replace_all(why, s_->target.password, "***");
            return error{error_kind::unavailable, "PostgreSQL " + described() + ": cannot set up a connection: " + why,
                         "store_unavailable"};
        }
        return c.release();
    }

    std::unique_ptr<state> s_;
};

} // namespace chatkit
