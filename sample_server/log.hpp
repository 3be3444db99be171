// Structured logs: one JSON object per line (or key=value text), written by spdlog to stdout.
// Callers pass fields, never request bodies, message content or secrets.
#pragma once

#include "config.hpp"

#include <chatkit/clock.hpp>
#include <chatkit/http.hpp>
#include <chatkit/json_text.hpp>
#include <chatkit/middleware.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/async.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

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
        out.boolean("cached", s.cached);
        out.number("bytes_sent", s.bytes_sent);
        out.boolean("client_left", s.client_left);
        out.text("remote_addr", req.remote_addr);
        log_->log(level, spdlog::string_view_t{out.finish()});
    }

    ~logger() { spdlog::shutdown(); } // writes what is queued

private:
    // One line in either format, the same as log() writes: JSON's fields follow time, level and
    // msg; text's are key=value with strings as they are.
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
