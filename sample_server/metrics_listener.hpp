// CHAT_METRICS_PORT: GET /metrics on a port of its own, for deployments that keep the scrape off
// the public port (docs/observability.md). It is served by cpp-httplib on two threads whichever
// CHAT_SERVER is chosen: a scrape every few seconds needs no event loop, and reading /proc for it
// then never holds up a loop that serves chats.
#pragma once

#include <chatkit/httplib_server.hpp>
#include <chatkit/prometheus_metrics.hpp>
#include <chatkit/random_id.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

namespace sample_server {

// The listener's whole service: GET /metrics, and a JSON error for anything else. No key is asked
// for: whoever can reach this port may read it, which is why it exists (a scraper on the private
// network needs no admin key).
struct metrics_endpoint {
    chatkit::prometheus_metrics metrics;

    chatkit::http_response handle(const chatkit::http_request& req) const {
        if (req.path == "/metrics" && (req.method == "GET" || req.method == "HEAD")) return metrics.response();
        const auto id = chatkit::random_id();
        if (req.path == "/metrics") {
            auto refused = chatkit::error_response(
                {chatkit::error_kind::method_not_allowed, "/metrics answers GET only", "method_not_allowed"}, id);
            refused.headers["Allow"] = "GET, HEAD";
            return refused;
        }
        return chatkit::error_response({chatkit::error_kind::not_found, "this port serves only GET /metrics", "not_found"}, id);
    }
};

// Binds at construction (throws with the address when it cannot), serves on its own thread from
// then until stop(), which the destructor calls too.
class metrics_listener {
public:
    metrics_listener(chatkit::prometheus_metrics metrics, const std::string& host, int port)
        : endpoint_{std::move(metrics)}, server_(endpoint_, options(host, port)) {
        port_ = server_.bind();
        thread_ = std::thread([this] {
            server_.listen();
            done_ = true;
        });
        // httplib's stop() does nothing before listen() has started: wait for it, so a stop that
        // follows at once (a signal during start-up) is not lost.
        while (!server_.is_running() && !done_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~metrics_listener() { stop(); }
    metrics_listener(const metrics_listener&) = delete;
    metrics_listener& operator=(const metrics_listener&) = delete;

    [[nodiscard]] int port() const noexcept { return port_; }

    // Stops accepting, lets a scrape in flight finish, and joins the thread. Idempotent.
    void stop() {
        if (!thread_.joinable()) return;
        server_.stop();
        thread_.join();
    }

private:
    static chatkit::httplib_options options(const std::string& host, int port) {
        chatkit::httplib_options o;
        o.host = host;
        o.port = port;
        o.threads = 2; // a scraper or two
        o.max_body_bytes = 1024;
        return o;
    }

    metrics_endpoint endpoint_;
    chatkit::httplib_server<metrics_endpoint> server_;
    int port_ = 0;
    std::atomic<bool> done_ = false;
    std::thread thread_;
};

} // namespace sample_server
