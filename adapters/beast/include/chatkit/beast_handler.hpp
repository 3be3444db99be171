// Serves a chatkit service from a Beast server its user already has, on an io_context he owns
// and runs: his session reads a request and, for the paths he gives chatkit, awaits
// `beast_handler::serve`, which runs the service and writes its answer on his stream (a stream's
// Server-Sent Events as they come). chatkit::beast_server answers its own connections' requests
// through the same code (beast_detail::answer).
#pragma once

#include "chatkit/asio_loop.hpp"
#include "chatkit/http.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/response_sink.hpp"
#include "chatkit/task.hpp"
#include "chatkit/worker_pool.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

namespace chatkit {

namespace beast_detail {

using tcp = boost::asio::ip::tcp;

// One request in flight on a connection, as its sink and its watch share it.
struct in_flight {
    boost::beast::tcp_stream* stream;
    std::stop_source stop;    // requested when the client leaves, a write fails or the deadline passes
    bool peer_closed = false; // the watch saw the client leave
};

// Watches an otherwise quiet socket while the service works: EOF means the client left, and
// the request is stopped. Bytes (a pipelined request) end the watch without consuming them.
struct peer_watch : std::enable_shared_from_this<peer_watch> {
    explicit peer_watch(in_flight* c) : conn(c), stop(c->stop) {}
    in_flight* conn;
    std::stop_source stop;
    bool cancelled = false;
    void start() {
        auto self = this->shared_from_this();
        conn->stream->socket().async_wait(tcp::socket::wait_read, [self](boost::system::error_code ec) {
            if (ec || self->cancelled) return;
            char byte;
            const auto n = ::recv(self->conn->stream->socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                self->conn->peer_closed = true;
                self->stop.request_stop();
            }
        });
    }
    void cancel() {
        cancelled = true;
        boost::system::error_code ec;
        conn->stream->socket().cancel(ec);
    }
};

// The service's side of one request: Beast serializes the head, chunks go out as HTTP/1.1
// chunks (or raw until close for an HTTP/1.0 client), each write under the write timeout.
struct sink final : response_sink {
    sink(in_flight* c, std::chrono::seconds timeout, bool head_only, bool keep, bool http10)
        : conn(c), write_timeout(timeout), head_request(head_only), keep_alive(keep), v10(http10) {}
    in_flight* conn;
    std::chrono::seconds write_timeout;
    bool head_request, keep_alive, v10;
    bool ok = true, must_close = false, chunked = false;

    // The head is written here and sent with the body in one gather write; the body is the
    // service's own string, alive until `done`. Beast's message and serializer made the
    // same bytes with two allocations, a copy of the body and a tenth of a relayed
    // request's instructions (docs/performance.md).
    void start(const http_request&, const http_response& res, bool streamed, callback done) override {
        if (streamed && v10) must_close = true; // no chunked coding for HTTP/1.0: the body ends at close
        if (!keep_alive) must_close = true;
        chunked = streamed && !v10;
        write_head(res, streamed);
        conn->stream->expires_after(write_timeout);
        auto on_written = [this, done](boost::system::error_code ec, std::size_t) { complete(ec, done); };
        const bool bodiless = res.status / 100 == 1 || res.status == 204 || res.status == 304;
        if (streamed || head_request || bodiless) {
            boost::asio::async_write(*conn->stream, boost::asio::buffer(head), std::move(on_written));
            return;
        }
        const std::array<boost::asio::const_buffer, 2> parts{boost::asio::buffer(head), boost::asio::buffer(res.body)};
        boost::asio::async_write(*conn->stream, parts, std::move(on_written));
    }
    void write(std::string_view chunk, callback done) override {
        if (!ok) return done(false);
        if (head_request || chunk.empty()) return done(true);
        conn->stream->expires_after(write_timeout);
        if (chunked) {
            boost::asio::async_write(*conn->stream, boost::beast::http::make_chunk(boost::asio::buffer(chunk.data(), chunk.size())),
                                     [this, done](boost::system::error_code ec, std::size_t) { complete(ec, done); });
        } else {
            boost::asio::async_write(*conn->stream, boost::asio::buffer(chunk.data(), chunk.size()),
                                     [this, done](boost::system::error_code ec, std::size_t) { complete(ec, done); });
        }
    }
    void end(callback done) override {
        if (!ok) return done(false);
        if (!chunked || head_request) return done(true);
        conn->stream->expires_after(write_timeout);
        boost::asio::async_write(*conn->stream, boost::beast::http::make_chunk_last(),
                                 [this, done](boost::system::error_code ec, std::size_t) { complete(ec, done); });
    }
    [[nodiscard]] bool peer_closed() const noexcept override { return conn->peer_closed; }

    // The status line and header fields (RFC 9112 §4, §5). The framing fields are this
    // adapter's: a route's own Content-Length, Transfer-Encoding or Connection is not sent,
    // and neither is a field whose name or value could split the response (CR, LF, NUL).
    void write_head(const http_response& res, bool streamed) {
        head.clear();
        head.reserve(160);
        head += v10 ? "HTTP/1.0 " : "HTTP/1.1 ";
        append_json_int(head, res.status);
        head += ' ';
        const auto reason = boost::beast::http::obsolete_reason(static_cast<boost::beast::http::status>(res.status));
        head.append(reason.data(), reason.size());
        head += "\r\n";
        bool typed = false;
        for (const auto& [name, value] : res.headers) {
            if (boost::beast::iequals(name, "Content-Length") || boost::beast::iequals(name, "Transfer-Encoding") ||
                boost::beast::iequals(name, "Connection") || !safe_field(name) || !safe_field(value))
                continue;
            typed = typed || boost::beast::iequals(name, "Content-Type");
            head.append(name).append(": ").append(value).append("\r\n");
        }
        const bool bodiless = res.status / 100 == 1 || res.status == 204 || res.status == 304; // RFC 9110 §8.6
        if (!typed && !bodiless) head += "Content-Type: application/json\r\n";                 // no body, nothing to type
        if (!streamed && !bodiless) {
            head += "Content-Length: ";
            append_json_int(head, res.body.size());
            head += "\r\n";
        } else if (chunked) {
            head += "Transfer-Encoding: chunked\r\n";
        }
        if (must_close) head += "Connection: close\r\n";
        else if (v10) head += "Connection: keep-alive\r\n";
        head += "\r\n";
    }
    static bool safe_field(std::string_view text) noexcept {
        return text.find_first_of(std::string_view{"\r\n\0", 3}) == std::string_view::npos;
    }
    std::string head{};

    void complete(boost::system::error_code ec, callback done) {
        if (ec) {
            ok = false;
            conn->stop.request_stop(); // the client is gone: stop the provider too
        }
        done(!ec);
    }
};

// Starts the service's task and resumes the awaiting coroutine when it has finished.
template <class Service>
auto run_service(Service* service, http_request req, response_sink* s, task_env env) {
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void()>(
        [service](auto handler, http_request r, response_sink* out, task_env e) {
            // serve() ends on the loop's thread, so dispatch resumes the connection inline
            auto done = [h = std::move(handler)](std::exception_ptr) mutable {
                auto ex = boost::asio::get_associated_executor(h);
                boost::asio::dispatch(ex, std::move(h));
            };
            start_detached(service->serve(std::move(r), out), std::move(e), std::move(done));
        },
        boost::asio::use_awaitable, std::move(req), s, std::move(env));
}

struct answer_limits {
    std::chrono::seconds write_timeout; // a client that stops reading is dropped after this
    std::chrono::seconds deadline;      // a request still running after this is cancelled
};

// Runs the service for one request on `loop` (blocking plugins on `pool`) and writes its answer
// on `stream`; completes once the middlewares' `finish` has run. `stop` cancels the request; the
// client leaving, a failed write and the deadline request it. False: the connection must close.
// The stream's timeout is off when it completes.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
// GCC 12 pairs Asio's frame allocation (aligned_alloc) with the frame's class operator delete,
// which frees it with free(): a false positive of -Wmismatched-new-delete on this coroutine.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
template <class Service>
boost::asio::awaitable<bool> answer(Service* service, asio_loop* loop, worker_pool* pool, boost::beast::tcp_stream* stream,
                                    http_request req, bool keep_alive, bool v10, std::stop_source stop, answer_limits limits) {
    auto guard = boost::asio::make_work_guard(loop->context()); // the pool resumes us later: keep run() running
    in_flight conn{stream, stop};
    auto watch = std::make_shared<peer_watch>(&conn);
    watch->start();
    boost::asio::steady_timer deadline{loop->context(), limits.deadline};
    deadline.async_wait([stop](boost::system::error_code ec) mutable {
        if (!ec) stop.request_stop();
    });

    sink s{&conn, limits.write_timeout, req.method == "HEAD", keep_alive, v10};
    task_env env{stop.get_token(), loop, pool};
    co_await run_service(service, std::move(req), &s, env);

    deadline.cancel();
    watch->cancel();
    stream->expires_never();
    co_return s.ok && !s.must_close;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Beast leaves the target raw. Percent-decoding is the one piece of URL handling the service
// needs: Boost.URL has it but is a compiled library (libboost-url1.81-dev), and cpp-httplib's
// decoder would tie this header-only target to cpp-httplib's .so.
inline std::string percent_decode(std::string_view s, bool plus_is_space = false) {
    std::string out;
    out.reserve(s.size());
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
            out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
            i += 2;
        } else if (plus_is_space && s[i] == '+') {
            out += ' ';
        } else {
            out += s[i];
        }
    }
    return out;
}
inline void parse_query(std::string_view q, std::map<std::string, std::string, std::less<>>& out) {
    while (!q.empty()) {
        const auto amp = q.find('&');
        const auto pair = q.substr(0, amp);
        const auto eq = pair.find('=');
        if (!pair.empty())
            out.emplace(percent_decode(pair.substr(0, eq), true),
                        eq == std::string_view::npos ? std::string{} : percent_decode(pair.substr(eq + 1), true)); // first wins
        if (amp == std::string_view::npos) break;
        q.remove_prefix(amp + 1);
    }
}

// The neutral request of a Beast request: the path percent-decoded, the query parsed (the first
// of repeated parameters kept), repeated header fields joined (RFC 9110 §5.3).
inline http_request to_neutral(boost::beast::http::request<boost::beast::http::string_body> msg, const std::string& remote) {
    http_request out;
    out.method = std::string{msg.method_string()};
    const std::string_view target = msg.target();
    const auto q = target.find('?');
    out.path = percent_decode(target.substr(0, q));
    if (q != std::string_view::npos) parse_query(target.substr(q + 1), out.query);
    for (const auto& f : msg) {
        auto [it, inserted] = out.headers.emplace(std::string{f.name_string()}, std::string{f.value()});
        if (!inserted) it->second.append(", ").append(f.value()); // RFC 9110 §5.3
    }
    out.body = std::move(msg.body());
    out.remote_addr = remote;
    return out;
}

} // namespace beast_detail

struct beast_handler_options {
    std::size_t workers = 64;                   // threads for blocking plugin calls (provider, store)
    std::chrono::seconds write_timeout{30};     // a client that stops reading is dropped after this
    std::chrono::seconds request_deadline{600}; // a request still running after this is cancelled
};

// chatkit's side of an application's own Beast server. The application owns the io_context (run
// by one thread: chatkit's loop state is not synchronized), the acceptor, the sessions and their
// streams, the parsing of requests and their limits, and the routing of paths to chatkit; this
// object owns the worker pool that runs blocking plugins and the loop the service's tasks resume
// on (the application's io_context, seen as a chatkit::asio_loop, so the async upstream client
// keeps its connections there). Lifetimes: the service and the io_context outlive this object,
// and this object outlives every serve() in flight: destroy it after the io_context's run() has
// returned (stop accepting and let the connections end rather than calling io_context::stop()).
template <class Service>
class beast_handler {
public:
    beast_handler(Service& service, boost::asio::io_context& ioc, beast_handler_options options = {})
        : service_(service), options_(options), loop_(ioc), pool_(options_.workers) {}
    beast_handler(const beast_handler&) = delete;
    beast_handler& operator=(const beast_handler&) = delete;

    // Answers one request the application's session has read from `stream`: runs the service and
    // writes the whole answer on `stream` (a streamed one chunk by chunk, HTTP/1.1 chunked), then
    // completes once the middlewares' `finish` has run. While it runs, the client closing the
    // connection, a failed write or the request deadline stops the request (and its provider).
    // The session must not read or write `stream` until it completes, and `stream` must outlive
    // it. Completes with false when the connection must close (the client asked for it, or it
    // left, or an HTTP/1.0 stream ended at close); the stream's timeout is then off.
    boost::asio::awaitable<bool> serve(boost::beast::tcp_stream& stream, boost::beast::http::request<boost::beast::http::string_body> req) {
        std::string remote;
        boost::system::error_code ec;
        if (const auto ep = stream.socket().remote_endpoint(ec); !ec) remote = ep.address().to_string();
        const bool keep_alive = req.keep_alive();
        const bool v10 = req.version() == 10;
        stream.expires_never(); // the service's time is bounded by the request deadline
        return beast_detail::answer(&service_, &loop_, &pool_, &stream, beast_detail::to_neutral(std::move(req), remote), keep_alive, v10,
                                    std::stop_source{}, beast_detail::answer_limits{options_.write_timeout, options_.request_deadline});
    }

private:
    Service& service_;
    beast_handler_options options_;
    asio_loop loop_;
    worker_pool pool_;
};

} // namespace chatkit
