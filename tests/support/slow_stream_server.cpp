// The benchmarks' mock upstream for the concurrent-streams scenario: an event-driven OpenAI fake.
// fake_openai_server (cpp-httplib) holds a thread per connection, so 10,000 slow streams on a
// small machine measure the mock rather than the gateway in front of it. This one serves every
// connection from one Asio loop and waits between chunks on timers, never on a sleeping thread.
// Prints {"port":N} on stdout, then serves on 127.0.0.1 until stdin closes or SIGTERM/SIGINT.
// FAKE_OPENAI_CHUNK_DELAY_MS: the wait between stream events (default 0).
// FAKE_OPENAI_CONTENT: the answer, streamed word by word (default "hello from the mock").
#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace asio = boost::asio;
namespace http = boost::beast::http;
using asio::ip::tcp;
using json = nlohmann::ordered_json; // keys in the order OpenAI sends them

namespace {

// Everything a reply holds is fixed at start-up, so it is serialized once, not per request.
struct replies {
    std::chrono::milliseconds delay{0};
    std::string completion;          // the non-stream body
    std::vector<std::string> events; // the role chunk, one chunk per word, the finish chunk
    std::string usage;               // sent only when the request asks for it
    std::string done = "data: [DONE]\n\n";
};

std::string event(json choices, json extra = json::object()) {
    json j = {
        {"id", "chatcmpl-mock"}, {"object", "chat.completion.chunk"}, {"created", 0}, {"model", "fake-1"}, {"choices", std::move(choices)}};
    j.update(extra);
    return "data: " + j.dump() + "\n\n";
}

std::shared_ptr<const replies> make_replies(const std::string& content, long delay_ms) {
    std::vector<std::string> words;
    for (std::size_t at = 0; at < content.size();) {
        const std::size_t end = std::min(content.find(' ', at), content.size());
        if (end > at) words.push_back(content.substr(at, end - at));
        at = end + 1;
    }
    const int n = static_cast<int>(words.size());
    const json usage = {{"prompt_tokens", 1}, {"completion_tokens", n}, {"total_tokens", 1 + n}};

    auto r = std::make_shared<replies>();
    r->delay = std::chrono::milliseconds(delay_ms);
    r->completion = json{
        {"id", "chatcmpl-mock"},
        {"object", "chat.completion"},
        {"created", 0},
        {"model", "fake-1"},
        {"choices", {{{"index", 0}, {"message", {{"role", "assistant"}, {"content", content}}}, {"finish_reason", "stop"}}}},
        {"usage",
         usage}}.dump();
    r->events.push_back(event({{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"finish_reason", nullptr}}}));
    for (std::size_t i = 0; i < words.size(); ++i)
        r->events.push_back(event({{{"index", 0}, {"delta", {{"content", (i ? " " : "") + words[i]}}}, {"finish_reason", nullptr}}}));
    r->events.push_back(event({{{"index", 0}, {"delta", json::object()}, {"finish_reason", "stop"}}}));
    r->usage = event(json::array(), {{"usage", usage}});
    return r;
}

asio::awaitable<void> write_event(tcp::socket& socket, const std::string& data) {
    auto chunk = http::make_chunk(asio::buffer(data));
    co_await asio::async_write(socket, chunk, asio::use_awaitable);
}

// One SSE stream in chunked encoding; the connection stays usable for the next request.
asio::awaitable<void> stream(tcp::socket& socket, unsigned version, bool keep_alive, bool usage, std::shared_ptr<const replies> r) {
    http::response<http::empty_body> res{http::status::ok, version};
    res.set(http::field::content_type, "text/event-stream");
    res.set(http::field::cache_control, "no-cache");
    res.keep_alive(keep_alive);
    res.chunked(true);
    http::response_serializer<http::empty_body> header{res};
    co_await http::async_write_header(socket, header, asio::use_awaitable);

    std::vector<const std::string*> events;
    for (const auto& e : r->events) events.push_back(&e);
    if (usage) events.push_back(&r->usage);
    events.push_back(&r->done);

    asio::steady_timer timer{socket.get_executor()};
    for (std::size_t i = 0; i < events.size(); ++i) {
        if (i > 0 && r->delay.count() > 0) {
            timer.expires_after(r->delay);
            co_await timer.async_wait(asio::use_awaitable);
        }
        co_await write_event(socket, *events[i]);
    }
    auto last = http::make_chunk_last();
    co_await asio::async_write(socket, last, asio::use_awaitable);
}

asio::awaitable<void> send(tcp::socket& socket, unsigned version, bool keep_alive, http::status status, std::string body) {
    http::response<http::string_body> res{status, version};
    res.set(http::field::content_type, "application/json");
    res.keep_alive(keep_alive);
    res.body() = std::move(body);
    res.prepare_payload();
    co_await http::async_write(socket, res, asio::use_awaitable);
}

// Requests on one kept-alive connection, one after the other. Spawned detached: an error (the
// client closing included) ends the coroutine, and the socket's destructor closes the connection.
asio::awaitable<void> session(tcp::socket socket, std::shared_ptr<const replies> r) {
    socket.set_option(tcp::no_delay(true)); // each event is a small write: Nagle would hold it back
    boost::beast::flat_buffer buffer;
    for (;;) {
        http::request<http::string_body> req;
        co_await http::async_read(socket, buffer, req, asio::use_awaitable);
        const bool keep_alive = req.keep_alive();
        if (req.method() != http::verb::post || req.target() != "/v1/chat/completions") {
            co_await send(socket, req.version(), keep_alive, http::status::not_found,
                          R"({"error":{"message":"not found","type":"invalid_request_error"}})");
        } else if (const json body = json::parse(req.body(), nullptr, false); !body.is_object()) {
            co_await send(socket, req.version(), keep_alive, http::status::bad_request,
                          R"({"error":{"message":"the body is not a JSON object","type":"invalid_request_error"}})");
        } else if (body.value("stream", false)) {
            const auto options = body.find("stream_options");
            const bool usage = options != body.end() && options->is_object() && options->value("include_usage", false);
            co_await stream(socket, req.version(), keep_alive, usage, r);
        } else {
            co_await send(socket, req.version(), keep_alive, http::status::ok, r->completion);
        }
        if (!keep_alive) break;
    }
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> accept(tcp::acceptor& acceptor, std::shared_ptr<const replies> r) {
    asio::steady_timer pause{acceptor.get_executor()};
    for (;;) {
        boost::system::error_code ec;
        tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec == asio::error::operation_aborted) co_return;
        if (ec) { // out of descriptors, say: let some connections finish rather than spin
            pause.expires_after(std::chrono::milliseconds(10));
            co_await pause.async_wait(asio::use_awaitable);
            continue;
        }
        asio::co_spawn(acceptor.get_executor(), session(std::move(socket), r), asio::detached);
    }
}

} // namespace

int main() {
    const char* delay = std::getenv("FAKE_OPENAI_CHUNK_DELAY_MS");
    const char* content = std::getenv("FAKE_OPENAI_CONTENT");
    const auto r = make_replies(content ? content : "hello from the mock", delay ? std::atol(delay) : 0);

    asio::io_context ioc{1};
    const tcp::endpoint endpoint{asio::ip::make_address_v4("127.0.0.1"), 0};
    tcp::acceptor acceptor{ioc};
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind(endpoint);
    acceptor.listen(65535); // thousands of streams connect at once; the kernel caps it at somaxconn
    asio::co_spawn(ioc, accept(acceptor, r), asio::detached);

    asio::signal_set signals{ioc, SIGTERM, SIGINT};
    signals.async_wait([&ioc](const boost::system::error_code&, int) { ioc.stop(); });
    // A blocking reader rather than a descriptor on the loop: stdin may be a file or a terminal,
    // which epoll refuses or whose O_NONBLOCK would leak to the shell. EOF becomes a SIGTERM.
    std::thread([] {
        for (char c; std::cin.get(c);) {}
        kill(getpid(), SIGTERM);
    }).detach();

    std::printf("{\"port\":%d}\n", acceptor.local_endpoint().port());
    std::fflush(stdout);
    ioc.run();
}
