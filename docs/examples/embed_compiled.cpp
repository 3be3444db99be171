// Embedding, compiled once (docs/embedding.md): a server that serves a chatkit::any_service. This
// translation unit includes the adapter and chatkit/any_service.hpp, but no plugin: the service's
// pipeline was compiled once, in compiled_service.cpp, and nothing of it is compiled here again.
#include "compiled_service.hpp"
#include "openai_stream_text.hpp"

#include <chatkit/beast_server.hpp>
#include <chatkit/httplib_handler.hpp>

#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace {

std::string chat_body(bool stream) {
    return nlohmann::json{{"model", "echo-1"}, {"stream", stream}, {"messages", {{{"role", "user"}, {"content", "compiled once"}}}}}.dump();
}

// A chat without streaming over `client`: the answer's text, or what went wrong instead.
std::string plain_answer(httplib::Client& client) {
    auto res = client.Post("/v1/chat/completions", chat_body(false), "application/json");
    if (!res) return "no answer: " + httplib::to_string(res.error());
    if (res->status != 200) return "HTTP " + std::to_string(res->status) + ": " + res->body;
    return nlohmann::json::parse(res->body)["choices"][0]["message"].value("content", "");
}

// The statuses `finish` has recorded, once there are `n` of them: it runs after the last byte is
// out, which can be after the client has read it.
std::vector<int> finished_after(const example::finished_requests& finished, std::size_t n) {
    for (int i = 0; i < 500 && finished.statuses().size() < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return finished.statuses();
}

} // namespace

TEST_CASE("a service compiled in a translation unit of its own is served over HTTP through any_service") {
    auto chat = example::make_compiled_chat();
    chatkit::beast_options options;
    options.port = 0;
    options.loops = 1;
    options.workers = 2;
    chatkit::beast_server<chatkit::any_service> server{chat.service, options};
    const int port = server.bind();
    std::thread runner{[&server] { server.run(); }};

    httplib::Client client{"127.0.0.1", port};
    CHECK(plain_answer(client) == "compiled once");

    auto streamed = client.Post("/v1/chat/completions", chat_body(true), "application/json");
    REQUIRE(streamed);
    CHECK(streamed->status == 200);
    const auto text = example::openai_stream_text(streamed->body);
    CHECK(text.text == "compiled once");
    CHECK(text.done);

    auto refused = client.Post("/v1/chat/completions", "{not json", "application/json");
    REQUIRE(refused);
    CHECK(refused->status == 400);

    // The middleware compiled in the other translation unit ran its `finish` for each of them.
    CHECK(finished_after(*chat.finished, 3) == std::vector<int>{200, 200, 400});
    server.stop();
    runner.join();
}

TEST_CASE("an any_service is mounted on a cpp-httplib server as a service is") {
    auto chat = example::make_compiled_chat();
    httplib::Server server;
    chatkit::mount(server, chat.service);
    const int port = server.bind_to_any_port("127.0.0.1"); // listening from here: no race with the client
    std::thread runner{[&server] { server.listen_after_bind(); }};
    httplib::Client client{"127.0.0.1", port};
    CHECK(plain_answer(client) == "compiled once");
    server.stop();
    runner.join();
    CHECK(finished_after(*chat.finished, 1) == std::vector<int>{200});
}

TEST_CASE("an any_service answers on the calling thread too, and its copies serve the same service") {
    auto chat = example::make_compiled_chat();
    chatkit::any_service copy = chat.service;
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers.emplace("Content-Type", "application/json");
    req.body = chat_body(false);
    const auto res = copy.handle(req);
    CHECK(res.status == 200);
    CHECK_FALSE(req.request_id.empty()); // set on the caller's request, for its logs
    CHECK(chat.finished->statuses() == std::vector<int>{200});
}
