// Serves a chatkit service on event loops: Boost.Asio for the sockets and timers, Boost.Beast for
// HTTP/1.1 parsing and serialization. One loop (thread) per core, each with its own listening
// socket on the same port (SO_REUSEPORT: the kernel spreads connections, no loop hands one to
// another); a connection costs a coroutine frame and its buffers, never a thread. Blocking
// plugins run on the service's worker pool. It owns its loops and threads; to serve chatkit from a
// Beast server of your own, on your io_context, see chatkit/beast_handler.hpp (docs/embedding.md).
//
// Parsing is as strict as RFC 9112 asks (§6.3: Content-Length with Transfer-Encoding, conflicting
// or malformed lengths and chunk sizes are refused; §5.2: obsolete line folding refused; no NUL
// bytes): Beast refuses most of it, and the rest is checked on the raw header block before Beast
// parses it, because once parsed a folded line can no longer be told apart.
#pragma once

#include "chatkit/asio_loop.hpp"
#include "chatkit/beast_handler.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/random_id.hpp"
#include "chatkit/response_sink.hpp"
#include "chatkit/task.hpp"
#include "chatkit/worker_pool.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace chatkit {

struct beast_options {
    std::string host = "127.0.0.1";
    int port = 8000;          // 0: any free port (see beast_server::port())
    std::size_t loops = 0;    // event-loop threads; 0: one per core
    std::size_t workers = 64; // threads for blocking plugin calls (provider, store)
    std::size_t max_connections = 20000;
    int listen_backlog = 4096;
    std::size_t max_body_bytes = 1 << 20;       // larger: 413
    std::size_t max_header_bytes = 16 * 1024;   // request line and headers; larger: 431
    std::size_t max_header_fields = 100;        // more: 431
    std::size_t max_target_bytes = 8 * 1024;    // request target; longer: 414
    std::chrono::seconds read_timeout{10};      // a request must arrive whole within this
    std::chrono::seconds keep_alive_timeout{5}; // idle between requests
    std::chrono::seconds write_timeout{30};     // a client that stops reading is dropped after this
    std::chrono::seconds request_deadline{600}; // a request still running after this is cancelled
    std::chrono::seconds drain_timeout{30};     // on stop(): how long requests in flight may finish
    std::size_t keep_alive_max_requests = 10000;
};

template <class Service>
class beast_server {
    using tcp = boost::asio::ip::tcp;
    using clock = std::chrono::steady_clock;
    template <class T>
    using awaitable = boost::asio::awaitable<T>;
    static constexpr auto use_nothrow = boost::asio::as_tuple(boost::asio::use_awaitable);

public:
    beast_server(Service& service, beast_options options, adapter_log log = {})
        : service_(service), options_(std::move(options)), log_(std::move(log)), pool_(options_.workers ? options_.workers : 1) {
        std::size_t n = options_.loops ? options_.loops : std::max(1u, std::thread::hardware_concurrency());
        for (std::size_t i = 0; i < n; ++i) loops_.push_back(std::make_unique<loop>());
    }
    beast_server(const beast_server&) = delete;
    beast_server& operator=(const beast_server&) = delete;

    // Binds every loop's listening socket; throws with the address when that fails. Returns the port.
    int bind() {
        boost::system::error_code ec;
        const auto address = boost::asio::ip::make_address(options_.host, ec);
        if (ec) throw std::runtime_error("cannot listen on " + options_.host + ": not an IP address");
        int port = options_.port;
        for (auto& l : loops_) {
            l->acceptor.open(address.is_v6() ? tcp::v6() : tcp::v4(), ec);
            if (!ec) l->acceptor.set_option(boost::asio::socket_base::reuse_address(true), ec);
            if (!ec) {
                const int one = 1;
                if (::setsockopt(l->acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
                    ec = boost::system::error_code(errno, boost::system::system_category());
            }
            if (!ec) l->acceptor.bind(tcp::endpoint{address, static_cast<unsigned short>(port)}, ec);
            if (!ec) l->acceptor.listen(options_.listen_backlog, ec);
            if (ec)
                throw std::runtime_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port) + ": " + ec.message());
            port = l->acceptor.local_endpoint().port(); // the first picks a free port; the rest share it
        }
        port_ = port;
        return port_;
    }

    // Serves until stop(); returns once requests in flight have finished (or drain_timeout passed).
    void run() {
        if (port_ < 0) bind();
        std::vector<std::thread> threads;
        for (std::size_t i = 1; i < loops_.size(); ++i) threads.emplace_back([this, i] { run_loop(*loops_[i]); });
        running_ = true;
        run_loop(*loops_[0]);
        for (auto& t : threads) t.join();
        running_ = false;
    }

    // Stops accepting, closes idle connections, lets requests in flight finish, then run() returns.
    // Safe from any thread, and from a signal-waiting thread.
    void stop() {
        if (stopping_.exchange(true)) return;
        for (auto& l : loops_) {
            auto* lp = l.get();
            boost::asio::post(lp->ioc, [this, lp] { begin_drain(*lp); });
        }
    }

    [[nodiscard]] int port() const noexcept { return port_; }
    [[nodiscard]] bool is_running() const noexcept { return running_; }
    [[nodiscard]] std::size_t connections() const noexcept { return connections_.load(); }

private:
    struct connection;

    // One event loop: its io_context, its listening socket, its live connections, and the
    // scheduler the service's tasks resume through.
    struct loop final : asio_loop {
        boost::asio::io_context& ioc = context();
        tcp::acceptor acceptor{ioc};
        std::list<connection*> live; // only touched on this loop's thread
        std::shared_ptr<boost::asio::steady_timer> drain_timer{};
    };

    // What a connection's coroutine shares with the timers and watchers it starts.
    struct connection {
        explicit connection(tcp::socket s) : stream(std::move(s)) {}
        boost::beast::tcp_stream stream;
        bool idle = true; // waiting for a request: closed at once on drain
        bool closing = false;
        std::stop_source stop{};
    };

    void run_loop(loop& l) {
        boost::asio::co_spawn(l.ioc, accept_loop(&l), boost::asio::detached);
        for (;;) {
            try {
                l.ioc.run();
                return;
            } catch (const std::exception&) {
                // a handler threw (it should not): keep the loop serving everyone else
            }
        }
    }

    void begin_drain(loop& l) {
        boost::system::error_code ec;
        l.acceptor.close(ec);
        for (auto* c : l.live) {
            c->closing = true;
            if (c->idle) c->stream.socket().close(ec);
        }
        auto timer = std::make_shared<boost::asio::steady_timer>(l.ioc, options_.drain_timeout);
        auto* lp = &l;
        timer->async_wait([timer, lp](boost::system::error_code) {
            // past the drain timeout: cancel what is still running and close every connection
            boost::system::error_code ignored;
            for (auto* c : lp->live) {
                c->stop.request_stop();
                c->stream.socket().close(ignored);
            }
        });
        l.drain_timer = timer;
        if (l.live.empty()) timer->cancel(); // it must not keep a finished loop alive
    }

    awaitable<void> accept_loop(loop* l) {
        for (;;) {
            auto [ec, socket] = co_await l->acceptor.async_accept(use_nothrow);
            if (ec) {
                if (!l->acceptor.is_open()) co_return; // stopped
                continue;                              // e.g. out of file descriptors: try the next
            }
            if (connections_.load() >= options_.max_connections) {
                boost::system::error_code ignored;
                socket.close(ignored); // over the limit: refused before a byte is read
                continue;
            }
            socket.set_option(tcp::no_delay(true), ec);
            boost::asio::co_spawn(l->ioc, serve_connection(l, std::move(socket)), boost::asio::detached);
        }
    }

    awaitable<void> serve_connection(loop* l, tcp::socket socket) {
        ++connections_;
        auto guard = boost::asio::make_work_guard(l->ioc); // pool jobs may resume us later
        connection conn{std::move(socket)};
        l->live.push_back(&conn);
        const auto self = std::prev(l->live.end());
        std::string remote;
        {
            boost::system::error_code ec;
            const auto ep = conn.stream.socket().remote_endpoint(ec);
            if (!ec) remote = ep.address().to_string();
        }
        try {
            co_await request_loop(l, &conn, remote);
        } catch (const std::exception&) {}
        boost::system::error_code ec;
        conn.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
        conn.stream.socket().close(ec);
        l->live.erase(self);
        --connections_;
        if (stopping_ && l->live.empty() && l->drain_timer) l->drain_timer->cancel();
    }

    awaitable<void> request_loop(loop* l, connection* conn, std::string remote) {
        namespace http = boost::beast::http;
        boost::beast::flat_buffer buffer{options_.max_header_bytes};
        for (std::size_t served = 0; served < options_.keep_alive_max_requests; ++served) {
            // Idle until the first byte of the next request (unless it is already buffered).
            conn->idle = true;
            if (conn->closing) co_return;
            if (buffer.size() == 0) {
                conn->stream.expires_after(served == 0 ? options_.read_timeout : options_.keep_alive_timeout);
                auto [ec, n] = co_await conn->stream.async_read_some(buffer.prepare(options_.max_header_bytes), use_nothrow);
                if (ec) co_return; // closed, reset, or idle too long
                buffer.commit(n);
            }
            conn->idle = false;
            conn->stream.expires_after(options_.read_timeout);

            http::request_parser<http::string_body> parser;
            const read_outcome got = co_await read_request(conn, &buffer, &parser);
            if (got.refused) {
                co_await refuse(conn, &remote, &*got.refused);
                co_return;
            }
            if (!got.complete) co_return;
            auto& msg = parser.get();
            const bool keep_alive = msg.keep_alive() && !conn->closing && served + 1 < options_.keep_alive_max_requests;
            const bool v10 = msg.version() == 10;
            http_request req = beast_detail::to_neutral(parser.release(), remote);
            conn->stream.expires_never(); // the service's time is bounded by the request deadline
            const bool ok = co_await answer(l, conn, std::move(req), keep_alive, v10);
            if (!ok || !keep_alive) co_return;
        }
    }

    // Runs the service for one request and writes its answer. False: the connection must close.
    awaitable<bool> answer(loop* l, connection* conn, http_request req, bool keep_alive, bool v10) {
        conn->stop = std::stop_source{}; // this request's: stop() past the drain timeout requests it
        return beast_detail::answer(&service_, l, &pool_, &conn->stream, std::move(req), keep_alive, v10, conn->stop,
                                    beast_detail::answer_limits{options_.write_timeout, options_.request_deadline});
    }

    // A request the adapter answers itself: the status and the error for its JSON envelope.
    struct refusal {
        int status;
        error e;
    };
    struct read_outcome {
        bool complete = false;          // a whole request is in the parser
        std::optional<refusal> refused; // or it must be refused (then the connection closes)
    };
    static refusal bad_request(std::string message, std::string code = "bad_request") {
        return {400, {error_kind::invalid_request, std::move(message), std::move(code)}};
    }

    // Reads one request into `parser`: the header block whole and checked, then the body. Each
    // refusal is built here and sent by the caller (GCC 12 must not see a braced temporary
    // inside a co_await expression).
    awaitable<read_outcome> read_request(connection* conn, boost::beast::flat_buffer* buffer,
                                         boost::beast::http::request_parser<boost::beast::http::string_body>* parser) {
        namespace http = boost::beast::http;
        // Not asio::async_read_until: it takes a DynamicBuffer_v1 by value, and a Beast
        // flat_buffer is copied, so what arrived after the first segment went into the copy; a
        // header block in two segments was then checked past the end of what this buffer held.
        boost::system::error_code ec;
        std::size_t header_end = 0;
        for (std::size_t searched = 0;;) {
            const std::string_view seen{static_cast<const char*>(buffer->data().data()), buffer->size()};
            if (const auto at = seen.find("\r\n\r\n", searched < 3 ? 0 : searched - 3); at != std::string_view::npos) {
                header_end = at + 4;
                break;
            }
            searched = seen.size();
            if (buffer->size() >= buffer->max_size()) {
                ec = boost::asio::error::not_found;
                break;
            }
            const std::size_t room = std::min<std::size_t>(buffer->max_size() - buffer->size(), 65536);
            auto [rec, n] = co_await conn->stream.async_read_some(buffer->prepare(room), use_nothrow);
            if (rec) {
                ec = rec;
                break;
            }
            buffer->commit(n);
        }
        if (ec) {
            read_outcome out;
            if (ec == boost::asio::error::not_found) { // the buffer's limit: the header block is too large
                const std::string_view seen{static_cast<const char*>(buffer->data().data()), buffer->size()};
                if (seen.find("\r\n") == std::string_view::npos)
                    out.refused = refusal{414, {error_kind::invalid_request, "request target too long", "uri_too_long"}};
                else out.refused = refusal{431, {error_kind::invalid_request, "request header fields too large", "header_too_large"}};
            }
            co_return out; // or closed, reset, or too slow: nothing to answer
        }
        const std::string_view head{static_cast<const char*>(buffer->data().data()), header_end};
        if (auto r = check_header_block(head)) co_return read_outcome{false, std::move(r)};

        parser->header_limit(static_cast<std::uint32_t>(options_.max_header_bytes));
        parser->body_limit(options_.max_body_bytes);
        parser->eager(false);
        auto [hec, hn] = co_await http::async_read_header(conn->stream, *buffer, *parser, use_nothrow);
        (void)hn;
        if (hec == http::error::body_limit) co_return read_outcome{false, refusal{413, body_too_large()}};
        if (hec) co_return read_outcome{false, bad_request("malformed request: " + hec.message())};
        auto& msg = parser->get();
        if (static_cast<std::size_t>(std::distance(msg.begin(), msg.end())) > options_.max_header_fields)
            co_return read_outcome{
                false, refusal{431,
                               {error_kind::invalid_request, "more than " + std::to_string(options_.max_header_fields) + " header fields",
                                "header_too_large"}}};
        if (msg.count(http::field::transfer_encoding) && !parser->chunked()) // RFC 9112 §6.1: chunked must come last
            co_return read_outcome{false, bad_request("unsupported Transfer-Encoding", "bad_transfer_encoding")};
        if (boost::beast::iequals(msg[http::field::expect], "100-continue")) {
            http::response<http::empty_body> cont{http::status::continue_, msg.version()};
            auto [cec, cn] = co_await http::async_write(conn->stream, cont, use_nothrow);
            (void)cn;
            if (cec) co_return read_outcome{};
        }
        auto [bec, bn] = co_await http::async_read(conn->stream, *buffer, *parser, use_nothrow);
        (void)bn;
        if (bec == http::error::body_limit) co_return read_outcome{false, refusal{413, body_too_large()}};
        if (bec == boost::beast::error::timeout || bec == http::error::end_of_stream || bec == boost::asio::error::eof ||
            bec == boost::asio::error::connection_reset)
            co_return read_outcome{};
        if (bec) co_return read_outcome{false, bad_request("malformed request body: " + bec.message())};
        co_return read_outcome{true, std::nullopt};
    }

    // Answers a request the service never sees, with the same JSON envelope, then closes.
    awaitable<void> refuse(connection* conn, const std::string* remote, const refusal* r) {
        namespace http = boost::beast::http;
        const auto started = clock::now();
        const std::string request_id = random_id();
        const auto res = error_response(r->e, request_id);
        http::response<http::string_body> msg{static_cast<http::status>(r->status), 11};
        msg.set(http::field::content_type, "application/json");
        msg.set("X-Request-ID", request_id);
        msg.keep_alive(false);
        msg.body() = res.body;
        msg.prepare_payload();
        conn->stream.expires_after(options_.write_timeout);
        auto [ec, n] = co_await http::async_write(conn->stream, msg, use_nothrow);
        if (log_) {
            http_request req;
            req.remote_addr = *remote;
            req.request_id = request_id;
            response_summary s;
            s.status = r->status;
            s.error_code = r->e.code;
            s.bytes_sent = ec ? 0 : n;
            s.duration_ms = std::chrono::duration<double, std::milli>(clock::now() - started).count();
            log_(req, s);
        }
    }

    static error body_too_large_of(std::size_t limit) {
        return {error_kind::payload_too_large, "request body exceeds " + std::to_string(limit) + " bytes", "body_too_large"};
    }
    error body_too_large() const { return body_too_large_of(options_.max_body_bytes); }

    // What Beast accepts but RFC 9112 does not: obs-fold (§5.2), NUL and bare CR in the header
    // block, and a request target over the limit (414).
    std::optional<refusal> check_header_block(std::string_view head) const {
        const auto line_end = head.find("\r\n");
        const auto request_line = head.substr(0, line_end);
        const auto sp1 = request_line.find(' ');
        const auto sp2 = request_line.rfind(' ');
        if (sp1 != std::string_view::npos && sp2 > sp1 && sp2 - sp1 - 1 > options_.max_target_bytes)
            return refusal{414, {error_kind::invalid_request, "request target too long", "uri_too_long"}};
        for (std::size_t i = 0; i < head.size(); ++i) {
            const char c = head[i];
            if (c == '\0') return bad_request("NUL byte in the request header");
            if (c == '\n' && i + 1 < head.size() && (head[i + 1] == ' ' || head[i + 1] == '\t') && i + 2 < head.size())
                return bad_request("obsolete line folding in a header");
            if (c == '\n' && (i == 0 || head[i - 1] != '\r')) return bad_request("bare LF in the request header");
        }
        return std::nullopt;
    }

    Service& service_;
    beast_options options_;
    adapter_log log_;
    worker_pool pool_;
    std::vector<std::unique_ptr<loop>> loops_;
    std::atomic<std::size_t> connections_{0};
    std::atomic<bool> stopping_{false}, running_{false};
    int port_ = -1;
};

} // namespace chatkit
