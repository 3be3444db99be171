// Cancellation through sample_server on its event-loop server: a client that leaves while the
// model "thinks" makes the provider close its upstream connection, a request past its deadline is
// answered 504 at once, and a retry waiting on the upstream's Retry-After is cut short.
#include "../support/fake_openai.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <future>

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// An upstream that takes a request and never answers (a model thinking for ever), and reports
// when the caller closes the connection.
class silent_upstream {
public:
    silent_upstream() : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd_, 16) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    ~silent_upstream() {
        done_ = true;
        ::shutdown(fd_, SHUT_RDWR);
        thread_.join();
        ::close(fd_);
    }
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }
    std::future<void> request_arrived() { return arrived_.get_future(); }
    std::future<void> connection_closed() { return closed_.get_future(); }

private:
    void run() {
        pollfd p{fd_, POLLIN, 0};
        while (!done_ && ::poll(&p, 1, 100) == 0) {}
        if (done_) return;
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        std::string in;
        char buf[4096];
        bool announced = false;
        const auto give_up = std::chrono::steady_clock::now() + 60s; // bounded: the test never waits longer
        while (!done_ && std::chrono::steady_clock::now() < give_up) {
            pollfd cp{c, POLLIN, 0};
            if (::poll(&cp, 1, 100) <= 0) continue;
            const auto n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) {
                closed_.set_value();
                break;
            }
            in.append(buf, static_cast<std::size_t>(n));
            if (!announced && in.find("\r\n\r\n") != std::string::npos) {
                announced = true;
                arrived_.set_value();
            }
        }
        ::close(c);
    }

    int fd_;
    int port_ = 0;
    std::atomic<bool> done_{false};
    std::promise<void> arrived_, closed_;
    std::thread thread_;
};

int connect_to(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    return fd;
}

std::string chat_request(bool stream) {
    const std::string body =
        json{{"model", "fake-1"}, {"stream", stream}, {"messages", {{{"role", "user"}, {"content", "think hard"}}}}}.dump();
    return "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

} // namespace

TEST_CASE("a client that leaves while the model thinks makes the provider close its upstream connection") {
    const bool stream = GENERATE(false, true);
    CAPTURE(stream);
    silent_upstream upstream;
    test_support::server_process server{{{"CHAT_PROVIDER", "openai"},
                                         {"OPENAI_BASE_URL", upstream.base_url()},
                                         {"OPENAI_API_KEY", "sk-test"},
                                         {"CHAT_UPSTREAM_TIMEOUT", "60"},
                                         {"CHAT_UPSTREAM_MAX_RETRIES", "0"},
                                         {"CHAT_SERVER", "beast"}}};
    auto arrived = upstream.request_arrived();
    auto closed = upstream.connection_closed();
    const int client = connect_to(server.port());
    const auto req = chat_request(stream);
    REQUIRE(::send(client, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
    REQUIRE(arrived.wait_for(20s) == std::future_status::ready);
    ::close(client); // the client leaves; the upstream still has not sent a byte
    // Without cancellation the upstream call would wait out its 60 s read timeout.
    REQUIRE(closed.wait_for(20s) == std::future_status::ready);

    // The access log says the client left.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    bool logged = false;
    while (!logged && std::chrono::steady_clock::now() < deadline) {
        for (const auto& line : server.log_lines()) {
            auto j = json::parse(line, nullptr, false);
            if (j.is_object() && j.value("msg", "") == "request" && j.value("path", "") == "/v1/chat/completions") {
                CHECK(j["client_left"] == true);
                logged = true;
            }
        }
        if (!logged) std::this_thread::sleep_for(20ms);
    }
    CHECK(logged);
}

TEST_CASE("a request past CHAT_REQUEST_DEADLINE is answered 504 and its upstream call closed") {
    silent_upstream upstream;
    test_support::server_process server{{{"CHAT_PROVIDER", "openai"},
                                         {"OPENAI_BASE_URL", upstream.base_url()},
                                         {"OPENAI_API_KEY", "sk-test"},
                                         {"CHAT_UPSTREAM_TIMEOUT", "60"},
                                         {"CHAT_REQUEST_DEADLINE", "1"},
                                         {"CHAT_SERVER", "beast"}}};
    auto closed = upstream.connection_closed();
    auto client = server.client();
    client.set_read_timeout(30, 0);
    const auto res = client.Post("/v1/chat/completions", chat_request(false).substr(chat_request(false).find("\r\n\r\n") + 4),
                                 "application/json");
    REQUIRE(res);
    CHECK(res->status == 504);
    CHECK(json::parse(res->body)["error"]["code"] == "request_cancelled");
    CHECK(closed.wait_for(10s) == std::future_status::ready);
}

TEST_CASE("a retry waiting on the upstream's Retry-After is cut short by cancellation") {
    // The upstream asks to wait 60 s; the request's deadline is 1 s, so the wait must end early.
    auto busy = test_support::status_reply(429, "slow down", "rate_limit_exceeded");
    busy.headers = {{"Retry-After", "60"}};
    test_support::fake_openai upstream{busy};
    test_support::server_process server{{{"CHAT_PROVIDER", "openai"},
                                         {"OPENAI_BASE_URL", upstream.base_url()},
                                         {"OPENAI_API_KEY", "sk-test"},
                                         {"CHAT_UPSTREAM_DEADLINE", "300"},
                                         {"CHAT_REQUEST_DEADLINE", "1"},
                                         {"CHAT_SERVER", "beast"}}};
    auto client = server.client();
    client.set_read_timeout(30, 0); // half the upstream's Retry-After: an answer at all means the wait was cut short
    const auto res = client.Post("/v1/chat/completions", chat_request(false).substr(chat_request(false).find("\r\n\r\n") + 4),
                                 "application/json");
    REQUIRE(res);
    CHECK(res->status == 504);
    CHECK(json::parse(res->body)["error"]["code"] == "request_cancelled");
    CHECK(upstream.requests().size() == 1); // it did not retry after being stopped
}
