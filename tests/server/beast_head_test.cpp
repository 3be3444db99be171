// The response head chatkit::beast_server writes itself (status line, a route's header fields,
// framing), read byte by byte over raw TCP from a server embedded in the test: a route's field
// that could split the response is dropped, the framing fields are the adapter's alone, bodiless
// statuses carry no length, and every answer leaves the connection usable for the next request.
#include <chatkit/beast_server.hpp>
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using service_type = chatkit::service<chatkit::echo_provider>;

// A service with routes that set awkward header fields, served on an ephemeral port.
struct embedded_server {
    service_type svc{chatkit::echo_provider{}};
    std::optional<chatkit::beast_server<service_type>> server;
    std::thread runner;
    int port = 0;

    embedded_server() {
        svc.route("GET", "/split", [](chatkit::http_request&, service_type::context&) {
            auto res = chatkit::json_text_response(200, R"({"ok":true})");
            res.headers["X-Good"] = "fine";
            res.headers["X-Bad"] = "a\r\nSet-Cookie: stolen=1";
            res.headers["X-Nul"] = std::string{"a\0b", 3};
            return res;
        });
        svc.route("GET", "/own-framing", [](chatkit::http_request&, service_type::context&) {
            auto res = chatkit::json_text_response(200, R"({"framed":"by the adapter"})");
            res.headers["Content-Length"] = "999";
            res.headers["Transfer-Encoding"] = "chunked";
            res.headers["Connection"] = "close";
            return res;
        });
        svc.route("GET", "/typed", [](chatkit::http_request&, service_type::context&) {
            chatkit::http_response res;
            res.headers["Content-Type"] = "text/plain; charset=utf-8";
            res.body = "plain words";
            return res;
        });
        svc.route("DELETE", "/thing", [](chatkit::http_request&, service_type::context&) {
            chatkit::http_response res;
            res.status = 204;
            return res;
        });
        chatkit::beast_options o;
        o.port = 0;
        o.loops = 1;
        o.workers = 2;
        server.emplace(svc, o);
        port = server->bind();
        runner = std::thread([this] { server->run(); });
    }
    ~embedded_server() {
        server->stop();
        runner.join();
    }
};

struct response {
    std::string status_line;
    std::vector<std::pair<std::string, std::string>> fields;
    std::string body;
    std::size_t count(std::string_view name) const {
        std::size_t n = 0;
        for (const auto& [k, v] : fields)
            n += chatkit::case_insensitive_less{}(k, name) || chatkit::case_insensitive_less{}(name, k) ? 0 : 1;
        return n;
    }
    std::string field(std::string_view name) const {
        for (const auto& [k, v] : fields)
            if (!chatkit::case_insensitive_less{}(k, name) && !chatkit::case_insensitive_less{}(name, k)) return v;
        return {};
    }
};

// One kept-alive client connection; every read waits at most 3 s, so no case can hang.
class connection {
public:
    explicit connection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    }
    ~connection() { ::close(fd_); }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    // Sends `request` and reads one response; `head_only` for an answer to HEAD (no body follows).
    std::optional<response> exchange(std::string_view request, bool head_only = false) {
        REQUIRE(::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
        std::size_t head_end;
        while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos)
            if (!fill()) return std::nullopt;
        response r;
        std::string_view head{buffer_.data(), head_end};
        const auto first = head.find("\r\n");
        r.status_line = std::string{head.substr(0, first)};
        head.remove_prefix(first == std::string_view::npos ? head.size() : first + 2);
        while (!head.empty()) {
            const auto end = head.find("\r\n");
            const auto line = head.substr(0, end);
            const auto colon = line.find(':');
            r.fields.emplace_back(std::string{line.substr(0, colon)}, std::string{line.substr(colon + 2)});
            head.remove_prefix(end == std::string_view::npos ? head.size() : end + 2);
        }
        buffer_.erase(0, head_end + 4);
        std::size_t length = 0;
        const auto declared = r.field("Content-Length");
        std::from_chars(declared.data(), declared.data() + declared.size(), length);
        if (head_only) length = 0;
        while (buffer_.size() < length)
            if (!fill()) return std::nullopt;
        r.body = buffer_.substr(0, length);
        buffer_.erase(0, length);
        return r;
    }
    // Bytes that arrived beyond the responses read so far (there should be none).
    std::size_t stray_bytes() {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 200) > 0) fill();
        return buffer_.size();
    }

private:
    bool fill() {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 3000) <= 0) return false;
        char chunk[4096];
        const auto n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n <= 0) return false;
        buffer_.append(chunk, static_cast<std::size_t>(n));
        return true;
    }
    int fd_;
    std::string buffer_{};
};

} // namespace

TEST_CASE("a route's header field that could split the response is not sent, the others are") {
    embedded_server s;
    connection c{s.port};
    const auto r = c.exchange("GET /split HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(r);
    CHECK(r->status_line == "HTTP/1.1 200 OK");
    CHECK(r->field("X-Good") == "fine");
    CHECK(r->count("X-Bad") == 0);
    CHECK(r->count("Set-Cookie") == 0);
    CHECK(r->count("X-Nul") == 0);
    CHECK(r->body == R"({"ok":true})");
    CHECK(c.stray_bytes() == 0);
}

TEST_CASE("the framing fields are the adapter's: one true Content-Length, no chunking, the connection kept") {
    embedded_server s;
    connection c{s.port};
    const auto r = c.exchange("GET /own-framing HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(r);
    CHECK(r->count("Content-Length") == 1);
    CHECK(r->field("Content-Length") == std::to_string(r->body.size()));
    CHECK(r->count("Transfer-Encoding") == 0);
    CHECK(r->count("Connection") == 0);
    CHECK(r->body == R"({"framed":"by the adapter"})");
    // The route's "Connection: close" did not close it: the next request is answered.
    const auto again = c.exchange("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(again);
    CHECK(again->status_line == "HTTP/1.1 200 OK");
}

TEST_CASE("a route's Content-Type is kept, and an answer without one is JSON") {
    embedded_server s;
    connection c{s.port};
    const auto typed = c.exchange("GET /typed HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(typed);
    CHECK(typed->count("Content-Type") == 1);
    CHECK(typed->field("Content-Type") == "text/plain; charset=utf-8");
    CHECK(typed->body == "plain words");
    const auto health = c.exchange("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(health);
    CHECK(health->field("Content-Type") == "application/json");
}

TEST_CASE("a 204 carries no length and no body, and the connection goes on") {
    embedded_server s;
    connection c{s.port};
    const auto r = c.exchange("DELETE /thing HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(r);
    CHECK(r->status_line == "HTTP/1.1 204 No Content");
    CHECK(r->count("Content-Length") == 0);
    CHECK(r->count("Transfer-Encoding") == 0);
    const auto next = c.exchange("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(next);
    CHECK(next->status_line == "HTTP/1.1 200 OK");
    CHECK(c.stray_bytes() == 0);
}

TEST_CASE("HEAD gets the GET's length without its body, HTTP/1.0 keep-alive is said, and so is a close") {
    embedded_server s;
    connection c{s.port};
    const auto get = c.exchange("GET /typed HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(get);
    const auto head = c.exchange("HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", true);
    REQUIRE(head);
    CHECK(head->status_line == "HTTP/1.1 200 OK");
    CHECK(std::stoul(head->field("Content-Length")) > 0);
    CHECK(c.stray_bytes() == 0); // no body bytes followed the head

    const auto v10 = c.exchange("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE(v10);
    CHECK(v10->status_line == "HTTP/1.0 200 OK");
    CHECK(v10->field("Connection") == "keep-alive");

    const auto last = c.exchange("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    REQUIRE(last);
    CHECK(last->field("Connection") == "close");
}
