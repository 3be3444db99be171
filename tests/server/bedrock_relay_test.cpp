// sample_server with CHAT_PROVIDER=bedrock and AWS environment credentials, relaying to a fake
// Bedrock Runtime (reached through AWS_ENDPOINT_URL_BEDROCK_RUNTIME) that verifies every
// signature with botocore.
#include <chatkit/sse.hpp>

#include "../support/fake_bedrock.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

using nlohmann::json;
using test_support::fake_bedrock;
using test_support::post_json;
using test_support::server_process;

namespace {

constexpr const char* access_key = "AKIDSERVERTEST";
constexpr const char* secret_key = "server/secret/KEY0123456789";

std::map<std::string, std::string> bedrock_env(const fake_bedrock& fake, std::map<std::string, std::string> more = {}) {
    std::map<std::string, std::string> env{{"AWS_ACCESS_KEY_ID", access_key}, {"AWS_SECRET_ACCESS_KEY", secret_key},
                                           {"AWS_REGION", "us-west-2"},       {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint()},
                                           {"CHAT_MODEL", "nova-lite"},       {"CHAT_UPSTREAM_TIMEOUT", "2"}};
    for (auto& [k, v] : more) env[k] = v;
    return env;
}

} // namespace

TEST_CASE("with AWS credentials and no OpenAI key, auto picks Bedrock and /chat relays, signed") {
    fake_bedrock fake{{std::string{access_key} + "=" + secret_key}};
    server_process server{bedrock_env(fake)};
    CHECK(server.log().find("using the Bedrock provider") != std::string::npos);
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"user_id", "bea"}, {"content", "hello from aws"}});
    REQUIRE(r);
    REQUIRE(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK(body["content"] == "echo: hello from aws");
    CHECK(body["model"] == "nova-lite");
    CHECK(body["usage"]["total_tokens"] == 7);
    const auto seen = fake.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0]["signature_ok"] == true);
    CHECK(seen[0]["path"] == "/model/us.amazon.nova-lite-v1%3A0/converse");
    CHECK(json::parse(c.Get("/health")->body)["provider"] == "bedrock");
    CHECK(server.log().find(secret_key) == std::string::npos);
}

TEST_CASE("/chat and /v1/chat/completions stream through ConverseStream") {
    fake_bedrock fake{{std::string{access_key} + "=" + secret_key}};
    server_process server{bedrock_env(fake, {{"CHAT_PROVIDER", "bedrock"}})};
    auto c = server.client();
    auto chat = post_json(c, "/chat", {{"content", "a b"}, {"stream", true}});
    REQUIRE(chat->status == 200);
    CHECK(chat->body.find("event: delta\ndata: {\"content\":\"echo:\"}") != std::string::npos);
    CHECK(chat->body.find("\"content\":\"echo: a b\"") != std::string::npos);

    auto openai = post_json(c, "/v1/chat/completions",
                            {{"model", "claude-3-haiku"},
                             {"stream", true},
                             {"stream_options", {{"include_usage", true}}},
                             {"messages", {{{"role", "user"}, {"content", "x y"}}}}});
    REQUIRE(openai->status == 200);
    CHECK(openai->body.find("\"content\":\" y\"") != std::string::npos);
    CHECK(openai->body.find("\"total_tokens\":5") != std::string::npos);
    CHECK(openai->body.ends_with("data: [DONE]\n\n"));
    for (const auto& seen : fake.requests()) CHECK(seen["signature_ok"] == true);
}

TEST_CASE("Bedrock errors reach the client: 429 after retries, 400, and an SSE error event mid-stream") {
    fake_bedrock fake{{std::string{access_key} + "=" + secret_key}};
    server_process server{bedrock_env(fake, {{"CHAT_PROVIDER", "bedrock"}, {"CHAT_UPSTREAM_MAX_RETRIES", "1"}, {"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();
    auto throttled = post_json(c, "/chat", {{"content", "x"}, {"model", "fake.throttle-always"}});
    REQUIRE(throttled->status == 429);
    CHECK(!throttled->get_header_value("Retry-After").empty());
    CHECK(post_json(c, "/chat", {{"content", "x"}, {"model", "fake.validation"}})->status == 400);
    auto mid = post_json(c, "/chat", {{"content", "p q"}, {"model", "fake.stream-throttle"}, {"stream", true}});
    REQUIRE(mid->status == 200);
    CHECK(mid->body.find("event: error") != std::string::npos);
    CHECK(mid->body.find("event: done") == std::string::npos);
}

TEST_CASE("CHAT_PROVIDER=bedrock without a region stops start-up with a clear message") {
    const auto r = test_support::run_to_exit({{"CHAT_PROVIDER", "bedrock"},
                                              {"CHAT_PORT", "0"},
                                              {"AWS_REGION", ""},
                                              {"AWS_DEFAULT_REGION", ""},
                                              {"AWS_CONFIG_FILE", "/nonexistent"}},
                                             {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("AWS_REGION") != std::string::npos);
}

TEST_CASE("a tool call round-trips through Bedrock from /v1/messages and /v1/chat/completions, the request id in requestMetadata") {
    fake_bedrock fake{{std::string{access_key} + "=" + secret_key}};
    server_process server{bedrock_env(fake, {{"CHAT_PROVIDER", "bedrock"}, {"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();
    // Anthropic's Messages in: a tool_use block out, the tool_result back in.
    const json tool = {{"name", "get_weather"}, {"input_schema", {{"type", "object"}}}};
    json ask = {{"model", "nova-lite"},
                {"max_tokens", 100},
                {"tools", {tool}},
                {"messages", {{{"role", "user"}, {"content", "weather in Lima?"}}}}};
    auto first = c.Post("/v1/messages", {{"X-Request-ID", "bedrock-tools-1"}}, ask.dump(), "application/json");
    REQUIRE(first->status == 200);
    const auto message = json::parse(first->body);
    CHECK(message["stop_reason"] == "tool_use");
    REQUIRE(message["content"].size() == 1);
    const auto use = message["content"][0];
    CHECK(use["type"] == "tool_use");
    CHECK(use["input"] == json{{"q", "weather in Lima?"}});
    ask["messages"].push_back({{"role", "assistant"}, {"content", message["content"]}});
    ask["messages"].push_back(
        {{"role", "user"}, {"content", {{{"type", "tool_result"}, {"tool_use_id", use["id"]}, {"content", "warm"}}}}});
    auto second = post_json(c, "/v1/messages", ask);
    REQUIRE(second->status == 200);
    CHECK(json::parse(second->body)["content"][0]["text"] == "tool said: warm");

    // OpenAI's Chat Completions, streamed: the call arrives in tool_calls pieces as Bedrock
    // streams it, named by its first piece, its arguments in the fragments that follow.
    const json openai = {{"stream", true},
                         {"tools", {{{"type", "function"}, {"function", {{"name", "get_weather"}}}}}},
                         {"messages", {{{"role", "user"}, {"content", "weather in Rome?"}}}}};
    auto streamed = post_json(c, "/v1/chat/completions", openai);
    REQUIRE(streamed->status == 200);
    std::vector<json> pieces;
    std::string finish_reason;
    chatkit::sse_parser parser;
    parser.feed(streamed->body, [&](const chatkit::sse_message& m) {
        if (m.data == "[DONE]") return;
        const auto chunk = json::parse(m.data);
        if (chunk["choices"].empty()) return;
        const auto& choice = chunk["choices"][0];
        if (choice["delta"].contains("tool_calls"))
            for (const auto& p : choice["delta"]["tool_calls"]) pieces.push_back(p);
        if (choice["finish_reason"].is_string()) finish_reason = choice["finish_reason"];
    });
    REQUIRE(pieces.size() >= 2);
    CHECK(pieces[0]["id"] == "tooluse_fake_1");
    CHECK(pieces[0]["function"]["name"] == "get_weather");
    std::string arguments;
    for (const auto& p : pieces) {
        CHECK(p["index"] == 0);
        arguments += p["function"]["arguments"].get<std::string>();
    }
    CHECK(json::parse(arguments) == json{{"q", "weather in Rome?"}});
    CHECK(finish_reason == "tool_calls");

    const auto seen = fake.requests();
    CHECK(seen[0]["body"]["requestMetadata"] == json{{"chatkit_request_id", "bedrock-tools-1"}});
    CHECK(seen[0]["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather");
    for (const auto& s : seen) CHECK(s["signature_ok"] == true);
}
