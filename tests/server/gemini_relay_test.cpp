// sample_server relaying to Gemini (a fake speaking the Gemini API's wire format):
// /v1/chat/completions answered whole and streamed, with the upstream's faults surfacing cleanly.
// Runs once with each HTTP server (CHAT_SERVER=beast: the async provider; httplib: the blocking one).
#include "../support/fake_gemini.hpp"
#include "../support/server_process.hpp"
#include "../support/sse_text.hpp"

#include <catch2/catch.hpp>

using nlohmann::json;
using test_support::fake_gemini;
using test_support::fake_gemini_reply;
using test_support::gemini_error_reply;
using test_support::post_json;
using test_support::server_process;
using test_support::sse_data;

namespace {

constexpr const char* secret_key = "AIza-relay-SECRET-987654321";

std::map<std::string, std::string> relay_env(const fake_gemini& fake, std::map<std::string, std::string> more = {}) {
    std::map<std::string, std::string> env{{"GEMINI_API_KEY", secret_key},
                                           {"CHAT_GEMINI_BASE_URL", fake.base_url()},
                                           {"CHAT_MODEL", "gemini-fake"},
                                           {"CHAT_UPSTREAM_TIMEOUT", "2"}};
    for (auto& [k, v] : more) env[k] = v;
    return env;
}

} // namespace

TEST_CASE("with only a Gemini key, auto picks Gemini and /v1/chat/completions relays to it") {
    fake_gemini fake{{}, secret_key};
    server_process server{relay_env(fake, {{"GOOGLE_API_KEY", "AIza-not-this-one"}})}; // GEMINI_API_KEY comes first
    CHECK(server.log().find("using the Gemini provider") != std::string::npos);
    auto c = server.client();
    const json ask = {{"model", "gemini-fake"},
                      {"max_tokens", 64},
                      {"temperature", 1.2},
                      {"stop", json::array({"END"})},
                      {"messages", {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "a b c"}}}}};
    auto plain = post_json(c, "/v1/chat/completions", ask, {{"X-Request-ID", "relay-1"}});
    REQUIRE(plain);
    REQUIRE(plain->status == 200);
    const auto body = json::parse(plain->body);
    CHECK(body["object"] == "chat.completion");
    CHECK(body["model"] == "gemini-fake");
    CHECK(body["choices"][0]["message"]["content"] == "echo: a b c");
    CHECK(body["choices"][0]["finish_reason"] == "stop");
    CHECK(body["usage"]["prompt_tokens"] == 3);
    CHECK(body["usage"]["completion_tokens"] == 4);

    const auto sent = fake.requests().at(0);
    CHECK(sent.model == "gemini-fake");
    CHECK(sent.method == "generateContent");
    CHECK(sent.body["systemInstruction"] == json::parse(R"({"parts":[{"text":"be brief"}]})"));
    CHECK(sent.body["contents"] == json::parse(R"([{"role":"user","parts":[{"text":"a b c"}]}])"));
    CHECK(sent.body["generationConfig"] == json::parse(R"({"temperature":1.2,"maxOutputTokens":64,"stopSequences":["END"]})"));
    CHECK(sent.headers.find("x-goog-api-key")->second == secret_key);
    CHECK(sent.headers.find("X-Request-ID")->second == "relay-1");

    auto health = json::parse(c.Get("/health")->body);
    CHECK(health["provider"] == "gemini");
    CHECK(server.log().find(secret_key) == std::string::npos);
}

TEST_CASE("auto prefers an Anthropic key to a Gemini key, and GOOGLE_API_KEY is read when GEMINI_API_KEY is unset") {
    fake_gemini fake{{}, secret_key};
    {
        server_process both{relay_env(fake, {{"ANTHROPIC_API_KEY", "sk-ant-unused"}, {"ANTHROPIC_BASE_URL", "http://127.0.0.1:9"}})};
        CHECK(both.log().find("using the Anthropic provider") != std::string::npos);
    }
    auto env = relay_env(fake);
    env.erase("GEMINI_API_KEY");
    env["GOOGLE_API_KEY"] = secret_key;
    server_process server{env};
    CHECK(server.log().find("using the Gemini provider") != std::string::npos);
    auto c = server.client();
    auto r = post_json(c, "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(fake.requests().at(0).headers.find("x-goog-api-key")->second == secret_key);
}

TEST_CASE("CHAT_PROVIDER=gemini streams /v1/chat/completions with usage including cached and reasoning tokens") {
    fake_gemini fake;
    fake_gemini_reply thinking;
    thinking.chunk_bytes = 1;
    thinking.cached_tokens = 40;
    thinking.thoughts_tokens = 12;
    thinking.thought_part = true;
    fake.script({thinking});
    server_process server{relay_env(fake, {{"CHAT_PROVIDER", "gemini"}})};
    auto c = server.client();
    const json ask = {
        {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"messages", {{{"role", "user"}, {"content", "x y"}}}}};
    auto streamed = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(streamed);
    REQUIRE(streamed->status == 200);
    const auto lines = sse_data(streamed->body);
    REQUIRE(lines.size() >= 4);
    CHECK(lines.back() == "[DONE]");
    std::string text, finish;
    for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
        auto chunk = json::parse(lines[i]);
        if (chunk["choices"].empty()) continue;
        if (chunk["choices"][0]["delta"].contains("content")) text += chunk["choices"][0]["delta"]["content"].get<std::string>();
        if (chunk["choices"][0]["finish_reason"].is_string()) finish = chunk["choices"][0]["finish_reason"];
    }
    CHECK(text == "echo: x y");
    CHECK(finish == "stop");
    const auto usage = json::parse(lines[lines.size() - 2])["usage"];
    CHECK(usage["prompt_tokens"] == 2 + 40);
    CHECK(usage["prompt_tokens_details"]["cached_tokens"] == 40);
    CHECK(usage["completion_tokens"] == 3 + 12);
    CHECK(usage["completion_tokens_details"]["reasoning_tokens"] == 12);

    const auto sent = fake.requests().at(0);
    CHECK(sent.method == "streamGenerateContent");
    CHECK(sent.alt == "sse");
}

TEST_CASE("a Gemini answer is priced, cache reads at the cached rate and thinking at the output rate") {
    fake_gemini fake;
    fake_gemini_reply priced;
    priced.model_version = "gemini-2.5-flash";
    priced.cached_tokens = 1000;
    priced.thoughts_tokens = 100;
    fake.script({priced});
    server_process server{relay_env(fake)};
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"model", "gemini-2.5-flash"}, {"content", "a b"}});
    REQUIRE(r);
    REQUIRE(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK(body["model"] == "gemini-2.5-flash");
    CHECK(body["usage"]["prompt_tokens"] == 1002);
    CHECK(body["usage"]["prompt_tokens_details"]["cached_tokens"] == 1000);
    CHECK(body["usage"]["completion_tokens"] == 3 + 100);
    REQUIRE(body["cost_usd"].is_number());
    // USD per 1M tokens (data/pricing.json): 2 fresh input at 0.30, 1000 cached at 0.075, 103 output at 2.50.
    CHECK(body["cost_usd"].get<double>() == Approx((2 * 0.30 + 1000 * 0.075 + 103 * 2.50) / 1e6));
}

TEST_CASE("through sample_server, Gemini's faults, a blocked prompt and refused fields reach the client as clean errors") {
    fake_gemini fake;
    server_process server{relay_env(fake, {{"CHAT_UPSTREAM_MAX_RETRIES", "1"}, {"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();
    const json ask = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};

    auto with_logprobs = ask;
    with_logprobs["logprobs"] = true;
    auto logprobs = post_json(c, "/v1/chat/completions", with_logprobs);
    REQUIRE(logprobs->status == 400);
    CHECK(json::parse(logprobs->body)["error"]["param"] == "logprobs");
    auto with_format = ask;
    with_format["response_format"] = {{"type", "json_object"}};
    auto format = post_json(c, "/v1/chat/completions", with_format);
    REQUIRE(format->status == 400);
    CHECK(json::parse(format->body)["error"]["param"] == "response_format");
    CHECK(fake.requests().empty());

    fake_gemini_reply blocked;
    blocked.block_reason = "PROHIBITED_CONTENT";
    fake.script({blocked});
    auto refused = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(refused->status == 400);
    CHECK(json::parse(refused->body)["error"]["code"] == "content_blocked");
    CHECK(json::parse(refused->body)["error"]["message"] == "Gemini blocked the prompt (PROHIBITED_CONTENT)");
    CHECK(fake.requests().size() == 1);

    auto overloaded = gemini_error_reply(503, "UNAVAILABLE", "The model is overloaded. Please try again later.");
    overloaded.headers = {{"Retry-After", "0.001"}};
    fake.script({overloaded});
    CHECK(post_json(c, "/v1/chat/completions", ask)->status == 200); // retried
    fake.script({overloaded, overloaded});
    auto busy = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(busy->status == 502);
    CHECK(json::parse(busy->body)["error"]["message"] == "upstream error (HTTP 503): The model is overloaded. Please try again later.");

    auto limited = gemini_error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded",
                                      json::array({{{"@type", "type.googleapis.com/google.rpc.RetryInfo"}, {"retryDelay", "200s"}}}));
    fake.script({limited}); // a delay longer than any retry waits for: answered at once, the delay passed on
    auto slow_down = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(slow_down->status == 429);
    CHECK(slow_down->get_header_value("Retry-After") == "200");

    fake.script(
        {gemini_error_reply(400, "INVALID_ARGUMENT", std::string{"API key not valid: "} + secret_key,
                            json::array({{{"@type", "type.googleapis.com/google.rpc.ErrorInfo"}, {"reason", "API_KEY_INVALID"}}}))});
    auto denied = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(denied->status == 502);
    CHECK(denied->body.find(secret_key) == std::string::npos);

    fake_gemini_reply late_error;
    late_error.error_after_first_delta = true;
    fake.script({late_error});
    auto cut = post_json(c, "/v1/chat/completions", {{"stream", true}, {"messages", {{{"role", "user"}, {"content", "p q r"}}}}});
    REQUIRE(cut->status == 200);
    CHECK(cut->body.find("overloaded") != std::string::npos);
    CHECK(cut->body.find("[DONE]") == std::string::npos);

    CHECK(server.log().find(secret_key) == std::string::npos);
}

TEST_CASE("CHAT_PROVIDER=gemini without a key for generativelanguage.googleapis.com stops start-up with a clear message") {
    const auto r = test_support::run_to_exit({{"CHAT_PROVIDER", "gemini"}, {"CHAT_PORT", "0"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("GEMINI_API_KEY") != std::string::npos);
}

TEST_CASE("a tool call round-trips through Gemini from /v1/chat/completions and /v1/messages") {
    fake_gemini fake;
    server_process server{relay_env(fake, {{"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();
    const json first = {{"tools", {{{"type", "function"}, {"function", {{"name", "get_weather"}, {"parameters", {{"type", "object"}}}}}}}},
                        {"messages", {{{"role", "user"}, {"content", "weather in Rome?"}}}}};
    auto call = post_json(c, "/v1/chat/completions", first);
    REQUIRE(call->status == 200);
    const auto choice = json::parse(call->body)["choices"][0];
    CHECK(choice["finish_reason"] == "tool_calls");
    const auto calls = choice["message"]["tool_calls"];
    REQUIRE(calls.size() == 1);
    CHECK(json::parse(calls[0]["function"]["arguments"].get<std::string>()) == json{{"q", "weather in Rome?"}});
    auto second = first;
    second["messages"].push_back(choice["message"]);
    second["messages"].push_back({{"role", "tool"}, {"tool_call_id", calls[0]["id"]}, {"content", "sunny"}});
    auto answered = post_json(c, "/v1/chat/completions", second);
    REQUIRE(answered->status == 200);
    CHECK(json::parse(answered->body)["choices"][0]["message"]["content"] == "tool said: sunny");

    // Anthropic's Messages in, streamed: the call becomes a tool_use block.
    const json ask = {{"model", "gemini-fake"},
                      {"max_tokens", 100},
                      {"stream", true},
                      {"tools", {{{"name", "get_weather"}, {"input_schema", {{"type", "object"}}}}}},
                      {"messages", {{{"role", "user"}, {"content", "weather in Lima?"}}}}};
    auto events = post_json(c, "/v1/messages", ask);
    REQUIRE(events->status == 200);
    CHECK(events->body.find(R"("content_block":{"id":"call_0","input":{},"name":"get_weather","type":"tool_use"})") != std::string::npos);
    CHECK(events->body.find(R"("stop_reason":"tool_use")") != std::string::npos);
}
