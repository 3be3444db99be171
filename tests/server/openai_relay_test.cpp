// sample_server relaying to an OpenAI-compatible upstream (a fake speaking the exact wire format):
// /chat and /v1/chat/completions, streamed and not, with the upstream's faults surfacing cleanly.
#include "../support/fake_openai.hpp"
#include "../support/server_process.hpp"
#include "../support/sse_text.hpp"

#include <catch2/catch.hpp>

using nlohmann::json;
using test_support::fake_openai;
using test_support::fake_reply;
using test_support::post_json;
using test_support::server_process;
using test_support::sse_data;
using test_support::status_reply;

namespace {

constexpr const char* secret_key = "sk-relay-SECRET-987654321";

std::map<std::string, std::string> relay_env(const fake_openai& fake, std::map<std::string, std::string> more = {}) {
    std::map<std::string, std::string> env{
        {"OPENAI_API_KEY", secret_key}, {"OPENAI_BASE_URL", fake.base_url()}, {"CHAT_MODEL", "fake-1"}, {"CHAT_UPSTREAM_TIMEOUT", "2"}};
    for (auto& [k, v] : more) env[k] = v;
    return env;
}

} // namespace

TEST_CASE("with an API key, auto picks OpenAI and /chat relays to the upstream") {
    fake_openai fake;
    server_process server{relay_env(fake)};
    CHECK(server.log().find("using the OpenAI provider") != std::string::npos);
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"user_id", "ann"}, {"content", "relay this"}}, {{"X-Request-ID", "relay-1"}});
    REQUIRE(r);
    REQUIRE(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK(body["content"] == "echo: relay this");
    CHECK(body["model"] == "fake-1");
    CHECK(body["usage"]["total_tokens"] == 5);
    const auto sent = fake.requests().at(0);
    CHECK(sent.headers.find("X-Request-ID")->second == "relay-1");
    CHECK(sent.headers.find("Authorization")->second == std::string{"Bearer "} + secret_key);
    CHECK(sent.body["user"] == "ann");

    auto health = json::parse(c.Get("/health")->body);
    CHECK(health["provider"] == "openai");
}

TEST_CASE("/v1/chat/completions relays, non-streamed and streamed with usage, and keeps pass-through fields") {
    fake_openai fake;
    server_process server{relay_env(fake)};
    auto c = server.client();
    const json ask = {{"model", "fake-1"}, {"seed", 11}, {"messages", {{{"role", "user"}, {"content", "a b c"}}}}};
    auto plain = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(plain->status == 200);
    const auto body = json::parse(plain->body);
    CHECK(body["object"] == "chat.completion");
    CHECK(body["choices"][0]["message"]["content"] == "echo: a b c");
    CHECK(body["usage"]["completion_tokens"] == 4);
    CHECK(fake.requests().back().body["seed"] == 11);

    auto streaming = ask;
    streaming["stream"] = true;
    streaming["stream_options"] = {{"include_usage", true}};
    streaming["seed"] = 12; // not a cache hit
    auto streamed = post_json(c, "/v1/chat/completions", streaming);
    REQUIRE(streamed->status == 200);
    const auto lines = sse_data(streamed->body);
    REQUIRE(lines.size() >= 4);
    CHECK(lines.back() == "[DONE]");
    std::string text;
    for (std::size_t i = 0; i + 2 < lines.size(); ++i) {
        auto chunk = json::parse(lines[i]);
        if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("content"))
            text += chunk["choices"][0]["delta"]["content"].get<std::string>();
    }
    CHECK(text == "echo: a b c");
    CHECK(json::parse(lines[lines.size() - 2])["usage"]["total_tokens"] == 7);
}

TEST_CASE("/chat streams token by token through the upstream") {
    fake_openai fake;
    fake_reply bytewise;
    bytewise.chunk_bytes = 1;
    fake.script({bytewise});
    server_process server{relay_env(fake)};
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"content", "x y z"}, {"stream", true}});
    REQUIRE(r->status == 200);
    const auto lines = sse_data(r->body);
    REQUIRE(lines.size() == 5); // 4 deltas and done
    CHECK(json::parse(lines[0])["content"] == "echo:");
    CHECK(json::parse(lines[4])["content"] == "echo: x y z");
    CHECK(json::parse(lines[4])["usage"]["completion_tokens"] == 4);
}

TEST_CASE("upstream faults reach the client as clean errors") {
    fake_openai fake;
    server_process server{relay_env(fake, {{"CHAT_UPSTREAM_MAX_RETRIES", "1"}, {"CHAT_CACHE_SIZE", "0"}})};
    auto c = server.client();

    auto limited = status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded");
    limited.headers = {{"retry-after", "1"}};
    fake.script({limited, limited});
    auto r = post_json(c, "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
    REQUIRE(r->status == 429);
    CHECK(r->get_header_value("Retry-After") == "1");
    CHECK(json::parse(r->body)["error"]["message"] == "Rate limit reached");

    auto boom = status_reply(500, "upstream exploded", "server_error");
    boom.headers = {{"retry-after-ms", "1"}};
    fake.script({boom});
    CHECK(post_json(c, "/chat", {{"content", "again"}})->status == 200); // retried

    fake.script({status_reply(401, std::string{"Incorrect API key provided: "} + secret_key, "invalid_request_error", "invalid_api_key")});
    auto denied = post_json(c, "/chat", {{"content", "who am i"}});
    REQUIRE(denied->status == 502);
    CHECK(denied->body.find(secret_key) == std::string::npos);

    fake_reply slow;
    slow.delay_before = std::chrono::milliseconds(3500);
    fake.script({slow, slow});
    auto timed_out = post_json(c, "/chat", {{"content", "slow"}});
    CHECK(timed_out->status == 504);

    fake_reply broken;
    broken.break_after_events = 3;
    fake.script({broken});
    auto cut = post_json(c, "/chat", {{"content", "p q r s"}, {"stream", true}});
    REQUIRE(cut->status == 200);
    const auto lines = sse_data(cut->body);
    REQUIRE_FALSE(lines.empty());
    CHECK(cut->body.find("event: error") != std::string::npos);
    CHECK(cut->body.find("event: done") == std::string::npos);

    // The key never reaches the log, whatever happened.
    CHECK(server.log().find(secret_key) == std::string::npos);
}

TEST_CASE("CHAT_PROVIDER=openai without a key for api.openai.com stops start-up with a clear message") {
    const auto r = test_support::run_to_exit({{"CHAT_PROVIDER", "openai"}, {"CHAT_PORT", "0"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("OPENAI_API_KEY") != std::string::npos);
}
