// The Bedrock provider against a fake Bedrock Runtime that checks every request's SigV4 signature
// with botocore: Converse and ConverseStream, aliases, message mapping, and every error path.
#include "../support/fake_bedrock.hpp"

#include <chatkit/async_bedrock_provider.hpp>
#include <chatkit/beast_client.hpp>
#include <chatkit/bedrock_provider.hpp>

#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

#include "../support/collected_deltas.hpp"
#include "../support/on_asio_loop.hpp"

#include <map>
#include <mutex>
#include <vector>

using nlohmann::json;
using test_support::fake_bedrock;

namespace {

constexpr const char* access_key = "AKIDBEDROCKTEST";
constexpr const char* secret_key = "bedrock/secret+key/EXAMPLE0123456789";

chatkit::aws::environment env_with(std::map<std::string, std::string> vars) {
    chatkit::aws::environment env;
    env.getenv = [vars](const std::string& name) -> std::optional<std::string> {
        auto it = vars.find(name);
        return it == vars.end() ? std::nullopt : std::optional{it->second};
    };
    env.home = "/nonexistent";
    return env;
}

chatkit::aws::environment test_env(const fake_bedrock& fake, std::map<std::string, std::string> more = {}) {
    std::map<std::string, std::string> vars{{"AWS_ACCESS_KEY_ID", access_key},
                                            {"AWS_SECRET_ACCESS_KEY", secret_key},
                                            {"AWS_REGION", "us-east-1"},
                                            {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint()}};
    for (auto& [k, v] : more) vars[k] = v;
    return env_with(vars);
}

chatkit::bedrock_options fast_options() {
    chatkit::bedrock_options o;
    o.read_timeout = std::chrono::milliseconds(1500);
    o.max_retries = 2;
    return o;
}

chatkit::chat_request ask(std::string text, std::string model = "") {
    chatkit::chat_request r;
    r.messages = {{chatkit::role::system, "be brief", {}}, {chatkit::role::user, std::move(text), {}}};
    r.model = std::move(model);
    return r;
}

using collected = test_support::collected_deltas;

const std::string fake_key = std::string{access_key} + "=" + secret_key;

// Every case that calls Bedrock runs against both forms: the blocking provider over cpp-httplib,
// and the async one over chatkit::beast_client on an Asio loop.
struct async_bedrock : test_support::on_asio_loop<chatkit::async_bedrock_provider> {
    async_bedrock(chatkit::bedrock_options o, chatkit::aws::environment env)
        : on_asio_loop(std::move(o), std::make_shared<chatkit::beast_client>(), std::move(env)) {}
    std::string resolve_model(std::string_view m) const { return provider().resolve_model(m); }
    const std::string& region() const { return provider().region(); }
};

} // namespace

// What every provider must do (chatkit/testing/provider.hpp), against the fake Bedrock: answers,
// streams in order, stops when the client leaves, refuses what it cannot honour as a value, serves
// threads at once.
TEMPLATE_TEST_CASE("the Bedrock provider passes the provider conformance checks", "", chatkit::bedrock_provider, async_bedrock) {
    fake_bedrock fake{{fake_key}};
    chatkit::testing::provider_kit_options options;
    auto logit_bias = options.request;
    logit_bias.extensions["logit_bias"] = {{"50256", -100}};
    options.refusals = {{"an unhonoured 'logit_bias'", logit_bias, chatkit::error_kind::invalid_request}};
    options.concurrent_rounds = 5; // the fake verifies every signature with botocore: 80 calls, not 400
    chatkit::testing::check_provider_conformance<TestType>([&fake] { return TestType{fast_options(), test_env(fake)}; }, options);
}

TEMPLATE_TEST_CASE("Converse: a signed request that botocore verifies, and the answer with usage", "", chatkit::bedrock_provider,
                   async_bedrock) {
    fake_bedrock fake{{fake_key}};
    TestType bedrock{fast_options(), test_env(fake)};
    auto r = ask("hello bedrock");
    r.max_tokens = 100;
    r.temperature = 0.5;
    r.extensions = {{"top_p", 0.9}, {"stop", "END"}};
    auto c = bedrock.complete(r);
    REQUIRE(c);
    CHECK(c->content == "echo: hello bedrock");
    CHECK(c->model == "nova-micro");
    CHECK(c->finish_reason == "stop");
    CHECK(c->usage.prompt_tokens == 2);
    CHECK(c->usage.completion_tokens == 3);

    const auto seen = fake.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0]["signature_ok"] == true);
    CHECK(seen[0]["path"] == "/model/us.amazon.nova-micro-v1%3A0/converse"); // alias → inference profile, ':' encoded
    CHECK(seen[0]["body"]["system"] == json::parse(R"([{"text":"be brief"}])"));
    CHECK(seen[0]["body"]["inferenceConfig"] == json::parse(R"({"maxTokens":100,"temperature":0.5,"topP":0.9,"stopSequences":["END"]})"));
}

TEMPLATE_TEST_CASE("ConverseStream: event-stream frames become deltas, with the stop reason and usage", "", chatkit::bedrock_provider,
                   async_bedrock) {
    fake_bedrock fake{{fake_key}};
    TestType bedrock{fast_options(), test_env(fake)};
    collected got;
    auto c = bedrock.stream(ask("one two three", "claude-3-haiku"), got.sink());
    REQUIRE(c);
    CHECK(got.deltas == std::vector<std::string>{"echo:", " one", " two", " three"});
    CHECK(c->content == "echo: one two three");
    CHECK(c->usage.completion_tokens == 4);
    const auto seen = fake.requests();
    CHECK(seen[0]["signature_ok"] == true);
    CHECK(seen[0]["path"] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream");
}

TEMPLATE_TEST_CASE("session tokens are sent and signed", "", chatkit::bedrock_provider, async_bedrock) {
    fake_bedrock fake{{std::string{"ASIATEMP"} + "=" + secret_key + "=session-token-xyz"}};
    TestType bedrock{fast_options(), test_env(fake, {{"AWS_ACCESS_KEY_ID", "ASIATEMP"}, {"AWS_SESSION_TOKEN", "session-token-xyz"}})};
    REQUIRE(bedrock.complete(ask("hi")));
    CHECK(fake.requests()[0]["headers"]["x-amz-security-token"] == "session-token-xyz");
}

TEMPLATE_TEST_CASE("a wrong secret is refused by the fake's independent check and reported as 502", "", chatkit::bedrock_provider,
                   async_bedrock) {
    fake_bedrock fake{{fake_key}};
    TestType bedrock{fast_options(), test_env(fake, {{"AWS_SECRET_ACCESS_KEY", "not-the-secret"}})};
    auto c = bedrock.complete(ask("hi"));
    REQUIRE_FALSE(c);
    CHECK(chatkit::http_status(c.error().kind) == 502);
    CHECK(c.error().message.starts_with("Bedrock rejected the credentials"));
    CHECK(c.error().message.find("not-the-secret") == std::string::npos);
}

TEST_CASE("consecutive turns of one role are merged, a conversation opening with the assistant is refused") {
    chatkit::chat_request r;
    r.messages = {{chatkit::role::user, "a", {}},   {chatkit::role::user, "b", {}},      {chatkit::role::assistant, "c", {}},
                  {chatkit::role::system, "s", {}}, {chatkit::role::assistant, "d", {}}, {chatkit::role::user, "e", {}}};
    auto body = chatkit::bedrock_provider::converse_body(r);
    REQUIRE(body);
    CHECK((*body)["messages"] == json::parse(R"([
        {"role":"user","content":[{"text":"a"},{"text":"b"}]},
        {"role":"assistant","content":[{"text":"c"},{"text":"d"}]},
        {"role":"user","content":[{"text":"e"}]}])"));
    CHECK((*body)["system"] == json::parse(R"([{"text":"s"}])"));

    chatkit::chat_request opening;
    opening.messages = {{chatkit::role::assistant, "hello", {}}, {chatkit::role::user, "hi", {}}};
    auto refused = chatkit::bedrock_provider::converse_body(opening);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == "invalid_conversation");

    auto tools = ask("x");
    tools.extensions = {{"tools", json::array()}};
    CHECK(chatkit::bedrock_provider::converse_body(tools).error().param == "tools");
    auto named = ask("x");
    named.messages[1].extra = {{"name", "alice"}};
    CHECK(chatkit::bedrock_provider::converse_body(named).error().param == "messages[1].name");
    auto completion_tokens = ask("x");
    completion_tokens.max_tokens = 5;
    completion_tokens.extensions = {{"max_completion_tokens", 5}};
    CHECK((*chatkit::bedrock_provider::converse_body(completion_tokens))["inferenceConfig"]["maxTokens"] == 5);
    auto hot = ask("x");
    hot.temperature = 1.5;
    CHECK(chatkit::bedrock_provider::converse_body(hot).error().param == "temperature");
}

TEMPLATE_TEST_CASE("throttling is retried and then succeeds, or ends as 429 with Retry-After", "", chatkit::bedrock_provider,
                   async_bedrock) {
    fake_bedrock fake{{fake_key}};
    auto o = fast_options();
    std::mutex mutex; // the async form calls on_retry on its loop
    std::vector<chatkit::error_kind> retried;
    o.on_retry = [&](const chatkit::upstream_failure& f) {
        const std::lock_guard lock{mutex};
        retried.push_back(f.e.kind);
    };
    TestType bedrock{o, test_env(fake)};
    CHECK(bedrock.complete(ask("x", "fake.throttle-once")));
    CHECK(fake.requests().size() == 2);
    {
        const std::lock_guard lock{mutex};
        CHECK(retried == std::vector<chatkit::error_kind>{chatkit::error_kind::rate_limited});
    }

    o.max_retries = 1;
    TestType impatient{o, test_env(fake)};
    auto c = impatient.complete(ask("x", "fake.throttle-always"));
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::rate_limited);
    CHECK(c.error().retry_after_seconds.value_or(0) >= 1);
    CHECK(c.error().message == "Too many requests, please wait before trying again.");
}

TEMPLATE_TEST_CASE("every Bedrock error maps to its status", "", chatkit::bedrock_provider, async_bedrock) {
    fake_bedrock fake{{fake_key}};
    auto o = fast_options();
    o.max_retries = 1;
    TestType bedrock{o, test_env(fake)};
    auto status_of = [&](const char* model) {
        auto c = bedrock.complete(ask("x", model));
        REQUIRE_FALSE(c);
        return chatkit::http_status(c.error().kind);
    };
    CHECK(status_of("fake.validation") == 400);
    CHECK(status_of("fake.denied") == 502);
    CHECK(status_of("fake.not-found") == 404);
    CHECK(status_of("fake.unavailable-always") == 503);
    CHECK(status_of("fake.notready-always") == 503);
    CHECK(status_of("fake.internal-always") == 502);
    CHECK(status_of("fake.slow") == 504);                    // read timeout
    CHECK(status_of("fake.model-timeout") == 504);           // ModelTimeoutException
    CHECK(status_of("fake.model-error") == 502);             // ModelErrorException
    CHECK(status_of("fake.unrecognized") == 502);            // UnrecognizedClientException
    CHECK(bedrock.complete(ask("x", "fake.notready-once"))); // retried
    CHECK(bedrock.complete(ask("x", "fake.unavailable-once")));
}

TEMPLATE_TEST_CASE("a refusal of the credentials reaches the client without account ids, access key ids or SigV4's canonical request", "",
                   chatkit::bedrock_provider, async_bedrock) {
    fake_bedrock fake{{fake_key}};
    auto o = fast_options();
    o.max_retries = 1;
    TestType bedrock{o, test_env(fake)};
    auto denied = bedrock.complete(ask("x", "fake.denied-arn"));
    REQUIRE_FALSE(denied);
    CHECK(denied.error().code == "upstream_credentials");
    CHECK(denied.error().message ==
          "Bedrock rejected the credentials: User: arn:aws:sts::************:assumed-role/chatkit-fn/AKIA**************** is not "
          "authorized to perform: bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1::foundation-model/fake.denied-arn");
    auto signature = bedrock.complete(ask("x", "fake.signature-detail"));
    REQUIRE_FALSE(signature);
    CHECK(signature.error().message ==
          "Bedrock rejected the credentials: The request signature we calculated does not match the signature you provided. "
          "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.");
    CHECK(signature.error().message.find("FwoGZXIvYXdz") == std::string::npos);
}

TEMPLATE_TEST_CASE("an exception frame or a corrupt frame mid-stream fails the stream after the delta", "", chatkit::bedrock_provider,
                   async_bedrock) {
    fake_bedrock fake{{fake_key}};
    TestType bedrock{fast_options(), test_env(fake)};
    collected got;
    auto c = bedrock.stream(ask("a b c", "fake.stream-throttle"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(got.deltas == std::vector<std::string>{"echo:"});
    CHECK(c.error().kind == chatkit::error_kind::rate_limited);

    collected got2;
    auto corrupt = bedrock.stream(ask("a b c", "fake.corrupt-frame"), got2.sink());
    REQUIRE_FALSE(corrupt);
    CHECK(corrupt.error().message.find("Message checksum mismatch") != std::string::npos);

    collected got3;
    auto cut = bedrock.stream(ask("a b c", "fake.stream-cut"), got3.sink());
    REQUIRE_FALSE(cut);
    CHECK(cut.error().kind == chatkit::error_kind::upstream);
    CHECK(fake.requests().size() == 3); // none retried: a delta had reached the client
}

TEMPLATE_TEST_CASE("aliases resolve per region, unknown ids pass through", "", chatkit::bedrock_provider, async_bedrock) {
    fake_bedrock fake{{fake_key}};
    TestType eu{fast_options(), test_env(fake, {{"AWS_REGION", "eu-west-3"}})};
    CHECK(eu.resolve_model("nova-lite") == "eu.amazon.nova-lite-v1:0");
    CHECK(eu.resolve_model("titan-text-express") == "amazon.titan-text-express-v1");
    CHECK(eu.resolve_model("arn:aws:bedrock:eu-west-3::foundation-model/x") == "arn:aws:bedrock:eu-west-3::foundation-model/x");
    CHECK(eu.resolve_model("") == "eu.amazon.nova-micro-v1:0");

    auto o = fast_options();
    o.models["house"] = {"amazon.nova-pro-v1:0", false};
    TestType extended{o, test_env(fake)};
    CHECK(extended.resolve_model("house") == "amazon.nova-pro-v1:0");
}

TEMPLATE_TEST_CASE("no region is a start-up error, and missing credentials mark the provider down", "", chatkit::bedrock_provider,
                   async_bedrock) {
    CHECK_THROWS_WITH(chatkit::bedrock_provider(chatkit::bedrock_options{}, env_with({})), Catch::Contains("AWS_REGION"));
    TestType no_creds{chatkit::bedrock_options{}, env_with({{"AWS_REGION", "us-east-1"}})};
    CHECK_FALSE(no_creds.health().ok);
    auto c = no_creds.complete(ask("x"));
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "aws_credentials_missing");
}

// Found by fuzz/bedrock_upstream_fuzzer: a field of an unexpected type (a numeric stopReason, a
// string token count, a numeric error message) threw out of the JSON library instead of being read
// as absent.
TEST_CASE("Bedrock fields of an unexpected type are read as absent, never thrown on") {
    using wire = chatkit::detail::bedrock_wire;
    auto c = wire::parse_answer(
        R"({"output":{"message":{"content":[{"text":"hi"}]}},"stopReason":7,"usage":{"inputTokens":"3","outputTokens":2}})");
    REQUIRE(c);
    CHECK(c->content == "hi");
    CHECK(c->finish_reason == "stop");
    CHECK(c->usage.prompt_tokens == 0);
    CHECK(c->usage.completion_tokens == 2);
    const auto f = wire::status_failure(400, R"({"message":5,"Message":["x"],"__type":{},"code":"ValidationException"})",
                                        std::map<std::string, std::string>{});
    CHECK(f.e.kind == chatkit::error_kind::invalid_request);
}

TEST_CASE("Bedrock's prompt cache: cache reads and writes count in prompt_tokens, and reads are the cached tokens") {
    using wire = chatkit::detail::bedrock_wire;
    auto c = wire::parse_answer(
        R"({"output":{"message":{"content":[{"text":"hi"}]}},"stopReason":"end_turn",)"
        R"("usage":{"inputTokens":14,"outputTokens":9,"totalTokens":143,"cacheReadInputTokens":100,"cacheWriteInputTokens":20}})");
    REQUIRE(c);
    CHECK(c->usage.prompt_tokens == 134);
    CHECK(c->usage.cached_tokens == 100);
    CHECK(c->usage.completion_tokens == 9);
    // Without a cache, as before.
    auto plain = wire::parse_answer(
        R"({"output":{"message":{"content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":14,"outputTokens":9,"totalTokens":23}})");
    REQUIRE(plain);
    CHECK(plain->usage.prompt_tokens == 14);
    CHECK(plain->usage.cached_tokens == 0);
}

TEST_CASE("tools, tool_choice and a tool-call history take Converse's form, with the request id in requestMetadata") {
    auto r = ask("weather in Paris?");
    r.request_id = "req-42";
    r.extensions = {
        {"tools",
         json::array({{{"type", "function"},
                       {"function", {{"name", "get_weather"}, {"description", "the weather"}, {"parameters", {{"type", "object"}}}}}},
                      {{"type", "function"}, {"function", {{"name", "get_time"}}}}})},
        {"tool_choice", "required"},
        {"parallel_tool_calls", true}};
    r.messages.push_back(
        {chatkit::role::assistant,
         "",
         {{"tool_calls",
           json::array(
               {{{"id", "call_a"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Paris"})"}}}},
                {{"id", "call_b"}, {"type", "function"}, {"function", {{"name", "get_time"}, {"arguments", ""}}}}})},
          {"refusal", nullptr}}});
    r.messages.push_back({chatkit::role::tool, "sunny", {{"tool_call_id", "call_a"}}});
    r.messages.push_back({chatkit::role::tool, "noon", {{"tool_call_id", "call_b"}}});
    r.messages.push_back({chatkit::role::user, "and tomorrow?", {}});
    auto body = chatkit::bedrock_provider::converse_body(r);
    REQUIRE(body);
    CHECK((*body)["toolConfig"] == json::parse(R"({"tools":[
        {"toolSpec":{"name":"get_weather","description":"the weather","inputSchema":{"json":{"type":"object"}}}},
        {"toolSpec":{"name":"get_time","inputSchema":{"json":{"type":"object"}}}}],"toolChoice":{"any":{}}})"));
    CHECK((*body)["messages"] == json::parse(R"([
        {"role":"user","content":[{"text":"weather in Paris?"}]},
        {"role":"assistant","content":[{"toolUse":{"toolUseId":"call_a","name":"get_weather","input":{"city":"Paris"}}},
                                       {"toolUse":{"toolUseId":"call_b","name":"get_time","input":{}}}]},
        {"role":"user","content":[{"toolResult":{"toolUseId":"call_a","content":[{"text":"sunny"}]}},
                                  {"toolResult":{"toolUseId":"call_b","content":[{"text":"noon"}]}},
                                  {"text":"and tomorrow?"}]}])"));
    CHECK((*body)["requestMetadata"] == json{{"chatkit_request_id", "req-42"}});

    r.extensions["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_time"}}}};
    CHECK((*chatkit::bedrock_provider::converse_body(r))["toolConfig"]["toolChoice"] == json{{"tool", {{"name", "get_time"}}}});

    auto refused = [](chatkit::chat_request q) {
        auto b = chatkit::bedrock_provider::converse_body(q);
        REQUIRE_FALSE(b);
        CHECK(b.error().kind == chatkit::error_kind::invalid_request);
        return b.error().param;
    };
    auto none = r;
    none.extensions["tool_choice"] = "none";
    CHECK(refused(none) == "tool_choice");
    auto serial = r;
    serial.extensions["parallel_tool_calls"] = false;
    CHECK(refused(serial) == "parallel_tool_calls");
    auto forgotten = r;
    forgotten.extensions.erase("tools");
    CHECK(refused(forgotten) == "tools"); // Bedrock refuses tool blocks without a toolConfig
    auto malformed = r;
    malformed.messages[2].extra["tool_calls"][0]["function"]["arguments"] = "[1]";
    CHECK(refused(malformed) == "messages[2].tool_calls[0].function.arguments");
}

TEMPLATE_TEST_CASE("a toolUse answer comes back as OpenAI tool_calls, whole or streamed, and the results go back", "",
                   chatkit::bedrock_provider, async_bedrock) {
    fake_bedrock fake{{fake_key}};
    TestType bedrock{fast_options(), test_env(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    const json expected = {{{"id", "tooluse_fake_1"},
                            {"type", "function"},
                            {"function", {{"name", "get_weather"}, {"arguments", R"({"q":"weather in Oslo?"})"}}}}};

    auto whole = bedrock.complete(r);
    REQUIRE(whole);
    CHECK(whole->finish_reason == "tool_calls");
    CHECK(whole->content.empty());
    CHECK(whole->extra["tool_calls"] == expected);

    collected deltas;
    auto streamed = bedrock.stream(r, deltas.sink());
    REQUIRE(streamed);
    CHECK(deltas.deltas.empty());
    CHECK(streamed->finish_reason == "tool_calls");
    // The fragments are passed on as Bedrock wrote them: the same input, perhaps spelt differently.
    const json call = streamed->extra["tool_calls"][0];
    const std::string arguments = call["function"]["arguments"];
    CHECK(call["id"] == "tooluse_fake_1");
    CHECK(call["function"]["name"] == "get_weather");
    CHECK(json::parse(arguments) == json{{"q", "weather in Oslo?"}});
    CHECK(streamed->usage.completion_tokens == 9);

    r.messages.push_back({chatkit::role::assistant, "", {{"tool_calls", expected}}});
    r.messages.push_back({chatkit::role::tool, "snow", {{"tool_call_id", "tooluse_fake_1"}}});
    auto answered = bedrock.complete(r); // the fake checks the result answers the toolUse before it
    REQUIRE(answered);
    CHECK(answered->content == "tool said: snow");
    for (const auto& seen : fake.requests()) CHECK(seen["signature_ok"] == true);
}

TEST_CASE("the async provider passes a toolUse block on as it streams: named first, then its input fragments") {
    fake_bedrock fake{{fake_key}};
    async_bedrock bedrock{fast_options(), test_env(fake)};
    auto r = ask("weather in Oslo?");
    r.extensions = {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
    collected got;
    auto streamed = bedrock.stream(r, got.sink(), got.tool_sink());
    REQUIRE(streamed);
    REQUIRE(got.tool_pieces.size() >= 2);
    CHECK(got.tool_pieces[0].id == "tooluse_fake_1");
    CHECK(got.tool_pieces[0].name == "get_weather");
    for (const auto& p : got.tool_pieces) CHECK(p.index == 0);
    CHECK(json::parse(got.arguments_of(0)) == json{{"q", "weather in Oslo?"}});
    CHECK(streamed->extra["tool_calls"][0]["function"]["arguments"] == got.arguments_of(0));
}

TEMPLATE_TEST_CASE("a stream that ends without its metadata event is an error, not zero usage", "", chatkit::bedrock_provider,
                   async_bedrock) {
    fake_bedrock fake{{fake_key}};
    auto o = fast_options();
    o.max_retries = 0;
    TestType bedrock{o, test_env(fake)};
    collected got;
    auto c = bedrock.stream(ask("a b", "fake.no-metadata"), got.sink());
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "upstream_truncated");
    CHECK(c.error().message.find("metadata") != std::string::npos);
    CHECK(got.joined() == "echo: a b"); // the text arrived; only the accounting is missing
}
