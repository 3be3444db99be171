// A scripted chat upstream that can break HTTP on purpose, for the fault matrix
// (tests/server/fault_matrix_test.cpp). It speaks one of three wire formats, chosen when it is
// made, and answers as the real API does, the answer being "echo: <last user message>" word by
// word, except for the fault scripted for each request:
// - wire::openai: POST /v1/chat/completions, a chat.completion object, or a text/event-stream of
//   chat.completion.chunk events ending with `data: [DONE]`;
// - wire::anthropic: POST /v1/messages, a `message` object, or the events message_start,
//   content_block_start, ping, content_block_delta (text_delta)..., content_block_stop,
//   message_delta (stop_reason, usage), message_stop;
// - wire::gemini: POST /v1beta/models/{model}:generateContent, a GenerateContentResponse, or
//   :streamGenerateContent?alt=sse, one GenerateContentResponse per `data:` event (CR LF framed),
//   the last carrying the finishReason;
// - wire::bedrock: POST /model/{modelId}/converse, a Converse answer, or /converse-stream, the
//   application/vnd.amazon.eventstream frames (chatkit::aws::encode_event) messageStart,
//   contentBlockDelta..., contentBlockStop, messageStop, metadata.
// The faults are the same for all four; only the bytes that carry them differ.
//
// It is written on raw POSIX sockets because cpp-httplib (the fake_openai.hpp server) can only
// send well-formed HTTP: it cannot stall before the status line, cut a chunk in half, reset the
// connection mid-body or drip bytes. One thread serves each connection; every blocking wait is a
// poll of at most 100 ms that also watches the stop flag, so the destructor never waits long and a
// test can never hang on it.
#pragma once

// Bedrock's frames need chatkit::aws (linked by the test when the build has it).
#if __has_include(<chatkit/aws/eventstream.hpp>)
#include <chatkit/aws/eventstream.hpp>
#define CHATKIT_FAULT_UPSTREAM_BEDROCK 1
#endif

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

// The API whose wire format the upstream speaks.
enum class wire { openai, anthropic, gemini, bedrock };

enum class fault {
    none,              // a correct answer
    refuse,            // nobody listens: connect() gets ECONNREFUSED (see fault_upstream::refuse)
    stall,             // accept, read the request, never send the status line
    reset_mid_stream,  // headers and the events up to the first delta (or half the JSON body), then RST
    truncated_chunked, // Transfer-Encoding: chunked, the connection closed inside a chunk
    ends_early,        // well-formed HTTP that ends before the answer does (see ends_early_events)
    malformed_json,    // 200 application/json whose body is not JSON
    malformed_sse,     // 200 text/event-stream with a `data:` line that is not JSON after the first delta
                       // (Bedrock: an event-stream frame whose payload is not JSON)
    corrupt_frame,     // Bedrock: an event-stream frame with a bad CRC after the first delta (others: as malformed_sse)
    rate_limited,      // 429 and the wire's envelope; a delay of 1 s (Retry-After, or Gemini's retryDelay)
    server_error,      // 500 with the envelope
    overloaded,        // 503 (Anthropic: 529) with the envelope
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
    std::chrono::milliseconds stall_for{4000}; // more than any CHAT_UPSTREAM_TIMEOUT a test sets
    std::chrono::milliseconds drip_every{500}; // shorter than CHAT_UPSTREAM_TIMEOUT: only the deadline can cut it
    std::size_t oversized_bytes = 65u << 20;   // each provider keeps at most 64 MiB of an answer

    explicit fault_upstream(wire w = wire::openai) : wire_{w} {
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
    wire speaks() const { return wire_; }
    // As each provider's base URL setting takes it: OpenAI's includes /v1, the others' are the origin.
    std::string base_url() const {
        const std::string origin = "http://127.0.0.1:" + std::to_string(port_);
        return wire_ == wire::openai ? origin + "/v1" : origin;
    }
    // The (lowercased) header that carries the API key (Bedrock: the SigV4 signature, which names
    // the access key id; the secret key itself is never sent).
    static const char* key_header(wire w) {
        switch (w) {
        case wire::anthropic: return "x-api-key";
        case wire::gemini: return "x-goog-api-key";
        case wire::openai:
        case wire::bedrock: break;
        }
        return "authorization";
    }

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

    // The key the request carried, as sent (OpenAI's with its "Bearer "), or empty.
    std::string key_of(const recorded_request& r) const {
        const auto k = r.headers.find(key_header(wire_));
        return k == r.headers.end() ? std::string{} : k->second;
    }

    // The wire's error envelope. Its message quotes the key the request carried: the real APIs
    // mask keys, but a proxy in between may not, and the key must still never reach a client.
    // `type` is OpenAI's type, Anthropic's error type or Google's status; `code` is OpenAI's.
    std::string envelope(const recorded_request& r, int status, const std::string& message, const char* type, const char* code) const {
        const std::string key = key_of(r);
        const std::string quoted = key.empty() ? std::string{} : " (" + key + ")";
        switch (wire_) {
        case wire::anthropic:
            return nlohmann::json{
                {"type", "error"}, {"error", {{"type", type}, {"message", message + quoted}}}, {"request_id", "req_fault"}}
                .dump();
        case wire::gemini: {
            nlohmann::json e = {{"code", status}, {"message", message + quoted}, {"status", type}};
            if (status == 429) // Google gives its delay here, not in a Retry-After header
                e["details"] = nlohmann::json::array({{{"@type", "type.googleapis.com/google.rpc.RetryInfo"}, {"retryDelay", "1s"}}});
            return nlohmann::json{{"error", e}}.dump(2);
        }
        case wire::bedrock: return nlohmann::json{{"message", message + quoted}}.dump(); // the type is in x-amzn-ErrorType
        case wire::openai: break;
        }
        return nlohmann::json{{"error",
                               {{"message", message + quoted},
                                {"type", type},
                                {"param", nullptr},
                                {"code", code ? nlohmann::json(code) : nlohmann::json(nullptr)}}}}
            .dump();
    }

    static std::string status_answer(int status, const char* reason, const std::string& body, const std::string& extra_headers = {}) {
        return "HTTP/1.1 " + std::to_string(status) + " " + reason +
               "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers +
               "x-request-id: req_fault\r\n\r\n" + body;
    }

    // The answer to a rate_limited, server_error or overloaded fault, as each API sends it.
    std::string error_answer(const recorded_request& r, fault f) const {
        switch (wire_) {
        case wire::anthropic:
            if (f == fault::rate_limited)
                return status_answer(429, "Too Many Requests",
                                     envelope(r, 429, "Number of requests has exceeded your rate limit", "rate_limit_error", nullptr),
                                     "retry-after: 1\r\n");
            if (f == fault::server_error)
                return status_answer(500, "Internal Server Error", envelope(r, 500, "Internal server error", "api_error", nullptr));
            return status_answer(529, "Overloaded", envelope(r, 529, "Overloaded", "overloaded_error", nullptr));
        case wire::gemini:
            if (f == fault::rate_limited)
                return status_answer(429, "Too Many Requests",
                                     envelope(r, 429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED", nullptr));
            if (f == fault::server_error)
                return status_answer(500, "Internal Server Error",
                                     envelope(r, 500, "An internal error has occurred. Please retry.", "INTERNAL", nullptr));
            return status_answer(503, "Service Unavailable",
                                 envelope(r, 503, "The model is overloaded. Please try again later.", "UNAVAILABLE", nullptr));
        case wire::bedrock: {
            // As Bedrock sends them: the type in x-amzn-ErrorType (with its :namespace suffix), no delay header.
            const auto typed = [](const char* type) {
                return std::string{"x-amzn-ErrorType: "} + type + ":http://internal.amazon.com/coral/com.amazon.bedrock/\r\n";
            };
            if (f == fault::rate_limited)
                return status_answer(429, "Too Many Requests",
                                     envelope(r, 429, "Too many requests, please wait before trying again.", nullptr, nullptr),
                                     typed("ThrottlingException"));
            if (f == fault::server_error)
                return status_answer(500, "Internal Server Error",
                                     envelope(r, 500, "The server encountered an internal error.", nullptr, nullptr),
                                     typed("InternalServerException"));
            return status_answer(503, "Service Unavailable", envelope(r, 503, "The service is temporarily unavailable.", nullptr, nullptr),
                                 typed("ServiceUnavailableException"));
        }
        case wire::openai: break;
        }
        if (f == fault::rate_limited)
            return status_answer(429, "Too Many Requests",
                                 envelope(r, 429, "Rate limit reached for requests", "requests", "rate_limit_exceeded"),
                                 "Retry-After: 1\r\n");
        if (f == fault::server_error)
            return status_answer(500, "Internal Server Error",
                                 envelope(r, 500, "The server had an error while processing your request.", "server_error", nullptr));
        return status_answer(503, "Service Unavailable",
                             envelope(r, 503, "The engine is currently overloaded, please try again later.", "server_error", nullptr));
    }

    static std::string json_head(std::size_t length) {
        return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(length) +
               "\r\nx-request-id: req_fault\r\n\r\n";
    }
    static constexpr const char* sse_head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
        "Cache-Control: no-cache\r\nx-request-id: req_fault\r\n\r\n";
    static constexpr const char* eventstream_head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\nTransfer-Encoding: chunked\r\n"
        "x-amzn-RequestId: req_fault\r\n\r\n";
    // The head of a streamed answer: an event stream, or Bedrock's binary one.
    std::string stream_head() const { return wire_ == wire::bedrock ? eventstream_head : sse_head; }

    struct answer_parts {
        std::string model;
        std::vector<std::string> pieces; // the content, as a model streams it
        int prompt = 0;                  // tokens, a word each
        nlohmann::json usage;            // OpenAI's
    };

    // Gemini and Bedrock stream to another path; the others say so in the body.
    bool is_streamed(const recorded_request& r) const {
        if (wire_ == wire::gemini) return r.target.find(":streamGenerateContent") != std::string::npos;
        if (wire_ == wire::bedrock) return r.target.ends_with("/converse-stream");
        return r.body.is_object() && r.body.value("stream", false);
    }

    // The path segment after `prefix`, up to `end`: the model, for the wires that put it in the path.
    static std::string segment_after(const std::string& target, std::string_view prefix, char end) {
        const auto from = target.find(prefix);
        const auto to = from == std::string::npos ? from : target.find(end, from + prefix.size());
        return to == std::string::npos ? "fault-1" : target.substr(from + prefix.size(), to - from - prefix.size());
    }

    // The text of the last user turn, for the wires whose turns hold an array of text blocks
    // (Gemini: contents[].parts[]; Bedrock: messages[].content[]).
    static std::string last_user_blocks(const nlohmann::json& body, const char* turns, const char* blocks) {
        std::string last_user;
        if (!body.is_object() || !body.contains(turns) || !body[turns].is_array()) return last_user;
        for (const auto& t : body[turns]) {
            if (!t.is_object() || t.value("role", "") != "user" || !t.contains(blocks) || !t[blocks].is_array()) continue;
            last_user.clear();
            for (const auto& b : t[blocks])
                if (b.is_object() && b.contains("text") && b["text"].is_string()) last_user += b["text"].get<std::string>();
        }
        return last_user;
    }

    answer_parts parts_of(const recorded_request& r) const {
        answer_parts a;
        std::string last_user;
        if (wire_ == wire::gemini) { // /v1beta/models/{model}:method
            a.model = segment_after(r.target, "/models/", ':');
            last_user = last_user_blocks(r.body, "contents", "parts");
        } else if (wire_ == wire::bedrock) { // /model/{modelId}/converse(-stream)
            a.model = segment_after(r.target, "/model/", '/');
            last_user = last_user_blocks(r.body, "messages", "content");
        } else { // OpenAI's messages and Anthropic's alike, as a plain text conversation sends them
            a.model = r.body.is_object() ? r.body.value("model", "fault-1") : "fault-1";
            if (r.body.is_object() && r.body.contains("messages") && r.body["messages"].is_array())
                for (const auto& m : r.body["messages"])
                    if (m.value("role", "") == "user" && m.contains("content") && m["content"].is_string()) last_user = m["content"];
        }
        std::istringstream in{"echo: " + last_user};
        for (std::string w; in >> w;) a.pieces.push_back(a.pieces.empty() ? w : " " + w);
        a.prompt = static_cast<int>(std::count(last_user.begin(), last_user.end(), ' ')) + 1;
        a.usage = {{"prompt_tokens", a.prompt},
                   {"completion_tokens", static_cast<int>(a.pieces.size())},
                   {"total_tokens", a.prompt + static_cast<int>(a.pieces.size())}};
        return a;
    }

    static std::string completion_json(const answer_parts& a, const std::string& content) {
        return nlohmann::json{{"id", "chatcmpl-fault"},
                              {"object", "chat.completion"},
                              {"created", 1741569952},
                              {"model", a.model},
                              {"choices",
                               {{{"index", 0},
                                 {"message", {{"role", "assistant"}, {"content", content}, {"refusal", nullptr}}},
                                 {"logprobs", nullptr},
                                 {"finish_reason", "stop"}}}},
                              {"usage", a.usage}}
            .dump();
    }

    static nlohmann::json anthropic_usage(const answer_parts& a, int output) {
        return {{"input_tokens", a.prompt}, {"cache_creation_input_tokens", 0}, {"cache_read_input_tokens", 0}, {"output_tokens", output}};
    }

    // A GenerateContentResponse of one text part; `finish` null while the answer goes on. Its
    // usageMetadata holds the totals so far, as Google's do.
    static nlohmann::json gemini_response(const answer_parts& a, const std::string& text, const char* finish, int completion) {
        nlohmann::json candidate = {{"content", {{"parts", nlohmann::json::array({{{"text", text}}})}, {"role", "model"}}}, {"index", 0}};
        if (finish) candidate["finishReason"] = finish;
        return {{"candidates", nlohmann::json::array({candidate})},
                {"usageMetadata",
                 {{"promptTokenCount", a.prompt}, {"candidatesTokenCount", completion}, {"totalTokenCount", a.prompt + completion}}},
                {"modelVersion", a.model},
                {"responseId", "fault-response"}};
    }

    // The whole answer of a non-streamed request.
    std::string whole_json(const answer_parts& a, const std::string& content) const {
        switch (wire_) {
        case wire::anthropic:
            return nlohmann::json{{"id", "msg_fault"},
                                  {"type", "message"},
                                  {"role", "assistant"},
                                  {"model", a.model},
                                  {"content", nlohmann::json::array({{{"type", "text"}, {"text", content}}})},
                                  {"stop_reason", "end_turn"},
                                  {"stop_sequence", nullptr},
                                  {"usage", anthropic_usage(a, static_cast<int>(a.pieces.size()))}}
                .dump();
        case wire::gemini: return gemini_response(a, content, "STOP", static_cast<int>(a.pieces.size())).dump();
        case wire::bedrock:
            return nlohmann::json{
                {"output", {{"message", {{"role", "assistant"}, {"content", nlohmann::json::array({{{"text", content}}})}}}}},
                {"stopReason", "end_turn"},
                {"usage", bedrock_usage(a)},
                {"metrics", {{"latencyMs", 42}}}}
                .dump();
        case wire::openai: break;
        }
        return completion_json(a, content);
    }

    static std::string chunk_event(const std::string& model, nlohmann::json choices, nlohmann::json extra = nlohmann::json::object()) {
        nlohmann::json j = {{"id", "chatcmpl-fault"},
                            {"object", "chat.completion.chunk"},
                            {"created", 1741569952},
                            {"model", model},
                            {"choices", std::move(choices)}};
        j.update(extra);
        return "data: " + j.dump() + "\n\n";
    }
    static std::string delta_event(const std::string& model, const std::string& text) {
        return chunk_event(model, {{{"index", 0}, {"delta", {{"content", text}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
    }
    static std::string anthropic_event(const std::string& type, nlohmann::json data) {
        data["type"] = type;
        return "event: " + type + "\ndata: " + data.dump() + "\n\n";
    }
    static std::string gemini_event(const nlohmann::json& data) { return "data: " + data.dump() + "\r\n\r\n"; }
    // One event-stream frame of a ConverseStream event; `payload` as sent (JSON, unless a fault says otherwise).
    static std::string bedrock_frame(const std::string& type, std::string payload) {
#ifdef CHATKIT_FAULT_UPSTREAM_BEDROCK
        return chatkit::aws::encode_event(
            {{{":event-type", type}, {":content-type", std::string{"application/json"}}, {":message-type", std::string{"event"}}},
             std::move(payload)});
#else
        throw std::logic_error("fault_upstream: built without chatkit::aws, cannot frame " + type + " (" + payload + ")");
#endif
    }
    static std::string bedrock_event(const std::string& type, const nlohmann::json& data) { return bedrock_frame(type, data.dump()); }
    static nlohmann::json bedrock_usage(const answer_parts& a) {
        const int n = static_cast<int>(a.pieces.size());
        return {{"inputTokens", a.prompt}, {"outputTokens", n}, {"totalTokens", a.prompt + n}};
    }

    // The event of one piece of text; `so_far` counts the pieces up to it.
    std::string text_event(const answer_parts& a, const std::string& text, int so_far) const {
        switch (wire_) {
        case wire::anthropic:
            return anthropic_event("content_block_delta", {{"index", 0}, {"delta", {{"type", "text_delta"}, {"text", text}}}});
        case wire::gemini: return gemini_event(gemini_response(a, text, nullptr, so_far));
        case wire::bedrock: return bedrock_event("contentBlockDelta", {{"delta", {{"text", text}}}, {"contentBlockIndex", 0}});
        case wire::openai: break;
        }
        return delta_event(a.model, text);
    }

    // A correct stream: the events before the first delta, the deltas, the events that end it.
    struct stream_parts {
        std::vector<std::string> head, deltas, tail;
        std::vector<std::string> all() const {
            std::vector<std::string> out = head;
            out.insert(out.end(), deltas.begin(), deltas.end());
            out.insert(out.end(), tail.begin(), tail.end());
            return out;
        }
    };

    stream_parts stream_of(const recorded_request& r, const answer_parts& a) const {
        stream_parts s;
        const int n = static_cast<int>(a.pieces.size());
        switch (wire_) {
        case wire::openai: {
            // The role, the deltas, the finish, the usage when asked, [DONE].
            s.head.push_back(chunk_event(a.model, {{{"index", 0},
                                                    {"delta", {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}},
                                                    {"logprobs", nullptr},
                                                    {"finish_reason", nullptr}}}));
            for (const auto& p : a.pieces) s.deltas.push_back(delta_event(a.model, p));
            s.tail.push_back(chunk_event(
                a.model, {{{"index", 0}, {"delta", nlohmann::json::object()}, {"logprobs", nullptr}, {"finish_reason", "stop"}}}));
            const auto options = r.body.is_object() ? r.body.value("stream_options", nlohmann::json::object()) : nlohmann::json::object();
            if (options.is_object() && options.value("include_usage", false))
                s.tail.push_back(chunk_event(a.model, nlohmann::json::array(), {{"usage", a.usage}}));
            s.tail.push_back("data: [DONE]\n\n");
            break;
        }
        case wire::anthropic: {
            s.head.push_back(anthropic_event("message_start", {{"message",
                                                                {{"id", "msg_fault"},
                                                                 {"type", "message"},
                                                                 {"role", "assistant"},
                                                                 {"content", nlohmann::json::array()},
                                                                 {"model", a.model},
                                                                 {"stop_reason", nullptr},
                                                                 {"stop_sequence", nullptr},
                                                                 {"usage", anthropic_usage(a, 1)}}}}));
            s.head.push_back(anthropic_event("content_block_start", {{"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}));
            s.head.push_back(anthropic_event("ping", nlohmann::json::object()));
            for (int i = 0; i < n; ++i) s.deltas.push_back(text_event(a, a.pieces[static_cast<std::size_t>(i)], i + 1));
            s.tail.push_back(anthropic_event("content_block_stop", {{"index", 0}}));
            s.tail.push_back(anthropic_event("message_delta", {{"delta", {{"stop_reason", "end_turn"}, {"stop_sequence", nullptr}}},
                                                               {"usage", {{"output_tokens", n}}}}));
            s.tail.push_back(anthropic_event("message_stop", nlohmann::json::object()));
            break;
        }
        case wire::gemini:
            // No end marker: the last piece carries the finishReason.
            for (int i = 0; i + 1 < n; ++i) s.deltas.push_back(text_event(a, a.pieces[static_cast<std::size_t>(i)], i + 1));
            if (n > 0) s.tail.push_back(gemini_event(gemini_response(a, a.pieces.back(), "STOP", n)));
            break;
        case wire::bedrock:
            s.head.push_back(bedrock_event("messageStart", {{"role", "assistant"}}));
            for (int i = 0; i < n; ++i) s.deltas.push_back(text_event(a, a.pieces[static_cast<std::size_t>(i)], i + 1));
            s.tail.push_back(bedrock_event("contentBlockStop", {{"contentBlockIndex", 0}}));
            s.tail.push_back(bedrock_event("messageStop", {{"stopReason", "end_turn"}}));
            s.tail.push_back(bedrock_event("metadata", {{"usage", bedrock_usage(a)}, {"metrics", {{"latencyMs", 42}}}}));
            break;
        }
        return s;
    }

    // What a stream that ends early but cleanly sends, on each wire missing what marks the end:
    // OpenAI, two deltas and no finish_reason or [DONE]; Anthropic, everything but message_stop
    // (so the stop_reason does come); Gemini, every piece but the last, so no finishReason;
    // Bedrock, every frame but messageStop and metadata.
    std::vector<std::string> ends_early_events(const stream_parts& s) const {
        std::vector<std::string> out = s.head;
        switch (wire_) {
        case wire::openai:
            out.insert(out.end(), s.deltas.begin(), s.deltas.begin() + std::min<std::ptrdiff_t>(2, std::ssize(s.deltas)));
            break;
        case wire::anthropic:
            out = s.all();
            out.pop_back();
            break;
        case wire::gemini: out.insert(out.end(), s.deltas.begin(), s.deltas.end()); break;
        case wire::bedrock:
            out = s.all();
            out.resize(out.size() - 2);
            break;
        }
        return out;
    }

    // A `data:` line that is not JSON, quoting the key as a broken proxy might.
    std::string bad_event(const recorded_request& r) const {
        switch (wire_) {
        case wire::anthropic:
            return "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\": not json " + key_of(r) +
                   "\n\n";
        case wire::gemini: return "data: {\"candidates\":[{\"content\": not json " + key_of(r) + "\r\n\r\n";
        case wire::bedrock: return bedrock_frame("contentBlockDelta", "{\"delta\":{\"text\": not json " + key_of(r));
        case wire::openai: break;
        }
        return "data: {\"choices\":[{\"delta\": not json " + key_of(r) + "\n\n";
    }

    // A body that starts as the wire's answer and is not JSON.
    std::string not_json(const recorded_request& r) const {
        switch (wire_) {
        case wire::anthropic:
            return "{\"id\":\"msg_fault\",\"type\":\"message\",\"content\":[{\"type\": oops, proxy said " + key_of(r) + " <html>";
        case wire::gemini: return "{\"candidates\":[{\"content\": oops, proxy said " + key_of(r) + " <html>";
        case wire::bedrock: return "{\"output\":{\"message\":{\"content\": oops, proxy said " + key_of(r) + " <html>";
        case wire::openai: break;
        }
        return "{\"id\":\"chatcmpl-fault\",\"choices\":[{\"message\": oops, proxy said " + key_of(r) + " <html>";
    }

    static std::string joined(const std::vector<std::string>& events, std::size_t from = 0, std::size_t to = std::string::npos) {
        std::string out;
        for (std::size_t e = from; e < std::min(to, events.size()); ++e) out += events[e];
        return out;
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
        const bool streamed = is_streamed(r);
        const answer_parts a = parts_of(r);
        std::string content;
        for (const auto& p : a.pieces) content += p;
        const stream_parts parts = stream_of(r, a);
        const auto events = parts.all();
        const std::size_t first = parts.head.size() + 1; // the events up to and with the first delta

        switch (f) {
        case fault::none:
        case fault::refuse: { // refusing happens before any request; one that arrives is answered
            if (!streamed) {
                const std::string body = whole_json(a, content);
                return send_all(fd, json_head(body.size()) + body);
            }
            std::string out = stream_head();
            for (const auto& e : events) out += chunked(e);
            return send_all(fd, out + "0\r\n\r\n");
        }
        case fault::stall: pause(stall_for); return false;
        case fault::reset_mid_stream: {
            if (!streamed) {
                const std::string body = whole_json(a, content);
                send_all(fd, json_head(body.size()) + body.substr(0, body.size() / 2));
            } else {
                std::string out = stream_head();
                for (std::size_t e = 0; e < first; ++e) out += chunked(events[e]);
                send_all(fd, out);
            }
            reset(fd);
            return false;
        }
        case fault::truncated_chunked: {
            std::string out;
            std::string cut; // the chunk that is cut in half
            if (!streamed) {
                out = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nx-request-id: req_fault\r\n\r\n";
                cut = whole_json(a, content);
            } else {
                out = stream_head() + chunked(joined(events, 0, first));
                cut = joined(events, first);
            }
            std::ostringstream size;
            size << std::hex << cut.size();
            send_all(fd, out + size.str() + "\r\n" + cut.substr(0, cut.size() / 2));
            pause(std::chrono::milliseconds(100)); // the bytes leave before the FIN, as they would from a crashing server
            return false;
        }
        case fault::ends_early: {
            // Streamed: see ends_early_events, then the last chunk, as a proxy that gives up cleanly
            // sends it. Not streamed: half the JSON, its end marked only by closing the connection.
            if (!streamed) {
                const std::string body = whole_json(a, content);
                send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nx-request-id: req_fault\r\n\r\n" +
                                 body.substr(0, body.size() / 2));
            } else {
                send_all(fd, stream_head() + chunked(joined(ends_early_events(parts))) + "0\r\n\r\n");
            }
            return false;
        }
        case fault::malformed_json: {
            const std::string body = not_json(r);
            send_all(fd, json_head(body.size()) + body);
            return false;
        }
        case fault::malformed_sse:
        case fault::corrupt_frame: {
            // What a streamed request was promised, also sent to a non-streamed one: either way
            // the answer cannot be read as a completion.
            std::string out = stream_head();
            for (std::size_t e = 0; e < first; ++e) out += chunked(events[e]);
            if (f == fault::corrupt_frame && wire_ == wire::bedrock) {
                // A well-formed delta frame whose message CRC (its last byte) is wrong.
                std::string frame = text_event(a, " corrupt", 2);
                frame.back() = static_cast<char>(frame.back() ^ 0x5a);
                out += chunked(frame);
            } else {
                out += chunked(bad_event(r));
            }
            for (std::size_t e = first; e < events.size(); ++e) out += chunked(events[e]);
            send_all(fd, out + "0\r\n\r\n");
            return false;
        }
        case fault::rate_limited:
        case fault::server_error:
        case fault::overloaded: send_all(fd, error_answer(r, f)); return false;
        case fault::drip: {
            // The head at once, as a real server sends it, then the body a byte at a time.
            std::string body;
            if (!streamed) {
                body = whole_json(a, content);
                if (!send_all(fd, json_head(body.size()))) return false;
            } else {
                for (const auto& e : events) body += chunked(e);
                body += "0\r\n\r\n";
                if (!send_all(fd, stream_head())) return false;
            }
            for (char c : body)
                if (!pause(drip_every) || !send_all(fd, std::string_view{&c, 1})) break;
            return false;
        }
        case fault::oversized: send_oversized(fd, a, streamed); return false;
        }
        return false;
    }

    // A correct answer of oversized_bytes, written 1 MiB at a time so that it never sits in memory whole.
    void send_oversized(int fd, const answer_parts& a, bool streamed) const {
        const std::string filler(1u << 20, 'a');
        if (!streamed) {
            // {"...","text":"aaa...aaa",...}: the filler goes between the quotes of the content.
            const std::string whole = whole_json(a, "@");
            const auto at = whole.find('@');
            const std::string before = whole.substr(0, at), after = whole.substr(at + 1);
            const std::size_t fill = oversized_bytes - before.size() - after.size();
            if (!send_all(fd, json_head(oversized_bytes) + before)) return;
            for (std::size_t sent = 0; sent < fill; sent += filler.size())
                if (!send_all(fd, std::string_view{filler}.substr(0, std::min(filler.size(), fill - sent)))) return;
            send_all(fd, after);
            return;
        }
        // Deltas of 64 KiB, each its own chunk, between the stream's usual head and tail.
        const stream_parts parts = stream_of({}, a);
        const std::string event = text_event(a, filler.substr(0, 64u << 10), 1);
        std::string head = stream_head();
        if (!parts.head.empty()) head += chunked(joined(parts.head)); // an empty chunk would end the body
        if (!send_all(fd, head)) return;
        for (std::size_t sent = 0; sent < oversized_bytes; sent += event.size())
            if (!send_all(fd, chunked(event))) return;
        send_all(fd, chunked(joined(parts.tail)) + "0\r\n\r\n");
    }

    const wire wire_;

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
