// The Anthropic provider against a fake Messages API over real HTTP, in both forms: the request
// body and headers, answers and event streams cut at any byte, stop reasons, usage with cache
// tokens, retries (429, 529) and errors with the key never echoed.
#include "../support/fake_anthropic.hpp"

#include <chatkit/anthropic_provider.hpp>
#include <chatkit/async_anthropic_provider.hpp>
#include <chatkit/beast_client.hpp>

#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

#include "../support/collected_deltas.hpp"
#include "../support/on_asio_loop.hpp"

#include <limits>

using nlohmann::json;
using test_support::anthropic_error_reply;
using test_support::fake_anthropic;
using test_support::fake_anthropic_reply;

namespace {

constexpr const char* secret_key = "sk-ant-test-SECRET-0123456789";

chatkit::anthropic_options options_for(const fake_anthropic& fake) {
    chatkit::anthropic_options o;
    o.base_url = fake.base_url();
    o.api_key = secret_key;
    o.model = "claude-fake";
    o.read_timeout = std::chrono::milliseconds(2000);
    o.max_retries = 2;
    return o;
}

chatkit::chat_request ask(std::string text) {
    chatkit::chat_request r;
    r.messages = {{chatkit::role::system, "be brief", {}}, {chatkit::role::user, std::move(text), {}}};
    r.request_id = "req-123";
    return r;
}

using collected = test_support::collected_deltas;

struct async_anthropic : test_support::on_asio_loop<chatkit::async_anthropic_provider> {
    explicit async_anthropic(chatkit::anthropic_options o) : on_asio_loop(std::move(o), std::make_shared<chatkit::beast_client>()) {}
};

} // namespace

// What every provider must do (chatkit/testing/provider.hpp), against the fake upstream: answers,
// streams in order, stops when the client leaves, refuses what it cannot honour as a value, serves
// threads at once.
TEMPLATE_TEST_CASE("the Anthropic provider passes the provider conformance checks", "", chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    chatkit::testing::provider_kit_options options;
    auto logit_bias = options.request;
    logit_bias.extensions["logit_bias"] = {{"50256", -100}};
    options.refusals = {{"an unhonoured 'logit_bias'", logit_bias, chatkit::error_kind::invalid_request}};
    chatkit::testing::check_provider_conformance<TestType>([&fake] { return TestType{options_for(fake)}; }, options);
}

TEMPLATE_TEST_CASE("a completion goes out as a Messages API request and comes back with usage", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    auto r = ask("hello there");
    r.messages = {{chatkit::role::system, "be brief", {}},  {chatkit::role::user, "first", {}},
                  {chatkit::role::user, "hello there", {}}, {chatkit::role::system, "and kind", {}},
                  {chatkit::role::assistant, "noted", {}},  {chatkit::role::user, "hello there", {}}};
    r.temperature = 0.3;
    r.max_tokens = 50;
    r.user_id = "alice";
    r.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    r.extensions = {{"stop", "END"}, {"top_p", 0.9}};
    auto c = anthropic.complete(r);
    REQUIRE(c);
    CHECK(c->content == "echo: hello there");
    CHECK(c->model == "claude-fake");
    CHECK(c->finish_reason == "stop");
    CHECK(c->usage.prompt_tokens == 2);
    CHECK(c->usage.completion_tokens == 3);
    CHECK(c->usage.cached_tokens == 0);

    const auto sent = fake.requests().at(0);
    CHECK(sent.body["model"] == "claude-fake");
    CHECK(sent.body["system"] == "be brief\n\nand kind");
    CHECK(sent.body["messages"] == json::parse(R"([{"role":"user","content":"first\n\nhello there"},)"
                                               R"({"role":"assistant","content":"noted"},{"role":"user","content":"hello there"}])"));
    CHECK(sent.body["max_tokens"] == 50);
    CHECK(sent.body["temperature"] == 0.3);
    CHECK(sent.body["top_p"] == 0.9);
    CHECK(sent.body["stop_sequences"] == json::array({"END"}));
    CHECK(sent.body["metadata"]["user_id"] == "alice");
    CHECK_FALSE(sent.body.contains("stream"));
    CHECK(sent.headers.find("x-api-key")->second == secret_key);
    CHECK(sent.headers.find("anthropic-version")->second == "2023-06-01");
    CHECK(sent.headers.find("Content-Type")->second == "application/json");
    CHECK(sent.headers.find("X-Request-ID")->second == "req-123");
    CHECK(sent.headers.find("traceparent")->second == r.traceparent);
    CHECK_FALSE(sent.headers.contains("Authorization"));
}

TEMPLATE_TEST_CASE("max_tokens, which the Messages API requires, is the configured default when the request has none", "",
                   chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    auto o = options_for(fake);
    o.default_max_tokens = 777;
    TestType anthropic{o};
    auto r = ask("hi");
    r.traceparent.clear();
    REQUIRE(anthropic.complete(r));
    CHECK(fake.requests().at(0).body["max_tokens"] == 777);
    CHECK_FALSE(fake.requests().at(0).headers.contains("traceparent"));
}

TEMPLATE_TEST_CASE("a model alias names the current upstream model", "", chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    for (const char* alias : {"claude-3-sonnet", "claude-3.5-sonnet"}) {
        auto r = ask("hi");
        r.model = alias;
        auto c = anthropic.complete(r);
        REQUIRE(c);
        CHECK(fake.requests().back().body["model"] == "claude-sonnet-4-5");
        CHECK(c->model == "claude-sonnet-4-5");
    }
}

TEMPLATE_TEST_CASE("usage counts cache writes and reads in the prompt and reports the reads as cached", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    fake_anthropic_reply cached;
    cached.cache_creation_input_tokens = 100;
    cached.cache_read_input_tokens = 1000;
    fake.script({cached, cached});
    auto c = anthropic.complete(ask("one two three"));
    REQUIRE(c);
    CHECK(c->usage.prompt_tokens == 3 + 100 + 1000);
    CHECK(c->usage.cached_tokens == 1000);
    CHECK(c->usage.completion_tokens == 4);

    collected got;
    auto s = anthropic.stream(ask("one two three"), got.sink());
    REQUIRE(s);
    CHECK(s->usage.prompt_tokens == 3 + 100 + 1000);
    CHECK(s->usage.cached_tokens == 1000);
    CHECK(s->usage.completion_tokens == 4);
}

TEMPLATE_TEST_CASE("a stream arrives delta by delta with usage, however the upstream cuts its bytes", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    for (std::size_t chunk_bytes : {0u, 1u, 2u, 3u, 7u, 64u}) {
        for (bool thinking : {false, true}) {
            fake_anthropic_reply reply;
            reply.chunk_bytes = chunk_bytes;
            reply.thinking_block = thinking; // thinking and signature deltas are no answer text, and no failure
            fake.script({reply});
            collected got;
            auto c = anthropic.stream(ask("one two three"), got.sink());
            REQUIRE(c);
            CHECK(got.deltas == std::vector<std::string>{"echo:", " one", " two", " three"});
            CHECK(c->content == got.joined());
            CHECK(c->usage.prompt_tokens == 3);
            CHECK(c->usage.completion_tokens == 4);
            CHECK(c->finish_reason == "stop");
            CHECK(c->model == "claude-fake");
        }
    }
    const auto sent = fake.requests().back();
    CHECK(sent.body["stream"] == true);
    CHECK(sent.headers.find("Accept")->second == "text/event-stream");
}

TEMPLATE_TEST_CASE("stop reasons map to chatkit's finish reasons, answered whole or streamed", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    const std::vector<std::pair<std::string, std::string>> cases = {{"end_turn", "stop"},
                                                                    {"stop_sequence", "stop"},
                                                                    {"max_tokens", "length"},
                                                                    {"tool_use", "tool_calls"},
                                                                    {"refusal", "content_filter"}};
    for (const auto& [stop_reason, finish_reason] : cases) {
        fake_anthropic_reply reply;
        reply.stop_reason = stop_reason;
        fake.script({reply, reply});
        auto c = anthropic.complete(ask("hi"));
        REQUIRE(c);
        CHECK(c->finish_reason == finish_reason);
        collected got;
        auto s = anthropic.stream(ask("hi"), got.sink());
        REQUIRE(s);
        CHECK(s->finish_reason == finish_reason);
    }
}

TEMPLATE_TEST_CASE("a 429 is retried after the upstream's retry-after, then succeeds", "", chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    auto limited = anthropic_error_reply(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit");
    limited.headers = {{"retry-after", "0.02"}};
    fake.script({limited});
    auto c = anthropic.complete(ask("hi"));
    REQUIRE(c);
    CHECK(c->content == "echo: hi");
    CHECK(fake.requests().size() == 2);

    // Once the retries are spent, the client gets a 429 with the upstream's message and a Retry-After.
    fake.script({limited, limited, limited});
    auto refused = anthropic.complete(ask("hi"));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().kind == chatkit::error_kind::rate_limited);
    CHECK(refused.error().message == "Number of request tokens has exceeded your per-minute rate limit");
    CHECK(refused.error().retry_after_seconds == 1);
    CHECK(fake.requests().size() == 5);
}

TEMPLATE_TEST_CASE("a 529 overloaded_error is retried, persistent overload becomes a 502 naming it", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    auto overloaded = anthropic_error_reply(529, "overloaded_error", "Overloaded");
    overloaded.headers = {{"retry-after-ms", "1"}};
    fake.script({overloaded});
    collected got;
    auto streamed = anthropic.stream(ask("x y"), got.sink());
    REQUIRE(streamed);
    CHECK(got.joined() == "echo: x y");
    CHECK(fake.requests().size() == 2);

    fake.script({overloaded, overloaded, overloaded});
    auto c = anthropic.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(chatkit::http_status(c.error().kind) == 502);
    CHECK(c.error().message == "upstream overloaded (HTTP 529): Overloaded");
    CHECK(c.error().code == "overloaded_error");
    CHECK(fake.requests().size() == 5);

    auto failing = anthropic_error_reply(500, "api_error", "Internal server error");
    failing.headers = {{"retry-after-ms", "1"}};
    fake.script({failing});
    CHECK(anthropic.complete(ask("hi")));
    CHECK(fake.requests().size() == 7);
}

TEMPLATE_TEST_CASE("a 401 is not retried, says the credentials were refused, and never echoes the key", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    fake.script({anthropic_error_reply(401, "authentication_error", std::string{"invalid x-api-key: "} + secret_key)});
    auto denied = anthropic.complete(ask("hi"));
    REQUIRE_FALSE(denied);
    CHECK(chatkit::http_status(denied.error().kind) == 502);
    CHECK(denied.error().code == "upstream_credentials");
    CHECK(denied.error().message == "upstream rejected the credentials: invalid x-api-key: [redacted]");
    CHECK(fake.requests().size() == 1);

    fake.script({anthropic_error_reply(403, "permission_error", "Your API key does not have permission to use the specified resource.")});
    CHECK_FALSE(anthropic.complete(ask("hi")));
    CHECK(fake.requests().size() == 2);

    fake.script({anthropic_error_reply(400, "invalid_request_error", "messages.0.content: text content blocks must be non-empty")});
    auto bad = anthropic.complete(ask("hi"));
    REQUIRE_FALSE(bad);
    CHECK(bad.error().kind == chatkit::error_kind::invalid_request);
    CHECK(bad.error().message == "messages.0.content: text content blocks must be non-empty");

    fake.script({anthropic_error_reply(404, "not_found_error", "model: claude-9")});
    auto missing = anthropic.complete(ask("hi"));
    REQUIRE_FALSE(missing);
    CHECK(missing.error().kind == chatkit::error_kind::not_found);
    CHECK(fake.requests().size() == 4); // none of these is retried
}

TEMPLATE_TEST_CASE("without a key the upstream refuses the call and the provider says so", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    auto o = options_for(fake);
    o.api_key.clear();
    TestType anthropic{o};
    auto c = anthropic.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "upstream_credentials");
    CHECK(c.error().message.find("x-api-key header is required") != std::string::npos);
}

TEMPLATE_TEST_CASE("an error event mid-stream fails the stream after its deltas, and is retried before any", "",
                   chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    fake_anthropic_reply late;
    late.error_after_first_delta = true;
    fake.script({late});
    collected got;
    auto c = anthropic.stream(ask("a b"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::upstream);
    CHECK(c.error().code == "overloaded_error");
    CHECK(c.error().message == "upstream error mid-stream (overloaded_error): Overloaded");
    CHECK(got.joined() == "echo:");
    CHECK(fake.requests().size() == 1); // not retried: bytes had reached the client

    fake_anthropic_reply early;
    early.error_before_content = true;
    fake.script({early});
    collected again;
    auto retried = anthropic.stream(ask("a b"), again.sink());
    REQUIRE(retried);
    CHECK(again.joined() == "echo: a b");
    CHECK(fake.requests().size() == 3);
}

TEMPLATE_TEST_CASE("a stream that ends without message_stop is an error, never a silent truncation", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    auto o = options_for(fake);
    o.max_retries = 0;
    TestType anthropic{o};
    fake_anthropic_reply unfinished;
    unfinished.end_without_message_stop = true;
    fake.script({unfinished});
    collected got;
    auto c = anthropic.stream(ask("a b"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "upstream_truncated");
    CHECK(got.joined() == "echo: a b");

    fake_anthropic_reply dropped;
    dropped.break_after_events = 4; // message_start, content_block_start, ping, "echo:"; then the connection drops
    fake.script({dropped});
    collected partial;
    auto broken = anthropic.stream(ask("a b"), partial.sink());
    REQUIRE_FALSE(broken);
    CHECK(broken.error().kind == chatkit::error_kind::upstream);
    CHECK(partial.joined() == "echo:");
}

TEMPLATE_TEST_CASE("tools, tool_choice and the tool-call history go upstream in Anthropic's form", "", chatkit::anthropic_provider,
                   async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    auto r = ask("weather in Paris?");
    r.extensions = {
        {"tools",
         json::array({{{"type", "function"},
                       {"function", {{"name", "get_weather"}, {"description", "the weather"}, {"parameters", {{"type", "object"}}}}}},
                      {{"type", "function"}, {"function", {{"name", "get_time"}}}}})},
        {"tool_choice", "required"},
        {"parallel_tool_calls", false}};
    r.messages.push_back(
        {chatkit::role::assistant,
         "let me look",
         {{"tool_calls",
           json::array(
               {{{"id", "call_a"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Paris"})"}}}},
                {{"id", "call_b"}, {"type", "function"}, {"function", {{"name", "get_time"}, {"arguments", ""}}}}})}}});
    r.messages.push_back({chatkit::role::tool, "sunny", {{"tool_call_id", "call_a"}}});
    r.messages.push_back({chatkit::role::tool, "noon", {{"tool_call_id", "call_b"}}});
    r.messages.push_back({chatkit::role::user, "and tomorrow?", {}});
    auto c = anthropic.complete(r);
    REQUIRE(c); // the fake, like the API, refuses tool results that answer no tool_use just before
    const auto sent = fake.requests().back().body;
    CHECK(sent["tools"] == json::array({{{"name", "get_weather"}, {"description", "the weather"}, {"input_schema", {{"type", "object"}}}},
                                        {{"name", "get_time"}, {"input_schema", {{"type", "object"}}}}}));
    CHECK(sent["tool_choice"] == json{{"type", "any"}, {"disable_parallel_tool_use", true}});
    REQUIRE(sent["messages"].size() == 3);
    CHECK(sent["messages"][1] == json{{"role", "assistant"},
                                      {"content",
                                       {{{"type", "text"}, {"text", "let me look"}},
                                        {{"type", "tool_use"}, {"id", "call_a"}, {"name", "get_weather"}, {"input", {{"city", "Paris"}}}},
                                        {{"type", "tool_use"}, {"id", "call_b"}, {"name", "get_time"}, {"input", json::object()}}}}});
    CHECK(sent["messages"][2] == json{{"role", "user"},
                                      {"content",
                                       {{{"type", "tool_result"}, {"tool_use_id", "call_a"}, {"content", "sunny"}},
                                        {{"type", "tool_result"}, {"tool_use_id", "call_b"}, {"content", "noon"}},
                                        {{"type", "text"}, {"text", "and tomorrow?"}}}}});
    CHECK(c->content == "tool said: sunnynoon");

    r.extensions = {{"tools", r.extensions["tools"]},
                    {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}},
                    {"prompt_cache_key", "session-1"},
                    {"safety_identifier", "user-1"}}; // hints Codex sends: accepted, not relayed
    REQUIRE(anthropic.complete(r));
    CHECK(fake.requests().back().body["tool_choice"] == json{{"type", "tool"}, {"name", "get_time"}});
    CHECK_FALSE(fake.requests().back().body.contains("prompt_cache_key"));
}

TEMPLATE_TEST_CASE("a tool_use answer comes back as OpenAI tool_calls, answered whole or streamed in pieces", "",
                   chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    const json expected = {{{"id", "toolu_fake_1"},
                            {"type", "function"},
                            {"function", {{"name", "get_weather"}, {"arguments", R"({"q":"weather in Oslo?"})"}}}}};

    auto whole = anthropic.complete(r);
    REQUIRE(whole);
    CHECK(whole->finish_reason == "tool_calls");
    CHECK(whole->content.empty());
    CHECK(whole->extra["tool_calls"] == expected);

    for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{7}}) {
        fake_anthropic_reply pieces;
        pieces.chunk_bytes = cut;
        fake.script({pieces});
        collected deltas;
        auto streamed = anthropic.stream(r, deltas.sink());
        REQUIRE(streamed);
        CHECK(deltas.joined().empty());
        CHECK(streamed->finish_reason == "tool_calls");
        CHECK(streamed->extra["tool_calls"] == expected);
        CHECK(streamed->usage.completion_tokens == 9);
    }
}

TEST_CASE("the async provider passes a tool_use block on as it streams: named first, then its input_json_delta fragments") {
    fake_anthropic fake;
    async_anthropic anthropic{options_for(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    collected got;
    auto streamed = anthropic.stream(r, got.sink(), got.tool_sink());
    REQUIRE(streamed);
    REQUIRE(got.tool_pieces.size() >= 2);
    CHECK(got.tool_pieces[0].id == "toolu_fake_1");
    CHECK(got.tool_pieces[0].name == "get_weather");
    CHECK(got.tool_pieces[0].arguments.empty()); // content_block_start carries no input yet
    for (const auto& p : got.tool_pieces) CHECK(p.index == 0);
    CHECK(got.arguments_of(0) == R"({"q":"weather in Oslo?"})");
    CHECK(streamed->extra["tool_calls"][0]["function"]["arguments"] == got.arguments_of(0));
}

TEMPLATE_TEST_CASE("fields and messages Anthropic cannot take are refused with a 400 naming them, before any call", "",
                   chatkit::anthropic_provider, async_anthropic) {
    fake_anthropic fake;
    TestType anthropic{options_for(fake)};
    auto refused = [&](chatkit::chat_request r) {
        auto c = anthropic.complete(r);
        REQUIRE_FALSE(c);
        CHECK(c.error().kind == chatkit::error_kind::invalid_request);
        return c.error().param;
    };
    auto r = ask("hi");
    r.extensions = {{"logprobs", true}};
    CHECK(refused(r) == "logprobs");
    r.extensions = {{"functions", json::array()}};
    CHECK(refused(r) == "functions");
    r.extensions = {{"tools", json::array({{{"type", "web_search"}}})}};
    CHECK(refused(r) == "tools[0]");

    r = ask("hi");
    r.messages.push_back({chatkit::role::assistant, "", {{"tool_calls", json::array()}}});
    CHECK(refused(r) == "messages[2].tool_calls");
    r = ask("hi");
    r.messages.push_back({chatkit::role::assistant,
                          "",
                          {{"tool_calls", json::array({{{"id", "c"}, {"function", {{"name", "f"}, {"arguments", "[1]"}}}}})}}});
    CHECK(refused(r) == "messages[2].tool_calls[0].function.arguments");
    r = ask("hi");
    r.messages[1].extra = {{"name", "bob"}};
    CHECK(refused(r) == "messages[1].name");
    r = ask("hi");
    r.messages.push_back({chatkit::role::tool, "42", nullptr});
    CHECK(refused(r) == "messages[2].tool_call_id");

    r = ask("hi");
    r.temperature = 1.5;
    CHECK(refused(r) == "temperature");
    CHECK(fake.requests().empty());
    CHECK(anthropic.health().ok);
}

TEMPLATE_TEST_CASE("an unreachable upstream is retried, reported as 502, and marks the provider down", "", chatkit::anthropic_provider,
                   async_anthropic) {
    chatkit::anthropic_options o;
    {
        fake_anthropic gone; // take a free port, then free it
        o.base_url = gone.base_url();
    }
    o.api_key = secret_key;
    o.max_retries = 1;
    TestType anthropic{o};
    for (int i = 0; i < 3; ++i) {
        auto c = anthropic.complete(ask("hi"));
        REQUIRE_FALSE(c);
        CHECK(c.error().code == "upstream_unreachable");
    }
    CHECK_FALSE(anthropic.health().ok);
    CHECK_THROWS_AS(chatkit::anthropic_provider(chatkit::anthropic_options{.base_url = "ftp://x"}), std::invalid_argument);
}

TEST_CASE("a stream's usage keeps each input part message_delta leaves out, and unknown events and non-text deltas are skipped") {
    using wire = chatkit::detail::anthropic_wire;
    std::string text;
    const chatkit::delta_sink sink = [&text](std::string_view d) { return text.append(d), true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    parser.feed(R"(event: message_start
data: {"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":5,"cache_creation_input_tokens":10,"cache_read_input_tokens":100,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}

event: a_future_event
data: {"type":"a_future_event","whatever":true}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"hi"}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":5,"cache_read_input_tokens":null,"output_tokens":7}}

event: message_stop
data: {"type":"message_stop"}

)",
                reader);
    const wire w{chatkit::anthropic_options{}};
    auto c = w.finish_stream(reader, "sk-ant-key");
    REQUIRE(c);
    CHECK(text == "hi");
    CHECK(c->content == "hi");
    CHECK(c->model == "claude-x");
    CHECK(c->finish_reason == "length");
    CHECK(c->usage.prompt_tokens == 5 + 10 + 100);
    CHECK(c->usage.cached_tokens == 100);
    CHECK(c->usage.completion_tokens == 7);
}

TEST_CASE("fields of an unexpected type in a stream, an answer or an error are never thrown on") {
    using wire = chatkit::detail::anthropic_wire;
    std::string text;
    const chatkit::delta_sink sink = [&text](std::string_view d) { return text.append(d), true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    REQUIRE_NOTHROW(
        parser.feed("data: {\"type\":5}\n\n"
                    "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":7,\"text\":\"x\"}}\n\n"
                    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":1},\"usage\":{\"output_tokens\":\"many\"}}\n\n"
                    "data: {\"type\":\"error\",\"error\":{\"type\":{},\"message\":[1]}}\n\n",
                    reader));
    CHECK(text.empty());
    REQUIRE(reader.broken);
    CHECK(*reader.broken == "upstream error mid-stream (error): unknown");

    const wire w{chatkit::anthropic_options{}};
    auto answer = w.parse_answer(
        R"({"content":[{"type":1,"text":"no"},{"type":"text","text":"yes"}],"stop_reason":null,"usage":{"input_tokens":-3}})");
    REQUIRE(answer);
    CHECK(answer->content == "yes");
    CHECK(answer->usage.prompt_tokens == 0);
    CHECK_FALSE(w.parse_answer("[]"));

    const std::vector<std::pair<std::string, std::string>> no_headers;
    const auto f = w.status_failure(500, R"({"type":"error","error":{"type":3,"message":{"a":1}}})", no_headers, "sk-ant-key");
    CHECK(f.e.code == "upstream_500");
    CHECK(f.e.message == "upstream error (HTTP 500): upstream answered HTTP 500");
    CHECK(f.retryable);
}

TEST_CASE("usage counts each as large as an int add up to a total that saturates instead of overflowing") {
    // A fuzzer finding (anthropic_upstream_fuzzer): the stream's counts are clamped to an int each,
    // and their sum, the total, overflowed.
    using wire = chatkit::detail::anthropic_wire;
    const chatkit::delta_sink sink = [](std::string_view) { return true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    parser.feed("event: message_start\n"
                "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5555555555555555555,"
                "\"output_tokens\":1}}}\n\n"
                "event: message_delta\n"
                "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9999999999}}\n\n"
                "event: message_stop\n"
                "data: {\"type\":\"message_stop\"}\n\n",
                reader);
    const wire w{chatkit::anthropic_options{}};
    auto c = w.finish_stream(reader, "sk-ant-key");
    REQUIRE(c);
    constexpr int most = std::numeric_limits<int>::max();
    CHECK(c->usage.prompt_tokens == most);
    CHECK(c->usage.completion_tokens == most);
    CHECK(c->usage.total_tokens() == most);
    CHECK(json(c->usage)["total_tokens"] == most);
}
