// Embedding, third way (docs/embedding.md): the service called from application code, with no
// HTTP server at all. `chat()` is the typed call (cache, provider, store); `handle()` runs a
// neutral request through the whole lifecycle (middlewares, routes, the `finish` hooks), the
// same as a request off a socket. Both run on the calling thread.
#include "memory_store.hpp"
#include "openai_stream_text.hpp"
#include "version_gate.hpp"

#include <chatkit/echo_provider.hpp>
#include <chatkit/service.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <utility>

namespace {

using chat_service = chatkit::service<chatkit::echo_provider, example::memory_store, chatkit::no_cache, example::version_gate>;

// A typed question and its answer: what a job, a CLI or a test of the application calls. The
// middlewares do not run (no admission, no limits, no finish hooks); the store keeps the exchange.
std::string ask(chat_service& chat, std::string user, std::string question) {
    chatkit::chat_request req;
    req.user_id = std::move(user);
    req.messages = {{chatkit::role::user, std::move(question)}};
    auto answer = chat.chat(std::move(req));
    if (!answer) return "failed: " + answer.error().message;
    return answer->content;
}

// The same service reached with a request as an adapter builds it, here an OpenAI chat with
// `stream: true`: the chunks come to `write` on this thread, and the middlewares' `finish` runs
// once the last one has been written.
std::string ask_streamed(chat_service& chat, const std::string& question) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers.emplace("Content-Type", "application/json");
    req.body = nlohmann::json{{"stream", true}, {"messages", {{{"role", "user"}, {"content", question}}}}}.dump();
    auto res = chat.handle(req);
    if (!res.is_stream()) return res.body; // an error: a JSON envelope
    std::string events;
    res.stream(
        [&events](std::string_view chunk) {
            events += chunk;
            return true; // false: the reader has gone, and the provider stops
        },
        res.meta);
    return events;
}

} // namespace

TEST_CASE("the service answers application code directly, typed or as a request, with no HTTP server") {
    chat_service chat{chatkit::echo_provider{}, example::memory_store{}, chatkit::no_cache{}, example::version_gate{}};

    SECTION("a typed chat answers and is stored in the user's history, without the middlewares") {
        CHECK(ask(chat, "ada", "hello there") == "hello there");
        auto page = chat.store().history({"ada", 10, {}});
        REQUIRE(page);
        REQUIRE(page->messages.size() == 2);
        CHECK(page->messages[0].content == "hello there");
        CHECK(page->messages[1].role == chatkit::role::assistant);
        CHECK(chat.middleware<example::version_gate>().answered() == 0);
    }

    SECTION("a streamed request runs the whole lifecycle on the caller's thread") {
        const auto events = example::openai_stream_text(ask_streamed(chat, "streamed words"));
        CHECK(events.text == "streamed words");
        CHECK(events.done);
        CHECK(chat.middleware<example::version_gate>().answered() == 1); // finish ran before stream() returned
    }

    SECTION("GET /health as a request") {
        chatkit::http_request req;
        req.method = "GET";
        req.path = "/health";
        const auto res = chat.handle(req);
        CHECK(res.status == 200);
        CHECK(nlohmann::json::parse(res.body)["status"] == "ok");
    }
}
