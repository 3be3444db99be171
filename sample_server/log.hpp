// Structured logs: one JSON object per line (or key=value text), written by spdlog to stdout.
// Callers pass fields, never request bodies, message content or secrets.
#pragma once

#include "config.hpp"

#include <chatkit/clock.hpp>
#include <chatkit/http.hpp>
#include <chatkit/middleware.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/async.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string_view>

namespace sample_server {

class logger {
public:
    // Lines are formatted on the caller's thread and written by spdlog's own thread, so a request
    // never waits on stdout; a full queue blocks rather than drops a line.
    explicit logger(const config& c) : json_(c.log_format == "json"), log_(make_async()) {
        log_->set_pattern("%v");
        log_->set_level(spdlog::level::from_str(c.log_level));
        log_->flush_on(spdlog::level::trace); // a line is visible the moment it is logged
    }

    void log(spdlog::level::level_enum level, std::string_view msg, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) {
        if (!log_->should_log(level)) return;
        const auto time = chatkit::format_rfc3339(chatkit::now_unix_ms());
        const auto level_name = spdlog::level::to_string_view(level);
        if (json_) {
            nlohmann::ordered_json line = {{"time", time}, {"level", std::string_view{level_name.data(), level_name.size()}}, {"msg", msg}};
            for (const auto& [key, value] : fields.items()) line[key] = value;
            log_->log(level, "{}", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
            return;
        }
        std::string line = time + " " + std::string{level_name.data(), level_name.size()} + " " + std::string{msg};
        for (const auto& [key, value] : fields.items())
            line += " " + key + "=" + (value.is_string() ? value.get<std::string>() : chatkit::dump_json(value));
        log_->log(level, "{}", line);
    }

    void info(std::string_view msg, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) { log(spdlog::level::info, msg, fields); }
    void error(std::string_view msg, const nlohmann::ordered_json& fields = nlohmann::ordered_json::object()) { log(spdlog::level::err, msg, fields); }

    // The access log: one line per request, once its last byte is out (a stream's line carries
    // its real usage).
    void request(const chatkit::http_request& req, const chatkit::response_summary& s) {
        log(s.status >= 500 ? spdlog::level::err : spdlog::level::info, "request",
            nlohmann::ordered_json{{"request_id", req.request_id},
             {"method", req.method},
             {"path", req.path},
             {"status", s.status},
             {"latency_ms", std::round(s.duration_ms * 1000) / 1000},
             {"model", s.model},
             {"prompt_tokens", s.usage.prompt_tokens},
             {"completion_tokens", s.usage.completion_tokens},
             {"ttft_ms", std::round(s.time_to_first_token_ms * 1000) / 1000},
             {"cached", s.cached},
             {"bytes_sent", s.bytes_sent},
             {"client_left", s.client_left},
             {"remote_addr", req.remote_addr}});
    }

    ~logger() { spdlog::shutdown(); } // writes what is queued

private:
    static std::shared_ptr<spdlog::logger> make_async() {
        spdlog::init_thread_pool(8192, 1);
        return spdlog::create_async<spdlog::sinks::stdout_sink_mt>("sample_server");
    }

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
