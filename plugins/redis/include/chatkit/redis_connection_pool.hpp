// Blocking Redis connections shared by the threads of a worker pool: where Redis is (parsed from
// a redis:// or rediss:// URL), a bounded pool of connections, plain or over TLS, a timeout on
// connecting and on every command, and a fresh connection after any failure. Errors are values; a
// password never appears in one (nor in anything else this header formats).
#pragma once

#include "chatkit/error.hpp"

#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
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
    // rediss://: TLS 1.2 or later, the server's certificate checked against `host` and trusted by
    // `tls_ca_file` (PEM), else by OpenSSL's default store (which SSL_CERT_FILE and SSL_CERT_DIR
    // point elsewhere).
    bool tls = false;
    std::string tls_ca_file{};

    // redis[s]://[user@]host:port/db: the URL without the password, for logs and errors.
    [[nodiscard]] std::string redacted_url() const {
        std::string out = tls ? "rediss://" : "redis://";
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
        if (i + 2 >= in.size() || std::from_chars(in.data() + i + 1, in.data() + i + 3, value, 16).ptr != in.data() + i + 3) return false;
        out += static_cast<char>(value);
        i += 2;
    }
    return true;
}
} // namespace detail

/// Parses `redis://[[user]:password@]host[:port][/db]` (port 6379 and db 0 by default; an IPv6
/// host in brackets), or `rediss://...` for Redis over TLS. The error's message quotes no part of
/// the userinfo, which may hold the password.
inline result<redis_options> parse_redis_url(std::string_view url) {
    auto fail = [](std::string why) { return error{error_kind::invalid_request, std::move(why), "invalid_redis_url"}; };
    redis_options o;
    o.tls = url.starts_with("rediss://");
    if (!o.tls && !url.starts_with("redis://")) return fail("must start with redis:// or rediss:// (redis://[user:password@]host:port/db)");
    std::string_view rest = url.substr(o.tls ? 9 : 8);
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

namespace detail {

// One connection to Redis: a socket, TLS on it for rediss://, and hiredis's reply reader. Written
// by hand because Debian 12's hiredis (0.14) has no TLS; hiredis still formats every command and
// parses every reply (the protocol), only the bytes move here. The socket is blocking with
// SO_RCVTIMEO and SO_SNDTIMEO set to the command timeout, so a Redis that stops answering costs a
// call its timeout, never a hang.
class redis_link {
public:
    struct failure {
        bool timed_out = false;
        std::string why;
    };

    redis_link(const redis_link&) = delete;
    redis_link& operator=(const redis_link&) = delete;
    ~redis_link() {
        if (ssl_) SSL_free(ssl_); // no close_notify: the socket may be broken, and Redis needs none
        if (fd_ >= 0) ::close(fd_);
        if (reader_) redisReaderFree(reader_);
    }

    // Connected within `o.connect_timeout` (TLS handshake included), or why not.
    static std::unique_ptr<redis_link> open(const redis_options& o, SSL_CTX* tls, std::string& why) {
        std::unique_ptr<redis_link> link{new redis_link};
        link->reader_ = redisReaderCreate();
        if (!link->reader_) return why = "cannot allocate a reply reader", nullptr;
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* found = nullptr;
        if (const int rc = ::getaddrinfo(o.host.c_str(), std::to_string(o.port).c_str(), &hints, &found); rc != 0)
            return why = std::string{"cannot resolve the host: "} + ::gai_strerror(rc), nullptr;
        const auto deadline = std::chrono::steady_clock::now() + o.connect_timeout;
        why = "cannot connect: no address";
        for (addrinfo* a = found; a && link->fd_ < 0; a = a->ai_next) {
            const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
            if (fd < 0) continue;
            if (connect_by(fd, a, deadline, why)) link->fd_ = fd;
            else ::close(fd);
        }
        ::freeaddrinfo(found);
        if (link->fd_ < 0) return nullptr;
        const int one = 1;
        ::setsockopt(link->fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::fcntl(link->fd_, F_SETFL, ::fcntl(link->fd_, F_GETFL) & ~O_NONBLOCK);
        if (tls) {
            link->set_timeout(std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()),
                                       std::chrono::milliseconds{1}));
            if (!link->handshake(o, tls, why)) return nullptr;
        }
        link->set_timeout(o.command_timeout);
        return link;
    }

    // Sends one command and reads its reply.
    result<redis_reply, failure> round_trip(std::span<const std::string_view> args) {
        std::vector<const char*> argv;
        std::vector<std::size_t> lengths;
        argv.reserve(args.size());
        lengths.reserve(args.size());
        for (auto a : args) {
            argv.push_back(a.data());
            lengths.push_back(a.size());
        }
        char* formatted = nullptr;
        const int size = redisFormatCommandArgv(&formatted, static_cast<int>(argv.size()), argv.data(), lengths.data());
        if (size < 0) return fail(false, "cannot format the command");
        std::unique_ptr<char, void (*)(char*)> command{formatted, redisFreeCommand};
        for (std::size_t sent = 0; sent < static_cast<std::size_t>(size);) {
            const long n = write_some(formatted + sent, static_cast<std::size_t>(size) - sent);
            if (n <= 0) return fail(timed_out(n), "cannot send: " + last_error("the connection was closed"));
            sent += static_cast<std::size_t>(n);
        }
        for (;;) {
            void* reply = nullptr;
            if (redisReaderGetReply(reader_, &reply) != REDIS_OK) return fail(false, std::string{"bad reply: "} + reader_->errstr);
            if (reply) return redis_reply{static_cast<redisReply*>(reply)};
            char buffer[16 * 1024];
            const long n = read_some(buffer, sizeof buffer);
            if (n <= 0)
                return fail(timed_out(n), n == 0 ? std::string{"the server closed the connection"} : "cannot receive: " + last_error("?"));
            if (redisReaderFeed(reader_, buffer, static_cast<std::size_t>(n)) != REDIS_OK)
                return fail(false, std::string{"bad reply: "} + reader_->errstr);
        }
    }

    // Whether the last call left the connection usable (a failed one never does).
    [[nodiscard]] bool healthy() const noexcept { return !broken_; }

private:
    redis_link() = default;

    static bool connect_by(int fd, const addrinfo* a, std::chrono::steady_clock::time_point deadline, std::string& why) {
        if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) return true;
        if (errno != EINPROGRESS) return why = std::string{"cannot connect: "} + std::strerror(errno), false;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        pollfd p{fd, POLLOUT, 0};
        if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) != 1) return why = "cannot connect: timed out", false;
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) return why = std::string{"cannot connect: "} + std::strerror(err), false;
        return true;
    }

    void set_timeout(std::chrono::milliseconds ms) const {
        const timeval tv{static_cast<time_t>(ms.count() / 1000), static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }

    bool handshake(const redis_options& o, SSL_CTX* tls, std::string& why) {
        ssl_ = SSL_new(tls);
        if (!ssl_ || SSL_set_fd(ssl_, fd_) != 1) return why = "cannot start TLS", false;
        in6_addr ip{};
        const bool literal = ::inet_pton(AF_INET, o.host.c_str(), &ip) == 1 || ::inet_pton(AF_INET6, o.host.c_str(), &ip) == 1;
        // The certificate must name the host (or its address); SNI only for a name (RFC 6066 §3).
        if (literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), o.host.c_str()) != 1 : SSL_set1_host(ssl_, o.host.c_str()) != 1)
            return why = "cannot set the name to verify", false;
        if (!literal) SSL_set_tlsext_host_name(ssl_, o.host.c_str());
        ERR_clear_error();
        const int rc = with_sigpipe_blocked([&] { return SSL_connect(ssl_); });
        if (rc == 1) return true;
        const long verified = SSL_get_verify_result(ssl_);
        if (verified != X509_V_OK)
            return why = std::string{"the TLS certificate was refused: "} + X509_verify_cert_error_string(verified), false;
        why = "the TLS handshake failed: " + last_error("the connection was closed");
        return false;
    }

    long write_some(const char* data, std::size_t size) {
        errno = 0;
        ERR_clear_error();
        if (!ssl_) return ::send(fd_, data, size, MSG_NOSIGNAL);
        return with_sigpipe_blocked(
            [&] { return static_cast<long>(SSL_write(ssl_, data, static_cast<int>(std::min<std::size_t>(size, 1 << 30)))); });
    }
    long read_some(char* data, std::size_t size) {
        errno = 0;
        ERR_clear_error();
        if (!ssl_) return ::recv(fd_, data, size, 0);
        const int n = SSL_read(ssl_, data, static_cast<int>(size));
        if (n <= 0 && SSL_get_error(ssl_, n) == SSL_ERROR_ZERO_RETURN) return 0;
        return n <= 0 ? -1 : n;
    }

    // OpenSSL writes with write(2), which raises SIGPIPE on a connection the peer closed; a
    // library must not kill or disturb its host, so the signal is blocked on this thread for the
    // call and a pending one taken back (send(2) above has MSG_NOSIGNAL for the same reason).
    template <class F>
    static auto with_sigpipe_blocked(F f) -> decltype(f()) {
        sigset_t pipe, old;
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        sigset_t pending;
        sigpending(&pending);
        const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
        pthread_sigmask(SIG_BLOCK, &pipe, &old);
        auto out = f();
        if (!was_pending) {
            sigpending(&pending);
            if (sigismember(&pending, SIGPIPE) == 1) {
                const timespec none{0, 0};
                sigtimedwait(&pipe, nullptr, &none);
            }
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return out;
    }

    static bool timed_out(long n) { return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK); }
    std::string last_error(const char* otherwise) const {
        if (const unsigned long e = ERR_peek_last_error(); e != 0) {
            char text[256];
            ERR_error_string_n(e, text, sizeof text);
            return text;
        }
        return errno != 0 ? std::string{std::strerror(errno)} : std::string{otherwise};
    }
    result<redis_reply, failure> fail(bool timed_out, std::string why) {
        broken_ = true;
        return failure{timed_out, std::move(why)};
    }

    int fd_ = -1;
    SSL* ssl_ = nullptr;
    redisReader* reader_ = nullptr;
    bool broken_ = false;
};

// The TLS settings every rediss:// connection of a pool shares, or null for redis://.
inline std::shared_ptr<SSL_CTX> redis_tls_context(const redis_options& o, std::string& why) {
    if (!o.tls) return nullptr;
    std::shared_ptr<SSL_CTX> ctx{SSL_CTX_new(TLS_client_method()), SSL_CTX_free};
    if (!ctx) return why = "cannot set up TLS", nullptr;
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    const bool trusted = o.tls_ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx.get()) == 1
                                               : SSL_CTX_load_verify_locations(ctx.get(), o.tls_ca_file.c_str(), nullptr) == 1;
    if (!trusted)
        return why = "cannot read the CA certificates" + (o.tls_ca_file.empty() ? std::string{} : " of " + o.tls_ca_file), nullptr;
    return ctx;
}

} // namespace detail

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
        for (int attempt = 0;; ++attempt) {
            auto conn = acquire();
            if (!conn) return std::move(conn).error();
            auto [link, reused] = std::move(*conn);
            auto reply = link->round_trip(args);
            if (!reply) {
                const bool timed_out = reply.error().timed_out;
                error e{timed_out ? error_kind::timeout : error_kind::unavailable,
                        s_->options.redacted_url() +
                            (timed_out ? ": the command timed out" : ": the connection failed: " + reply.error().why),
                        "redis_unavailable"};
                release(std::move(link));
                // A lost connection (not a slow one) means Redis went away: the idle ones are as stale.
                if (!timed_out) close_idle();
                if (reused && !timed_out && attempt == 0) continue;
                return e;
            }
            redis_reply owned = std::move(*reply);
            release(std::move(link));
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
    using link = std::unique_ptr<detail::redis_link>;

    struct state {
        explicit state(redis_options o) : options(std::move(o)) {}
        redis_options options;
        std::shared_ptr<SSL_CTX> tls{}; // rediss://: made with the first connection
        std::string tls_error{};
        std::mutex mutex;
        std::condition_variable freed;
        std::vector<link> idle;
        std::size_t open = 0;
        std::chrono::steady_clock::time_point next_attempt{};
        std::string last_connect_error; // repeated while connecting is paused
    };

    struct lease {
        link connection;
        bool reused;
    };

    result<lease> acquire() {
        state& s = *s_;
        std::unique_lock lock{s.mutex};
        const auto deadline = std::chrono::steady_clock::now() + s.options.connect_timeout;
        for (;;) {
            if (!s.idle.empty()) {
                link c = std::move(s.idle.back());
                s.idle.pop_back();
                return lease{std::move(c), true};
            }
            if (s.open < s.options.max_connections) {
                const auto now = std::chrono::steady_clock::now();
                if (now < s.next_attempt) return error{error_kind::unavailable, s.last_connect_error, "redis_unavailable"};
                if (s.options.tls && !s.tls) {
                    s.tls = detail::redis_tls_context(s.options, s.tls_error);
                    if (!s.tls) return error{error_kind::unavailable, s.options.redacted_url() + ": " + s.tls_error, "redis_unavailable"};
                }
                ++s.open;
                lock.unlock();
                auto made = connect(s.options, s.tls.get());
                lock.lock();
                if (made) return lease{std::move(*made), false};
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

    void release(link c) {
        state& s = *s_;
        {
            std::lock_guard lock{s.mutex};
            if (c->healthy()) s.idle.push_back(std::move(c));
            else --s.open;
        }
        c.reset(); // a broken one is closed outside the lock
        s.freed.notify_one();
    }

    void close_idle() {
        state& s = *s_;
        std::vector<link> stale;
        {
            std::lock_guard lock{s.mutex};
            stale.swap(s.idle);
            s.open -= stale.size();
        }
        stale.clear();
        s.freed.notify_all();
    }

    // A new connection, authenticated and on its database.
    static result<link> connect(const redis_options& o, SSL_CTX* tls) {
        auto fail = [&](std::string why) {
            return error{error_kind::unavailable, o.redacted_url() + ": " + std::move(why), "redis_unavailable"};
        };
        std::string why;
        link c = detail::redis_link::open(o, tls, why);
        if (!c) return fail(std::move(why));
        auto run = [&](std::initializer_list<std::string_view> args) -> result<void> {
            auto reply = c->round_trip(std::span<const std::string_view>{args.begin(), args.size()});
            if (!reply) return fail("the connection failed: " + reply.error().why);
            // Redis's error replies quote no argument (AUTH's says WRONGPASS or NOAUTH), so they may be shown.
            if ((*reply)->type == REDIS_REPLY_ERROR) return fail(std::string{(*reply)->str, (*reply)->len});
            return {};
        };
        if (!o.password.empty()) {
            auto auth = o.user.empty() ? run({"AUTH", o.password}) : run({"AUTH", o.user, o.password});
            if (!auth) return error{error_kind::unavailable, auth.error().message + " (the credentials were refused)", "redis_auth"};
        }
        if (o.db != 0)
            if (auto select = run({"SELECT", std::to_string(o.db)}); !select) return std::move(select).error();
        return c;
    }

    std::unique_ptr<state> s_;
};

} // namespace chatkit
