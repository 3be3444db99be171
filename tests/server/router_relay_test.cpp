// sample_server with CHAT_CONFIG: a router over two OpenAI upstreams and an Anthropic one (fakes
// speaking their exact wire formats). Routing by model, the fallback matrix (refused connection,
// timeout, 429, 500, a stream failing before and after its first byte; on the Anthropic and
// Responses surfaces too), the answer naming its provider, /health by provider, the fallbacks
// metric, and bad files stopping start-up.
// Runs once with each HTTP server (beast: async members; httplib: blocking ones).
#include "../support/fake_anthropic.hpp"
#include "../support/fake_openai.hpp"
#include "../support/server_process.hpp"
#include "../support/sse_text.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <thread>

using nlohmann::json;
using test_support::fake_anthropic;
using test_support::fake_openai;
using test_support::fake_reply;
using test_support::server_process;
using test_support::sse_data;
using test_support::status_reply;
using test_support::temp_dir;

namespace {

constexpr const char* primary_key = "sk-primary-SECRET-111";
constexpr const char* backup_key = "sk-backup-SECRET-222";
constexpr const char* claude_key = "sk-ant-claude-SECRET-333";

struct gateway {
    fake_openai primary, backup;
    fake_anthropic claude;
    temp_dir dir;
    std::string path = (dir.path() / "gateway.yaml").string();
    std::unique_ptr<server_process> server;

    explicit gateway(int cooldown_after = 100) {
        std::ofstream{path}
            << "# three upstreams, and the models routed to them\n"
               "providers:\n"
               "  - {name: primary, type: openai, base_url: \""
            << primary.base_url()
            << "\", api_key_env: PRIMARY_KEY, max_retries: 0, timeout_seconds: 1}\n"
               "  - {name: backup, type: openai, base_url: \""
            << backup.base_url()
            << "\", api_key_env: BACKUP_KEY, max_retries: 0}\n"
               "  - {name: claude, type: anthropic, base_url: \""
            << claude.base_url()
            << "\", api_key_env: CLAUDE_KEY}\n"
               "  - {name: dead, type: openai, base_url: \"http://127.0.0.1:1/v1\", api_key_env: PRIMARY_KEY, max_retries: 0}\n"
               "models:\n"
               "  - {name: gpt-4o-mini, route: [primary, backup]}\n"
               "  - {name: sonnet, route: [claude], model: claude-sonnet-4-5}\n"
               "  - name: refused\n"
               "    route: [dead, {provider: backup, model: gpt-4o-mini}]\n"
               "router: {cooldown_after: "
            << cooldown_after << ", cooldown_seconds: 3600}\n";
        server = std::make_unique<server_process>(std::map<std::string, std::string>{
            {"CHAT_CONFIG", path}, {"PRIMARY_KEY", primary_key}, {"BACKUP_KEY", backup_key}, {"CLAUDE_KEY", claude_key}});
    }
    httplib::Result post(const json& body) {
        auto c = server->client();
        return c.Post("/v1/chat/completions", body.dump(), "application/json");
    }
};

json ask(const std::string& model, bool stream = false) {
    json j = {{"model", model}, {"messages", {{{"role", "user"}, {"content", "a b c"}}}}, {"cache", false}};
    if (stream) j["stream"] = true;
    return j;
}

// The provider a stream's closing chunk names (its gateway_metadata), and its text.
std::pair<std::string, std::string> stream_outcome(const std::string& sse) {
    std::string provider, text;
    for (const auto& d : sse_data(sse)) {
        if (d == "[DONE]") continue;
        const auto j = json::parse(d);
        if (j.contains("gateway_metadata")) provider = j["gateway_metadata"]["provider"];
        if (j.contains("error")) provider = "error:" + j["error"]["message"].get<std::string>();
        if (j.contains("choices") && !j["choices"].empty() && j["choices"][0]["delta"].contains("content"))
            text += j["choices"][0]["delta"]["content"].get<std::string>();
    }
    return {provider, text};
}

} // namespace

TEST_CASE("CHAT_CONFIG routes each model to its provider, and the answer names the one that served it") {
    gateway g;
    CHECK(g.server->log().find("routing by model") != std::string::npos);
    auto a = g.post(ask("gpt-4o-mini"));
    REQUIRE(a);
    REQUIRE(a->status == 200);
    CHECK(a->get_header_value("x-chatkit-provider") == "primary");
    CHECK(json::parse(a->body)["gateway_metadata"]["provider"] == "primary");
    REQUIRE(g.primary.requests().size() == 1);
    CHECK(g.primary.requests()[0].headers.find("Authorization")->second == std::string{"Bearer "} + primary_key);

    auto s = g.post(ask("sonnet"));
    REQUIRE(s);
    REQUIRE(s->status == 200);
    CHECK(s->get_header_value("x-chatkit-provider") == "claude");
    REQUIRE(g.claude.requests().size() == 1);
    CHECK(g.claude.requests()[0].body["model"] == "claude-sonnet-4-5"); // the alias, sent as its upstream id
    CHECK(g.claude.requests()[0].headers.find("x-api-key")->second == claude_key);

    auto direct = g.post(ask("backup/some-open-model"));
    REQUIRE(direct);
    REQUIRE(direct->status == 200);
    CHECK(direct->get_header_value("x-chatkit-provider") == "backup");
    CHECK(g.backup.requests().at(0).body["model"] == "some-open-model");
    CHECK(g.backup.requests().at(0).headers.find("Authorization")->second == std::string{"Bearer "} + backup_key);

    auto unknown = g.post(ask("gpt-5"));
    REQUIRE(unknown);
    CHECK(unknown->status == 404);
    CHECK(json::parse(unknown->body)["error"]["code"] == "model_not_found");

    auto c = g.server->client();
    const auto models = json::parse(c.Get("/v1/models")->body);
    std::vector<std::string> ids;
    for (const auto& m : models["data"]) ids.push_back(m["id"]);
    CHECK(ids == std::vector<std::string>{"gpt-4o-mini", "sonnet", "refused"});

    const auto health = json::parse(c.Get("/health")->body);
    CHECK(health["status"] == "ok");
    for (const char* p : {"primary", "backup", "claude", "dead"}) CHECK(health["components"]["provider"]["parts"][p]["status"] == "ok");

    // The access log names who served each answer.
    std::vector<std::string> served;
    for (int i = 0; i < 500 && served.size() < 3; ++i) { // lines are written after the last byte, maybe after the client saw it
        if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        served.clear();
        for (const auto& e : g.server->request_logs())
            if (e["path"] == "/v1/chat/completions" && e["status"] == 200) served.push_back(e.value("provider", ""));
    }
    CHECK(served == std::vector<std::string>{"primary", "claude", "backup"});
    const auto log = g.server->log();
    for (const char* secret : {primary_key, backup_key, claude_key}) CHECK(log.find(secret) == std::string::npos);
}

TEST_CASE("a failure before the first byte falls back to the next provider, answered whole or streamed") {
    gateway g;
    const auto slow = [] {
        fake_reply r;
        r.delay_before = std::chrono::milliseconds{2500}; // primary's timeout is 1 s
        return r;
    };
    const std::vector<std::pair<std::string, fake_reply>> faults{
        {"429", status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded")},
        {"500", status_reply(500, "The server had an error", "server_error")},
        {"timeout", slow()}};
    for (const bool stream : {false, true}) {
        for (const auto& [name, fault] : faults) {
            INFO((stream ? "streamed, " : "whole, ") << name);
            g.primary.script({fault});
            const auto backup_calls = g.backup.requests().size();
            auto res = g.post(ask("gpt-4o-mini", stream));
            REQUIRE(res);
            CHECK(res->status == 200);
            CHECK(g.backup.requests().size() == backup_calls + 1);
            if (stream) {
                CHECK(stream_outcome(res->body) == std::pair<std::string, std::string>{"backup", "echo: a b c"});
            } else {
                CHECK(res->get_header_value("x-chatkit-provider") == "backup");
                CHECK(json::parse(res->body)["choices"][0]["message"]["content"] == "echo: a b c");
            }
        }
        INFO((stream ? "streamed, " : "whole, ") << "refused connection");
        auto refused = g.post(ask("refused", stream));
        REQUIRE(refused);
        CHECK(refused->status == 200);
        if (stream) CHECK(stream_outcome(refused->body).first == "backup");
        else CHECK(refused->get_header_value("x-chatkit-provider") == "backup");
    }

    auto c = g.server->client();
    const auto metrics = c.Get("/metrics")->body;
    CHECK(metrics.find(R"(chatkit_upstream_fallbacks_total{from="primary",to="backup",code="rate_limited"} 2)") != std::string::npos);
    CHECK(metrics.find(R"(chatkit_upstream_fallbacks_total{from="primary",to="backup",code="upstream_timeout"} 2)") != std::string::npos);
    CHECK(metrics.find(R"(chatkit_upstream_fallbacks_total{from="dead",to="backup",code="upstream_unreachable"} 2)") != std::string::npos);
    CHECK(g.server->log().find("provider failed; trying the next of the route") != std::string::npos);
}

TEST_CASE("the Anthropic and Responses surfaces fall back too: a streamed 429 before the first byte is answered by the next provider") {
    gateway g;
    auto c = g.server->client();
    const json message = {
        {"model", "gpt-4o-mini"}, {"max_tokens", 50}, {"cache", false}, {"messages", {{{"role", "user"}, {"content", "a b c"}}}}};
    const json response = {{"model", "gpt-4o-mini"}, {"cache", false}, {"input", "a b c"}};
    for (const bool stream : {false, true}) {
        INFO((stream ? "streamed" : "whole"));
        g.primary.script({status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded"),
                          status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded")});
        const auto backup_calls = g.backup.requests().size();
        auto m = message;
        auto r = response;
        m["stream"] = stream;
        r["stream"] = stream;
        auto anthropic = c.Post("/v1/messages", m.dump(), "application/json");
        auto responses = c.Post("/v1/responses", r.dump(), "application/json");
        REQUIRE(anthropic);
        REQUIRE(responses);
        CHECK(anthropic->status == 200);
        CHECK(responses->status == 200);
        CHECK(g.backup.requests().size() == backup_calls + 2);
        if (stream) {
            CHECK(anthropic->body.find("event: message_stop") != std::string::npos);
            CHECK(anthropic->body.find("event: error") == std::string::npos);
            CHECK(responses->body.find("event: response.completed") != std::string::npos);
            CHECK(responses->body.find(R"("text":"echo: a b c")") != std::string::npos);
        } else {
            CHECK(anthropic->get_header_value("x-chatkit-provider") == "backup");
            CHECK(json::parse(anthropic->body)["content"][0]["text"] == "echo: a b c");
            CHECK(responses->get_header_value("x-chatkit-provider") == "backup");
            CHECK(json::parse(responses->body)["output"][0]["content"][0]["text"] == "echo: a b c");
        }
    }
}

TEST_CASE("a stream that fails after its first byte ends in an error, with no second answer spliced in") {
    gateway g;
    fake_reply broken;
    broken.break_after_events = 2;
    g.primary.script({broken});
    auto res = g.post(ask("gpt-4o-mini", true));
    REQUIRE(res);
    CHECK(res->status == 200);
    const auto [provider, text] = stream_outcome(res->body);
    CHECK(provider.starts_with("error:"));
    CHECK_FALSE(text.empty());
    CHECK(g.backup.requests().empty());
}

TEST_CASE("when every provider of a route fails, the client gets the last failure's status") {
    gateway g;
    g.primary.script({status_reply(500, "The server had an error", "server_error")});
    g.backup.script({status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded")});
    auto res = g.post(ask("gpt-4o-mini"));
    REQUIRE(res);
    CHECK(res->status == 429);
    CHECK(json::parse(res->body)["error"]["message"].get<std::string>().ends_with("(gpt-4o-mini: tried primary, backup)"));
}

TEST_CASE("a provider that keeps failing is skipped for its cool-down, and /health says so") {
    gateway g{2};
    for (int i = 0; i < 2; ++i) {
        g.primary.script({status_reply(500, "The server had an error", "server_error")});
        REQUIRE(g.post(ask("gpt-4o-mini"))->status == 200);
    }
    const auto primary_calls = g.primary.requests().size();
    auto res = g.post(ask("gpt-4o-mini"));
    REQUIRE(res);
    CHECK(res->get_header_value("x-chatkit-provider") == "backup");
    CHECK(g.primary.requests().size() == primary_calls); // skipped, not called
    auto c = g.server->client();
    const auto health = json::parse(c.Get("/health")->body);
    CHECK(health["status"] == "ok"); // gpt-4o-mini still has its backup
    CHECK(health["components"]["provider"]["parts"]["primary"]["status"] == "down");
}

TEST_CASE("a bad CHAT_CONFIG stops start-up naming the file, the line and the problem") {
    temp_dir dir;
    const auto write = [&](const std::string& text) {
        const auto path = (dir.path() / "bad.yaml").string();
        std::ofstream{path} << text;
        return path;
    };
    const auto start = [&](const std::string& path, std::map<std::string, std::string> env = {}) {
        env["CHAT_CONFIG"] = path;
        return test_support::run_to_exit(env, {});
    };

    const auto unknown = write("providers:\n  - {name: a, type: echo}\nmodels:\n  - {name: m, route: [a, b]}\n");
    auto r = start(unknown);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(unknown + ":4:") != std::string::npos);
    CHECK(r.output.find("routes to 'b', which is not among the providers") != std::string::npos);

    const auto syntax = write("providers:\n  - {name: a, type: echo\nmodels: []\n");
    r = start(syntax);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(syntax + ":") != std::string::npos);

    const auto typo = write("providers:\n  - {name: a, type: echo, weight: 2}\nmodels:\n  - {name: m, route: [a]}\n");
    r = start(typo);
    CHECK(r.output.find(typo + ":2:") != std::string::npos);
    CHECK(r.output.find("unknown key 'weight' in a provider") != std::string::npos);

    const auto no_key = write(
        "providers:\n  - {name: a, type: anthropic, api_key_env: NOT_SET_ANYWHERE}\nmodels:\n  - {name: m, route: [a]}\n");
    r = start(no_key);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("the variable NOT_SET_ANYWHERE is not set") != std::string::npos);

    // A key that is a list (YAML's "? " form) threw an exception start-up did not catch (a fuzzer
    // finding, config_fuzzer).
    const auto list_key = write("providers:\n  - {name: a, type: echo}\nmodels:\n  - ? [name]\n    : m\n");
    r = start(list_key);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(list_key + ":4:") != std::string::npos);
    CHECK(r.output.find("a model has a key that is not a name") != std::string::npos);

    r = start(dir.path().string() + "/missing.yaml");
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("missing.yaml: cannot be read") != std::string::npos);

    const auto fine = write("providers:\n  - {name: a, type: echo}\nmodels:\n  - {name: m, route: [a]}\n");
    r = start(fine, {{"CHAT_PROVIDER", "openai"}});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_PROVIDER=openai cannot be used with it") != std::string::npos);
}
