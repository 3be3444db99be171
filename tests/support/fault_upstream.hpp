// A scripted OpenAI Chat Completions upstream that can break HTTP on purpose, for the fault matrix
// (tests/server/fault_matrix_test.cpp). It answers POST /v1/chat/completions as the real API does
// (a chat.completion object, or a text/event-stream of chat.completion.chunk events ending with
// `data: [DONE]`, the answer being "echo: <last user message>" word by word), except for the
// fault scripted for each request.
//
// It is written on raw POSIX sockets because cpp-httplib (the fake_openai.hpp server) can only
// send well-formed HTTP: it cannot stall before the status line, cut a chunk in half, reset the
// connection mid-body or drip bytes. One thread serves each connection; every blocking wait is a
// poll of at most 100 ms that also watches the stop flag, so the destructor never waits long and a
// test can never hang on it.
#pragma once

#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <cerrno>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

enum class fault {
    none,              // a correct answer
    refuse,            // nobody listens: connect() gets ECONNREFUSED (see fault_upstream::refuse)
    stall,             // accept, read the request, never send the status line
    reset_mid_stream,  // headers and the first two events (or half the JSON body), then RST
    truncated_chunked, // Transfer-Encoding: chunked, the connection closed inside a chunk
    ends_early,        // well-formed HTTP that ends before the answer does: no finish_reason, no [DONE]
    malformed_json,    // 200 application/json whose body is not JSON
    malformed_sse,     // 200 text/event-stream with a `data:` line that is not JSON after the first delta
    rate_limited,      // 429, Retry-After: 1, OpenAI's error envelope
    server_error,      // 500 with the envelope
    overloaded,        // 503 with the envelope
    drip,              // the correct answer, one byte at a time, slower than any deadline allows
    oversized,         // a correct answer of 65 MiB
};

struct recorded_request {
    std::string method;
    std::string target;
    std::map<std::string, std::string> headers; // names lowercased
    nlohmann::json body;
};

class fault_upstream {
public:
    std::chrono::milliseconds stall_for{4000};  // more than any CHAT_UPSTREAM_TIMEOUT a test sets
    std::chrono::milliseconds drip_every{500};  // shorter than CHAT_UPSTREAM_TIMEOUT: only the deadline can cut it
    std::size_t oversized_bytes = 65u << 20;    // the OpenAI provider keeps at most 64 MiB of an answer

    fault_upstream() {
        open_listener(0);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~fault_upstream() {
        stop_ = true;
        acceptor_.join();
        std::vector<std::thread> threads;
        {
            std::lock_guard lock{mutex_};
            threads.swap(threads_);
        }
        for (auto& t : threads) t.join();
        if (listen_fd_ >= 0) ::close(listen_fd_);
    }
    fault_upstream(const fault_upstream&) = delete;
    fault_upstream& operator=(const fault_upstream&) = delete;

    int port() const { return port_; }
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

    // The next requests meet these faults, in order; later ones get correct answers.
    void script(std::vector<fault> faults) {
        std::lock_guard lock{mutex_};
        for (auto f : faults) script_.push_back(f);
    }
    std::vector<recorded_request> requests() const {
        std::lock_guard lock{mutex_};
        return requests_;
    }

    // Closes the listening socket (and any kept-alive connection), so that connecting is refused
    // until reopen() listens on the same port again. The accept thread owns the socket, so the
    // change is made there and waited for here.
    void refuse() { set_listening(false); }
    void reopen() { set_listening(true); }

private:
    void set_listening(bool on) {
        want_listening_ = on;
        if (!on) {
            std::lock_guard lock{mutex_};
            for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR); // the thread that owns it closes it
        }
        while (listening_ != on) {
            if (acceptor_failed_) throw std::runtime_error(acceptor_error_);
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }

    void open_listener(int port) {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd_ < 0) throw std::runtime_error("socket: " + std::string{std::strerror(errno)});
        const int one = 1;
        ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); // rebinding the port just closed
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 64) != 0) {
            const std::string why = std::strerror(errno);
            ::close(listen_fd_);
            listen_fd_ = -1;
            throw std::runtime_error("cannot listen on 127.0.0.1:" + std::to_string(port) + ": " + why);
        }
        socklen_t len = sizeof addr;
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        listening_ = true;
    }

    void accept_loop() {
        while (!stop_) {
            if (want_listening_ != listening_) {
                if (listening_) {
                    ::close(listen_fd_);
                    listen_fd_ = -1;
                    listening_ = false;
                } else {
                    try {
                        open_listener(port_);
                    } catch (const std::exception& e) {
                        acceptor_error_ = e.what();
                        acceptor_failed_ = true;
                        return;
                    }
                }
            }
            if (!listening_) {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
                continue;
            }
            pollfd p{listen_fd_, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) continue;
            const int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); // each event leaves when written
            std::lock_guard lock{mutex_};
            open_fds_.push_back(fd);
            threads_.emplace_back([this, fd] { serve(fd); });
        }
    }

    // Waits up to 100 ms for `events`; false once stopping.
    bool wait_for(int fd, short events) const {
        pollfd p{fd, events, 0};
        while (!stop_) {
            const int n = ::poll(&p, 1, 100);
            if (n > 0) return true;
            if (n < 0 && errno != EINTR) return false;
        }
        return false;
    }

    // Sleeps in steps of at most 100 ms; false once stopping.
    bool pause(std::chrono::milliseconds d) const {
        const auto until = std::chrono::steady_clock::now() + d;
        while (!stop_) {
            const auto left = until - std::chrono::steady_clock::now();
            if (left <= std::chrono::milliseconds::zero()) return true;
            std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(100)));
        }
        return false;
    }

    // Writes everything; false when the peer is gone (the socket is non-blocking, so a peer that
    // stops reading cannot block this thread past a stop).
    bool send_all(int fd, std::string_view bytes) const {
        while (!bytes.empty()) {
            const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n > 0) {
                bytes.remove_prefix(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                if (!wait_for(fd, POLLOUT)) return false;
                continue;
            }
            return false;
        }
        return true;
    }

    // One request: the head up to the blank line, then a Content-Length body. False when the peer
    // closed (between kept-alive requests, its normal way to leave) or sent something unreadable.
    bool read_request(int fd, std::string& buffer, recorded_request& out) const {
        std::size_t head_end;
        while ((head_end = buffer.find("\r\n\r\n")) == std::string::npos)
            if (!read_some(fd, buffer) || buffer.size() > (1u << 20)) return false;
        std::istringstream head{buffer.substr(0, head_end)};
        std::string line;
        std::getline(head, line);
        std::istringstream request_line{line};
        request_line >> out.method >> out.target;
        std::size_t length = 0;
        while (std::getline(head, line)) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            const auto colon = line.find(':');
            if (colon == std::string::npos) continue;
            std::string name = line.substr(0, colon);
            std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
            std::string value = line.substr(colon + 1);
            value.erase(0, value.find_first_not_of(" \t"));
            if (name == "content-length") length = std::stoul(value);
            out.headers[name] = value;
        }
        buffer.erase(0, head_end + 4);
        while (buffer.size() < length)
            if (!read_some(fd, buffer)) return false;
        out.body = nlohmann::json::parse(buffer.substr(0, length), nullptr, false);
        buffer.erase(0, length);
        return true;
    }

    bool read_some(int fd, std::string& buffer) const {
        char chunk[16384];
        for (;;) {
            if (!wait_for(fd, POLLIN)) return false;
            const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
            if (n > 0) return buffer.append(chunk, static_cast<std::size_t>(n)), true;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
            return false;
        }
    }

    void serve(int fd) {
        std::string buffer;
        for (;;) {
            recorded_request request;
            if (!read_request(fd, buffer, request)) break;
            fault f = fault::none;
            {
                std::lock_guard lock{mutex_};
                requests_.push_back(request);
                if (!script_.empty()) {
                    f = script_.front();
                    script_.pop_front();
                }
            }
            if (!answer(fd, request, f)) break; // a fault ends the connection
        }
        std::lock_guard lock{mutex_};
        std::erase(open_fds_, fd);
        ::close(fd);
    }

    static std::string chunked(std::string_view bytes) {
        std::ostringstream out;
        out << std::hex << bytes.size() << "\r\n" << bytes << "\r\n";
        return out.str();
    }

    // OpenAI's error envelope. Its message quotes the key the request carried: the real API masks
    // keys, but a proxy in between may not, and the key must still never reach a client.
    static std::string envelope(const recorded_request& r, const std::string& message, const char* type, const char* code) {
        const auto auth = r.headers.find("authorization");
        const std::string quoted = auth == r.headers.end() ? std::string{} : " (" + auth->second + ")";
        return nlohmann::json{{"error", {{"message", message + quoted}, {"type", type}, {"param", nullptr},
                                         {"code", code ? nlohmann::json(code) : nlohmann::json(nullptr)}}}}
            .dump();
    }

    static std::string status_answer(int status, const char* reason, const std::string& body, const std::string& extra_headers = {}) {
        return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: application/json\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n" + extra_headers + "x-request-id: req_fault\r\n\r\n" + body;
    }

    static std::string json_head(std::size_t length) {
        return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(length) +
               "\r\nx-request-id: req_fault\r\n\r\n";
    }
    static constexpr const char* sse_head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
        "Cache-Control: no-cache\r\nx-request-id: req_fault\r\n\r\n";

    struct answer_parts {
        std::string model;
        std::vector<std::string> pieces; // the content, as a model streams it
        nlohmann::json usage;
    };

    static answer_parts parts_of(const recorded_request& r) {
        answer_parts a;
        a.model = r.body.is_object() ? r.body.value("model", "fault-1") : "fault-1";
        std::string last_user;
        if (r.body.is_object() && r.body.contains("messages") && r.body["messages"].is_array())
            for (const auto& m : r.body["messages"])
                if (m.value("role", "") == "user" && m.contains("content") && m["content"].is_string()) last_user = m["content"];
        std::istringstream in{"echo: " + last_user};
        for (std::string w; in >> w;) a.pieces.push_back(a.pieces.empty() ? w : " " + w);
        const int prompt = static_cast<int>(std::count(last_user.begin(), last_user.end(), ' ')) + 1;
        a.usage = {{"prompt_tokens", prompt}, {"completion_tokens", static_cast<int>(a.pieces.size())},
                   {"total_tokens", prompt + static_cast<int>(a.pieces.size())}};
        return a;
    }

    static std::string completion_json(const answer_parts& a, const std::string& content) {
        return nlohmann::json{{"id", "chatcmpl-fault"}, {"object", "chat.completion"}, {"created", 1741569952}, {"model", a.model},
                              {"choices", {{{"index", 0},
                                            {"message", {{"role", "assistant"}, {"content", content}, {"refusal", nullptr}}},
                                            {"logprobs", nullptr},
                                            {"finish_reason", "stop"}}}},
                              {"usage", a.usage}}
            .dump();
    }

    static std::string chunk_event(const std::string& model, nlohmann::json choices, nlohmann::json extra = nlohmann::json::object()) {
        nlohmann::json j = {{"id", "chatcmpl-fault"}, {"object", "chat.completion.chunk"}, {"created", 1741569952},
                            {"model", model}, {"choices", std::move(choices)}};
        j.update(extra);
        return "data: " + j.dump() + "\n\n";
    }
    static std::string delta_event(const std::string& model, const std::string& text) {
        return chunk_event(model, {{{"index", 0}, {"delta", {{"content", text}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
    }

    // The events of a correct stream: role, the deltas, the finish, the usage when asked, [DONE].
    static std::vector<std::string> stream_events(const recorded_request& r, const answer_parts& a) {
        std::vector<std::string> events;
        events.push_back(chunk_event(a.model, {{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}},
                                                 {"logprobs", nullptr}, {"finish_reason", nullptr}}}));
        for (const auto& p : a.pieces) events.push_back(delta_event(a.model, p));
        events.push_back(chunk_event(a.model, {{{"index", 0}, {"delta", nlohmann::json::object()}, {"logprobs", nullptr}, {"finish_reason", "stop"}}}));
        const auto options = r.body.is_object() ? r.body.value("stream_options", nlohmann::json::object()) : nlohmann::json::object();
        if (options.is_object() && options.value("include_usage", false))
            events.push_back(chunk_event(a.model, nlohmann::json::array(), {{"usage", a.usage}}));
        events.push_back("data: [DONE]\n\n");
        return events;
    }

    // Closes with SO_LINGER {1, 0}: the peer gets a RST, not a FIN. The short pause first lets the
    // bytes already sent be read, as a real mid-stream reset would (a RST can discard unread data).
    void reset(int fd) const {
        pause(std::chrono::milliseconds(200));
        const linger hard{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
    }

    // Answers one request; false when the connection must end (every fault ends it).
    bool answer(int fd, const recorded_request& r, fault f) {
        const bool streamed = r.body.is_object() && r.body.value("stream", false);
        const answer_parts a = parts_of(r);
        std::string content;
        for (const auto& p : a.pieces) content += p;
        const auto events = stream_events(r, a);

        switch (f) {
        case fault::none:
        case fault::refuse: { // refusing happens before any request; one that arrives is answered
            if (!streamed) {
                const std::string body = completion_json(a, content);
                return send_all(fd, json_head(body.size()) + body);
            }
            std::string out = sse_head;
            for (const auto& e : events) out += chunked(e);
            return send_all(fd, out + "0\r\n\r\n");
        }
        case fault::stall:
            pause(stall_for);
            return false;
        case fault::reset_mid_stream: {
            if (!streamed) {
                const std::string body = completion_json(a, content);
                send_all(fd, json_head(body.size()) + body.substr(0, body.size() / 2));
            } else {
                send_all(fd, std::string{sse_head} + chunked(events[0]) + chunked(events[1]));
            }
            reset(fd);
            return false;
        }
        case fault::truncated_chunked: {
            std::string out;
            std::string cut; // the chunk that is cut in half
            if (!streamed) {
                out = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nx-request-id: req_fault\r\n\r\n";
                cut = completion_json(a, content);
            } else {
                out = std::string{sse_head} + chunked(events[0] + events[1]);
                for (std::size_t e = 2; e < events.size(); ++e) cut += events[e];
            }
            std::ostringstream size;
            size << std::hex << cut.size();
            send_all(fd, out + size.str() + "\r\n" + cut.substr(0, cut.size() / 2));
            pause(std::chrono::milliseconds(100)); // the bytes leave before the FIN, as they would from a crashing server
            return false;
        }
        case fault::ends_early: {
            // Streamed: two deltas, then the last chunk, as a proxy that gives up cleanly sends it.
            // Not streamed: half the JSON, its end marked only by closing the connection.
            if (!streamed) {
                const std::string body = completion_json(a, content);
                send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nx-request-id: req_fault\r\n\r\n" +
                                 body.substr(0, body.size() / 2));
            } else {
                send_all(fd, std::string{sse_head} + chunked(events[0] + events[1] + events[2]) + "0\r\n\r\n");
            }
            return false;
        }
        case fault::malformed_json: {
            const auto auth = r.headers.find("authorization");
            const std::string body = "{\"id\":\"chatcmpl-fault\",\"choices\":[{\"message\": oops, proxy said " +
                                     (auth == r.headers.end() ? std::string{} : auth->second) + " <html>";
            send_all(fd, json_head(body.size()) + body);
            return false;
        }
        case fault::malformed_sse: {
            // What a streamed request was promised, also sent to a non-streamed one: either way
            // the answer cannot be read as a completion.
            const auto auth = r.headers.find("authorization");
            std::string out = std::string{sse_head} + chunked(events[0]) + chunked(events[1]) +
                              chunked("data: {\"choices\":[{\"delta\": not json " +
                                      (auth == r.headers.end() ? std::string{} : auth->second) + "\n\n");
            for (std::size_t e = 2; e < events.size(); ++e) out += chunked(events[e]);
            send_all(fd, out + "0\r\n\r\n");
            return false;
        }
        case fault::rate_limited:
            send_all(fd, status_answer(429, "Too Many Requests",
                                       envelope(r, "Rate limit reached for requests", "requests", "rate_limit_exceeded"),
                                       "Retry-After: 1\r\n"));
            return false;
        case fault::server_error:
            send_all(fd, status_answer(500, "Internal Server Error",
                                       envelope(r, "The server had an error while processing your request.", "server_error", nullptr)));
            return false;
        case fault::overloaded:
            send_all(fd, status_answer(503, "Service Unavailable",
                                       envelope(r, "The engine is currently overloaded, please try again later.", "server_error", nullptr)));
            return false;
        case fault::drip: {
            // The head at once, as a real server sends it, then the body a byte at a time.
            std::string body;
            if (!streamed) {
                body = completion_json(a, content);
                if (!send_all(fd, json_head(body.size()))) return false;
            } else {
                for (const auto& e : events) body += chunked(e);
                body += "0\r\n\r\n";
                if (!send_all(fd, sse_head)) return false;
            }
            for (char c : body)
                if (!pause(drip_every) || !send_all(fd, std::string_view{&c, 1})) break;
            return false;
        }
        case fault::oversized:
            send_oversized(fd, a, streamed);
            return false;
        }
        return false;
    }

    // A correct answer of oversized_bytes, written 1 MiB at a time so that it never sits in memory whole.
    void send_oversized(int fd, const answer_parts& a, bool streamed) const {
        const std::string filler(1u << 20, 'a');
        if (!streamed) {
            // {"...","content":"aaa...aaa","refusal":null}...}: the filler goes between the quotes.
            const std::string whole = completion_json(a, "@");
            const auto at = whole.find('@');
            const std::string before = whole.substr(0, at), after = whole.substr(at + 1);
            const std::size_t fill = oversized_bytes - before.size() - after.size();
            if (!send_all(fd, json_head(oversized_bytes) + before)) return;
            for (std::size_t sent = 0; sent < fill; sent += filler.size())
                if (!send_all(fd, std::string_view{filler}.substr(0, std::min(filler.size(), fill - sent)))) return;
            send_all(fd, after);
            return;
        }
        // Deltas of 64 KiB, each its own chunk.
        const std::string event = delta_event(a.model, filler.substr(0, 64u << 10));
        if (!send_all(fd, std::string{sse_head} + chunked(stream_events({}, a).front()))) return;
        for (std::size_t sent = 0; sent < oversized_bytes; sent += event.size())
            if (!send_all(fd, chunked(event))) return;
        const std::string finish =
            chunk_event(a.model, {{{"index", 0}, {"delta", nlohmann::json::object()}, {"logprobs", nullptr}, {"finish_reason", "stop"}}}) +
            "data: [DONE]\n\n";
        send_all(fd, chunked(finish) + "0\r\n\r\n");
    }

    std::atomic<bool> stop_{false};
    std::atomic<bool> want_listening_{true};
    std::atomic<bool> listening_{false};
    std::atomic<bool> acceptor_failed_{false};
    std::string acceptor_error_; // written by the accept thread before it sets acceptor_failed_ and ends
    int listen_fd_ = -1;
    int port_ = 0;
    std::thread acceptor_;
    mutable std::mutex mutex_;
    std::vector<std::thread> threads_;
    std::vector<int> open_fds_;
    std::deque<fault> script_;
    std::vector<recorded_request> requests_;
};

} // namespace test_support
