// Embedding, second way (docs/embedding.md): chatkit inside an application's own Beast server, on
// the io_context the application creates and runs. The application accepts, reads each request
// and routes it; the paths it gives chatkit go to chatkit::beast_handler, which writes the answer
// (a stream's events as they come) on the application's stream. The test serves it on a free
// port of 127.0.0.1.
#include "memory_store.hpp"
#include "openai_stream_text.hpp"

#include <chatkit/beast_handler.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/service.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

// The application's access log, as a chatkit middleware: `finish` runs once a request's last
// byte is out, or once its client has left.
class access_log {
public:
    struct entry {
        int status;
        bool streamed, client_left;
        int completion_tokens;
    };
    std::optional<chatkit::http_response> before(chatkit::http_request&, chatkit::no_context&) { return std::nullopt; }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
    void finish(const chatkit::http_request&, const chatkit::response_summary& s, chatkit::no_context&) {
        std::lock_guard lock{state_->mutex};
        state_->entries.push_back({s.status, s.streamed, s.client_left, s.usage.completion_tokens});
    }
    std::vector<entry> entries() const {
        std::lock_guard lock{state_->mutex};
        return state_->entries;
    }

private:
    struct state {
        std::mutex mutex;
        std::vector<entry> entries;
    };
    std::shared_ptr<state> state_ = std::make_shared<state>();
};

using chat_service = chatkit::service<chatkit::echo_provider, example::memory_store, chatkit::no_cache, access_log>;

// One connection of the application's server: its own routes, and chatkit's for /v1/ and /health.
asio::awaitable<void> session(beast::tcp_stream stream, chatkit::beast_handler<chat_service>* chat) {
    beast::flat_buffer buffer;
    for (;;) {
        http::request<http::string_body> req;
        stream.expires_after(std::chrono::seconds(30));
        auto [ec, n] = co_await http::async_read(stream, buffer, req, use_nothrow);
        if (ec) break; // the client closed the connection (or sent garbage, or idled too long)
        const std::string_view path = req.target();
        if (path.starts_with("/v1/") || path == "/health") {
            if (!co_await chat->serve(stream, std::move(req))) break;
            continue;
        }
        http::response<http::string_body> res{path == "/" ? http::status::ok : http::status::not_found, req.version()};
        res.set(http::field::content_type, "text/plain");
        res.body() = path == "/" ? "the shop's home page" : "not here";
        res.keep_alive(req.keep_alive());
        res.prepare_payload();
        auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
        if (wec || !res.keep_alive()) break;
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> accept_loop(tcp::acceptor* acceptor, chatkit::beast_handler<chat_service>* chat) {
    for (;;) {
        auto [ec, socket] = co_await acceptor->async_accept(use_nothrow);
        if (ec) co_return; // closed: the application is stopping
        asio::co_spawn(acceptor->get_executor(), session(beast::tcp_stream{std::move(socket)}, chat), asio::detached);
    }
}

std::string chat_body(bool stream, const std::string& text = "two words") {
    return nlohmann::json{{"model", "echo-1"}, {"stream", stream}, {"messages", {{{"role", "user"}, {"content", text}}}}}.dump();
}

} // namespace

TEST_CASE("chatkit inside the application's own Beast server answers on the application's io_context") {
    // What the application owns: the service, the io_context and the one thread that runs it, the
    // acceptor and the sessions. What chatkit owns: the handler's worker pool.
    chatkit::echo_options slow;
    slow.delay_per_word = std::chrono::milliseconds(20); // a stream the client can leave midway
    chat_service chat{chatkit::echo_provider{slow}, example::memory_store{}, chatkit::no_cache{}, access_log{}};
    asio::io_context ioc{1};
    std::vector<access_log::entry> log;
    {
        chatkit::beast_handler_options options;
        options.workers = 4;
        chatkit::beast_handler<chat_service> handler{chat, ioc, options};
        tcp::acceptor acceptor{ioc, {asio::ip::make_address("127.0.0.1"), 0}};
        const int port = acceptor.local_endpoint().port();
        asio::co_spawn(ioc, accept_loop(&acceptor, &handler), asio::detached);
        std::thread loop{[&ioc] { ioc.run(); }};

        {
            httplib::Client client{"127.0.0.1", port};
            client.set_keep_alive(true); // every request below on one connection, through one session

            auto home = client.Get("/");
            REQUIRE(home);
            CHECK(home->status == 200);
            CHECK(home->body == "the shop's home page"); // the application's route, not chatkit's GET /

            auto health = client.Get("/health");
            REQUIRE(health);
            CHECK(health->status == 200);
            CHECK(nlohmann::json::parse(health->body)["status"] == "ok");

            auto whole = client.Post("/v1/chat/completions", chat_body(false), "application/json");
            REQUIRE(whole);
            CHECK(whole->status == 200);
            CHECK(nlohmann::json::parse(whole->body)["choices"][0]["message"]["content"] == "two words");

            auto streamed = client.Post("/v1/chat/completions", chat_body(true), "application/json");
            REQUIRE(streamed);
            CHECK(streamed->status == 200);
            CHECK(streamed->get_header_value("Transfer-Encoding") == "chunked");
            const auto events = example::openai_stream_text(streamed->body);
            CHECK(events.text == "two words");
            CHECK(events.done);

            auto missing = client.Get("/nowhere");
            REQUIRE(missing);
            CHECK(missing->status == 404); // the application's own 404
        }

        // A client that leaves a long stream after its first event: the provider is stopped and
        // `finish` hears that the client left.
        {
            std::string words;
            for (int i = 0; i < 500; ++i) words += "word ";
            asio::io_context client_ioc;
            tcp::socket leaver{client_ioc};
            leaver.connect({asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
            http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
            req.set(http::field::host, "127.0.0.1");
            req.set(http::field::content_type, "application/json");
            req.body() = chat_body(true, words);
            req.prepare_payload();
            http::write(leaver, req);
            std::string received;
            asio::read_until(leaver, asio::dynamic_buffer(received), "data: ");
            leaver.close();
        }

        // The application stops: no new connections; the sessions end as their clients close, and
        // run() returns once nothing is left (no request in flight: the handler holds work while
        // one is).
        asio::post(ioc, [&acceptor] { acceptor.close(); });
        loop.join();
        log = chat.middleware<access_log>().entries();
    } // the handler (its worker pool) goes after run() has returned

    REQUIRE(log.size() == 4); // /health, two chats, the stream the client left; never the application's routes
    CHECK(log[0].status == 200);
    CHECK(log[2].streamed);
    CHECK_FALSE(log[2].client_left);
    CHECK(log[3].streamed);
    CHECK(log[3].client_left);
    CHECK(log[3].completion_tokens < 500); // stopped midway, not run to its end
}
