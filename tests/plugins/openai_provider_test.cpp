// The OpenAI provider against a fake upstream over real HTTP: the wire format both ways, retries,
// timeouts, broken and malformed streams, and error mapping with the key never echoed.
#include "../support/fake_openai.hpp"
#include "../support/untrusted_tls_server.hpp"

#include <chatkit/async_openai_provider.hpp>
#include <chatkit/beast_client.hpp>
#include <chatkit/openai_provider.hpp>
#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

#include <mutex>
#include <optional>
#include <string>
#include <vector>
#include <thread>

#include "../support/collected_deltas.hpp"
#include "../support/on_asio_loop.hpp"

using nlohmann::json;
using test_support::fake_openai;
using test_support::fake_reply;
using test_support::status_reply;

namespace {

constexpr const char* secret_key = "sk-test-SECRET-0123456789";

chatkit::openai_options options_for(const fake_openai& fake) {
    chatkit::openai_options o;
    o.base_url = fake.base_url();
    o.api_key = secret_key;
    o.model = "fake-1";
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

// Every case runs against both forms: the blocking provider over cpp-httplib, and the async one
// over chatkit::beast_client on an Asio loop. Same wire, same errors.
struct async_openai : test_support::on_asio_loop<chatkit::async_openai_provider> {
    explicit async_openai(chatkit::openai_options o, chatkit::beast_client_options c = {})
        : on_asio_loop(std::move(o), std::make_shared<chatkit::beast_client>(std::move(c))) {}
};

} // namespace

TEMPLATE_TEST_CASE("a completion goes out in the OpenAI format and comes back with usage", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    auto r = ask("hello there");
    r.temperature = 0.3;
    r.max_tokens = 50;
    r.user_id = "alice";
    r.extensions = {{"seed", 7}, {"response_format", {{"type", "text"}}}};
    auto c = openai.complete(r);
    REQUIRE(c);
    CHECK(c->content == "echo: hello there");
    CHECK(c->model == "fake-1");
    CHECK(c->finish_reason == "stop");
    CHECK(c->usage.prompt_tokens == 2);
    CHECK(c->usage.completion_tokens == 3);

    const auto sent = fake.requests().at(0);
    CHECK(sent.body["model"] == "fake-1");
    CHECK(sent.body["messages"] == json::parse(R"([{"role":"system","content":"be brief"},{"role":"user","content":"hello there"}])"));
    CHECK(sent.body["temperature"] == 0.3);
    CHECK(sent.body["max_tokens"] == 50);
    CHECK(sent.body["user"] == "alice");
    CHECK(sent.body["seed"] == 7); // passed through, not dropped
    CHECK(sent.body["response_format"]["type"] == "text");
    CHECK_FALSE(sent.body.contains("stream"));

    r.extensions = {{"max_completion_tokens", 50}}; // as a client of a reasoning model sends it
    REQUIRE(openai.complete(r));
    CHECK(fake.requests().back().body["max_completion_tokens"] == 50);
    CHECK_FALSE(fake.requests().back().body.contains("max_tokens"));
    CHECK(sent.headers.find("Authorization")->second == std::string{"Bearer "} + secret_key);
    CHECK(sent.headers.find("X-Request-ID")->second == "req-123");
}

TEMPLATE_TEST_CASE("a stream arrives delta by delta with usage, however the upstream cuts its bytes", "", chatkit::openai_provider,
                   async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    for (std::size_t chunk_bytes : {0u, 1u, 2u, 3u, 7u, 64u}) {
        fake_reply reply;
        reply.chunk_bytes = chunk_bytes;
        fake.script({reply});
        collected got;
        auto c = openai.stream(ask("one two three"), got.sink());
        REQUIRE(c);
        CHECK(got.deltas == std::vector<std::string>{"echo:", " one", " two", " three"});
        CHECK(c->content == got.joined());
        CHECK(c->usage.completion_tokens == 4);
        CHECK(c->finish_reason == "stop");
    }
    const auto sent = fake.requests().back();
    CHECK(sent.body["stream"] == true);
    CHECK(sent.body["stream_options"]["include_usage"] == true);
}

// What every provider must do (chatkit/testing/provider.hpp), against the fake upstream: answers,
// streams in order, stops when the client leaves, refuses as a value, serves threads at once.
TEMPLATE_TEST_CASE("the OpenAI provider passes the provider conformance checks", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    chatkit::testing::provider_kit_options options;
    auto refused = options.request;
    refused.messages.back().content = "fake: refuse"; // the fake answers it with a 400
    options.refusals = {{"the upstream refuses the request (400)", refused, chatkit::error_kind::invalid_request}};
    chatkit::testing::check_provider_conformance<TestType>([&fake] { return TestType{options_for(fake)}; }, options);
}

TEMPLATE_TEST_CASE("a 429 is retried after the upstream's retry-after-ms, then succeeds", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    auto limited = status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded");
    limited.headers = {{"retry-after-ms", "20"}};
    fake.script({limited, limited});
    const auto started = std::chrono::steady_clock::now();
    auto c = openai.complete(ask("hi"));
    REQUIRE(c);
    CHECK(fake.requests().size() == 3);
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(1)); // the server's delay, not the backoff
}

TEMPLATE_TEST_CASE("on_retry hears of each retried failure, not of the one that ends the call", "", chatkit::openai_provider,
                   async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    std::mutex mutex; // the async form calls it on its loop
    std::vector<std::string> heard;
    o.on_retry = [&](const chatkit::upstream_failure& f) {
        const std::lock_guard lock{mutex};
        heard.push_back(f.e.code + (f.retry_after ? " after " + std::to_string(f.retry_after->count()) + "ms" : ""));
    };
    TestType openai{o};
    auto limited = status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded");
    limited.headers = {{"retry-after-ms", "5"}};
    auto boom = status_reply(503, "overloaded", "server_error");
    boom.headers = {{"retry-after-ms", "5"}};
    fake.script({limited, boom});
    REQUIRE(openai.complete(ask("hi")));
    {
        const std::lock_guard lock{mutex};
        CHECK(heard == std::vector<std::string>{"rate_limit_exceeded after 5ms", "upstream_503 after 5ms"});
        heard.clear();
    }
    // Two failures with one retry allowed: the first is retried and heard, the second is the answer.
    fake.script({limited, limited});
    auto o1 = options_for(fake);
    o1.max_retries = 1;
    o1.on_retry = o.on_retry;
    TestType once{o1};
    auto c = once.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::rate_limited);
    const std::lock_guard lock{mutex};
    CHECK(heard == std::vector<std::string>{"rate_limit_exceeded after 5ms"});
}

TEMPLATE_TEST_CASE("a 429 that outlives the retries becomes a 429 with Retry-After", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    o.max_retries = 1;
    TestType openai{o};
    auto limited = status_reply(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded");
    limited.headers = {{"retry-after", "0.01"}};
    fake.script({limited, limited});
    auto c = openai.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::rate_limited);
    CHECK(c.error().message == "Rate limit reached for requests");
    CHECK(c.error().retry_after_seconds == 1);
    CHECK(fake.requests().size() == 2);
}

TEMPLATE_TEST_CASE("exhausted quota is a 429 that is not retried", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    fake.script({status_reply(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota")});
    auto c = openai.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::rate_limited);
    CHECK(fake.requests().size() == 1);
}

TEMPLATE_TEST_CASE("a 500 is retried, persistent 5xx becomes a 502 with the upstream's message", "", chatkit::openai_provider,
                   async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    TestType openai{o};
    auto boom = status_reply(500, "The server had an error while processing your request.", "server_error");
    boom.headers = {{"retry-after-ms", "1"}};
    fake.script({boom});
    CHECK(openai.complete(ask("hi")));
    CHECK(fake.requests().size() == 2);

    fake.script({boom, boom, boom});
    auto c = openai.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(chatkit::http_status(c.error().kind) == 502);
    CHECK(c.error().message == "upstream error (HTTP 500): The server had an error while processing your request.");
    CHECK(fake.requests().size() == 5);
}

TEMPLATE_TEST_CASE("upstream client errors keep their status class and message, the key is never echoed", "", chatkit::openai_provider,
                   async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    fake.script({status_reply(400, "Invalid value for 'temperature'", "invalid_request_error", "invalid_value")});
    auto bad = openai.complete(ask("hi"));
    CHECK(bad.error().kind == chatkit::error_kind::invalid_request);
    CHECK(bad.error().message == "Invalid value for 'temperature'");
    CHECK(bad.error().code == "invalid_value");

    fake.script(
        {status_reply(401, std::string{"Incorrect API key provided: "} + secret_key + ".", "invalid_request_error", "invalid_api_key")});
    auto denied = openai.complete(ask("hi"));
    CHECK(chatkit::http_status(denied.error().kind) == 502);
    CHECK(denied.error().message.starts_with("upstream rejected the credentials"));
    CHECK(denied.error().message.find(secret_key) == std::string::npos);
    CHECK(denied.error().message.find("[redacted]") != std::string::npos);

    fake.script({status_reply(404, "The model `gpt-9` does not exist", "invalid_request_error", "model_not_found")});
    auto missing = openai.complete(ask("hi"));
    CHECK(missing.error().kind == chatkit::error_kind::not_found);
    CHECK(fake.requests().size() == 3); // none of these is retried
}

TEMPLATE_TEST_CASE("a key source is asked before each call: a rotated key goes out next, its error fails the call before any request", "",
                   chatkit::openai_provider, async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    o.api_key = "";
    std::string current = "sk-source-first-0001";
    std::optional<chatkit::error> outage;
    o.api_key_source = [&]() -> chatkit::result<std::string> {
        if (outage) return *outage;
        return current;
    };
    TestType openai{o};
    REQUIRE(openai.complete(ask("one")));
    current = "sk-source-second-0002";
    REQUIRE(openai.complete(ask("two")));
    REQUIRE(fake.requests().size() == 2);
    CHECK(fake.requests()[0].headers.find("Authorization")->second == "Bearer sk-source-first-0001");
    CHECK(fake.requests()[1].headers.find("Authorization")->second == "Bearer sk-source-second-0002");

    // The key the upstream quotes back is the source's, and it is redacted too.
    fake.script({status_reply(401, "Incorrect API key provided: sk-source-second-0002.", "invalid_request_error", "invalid_api_key")});
    auto denied = openai.complete(ask("three"));
    REQUIRE_FALSE(denied);
    CHECK(denied.error().message.find("sk-source-second-0002") == std::string::npos);

    outage = chatkit::error{chatkit::error_kind::unavailable, "cannot read secret arn:x (Secrets Manager): down", "secret_unavailable"};
    auto failed = openai.complete(ask("four"));
    REQUIRE_FALSE(failed);
    CHECK(chatkit::http_status(failed.error().kind) == 503);
    CHECK(failed.error().code == "secret_unavailable");
    CHECK(fake.requests().size() == 3);

    // A key that stays missing is the operator's to fix: health says so, and recovers with the key.
    CHECK(openai.health().ok); // down only after three operator faults in a row (the 401 was one)
    REQUIRE_FALSE(openai.complete(ask("five")));
    REQUIRE_FALSE(openai.complete(ask("six")));
    CHECK_FALSE(openai.health().ok);
    CHECK(openai.health().detail.find("Secrets Manager") != std::string::npos);
    outage.reset();
    REQUIRE(openai.complete(ask("seven")));
    CHECK(openai.health().ok);
}

TEMPLATE_TEST_CASE("an upstream slower than the read timeout is a 504", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    o.read_timeout = std::chrono::milliseconds(200);
    o.max_retries = 0;
    TestType openai{o};
    fake_reply slow;
    slow.delay_before = std::chrono::milliseconds(800);
    fake.script({slow});
    auto c = openai.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::timeout);
    CHECK(chatkit::http_status(c.error().kind) == 504);
}

TEMPLATE_TEST_CASE("the total deadline bounds a stream that keeps trickling", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    o.deadline = std::chrono::milliseconds(300);
    TestType openai{o};
    fake_reply trickle;
    trickle.delay_between = std::chrono::milliseconds(150);
    fake.script({trickle});
    collected got;
    auto c = openai.stream(ask("a b c d e f g h"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::timeout);
}

TEMPLATE_TEST_CASE("a connection reset before any delta is retried, after a delta it is an error, never a silent truncation", "",
                   chatkit::openai_provider, async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    fake_reply early;
    early.break_after_events = 0;
    fake.script({early});
    collected first;
    auto retried = openai.stream(ask("x y"), first.sink());
    REQUIRE(retried);
    CHECK(first.joined() == "echo: x y");
    CHECK(fake.requests().size() == 2);

    fake_reply late;
    late.break_after_events = 3; // role, "echo:", " x", then the connection drops
    fake.script({late});
    collected second;
    auto broken = openai.stream(ask("x y z"), second.sink());
    REQUIRE_FALSE(broken);
    CHECK(broken.error().kind == chatkit::error_kind::upstream);
    CHECK(second.joined() == "echo: x");
    CHECK(fake.requests().size() == 3); // not retried: bytes had reached the client
}

TEMPLATE_TEST_CASE("a malformed chunk or an error event mid-stream fails the stream", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    fake_reply malformed;
    malformed.malformed_chunk = true;
    fake.script({malformed});
    collected got;
    auto c = openai.stream(ask("a b"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().message == "upstream sent a malformed stream chunk");

    fake_reply error_event;
    error_event.error_event = true;
    fake.script({error_event});
    collected got2;
    auto e = openai.stream(ask("a b"), got2.sink());
    REQUIRE_FALSE(e);
    CHECK(e.error().message.find("The server had an error") != std::string::npos);
}

TEMPLATE_TEST_CASE("a client that leaves stops the upstream stream", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    int seen = 0;
    auto c = openai.stream(ask("a b c d e f"), [&](std::string_view) { return ++seen < 2; });
    CHECK(seen == 2);
    CHECK(fake.requests().size() == 1);
}

TEMPLATE_TEST_CASE("an unreachable upstream is retried, reported as 502, and marks the provider down", "", chatkit::openai_provider,
                   async_openai) {
    chatkit::openai_options o;
    {
        fake_openai gone; // take a free port, then free it
        o.base_url = gone.base_url();
    }
    o.max_retries = 1;
    TestType openai{o};
    for (int i = 0; i < 3; ++i) {
        auto c = openai.complete(ask("hi"));
        REQUIRE_FALSE(c);
        CHECK(chatkit::http_status(c.error().kind) == 502);
        CHECK(c.error().code == "upstream_unreachable");
    }
    CHECK_FALSE(openai.health().ok);
}

TEMPLATE_TEST_CASE("Azure mode uses the deployment path, api-version and the api-key header", "", chatkit::openai_provider, async_openai) {
    fake_openai fake;
    auto o = options_for(fake);
    o.base_url = "http://127.0.0.1:" + std::to_string(fake.port());
    o.azure_deployment = "my-deploy";
    TestType openai{o};
    auto c = openai.complete(ask("hi")); // the fake serves only /v1/...: a 404 proves the path
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::not_found);
    CHECK_THROWS_AS(chatkit::openai_provider(chatkit::openai_options{.base_url = "ftp://x"}), std::invalid_argument);
}

TEMPLATE_TEST_CASE("tools and the tool-call history go upstream exactly as the client sent them", "", chatkit::openai_provider,
                   async_openai) {
    fake_openai fake;
    TestType openai{options_for(fake)};
    auto r = ask("weather?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    r.messages.push_back(
        {chatkit::role::assistant,
         "",
         {{"tool_calls",
           json::array({{{"id", "c0"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", "{}"}}}}})}}});
    r.messages.push_back({chatkit::role::tool, "sunny", {{"tool_call_id", "c0"}}});
    REQUIRE(openai.complete(r));
    const auto sent = fake.requests().back().body;
    CHECK(sent["tools"][0]["function"]["name"] == "get_weather");
    CHECK(sent["messages"][2]["tool_calls"][0]["id"] == "c0");
    CHECK(sent["messages"][3] == json{{"role", "tool"}, {"content", "sunny"}, {"tool_call_id", "c0"}});
}

TEST_CASE("the async provider passes a streamed tool call on piece by piece, as it arrives") {
    fake_openai fake;
    async_openai openai{options_for(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    collected got;
    auto streamed = openai.stream(r, got.sink(), got.tool_sink());
    REQUIRE(streamed);
    // the fake sends the call's id and name, then its arguments in two fragments
    REQUIRE(got.tool_pieces.size() == 3);
    CHECK(got.tool_pieces[0].id == "call_fake_1");
    CHECK(got.tool_pieces[0].name == "get_weather");
    for (std::size_t i = 1; i < 3; ++i) {
        CHECK(got.tool_pieces[i].index == 0);
        CHECK(got.tool_pieces[i].id.empty()); // named once, by the first piece
        CHECK_FALSE(got.tool_pieces[i].arguments.empty());
    }
    CHECK(got.arguments_of(0) == R"({"q":"weather in Oslo?"})");
    CHECK(streamed->extra["tool_calls"][0]["function"]["arguments"] == got.arguments_of(0)); // and whole, for the store
}

TEST_CASE("a stream whose tool-call pieces come out of order is refused, not shown garbled") {
    std::vector<chatkit::tool_call_delta> pieces;
    const chatkit::delta_sink text = [](std::string_view) { return true; };
    const chatkit::tool_call_sink tools = [&](const chatkit::tool_call_delta& d) { return pieces.push_back(d), true; };
    chatkit::detail::openai_wire::stream_reader reader{text};
    reader.tool_sink = &tools;
    chatkit::sse_parser parser;
    parser.feed(
        R"(data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{"}}]}}]})"
        "\n\n"
        R"(data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]})"
        "\n\n"
        R"(data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}}]})"
        "\n\n",
        reader);
    CHECK(pieces.size() == 2);
    REQUIRE(reader.broken);
    CHECK(reader.broken->find("out of order") != std::string::npos);
}

TEMPLATE_TEST_CASE("HTTPS verifies the upstream's certificate: an untrusted one is refused before any request", "",
                   chatkit::openai_provider, async_openai) {
    test_support::untrusted_tls_server untrusted;
    chatkit::openai_options o;
    o.base_url = "https://127.0.0.1:" + std::to_string(untrusted.port()) + "/v1";
    o.api_key = secret_key;
    TestType openai{o};
    auto c = openai.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(chatkit::http_status(c.error().kind) == 502);
    CHECK(c.error().code == "upstream_tls");
    CHECK(untrusted.requests() == 0); // the key never left
}

TEST_CASE("the async client speaks TLS to an upstream it trusts, verifying the host") {
    test_support::untrusted_tls_server upstream;
    chatkit::openai_options o;
    o.base_url = "https://127.0.0.1:" + std::to_string(upstream.port()) + "/v1";
    o.api_key = secret_key;
    o.max_retries = 0;
    async_openai openai{o, chatkit::beast_client_options{.extra_ca_pem = upstream.certificate_pem()}};
    // The server answers "{}": not a chat completion, so the provider reports a malformed answer,
    // which proves the exchange got past the handshake.
    for (int i = 0; i < 2; ++i) {
        auto c = openai.complete(ask("hi"));
        REQUIRE_FALSE(c);
        CHECK(c.error().code == "upstream_malformed");
    }
    CHECK(upstream.requests() == 2);
}

TEST_CASE("the async client refuses a trusted certificate that names another host") {
    test_support::untrusted_tls_server upstream;
    chatkit::openai_options o;
    o.base_url = "https://localhost:" + std::to_string(upstream.port()) + "/v1"; // the certificate names 127.0.0.1 only
    o.api_key = secret_key;
    o.max_retries = 0;
    async_openai openai{o, chatkit::beast_client_options{.extra_ca_pem = upstream.certificate_pem()}};
    auto c = openai.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "upstream_tls");
    CHECK(upstream.requests() == 0);
}

TEMPLATE_TEST_CASE("a connection is kept alive across calls, and one closed by the upstream meanwhile is replaced", "",
                   chatkit::openai_provider, async_openai) {
    fake_openai fake{{}, 4, std::chrono::seconds(1)};
    TestType openai{options_for(fake)};
    REQUIRE(openai.complete(ask("one")));
    collected got;
    REQUIRE(openai.stream(ask("two words"), got.sink()));
    REQUIRE(openai.complete(ask("three")));
    REQUIRE(fake.requests().size() == 3);
    CHECK(fake.requests()[1].client_port == fake.requests()[0].client_port);
    CHECK(fake.requests()[2].client_port == fake.requests()[0].client_port);
    // The fake closes a connection idle for a second; the next call must not fail for it.
    std::this_thread::sleep_for(std::chrono::milliseconds(1600));
    REQUIRE(openai.complete(ask("four")));
    CHECK(fake.requests().size() == 4);
}

// Found by fuzz/openai_upstream_fuzzer: a tool-call fragment whose index was an object threw out
// of the stream reader, and a huge index would have grown the list of calls without bound.
TEST_CASE("a stream's tool-call fragments with a bogus index are skipped, never thrown on or grown without bound") {
    using wire = chatkit::detail::openai_wire;
    std::string text;
    const chatkit::delta_sink sink = [&text](std::string_view d) { return text.append(d), true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    parser.feed(
        R"(data: {"choices":[{"index":0,"delta":{"content":"hi","tool_calls":[{"index":{"a":1},"function":{"arguments":"x"}},)"
        R"({"index":4000000000,"id":"huge"},{"index":-1,"id":"negative"},{"index":0,"id":"t","function":{"name":"f","arguments":"{}"}}]}}]})"
        "\n\n"
        R"(data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]})"
        "\n\ndata: [DONE]\n\n",
        reader);
    const wire w{chatkit::openai_options{}};
    auto c = w.finish_stream(reader, "sk-test-key");
    REQUIRE(c);
    CHECK(text == "hi");
    REQUIRE(c->extra["tool_calls"].size() == 1);
    CHECK(c->extra["tool_calls"][0]["id"] == "t");
    CHECK(c->extra["tool_calls"][0]["function"]["arguments"] == "{}");
}
