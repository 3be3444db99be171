// Kept-alive cpp-httplib clients to one origin, shared by all threads: an httplib::Client is not
// safe for concurrent requests, so each request borrows one, and returns it unless the exchange
// broke. Reusing connections saves a TCP (and TLS) handshake per upstream call.
#pragma once

#include <httplib.h>

#include <chrono>
#include <memory>
#include <string_view>
#include <mutex>
#include <stop_token>
#include <string>
#include <vector>

namespace chatkit {

struct httplib_client_options {
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{60'000}; // the longest silence while waiting for bytes
    std::size_t max_idle = 64;                      // connections kept open between requests
};

class httplib_client_pool {
public:
    // `origin` is scheme://host[:port]; https verifies the server's certificate (system CA store).
    httplib_client_pool(std::string origin, httplib_client_options options) : origin_(std::move(origin)), options_(options) {}

    class lease {
    public:
        explicit lease(httplib_client_pool& pool) : pool_(pool), client_(pool.take()) {}
        ~lease() {
            if (reusable_) pool_.give_back(std::move(client_));
        }
        lease(const lease&) = delete;
        lease& operator=(const lease&) = delete;
        httplib::Client& operator*() { return *client_; }
        httplib::Client* operator->() { return client_.get(); }
        void discard() noexcept { reusable_ = false; } // after a broken or abandoned exchange

    private:
        httplib_client_pool& pool_;
        std::unique_ptr<httplib::Client> client_;
        bool reusable_ = true;
    };

    lease borrow() { return lease{*this}; }

    // What one request to an upstream gave: a 200 body consumed as it arrived, or the status,
    // headers and body of anything else, or how the transport failed.
    struct round_trip {
        bool sent = false; // the response arrived complete
        httplib::Error error = httplib::Error::Success;
        int status = 0;
        httplib::Headers headers{};
        std::string body{}; // a non-200 body, or a 200 body when not streamed
        bool past_deadline = false;
        bool cancelled = false; // the stop token was requested during the exchange
        bool too_large = false; // the body outgrew `max_body`: the exchange was abandoned
        std::chrono::steady_clock::duration took{};
    };

    // Sends `req` on a borrowed connection. With `on_chunk`, a 200 body goes to it piece by piece
    // (it returns false to stop reading); otherwise it is kept whole. Either way the body is read
    // up to `max_body` bytes at most (a streamed answer is held whole by the provider too). The
    // connection is reused only when the exchange ended cleanly and `keep` agrees. A stop request
    // shuts the connection down at once, even while it waits for the first byte.
    template <class OnChunk>
    round_trip send(httplib::Request& req, std::chrono::steady_clock::time_point deadline, OnChunk&& on_chunk, bool stream_200,
                    std::size_t max_body = 64u << 20, const std::stop_token& stop = {}) {
        round_trip out;
        bool stopped = false;
        std::size_t streamed = 0;
        req.response_handler = [&](const httplib::Response& res) {
            out.status = res.status;
            out.headers = res.headers;
            return true;
        };
        req.content_receiver = [&](const char* data, std::size_t size, std::uint64_t, std::uint64_t) {
            if (std::chrono::steady_clock::now() > deadline) return !(out.past_deadline = true);
            if ((streamed += size) > max_body) return !(out.too_large = true);
            if (out.status != 200 || !stream_200) {
                out.body.append(data, size);
                return true;
            }
            return !(stopped = !on_chunk(std::string_view{data, size}));
        };
        const auto started = std::chrono::steady_clock::now();
        auto conn = borrow();
        httplib::Response res;
        {
            // httplib::Client::stop() shuts the socket down under its own lock: the blocked read
            // returns and send() fails, so the upstream sees its connection closed promptly.
            httplib::Client* client = &*conn;
            std::stop_callback on_stop{stop, [client] { client->stop(); }};
            out.sent = conn->send(req, res, out.error);
            out.cancelled = stop.stop_requested();
        }
        out.took = std::chrono::steady_clock::now() - started;
        if (!out.sent || stopped || out.cancelled || out.too_large) conn.discard(); // a half-read connection cannot carry another request
        return out;
    }
    [[nodiscard]] const std::string& origin() const noexcept { return origin_; }

private:
    std::unique_ptr<httplib::Client> take() {
        {
            const std::lock_guard lock{mutex_};
            if (!idle_.empty()) {
                auto client = std::move(idle_.back());
                idle_.pop_back();
                return client;
            }
        }
        auto client = std::make_unique<httplib::Client>(origin_);
        client->set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(options_.connect_timeout));
        client->set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(options_.read_timeout));
        client->set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(options_.read_timeout));
        client->set_keep_alive(true);
        client->set_tcp_nodelay(true);
        client->enable_server_certificate_verification(true);
        return client;
    }

    void give_back(std::unique_ptr<httplib::Client> client) {
        const std::lock_guard lock{mutex_};
        if (idle_.size() < options_.max_idle) idle_.push_back(std::move(client));
    }

    std::string origin_;
    httplib_client_options options_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<httplib::Client>> idle_;
};

} // namespace chatkit
