// A local AWS Lambda Runtime API (docs/protocols.md §5.2) for tests: hands out queued events from
// /next with the headers Lambda sends, and records what the runtime posts to /response, /error
// and /init/error (headers and body; a streamed response arrives whole once its last chunk has).
#pragma once

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

class fake_lambda_runtime {
public:
    struct posted {
        std::string kind; // "response", "error" or "init/error"
        std::string request_id;
        httplib::Headers headers;
        std::string body;

        std::string header(const std::string& name) const {
            const auto it = headers.find(name);
            return it == headers.end() ? std::string{} : it->second;
        }
    };

    fake_lambda_runtime() {
        server_.Get("/2018-06-01/runtime/invocation/next", [this](const httplib::Request&, httplib::Response& res) {
            const auto now = std::chrono::steady_clock::now();
            std::unique_lock lock{mutex_};
            if (++next_calls_ == 1) first_next_ = now;
            changed_.notify_all();
            changed_.wait(lock, [this] { return stopping_ || !events_.empty(); });
            if (stopping_) {
                res.status = 503;
                return;
            }
            auto [id, event] = std::move(events_.front());
            events_.pop_front();
            res.set_header("Lambda-Runtime-Aws-Request-Id", id);
            res.set_header("Lambda-Runtime-Deadline-Ms", std::to_string(deadline_ms()));
            res.set_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:chatkit");
            res.set_header("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1");
            res.set_content(event, "application/json");
        });
        server_.Post(R"(/2018-06-01/runtime/invocation/([^/]+)/(response|error))",
                     [this](const httplib::Request& req, httplib::Response& res) {
                         record({req.matches[2], req.matches[1], req.headers, req.body});
                         res.status = 202;
                         res.set_content(R"({"status":"OK"})", "application/json");
                     });
        server_.Post("/2018-06-01/runtime/init/error", [this](const httplib::Request& req, httplib::Response& res) {
            record({"init/error", "", req.headers, req.body});
            res.status = 202;
            res.set_content(R"({"status":"OK"})", "application/json");
        });
        port_ = server_.bind_to_any_port("127.0.0.1");
        if (port_ <= 0) throw std::runtime_error("fake_lambda_runtime: cannot bind 127.0.0.1");
        thread_ = std::thread{[this] { server_.listen_after_bind(); }};
        while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }

    ~fake_lambda_runtime() {
        {
            std::lock_guard lock{mutex_};
            stopping_ = true;
        }
        changed_.notify_all();
        server_.stop();
        thread_.join();
    }
    fake_lambda_runtime(const fake_lambda_runtime&) = delete;
    fake_lambda_runtime& operator=(const fake_lambda_runtime&) = delete;

    // The value for AWS_LAMBDA_RUNTIME_API.
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

    // Queues an event (any bytes, to test unparseable ones); returns its request id.
    std::string push(std::string event) {
        std::lock_guard lock{mutex_};
        std::string id = "8476a536-e9f4-11e8-9739-" + std::to_string(100000000000 + ++pushed_);
        events_.emplace_back(id, std::move(event));
        changed_.notify_all();
        return id;
    }

    // What the runtime posted for `request_id` (or, with "", to /init/error); throws after `timeout`.
    posted wait_for(const std::string& request_id, std::chrono::seconds timeout = std::chrono::seconds{20}) {
        std::unique_lock lock{mutex_};
        if (!changed_.wait_for(lock, timeout, [&] { return posts_.count(request_id) > 0; }))
            throw std::runtime_error("fake_lambda_runtime: nothing posted for '" + request_id + "'");
        return posts_.find(request_id)->second;
    }

    // How many times /next was called (the runtime is polling again once this grows).
    int next_calls() const {
        std::lock_guard lock{mutex_};
        return next_calls_;
    }

    // When /next was first called: the runtime's start-up is over. Waits up to `timeout`, then throws.
    std::chrono::steady_clock::time_point first_next(std::chrono::seconds timeout = std::chrono::seconds{20}) {
        std::unique_lock lock{mutex_};
        if (!changed_.wait_for(lock, timeout, [this] { return next_calls_ > 0; }))
            throw std::runtime_error("fake_lambda_runtime: /next was never called");
        return first_next_;
    }

    // Every post in arrival order.
    std::vector<posted> posts() const {
        std::lock_guard lock{mutex_};
        return log_;
    }

private:
    static long long deadline_ms() {
        using namespace std::chrono;
        return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count() + 30'000;
    }

    void record(posted p) {
        std::lock_guard lock{mutex_};
        log_.push_back(p);
        posts_.emplace(p.request_id, std::move(p));
        changed_.notify_all();
    }

    httplib::Server server_;
    std::thread thread_;
    int port_ = 0;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool stopping_ = false;
    int next_calls_ = 0;
    std::chrono::steady_clock::time_point first_next_;
    long long pushed_ = 0;
    std::deque<std::pair<std::string, std::string>> events_;
    std::multimap<std::string, posted> posts_;
    std::vector<posted> log_;
};

} // namespace test_support
