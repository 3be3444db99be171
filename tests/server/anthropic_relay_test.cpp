// sample_server relaying to Anthropic (a fake speaking the Messages API's exact wire format):
// /v1/chat/completions answered whole and streamed, with the upstream's faults surfacing cleanly,
// and tool use translated on every surface (OpenAI's two and Anthropic's own) and back.
// Runs once with each HTTP server (CHAT_SERVER=beast: the async provider; httplib: the blocking one).
#include "../support/fake_anthropic.hpp"
#include "../support/server_process.hpp"
#include "../support/sse_text.hpp"

#include <catch2/catch.hpp>

using nlohmann::json;
using test_support::anthropic_error_reply;
using test_support::fake_anthropic;
using test_support::fake_anthropic_reply;
using test_support::post_json;
using test_support::server_process;
using test_support::sse_data;

namespace {

constexpr const char* secret_key = "sk-ant-relay-SECRET-987654321";

std::map<std::string, std::string> relay_env(const fake_anthropic& fake, std::map<std::string, std::string> more = {}) {
    std::map<std::string, std::string> env{{"ANTHROPIC_API_KEY", secret_key},
                                           {"ANTHROPIC_BASE_URL", fake.base_url()},
                                           {"CHAT_MODEL", "claude-fake"},
                                           {"CHAT_UPSTREAM_TIMEOUT", "2"}};
    for (auto& [k, v] : more) env[k] = v;
    return env;
}

} // namespace

TEST_CASE("with only an Anthropic key, auto picks Anthropic and /v1/chat/completions relays to it") {
    fake_anthropic fake;
    server_process server{relay_env(fake)};
    CHECK(server.log().find("using the Anthropic provider") != std::string::npos);
    auto c = server.client();
    const json ask = {{"model", "claude-fake"},
                      {"max_tokens", 64},
                      {"stop", json::array({"END"})},
                      {"messages", {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "a b c"}}}}};
    auto plain = post_json(c, "/v1/chat/completions", ask, {{"X-Request-ID", "relay-1"}});
    REQUIRE(plain);
    REQUIRE(plain->status == 200);
    const auto body = json::parse(plain->body);
    CHECK(body["object"] == "chat.completion");
    CHECK(body["choices"][0]["message"]["content"] == "echo: a b c");
    CHECK(body["choices"][0]["finish_reason"] == "stop");
    CHECK(body["usage"]["prompt_tokens"] == 3);
    CHECK(body["usage"]["completion_tokens"] == 4);

    const auto sent = fake.requests().at(0);
    CHECK(sent.body["system"] == "be brief");
    CHECK(sent.body["messages"] == json::parse(R"([{"role":"user","content":"a b c"}])"));
    CHECK(sent.body["max_tokens"] == 64);
    CHECK(sent.body["stop_sequences"] == json::array({"END"}));
    CHECK(sent.headers.find("x-api-key")->second == secret_key);
    CHECK(sent.headers.find("anthropic-version")->second == "2023-06-01");
    CHECK(sent.headers.find("X-Request-ID")->second == "relay-1");

    auto health = json::parse(c.Get("/health")->body);
    CHECK(health["provider"] == "anthropic");
    CHECK(server.log().find(secret_key) == std::string::npos);
}

TEST_CASE("CHAT_PROVIDER=anthropic streams /v1/chat/completions with usage including cached tokens, the default max_tokens sent") {
    fake_anthropic fake;
    fake_anthropic_reply cached;
    cached.chunk_bytes = 1;
    cached.cache_read_input_tokens = 40;
    cached.cache_creation_input_tokens = 10;
    fake.script({cached});
    server_process server{relay_env(fake, {{"CHAT_PROVIDER", "anthropic"}, {"CHAT_DEFAULT_MAX_TOKENS", "321"}})};
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
    CHECK(usage["prompt_tokens"] == 2 + 40 + 10);
    CHECK(usage["prompt_tokens_details"]["cached_tokens"] == 40);
    CHECK(usage["completion_tokens"] == 3);

    const auto sent = fake.requests().at(0);
    CHECK(sent.body["stream"] == true);
    CHECK(sent.body["max_tokens"] == 321);
}

TEST_CASE("an answer naming Anthropic's dated snapshot is priced, cache reads at the cached rate") {
    fake_anthropic fake;
    fake_anthropic_reply snapshot;
    snapshot.model = "claude-sonnet-4-5-20250929"; // what the real API answers to "claude-sonnet-4-5"
    snapshot.cache_read_input_tokens = 1000;
    fake.script({snapshot});
    server_process server{relay_env(fake)};
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"model", "claude-sonnet-4-5"}, {"content", "a b"}});
    REQUIRE(r);
    REQUIRE(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK(body["model"] == "claude-sonnet-4-5-20250929");
    CHECK(body["usage"]["prompt_tokens"] == 1002);
    CHECK(body["usage"]["prompt_tokens_details"]["cached_tokens"] == 1000);
    REQUIRE(body["cost_usd"].is_number());
    // USD per 1M tokens: 2 fresh input at 3.00, 1000 cached at 0.30, 3 output at 15.00.
    CHECK(body["cost_usd"].get<double>() == Approx((2 * 3.00 + 1000 * 0.30 + 3 * 15.00) / 1e6));
}

TEST_CASE("through sample_server, Anthropic's faults and refused fields reach the client as clean errors") {
    fake_anthropic fake;
    server_process server{relay_env(fake, {{"CHAT_UPSTREAM_MAX_RETRIES", "1"}, {"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();
    const json ask = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};

    auto with_logprobs = ask;
    with_logprobs["logprobs"] = true;
    auto logprobs = post_json(c, "/v1/chat/completions", with_logprobs);
    REQUIRE(logprobs->status == 400);
    CHECK(json::parse(logprobs->body)["error"]["param"] == "logprobs");
    CHECK(fake.requests().empty());

    auto overloaded = anthropic_error_reply(529, "overloaded_error", "Overloaded");
    overloaded.headers = {{"retry-after-ms", "1"}};
    fake.script({overloaded});
    CHECK(post_json(c, "/v1/chat/completions", ask)->status == 200); // retried
    fake.script({overloaded, overloaded});
    auto busy = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(busy->status == 502);
    CHECK(json::parse(busy->body)["error"]["message"] == "upstream overloaded (HTTP 529): Overloaded");

    fake.script({anthropic_error_reply(401, "authentication_error", std::string{"invalid x-api-key "} + secret_key)});
    auto denied = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(denied->status == 502);
    CHECK(denied->body.find(secret_key) == std::string::npos);

    fake_anthropic_reply late_error;
    late_error.error_after_first_delta = true;
    fake.script({late_error});
    auto cut = post_json(c, "/v1/chat/completions", {{"stream", true}, {"messages", {{{"role", "user"}, {"content", "p q r"}}}}});
    REQUIRE(cut->status == 200);
    CHECK(cut->body.find("Overloaded") != std::string::npos);
    CHECK(cut->body.find("[DONE]") == std::string::npos);

    CHECK(server.log().find(secret_key) == std::string::npos);
}

TEST_CASE("CHAT_PROVIDER=anthropic without a key for api.anthropic.com stops start-up with a clear message") {
    const auto r = test_support::run_to_exit({{"CHAT_PROVIDER", "anthropic"}, {"CHAT_PORT", "0"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("ANTHROPIC_API_KEY") != std::string::npos);
}

TEST_CASE("a tool call round-trips through Anthropic from every surface: Chat Completions, Responses and Messages") {
    fake_anthropic fake;
    server_process server{relay_env(fake, {{"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();
    const json weather = {{"type", "function"}, {"function", {{"name", "get_weather"}, {"parameters", {{"type", "object"}}}}}};

    // Chat Completions: tool_calls out, the tool message back in.
    const json first = {{"tools", {weather}}, {"messages", {{{"role", "user"}, {"content", "weather in Rome?"}}}}};
    auto call = post_json(c, "/v1/chat/completions", first);
    REQUIRE(call->status == 200);
    const auto choice = json::parse(call->body)["choices"][0];
    CHECK(choice["finish_reason"] == "tool_calls");
    const auto calls = choice["message"]["tool_calls"];
    REQUIRE(calls.size() == 1);
    CHECK(calls[0]["function"]["name"] == "get_weather");
    CHECK(json::parse(calls[0]["function"]["arguments"].get<std::string>()) == json{{"q", "weather in Rome?"}});
    CHECK(fake.requests().back().body["tools"][0]["input_schema"] == json{{"type", "object"}});
    auto second = first;
    second["messages"].push_back(choice["message"]);
    second["messages"].push_back({{"role", "tool"}, {"tool_call_id", calls[0]["id"]}, {"content", "sunny"}});
    auto answered = post_json(c, "/v1/chat/completions", second);
    REQUIRE(answered->status == 200);
    CHECK(json::parse(answered->body)["choices"][0]["message"]["content"] == "tool said: sunny");

    // Responses: a function_call item out, its output back in; streamed too.
    const json function = {{"type", "function"}, {"name", "get_weather"}, {"parameters", {{"type", "object"}}}};
    auto response = post_json(c, "/v1/responses", {{"tools", {function}}, {"input", "weather in Oslo?"}});
    REQUIRE(response->status == 200);
    const auto item = json::parse(response->body)["output"][0];
    CHECK(item["type"] == "function_call");
    CHECK(json::parse(item["arguments"].get<std::string>()) == json{{"q", "weather in Oslo?"}});
    auto followed = post_json(c, "/v1/responses",
                              {{"tools", {function}},
                               {"input",
                                {{{"role", "user"}, {"content", "weather in Oslo?"}},
                                 item,
                                 {{"type", "function_call_output"}, {"call_id", item["call_id"]}, {"output", "snow"}}}}});
    REQUIRE(followed->status == 200);
    CHECK(json::parse(followed->body)["output"][0]["content"][0]["text"] == "tool said: snow");

    // Messages: a tool_use block out (streamed: its input as input_json_delta), tool_result back in.
    const json tool = {{"name", "get_weather"}, {"input_schema", {{"type", "object"}}}};
    const json ask = {{"model", "claude-fake"},
                      {"max_tokens", 100},
                      {"tools", {tool}},
                      {"stream", true},
                      {"messages", {{{"role", "user"}, {"content", "weather in Lima?"}}}}};
    auto events = post_json(c, "/v1/messages", ask);
    REQUIRE(events->status == 200);
    std::string input;
    std::string tool_id;
    for (const auto& line : sse_data(events->body)) {
        const auto e = json::parse(line);
        if (e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use") tool_id = e["content_block"]["id"];
        if (e["type"] == "content_block_delta" && e["delta"]["type"] == "input_json_delta")
            input += e["delta"]["partial_json"].get<std::string>();
        if (e["type"] == "message_delta") CHECK(e["delta"]["stop_reason"] == "tool_use");
    }
    CHECK(json::parse(input) == json{{"q", "weather in Lima?"}});
    auto result = ask;
    result.erase("stream");
    result["messages"].push_back(
        {{"role", "assistant"},
         {"content", {{{"type", "tool_use"}, {"id", tool_id}, {"name", "get_weather"}, {"input", json::parse(input)}}}}});
    result["messages"].push_back(
        {{"role", "user"}, {"content", {{{"type", "tool_result"}, {"tool_use_id", tool_id}, {"content", "warm"}}}}});
    auto message = post_json(c, "/v1/messages", result);
    REQUIRE(message->status == 200);
    const auto body = json::parse(message->body);
    CHECK(body["content"][0]["text"] == "tool said: warm");
    CHECK(body["stop_reason"] == "end_turn");
    // What went upstream is what the client sent, through chatkit's form and back.
    CHECK(fake.requests().back().body["messages"][1]["content"][0] ==
          json{{"type", "tool_use"}, {"id", tool_id}, {"name", "get_weather"}, {"input", {{"q", "weather in Lima?"}}}});
}
