// Real AWS emulators for tests, each started on 127.0.0.1 and an ephemeral port and stopped with
// the test (or killed with it): moto (Python; DynamoDB, Secrets Manager and more) and
// dynalite (npm; DynamoDB, on the same LevelDB-backed validation rules as the service).
#pragma once

#include "child_process.hpp"

#include <chatkit/aws/credentials.hpp>
#include <chatkit/aws/json_client.hpp>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef CHATKIT_SOURCE_DIR
#error "CHATKIT_SOURCE_DIR must name the source tree (for the emulators' scripts and node_modules)"
#endif

namespace test_support {

class emulator_process {
public:
    // Runs argv with `extra_env` added; reads the child's output until `port_pattern` (one
    // capture group) matches a line.
    emulator_process(std::string name, std::vector<std::string> argv, const std::map<std::string, std::string>& extra_env,
                     const std::regex& port_pattern, bool port_on_stderr)
        : name_(std::move(name)) {
        using sink = child_sink;
        // stdin is a pipe the test holds: dynalite's wrapper stops when it closes.
        process_.emplace(std::move(argv), child_options{.env = extra_env,
                                                        .out = port_on_stderr ? sink::null : sink::pipe,
                                                        .err = port_on_stderr ? sink::pipe : sink::inherit,
                                                        .pipe_stdin = true});
        FILE* out = process_->output();
        char line[512];
        while (std::fgets(line, sizeof line, out)) {
            std::smatch m;
            const std::string text = line;
            if (std::regex_search(text, m, port_pattern)) {
                port_ = std::stoi(m[1]);
                break;
            }
        }
        if (port_ == 0) {
            stop();
            throw std::runtime_error(name_ + " did not start (is it installed? see scripts/install-deps)");
        }
        // Keep reading: moto logs every request, and a full pipe would block it mid-request.
        drain_ = std::thread{[out] {
            char discarded[4096];
            while (std::fgets(discarded, sizeof discarded, out)) {}
        }};
    }
    ~emulator_process() { stop(); }
    emulator_process(const emulator_process&) = delete;
    emulator_process& operator=(const emulator_process&) = delete;

    int port() const { return port_; }
    std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

    // An AWS environment with dummy credentials whose every service points at this emulator.
    chatkit::aws::environment aws_environment(std::map<std::string, std::string> more = {}) const {
        more.emplace("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
        more.emplace("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        more.emplace("AWS_REGION", "us-east-1");
        more.emplace("AWS_ENDPOINT_URL", endpoint());
        chatkit::aws::environment env;
        env.getenv = [more](const std::string& name) -> std::optional<std::string> {
            auto it = more.find(name);
            return it == more.end() ? std::nullopt : std::optional<std::string>{it->second};
        };
        return env;
    }

private:
    void stop() {
        if (!process_) return;
        process_->close_stdin();
        process_->stop(SIGTERM);
        if (drain_.joinable()) drain_.join(); // it ends at the pipe's end, now that the emulator is gone
        process_.reset();
    }

    std::string name_;
    std::optional<child_process> process_;
    std::thread drain_;
    int port_ = 0;
};

// moto, served one request at a time as DynamoDB applies each atomically (moto_server.py says
// why); its werkzeug banner on stderr names the port it got.
inline emulator_process start_moto() {
    const std::filesystem::path root{CHATKIT_SOURCE_DIR};
    return emulator_process{"moto_server",
                            {"python3", (root / "tests/support/moto_server.py").string(), "0"},
                            {},
                            std::regex{R"(Running on http://127\.0\.0\.1:(\d+))"},
                            true};
}

// dynalite from the npm packages of tests/e2e (installed by `npm ci --prefix tests/e2e`).
inline emulator_process start_dynalite() {
    const std::filesystem::path root{CHATKIT_SOURCE_DIR};
    return emulator_process{"dynalite",
                            {"node", (root / "tests/support/dynalite_server.cjs").string()},
                            {{"NODE_PATH", (root / "tests/e2e/node_modules").string()}},
                            std::regex{R"(\{"port":(\d+)\})"},
                            false};
}

// CreateTable, then waits until the table is ACTIVE: both emulators answer CreateTable while the
// table is still CREATING, as DynamoDB does. Throws when it does not get there.
inline void create_table(chatkit::aws::json_client& dynamodb, const nlohmann::json& input) {
    const auto table = input.at("TableName").get<std::string>();
    if (auto created = dynamodb.call("CreateTable", input); !created)
        throw std::runtime_error("CreateTable " + table + ": " + created.error().message);
    for (int i = 0; i < 500; ++i) {
        auto described = dynamodb.call("DescribeTable", {{"TableName", table}});
        if (described && (*described)["Table"]["TableStatus"] == "ACTIVE") return;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error("table " + table + " did not become ACTIVE");
}

} // namespace test_support
