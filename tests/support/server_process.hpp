// Runs the real sample_server binary for a test: its own environment, a temporary directory for
// its SQLite file and log, an ephemeral port read from its start-up log line, and a stop that
// sends a signal and reports the exit status.
#pragma once

#include "child_process.hpp"
#include "kept_logs.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#ifndef SAMPLE_SERVER_PATH
#error "SAMPLE_SERVER_PATH must name the sample_server binary"
#endif

namespace test_support {

class temp_dir {
public:
    temp_dir() {
        std::random_device rd;
        path_ = std::filesystem::temp_directory_path() / ("chatkit-test-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(path_);
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

struct run_result {
    int exit_code = -1;
    std::string output;
};

// POSTs `body` as JSON, as every client of the server's JSON routes does.
inline httplib::Result post_json(httplib::Client& c, const std::string& path, const nlohmann::json& body, httplib::Headers headers = {}) {
    return c.Post(path, headers, body.dump(), "application/json");
}

// Runs sample_server to completion (for --help and bad configuration) and captures stdout+stderr.
inline run_result run_to_exit(const std::map<std::string, std::string>& env, const std::vector<std::string>& args) {
    temp_dir dir;
    const auto out = dir.path() / "out.txt";
    std::vector<std::string> argv{SAMPLE_SERVER_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    child_process server{argv, {.env = env, .output = out, .out = child_sink::file, .err = child_sink::file, .keep_log = true}};
    const int code = server.wait();
    return {code < 0 ? -1 : code, server.log()};
}

class server_process {
public:
    // `env` adds to (or overrides) the defaults: an ephemeral port, a SQLite file in a fresh
    // directory (or `database` to share one across restarts), no rate limit.
    explicit server_process(std::map<std::string, std::string> env = {}, std::filesystem::path database = {}) {
        if (database.empty()) database = dir_.path() / "chat.db";
        std::map<std::string, std::string> full{{"CHAT_PORT", "0"},
                                                {"CHAT_DATABASE_URL", "sqlite:" + database.string()},
                                                {"CHAT_RATE_LIMIT", "off"},
                                                {"CHAT_THREADS", "16"},
                                                {"CHAT_DRAIN_DELAY", "0"}}; // stop() is prompt; the drain tests set one
        for (auto& [k, v] : env) full[k] = v;
        env_ = full;
        // CHATKIT_TEST_SERVER (httplib or beast) picks the HTTP adapter for tests that do not name one.
        if (const char* adapter = std::getenv("CHATKIT_TEST_SERVER"); adapter && !full.contains("CHAT_SERVER"))
            full["CHAT_SERVER"] = adapter;
        log_path_ = dir_.path() / "server.log";
        // A clean CHAT_*/OPENAI_*/ANTHROPIC_*/GEMINI_*/GOOGLE_API_KEY/AWS_* slate: only `full`.
        process_.emplace(std::vector<std::string>{SAMPLE_SERVER_PATH},
                         child_options{.env = full,
                                       .drop_env = {"CHAT_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_API_KEY=", "AWS_"},
                                       .output = log_path_,
                                       .out = child_sink::file,
                                       .err = child_sink::file});
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (std::chrono::steady_clock::now() < deadline) {
            for (const auto& line : log_lines()) {
                auto j = nlohmann::json::parse(line, nullptr, false);
                if (j.is_object() && j.value("msg", "") == "listening") {
                    port_ = j["port"].get<int>();
                    return;
                }
            }
            if (!process_->running()) {
                process_.reset();
                throw std::runtime_error("sample_server exited during start-up:\n" + log());
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        throw std::runtime_error("sample_server did not start within 20 s:\n" + log());
    }

    ~server_process() {
        if (process_) stop(SIGKILL);
        keep_log(log_path_, env_);
    }
    server_process(const server_process&) = delete;
    server_process& operator=(const server_process&) = delete;

    int port() const { return port_; }
    pid_t pid() const { return process_ ? process_->pid() : -1; }

    httplib::Client client() const {
        httplib::Client c{"127.0.0.1", port_};
        c.set_read_timeout(10, 0);
        return c;
    }

    // Sends `signal` and waits (up to 20 s) for the exit; returns the exit code, or -signal.
    int stop(int signal = SIGTERM) {
        if (!process_) return -1;
        const int code = process_->stop(signal, std::chrono::seconds{20});
        process_.reset();
        return code;
    }

    std::string log() const {
        std::ifstream in{log_path_};
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }

    std::vector<std::string> log_lines() const {
        std::vector<std::string> lines;
        std::istringstream in{log()};
        for (std::string line; std::getline(in, line);) lines.push_back(line);
        return lines;
    }

    // The access-log entries, parsed.
    std::vector<nlohmann::json> request_logs() const {
        std::vector<nlohmann::json> out;
        for (const auto& line : log_lines()) {
            auto j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_object() && j.value("msg", "") == "request") out.push_back(j);
        }
        return out;
    }

    const temp_dir& dir() const { return dir_; }

private:
    temp_dir dir_;
    std::filesystem::path log_path_;
    std::map<std::string, std::string> env_; // what it was started with, for keep_log
    std::optional<child_process> process_;
    int port_ = 0;
};

} // namespace test_support
