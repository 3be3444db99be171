// Structured logs: one JSON object per line (or key=value text), written by spdlog to stdout.
// Callers pass fields, never request bodies, message content or secrets.
#pragma once

#include "config.hpp"

#include <chatkit/clock.hpp>
#include <chatkit/http.hpp>
#include <chatkit/json_text.hpp>
#include <chatkit/middleware.hpp>
#include <chatkit/trace_context.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>

namespace sample_server {

// Appends formatted lines to a buffer under a short lock; a thread of the sink's own writes the
// buffer to stdout a batch at a time. spdlog's async logger woke its thread for every line, and
// that futex wake, context switch and write were the largest kernel cost left per relayed
// request (docs/performance.md); here a caller wakes the writer only when the buffer was empty,
// and the writer gathers for `window` before writing. A full buffer blocks the caller: no line is
// dropped. flush() returns once everything logged before it is on stdout.
class batched_stdout_sink final : public spdlog::sinks::sink {
public:
    explicit batched_stdout_sink(std::chrono::milliseconds window) : window_(window), writer_([this] { run(); }) {}
    batched_stdout_sink(const batched_stdout_sink&) = delete;
    batched_stdout_sink& operator=(const batched_stdout_sink&) = delete;
    ~batched_stdout_sink() override {
        {
            std::lock_guard lock{mutex_};
            stopping_ = true;
        }
        ready_.notify_all();
        writer_.join();
    }

    void log(const spdlog::details::log_msg& msg) override {
        std::unique_lock lock{mutex_};
        space_.wait(lock, [this] { return pending_.size() < max_pending_bytes || stopping_; });
        const bool was_empty = pending_.empty();
        formatter_->format(msg, line_); // under the lock: a formatter is not thread-safe
        pending_.append(line_.data(), line_.size());
        line_.clear();
        if (was_empty) ready_.notify_one();
    }
    void flush() override {
        std::unique_lock lock{mutex_};
        const auto wanted = ++flushes_requested_;
        ready_.notify_one();
        written_.wait(lock, [&] { return flushes_done_ >= wanted; });
    }
    void set_pattern(const std::string& pattern) override {
        std::lock_guard lock{mutex_};
        formatter_ = std::make_unique<spdlog::pattern_formatter>(pattern);
    }
    void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
        std::lock_guard lock{mutex_};
        formatter_ = std::move(formatter);
    }

private:
    static constexpr std::size_t max_pending_bytes = 4 << 20;

    void run() {
        std::string batch;
        std::unique_lock lock{mutex_};
        for (;;) {
            ready_.wait(lock, [this] { return !pending_.empty() || stopping_ || flushes_requested_ > flushes_done_; });
            if (window_.count() > 0 && !pending_.empty())
                ready_.wait_for(lock, window_, [this] { return stopping_ || flushes_requested_ > flushes_done_; });
            const auto flushes = flushes_requested_;
            batch.swap(pending_);
            lock.unlock();
            space_.notify_all();
            if (!batch.empty()) {
                std::fwrite(batch.data(), 1, batch.size(), stdout);
                std::fflush(stdout);
                batch.clear();
            }
            lock.lock();
            flushes_done_ = flushes;
            written_.notify_all();
            if (stopping_ && pending_.empty()) return;
        }
    }

    std::chrono::milliseconds window_;
    std::mutex mutex_;
    std::condition_variable ready_, space_, written_;
    std::unique_ptr<spdlog::formatter> formatter_ = std::make_unique<spdlog::pattern_formatter>("%v");
    spdlog::memory_buf_t line_;
    std::string pending_;
    std::uint64_t flushes_requested_ = 0, flushes_done_ = 0;
    bool stopping_ = false;
    std::thread writer_; // last: it starts once the rest is built
};

class logger {
public:
    // Lines are formatted on the caller's thread and written to stdout by the sink's own thread a
    // batch at a time (batched_stdout_sink), so a request never waits on stdout. `batch_window`
    // is how long a line may wait for others: 0 where requests come one at a time (Lambda).
    explicit logger(const config& c, std::chrono::milliseconds batch_window = std::chrono::milliseconds{5})
        : json_(c.log_format == "json"),
          log_(std::make_shared<spdlog::logger>("sample_server", std::make_shared<batched_stdout_sink>(batch_window))) {
        log_->set_pattern("%v");
        log_->set_level(spdlog::level::from_str(c.log_level));
        log_->flush_on(spdlog::level::off); // the sink writes each batch out whole; a flush would wait for it
    }

    void log(spdlog::level::level_enum level, std::string_view msg,
             const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) {
        if (!log_->should_log(level)) return;
        line out{json_, level, msg};
        for (const auto& [key, value] : fields.items()) out.value(key, value);
        log_->log(level, spdlog::string_view_t{out.finish()});
    }

    void info(std::string_view msg, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) {
        log(spdlog::level::info, msg, fields);
    }
    void warn(std::string_view msg, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) {
        log(spdlog::level::warn, msg, fields);
    }
    void error(std::string_view msg, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) {
        log(spdlog::level::err, msg, fields);
    }

    // The access log: one line per request, once its last byte is out (a stream's line carries
    // its real usage). Written field by field rather than through a JSON tree: the tree made this
    // line cost a fifth of a relayed request's CPU (docs/performance.md).
    void request(const chatkit::http_request& req, const chatkit::response_summary& s) {
        const auto level = s.status >= 500 ? spdlog::level::err : spdlog::level::info;
        if (!log_->should_log(level)) return;
        line out{json_, level, "request"};
        out.text("request_id", req.request_id);
        out.text("method", req.method);
        out.text("path", req.path);
        out.number("status", s.status);
        out.number("latency_ms", std::round(s.duration_ms * 1000) / 1000);
        out.text("model", s.model);
        out.number("prompt_tokens", s.usage.prompt_tokens);
        out.number("completion_tokens", s.usage.completion_tokens);
        out.number("ttft_ms", std::round(s.time_to_first_token_ms * 1000) / 1000);
        // The gateway's own time: what the request took minus the wait on the provider.
        if (s.upstream_ms > 0) out.number("upstream_ms", std::round(s.upstream_ms * 1000) / 1000);
        out.number("overhead_ms", std::round(std::max(s.duration_ms - s.upstream_ms, 0.0) * 1000) / 1000);
        if (s.upstream_ms > 0 || s.cached) out.text("provider", s.provider);
        out.boolean("cached", s.cached);
        // The cost at the configured prices; a request that used tokens of a model with no price
        // says so (unpriced=true) instead of logging $0.
        if (s.cost_usd) out.number("cost_usd", *s.cost_usd);
        else if (s.usage.total_tokens() > 0) out.boolean("unpriced", true);
        if (s.usage_estimated) out.boolean("usage_estimated", true);
        out.number("bytes_sent", s.bytes_sent);
        out.boolean("client_left", s.client_left);
        out.text("remote_addr", req.remote_addr);
        // The trace this request belongs to (its traceparent: the client's, or tracing's own), so
        // that a log line leads to its trace.
        if (const auto trace = chatkit::parse_traceparent(req.header("traceparent"))) out.text("trace_id", chatkit::to_hex(trace->trace));
        // The authenticated key's id and team (CHAT_AUTH=keys): names, never the key or its digest.
        if (req.caller.authenticated()) {
            out.text("key_id", req.caller.key_id);
            out.text("team_id", req.caller.team_id);
        }
        log_->log(level, spdlog::string_view_t{out.finish()});
    }

    ~logger() { log_->flush(); } // writes what is queued

private:
    // One line in either format: JSON's fields follow time, level and msg; text's are key=value
    // with strings as they are. Both log() and the access log write through it.
    class line {
    public:
        line(bool json, spdlog::level::level_enum level, std::string_view msg) : json_(json) {
            const auto time = chatkit::format_rfc3339(chatkit::now_unix_ms());
            const auto name = spdlog::level::to_string_view(level);
            const std::string_view level_name{name.data(), name.size()};
            out_.reserve(320);
            if (json_) {
                out_ += R"({"time":)";
                chatkit::append_json_string(out_, time);
                out_ += R"(,"level":)";
                chatkit::append_json_string(out_, level_name);
                out_ += R"(,"msg":)";
                chatkit::append_json_string(out_, msg);
            } else {
                out_.append(time).append(" ").append(level_name).append(" ").append(msg);
            }
        }
        void text(std::string_view key, std::string_view value) {
            if (!json_) return void(out_.append(" ").append(key).append("=").append(value));
            open(key);
            chatkit::append_json_string(out_, value);
        }
        template <class Number>
        void number(std::string_view key, Number value) {
            if (json_) open(key);
            else out_.append(" ").append(key).append("=");
            if constexpr (std::is_integral_v<Number>) chatkit::append_json_int(out_, value);
            else chatkit::append_json(out_, nlohmann::json(value)); // nlohmann's shortest form, as before
        }
        // Any field: a string as it is in text, everything else as JSON.
        void value(std::string_view key, const nlohmann::ordered_json& v) {
            if (json_) open(key);
            else out_.append(" ").append(key).append("=");
            if (!json_ && v.is_string()) out_ += v.get_ref<const std::string&>();
            else out_ += v.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
        }
        void boolean(std::string_view key, bool value) {
            if (json_) open(key);
            else out_.append(" ").append(key).append("=");
            out_ += value ? "true" : "false";
        }
        const std::string& finish() {
            if (json_) out_ += '}';
            return out_;
        }

    private:
        void open(std::string_view key) {
            out_ += ',';
            chatkit::append_json_string(out_, key);
            out_ += ':';
        }
        bool json_;
        std::string out_{};
    };

    bool json_;
    std::shared_ptr<spdlog::logger> log_;
};

// The access log as a middleware: its `finish` runs after the last byte of every request that
// reached it, whichever adapter carried it.
class access_log {
public:
    access_log() = default;
    explicit access_log(logger* log) : log_(log) {}
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    void finish(const chatkit::http_request& req, const chatkit::response_summary& s, chatkit::no_context&) {
        if (log_) log_->request(req, s);
    }

private:
    logger* log_ = nullptr;
};

} // namespace sample_server
