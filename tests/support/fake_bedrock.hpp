// Runs tests/support/fake_bedrock.py (a Bedrock Runtime fake that checks every signature with
// botocore) for a C++ test: its port, and the requests it has seen.
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace test_support {

class fake_bedrock {
public:
    // `keys`: "ACCESS_KEY=SECRET" or "ACCESS_KEY=SECRET=SESSION_TOKEN" the fake will accept.
    explicit fake_bedrock(std::vector<std::string> keys) {
        const auto script = (std::filesystem::path{__FILE__}.parent_path() / "fake_bedrock.py").string();
        int to_child[2], from_child[2];
        if (pipe(to_child) != 0 || pipe(from_child) != 0) throw std::runtime_error("pipe failed");
        pid_ = fork();
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(to_child[0], 0);
            dup2(from_child[1], 1);
            close(to_child[1]);
            close(from_child[0]);
            std::vector<char*> argv{const_cast<char*>("python3"), const_cast<char*>(script.c_str())};
            for (auto& k : keys) argv.push_back(k.data());
            argv.push_back(nullptr);
            execvp("python3", argv.data());
            _exit(127);
        }
        close(to_child[0]);
        close(from_child[1]);
        stdin_ = to_child[1];
        FILE* out = fdopen(from_child[0], "r");
        char line[256] = {};
        if (!std::fgets(line, sizeof line, out)) {
            std::fclose(out);
            throw std::runtime_error("fake_bedrock.py did not start: is python3 with botocore installed?");
        }
        std::fclose(out);
        port_ = nlohmann::json::parse(line).at("port").get<int>();
    }
    ~fake_bedrock() {
        close(stdin_); // the fake serves until its stdin closes
        int status = 0;
        waitpid(pid_, &status, 0);
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
    pid_t pid_ = -1;
    int stdin_ = -1;
    int port_ = 0;
};

} // namespace test_support
