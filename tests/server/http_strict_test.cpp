// sample_server's HTTP/1.1 parsing, byte by byte over raw TCP on 127.0.0.1, against RFC 9112:
// framing that two parsers could read differently (request smuggling), malformed header fields,
// the size limits, pipelining and persistent connections, and a header-read deadline that slow
// clients cannot wear down. Every refusal carries the JSON error envelope. Runs the Beast adapter.
//
// Malformed messages go to GET /health, which answers 200 whatever the body: a server that
// accepts one under any reading of its framing answers 200, never a 400 of the service's own.
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <memory>
#include <optional>
#include <string_view>

using namespace std::chrono_literals;
using namespace std::string_literals;
using nlohmann::json;
using test_support::server_process;

namespace {

using steady = std::chrono::steady_clock;

// The longest any read or write waits, so that no case can hang.
constexpr auto wait_limit = 3s;

// The Beast adapter, the echo provider, no history, no rate limit; `extra` adds settings.
std::map<std::string, std::string> strict_env(const std::map<std::string, std::string>& extra = {}) {
    std::map<std::string, std::string> env{
        {"CHAT_SERVER", "beast"}, {"CHAT_PROVIDER", "echo"}, {"CHAT_DATABASE_URL", "none"}, {"CHAT_RATE_LIMIT", "off"}, {"CHAT_PORT", "0"}};
    for (const auto& [k, v] : extra) env[k] = v;
    return env;
}

std::string lower(std::string_view s) {
    std::string out{s};
    for (auto& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

struct response {
    std::string status_line;
    std::string version; // "HTTP/1.1"
    int status = 0;
    std::vector<std::pair<std::string, std::string>> headers; // names lower-cased, in order
    std::string body;

    std::optional<std::string> header(std::string_view name) const {
        for (const auto& [n, v] : headers)
            if (n == name) return v;
        return std::nullopt;
    }
};

// One client connection spoken to in raw bytes. Reads poll to a deadline; SO_RCVTIMEO and
// SO_SNDTIMEO bound every blocking call besides.
class raw_client {
public:
    explicit raw_client(int port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        REQUIRE(fd_ >= 0);
        const timeval tv{static_cast<time_t>(std::chrono::seconds{wait_limit}.count()), 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); // also bounds connect()
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
            const int err = errno;
            ::close(fd_);
            FAIL("connect to 127.0.0.1:" << port << ": " << std::strerror(err));
        }
    }
    ~raw_client() { ::close(fd_); }
    raw_client(const raw_client&) = delete;
    raw_client& operator=(const raw_client&) = delete;

    // Sends every byte; false once the server stops taking them (closed, reset, or stalled for
    // the wait limit), as a server that refuses an oversized request early may.
    bool send_all(std::string_view data) {
        while (!data.empty()) {
            const auto n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Reads one whole response, its body framed by Content-Length, by chunks or by the close;
    // nullopt when the connection ends or `timeout` passes first. Throws on a malformed one.
    std::optional<response> read_response(std::chrono::milliseconds timeout = wait_limit) {
        const auto deadline = steady::now() + timeout;
        for (;;) {
            std::size_t head_end;
            while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos)
                if (receive(deadline) != got::data) return std::nullopt;
            auto r = parse_head(std::string_view{buffer_}.substr(0, head_end));
            if (r.status / 100 == 1 && r.status != 101) { // an interim answer: the final one follows
                buffer_.erase(0, head_end + 4);
                continue;
            }
            if (!read_body(r, head_end + 4, deadline)) return std::nullopt;
            return r;
        }
    }

    // True when the server closes the connection (FIN or reset) within `timeout`. Bytes that
    // arrive first are kept: see unread().
    bool closed_within(std::chrono::milliseconds timeout = wait_limit) {
        const auto deadline = steady::now() + timeout;
        for (;;) {
            const auto g = receive(deadline);
            if (g == got::eof) return true;
            if (g == got::timeout) return false;
        }
    }

    // What arrived past the last response read.
    const std::string& unread() const { return buffer_; }

private:
    enum class got { data, eof, timeout };

    // Waits until `deadline` (at least one look) for more bytes and appends them to the buffer.
    got receive(steady::time_point deadline) {
        while (!eof_) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
            pollfd p{fd_, POLLIN, 0};
            const int ready = ::poll(&p, 1, static_cast<int>(std::max<decltype(left)>(left, 0)));
            if (ready < 0 && errno == EINTR) continue;
            if (ready == 0) return got::timeout;
            if (ready < 0) break;
            char chunk[16384];
            const auto n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
            if (n > 0) {
                buffer_.append(chunk, static_cast<std::size_t>(n));
                return got::data;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
            break; // 0: the server closed the connection; -1: it reset it
        }
        eof_ = true;
        return got::eof;
    }

    static response parse_head(std::string_view head) {
        response r;
        const auto first_eol = std::min(head.find("\r\n"), head.size());
        r.status_line = std::string{head.substr(0, first_eol)};
        const std::string_view line = r.status_line;
        if (!line.starts_with("HTTP/") || line.size() < 12 || line[8] != ' ' ||
            std::from_chars(line.data() + 9, line.data() + 12, r.status).ptr != line.data() + 12)
            throw std::runtime_error("malformed status line: " + r.status_line);
        r.version = std::string{line.substr(0, 8)};
        for (auto rest = head.substr(first_eol); !rest.empty();) {
            rest.remove_prefix(2); // the CRLF before this field
            const auto eol = std::min(rest.find("\r\n"), rest.size());
            const auto field = rest.substr(0, eol);
            const auto colon = field.find(':');
            if (colon == std::string_view::npos) throw std::runtime_error("malformed header field: " + std::string{field});
            r.headers.emplace_back(lower(field.substr(0, colon)), std::string{trim(field.substr(colon + 1))});
            rest = rest.substr(eol);
        }
        return r;
    }

    // Reads the body that starts at buffer_[pos] and drops the response from the buffer.
    bool read_body(response& r, std::size_t pos, steady::time_point deadline) {
        auto line_end = [&](std::size_t from) {
            std::size_t eol;
            while ((eol = buffer_.find("\r\n", from)) == std::string::npos)
                if (receive(deadline) != got::data) return std::string::npos;
            return eol;
        };
        auto have = [&](std::size_t bytes) {
            while (buffer_.size() < bytes)
                if (receive(deadline) != got::data) return false;
            return true;
        };
        const auto encoding = r.header("transfer-encoding");
        if (encoding && lower(*encoding).find("chunked") != std::string::npos) {
            for (;;) {
                const auto eol = line_end(pos);
                if (eol == std::string::npos) return false;
                const auto size_line = std::string_view{buffer_}.substr(pos, eol - pos);
                const auto size_text = trim(size_line.substr(0, size_line.find(';'))); // no chunk extensions
                std::size_t size = 0;
                const auto [end, ec] = std::from_chars(size_text.data(), size_text.data() + size_text.size(), size, 16);
                if (ec != std::errc{} || end != size_text.data() + size_text.size())
                    throw std::runtime_error("malformed chunk size in the response: " + std::string{size_text});
                pos = eol + 2;
                if (size == 0) break;
                if (!have(pos + size + 2)) return false;
                r.body.append(buffer_, pos, size);
                pos += size + 2;
            }
            for (;;) { // trailer fields, up to the empty line
                const auto eol = line_end(pos);
                if (eol == std::string::npos) return false;
                const bool last = eol == pos;
                pos = eol + 2;
                if (last) break;
            }
        } else if (const auto length_text = r.header("content-length")) {
            std::size_t length = 0;
            const auto [end, ec] = std::from_chars(length_text->data(), length_text->data() + length_text->size(), length);
            if (ec != std::errc{} || end != length_text->data() + length_text->size())
                throw std::runtime_error("malformed Content-Length in the response: " + *length_text);
            if (!have(pos + length)) return false;
            r.body = buffer_.substr(pos, length);
            pos += length;
        } else if (r.status != 204 && r.status != 304) { // delimited by the close
            while (receive(deadline) == got::data) {}
            if (!eof_) return false;
            r.body = buffer_.substr(pos);
            pos = buffer_.size();
        }
        buffer_.erase(0, pos);
        return true;
    }

    int fd_;
    std::string buffer_;
    bool eof_ = false;
};

// A refusal: `status` on HTTP/1.1 with the JSON error envelope.
void check_envelope(const response& r, int status) {
    INFO(r.status_line << "\n" << r.body);
    CHECK(r.version == "HTTP/1.1");
    CHECK(r.status == status);
    const auto type = r.header("content-type").value_or("(none)");
    CHECK(lower(trim(std::string_view{type}.substr(0, type.find(';')))) == "application/json"); // parameters aside
    auto body = json::parse(r.body, nullptr, false);
    const bool envelope = body.is_object() && body["error"].is_object() && body["request_id"].is_string();
    CHECK(envelope);
    if (!envelope) return;
    CHECK(body["error"]["message"].is_string());
    CHECK(body["error"]["type"] == "invalid_request_error");
    CHECK(body["error"].contains("code"));
    CHECK(!body["request_id"].get<std::string>().empty());
}

// Sends `request` on a fresh connection and expects `status` with the JSON envelope within
// `within`, then the close (having refused a message, the server cannot know where the next one
// would start), with nothing after the refusal: no part of the message was taken for another.
void expect_refused(int port, std::string_view what, std::string_view request, int status, std::chrono::milliseconds within = wait_limit) {
    INFO(what);
    raw_client c{port};
    c.send_all(request); // the server may stop reading once it has seen enough to refuse
    const auto r = c.read_response(within);
    if (!r) {
        FAIL_CHECK("no complete answer within " << within.count() << " ms; received: " << c.unread());
        return;
    }
    check_envelope(*r, status);
    CHECK(c.closed_within());
    CHECK(c.unread().empty());
}

// A full answer from GET /health: 200 with its JSON status.
void check_health(const std::optional<response>& r) {
    REQUIRE(r.has_value());
    INFO(r->status_line << "\n" << r->body);
    CHECK(r->status == 200);
    const auto body = json::parse(r->body, nullptr, false);
    CHECK((body.is_object() && body.value("status", "") == "ok"));
}

constexpr std::string_view get_health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

} // namespace

TEST_CASE("Content-Length together with Transfer-Encoding: chunked is refused with 400 and the connection closed") {
    server_process server{strict_env()};
    // 5 bytes, which are also a complete chunked body: under either reading the request is whole.
    expect_refused(server.port(), "Content-Length first",
                   "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    expect_refused(server.port(), "Transfer-Encoding first",
                   "GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400);
}

TEST_CASE("a Transfer-Encoding whose last coding is not chunked is refused with 400") {
    server_process server{strict_env()};
    // The body's length cannot be known (RFC 9112 section 6.3): answering would desynchronise the connection.
    expect_refused(server.port(), "gzip alone", "GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400);
}

TEST_CASE("two Content-Length headers with different values are refused with 400") {
    server_process server{strict_env()};
    expect_refused(server.port(), "3 then 2", "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 2\r\n\r\nabc", 400);
}

TEST_CASE("a negative Content-Length is refused with 400 at once, not after a read timeout") {
    server_process server{strict_env()}; // the default CHAT_READ_TIMEOUT, 10 s
    // Taken for no body, the GET would be answered 200; waiting for a body, the POST would hang.
    expect_refused(server.port(), "on GET /health", "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, 2s);
    expect_refused(server.port(), "on POST /chat",
                   "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n", 400, 2s);
}

TEST_CASE("a non-numeric Content-Length is refused with 400") {
    server_process server{strict_env()};
    expect_refused(server.port(), "abc", "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc", 400);
    expect_refused(server.port(), "3abc (digits, then more)", "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3abc\r\n\r\nabc", 400);
}

TEST_CASE("a chunked body with a bad chunk size is refused with 400 and the connection closed") {
    server_process server{strict_env()};
    expect_refused(server.port(), "chunk size zz",
                   "GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400);
}

TEST_CASE("a NUL byte in a header value is refused with 400") {
    server_process server{strict_env()};
    expect_refused(server.port(), "X-Note: a NUL b", "GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\0b\r\n\r\n"s, 400);
}

TEST_CASE("obsolete line folding is refused with 400") {
    server_process server{strict_env()};
    expect_refused(server.port(), "continued with a space", "GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n b\r\n\r\n", 400);
    expect_refused(server.port(), "continued with a tab", "GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n\tb\r\n\r\n", 400);
}

TEST_CASE("more header fields than the limit are refused with 431") {
    server_process server{strict_env()};
    std::string request = "GET /health HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 5000; ++i) request += "X-Filler-" + std::to_string(i) + ": v\r\n";
    request += "\r\n";
    expect_refused(server.port(), "5,000 fields", request, 431);
}

TEST_CASE("a header block over the size limit is refused with 431") {
    server_process server{strict_env()};
    expect_refused(server.port(), "one 100 KB field",
                   "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(100 * 1024, 'a') + "\r\n\r\n", 431);
}

TEST_CASE("a request target over the limit is refused with 414") {
    server_process server{strict_env()};
    expect_refused(server.port(), "a 20 KB path", "GET /" + std::string(20 * 1024, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 414);
}

TEST_CASE("two requests pipelined in one write are both answered, in order, on the same connection") {
    server_process server{strict_env()};
    raw_client c{server.port()};
    REQUIRE(c.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"));
    check_health(c.read_response());
    const auto models = c.read_response();
    REQUIRE(models.has_value());
    INFO(models->status_line << "\n" << models->body);
    CHECK(models->status == 200);
    const auto list = json::parse(models->body, nullptr, false);
    CHECK((list.is_object() && list.value("object", "") == "list"));
    // And the connection is still there for a third.
    REQUIRE(c.send_all(get_health));
    check_health(c.read_response());
}

TEST_CASE("a body over CHAT_MAX_BODY_BYTES is refused with 413 and the JSON envelope") {
    server_process server{strict_env({{"CHAT_MAX_BODY_BYTES", "1024"}})}; // the smallest limit the server takes
    // A valid chat: a server that let it through would answer 200.
    const std::string chat = R"({"user_id":"u","content":")" + std::string(4000, 'x') + R"("})";
    std::ostringstream chunk_size;
    chunk_size << std::hex << chat.size();
    for (const auto& [what, request] :
         {std::pair{"with Content-Length"s, "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                                std::to_string(chat.size()) + "\r\n\r\n" + chat},
          std::pair{"chunked"s, "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
                                    chunk_size.str() + "\r\n" + chat + "\r\n0\r\n\r\n"}}) {
        INFO(what);
        raw_client c{server.port()};
        c.send_all(request);
        const auto r = c.read_response();
        if (!r) {
            FAIL_CHECK("no complete answer; received: " << c.unread());
            continue;
        }
        check_envelope(*r, 413);
        const auto body = json::parse(r->body, nullptr, false);
        const json::json_pointer code{"/error/code"};
        CHECK((body.is_object() && body.contains(code) && body.at(code) == "body_too_large"));
        // Closing the connection after it, or reading the body through and keeping it, are both fine.
    }
}

TEST_CASE("garbage instead of a request line is refused with 400 and the JSON envelope") {
    server_process server{strict_env()};
    expect_refused(server.port(), "not http at all", "this is not http\r\n\r\n", 400);
}

TEST_CASE("four requests on one kept-alive connection, one of them streamed, are all answered") {
    server_process server{strict_env()};
    raw_client c{server.port()};
    REQUIRE(c.send_all(get_health));
    check_health(c.read_response());

    const std::string chat = R"({"user_id":"u","content":"hello there"})";
    REQUIRE(c.send_all("POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(chat.size()) + "\r\n\r\n" + chat));
    const auto answer = c.read_response();
    REQUIRE(answer.has_value());
    {
        INFO(answer->status_line << "\n" << answer->body);
        CHECK(answer->status == 200);
        const auto body = json::parse(answer->body, nullptr, false);
        CHECK((body.is_object() && body.value("content", "") == "hello there"));
    }

    // A streamed answer, whose end is framed by its chunks rather than a length, keeps it too.
    const std::string stream = R"({"user_id":"u","content":"one two","stream":true})";
    REQUIRE(c.send_all("POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(stream.size()) + "\r\n\r\n" + stream));
    const auto streamed = c.read_response();
    REQUIRE(streamed.has_value());
    {
        INFO(streamed->status_line << "\n" << streamed->body);
        CHECK(streamed->status == 200);
        CHECK(streamed->header("content-type").value_or("").starts_with("text/event-stream"));
        CHECK(streamed->body.find("event: done") != std::string::npos);
    }

    REQUIRE(c.send_all(get_health));
    check_health(c.read_response());
    CHECK(c.unread().empty());
}

TEST_CASE("a request with Connection: close is answered, then the connection closed") {
    server_process server{strict_env()};
    raw_client c{server.port()};
    REQUIRE(c.send_all(get_health));
    check_health(c.read_response()); // kept alive first
    REQUIRE(c.send_all("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    check_health(c.read_response());
    CHECK(c.closed_within());
    CHECK(c.unread().empty());
}

TEST_CASE("1,000 clients stalled halfway through their headers neither starve a new one nor outlive the read deadline") {
    // 1,000 sockets on each side: raise the soft descriptor limit (the server inherits it).
    rlimit files{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &files) == 0);
    files.rlim_cur = std::max<rlim_t>(files.rlim_cur, std::min<rlim_t>(files.rlim_max, 4096));
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &files) == 0);
    REQUIRE(files.rlim_cur >= 2100);
    server_process server{strict_env({{"CHAT_READ_TIMEOUT", "2"}})};
    std::vector<std::unique_ptr<raw_client>> stalled;
    for (int i = 0; i < 1000; ++i) {
        stalled.push_back(std::make_unique<raw_client>(server.port()));
        REQUIRE(stalled.back()->send_all("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: half a hea"));
    }
    {
        raw_client fresh{server.port()};
        REQUIRE(fresh.send_all(get_health));
        check_health(fresh.read_response()); // within the wait limit of 3 s
    }
    // Each stalled connection is closed once its 2 s deadline passes (a 408 first is fine).
    const auto deadline = steady::now() + 6s;
    int closed = 0;
    for (auto& c : stalled)
        closed += c->closed_within(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now())) ? 1 : 0;
    CHECK(closed == 1000);
}

TEST_CASE("a client that trickles its header a byte at a time is cut off at the header-read deadline") {
    server_process server{strict_env({{"CHAT_READ_TIMEOUT", "2"}})};
    raw_client c{server.port()};
    REQUIRE(c.send_all("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "));
    // A byte every 250 ms never lets the connection go idle: only a deadline for the whole header
    // block ends it.
    const auto deadline = steady::now() + 6s;
    bool closed = false;
    while (!closed && steady::now() < deadline) closed = !c.send_all("a") || c.closed_within(250ms);
    CHECK(closed);
}

TEST_CASE("an HTTP/1.0 request without Host is answered, then the connection closed") {
    server_process server{strict_env()};
    raw_client c{server.port()};
    REQUIRE(c.send_all("GET /health HTTP/1.0\r\n\r\n"));
    const auto r = c.read_response();
    check_health(r);
    CHECK(r->version.starts_with("HTTP/1."));
    CHECK(!r->header("transfer-encoding")); // an HTTP/1.0 client cannot read chunks
    CHECK(c.closed_within());
    CHECK(c.unread().empty());
}
