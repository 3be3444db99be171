// sample_server relaying to Anthropic (a fake speaking the Messages API's exact wire format):
// /v1/chat/completions answered whole and streamed, with the upstream's faults surfacing cleanly.
// Runs once with each HTTP server (CHAT_SERVER=beast: the async provider; httplib: the blocking one).
#include "../support/fake_anthropic.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

using nlohmann::json;
using test_support::anthropic_error_reply;
using test_support::fake_anthropic;
using test_support::fake_anthropic_reply;
using test_support::server_process;

namespace {

constexpr const char* secret_key = "sk-ant-relay-SECRET-987654321";

std::map<std::string, std::string> relay_env(const fake_anthropic& fake, std::map<std::string, std::string> more = {}) {
    std::map<std::string, std::string> env{{"ANTHROPIC_API_KEY", secret_key}, {"ANTHROPIC_BASE_URL", fake.base_url()},
                                           {"CHAT_MODEL", "claude-fake"}, {"CHAT_UPSTREAM_TIMEOUT", "2"}};
    for (auto& [k, v] : more) env[k] = v;
    return env;
}

httplib::Result post_json(httplib::Client& c, const char* path, const json& body, httplib::Headers headers = {}) {
    return c.Post(path, headers, body.dump(), "application/json");
}

std::vector<std::string> data_lines(const std::string& sse) {
    std::vector<std::string> out;
    for (std::size_t pos = 0; pos < sse.size();) {
        auto end = sse.find("\n\n", pos);
        if (end == std::string::npos) break;
        auto block = sse.substr(pos, end - pos);
        if (auto d = block.find("data: "); d != std::string::npos) out.push_back(block.substr(d + 6));
        pos = end + 2;
    }
    return out;
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
    const json ask = {{"stream", true}, {"stream_options", {{"include_usage", true}}}, {"messages", {{{"role", "user"}, {"content", "x y"}}}}};
    auto streamed = post_json(c, "/v1/chat/completions", ask);
    REQUIRE(streamed);
    REQUIRE(streamed->status == 200);
    const auto lines = data_lines(streamed->body);
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

    auto with_tools = ask;
    with_tools["tools"] = json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}});
    auto tools = post_json(c, "/v1/chat/completions", with_tools);
    REQUIRE(tools->status == 400);
    CHECK(json::parse(tools->body)["error"]["param"] == "tools");
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
