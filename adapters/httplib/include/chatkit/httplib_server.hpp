// Serves a chatkit service over cpp-httplib, tuned past the defaults Debian's compiled 0.11.4
// ships with (Nagle on, listen backlog 5, 8 workers, 5 requests per kept-alive connection): see
// docs/performance.md for the measurements behind each setting. It owns its httplib::Server; to
// serve chatkit from a server of your own, see chatkit/httplib_handler.hpp (docs/embedding.md).
#pragma once

#include "chatkit/http.hpp"
#include "chatkit/httplib_handler.hpp"

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

        mount(server_, service_);
        server_.set_error_handler(httplib_error_handler(options_.max_body_bytes, log_));
    }

    Service& service_;
    httplib_options options_;
    adapter_log log_;
    tuned_server server_;
    int port_ = -1;
};

} // namespace chatkit
