// The Gemini provider against a fake Gemini API over real HTTP, in both forms: the request body,
// path and headers, answers and event streams cut at any byte, finish reasons, usage with cached
// and thinking tokens, a blocked prompt, retries (429 with its retry delay, 5xx) and errors with
// the key never echoed.
#include "../support/fake_gemini.hpp"

#include <chatkit/async_gemini_provider.hpp>
#include <chatkit/beast_client.hpp>
#include <chatkit/gemini_provider.hpp>

#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

#include "../support/collected_deltas.hpp"
#include "../support/on_asio_loop.hpp"

using nlohmann::json;
using test_support::fake_gemini;
using test_support::fake_gemini_reply;
using test_support::gemini_error_reply;

namespace {

constexpr const char* secret_key = "AIza-test-SECRET-0123456789";

chatkit::gemini_options options_for(const fake_gemini& fake) {
    chatkit::gemini_options o;
    o.base_url = fake.base_url();
    o.api_key = secret_key;
    o.model = "gemini-fake";
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

struct async_gemini : test_support::on_asio_loop<chatkit::async_gemini_provider> {
    explicit async_gemini(chatkit::gemini_options o) : on_asio_loop(std::move(o), std::make_shared<chatkit::beast_client>()) {}
};

json retry_info(const char* delay) {
    return json::array({{{"@type", "type.googleapis.com/google.rpc.QuotaFailure"}, {"violations", json::array()}},
                        {{"@type", "type.googleapis.com/google.rpc.RetryInfo"}, {"retryDelay", delay}}});
}

} // namespace

// What every provider must do (chatkit/testing/provider.hpp), against the fake upstream: answers,
// streams in order, stops when the client leaves, refuses what it cannot honour as a value, serves
// threads at once.
TEMPLATE_TEST_CASE("the Gemini provider passes the provider conformance checks", "", chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    chatkit::testing::provider_kit_options options;
    auto logit_bias = options.request;
    logit_bias.extensions["logit_bias"] = {{"50256", -100}};
    options.refusals = {{"an unhonoured 'logit_bias'", logit_bias, chatkit::error_kind::invalid_request}};
    chatkit::testing::check_provider_conformance<TestType>([&fake] { return TestType{options_for(fake)}; }, options);
}

TEMPLATE_TEST_CASE("a completion goes out as a generateContent request and comes back with usage", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake{{}, secret_key};
    TestType gemini{options_for(fake)};
    auto r = ask("hello there");
    r.messages = {{chatkit::role::system, "be brief", {}},
                  {chatkit::role::user, "first", {}},
                  {chatkit::role::system, "and kind", {}},
                  {chatkit::role::assistant, "noted", {}},
                  {chatkit::role::user, "hello there", {}}};
    r.temperature = 1.5; // Gemini takes 0 to 2, as OpenAI does
    r.max_tokens = 50;
    r.user_id = "alice";
    r.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    r.extensions = {
        {"stop", "END"}, {"top_p", 0.9}, {"seed", 7}, {"max_completion_tokens", 50}, {"stream_options", {{"include_usage", true}}}};
    auto c = gemini.complete(r);
    REQUIRE(c);
    CHECK(c->content == "echo: hello there");
    CHECK(c->model == "gemini-fake");
    CHECK(c->finish_reason == "stop");
    CHECK(c->usage.prompt_tokens == 2);
    CHECK(c->usage.completion_tokens == 3);
    CHECK(c->usage.cached_tokens == 0);
    CHECK(c->usage.reasoning_tokens == 0);

    REQUIRE(fake.requests().size() == 1);
    const auto sent = fake.requests().at(0);
    CHECK(sent.model == "gemini-fake");
    CHECK(sent.method == "generateContent");
    CHECK(sent.body["systemInstruction"] == json::parse(R"({"parts":[{"text":"be brief"},{"text":"and kind"}]})"));
    CHECK(sent.body["contents"] ==
          json::parse(R"([{"role":"user","parts":[{"text":"first"}]},)"
                      R"({"role":"model","parts":[{"text":"noted"}]},{"role":"user","parts":[{"text":"hello there"}]}])"));
    CHECK(sent.body["generationConfig"] ==
          json::parse(R"({"temperature":1.5,"maxOutputTokens":50,"topP":0.9,"stopSequences":["END"],"seed":7})"));
    CHECK_FALSE(sent.body.contains("model"));
    CHECK(sent.headers.find("x-goog-api-key")->second == secret_key);
    CHECK(sent.headers.find("Content-Type")->second == "application/json");
    CHECK(sent.headers.find("X-Request-ID")->second == "req-123");
    CHECK(sent.headers.find("traceparent")->second == r.traceparent);
    CHECK_FALSE(sent.headers.contains("Authorization"));
}

TEMPLATE_TEST_CASE("the answer names modelVersion when Gemini gives one, else the model asked for", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    fake_gemini_reply versioned, unnamed;
    versioned.model_version = "gemini-2.5-flash-preview-05-20";
    unnamed.model_version = "-";
    fake.script({versioned, versioned, unnamed, unnamed});
    auto r = ask("hi");
    r.model = "models/gemini-2.5-flash"; // a resource name: the id is what goes in the path
    auto c = gemini.complete(r);
    REQUIRE(c);
    CHECK(fake.requests().back().model == "gemini-2.5-flash");
    CHECK(c->model == "gemini-2.5-flash-preview-05-20");
    collected got;
    auto s = gemini.stream(r, got.sink());
    REQUIRE(s);
    CHECK(s->model == "gemini-2.5-flash-preview-05-20");

    auto plain = gemini.complete(ask("hi"));
    REQUIRE(plain);
    CHECK(plain->model == "gemini-fake");
    collected more;
    auto streamed = gemini.stream(ask("hi"), more.sink());
    REQUIRE(streamed);
    CHECK(streamed->model == "gemini-fake");
}

TEMPLATE_TEST_CASE("usage counts cached tokens in the prompt and thinking tokens in the completion", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    fake_gemini_reply thinking;
    thinking.cached_tokens = 1000;
    thinking.thoughts_tokens = 25;
    thinking.thought_part = true; // a thought summary is no answer text
    fake.script({thinking, thinking});
    auto c = gemini.complete(ask("one two three"));
    REQUIRE(c);
    CHECK(c->content == "echo: one two three");
    CHECK(c->usage.prompt_tokens == 3 + 1000);
    CHECK(c->usage.cached_tokens == 1000);
    CHECK(c->usage.completion_tokens == 4 + 25);
    CHECK(c->usage.reasoning_tokens == 25);

    collected got;
    auto s = gemini.stream(ask("one two three"), got.sink());
    REQUIRE(s);
    CHECK(got.joined() == "echo: one two three");
    CHECK(s->usage.prompt_tokens == 3 + 1000);
    CHECK(s->usage.cached_tokens == 1000);
    CHECK(s->usage.completion_tokens == 4 + 25);
    CHECK(s->usage.reasoning_tokens == 25);
}

TEMPLATE_TEST_CASE("a stream arrives delta by delta with usage, however the upstream cuts its bytes", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    for (std::size_t chunk_bytes : {0u, 1u, 2u, 3u, 7u, 64u}) {
        for (bool thought : {false, true}) {
            fake_gemini_reply reply;
            reply.chunk_bytes = chunk_bytes;
            reply.thought_part = thought;
            fake.script({reply});
            collected got;
            auto c = gemini.stream(ask("one two three"), got.sink());
            REQUIRE(c);
            CHECK(got.deltas == std::vector<std::string>{"echo:", " one", " two", " three"});
            CHECK(c->content == got.joined());
            CHECK(c->usage.prompt_tokens == 3);
            CHECK(c->usage.completion_tokens == 4);
            CHECK(c->finish_reason == "stop");
            CHECK(c->model == "gemini-fake");
        }
    }
    const auto sent = fake.requests().back();
    CHECK(sent.method == "streamGenerateContent");
    CHECK(sent.alt == "sse");
    CHECK(sent.headers.find("Accept")->second == "text/event-stream");
}

TEMPLATE_TEST_CASE("finish reasons map to chatkit's, answered whole or streamed", "", chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    const std::vector<std::pair<std::string, std::string>> cases = {{"STOP", "stop"},
                                                                    {"MAX_TOKENS", "length"},
                                                                    {"SAFETY", "content_filter"},
                                                                    {"RECITATION", "content_filter"},
                                                                    {"BLOCKLIST", "content_filter"},
                                                                    {"PROHIBITED_CONTENT", "content_filter"},
                                                                    {"SPII", "content_filter"},
                                                                    {"MALFORMED_FUNCTION_CALL", "malformed_function_call"},
                                                                    {"OTHER", "other"}};
    for (const auto& [reason, finish_reason] : cases) {
        fake_gemini_reply reply;
        reply.finish_reason = reason;
        fake.script({reply, reply});
        auto c = gemini.complete(ask("hi"));
        REQUIRE(c);
        CHECK(c->finish_reason == finish_reason);
        collected got;
        auto s = gemini.stream(ask("hi"), got.sink());
        REQUIRE(s);
        CHECK(s->finish_reason == finish_reason);
    }
}

TEMPLATE_TEST_CASE("a prompt Gemini blocks is a 400 naming the reason, not an empty answer, and is not retried", "",
                   chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    fake_gemini_reply blocked;
    blocked.block_reason = "SAFETY";
    fake.script({blocked, blocked});
    auto c = gemini.complete(ask("something dangerous"));
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::invalid_request);
    CHECK(c.error().code == "content_blocked");
    CHECK(c.error().message == "Gemini blocked the prompt (SAFETY)");
    CHECK(fake.requests().size() == 1);

    collected got;
    auto s = gemini.stream(ask("something dangerous"), got.sink());
    REQUIRE_FALSE(s);
    CHECK(s.error().kind == chatkit::error_kind::invalid_request);
    CHECK(s.error().code == "content_blocked");
    CHECK(got.deltas.empty());
    CHECK(fake.requests().size() == 2);
    CHECK(gemini.health().ok);
}

TEMPLATE_TEST_CASE("a 429 is retried after RetryInfo's retryDelay or Retry-After, then succeeds", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    auto limited = gemini_error_reply(429, "RESOURCE_EXHAUSTED",
                                      "You exceeded your current quota, please check your plan and billing details.", retry_info("0.05s"));
    fake.script({limited});
    auto c = gemini.complete(ask("hi"));
    REQUIRE(c);
    CHECK(c->content == "echo: hi");
    CHECK(fake.requests().size() == 2);

    // A retryDelay longer than any retry waits for (retry_policy::max_server_delay) is not
    // waited: the client gets the 429 at once, with the upstream's delay as its Retry-After.
    fake.script({gemini_error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric: generate_content_free_tier_requests",
                                    retry_info("200s"))});
    auto later = gemini.complete(ask("hi"));
    REQUIRE_FALSE(later);
    CHECK(later.error().kind == chatkit::error_kind::rate_limited);
    CHECK(later.error().retry_after_seconds == 200);
    CHECK(fake.requests().size() == 3);
    auto long_header = gemini_error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded");
    long_header.headers = {{"Retry-After", "300"}}; // the same from the Retry-After header
    fake.script({long_header});
    auto much_later = gemini.complete(ask("hi"));
    REQUIRE_FALSE(much_later);
    CHECK(much_later.error().retry_after_seconds == 300);
    CHECK(fake.requests().size() == 4);

    auto header_limited = gemini_error_reply(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).");
    header_limited.headers = {{"Retry-After", "0.02"}};
    fake.script({header_limited});
    collected got;
    REQUIRE(gemini.stream(ask("x"), got.sink()));
    CHECK(got.joined() == "echo: x");
    CHECK(fake.requests().size() == 6);

    // Once the retries are spent, the client gets a 429 with the upstream's message and a Retry-After.
    auto slow = gemini_error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded", retry_info("0.01s"));
    fake.script({slow, slow, slow});
    auto refused = gemini.complete(ask("hi"));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().kind == chatkit::error_kind::rate_limited);
    CHECK(refused.error().code == "resource_exhausted");
    CHECK(refused.error().message == "Quota exceeded");
    CHECK(refused.error().retry_after_seconds == 1);
    CHECK(fake.requests().size() == 9);
}

TEMPLATE_TEST_CASE("a 500 or 503 is retried, persistent failure becomes a 502 naming it", "", chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    auto overloaded = gemini_error_reply(503, "UNAVAILABLE", "The model is overloaded. Please try again later.");
    overloaded.headers = {{"Retry-After", "0.001"}};
    fake.script({overloaded});
    collected got;
    auto streamed = gemini.stream(ask("x y"), got.sink());
    REQUIRE(streamed);
    CHECK(got.joined() == "echo: x y");
    CHECK(fake.requests().size() == 2);

    fake.script({overloaded, overloaded, overloaded});
    auto c = gemini.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(chatkit::http_status(c.error().kind) == 502);
    CHECK(c.error().message == "upstream error (HTTP 503): The model is overloaded. Please try again later.");
    CHECK(c.error().code == "unavailable");
    CHECK(fake.requests().size() == 5);

    auto failing = gemini_error_reply(500, "INTERNAL", "An internal error has occurred.");
    failing.headers = {{"Retry-After", "0.001"}};
    fake.script({failing});
    CHECK(gemini.complete(ask("hi")));
    CHECK(fake.requests().size() == 7);
}

TEMPLATE_TEST_CASE("400, 401, 403 and 404 are not retried, credentials are the operator's, and the key is never echoed", "",
                   chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    fake.script(
        {gemini_error_reply(400, "INVALID_ARGUMENT", "* GenerateContentRequest.generation_config.max_output_tokens: must be positive")});
    auto bad = gemini.complete(ask("hi"));
    REQUIRE_FALSE(bad);
    CHECK(bad.error().kind == chatkit::error_kind::invalid_request);
    CHECK(bad.error().code == "invalid_argument");
    CHECK(bad.error().message == "* GenerateContentRequest.generation_config.max_output_tokens: must be positive");
    CHECK(fake.requests().size() == 1);

    fake.script({gemini_error_reply(401, "UNAUTHENTICATED", std::string{"Request had invalid authentication credentials: "} + secret_key)});
    auto denied = gemini.complete(ask("hi"));
    REQUIRE_FALSE(denied);
    CHECK(chatkit::http_status(denied.error().kind) == 502);
    CHECK(denied.error().code == "upstream_credentials");
    CHECK(denied.error().message == "upstream rejected the credentials: Request had invalid authentication credentials: [redacted]");
    CHECK(fake.requests().size() == 2);

    fake.script({gemini_error_reply(403, "PERMISSION_DENIED",
                                    "Permission denied: Consumer 'api_key:" + std::string{secret_key} + "' has been suspended.")});
    auto forbidden = gemini.complete(ask("hi"));
    REQUIRE_FALSE(forbidden);
    CHECK(forbidden.error().code == "upstream_credentials");
    CHECK(forbidden.error().message.find(secret_key) == std::string::npos);
    CHECK(fake.requests().size() == 3);

    fake.script({gemini_error_reply(404, "NOT_FOUND",
                                    "models/gemini-9 is not found for API version v1beta, or is not supported for generateContent.")});
    auto missing = gemini.complete(ask("hi"));
    REQUIRE_FALSE(missing);
    CHECK(missing.error().kind == chatkit::error_kind::not_found);
    CHECK(missing.error().code == "not_found");
    CHECK(fake.requests().size() == 4); // none of these is retried
}

TEMPLATE_TEST_CASE("a key Gemini does not know (its 400 API_KEY_INVALID) is a credentials failure, not the client's", "",
                   chatkit::gemini_provider, async_gemini) {
    fake_gemini fake{{}, "AIza-the-right-key-0000"};
    TestType gemini{options_for(fake)};
    for (int i = 0; i < 3; ++i) {
        auto c = gemini.complete(ask("hi"));
        REQUIRE_FALSE(c);
        CHECK(chatkit::http_status(c.error().kind) == 502);
        CHECK(c.error().code == "upstream_credentials");
        CHECK(c.error().message == "upstream rejected the credentials: API key not valid. Please pass a valid API key.");
    }
    CHECK(fake.requests().size() == 3);
    CHECK_FALSE(gemini.health().ok); // only an operator can fix it
}

TEMPLATE_TEST_CASE("without a key the upstream refuses the call and the provider says so", "", chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    auto o = options_for(fake);
    o.api_key.clear();
    TestType gemini{o};
    auto c = gemini.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "upstream_credentials");
    CHECK(c.error().message.find("unregistered callers") != std::string::npos);
    CHECK_FALSE(fake.requests().at(0).headers.contains("x-goog-api-key"));
}

TEMPLATE_TEST_CASE("an error object mid-stream fails the stream after its deltas, and is retried before any", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    fake_gemini_reply late;
    late.error_after_first_delta = true;
    fake.script({late});
    collected got;
    auto c = gemini.stream(ask("a b"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::upstream);
    CHECK(c.error().code == "unavailable");
    CHECK(c.error().message == "upstream error mid-stream (unavailable): The model is overloaded. Please try again later.");
    CHECK(got.joined() == "echo:");
    CHECK(fake.requests().size() == 1); // not retried: bytes had reached the client

    fake_gemini_reply early;
    early.error_before_content = true;
    fake.script({early});
    collected again;
    auto retried = gemini.stream(ask("a b"), again.sink());
    REQUIRE(retried);
    CHECK(again.joined() == "echo: a b");
    CHECK(fake.requests().size() == 3);
}

TEMPLATE_TEST_CASE("a stream that ends without a finish reason is an error, never a silent truncation", "", chatkit::gemini_provider,
                   async_gemini) {
    fake_gemini fake;
    auto o = options_for(fake);
    o.max_retries = 0;
    TestType gemini{o};
    fake_gemini_reply unfinished;
    unfinished.end_without_finish = true;
    fake.script({unfinished});
    collected got;
    auto c = gemini.stream(ask("a b"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "upstream_truncated");
    CHECK(got.joined() == "echo: a b");

    fake_gemini_reply dropped;
    dropped.break_after_events = 1; // "echo:", then the connection drops
    fake.script({dropped});
    collected partial;
    auto broken = gemini.stream(ask("a b"), partial.sink());
    REQUIRE_FALSE(broken);
    CHECK(broken.error().kind == chatkit::error_kind::upstream);
    CHECK(partial.joined() == "echo:");
}

TEMPLATE_TEST_CASE("a client that stops reading ends the stream early with what it was sent", "", chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    fake_gemini_reply slow;
    slow.delay_between = std::chrono::milliseconds(20);
    fake.script({slow});
    std::vector<std::string> got;
    const chatkit::delta_sink two = [&got](std::string_view d) {
        got.emplace_back(d);
        return got.size() < 2;
    };
    auto c = gemini.stream(ask("one two three four five six"), two);
    REQUIRE(c);
    CHECK(got == std::vector<std::string>{"echo:", " one"});
    CHECK(c->content == "echo: one");
    CHECK(fake.requests().size() == 1);
}

TEMPLATE_TEST_CASE("tools, tool_choice and a tool-call history go upstream in Gemini's form", "", chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    auto r = ask("weather in Paris?");
    r.extensions = {{"tools", json::array({{{"type", "function"},
                                            {"function",
                                             {{"name", "get_weather"},
                                              {"description", "the weather"},
                                              {"parameters", {{"type", "object"}, {"additionalProperties", false}}}}}},
                                           {{"type", "function"}, {"function", {{"name", "get_time"}}}}})},
                    {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}};
    r.messages.push_back(
        {chatkit::role::assistant,
         "let me look",
         {{"tool_calls",
           json::array(
               {{{"id", "call_a"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Paris"})"}}}},
                {{"id", "call_b"}, {"type", "function"}, {"function", {{"name", "get_time"}, {"arguments", ""}}}}})},
          {"refusal", nullptr}}});
    r.messages.push_back({chatkit::role::tool, "sunny", {{"tool_call_id", "call_a"}}});
    r.messages.push_back({chatkit::role::tool, "noon", {{"tool_call_id", "call_b"}}});
    auto c = gemini.complete(r);
    REQUIRE(c); // the fake, like the API, wants as many function responses as the turn before made calls
    CHECK(c->content == "tool said: sunnynoon");
    const auto sent = fake.requests().back().body;
    CHECK(sent["tools"] == json::parse(R"([{"functionDeclarations":[
        {"name":"get_weather","description":"the weather","parametersJsonSchema":{"type":"object","additionalProperties":false}},
        {"name":"get_time"}]}])"));
    CHECK(sent["toolConfig"] == json::parse(R"({"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["get_time"]}})"));
    REQUIRE(sent["contents"].size() == 3);
    CHECK(sent["contents"][1] == json::parse(R"({"role":"model","parts":[{"text":"let me look"},
        {"functionCall":{"name":"get_weather","args":{"city":"Paris"}}},{"functionCall":{"name":"get_time","args":{}}}]})"));
    CHECK(sent["contents"][2] == json::parse(R"({"role":"user","parts":[
        {"functionResponse":{"name":"get_weather","response":{"result":"sunny"}}},
        {"functionResponse":{"name":"get_time","response":{"result":"noon"}}}]})"));

    for (auto [choice, mode] : {std::pair<json, const char*>{"auto", "AUTO"}, {"required", "ANY"}, {"none", "NONE"}}) {
        auto q = ask("hi");
        q.extensions = {{"tools", r.extensions["tools"]}, {"tool_choice", choice}};
        REQUIRE(gemini.complete(q));
        CHECK(fake.requests().back().body["toolConfig"]["functionCallingConfig"] == json{{"mode", mode}});
    }
}

TEMPLATE_TEST_CASE("a functionCall answer comes back as OpenAI tool_calls with an id, whole or streamed in pieces", "",
                   chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    const json expected = {
        {{"id", "call_0"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"q":"weather in Oslo?"})"}}}}};

    auto whole = gemini.complete(r);
    REQUIRE(whole);
    CHECK(whole->finish_reason == "tool_calls"); // Gemini says STOP
    CHECK(whole->content.empty());
    CHECK(whole->extra["tool_calls"] == expected);

    for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{9}}) {
        fake_gemini_reply pieces;
        pieces.chunk_bytes = cut;
        fake.script({pieces});
        collected deltas;
        auto streamed = gemini.stream(r, deltas.sink());
        REQUIRE(streamed);
        CHECK(deltas.joined().empty());
        CHECK(streamed->finish_reason == "tool_calls");
        CHECK(streamed->extra["tool_calls"] == expected);
    }
}

TEST_CASE("the async provider passes each functionCall on as it arrives, whole, with the id the answer gives it") {
    fake_gemini fake;
    async_gemini gemini{options_for(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    collected got;
    auto streamed = gemini.stream(r, got.sink(), got.tool_sink());
    REQUIRE(streamed);
    REQUIRE(got.tool_pieces.size() == 1); // Gemini sends a call whole
    CHECK(got.tool_pieces[0].index == 0);
    CHECK(got.tool_pieces[0].id == "call_0");
    CHECK(got.tool_pieces[0].name == "get_weather");
    CHECK(got.tool_pieces[0].arguments == R"({"q":"weather in Oslo?"})");
    CHECK(streamed->extra["tool_calls"][0]["id"] == "call_0");
}

TEMPLATE_TEST_CASE("tool use and fields Gemini cannot take are refused with a 400 naming them, before any call", "",
                   chatkit::gemini_provider, async_gemini) {
    fake_gemini fake;
    TestType gemini{options_for(fake)};
    for (const char* field : {"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"}) {
        auto r = ask("weather?");
        r.extensions = {{field, json::array()}};
        auto c = gemini.complete(r);
        REQUIRE_FALSE(c);
        CHECK(c.error().kind == chatkit::error_kind::invalid_request);
        CHECK(c.error().param == field);
    }
    {
        auto r = ask("weather?");
        r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}})}, {"parallel_tool_calls", false}};
        CHECK(gemini.complete(r).error().param == "parallel_tool_calls");
        r.extensions = {{"tools", json::array({{{"type", "web_search"}}})}};
        CHECK(gemini.complete(r).error().param == "tools[0]");
    }
    for (const char* field : {"response_format", "logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty",
                              "prediction", "modalities"}) {
        auto r = ask("hi");
        r.extensions = {{field, true}};
        auto c = gemini.complete(r);
        REQUIRE_FALSE(c);
        CHECK(c.error().param == field);
        CHECK(c.error().message == std::string{"the gemini provider cannot honour '"} + field + "'");
    }
    auto r = ask("hi");
    r.extensions = {{"seed", 1.5}}; // Gemini's seed is an integer
    CHECK(gemini.complete(r).error().param == "seed");

    r = ask("hi");
    r.messages.push_back({chatkit::role::assistant, "", {{"tool_calls", json::array()}}});
    auto history = gemini.complete(r);
    REQUIRE_FALSE(history);
    CHECK(history.error().param == "messages[2].tool_calls");

    r = ask("hi");
    r.messages.push_back({chatkit::role::tool, "42", {}});
    CHECK(gemini.complete(r).error().param == "messages[2].tool_call_id");
    r = ask("hi");
    r.messages.push_back({chatkit::role::tool, "42", {{"tool_call_id", "nobody"}}}); // Gemini names a result by its call's function
    CHECK(gemini.complete(r).error().param == "messages[2].tool_call_id");

    r = ask("look");
    r.messages[1].extra = {{"images", json::array({"data:image/png;base64,AAAA"})}};
    CHECK(gemini.complete(r).error().param == "messages[1].images");

    r = ask("");
    auto empty = gemini.complete(r);
    REQUIRE_FALSE(empty);
    CHECK(empty.error().param == "messages[1].content");

    r.messages = {{chatkit::role::system, "only a system prompt", {}}};
    CHECK(gemini.complete(r).error().param == "messages");

    r = ask("hi");
    r.model = "gemini-2.5-flash:streamGenerateContent?key=x"; // the model id is a path segment
    auto injected = gemini.complete(r);
    REQUIRE_FALSE(injected);
    CHECK(injected.error().param == "model");
    r.model = "../tunedModels/mine";
    CHECK(gemini.complete(r).error().param == "model");

    collected got;
    r = ask("hi");
    r.extensions = {{"tools", json::array()}};
    CHECK_FALSE(gemini.stream(r, got.sink()));
    CHECK(fake.requests().empty());
    CHECK(gemini.health().ok);
}

TEMPLATE_TEST_CASE("an unreachable upstream is retried, reported as 502, and marks the provider down", "", chatkit::gemini_provider,
                   async_gemini) {
    chatkit::gemini_options o;
    {
        fake_gemini gone; // take a free port, then free it
        o.base_url = gone.base_url();
    }
    o.api_key = secret_key;
    o.max_retries = 1;
    TestType gemini{o};
    for (int i = 0; i < 3; ++i) {
        auto c = gemini.complete(ask("hi"));
        REQUIRE_FALSE(c);
        CHECK(c.error().code == "upstream_unreachable");
        CHECK(c.error().message.find(secret_key) == std::string::npos);
    }
    CHECK_FALSE(gemini.health().ok);
    CHECK_THROWS_AS(chatkit::gemini_provider(chatkit::gemini_options{.base_url = "ftp://x"}), std::invalid_argument);
    CHECK_THROWS_AS(chatkit::gemini_provider(chatkit::gemini_options{.model = "a/b"}), std::invalid_argument);
}

TEST_CASE("a base URL with a path keeps it before /v1beta") {
    const chatkit::detail::gemini_wire w{chatkit::gemini_options{.base_url = "https://gateway.example/google/"}};
    CHECK(w.origin == "https://gateway.example");
    CHECK(w.path("gemini-2.5-pro", false) == "/google/v1beta/models/gemini-2.5-pro:generateContent");
    CHECK(w.path("gemini-2.5-pro", true) == "/google/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
}

TEST_CASE("a stream's usage is the last chunk's, thought parts and unknown fields are skipped") {
    using wire = chatkit::detail::gemini_wire;
    std::string text;
    const chatkit::delta_sink sink = [&text](std::string_view d) { return text.append(d), true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    parser.feed(
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"thinking...\",\"thought\":true}],\"role\":\"model\"}}],"
        "\"usageMetadata\":{\"promptTokenCount\":9,\"cachedContentTokenCount\":4},\"modelVersion\":\"gemini-x\",\"aFutureField\":1}\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"},{\"text\":\" there\"}],\"role\":\"model\"}}],"
        "\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":2}}\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[],\"role\":\"model\"},\"finishReason\":\"MAX_TOKENS\"}],"
        "\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":3,\"thoughtsTokenCount\":40,\"cachedContentTokenCount\":4}}"
        "\r\n\r\n",
        reader);
    const wire w{chatkit::gemini_options{}};
    auto c = w.finish_stream(reader, "AIza-key");
    REQUIRE(c);
    CHECK(text == "hi there");
    CHECK(c->content == "hi there");
    CHECK(c->model == "gemini-x");
    CHECK(c->finish_reason == "length");
    CHECK(c->usage.prompt_tokens == 9);
    CHECK(c->usage.cached_tokens == 4);
    CHECK(c->usage.completion_tokens == 43);
    CHECK(c->usage.reasoning_tokens == 40);
}

TEST_CASE("fields of an unexpected type in a stream, an answer or an error are never thrown on") {
    using wire = chatkit::detail::gemini_wire;
    std::string text;
    const chatkit::delta_sink sink = [&text](std::string_view d) { return text.append(d), true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    REQUIRE_NOTHROW(parser.feed(
        "data: {\"candidates\":5}\n\n"
        "data: {\"candidates\":[7,{\"content\":[]}]}\n\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[1,{\"text\":2},{\"text\":\"x\",\"thought\":\"yes\"}]},\"finishReason\":3}],"
        "\"usageMetadata\":{\"promptTokenCount\":\"many\",\"candidatesTokenCount\":-4},\"modelVersion\":[]}\n\n"
        "data: {\"error\":{\"status\":{},\"message\":[1]}}\n\n",
        reader));
    CHECK(text == "x");
    REQUIRE(reader.broken);
    CHECK(reader.broken->message == "upstream error mid-stream (upstream_error): unknown");

    const wire w{chatkit::gemini_options{}};
    auto answer = w.parse_answer(
        R"({"candidates":[{"content":{"parts":[{"text":1},{"text":"yes"}]},"finishReason":null}],"usageMetadata":{"promptTokenCount":-3}})",
        "gemini-asked", "AIza-key");
    REQUIRE(answer);
    CHECK(answer->content == "yes");
    CHECK(answer->model == "gemini-asked");
    CHECK(answer->usage.prompt_tokens == 0);
    CHECK_FALSE(w.parse_answer("[]", "m", "k"));
    CHECK_FALSE(w.parse_answer("{}", "m", "k")); // no candidate and no block reason: nothing to answer with

    const std::vector<std::pair<std::string, std::string>> no_headers;
    const auto f = w.status_failure(500, R"({"error":{"code":"x","status":3,"message":{"a":1},"details":[5,{"@type":7}]}})", no_headers,
                                    "AIza-key");
    CHECK(f.e.code == "upstream_500");
    CHECK(f.e.message == "upstream error (HTTP 500): upstream answered HTTP 500");
    CHECK(f.retryable);
    CHECK_FALSE(f.retry_after);
    const auto wrapped = w.status_failure(429,
                                          R"([{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"slow down",)"
                                          R"("details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}]}}])",
                                          no_headers, "AIza-key");
    CHECK(wrapped.e.message == "slow down");
    CHECK(wrapped.retry_after == std::chrono::milliseconds(12'000));
    CHECK_FALSE(w.status_failure(501, "{}", no_headers, "AIza-key").retryable);
}
