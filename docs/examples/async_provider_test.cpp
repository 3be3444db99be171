// Tests for the docs' asynchronous example provider: it models chatkit::async_provider and serves
// /chat and the OpenAI route, whole and streamed, through the service's async entry point and
// through the blocking handle().
#include "async_provider.hpp"

#include <chatkit/service.hpp>
#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

using nlohmann::json;

namespace {

// A sink that takes every byte at once, as an adapter whose socket never fills.
struct string_sink final : chatkit::response_sink {
    int status = 0;
    std::string body;
    void start(const chatkit::http_request&, const chatkit::http_response& res, bool streamed, callback done) override {
        status = res.status;
        if (!streamed) body = res.body;
        done(true);
    }
    void write(std::string_view chunk, callback done) override {
        body.append(chunk);
        done(true);
    }
    void end(callback done) override { done(true); }
};

chatkit::http_request post(std::string path, const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = std::move(path);
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    return req;
}

} // namespace

TEST_CASE("the async example provider answers whole and streamed through a service") {
    chatkit::service<example::async_reverse_provider> svc{example::async_reverse_provider{}};

    string_sink whole;
    chatkit::sync_wait(svc.serve(post("/chat", {{"content", "hello big world"}}), &whole));
    REQUIRE(whole.status == 200);
    CHECK(json::parse(whole.body)["content"] == "world big hello");
    CHECK(json::parse(whole.body)["usage"]["completion_tokens"] == 3);

    string_sink streamed;
    chatkit::sync_wait(svc.serve(post("/chat", {{"content", "hello big world"}, {"stream", true}}), &streamed));
    REQUIRE(streamed.status == 200);
    CHECK(streamed.body.starts_with("event: delta\ndata: {\"content\":\"world\"}\n\n"));
    CHECK(streamed.body.find("event: done") != std::string::npos);

    auto res = svc.handle(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "a b"}}}}}));
    REQUIRE(res.status == 200);
    CHECK(json::parse(res.body)["choices"][0]["message"]["content"] == "b a");
}

TEST_CASE("the async example provider stops when the request is cancelled") {
    chatkit::service<example::async_reverse_provider> svc{example::async_reverse_provider{}};
    std::stop_source stop;
    stop.request_stop();
    string_sink sink;
    chatkit::sync_wait(svc.serve(post("/chat", {{"content", "x y z"}, {"stream", true}}), &sink), chatkit::task_env{stop.get_token()});
    CHECK(sink.body.find("event: error") != std::string::npos);
    CHECK(sink.body.find("request_cancelled") != std::string::npos);
}

TEST_CASE("the async example provider passes the provider conformance checks") {
    chatkit::testing::provider_kit_options options;
    auto system_only = options.request;
    system_only.messages.pop_back();
    auto with_tools = options.request;
    with_tools.extensions["tools"] = json::array();
    options.refusals = {{"no user message", system_only}, {"an unhonoured 'tools'", with_tools}};
    // Its tasks run to their end on this thread (chatkit::sync_wait); a provider whose client needs
    // an event loop passes options.run to run them on one.
    chatkit::testing::check_provider_conformance<example::async_reverse_provider>([] { return example::async_reverse_provider{}; },
                                                                                  options);
}
