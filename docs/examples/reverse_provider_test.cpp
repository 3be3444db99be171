// Tests for the docs' example provider: it models chatkit::provider, answers correctly on its own,
// and serves POST /chat (JSON and Server-Sent Events) and the OpenAI routes inside a chatkit::service.
#include "reverse_provider.hpp"

#include <chatkit/service.hpp>
#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

using nlohmann::json;

static_assert(chatkit::provider<example::reverse_provider>);
static_assert(chatkit::provider_check<example::reverse_provider>::value);

namespace {

chatkit::chat_request ask(std::string text) {
    chatkit::chat_request r;
    r.messages = {{chatkit::role::system, "be terse"}, {chatkit::role::user, std::move(text)}};
    return r;
}

chatkit::http_request post_chat(const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/chat";
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    return req;
}

// Runs a streamed response to its end; returns the (event, data) pairs of its SSE blocks.
std::vector<std::pair<std::string, json>> sse_events(chatkit::http_response& res) {
    std::string text;
    res.stream(
        [&](std::string_view chunk) {
            text.append(chunk);
            return true;
        },
        res.meta);
    std::vector<std::pair<std::string, json>> events;
    for (std::size_t pos = 0, end; (end = text.find("\n\n", pos)) != std::string::npos; pos = end + 2) {
        const std::string block = text.substr(pos, end - pos);
        const auto newline = block.find('\n');
        REQUIRE(block.starts_with("event: "));
        REQUIRE(block.substr(newline + 1).starts_with("data: "));
        events.emplace_back(block.substr(7, newline - 7), json::parse(block.substr(newline + 7)));
    }
    return events;
}

} // namespace

TEST_CASE("reverse_provider answers with the last user message, words reversed") {
    example::reverse_provider provider;
    const auto answer = provider.complete(ask("one two  three"));
    REQUIRE(answer);
    CHECK(answer->content == "three two one");
    CHECK(answer->model == "reverse-1");
    CHECK(answer->finish_reason == "stop");
    CHECK(answer->usage.prompt_tokens == 5); // "be terse" and "one two three"
    CHECK(answer->usage.completion_tokens == 3);
    CHECK(provider.name() == "reverse");
    CHECK(provider.models() == std::vector<std::string>{"reverse-1"});
    CHECK(provider.health().ok);
}

TEST_CASE("reverse_provider reports its configured model unless the request names one") {
    example::reverse_provider provider{example::reverse_options{.model = "backwards-2"}};
    CHECK(provider.complete(ask("a b"))->model == "backwards-2");
    auto r = ask("a b");
    r.model = "chosen-by-client";
    CHECK(provider.complete(r)->model == "chosen-by-client");
}

TEST_CASE("reverse_provider honours max_tokens with finish_reason length") {
    example::reverse_provider provider;
    auto r = ask("one two three four");
    r.max_tokens = 2;
    const auto answer = provider.complete(r);
    REQUIRE(answer);
    CHECK(answer->content == "four three");
    CHECK(answer->finish_reason == "length");
}

TEST_CASE("reverse_provider without a user message returns an invalid_request error") {
    example::reverse_provider provider;
    chatkit::chat_request r;
    r.messages = {{chatkit::role::system, "nobody asked"}};
    const auto answer = provider.complete(r);
    REQUIRE_FALSE(answer);
    CHECK(answer.error().kind == chatkit::error_kind::invalid_request);
    CHECK(answer.error().param == "messages");
}

TEST_CASE("reverse_provider refuses request fields it cannot honour") {
    example::reverse_provider provider;
    auto r = ask("a b");
    r.extensions["stop"] = "\n";
    const auto answer = provider.complete(r);
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == "unsupported_parameter");
    CHECK(answer.error().param == "stop");
}

TEST_CASE("reverse_provider streams one word per delta, and the deltas join to the content") {
    example::reverse_provider provider;
    std::vector<std::string> deltas;
    const auto answer = provider.stream(ask("one two three"), [&](std::string_view d) {
        deltas.emplace_back(d);
        return true;
    });
    REQUIRE(answer);
    CHECK(deltas == std::vector<std::string>{"three", " two", " one"});
    std::string joined;
    for (const auto& d : deltas) joined += d;
    CHECK(joined == answer->content);
}

// What every provider must do, checked by the provider kit (chatkit/testing/provider.hpp): an
// answer with content, model, finish reason and usage; a stream whose deltas join to it and that
// stops when the client leaves; refusals as error values; health; concurrent calls.
TEST_CASE("reverse_provider passes the provider conformance checks") {
    chatkit::testing::provider_kit_options options; // its request: a system prompt and a sentence
    auto system_only = options.request;
    system_only.messages.pop_back();
    auto with_stop = options.request;
    with_stop.extensions["stop"] = "\n";
    options.refusals = {{"no user message", system_only}, {"an unhonoured 'stop'", with_stop}};
    chatkit::testing::check_provider_conformance<example::reverse_provider>([] { return example::reverse_provider{}; }, options);
}

TEST_CASE("composed into a service, reverse_provider answers POST /chat through handle()") {
    chatkit::service<example::reverse_provider> svc{example::reverse_provider{{.model = "reverse-test"}}};

    auto res = svc.handle(post_chat({{"user_id", "ada"}, {"content", "hello brave new world"}}));
    REQUIRE(res.status == 200);
    CHECK(res.headers.at("Content-Type") == "application/json");
    const auto body = json::parse(res.body);
    CHECK(body["content"] == "world new brave hello");
    CHECK(body["model"] == "reverse-test");
    CHECK(body["usage"] == json{{"prompt_tokens", 4}, {"completion_tokens", 4}, {"total_tokens", 8}});
    CHECK(body["id"].get<std::string>().starts_with("chatcmpl-"));
    CHECK(body["request_id"].is_string());

    const auto refused = svc.handle(post_chat({{"messages", {{{"role", "system"}, {"content", "x"}}}}}));
    CHECK(refused.status == 400);
    CHECK(json::parse(refused.body)["error"]["code"] == "no_user_message");
}

TEST_CASE("composed into a service, reverse_provider serves the OpenAI-compatible routes") {
    chatkit::service<example::reverse_provider> svc{example::reverse_provider{}};

    chatkit::http_request models;
    models.method = "GET";
    models.path = "/v1/models";
    const auto listed = svc.handle(models);
    REQUIRE(listed.status == 200);
    CHECK(json::parse(listed.body)["data"][0]["id"] == "reverse-1");

    auto req = post_chat({{"messages", {{{"role", "user"}, {"content", "one two"}}}}});
    req.path = "/v1/chat/completions";
    const auto res = svc.handle(req);
    REQUIRE(res.status == 200);
    CHECK(json::parse(res.body)["choices"][0]["message"]["content"] == "two one");

    auto with_tools = post_chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", json::array()}});
    with_tools.path = "/v1/chat/completions";
    const auto refused = svc.handle(with_tools);
    CHECK(refused.status == 400);
    CHECK(json::parse(refused.body)["error"]["param"] == "tools");
}

TEST_CASE("composed into a service, reverse_provider streams Server-Sent Events") {
    chatkit::service<example::reverse_provider> svc{example::reverse_provider{}};

    auto res = svc.handle(post_chat({{"content", "one two three"}, {"stream", true}}));
    REQUIRE(res.status == 200);
    CHECK(res.headers.at("Content-Type") == "text/event-stream");
    const auto events = sse_events(res);
    REQUIRE(events.size() == 4);
    CHECK(events[0] == std::pair<std::string, json>{"delta", {{"content", "three"}}});
    CHECK(events[1].second["content"] == " two");
    CHECK(events[2].second["content"] == " one");
    CHECK(events[3].first == "done");
    CHECK(events[3].second["content"] == "three two one");
    CHECK(events[3].second["model"] == "reverse-1");
    CHECK(res.meta.usage.completion_tokens == 3);
}

// The wiring sample_server uses for run-time choice (app.hpp): a provider_variant is itself a
// Provider, so the service is compiled once for every provider it may hold.
namespace {
using provider_type = chatkit::provider_variant<chatkit::no_provider, example::reverse_provider>;

provider_type make_provider(std::string_view configured) {
    if (configured == "reverse") return example::reverse_provider{};
    return chatkit::no_provider{};
}
} // namespace

TEST_CASE("reverse_provider joins a provider_variant chosen at run time") {
    chatkit::service<provider_type> svc{make_provider("reverse")};
    CHECK(svc.provider().name() == "reverse");
    CHECK(svc.provider().get_if<example::reverse_provider>() != nullptr);
    const auto res = svc.handle(post_chat({{"content", "left right"}}));
    REQUIRE(res.status == 200);
    CHECK(json::parse(res.body)["content"] == "right left");
}
