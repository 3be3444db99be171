// The Beast adapter's HTTP request parsing: the fuzzer's bytes, cut into pieces, are what a client
// sends over a real loopback connection to a chatkit::beast_server in this process (the raw
// header-block checks, Beast's parser, the adapter's limits, keep-alive and pipelining), and then
// the client closes its sending side. Whatever the bytes:
//   - the server answers and closes within the timeout (no hang on a half-sent request);
//   - what it sends is a sequence of whole HTTP/1.x responses and nothing else;
//   - an error status carries chatkit's JSON envelope, a JSON answer is JSON, and every event of
//     a stream is JSON or [DONE];
//   - the server keeps serving: GET /health answers 200 after every 16 inputs.
// The limits are small so that short inputs reach the 413, 414 and 431 refusals.
#include "answer_check.hpp"
#include "fuzz_input.hpp"

#include <chatkit/beast_server.hpp>
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>

#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using service_type = chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_st>;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "http_request_fuzzer: %s\n", what);
    std::abort();
}
void require(bool ok, const char* what) {
    if (!ok) fail(what);
}

// One server for the whole run, on its own thread (libFuzzer counts coverage from every thread).
struct embedded_server {
    service_type svc{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::lru_cache_st{chatkit::lru_cache_options{.max_entries = 64}}};
    chatkit::beast_server<service_type> server{svc, options()};
    int port = server.bind();
    std::thread runner{[this] { server.run(); }};

    static chatkit::beast_options options() {
        chatkit::beast_options o;
        o.port = 0;
        o.loops = 1;
        o.workers = 2;
        o.max_body_bytes = 2048;
        o.max_header_bytes = 1024;
        o.max_header_fields = 16;
        o.max_target_bytes = 128;
        o.read_timeout = std::chrono::seconds{2};
        o.keep_alive_timeout = std::chrono::seconds{2};
        return o;
    }
};

embedded_server& server() {
    // Never destroyed: it serves until the process ends (a destructor at exit would meet its
    // thread still running).
    static auto* s = new embedded_server;
    return *s;
}

struct received {
    std::string wire;
    bool reset = false; // the server closed with request bytes unread: the kernel may drop the tail
};

// Sends the pieces, closes the sending side, and returns all the server wrote until it closed.
received exchange(int port, const std::vector<std::string_view>& pieces) {
    // Past the server's read timeout (2 s), and short of libFuzzer's (10 s): no answer and no close
    // by then is a hang.
    const timeval limit{5, 0};
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = -1;
    // Thousands of connections a second can briefly run out of local ports: a refusal that lasts
    // is the finding, not one that passes.
    for (int attempt = 0; fd < 0; ++attempt) {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        require(fd >= 0, "socket() failed");
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
        ::close(fd);
        fd = -1;
        require(attempt < 100, "the server refused connections for a second");
        std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    received out;
    for (const auto piece : pieces) {
        std::size_t sent = 0;
        while (sent < piece.size() && !out.reset) {
            const auto n = ::send(fd, piece.data() + sent, piece.size() - sent, MSG_NOSIGNAL);
            // The server refused the request and closed (its reset is reported here, and the
            // reads below then see the end): what it said is read below.
            if (n <= 0) out.reset = true;
            else sent += static_cast<std::size_t>(n);
        }
    }
    ::shutdown(fd, SHUT_WR);
    char buf[16384];
    for (;;) {
        const auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) fail("the server neither answered nor closed within 5 s");
            out.reset = true; // after a refusal: what arrived before it is checked
            break;
        }
        out.wire.append(buf, static_cast<std::size_t>(n));
    }
    // Everything is read and the server has closed: end with a reset rather than a FIN, which
    // ends the server's side at once instead of in TIME_WAIT. Otherwise, at 600 connections a
    // second, those outnumber the 28,000 local ports, and a port reused too early meets a reset
    // from the kernel instead of the server.
    const linger abortive{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abortive, sizeof abortive);
    ::close(fd);
    return out;
}

void check_body(const boost::beast::http::response<boost::beast::http::string_body>& res) {
    const std::string_view type = res[boost::beast::http::field::content_type];
    const int status = static_cast<int>(res.result_int());
    if (status >= 400) {
        const auto body = nlohmann::json::parse(res.body(), nullptr, false);
        require(body.is_object() && body.contains("error") && body["error"].is_object() && body["error"].contains("message"),
                "an error status without chatkit's JSON envelope");
    } else if (type.starts_with("application/json")) {
        require(nlohmann::json::accept(res.body()), "a JSON answer that is not JSON");
    } else if (type.starts_with("text/event-stream")) {
        fuzz::require_json_events(res.body());
    }
}

// Every response in `wire`, parsed whole. A HEAD answer has no body whatever its Content-Length,
// so when the input holds a HEAD request only the head of the first response is checked. After a
// reset the last response may have lost its tail in the kernel, not in the server.
void check_responses(std::string_view wire, bool has_head, bool reset) {
    namespace http = boost::beast::http;
    while (!wire.empty()) {
        http::response_parser<http::string_body> parser;
        parser.eager(true);
        parser.body_limit(64u << 20);
        parser.skip(has_head);
        boost::beast::error_code ec;
        std::size_t used = 0;
        while (!parser.is_done() && used < wire.size()) {
            const auto n = parser.put(boost::asio::buffer(wire.data() + used, wire.size() - used), ec);
            if (ec == http::error::need_more) {
                ec = {};
                if (n == 0) break;
            }
            if (ec && reset && used + n >= wire.size()) return;
            require(!ec, "the server wrote something that is not an HTTP response");
            used += n;
        }
        if (!parser.is_done()) {
            parser.put_eof(ec); // a body that runs to the close (HTTP/1.0) ends here
            if (reset && (ec || !parser.is_done())) return;
            require(!ec && parser.is_done(), "the server's last response was cut short");
        }
        const auto& res = parser.get();
        const int status = static_cast<int>(res.result_int());
        require(status >= 100 && status < 600, "a status outside 100..599");
        if (has_head) return;
        if (status >= 200) check_body(res);
        wire.remove_prefix(used);
    }
}

// A connection reset before any byte is asked again, a few times: a reset from the kernel is not
// the server's answer (CI once saw one, from a local port reused while the server's side of its
// last connection was still in TIME_WAIT; exchange() now avoids that). A server that closes
// without answering, or answers anything but 200, fails at once.
void check_health(int port) {
    static constexpr std::string_view ask = "GET /health HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
    auto got = exchange(port, {ask});
    for (int retry = 0; got.reset && got.wire.empty() && retry < 20; ++retry) {
        std::this_thread::sleep_for(std::chrono::milliseconds{50});
        got = exchange(port, {ask});
    }
    if (!got.wire.starts_with("HTTP/1.1 200 ")) {
        std::fprintf(stderr, "GET /health answered (%s):\n%s\n", got.reset ? "then reset" : "then closed",
                     got.wire.substr(0, 2000).c_str());
        fail("GET /health no longer answers 200");
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static std::size_t runs = 0;
    auto& s = server();
    const auto pieces = fuzz::pieces(data, size);
    const std::string whole = fuzz::joined(pieces);
    const auto got = exchange(s.port, pieces);
    check_responses(got.wire, whole.find("HEAD") != std::string::npos, got.reset);
    if (++runs % 16 == 0) check_health(s.port);
    return 0;
}
