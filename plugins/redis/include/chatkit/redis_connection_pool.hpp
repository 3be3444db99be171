// Blocking Redis connections (hiredis) shared by the threads of a worker pool: where Redis is
// (parsed from a redis:// URL), a bounded pool of connections, a timeout on connecting and on
// every command, and a fresh connection after any failure. Errors are values; a password never
// appears in one (nor in anything else this header formats).
#pragma once

#include "chatkit/error.hpp"

#include <hiredis/hiredis.h>

#include <sys/time.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct redis_options {
    std::string host = "127.0.0.1";
    int port = 6379;
    int db = 0;
    std::string user{};     // Redis 6 ACL user; empty: the default user (AUTH with the password only)
    std::string password{}; // empty: no AUTH. A secret: never logged, never in an error
    std::chrono::milliseconds connect_timeout{500};
    // Each command's send and receive; a Redis slower than this is treated as down for that call.
    std::chrono::milliseconds command_timeout{250};
    // Connections open at most; a caller waits up to connect_timeout for one to be free.
    std::size_t max_connections = 8;
    // After a failed connection attempt, callers fail at once (no new attempt) for this long, so a
    // Redis that is down costs a worker thread nothing rather than a connect timeout per call.
    std::chrono::milliseconds retry_after{1000};

    // redis://[user@]host:port/db: the URL without the password, for logs and errors.
    [[nodiscard]] std::string redacted_url() const {
        std::string out = "redis://";
        if (!user.empty()) out += user + "@";
        else if (!password.empty()) out += "***@";
        if (host.find(':') != std::string::npos) out += "[" + host + "]";
        else out += host;
        return out + ":" + std::to_string(port) + "/" + std::to_string(db);
    }
};

namespace detail {
// RFC 3986 percent-decoding of the userinfo, so a password may hold '@', ':' or '/'.
inline bool redis_percent_decode(std::string_view in, std::string& out) {
    out.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '%') {
            out += in[i];
            continue;
        }
        unsigned value = 0;
        if (i + 2 >= in.size() || std::from_chars(in.data() + i + 1, in.data() + i + 3, value, 16).ptr != in.data() + i + 3)
            return false;
        out += static_cast<char>(value);
        i += 2;
    }
    return true;
}
} // namespace detail

/// Parses `redis://[[user]:password@]host[:port][/db]` (port 6379 and db 0 by default; an IPv6
/// host in brackets). `rediss://` (TLS) is refused: Debian 12's hiredis (0.14) has no TLS support.
/// The error's message quotes no part of the userinfo, which may hold the password.
inline result<redis_options> parse_redis_url(std::string_view url) {
    auto fail = [](std::string why) { return error{error_kind::invalid_request, std::move(why), "invalid_redis_url"}; };
    if (url.starts_with("rediss://"))
        return fail("rediss:// (Redis over TLS) is not supported: this build's hiredis (Debian 12's 0.14) has no TLS; "
                    "use redis:// on a private network, or a local TLS tunnel (stunnel, spiped) to the server");
    if (!url.starts_with("redis://")) return fail("must start with redis:// (redis://[user:password@]host:port/db)");
    std::string_view rest = url.substr(8);
    redis_options o;
    if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
        const std::string_view userinfo = rest.substr(0, at);
        rest = rest.substr(at + 1);
        const auto colon = userinfo.find(':');
        std::string user, password;
        if (!detail::redis_percent_decode(userinfo.substr(0, colon), user) ||
            (colon != std::string_view::npos && !detail::redis_percent_decode(userinfo.substr(colon + 1), password)))
            return fail("the user or password has a bad %-escape");
        if (colon == std::string_view::npos) {
            password = std::move(user); // redis://secret@host: a password alone, as redis-cli reads it
            user.clear();
        }
        o.user = std::move(user);
        o.password = std::move(password);
    }
    const auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    const std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    std::string_view port;
    if (authority.starts_with("[")) {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) return fail("an IPv6 host must be closed by ']'");
        o.host = std::string{authority.substr(1, close - 1)};
        const std::string_view after = authority.substr(close + 1);
        if (!after.empty() && !after.starts_with(":")) return fail("expected ':port' after the IPv6 host");
        if (!after.empty()) port = after.substr(1);
    } else {
        const auto colon = authority.find(':');
        o.host = std::string{authority.substr(0, colon)};
        if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    }
    if (o.host.empty()) return fail("has no host (redis://host:port/db)");
    auto number = [](std::string_view text, int min, int max, int& value) {
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        return ec == std::errc{} && end == text.data() + text.size() && value >= min && value <= max;
    };
    if (!port.empty() && !number(port, 1, 65535, o.port)) return fail("has a bad port: '" + std::string{port} + "' (1 to 65535)");
    if (!path.empty() && !number(path, 0, 1'000'000, o.db)) return fail("has a bad database number: '" + std::string{path} + "'");
    return o;
}

/// A reply, freed with hiredis's own freeReplyObject.
struct redis_reply_deleter {
    void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using redis_reply = std::unique_ptr<redisReply, redis_reply_deleter>;

/// Up to `max_connections` blocking connections, each used by one thread at a time. Threading:
/// `command` is called concurrently. Move-only; the connections close when it is destroyed.
class redis_connection_pool {
public:
    explicit redis_connection_pool(redis_options options) : s_(std::make_unique<state>(std::move(options))) {}
    redis_connection_pool(redis_connection_pool&&) noexcept = default;
    redis_connection_pool& operator=(redis_connection_pool&&) noexcept = default;

    [[nodiscard]] const redis_options& options() const noexcept { return s_->options; }

    /// Runs one command, its arguments sent as they are (binary-safe). An error for: no
    /// connection (refused, timed out, the credentials refused, all busy), a command that timed
    /// out or lost its connection (the connection is then closed: the next call opens a fresh
    /// one), or Redis's own error reply. A lost connection closes the idle ones too, and a call
    /// whose connection was found broken after lying idle (Redis restarted meanwhile) is retried
    /// once, at once, on a fresh one.
    result<redis_reply> command(std::initializer_list<std::string_view> args) {
        return command(std::span<const std::string_view>{args.begin(), args.size()});
    }
    /// The same, with arguments counted at run time (a script's keys and values).
    result<redis_reply> command(std::span<const std::string_view> args) {
        std::vector<const char*> argv;
        std::vector<std::size_t> lengths;
        argv.reserve(args.size());
        lengths.reserve(args.size());
        for (auto a : args) {
            argv.push_back(a.data());
            lengths.push_back(a.size());
        }
        for (int attempt = 0;; ++attempt) {
            auto conn = acquire();
            if (!conn) return std::move(conn).error();
            auto [context, reused] = *conn;
            auto* reply = static_cast<redisReply*>(
                redisCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lengths.data()));
            if (!reply) {
                const bool timed_out = context->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
                error e{timed_out ? error_kind::timeout : error_kind::unavailable,
                        s_->options.redacted_url() + (timed_out ? ": the command timed out" : ": the connection failed: " + std::string{context->errstr}),
                        "redis_unavailable"};
                release(context, false);
                // A lost connection (not a slow one) means Redis went away: the idle ones are as stale.
                if (!timed_out) close_idle();
                if (reused && !timed_out && attempt == 0) continue;
                return e;
            }
            redis_reply owned{reply};
            release(context, true);
            if (owned->type == REDIS_REPLY_ERROR)
                return error{error_kind::upstream, s_->options.redacted_url() + ": " + std::string{owned->str, owned->len}, "redis_error"};
            return owned;
        }
    }

    /// Connects now (or takes an idle connection) and PINGs: for a check at start-up, which
    /// reports wrong credentials or an unreachable server before the first chat does.
    result<void> ping() {
        auto reply = command({"PING"});
        if (!reply) return std::move(reply).error();
        return {};
    }

private:
    struct state {
        explicit state(redis_options o) : options(std::move(o)) {}
        ~state() {
            for (auto* c : idle) redisFree(c);
        }
        redis_options options;
        std::mutex mutex;
        std::condition_variable freed;
        std::vector<redisContext*> idle;
        std::size_t open = 0;
        std::chrono::steady_clock::time_point next_attempt{};
        std::string last_connect_error; // repeated while connecting is paused
    };

    struct lease {
        redisContext* context;
        bool reused;
    };

    static timeval to_timeval(std::chrono::milliseconds ms) {
        return timeval{static_cast<time_t>(ms.count() / 1000), static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
    }

    result<lease> acquire() {
        state& s = *s_;
        std::unique_lock lock{s.mutex};
        const auto deadline = std::chrono::steady_clock::now() + s.options.connect_timeout;
        for (;;) {
            if (!s.idle.empty()) {
                redisContext* c = s.idle.back();
                s.idle.pop_back();
                return lease{c, true};
            }
            if (s.open < s.options.max_connections) {
                const auto now = std::chrono::steady_clock::now();
                if (now < s.next_attempt) return error{error_kind::unavailable, s.last_connect_error, "redis_unavailable"};
                ++s.open;
                lock.unlock();
                auto made = connect(s.options);
                lock.lock();
                if (made) return lease{*made, false};
                --s.open;
                s.next_attempt = std::chrono::steady_clock::now() + s.options.retry_after;
                s.last_connect_error = made.error().message;
                s.freed.notify_one();
                return std::move(made).error();
            }
            if (s.freed.wait_until(lock, deadline) == std::cv_status::timeout && s.idle.empty() && s.open >= s.options.max_connections)
                return error{error_kind::unavailable,
                             s.options.redacted_url() + ": all " + std::to_string(s.options.max_connections) + " connections stayed busy",
                             "redis_busy"};
        }
    }

    void release(redisContext* c, bool healthy) {
        state& s = *s_;
        {
            std::lock_guard lock{s.mutex};
            if (healthy && c->err == 0) {
                s.idle.push_back(c);
                c = nullptr;
            } else {
                --s.open;
            }
        }
        if (c) redisFree(c);
        s.freed.notify_one();
    }

    void close_idle() {
        state& s = *s_;
        std::vector<redisContext*> stale;
        {
            std::lock_guard lock{s.mutex};
            stale.swap(s.idle);
            s.open -= stale.size();
        }
        for (auto* c : stale) redisFree(c);
        s.freed.notify_all();
    }

    // A new connection, authenticated and on its database, with the command timeout set.
    static result<redisContext*> connect(const redis_options& o) {
        auto fail = [&](std::string why) { return error{error_kind::unavailable, o.redacted_url() + ": " + std::move(why), "redis_unavailable"}; };
        redisContext* c = redisConnectWithTimeout(o.host.c_str(), o.port, to_timeval(o.connect_timeout));
        if (!c) return fail("cannot allocate a connection");
        std::unique_ptr<redisContext, void (*)(redisContext*)> owned{c, redisFree};
        if (c->err) return fail("cannot connect: " + std::string{c->errstr});
        if (redisSetTimeout(c, to_timeval(o.command_timeout)) != REDIS_OK) return fail("cannot set the command timeout");
        auto run = [&](std::initializer_list<std::string_view> args) -> result<void> {
            std::vector<const char*> argv;
            std::vector<std::size_t> lengths;
            for (auto a : args) {
                argv.push_back(a.data());
                lengths.push_back(a.size());
            }
            redis_reply reply{static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data()))};
            if (!reply) return fail("the connection failed: " + std::string{c->errstr});
            // Redis's error replies quote no argument (AUTH's says WRONGPASS or NOAUTH), so they may be shown.
            if (reply->type == REDIS_REPLY_ERROR) return fail(std::string{reply->str, reply->len});
            return {};
        };
        if (!o.password.empty()) {
            auto auth = o.user.empty() ? run({"AUTH", o.password}) : run({"AUTH", o.user, o.password});
            if (!auth) return error{error_kind::unavailable, auth.error().message + " (the credentials were refused)", "redis_auth"};
        }
        if (o.db != 0)
            if (auto select = run({"SELECT", std::to_string(o.db)}); !select) return std::move(select).error();
        return owned.release();
    }

    std::unique_ptr<state> s_;
};

} // namespace chatkit
