// Serves a chatkit service over cpp-httplib, tuned past the defaults Debian's compiled 0.11.4
// ships with (Nagle on, listen backlog 5, 8 workers, 5 requests per kept-alive connection): see
// docs/performance.md for the measurements behind each setting.
#pragma once

#include "chatkit/http.hpp"
#include "chatkit/random_id.hpp"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace chatkit {

struct httplib_options {
    std::string host = "127.0.0.1";
    int port = 8000;           // 0: any free port (see httplib_server::port())
    std::size_t threads = 64;  // a kept-alive connection holds one worker for its whole life
    int listen_backlog = 4096; // the compiled-in 5 drops connections under load (the kernel caps it at somaxconn)
    std::size_t max_body_bytes = 1 << 20;
    std::chrono::seconds read_timeout{10}; // a client that stalls mid-request is dropped after this
    std::chrono::seconds write_timeout{10};
    std::chrono::seconds keep_alive_timeout{5};
    std::size_t keep_alive_max_requests = 10000;
};

template <class Service>
class httplib_server {
public:
    // `log` hears of the requests httplib answers itself (malformed, too large); the service's
    // own are seen by its middlewares' `finish`.
    httplib_server(Service& service, httplib_options options, adapter_log log = {})
        : service_(service), options_(std::move(options)), log_(std::move(log)) {
        configure();
    }

    // Binds the listening socket; throws with the address when that fails. Returns the port.
    int bind() {
        if (options_.port == 0) port_ = server_.bind_to_any_port(options_.host);
        else if (server_.bind_to_port(options_.host, options_.port)) port_ = options_.port;
        if (port_ <= 0) throw std::runtime_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port));
        if (!server_.raise_backlog(options_.listen_backlog)) throw std::runtime_error("cannot set the listen backlog on " + options_.host);
        return port_;
    }

    // Serves until stop(); returns once in-flight requests have finished.
    bool listen() { return server_.listen_after_bind(); }

    // Stops accepting; requests in flight complete and listen() returns. Safe from any thread.
    void stop() { server_.stop(); }

    [[nodiscard]] int port() const noexcept { return port_; }
    [[nodiscard]] bool is_running() const { return server_.is_running(); }

private:
    // Reaches the listening socket, which httplib keeps protected, to raise its backlog.
    struct tuned_server : httplib::Server {
        bool raise_backlog(int backlog) { return ::listen(svr_sock_, backlog) == 0; }
    };

    void configure() {
        const auto threads = options_.threads;
        server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
        server_.set_tcp_nodelay(true);
        server_.set_keep_alive_max_count(options_.keep_alive_max_requests);
        server_.set_keep_alive_timeout(options_.keep_alive_timeout.count());
        server_.set_read_timeout(options_.read_timeout.count(), 0);
        server_.set_write_timeout(options_.write_timeout.count(), 0);
        server_.set_payload_max_length(options_.max_body_bytes);

        auto handler = [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); };
        // Every method reaches the service, whose router answers 404 and 405 itself.
        server_.Get(".*", handler).Post(".*", handler).Put(".*", handler).Delete(".*", handler);
        server_.Patch(".*", handler).Options(".*", handler);
        // httplib answers some requests itself (oversized body, malformed request line); give
        // those the same JSON envelope as the service's own errors.
        server_.set_error_handler(httplib::Server::HandlerWithResponse{[this](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            const auto started = std::chrono::steady_clock::now();
            error e{error_kind::invalid_request, "malformed request", "bad_request"};
            if (res.status == 413)
                e = {error_kind::payload_too_large, "request body exceeds " + std::to_string(options_.max_body_bytes) + " bytes",
                     "body_too_large"};
            else if (res.status == 404) e = {error_kind::not_found, "no route for " + req.path, "not_found"};
            auto neutral = to_neutral(req);
            neutral.request_id = random_id();
            auto answer = error_response(e, neutral.request_id);
            answer.status = res.status;
            answer.headers["X-Request-ID"] = neutral.request_id;
            write_headers(answer, res);
            res.set_content(answer.body, "application/json");
            if (log_) {
                response_summary s;
                s.status = answer.status;
                s.error_code = e.code;
                s.bytes_sent = answer.body.size();
                s.duration_ms = elapsed_ms(started);
                log_(neutral, s);
            }
            return httplib::Server::HandlerResponse::Handled;
        }});
    }

    void serve(const httplib::Request& req, httplib::Response& res) {
        auto neutral = to_neutral(req);
        auto answer = std::make_shared<http_response>(service_.handle(neutral));
        res.status = answer->status;
        write_headers(*answer, res);
        if (!answer->is_stream()) {
            const auto type = answer->headers.find("Content-Type");
            res.set_content(answer->body, type == answer->headers.end() ? "application/json" : type->second.c_str());
            return;
        }
        // The body (and then the middlewares' `finish`) runs when httplib asks for it.
        res.set_chunked_content_provider("text/event-stream", [answer](std::size_t, httplib::DataSink& sink) {
            answer->stream([&sink](std::string_view chunk) { return sink.is_writable() && sink.write(chunk.data(), chunk.size()); },
                           answer->meta);
            sink.done();
            return true;
        });
    }

    static void write_headers(const http_response& from, httplib::Response& to) {
        for (const auto& [name, value] : from.headers)
            if (name != "Content-Type") to.set_header(name, value);
    }

    static http_request to_neutral(const httplib::Request& req) {
        http_request out;
        out.method = req.method;
        out.path = req.path;
        for (const auto& [name, value] : req.params) out.query.emplace(name, value); // the first of repeats wins
        for (const auto& [name, value] : req.headers) {
            auto [it, inserted] = out.headers.emplace(name, value);
            if (!inserted) it->second.append(", ").append(value); // RFC 9110 §5.3
        }
        out.body = req.body;
        out.remote_addr = req.remote_addr;
        return out;
    }

    static double elapsed_ms(std::chrono::steady_clock::time_point since) {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
    }

    Service& service_;
    httplib_options options_;
    adapter_log log_;
    tuned_server server_;
    int port_ = -1;
};

} // namespace chatkit
