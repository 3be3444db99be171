// A real redis-server for a test: on 127.0.0.1, a free port (redis has no --port 0: a socket bound
// to port 0 names one, then redis takes it), nothing saved to disk, optionally a password. It can
// be stopped, started again on the same port, and paused (SIGSTOP: a Redis that hangs), and it
// stops with the test.
#pragma once

#include <hiredis/hiredis.h>

#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

class redis_server {
public:
    explicit redis_server(std::string password = {}) : password_(std::move(password)) {
        std::random_device rd;
        dir_ = std::filesystem::temp_directory_path() / ("chatkit-redis-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(dir_);
        port_ = free_port();
        start();
    }
    ~redis_server() {
        stop();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    redis_server(const redis_server&) = delete;
    redis_server& operator=(const redis_server&) = delete;

    int port() const { return port_; }
    std::string url() const {
        return "redis://" + (password_.empty() ? std::string{} : ":" + password_ + "@") + "127.0.0.1:" + std::to_string(port_);
    }

    // Starts redis-server and waits (bounded) until it answers PING.
    void start() {
        if (pid_ > 0) return;
        const std::string port = std::to_string(port_);
        pid_ = fork();
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            std::vector<std::string> args{"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                          "--dir", dir_.string(), "--logfile", (dir_ / "redis.log").string()};
            if (!password_.empty()) {
                args.push_back("--requirepass");
                args.push_back(password_);
            }
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            execvp("redis-server", argv.data());
            _exit(127);
        }
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{20};
        while (!answers_ping()) {
            int status = 0;
            if (waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                throw std::runtime_error("redis-server exited at start-up (is it installed? scripts/install-deps)");
            }
            if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("redis-server did not answer PING");
            std::this_thread::sleep_for(std::chrono::milliseconds{20});
        }
    }

    // Stops it (SIGTERM, then waits); start() brings it back, empty, on the same port.
    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGCONT);
        ::kill(pid_, SIGTERM);
        int status = 0;
        waitpid(pid_, &status, 0);
        pid_ = -1;
    }
    void pause() { ::kill(pid_, SIGSTOP); }
    void resume() { ::kill(pid_, SIGCONT); }

    // One command on a connection of the test's own (not the code under test's), its reply as
    // text: a string's value, an integer's digits, "(nil)", or an error's message.
    std::string command(const std::vector<std::string>& args) const {
        redisContext* c = redisConnect("127.0.0.1", port_);
        if (!c || c->err) {
            if (c) redisFree(c);
            throw std::runtime_error("cannot connect to the test's redis");
        }
        if (!password_.empty()) freeReplyObject(redisCommand(c, "AUTH %s", password_.c_str()));
        std::vector<const char*> argv;
        std::vector<std::size_t> lengths;
        for (const auto& a : args) {
            argv.push_back(a.data());
            lengths.push_back(a.size());
        }
        auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data()));
        std::string out = "(no reply)";
        if (r) {
            if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR) out.assign(r->str, r->len);
            else if (r->type == REDIS_REPLY_INTEGER) out = std::to_string(r->integer);
            else if (r->type == REDIS_REPLY_NIL) out = "(nil)";
            else if (r->type == REDIS_REPLY_ARRAY) out = std::to_string(r->elements) + " elements";
            freeReplyObject(r);
        }
        redisFree(c);
        return out;
    }

private:
    static int free_port() {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        socklen_t len = sizeof addr;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            ::close(fd);
            throw std::runtime_error("cannot find a free port");
        }
        ::close(fd);
        return ntohs(addr.sin_port);
    }

    bool answers_ping() const {
        timeval tv{0, 200'000};
        redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
        bool ok = false;
        if (c && !c->err) {
            // With --requirepass, PING answers NOAUTH: a reply at all means it is up.
            auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
            ok = r != nullptr;
            if (r) freeReplyObject(r);
        }
        if (c) redisFree(c);
        return ok;
    }

    std::string password_;
    std::filesystem::path dir_;
    int port_ = 0;
    pid_t pid_ = -1;
};

} // namespace test_support
