// Runs tests/support/fake_bedrock.py (a Bedrock Runtime fake that checks every signature with
// botocore) for a C++ test: its port, and the requests it has seen.
#pragma once

#include "child_process.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace test_support {

class fake_bedrock {
public:
    // `keys`: "ACCESS_KEY=SECRET" or "ACCESS_KEY=SECRET=SESSION_TOKEN" the fake will accept.
    explicit fake_bedrock(std::vector<std::string> keys) {
        const auto script = (std::filesystem::path{__FILE__}.parent_path() / "fake_bedrock.py").string();
        std::vector<std::string> argv{"python3", script};
        argv.insert(argv.end(), keys.begin(), keys.end());
        // It prints its port on stdout, then serves until its stdin closes.
        process_.emplace(std::move(argv), child_options{.out = child_sink::pipe, .pipe_stdin = true});
        char line[256] = {};
        if (!std::fgets(line, sizeof line, process_->output()))
            throw std::runtime_error("fake_bedrock.py did not start: is python3 with botocore installed?");
        port_ = nlohmann::json::parse(line).at("port").get<int>();
    }
    ~fake_bedrock() {
        process_->close_stdin();
        process_->wait();
    }
    fake_bedrock(const fake_bedrock&) = delete;
    fake_bedrock& operator=(const fake_bedrock&) = delete;

    int port() const { return port_; }
    std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

    nlohmann::json requests() const {
        httplib::Client c{"127.0.0.1", port_};
        auto r = c.Get("/_requests");
        if (!r) throw std::runtime_error("fake_bedrock.py is gone");
        return nlohmann::json::parse(r->body);
    }

private:
    std::optional<child_process> process_;
    int port_ = 0;
};

} // namespace test_support
