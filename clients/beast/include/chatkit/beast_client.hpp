// chatkit::beast_client: the asynchronous upstream client (chatkit/http_client.hpp) on the
// server's own Asio loops. Boost.Beast parses the responses (chunked bodies included, read piece
// by piece as they arrive); OpenSSL, through Asio's ssl::stream, verifies the upstream's
// certificate and host name and sends SNI.
//
// Kept-alive connections are pooled per loop and per origin, in an Asio service of the loop's
// io_context: a request only ever touches its own loop's pool, so there is no lock shared by the
// loops, and the connections are closed with the loop that owns their sockets.
#pragma once

#include "chatkit/asio_loop.hpp"
#include "chatkit/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace chatkit {

struct beast_client_options {
    std::size_t max_idle_per_origin = 64;     // kept-alive connections per loop and origin
    std::size_t max_header_bytes = 64 * 1024; // a response's status line and headers; more: broken
    std::size_t read_chunk_bytes = 16 * 1024; // the most one read() yields
    std::string extra_ca_pem{};               // trusted beside the system's CAs (a private CA)
};

namespace detail {

// An Asio operation awaited by a chatkit coroutine: `start(handler)` begins it, and its handler
// resumes the coroutine on the loop that ran the operation. Written by hand rather than through
// asio::awaitable, because a chatkit task cannot await an asio::awaitable without spawning one.
struct asio_outcome {
    boost::system::error_code ec{};
    std::size_t bytes = 0;
};
struct resume_on_completion {
    std::coroutine_handle<> h;
    asio_outcome* out;
    void operator()(const boost::system::error_code& ec) const {
        out->ec = ec;
        h.resume();
    }
    void operator()(const boost::system::error_code& ec, std::size_t n) const {
        out->ec = ec;
        out->bytes = n;
        h.resume();
    }
    template <class Endpoint>
    void operator()(const boost::system::error_code& ec, const Endpoint&) const {
        out->ec = ec;
        h.resume();
    }
};
template <class Start>
struct asio_op {
    Start start;
    asio_outcome out{};
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { start(resume_on_completion{h, &out}); }
    asio_outcome await_resume() const noexcept { return out; }
};
template <class Start>
asio_op<Start> on_loop(Start start) {
    return asio_op<Start>{std::move(start)};
}

struct origin_parts {
    bool tls = false;
    std::string host; // without brackets
    std::string port;
    std::string host_header;
};
inline std::optional<origin_parts> parse_origin(std::string_view origin) {
    origin_parts o;
    if (origin.starts_with("https://")) o.tls = true, origin.remove_prefix(8);
    else if (origin.starts_with("http://")) origin.remove_prefix(7);
    else return std::nullopt;
    if (origin.empty() || origin.find('/') != std::string_view::npos) return std::nullopt;
    o.host_header = std::string{origin};
    std::string_view host = origin, port;
    if (origin.front() == '[') {
        const auto close = origin.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        host = origin.substr(1, close - 1);
        if (close + 1 < origin.size()) {
            if (origin[close + 1] != ':') return std::nullopt;
            port = origin.substr(close + 2);
        }
    } else if (const auto colon = origin.rfind(':'); colon != std::string_view::npos) {
        host = origin.substr(0, colon);
        port = origin.substr(colon + 1);
    }
    if (host.empty()) return std::nullopt;
    // A port that is not 1 to 65535 is refused here: the connect step converts it without checking.
    if (!port.empty()) {
        unsigned number = 0;
        const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
        if (ec != std::errc{} || end != port.data() + port.size() || number == 0 || number > 65535) return std::nullopt;
    }
    o.host = std::string{host};
    o.port = port.empty() ? (o.tls ? "443" : "80") : std::string{port};
    return o;
}

struct pooled_connection {
    pooled_connection(boost::asio::io_context& ioc, boost::asio::ssl::context* tls, std::size_t chunk_bytes) : chunk(chunk_bytes) {
        if (tls) secure.emplace(ioc, *tls);
        else plain.emplace(ioc);
    }
    std::optional<boost::beast::tcp_stream> plain;
    std::optional<boost::beast::ssl_stream<boost::beast::tcp_stream>> secure;
    boost::beast::flat_buffer buffer;
    std::vector<char> chunk; // where a response's body pieces land
    std::uint64_t use = 0;   // which exchange holds it; a late stop must not close the next one
    bool aborted = false;

    boost::beast::tcp_stream& tcp() { return secure ? boost::beast::get_lowest_layer(*secure) : *plain; }
    void abort() {
        aborted = true;
        tcp().close();
    }
    // An idle connection the upstream has closed (EOF) or written to unasked is not reusable.
    bool looks_reusable() {
        if (aborted || !tcp().socket().is_open() || buffer.size() != 0) return false;
        char c;
        const auto n = ::recv(tcp().socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
};

// The idle connections of one loop, by origin: a service of that loop's io_context.
class idle_connections final : public boost::asio::execution_context::service {
public:
    using key_type = idle_connections;
    static inline boost::asio::execution_context::id id{};
    explicit idle_connections(boost::asio::execution_context& ctx) : service(ctx) {}
    std::unordered_map<std::string, std::vector<std::shared_ptr<pooled_connection>>> by_key;

private:
    void shutdown() override { by_key.clear(); }
};

} // namespace detail

class beast_client final : public http_client {
public:
    explicit beast_client(beast_client_options options = {})
        : options_(std::move(options)), tls_(boost::asio::ssl::context::tls_client), serial_(next_serial()) {
        tls_.set_default_verify_paths();
        tls_.set_verify_mode(boost::asio::ssl::verify_peer);
        if (!options_.extra_ca_pem.empty()) tls_.add_certificate_authority(boost::asio::buffer(options_.extra_ca_pem));
    }

    task<result<std::unique_ptr<client_response>, client_error>> open(client_request request) override {
        const task_env env = co_await current_env();
        asio_loop* loop = asio_loop::of(env);
        if (!loop)
            co_return client_error{client_error_kind::unreachable,
                                   "chatkit::beast_client runs on an Asio loop (chatkit::beast_server's); this call is not on one"};
        const auto where = detail::parse_origin(request.origin);
        if (!where) co_return client_error{client_error_kind::unreachable, "not an http:// or https:// origin"};
        if (env.stop.stop_requested()) co_return cancelled();
        auto& pool = boost::asio::use_service<detail::idle_connections>(loop->context());
        auto* idle = &pool.by_key[std::to_string(serial_) + ' ' + request.origin];

        // A kept-alive connection the upstream closed meanwhile fails before any response byte:
        // such a request never reached the upstream's application, so it goes again on a new one.
        for (int attempt = 0;; ++attempt) {
            std::shared_ptr<detail::pooled_connection> conn;
            while (!idle->empty() && !conn) {
                conn = std::move(idle->back());
                idle->pop_back();
                if (!conn->looks_reusable()) conn.reset();
            }
            const bool reused = conn != nullptr;
            if (!conn)
                conn = std::make_shared<detail::pooled_connection>(loop->context(), where->tls ? &tls_ : nullptr,
                                                                   options_.read_chunk_bytes);
            auto response = std::make_unique<response_on_loop>(std::move(conn), idle, &options_, &loop->context(), request, env.stop);
            auto began = co_await response->begin(&request, &*where, reused);
            if (!began) co_return std::unique_ptr<client_response>{std::move(response)};
            if (began->kind == client_error_kind::broken && reused && response->stale() && attempt == 0) continue;
            co_return std::move(*began);
        }
    }

private:
    using clock = std::chrono::steady_clock;
    static std::uint64_t next_serial() {
        static std::atomic<std::uint64_t> n{0};
        return ++n;
    }
    static client_error cancelled() { return {client_error_kind::cancelled, "the request was cancelled"}; }

    class response_on_loop final : public client_response {
    public:
        response_on_loop(std::shared_ptr<detail::pooled_connection> conn, std::vector<std::shared_ptr<detail::pooled_connection>>* idle,
                         const beast_client_options* options, boost::asio::io_context* ioc, const client_request& request,
                         const std::stop_token& stop)
            : conn_(std::move(conn)), idle_(idle), options_(options), deadline_(request.deadline), read_timeout_(request.read_timeout),
              connect_timeout_(request.connect_timeout) {
            use_ = ++conn_->use;
            on_stop_.emplace(stop, abort_on_stop{conn_, use_, ioc});
        }
        ~response_on_loop() override {
            on_stop_.reset();
            if (ended_ && keep_alive_ && !conn_->aborted && conn_->buffer.size() == 0 && idle_->size() < options_->max_idle_per_origin)
                idle_->push_back(std::move(conn_));
            else if (conn_ && conn_->tcp().socket().is_open())
                conn_->tcp().close(); // half-read: it cannot carry another request (requirement 5)
        }

        // Connects (unless reused), sends the request, reads the status and headers.
        task<std::optional<client_error>> begin(const client_request* request, const detail::origin_parts* where, bool reused) {
            if (!reused) {
                auto failed = co_await connect(where);
                if (failed) co_return failed;
            }
            namespace http = boost::beast::http;
            write_head(*request, *where);
            // The head and the caller's body (alive in open()'s frame) in one gather write.
            const std::array<boost::asio::const_buffer, 2> parts{boost::asio::buffer(head_), boost::asio::buffer(request->body)};
            arm(read_timeout_);
            auto write = detail::on_loop([this, &parts](auto handler) {
                if (conn_->secure) boost::asio::async_write(*conn_->secure, parts, std::move(handler));
                else boost::asio::async_write(*conn_->plain, parts, std::move(handler));
            });
            const auto wrote = co_await write;
            if (wrote.ec) co_return failure(wrote.ec, "sending the request");

            parser_.emplace();
            parser_->header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(options_->max_header_bytes, UINT32_MAX)));
            parser_->body_limit(boost::none); // the caller bounds what it keeps (read_body)
            arm(read_timeout_);
            auto head = detail::on_loop([this](auto handler) {
                if (conn_->secure) http::async_read_header(*conn_->secure, conn_->buffer, *parser_, std::move(handler));
                else http::async_read_header(*conn_->plain, conn_->buffer, *parser_, std::move(handler));
            });
            const auto read = co_await head;
            if (read.ec) {
                stale_ = read.bytes == 0 && (read.ec == http::error::end_of_stream || read.ec == boost::asio::error::connection_reset ||
                                             read.ec == boost::asio::error::eof);
                co_return failure(read.ec, "reading the response");
            }
            const auto& res = parser_->get();
            status = static_cast<int>(res.result_int());
            for (const auto& field : res) headers.emplace(std::string{field.name_string()}, std::string{field.value()});
            co_return std::nullopt;
        }

        task<result<std::string_view, client_error>> read() override {
            namespace http = boost::beast::http;
            for (;;) {
                if (ended_ || parser_->is_done()) {
                    if (!ended_) keep_alive_ = parser_->keep_alive();
                    ended_ = true;
                    co_return std::string_view{};
                }
                auto& body = parser_->get().body();
                body.data = conn_->chunk.data();
                body.size = conn_->chunk.size();
                arm(read_timeout_);
                auto some = detail::on_loop([this](auto handler) {
                    if (conn_->secure) http::async_read_some(*conn_->secure, conn_->buffer, *parser_, std::move(handler));
                    else http::async_read_some(*conn_->plain, conn_->buffer, *parser_, std::move(handler));
                });
                auto got = co_await some;
                if (got.ec == http::error::need_buffer) got.ec = {};
                if (got.ec) co_return failure(got.ec, "reading the response body");
                const std::size_t n = conn_->chunk.size() - parser_->get().body().size;
                if (n > 0) co_return std::string_view{conn_->chunk.data(), n};
            }
        }

        [[nodiscard]] bool stale() const noexcept { return stale_; }

    private:
        struct abort_on_stop {
            std::weak_ptr<detail::pooled_connection> conn;
            std::uint64_t use;
            boost::asio::io_context* ioc;
            // A stop may come from any thread: the socket is closed on its own loop, and only
            // while this exchange still holds it.
            void operator()() const {
                boost::asio::post(*ioc, [c = conn, u = use] {
                    if (auto alive = c.lock(); alive && alive->use == u) alive->abort();
                });
            }
        };

        task<std::optional<client_error>> connect(const detail::origin_parts* where) {
            namespace asio = boost::asio;
            using tcp = asio::ip::tcp;
            auto& tcp_stream = conn_->tcp();
            tcp::resolver::results_type endpoints;
            boost::system::error_code bad_address;
            const auto address = asio::ip::make_address(where->host, bad_address);
            if (bad_address) {
                tcp::resolver resolver{tcp_stream.get_executor()};
                auto resolve = detail::on_loop([&resolver, &endpoints, where](auto handler) {
                    resolver.async_resolve(
                        where->host, where->port,
                        [h = std::move(handler), &endpoints](const boost::system::error_code& ec, tcp::resolver::results_type r) {
                            endpoints = std::move(r);
                            h(ec);
                        });
                });
                const auto resolved = co_await resolve;
                if (conn_->aborted) co_return cancelled();
                if (resolved.ec)
                    co_return client_error{client_error_kind::unreachable, "cannot resolve " + where->host + ": " + resolved.ec.message()};
            } else {
                endpoints = tcp::resolver::results_type::create(tcp::endpoint{address, static_cast<unsigned short>(std::stoi(where->port))},
                                                                where->host, where->port);
            }
            arm(connect_timeout_);
            auto connect = detail::on_loop(
                [&tcp_stream, &endpoints](auto handler) { tcp_stream.async_connect(endpoints, std::move(handler)); });
            const auto connected = co_await connect;
            if (connected.ec) {
                if (conn_->aborted) co_return cancelled();
                if (connected.ec == boost::beast::error::timeout)
                    co_return client_error{client_error_kind::connect_timeout, "could not connect to " + where->host_header + " in time"};
                co_return client_error{client_error_kind::unreachable,
                                       "cannot connect to " + where->host_header + ": " + connected.ec.message()};
            }
            tcp_stream.socket().set_option(tcp::no_delay(true));
            if (!conn_->secure) co_return std::nullopt;

            auto& tls = *conn_->secure;
            // SNI names a host, never an IP literal (RFC 6066 §3).
            if (bad_address && !SSL_set_tlsext_host_name(tls.native_handle(), where->host.c_str()))
                co_return client_error{client_error_kind::unreachable, "cannot set the TLS server name"};
            tls.set_verify_callback(asio::ssl::host_name_verification(where->host));
            arm(connect_timeout_);
            auto handshake = detail::on_loop(
                [&tls](auto handler) { tls.async_handshake(asio::ssl::stream_base::client, std::move(handler)); });
            const auto shook = co_await handshake;
            if (shook.ec) {
                if (conn_->aborted) co_return cancelled();
                if (SSL_get_verify_result(tls.native_handle()) != X509_V_OK)
                    co_return client_error{client_error_kind::tls_verification, "the upstream's TLS certificate did not verify"};
                if (shook.ec == boost::beast::error::timeout)
                    co_return client_error{client_error_kind::connect_timeout,
                                           "the TLS handshake with " + where->host_header + " timed out"};
                co_return client_error{client_error_kind::unreachable,
                                       "TLS handshake with " + where->host_header + " failed: " + shook.ec.message()};
            }
            co_return std::nullopt;
        }

        // The request line and header fields (RFC 9112 §3, §5), written here rather than through
        // Beast's message and serializer, which cost two allocations and a copy of the body per
        // request (docs/performance.md). Host and the framing fields are the client's; a field
        // that could split the request (CR, LF, NUL) is not sent.
        void write_head(const client_request& request, const detail::origin_parts& where) {
            auto safe = [](std::string_view text) { return text.find_first_of(std::string_view{"\r\n\0", 3}) == std::string_view::npos; };
            head_.clear();
            head_.reserve(256);
            head_.append(request.method)
                .append(" ")
                .append(request.target)
                .append(" HTTP/1.1\r\nHost: ")
                .append(where.host_header)
                .append("\r\n");
            for (const auto& [name, value] : request.headers) {
                if (boost::beast::iequals(name, "Host") || boost::beast::iequals(name, "Content-Length") ||
                    boost::beast::iequals(name, "Transfer-Encoding") || boost::beast::iequals(name, "Connection") || !safe(name) ||
                    !safe(value))
                    continue;
                head_.append(name).append(": ").append(value).append("\r\n");
            }
            if (!request.body.empty() || (request.method != "GET" && request.method != "HEAD")) {
                head_ += "Content-Length: ";
                head_ += std::to_string(request.body.size());
                head_ += "\r\n";
            }
            head_ += "\r\n";
        }

        // The next operation's time limit: `limit`, cut to what is left of the deadline.
        void arm(std::chrono::milliseconds limit) {
            const auto left = deadline_ - clock::now();
            conn_->tcp().expires_after(std::max(clock::duration::zero(), std::min<clock::duration>(limit, left)));
        }

        client_error failure(const boost::system::error_code& ec, const char* during) const {
            if (conn_->aborted || ec == boost::asio::error::operation_aborted) return cancelled();
            if (ec == boost::beast::error::timeout) {
                if (clock::now() >= deadline_) return {client_error_kind::past_deadline, "the exchange outlived its deadline"};
                return {client_error_kind::read_timeout, "the upstream was silent for " + std::to_string(read_timeout_.count()) + " ms"};
            }
            return {client_error_kind::broken, std::string{during} + ": " + ec.message()};
        }

        std::shared_ptr<detail::pooled_connection> conn_;
        std::vector<std::shared_ptr<detail::pooled_connection>>* idle_;
        const beast_client_options* options_;
        clock::time_point deadline_;
        std::chrono::milliseconds read_timeout_;
        std::chrono::milliseconds connect_timeout_;
        std::uint64_t use_ = 0;
        std::optional<std::stop_callback<abort_on_stop>> on_stop_{};
        std::string head_{};
        std::optional<boost::beast::http::response_parser<boost::beast::http::buffer_body>> parser_{};
        bool ended_ = false;
        bool keep_alive_ = false;
        bool stale_ = false;
    };

    beast_client_options options_;
    boost::asio::ssl::context tls_;
    std::uint64_t serial_;
};

} // namespace chatkit
