// Embedding, first way (docs/embedding.md): chatkit's routes on a cpp-httplib server the
// application already has, next to its own routes. The application owns the server, its threads
// and its settings; chatkit only adds handlers. The test serves it on a free port of 127.0.0.1.
#include "memory_store.hpp"
#include "openai_stream_text.hpp"

#include <chatkit/echo_provider.hpp>
#include <chatkit/httplib_handler.hpp>
#include <chatkit/service.hpp>

#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <string>
#include <thread>

namespace {

using chat_service = chatkit::service<chatkit::echo_provider, example::memory_store>;

// The application's own server: its routes first, then chatkit's for every path they leave.
void add_routes(httplib::Server& server, chat_service& chat) {
    server.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content("the shop's home page", "text/plain"); });
    server.Get("/orders/(\\d+)", [](const httplib::Request& req, httplib::Response& res) {
        res.set_content(nlohmann::json{{"order", req.matches[1].str()}}.dump(), "application/json");
    });

    chatkit::mount(server, chat); // last: cpp-httplib runs the first handler whose pattern matches
    // Optional: what cpp-httplib refuses itself (a body over the limit) in chatkit's JSON envelope.
    server.set_payload_max_length(1 << 20);
    server.set_error_handler(chatkit::httplib_error_handler(1 << 20));
}

// An application server on a free port of 127.0.0.1, listening on a thread of the test's own.
struct running_server {
    explicit running_server(chat_service& chat) {
        add_routes(server, chat);
        port = server.bind_to_any_port("127.0.0.1"); // listening from here: no race with the client
        thread = std::thread([this] { server.listen_after_bind(); });
    }
    ~running_server() { stop(); }
    void stop() {
        if (!thread.joinable()) return;
        server.stop();
        thread.join();
    }
    httplib::Server server;
    int port = 0;
    std::thread thread;
};

std::string chat_body(bool stream) {
    return nlohmann::json{{"model", "echo-1"}, {"stream", stream}, {"messages", {{{"role", "user"}, {"content", "two words"}}}}}.dump();
}

} // namespace

TEST_CASE("chatkit mounted on the application's cpp-httplib server answers next to the application's own routes") {
    chat_service chat{chatkit::echo_provider{}, example::memory_store{}};
    running_server app{chat};
    REQUIRE(app.port > 0);
    httplib::Client client{"127.0.0.1", app.port};

    SECTION("the application's routes keep their paths, also one that chatkit serves too (GET /)") {
        auto home = client.Get("/");
        REQUIRE(home);
        CHECK(home->status == 200);
        CHECK(home->body == "the shop's home page");
        auto order = client.Get("/orders/42");
        REQUIRE(order);
        CHECK(nlohmann::json::parse(order->body)["order"] == "42");
    }

    SECTION("chatkit answers /health and the OpenAI chat route, whole and streamed") {
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
        CHECK(streamed->get_header_value("Content-Type").starts_with("text/event-stream"));
        const auto events = example::openai_stream_text(streamed->body);
        CHECK(events.text == "two words");
        CHECK(events.done);
    }

    SECTION("a path neither serves gets chatkit's JSON 404") {
        auto missing = client.Get("/nowhere");
        REQUIRE(missing);
        CHECK(missing->status == 404);
        CHECK(nlohmann::json::parse(missing->body)["error"]["type"] == "not_found_error");
    }

    SECTION("a body over the application's limit is refused in chatkit's envelope") {
        auto big = client.Post("/v1/chat/completions", std::string((1 << 20) + 1, 'x'), "application/json");
        REQUIRE(big);
        CHECK(big->status == 413);
        CHECK(nlohmann::json::parse(big->body)["error"]["code"] == "body_too_large");
    }

    // The application stops its own server: listen_after_bind returns, the thread joins.
    app.stop();
    CHECK_FALSE(app.server.is_running());
    CHECK_FALSE(client.Get("/"));
}
