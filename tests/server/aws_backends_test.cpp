// sample_server on its AWS backends, configured as the deployment template configures the Lambda
// function: history and API keys in DynamoDB (dynalite, started here) and the OpenAI key read from
// Secrets Manager (moto_server, started here), relaying to a fake OpenAI upstream. Usage records
// go to the usage table of the same database.
#include "../support/aws_emulators.hpp"
#include "../support/fake_anthropic.hpp"
#include "../support/fake_gemini.hpp"
#include "../support/fake_openai.hpp"
#include "../support/fleet_burst.hpp"
#include "../support/key_commands.hpp"
#include "../support/server_process.hpp"

#include <chatkit/aws/secrets_manager.hpp>
#include <chatkit/dynamodb_counter_store.hpp>
#include <chatkit/dynamodb_key_directory.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/dynamodb_usage_store.hpp>

#include <catch2/catch.hpp>
#include <openssl/sha.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

using nlohmann::json;
using test_support::burst_over;
using test_support::emulator_process;
using test_support::fake_openai;
using test_support::last_json;
using test_support::server_process;
using test_support::wait_for_a_fresh_minute;

namespace {

std::string unique(std::string prefix) {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    return prefix + std::to_string(run) + "-" + std::to_string(++n);
}

emulator_process& dynalite() {
    static emulator_process e = test_support::start_dynalite();
    return e;
}
emulator_process& moto() {
    static emulator_process e = test_support::start_moto();
    return e;
}

// What an AWS deployment gives the process: credentials and a region, here pointing at `emulator`.
std::map<std::string, std::string> aws_env(const emulator_process& emulator, const char* endpoint_var) {
    return {{"AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"},
            {"AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
            {"AWS_REGION", "us-east-1"},
            {endpoint_var, emulator.endpoint()}};
}

std::string create_table() {
    const auto table = unique("history-");
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
    test_support::create_table(client, chatkit::dynamodb_store::create_table_input(table));
    return table;
}

chatkit::aws::json_client secrets() {
    return chatkit::aws::json_client{chatkit::aws::secrets_manager_service(), {}, moto().aws_environment()};
}

std::string create_secret(const std::string& value) {
    auto created = secrets().call("CreateSecret", {{"Name", unique("chatkit/openai-")}, {"SecretString", value}});
    REQUIRE(created);
    return (*created)["ARN"];
}

void put_secret(const std::string& arn, const std::string& value) {
    REQUIRE(secrets().call("PutSecretValue", {{"SecretId", arn}, {"SecretString", value}}));
}

std::map<std::string, std::string> secret_env(const fake_openai& fake, const std::string& arn) {
    auto env = aws_env(moto(), "AWS_ENDPOINT_URL_SECRETS_MANAGER");
    env.merge(std::map<std::string, std::string>{{"CHAT_OPENAI_API_KEY_SECRET_ARN", arn},
                                                 {"CHAT_SECRET_REFRESH", "1"},
                                                 {"OPENAI_BASE_URL", fake.base_url()},
                                                 {"CHAT_CACHE_SIZE", "0"},
                                                 {"CHAT_DATABASE_URL", "none"}});
    return env;
}

httplib::Result chat(httplib::Client& c, const std::string& user, const std::string& text) {
    return c.Post("/chat", json{{"user_id", user}, {"content", text}}.dump(), "application/json");
}

httplib::Result chat_with_key(httplib::Client& c, const std::string& key) {
    return c.Post("/chat", {{"Authorization", "Bearer " + key}}, json{{"user_id", "kim"}, {"content", "hello"}}.dump(), "application/json");
}

std::string sha256_hex(const std::string& text) {
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d);
    std::string out;
    for (unsigned char c : d) out += "0123456789abcdef"[c >> 4], out += "0123456789abcdef"[c & 0xf];
    return out;
}

} // namespace

TEST_CASE("with CHAT_DATABASE_URL=dynamodb://TABLE, history is kept in DynamoDB and outlives the server") {
    const auto table = create_table();
    auto env = aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB");
    env["CHAT_DATABASE_URL"] = "dynamodb://" + table + "?region=us-east-1&ttl_days=30";
    env["CHAT_PROVIDER"] = "echo"; // with AWS credentials around, auto would pick Bedrock
    {
        server_process server{env};
        auto c = server.client();
        const auto health = json::parse(c.Get("/health")->body);
        INFO(health.dump());
        CHECK(health["status"] == "ok");
        for (const auto* text : {"first question", "second question"}) {
            auto r = chat(c, "dana", text);
            REQUIRE(r);
            REQUIRE(r->status == 200);
        }
        server.stop();
        CHECK(server.log().find("cannot write usage records") != std::string::npos); // no TABLE-usage (below)
    }
    server_process restarted{env};
    auto c = restarted.client();
    // This database has no usage table (TABLE-usage): chats work, the records' writes fail and
    // are logged, and the report says the store is unavailable.
    auto usage = c.Get("/v1/usage");
    REQUIRE(usage);
    CHECK(usage->status == 503);
    CHECK(usage->body.find(table + "-usage") != std::string::npos);
    auto page = c.Get("/history/dana?limit=10");
    REQUIRE(page);
    REQUIRE(page->status == 200);
    const auto messages = json::parse(page->body)["messages"];
    REQUIRE(messages.size() == 4);
    CHECK(messages[0]["content"] == "first question");
    CHECK(messages[3]["role"] == "assistant");
    CHECK(messages[3]["content"] == "second question");

    // The items are in the table, with the TTL attribute the URL asked for.
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
    auto items = client.call(
        "Query",
        {{"TableName", table}, {"KeyConditionExpression", "user_id = :u"}, {"ExpressionAttributeValues", {{":u", {{"S", "dana"}}}}}});
    REQUIRE(items);
    REQUIRE((*items)["Items"].size() == 2);
    CHECK((*items)["Items"][0].contains("expires_at"));
}

TEST_CASE("with CHAT_DATABASE_URL=dynamodb://TABLE, the teams and keys commands and CHAT_AUTH=keys use the table TABLE-keys") {
    const auto table = create_table();
    const auto keys_table = table + "-keys"; // the URL names no keys_table: the default
    {
        chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
        test_support::create_table(client, chatkit::dynamodb_key_directory::create_table_input(keys_table));
    }
    auto env = aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB");
    env["CHAT_DATABASE_URL"] = "dynamodb://" + table + "?region=us-east-1";
    env["CHAT_PROVIDER"] = "echo";
    const auto cli = [&](std::vector<std::string> args) { return test_support::run_to_exit(env, args); };

    // The commands answer as they do on SQLite: the same JSON, the same exit codes.
    const auto team = cli({"teams", "create", "--id", "team-d", "--name", "Lambda team", "--rpm", "100"});
    INFO(team.output);
    REQUIRE(team.exit_code == 0);
    CHECK(last_json(team.output)["id"] == "team-d");
    CHECK(last_json(team.output)["rpm"] == 100);
    const auto again = cli({"teams", "create", "--id", "team-d"});
    CHECK(again.exit_code == 1);
    CHECK(again.output.find("team 'team-d' already exists") != std::string::npos);
    const auto no_team = cli({"keys", "create", "--team", "nope"});
    CHECK(no_team.exit_code == 1);
    CHECK(no_team.output.find("no team 'nope'") != std::string::npos);
    CHECK(cli({"keys", "create"}).exit_code == 2);

    const auto made = cli({"keys", "create", "--team", "team-d", "--name", "ci"});
    INFO(made.output);
    REQUIRE(made.exit_code == 0);
    const json created = last_json(made.output);
    const std::string key = created["key"];
    const std::string key_id = created["id"];
    CHECK(key.starts_with("ck-"));
    CHECK(created["team"] == "team-d");

    auto server_env = env;
    server_env["CHAT_AUTH"] = "keys";
    server_process server{server_env};
    auto c = server.client();
    CHECK(c.Get("/health")->status == 200);
    auto ok = chat_with_key(c, key);
    REQUIRE(ok);
    INFO(ok->body);
    CHECK(ok->status == 200);
    CHECK(json::parse(ok->body)["content"] == "hello");
    // The key with its last character changed (to one it is not: a random key ends in 'x' one time in 62).
    const std::string altered = key.substr(0, key.size() - 1) + (key.back() == 'x' ? "y" : "x");
    for (const std::string& bad : {std::string{}, "ck-" + std::string(43, 'A'), altered}) {
        auto refused = bad.empty() ? chat(c, "kim", "hello") : chat_with_key(c, bad);
        REQUIRE(refused);
        CHECK(refused->status == 401);
        CHECK(json::parse(refused->body)["error"]["code"] == "invalid_api_key");
    }

    // `keys list` shows the key without its secret.
    const auto list = cli({"keys", "list", "--team", "team-d"});
    REQUIRE(list.exit_code == 0);
    const auto entry = last_json(list.output);
    CHECK(entry["id"] == key_id);
    CHECK(entry["revoked_at"].is_null());
    CHECK_FALSE(entry.contains("key"));
    CHECK(list.output.find(key.substr(3)) == std::string::npos);

    // --database-url wins over the environment, and its keys_table names the table outright.
    const auto named = cli({"keys", "list", "--database-url", "dynamodb://elsewhere?region=us-east-1&keys_table=" + keys_table});
    INFO(named.output);
    REQUIRE(named.exit_code == 0);
    CHECK(last_json(named.output)["id"] == key_id);
    const auto missing = cli({"keys", "list", "--database-url", "dynamodb://elsewhere?region=us-east-1"});
    CHECK(missing.exit_code == 1); // elsewhere-keys does not exist
    CHECK(missing.output.find("elsewhere-keys") != std::string::npos);

    // Revoked from the command line while the server runs: refused within 5 s.
    const auto revoke = cli({"keys", "revoke", key_id});
    INFO(revoke.output);
    REQUIRE(revoke.exit_code == 0);
    CHECK(last_json(revoke.output)["revoked_at"].is_string());
    const auto revoked_at = std::chrono::steady_clock::now();
    bool refused = false;
    while (!refused && std::chrono::steady_clock::now() - revoked_at < std::chrono::seconds(5)) {
        auto r = chat_with_key(c, key);
        REQUIRE(r);
        refused = r->status == 401;
        if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(refused);
    CHECK(cli({"keys", "revoke", "key_unknown"}).exit_code == 1);

    // The keys table holds neither the key nor its digest in hex; the log neither.
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
    auto items = client.call("Scan", {{"TableName", keys_table}});
    REQUIRE(items);
    CHECK((*items)["Items"].size() == 2); // the team and the key
    const std::string stored = items->dump();
    CHECK(stored.find(key.substr(3)) == std::string::npos);
    CHECK(stored.find(sha256_hex(key)) == std::string::npos);
    server.stop();
    CHECK(server.log().find(key.substr(3)) == std::string::npos);
    CHECK(server.log().find(sha256_hex(key)) == std::string::npos);
}

TEST_CASE("with CHAT_DATABASE_URL=dynamodb://TABLE, the /admin routes make and revoke teams and keys the running server sees") {
    const auto table = create_table();
    {
        chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
        test_support::create_table(client, chatkit::dynamodb_key_directory::create_table_input(table + "-keys"));
    }
    const std::string admin_key = "adm-" + sha256_hex(unique("admin-")); // 68 characters
    auto env = aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB");
    env["CHAT_DATABASE_URL"] = "dynamodb://" + table + "?region=us-east-1";
    env["CHAT_PROVIDER"] = "echo";
    env["CHAT_AUTH"] = "keys";
    env["CHAT_ADMIN_KEY"] = "sha256:" + sha256_hex(admin_key);
    server_process server{env};
    auto c = server.client();
    const httplib::Headers admin{{"Authorization", "Bearer " + admin_key}};
    const auto post = [&](const std::string& path, const json& body) { return c.Post(path, admin, body.dump(), "application/json"); };
    const auto within_5s = [&](const std::string& key, int wanted) {
        const auto start = std::chrono::steady_clock::now();
        int status = 0;
        while (status != wanted && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
            auto r = chat_with_key(c, key);
            REQUIRE(r);
            status = r->status;
            if (status != wanted) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return status;
    };

    auto team = post("/admin/teams", {{"id", "team-h"}, {"rpm", 50}});
    REQUIRE(team);
    INFO(team->body);
    CHECK(team->status == 201);
    auto again = post("/admin/teams", {{"id", "team-h"}});
    REQUIRE(again);
    CHECK(again->status == 409);
    CHECK(json::parse(again->body)["error"]["code"] == "team_exists");
    auto no_team = post("/admin/keys", {{"team", "nope"}});
    REQUIRE(no_team);
    CHECK(no_team->status == 400);
    CHECK(json::parse(no_team->body)["error"]["param"] == "team");

    auto made = post("/admin/keys", {{"team", "team-h"}, {"name", "ci"}, {"expires_in", "12h"}});
    REQUIRE(made);
    INFO(made->body);
    REQUIRE(made->status == 201);
    const std::string key = json::parse(made->body)["key"];
    const std::string key_id = json::parse(made->body)["id"];
    CHECK(within_5s(key, 200) == 200);

    auto list = c.Get("/admin/keys?team=team-h", admin);
    REQUIRE(list);
    CHECK(list->status == 200);
    const auto data = json::parse(list->body)["data"];
    REQUIRE(data.size() == 1);
    CHECK(data[0]["id"] == key_id);
    CHECK(list->body.find(key.substr(3)) == std::string::npos);

    auto revoked = post("/admin/keys/revoke", {{"id", key_id}});
    REQUIRE(revoked);
    INFO(revoked->body);
    CHECK(revoked->status == 200);
    CHECK(json::parse(revoked->body)["revoked_at"].is_string());
    CHECK(within_5s(key, 401) == 401);
    auto unknown = post("/admin/keys/revoke", {{"id", "key_unknown"}});
    REQUIRE(unknown);
    CHECK(unknown->status == 404);
    server.stop();
    CHECK(server.log().find(admin_key) == std::string::npos);
    CHECK(server.log().find(sha256_hex(admin_key)) == std::string::npos);
}

TEST_CASE(
    "the OpenAI key comes from the secret CHAT_OPENAI_API_KEY_SECRET_ARN names, and a rotated key is used after CHAT_SECRET_REFRESH") {
    fake_openai fake;
    const auto arn = create_secret(R"({"api_key":"sk-from-secret-0001"})");
    server_process server{secret_env(fake, arn)};
    CHECK(server.log().find("using the OpenAI provider") != std::string::npos); // auto picks OpenAI for the secret
    CHECK(server.log().find("\"api_key\":\"from " + arn + "\"") != std::string::npos);
    auto c = server.client();
    REQUIRE(chat(c, "eve", "one")->status == 200);

    put_secret(arn, "sk-rotated-0002\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(1100)); // past CHAT_SECRET_REFRESH=1
    REQUIRE(chat(c, "eve", "two")->status == 200);

    const auto sent = fake.requests();
    REQUIRE(sent.size() == 2);
    CHECK(sent[0].headers.find("Authorization")->second == "Bearer sk-from-secret-0001");
    CHECK(sent[1].headers.find("Authorization")->second == "Bearer sk-rotated-0002");
    CHECK(server.log().find("sk-from-secret") == std::string::npos);
    CHECK(server.log().find("sk-rotated") == std::string::npos);
}

TEST_CASE("the Anthropic and Gemini keys come from the secrets CHAT_ANTHROPIC_API_KEY_SECRET_ARN and CHAT_GEMINI_API_KEY_SECRET_ARN name") {
    auto with_secret = [](std::map<std::string, std::string> more) {
        auto env = aws_env(moto(), "AWS_ENDPOINT_URL_SECRETS_MANAGER");
        more.merge(std::map<std::string, std::string>{{"CHAT_CACHE_SIZE", "0"}, {"CHAT_DATABASE_URL", "none"}});
        env.merge(more);
        return env;
    };
    SECTION("anthropic") {
        test_support::fake_anthropic fake;
        const auto arn = create_secret(R"({"api_key":"sk-ant-from-secret-0005"})");
        server_process server{with_secret({{"CHAT_ANTHROPIC_API_KEY_SECRET_ARN", arn}, {"ANTHROPIC_BASE_URL", fake.base_url()}})};
        CHECK(server.log().find("using the Anthropic provider") != std::string::npos); // auto picks Anthropic for the secret
        CHECK(server.log().find("\"api_key\":\"from " + arn + "\"") != std::string::npos);
        auto c = server.client();
        REQUIRE(chat(c, "gil", "hello")->status == 200);
        REQUIRE(fake.requests().size() == 1);
        CHECK(fake.requests()[0].headers.find("x-api-key")->second == "sk-ant-from-secret-0005");
        CHECK(server.log().find("sk-ant-from-secret") == std::string::npos);
    }
    SECTION("gemini") {
        test_support::fake_gemini fake{{}, "AIza-from-secret-0006"}; // refuses any other key
        const auto arn = create_secret("AIza-from-secret-0006");     // the bare key
        server_process server{with_secret({{"CHAT_GEMINI_API_KEY_SECRET_ARN", arn}, {"CHAT_GEMINI_BASE_URL", fake.base_url()}})};
        CHECK(server.log().find("using the Gemini provider") != std::string::npos);
        auto c = server.client();
        REQUIRE(chat(c, "hal", "hello")->status == 200);
        REQUIRE(fake.requests().size() == 1);
        CHECK(server.log().find("AIza-from-secret") == std::string::npos);
    }
    SECTION("a key and its secret both set stop start-up") {
        auto r = test_support::run_to_exit(
            {{"CHAT_PORT", "0"},
             {"ANTHROPIC_API_KEY", "sk-ant-plain-0007"},
             {"CHAT_ANTHROPIC_API_KEY_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:k"}},
            {});
        CHECK(r.exit_code == 2);
        CHECK(r.output.find("keep one") != std::string::npos);
        CHECK(r.output.find("sk-ant-plain-0007") == std::string::npos);
    }
}

TEST_CASE("a key the upstream refuses (401, or Gemini's API_KEY_INVALID) makes the server read its secret again for the next request") {
    SECTION("openai") {
        fake_openai fake;
        const auto arn = create_secret(R"({"api_key":"sk-before-0008"})");
        auto env = secret_env(fake, arn);
        env["CHAT_SECRET_REFRESH"] = "3600"; // without the 401, the rotated key would wait an hour
        server_process server{env};
        auto c = server.client();
        REQUIRE(chat(c, "ivy", "one")->status == 200);

        put_secret(arn, R"({"api_key":"sk-after-0009"})"); // rotated, and the old key revoked upstream
        fake.script(
            {test_support::status_reply(401, "Incorrect API key provided: sk-befo****0008.", "invalid_request_error", "invalid_api_key")});
        auto refused = chat(c, "ivy", "two");
        REQUIRE(refused);
        CHECK(refused->status == 502);
        CHECK(refused->body.find("sk-before-0008") == std::string::npos); // OpenAI's message shows a masked key; never the whole one
        REQUIRE(chat(c, "ivy", "three")->status == 200);

        const auto sent = fake.requests();
        REQUIRE(sent.size() == 3);
        CHECK(sent[1].headers.find("Authorization")->second == "Bearer sk-before-0008");
        CHECK(sent[2].headers.find("Authorization")->second == "Bearer sk-after-0009");
        server.stop(); // the log is written in batches: stopping flushes it
        CHECK(server.log().find("refused the key from its secret") != std::string::npos);
        CHECK(server.log().find("sk-before") == std::string::npos);
        CHECK(server.log().find("sk-after") == std::string::npos);
    }
    SECTION("anthropic") {
        test_support::fake_anthropic fake;
        const auto arn = create_secret(R"({"api_key":"sk-ant-before-0012"})");
        auto env = aws_env(moto(), "AWS_ENDPOINT_URL_SECRETS_MANAGER");
        env.merge(std::map<std::string, std::string>{{"CHAT_ANTHROPIC_API_KEY_SECRET_ARN", arn},
                                                     {"ANTHROPIC_BASE_URL", fake.base_url()},
                                                     {"CHAT_SECRET_REFRESH", "3600"},
                                                     {"CHAT_CACHE_SIZE", "0"},
                                                     {"CHAT_DATABASE_URL", "none"}});
        server_process server{env};
        auto c = server.client();
        REQUIRE(chat(c, "kim", "one")->status == 200);

        put_secret(arn, R"({"api_key":"sk-ant-after-0013"})");
        fake.script({test_support::anthropic_error_reply(401, "authentication_error", "invalid x-api-key")});
        auto refused = chat(c, "kim", "two");
        REQUIRE(refused);
        CHECK(refused->status == 502);
        REQUIRE(chat(c, "kim", "three")->status == 200);
        const auto sent = fake.requests();
        REQUIRE(sent.size() == 3);
        CHECK(sent[1].headers.find("x-api-key")->second == "sk-ant-before-0012");
        CHECK(sent[2].headers.find("x-api-key")->second == "sk-ant-after-0013");
        server.stop();
        CHECK(server.log().find("refused the key from its secret") != std::string::npos);
        CHECK(server.log().find("sk-ant-") == std::string::npos);
    }
    SECTION("gemini") {
        test_support::fake_gemini fake{{}, "AIza-before-0010"};
        const auto arn = create_secret("AIza-before-0010");
        auto env = aws_env(moto(), "AWS_ENDPOINT_URL_SECRETS_MANAGER");
        env.merge(std::map<std::string, std::string>{{"CHAT_GEMINI_API_KEY_SECRET_ARN", arn},
                                                     {"CHAT_GEMINI_BASE_URL", fake.base_url()},
                                                     {"CHAT_SECRET_REFRESH", "3600"},
                                                     {"CHAT_CACHE_SIZE", "0"},
                                                     {"CHAT_DATABASE_URL", "none"}});
        server_process server{env};
        auto c = server.client();
        REQUIRE(chat(c, "jo", "one")->status == 200);

        put_secret(arn, "AIza-after-0011");
        fake.accept_only("AIza-after-0011"); // Google answers the old key with 400 API_KEY_INVALID
        auto refused = chat(c, "jo", "two");
        REQUIRE(refused);
        CHECK(refused->status == 502);
        REQUIRE(chat(c, "jo", "three")->status == 200);
        const auto sent = fake.requests();
        REQUIRE(sent.size() == 3);
        CHECK(sent[2].headers.find("x-goog-api-key")->second == "AIza-after-0011");
        server.stop();
        CHECK(server.log().find("AIza-") == std::string::npos);
    }
}

TEST_CASE("a secret still empty after deploying makes /chat a 503 that says how to fill it, and the key put later is used") {
    fake_openai fake;
    const auto arn = create_secret(R"({"api_key":""})"); // as deploy/template.yaml creates it
    server_process server{secret_env(fake, arn)};
    auto c = server.client();
    auto refused = chat(c, "fay", "hello");
    REQUIRE(refused);
    CHECK(refused->status == 503);
    const auto error = json::parse(refused->body)["error"];
    CHECK(error["type"] == "service_unavailable");
    CHECK(error["message"].get<std::string>().find("put-secret-value") != std::string::npos);
    // The client is not told which secret (its ARN names the account); the log is.
    CHECK(refused->body.find(arn) == std::string::npos);
    CHECK(refused->body.find("arn:") == std::string::npos);
    CHECK(server.log().find("cannot use the OpenAI key's secret") != std::string::npos);
    CHECK(fake.requests().empty());

    put_secret(arn, R"({"api_key":"sk-filled-in-0003"})");
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    auto answered = chat(c, "fay", "hello");
    REQUIRE(answered);
    CHECK(answered->status == 200);
    REQUIRE(fake.requests().size() == 1);
    CHECK(fake.requests()[0].headers.find("Authorization")->second == "Bearer sk-filled-in-0003");
}

TEST_CASE("a bad dynamodb URL, a missing keys table with CHAT_AUTH=keys, or both a key and its secret, stop start-up with a message") {
    auto r = test_support::run_to_exit({{"CHAT_DATABASE_URL", "dynamodb://x?region=us-east-1"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_DATABASE_URL") != std::string::npos);
    CHECK(r.output.find("table name") != std::string::npos);

    r = test_support::run_to_exit({{"CHAT_DATABASE_URL", "dynamodb://chat?colour=blue"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("unknown parameter 'colour'") != std::string::npos);

    // CHAT_AUTH=keys reads the keys before serving: a keys table that does not exist stops start-up.
    auto env = aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB");
    env.merge(std::map<std::string, std::string>{{"CHAT_DATABASE_URL", "dynamodb://" + create_table() + "?keys_table=no-such-keys"},
                                                 {"CHAT_AUTH", "keys"},
                                                 {"CHAT_PROVIDER", "echo"},
                                                 {"CHAT_PORT", "0"}});
    r = test_support::run_to_exit(env, {});
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("cannot read the API keys") != std::string::npos);
    CHECK(r.output.find("no-such-keys") != std::string::npos);

    r = test_support::run_to_exit({{"CHAT_PORT", "0"},
                                   {"OPENAI_API_KEY", "sk-plain-key-0004"},
                                   {"CHAT_OPENAI_API_KEY_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:k"}},
                                  {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("keep one") != std::string::npos);
    CHECK(r.output.find("sk-plain-key-0004") == std::string::npos);
}

TEST_CASE("with CHAT_DATABASE_URL=dynamodb://TABLE and CHAT_AUTH=keys, GET /v1/usage totals equal the sum of the answers' costs, read from "
          "TABLE-usage, and the dashboard's data agrees") {
    const auto table = create_table();
    {
        chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
        test_support::create_table(client, chatkit::dynamodb_key_directory::create_table_input(table + "-keys"));
        test_support::create_table(client, chatkit::dynamodb_usage_store::create_table_input(table + "-usage"));
    }
    test_support::temp_dir dir;
    const auto prices = dir.path() / "prices.json";
    std::ofstream{prices} << json{{"models", {{"echo-1", {{"input", 3.0}, {"output", 15.0}}}}}}.dump();
    auto env = aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB");
    env["CHAT_DATABASE_URL"] = "dynamodb://" + table + "?region=us-east-1";
    env["CHAT_PROVIDER"] = "echo";
    const auto cli = [&](std::vector<std::string> args) { return test_support::run_to_exit(env, args); };
    REQUIRE(cli({"teams", "create", "--id", "research", "--name", "Research"}).exit_code == 0);
    REQUIRE(cli({"teams", "create", "--id", "other"}).exit_code == 0);
    const auto made = cli({"keys", "create", "--team", "research"});
    INFO(made.output);
    REQUIRE(made.exit_code == 0);
    const std::string key = last_json(made.output)["key"];
    const std::string key_id = last_json(made.output)["id"];
    const auto theirs = cli({"keys", "create", "--team", "other"});
    REQUIRE(theirs.exit_code == 0);
    const std::string outsider = last_json(theirs.output)["key"];

    auto server_env = env;
    server_env["CHAT_AUTH"] = "keys";
    server_env["CHAT_PRICING_FILE"] = prices.string();
    const std::string admin_key = "adm-" + std::string(40, 'd');
    server_env["CHAT_ADMIN_KEY"] = admin_key;
    const httplib::Headers bearer{{"Authorization", "Bearer " + key}};
    double billed = 0;
    std::int64_t tokens = 0;
    {
        server_process server{server_env};
        auto c = server.client();
        for (int i = 0; i < 5; ++i) {
            const json body = {{"model", "echo-1"},
                               {"messages", {{{"role", "user"}, {"content", "request number " + std::to_string(i) + " on Lambda"}}}}};
            auto r = c.Post("/v1/chat/completions", bearer, body.dump(), "application/json");
            REQUIRE(r);
            INFO(r->body);
            REQUIRE(r->status == 200);
            const auto answer = json::parse(r->body);
            billed += answer["gateway_metadata"]["cost_usd"].get<double>();
            tokens += answer["usage"]["total_tokens"].get<std::int64_t>();
        }
        REQUIRE(c.Post("/chat", {{"Authorization", "Bearer " + outsider}}, json{{"content", "not research"}}.dump(), "application/json")
                    ->status == 200);

        // The records are written off the request path, in batches: poll until all five are in.
        json usage;
        for (int i = 0; i < 100; ++i) {
            auto r = c.Get("/v1/usage?days=7", bearer);
            REQUIRE(r);
            INFO(r->body);
            REQUIRE(r->status == 200);
            usage = json::parse(r->body);
            if (usage["summary"]["total_requests"] == 5) break;
            std::this_thread::sleep_for(std::chrono::milliseconds{50});
        }
        INFO(usage.dump());
        CHECK(usage["team_id"] == "research");
        CHECK(usage["team_name"] == "Research");
        CHECK(usage["summary"]["total_requests"] == 5);
        CHECK(usage["summary"]["total_tokens"] == tokens);
        CHECK(usage["summary"]["total_cost_usd"].get<double>() == Approx(billed));
        REQUIRE(usage["by_model"].size() == 1);
        CHECK(usage["by_model"][0]["model"] == "echo-1");
        auto other = c.Get("/v1/usage", {{"Authorization", "Bearer " + outsider}});
        REQUIRE(other);
        CHECK(json::parse(other->body)["summary"]["total_requests"] == 1);

        // The dashboard's data from the same table: one team's (a Query) as /v1/usage counts it,
        // every team's (a Scan of the table) for the admin key.
        auto own = c.Get("/v1/usage/dashboard?days=7", bearer);
        REQUIRE(own);
        INFO(own->body);
        REQUIRE(own->status == 200);
        CHECK(json::parse(own->body)["summary"]["total_requests"] == 5);
        CHECK(json::parse(own->body)["summary"]["total_tokens"] == usage["summary"]["total_tokens"]);
        CHECK(json::parse(own->body)["summary"]["total_cost_usd"].get<double>() ==
              Approx(usage["summary"]["total_cost_usd"].get<double>()));
        auto every = c.Get("/v1/usage/dashboard?days=7", {{"Authorization", "Bearer " + admin_key}});
        REQUIRE(every);
        INFO(every->body);
        REQUIRE(every->status == 200);
        CHECK(json::parse(every->body)["summary"]["total_requests"] == 6);
        CHECK(json::parse(every->body)["by_team"].size() == 2);
        REQUIRE(server.stop() == 0);
        CHECK(server.log().find(key.substr(3)) == std::string::npos);
    }

    // The items are in TABLE-usage, one per request, with the TTL attribute; the key's spending
    // is there through the key index, as budgets read it after a restart.
    chatkit::dynamodb_usage_store_options o;
    o.table = table + "-usage";
    chatkit::dynamodb_usage_store store{o, dynalite().aws_environment()};
    auto items = store.client().call("Scan", {{"TableName", o.table}});
    REQUIRE(items);
    CHECK((*items)["Items"].size() == 6);
    for (const auto& item : (*items)["Items"]) CHECK(item.contains("expires_at"));
    CHECK(store.spent_usd("key", key_id, 0).value() == Approx(billed));
    CHECK(store.spent_usd("team", "research", 0).value() == Approx(billed));
}

TEST_CASE("with CHAT_DATABASE_URL=dynamodb://TABLE, a key's and a team's budget spending survive a restart, read back from TABLE-usage") {
    const auto table = create_table();
    {
        chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
        test_support::create_table(client, chatkit::dynamodb_key_directory::create_table_input(table + "-keys"));
        test_support::create_table(client, chatkit::dynamodb_usage_store::create_table_input(table + "-usage"));
    }
    test_support::temp_dir dir;
    const auto prices = dir.path() / "prices.json";
    std::ofstream{prices} << json{{"models", {{"echo-1", {{"input", 1000.0}, {"output", 1000.0}}}}}}.dump(); // $0.001 per token
    auto env = aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB");
    env["CHAT_DATABASE_URL"] = "dynamodb://" + table + "?region=us-east-1";
    env["CHAT_PROVIDER"] = "echo";
    const auto cli = [&](std::vector<std::string> args) { return test_support::run_to_exit(env, args); };

    // A budget that fits one request's worst case (its body's bytes and 8, plus max_tokens, as
    // gateway_test.cpp reckons it) and $0.004 more: one answer of 6 tokens ($0.006) leaves no room
    // for a second, in this process or, if the spending is read back, in the next.
    const std::string body = json{{"user_id", "u00"}, {"content", "one two three"}, {"max_tokens", 100}}.dump();
    const double worst = static_cast<double>(body.size() + 8 + 100) / 1000.0;
    char budget[32];
    std::snprintf(budget, sizeof budget, "%.6f", worst + 0.004);
    REQUIRE(cli({"teams", "create", "--id", "open"}).exit_code == 0);
    REQUIRE(cli({"teams", "create", "--id", "capped", "--budget-usd", budget, "--budget-period", "month"}).exit_code == 0);
    const auto made_key = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {"keys", "create"});
        const auto made = cli(args);
        INFO(made.output);
        REQUIRE(made.exit_code == 0);
        return last_json(made.output)["key"].get<std::string>();
    };
    const std::string key_capped = made_key({"--team", "open", "--budget-usd", budget, "--budget-period", "day"}); // the key_id-sk index
    const std::string team_capped = made_key({"--team", "capped"});                                                // the team's partition

    auto server_env = env;
    server_env["CHAT_AUTH"] = "keys";
    server_env["CHAT_PRICING_FILE"] = prices.string();
    const auto post = [&body](server_process& server, const std::string& key) {
        auto c = server.client();
        auto r = c.Post("/chat", {{"Authorization", "Bearer " + key}}, body, "application/json");
        REQUIRE(r);
        return std::pair{r->status, r->body};
    };
    {
        server_process server{server_env};
        for (const auto& key : {key_capped, team_capped}) {
            const auto [status, answer] = post(server, key);
            INFO(answer);
            REQUIRE(status == 200);
            CHECK(json::parse(answer)["cost_usd"].get<double>() == Approx(0.006));
            CHECK(post(server, key).first == 429); // the budget, in this process
        }
        REQUIRE(server.stop() == 0); // a clean stop writes the queued records
    }
    // A new process knows nothing but what TABLE-usage holds.
    server_process restarted{server_env};
    for (const auto& key : {key_capped, team_capped}) {
        const auto [status, answer] = post(restarted, key);
        INFO(answer);
        CHECK(status == 429);
        CHECK(json::parse(answer)["error"]["code"] == "insufficient_quota");
    }
}

namespace {

// A database with every table the deployment template makes: history, keys, usage and limits.
std::string create_database() {
    const auto table = create_table();
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
    test_support::create_table(client, chatkit::dynamodb_key_directory::create_table_input(table + "-keys"));
    test_support::create_table(client, chatkit::dynamodb_usage_store::create_table_input(table + "-usage"));
    test_support::create_table(client, chatkit::dynamodb_counter_store::create_table_input(table + "-limits"));
    return table;
}

// What two replicas of a fleet share: a database with every table, a team made with `team_flags`
// and a key of it, and the environment that runs a server on it with CHAT_LIMITS=shared.
struct shared_fleet {
    std::string table;
    std::map<std::string, std::string> env;
    std::string key;
};
shared_fleet make_fleet(std::vector<std::string> team_flags) {
    shared_fleet f{create_database(), aws_env(dynalite(), "AWS_ENDPOINT_URL_DYNAMODB"), {}};
    f.env["CHAT_DATABASE_URL"] = "dynamodb://" + f.table + "?region=us-east-1";
    f.env["CHAT_PROVIDER"] = "echo";
    team_flags.insert(team_flags.begin(), {"teams", "create", "--id", "fleet"});
    REQUIRE(test_support::run_to_exit(f.env, team_flags).exit_code == 0);
    const auto made = test_support::run_to_exit(f.env, {"keys", "create", "--team", "fleet"});
    REQUIRE(made.exit_code == 0);
    f.key = last_json(made.output)["key"];
    f.env["CHAT_AUTH"] = "keys";
    f.env["CHAT_LIMITS"] = "shared";
    f.env["CHAT_RATE_LIMIT"] = "off"; // the team's limits alone: the limits table holds only theirs
    f.env["CHAT_SERVER"] = "httplib";
    return f;
}

} // namespace

TEST_CASE("with CHAT_LIMITS=shared, two servers on one DynamoDB database enforce one limit: 50 requests over both against a team's 10 per "
          "minute get exactly 10 answers") {
    auto [table, env, key] = make_fleet({"--rpm", "10"});
    env["CHAT_SERVER"] = "beast"; // the checks run on its worker pool
    server_process first{env}, second{env};
    wait_for_a_fresh_minute();
    const auto outcome = burst_over({&first, &second}, key, json{{"content", "hello"}}.dump(), 50);
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 40);
    CHECK(outcome.other == 0);
    for (const auto& code : outcome.codes) CHECK(code == "rate_limit_exceeded");

    // Either server now refuses the team, saying when its minute ends, with OpenAI's headers.
    auto c = second.client();
    auto refused = chat_with_key(c, key);
    REQUIRE(refused);
    CHECK(refused->status == 429);
    CHECK(refused->get_header_value("x-ratelimit-limit-requests") == "10");
    CHECK(refused->get_header_value("x-ratelimit-remaining-requests") == "0");
    CHECK(std::stoi(refused->get_header_value("Retry-After")) <= 60);
    CHECK_THAT(json::parse(refused->body)["error"]["message"].get<std::string>(),
               Catch::Contains("team 'fleet' allows 10 requests per minute"));

    // The count is one item of the limits table, named after the team and the minute.
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
    auto items = client.call("Scan", {{"TableName", table + "-limits"}});
    REQUIRE(items);
    REQUIRE((*items)["Items"].size() >= 1);
    const auto& item = (*items)["Items"][0];
    CHECK(item["counter"]["S"].get<std::string>().starts_with("team#fleet#rpm#"));
    CHECK(item["n"]["N"] == "10");
    CHECK(first.log().find(key.substr(3)) == std::string::npos);
}

TEST_CASE("with CHAT_LIMITS=shared, 50 concurrent requests over two servers against a budget that fits 10 worst cases: exactly 10 answers, "
          "and settled answers give the rest back") {
    test_support::temp_dir dir;
    const auto prices = dir.path() / "prices.json";
    std::ofstream{prices} << json{{"models", {{"echo-1", {{"input", 1000.0}, {"output", 1000.0}}}}}}.dump(); // $0.001 per token
    // A stream of three words lasts about a second: every request is admitted before any is settled.
    const std::string body = json{{"user_id", "u00"}, {"content", "one two three"}, {"max_tokens", 100}, {"stream", true}}.dump();
    const double worst = static_cast<double>(body.size() + 8 + 100) / 1000.0; // as gateway_test.cpp reckons a reservation
    char budget[32];
    std::snprintf(budget, sizeof budget, "%.6f", 10.5 * worst);

    auto [table, env, key] = make_fleet({"--budget-usd", budget, "--budget-period", "day"});
    env["CHAT_PRICING_FILE"] = prices.string();
    env["CHAT_ECHO_DELAY_MS"] = "400";
    env["CHAT_CACHE_SIZE"] = "0"; // every answer is paid for
    server_process first{env}, second{env};
    const auto outcome = burst_over({&first, &second}, key, body, 50);
    CHECK(outcome.ok == 10);
    CHECK(outcome.limited == 40);
    CHECK(outcome.other == 0);
    for (const auto& code : outcome.codes) CHECK(code == "insufficient_quota");

    // Ten answers of 6 tokens spent $0.06; the rest of their reservations came back, so the other
    // server admits another at once.
    auto c = second.client();
    auto r = c.Post("/chat", {{"Authorization", "Bearer " + key}}, body, "application/json");
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == 200);
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, dynalite().aws_environment()};
    auto items = client.call("Scan", {{"TableName", table + "-limits"}});
    REQUIRE(items);
    REQUIRE((*items)["Items"].size() == 1);
    CHECK((*items)["Items"][0]["counter"]["S"].get<std::string>().starts_with("team#fleet#day#"));
    // 11 answers of $0.006 settled (the last one's settlement may still be on its way: it is
    // written after the last byte).
    for (int attempt = 0; attempt < 50; ++attempt) {
        items = client.call("Scan", {{"TableName", table + "-limits"}});
        if ((*items)["Items"][0]["n"]["N"] == "66000") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK((*items)["Items"][0]["n"]["N"] == "66000");
}

TEST_CASE("CHAT_LIMITS=shared needs Redis or a DynamoDB database: start-up says so") {
    auto r = test_support::run_to_exit({{"CHAT_LIMITS", "shared"}, {"CHAT_AUTH", "keys"}, {"CHAT_SERVER", "httplib"}, {"CHAT_PORT", "0"}},
                                       {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_LIMITS=shared keeps its counters in Redis or DynamoDB") != std::string::npos);
    r = test_support::run_to_exit({{"CHAT_LIMITS", "everywhere"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_LIMITS") != std::string::npos);
}
