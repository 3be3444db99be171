// A proxy in front of a DynamoDB emulator that may answer a request itself, after forwarding it
// or not: DynamoDB's own answers that emulators never give (throttling, a lost answer,
// UnprocessedItems), injected into tests against the real emulator.
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

// Forwards to an emulator; `intercept` may answer a request itself (after forwarding it or not).
class dynamodb_proxy {
public:
    // Returns true when it answered; `forward()` sends the request on and gives the real answer.
    using interceptor =
        std::function<bool(const std::string& target, const std::function<httplib::Result()>& forward, httplib::Response& res)>;
    // The same, also shown the request's body (e.g. to answer a BatchWriteItem's items as unprocessed).
    using body_interceptor = std::function<bool(const std::string& target, const std::string& body,
                                                const std::function<httplib::Result()>& forward, httplib::Response& res)>;

    dynamodb_proxy(int upstream_port, interceptor intercept)
        : dynamodb_proxy(upstream_port, body_interceptor{[intercept = std::move(intercept)](const std::string& target, const std::string&,
                                                                                            const auto& forward, httplib::Response& res) {
                             return intercept(target, forward, res);
                         }}) {}
    dynamodb_proxy(int upstream_port, body_interceptor intercept) : upstream_(upstream_port), intercept_(std::move(intercept)) {
        server_.Post("/", [this](const httplib::Request& req, httplib::Response& res) {
            const std::string target = req.get_header_value("X-Amz-Target");
            {
                std::lock_guard lock{mutex_};
                targets_.push_back(target);
            }
            auto forward = [&] {
                httplib::Client c{"127.0.0.1", upstream_};
                httplib::Headers h;
                for (const auto& [k, v] : req.headers)
                    if (k != "Content-Length" && k != "Content-Type") h.emplace(k, v);
                return c.Post("/", h, req.body, req.get_header_value("Content-Type"));
            };
            if (intercept_(target, req.body, forward, res)) return;
            auto real = forward();
            if (!real) {
                res.status = 599;
                return;
            }
            res.status = real->status;
            res.set_content(real->body, real->get_header_value("Content-Type"));
        });
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread{[this] { server_.listen_after_bind(); }};
        while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~dynamodb_proxy() {
        server_.stop();
        thread_.join();
    }

    std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
    int count(const std::string& target) const {
        std::lock_guard lock{mutex_};
        return static_cast<int>(std::count(targets_.begin(), targets_.end(), target));
    }

private:
    int upstream_;
    body_interceptor intercept_;
    httplib::Server server_;
    int port_ = 0;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::vector<std::string> targets_;
};

// DynamoDB's JSON error answer (awsJson1_0).
inline void aws_error(httplib::Response& res, int status, const std::string& type, const std::string& message) {
    res.status = status;
    res.set_content(nlohmann::json{{"__type", "com.amazonaws.dynamodb.v20120810#" + type}, {"message", message}}.dump(),
                    "application/x-amz-json-1.0");
}

} // namespace test_support
