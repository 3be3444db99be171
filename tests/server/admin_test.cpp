// Administration over HTTP through the real sample_server binary: CHAT_ADMIN_KEY (in clear or as
// sha256:<hex>) with CHAT_AUTH=keys, the /admin routes making teams and keys that the running
// server then accepts, the refusals (no key, a team key, bad bodies, an existing team, an unknown
// key, no CHAT_AUTH=keys), neither the admin key nor its digest in the log, and the admin key
// reading another team's usage.
#include "../support/key_commands.hpp"
#include "../support/promtool.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>
#include <openssl/sha.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sys/wait.h>
#include <filesystem>
#include <string>
#include <thread>

using nlohmann::json;
using test_support::bearer;
using test_support::hex;
using test_support::promtool_check;
using test_support::run_to_exit;
using test_support::server_process;
using test_support::sha256;
using test_support::temp_dir;

namespace {

// 44 characters: over the 32 CHAT_ADMIN_KEY needs.
const std::string admin_key = "adm-Zq8vN3xKp5TtR2mW9cY4hJ7bL6fD1sG0eQaUoVi";

httplib::Result post(httplib::Client& c, const std::string& path, const std::string& key, const json& body) {
    return c.Post(path, bearer(key), body.dump(), "application/json");
}

httplib::Result chat(httplib::Client& c, const std::string& key) {
    return c.Post("/chat", bearer(key), json{{"user_id", "ada"}, {"content", "hello"}}.dump(), "application/json");
}

// The status /chat answers `key` with once it is `wanted`, or the last one after 5 s: a key made or
// revoked over HTTP is seen within one refresh of the server's snapshot (2 s).
int chat_status_within_5s(httplib::Client& c, const std::string& key, int wanted) {
    const auto start = std::chrono::steady_clock::now();
    int status = 0;
    while (std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
        auto r = chat(c, key);
        REQUIRE(r);
        status = r->status;
        if (status == wanted) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return status;
}

// An error answer: its status, and its envelope's code and param.
void check_error(const httplib::Result& r, int status, const std::string& code, const json& param = nullptr) {
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == status);
    const auto body = json::parse(r->body, nullptr, false);
    REQUIRE(body.is_object());
    CHECK(body["error"]["code"] == code);
    if (!param.is_null()) CHECK(body["error"]["param"] == param);
    CHECK(body["request_id"].is_string());
}

void check_secrets_not_in(const std::string& text) {
    CHECK(text.find(admin_key) == std::string::npos);
    CHECK(text.find(sha256(admin_key)) == std::string::npos);
    CHECK(text.find(hex(sha256(admin_key))) == std::string::npos);
}

} // namespace

TEST_CASE("admin: the admin key makes a team and a key over HTTP, and the key works within 5 s, is listed without its secret, "
          "and is refused within 5 s of its revocation") {
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", admin_key}});
    auto c = server.client();

    auto team = post(c, "/admin/teams", admin_key,
                     {{"id", "team-h"}, {"name", "Team H"}, {"rpm", 100}, {"budget_usd", 12.5}, {"budget_period", "month"}});
    REQUIRE(team);
    INFO(team->body);
    CHECK(team->status == 201);
    const auto t = json::parse(team->body);
    CHECK(t["id"] == "team-h");
    CHECK(t["name"] == "Team H");
    CHECK(t["rpm"] == 100);
    CHECK(t["tpm"].is_null());
    CHECK(t["budget_usd"] == 12.5);
    CHECK(t["budget_period"] == "month");
    CHECK(t["created_at"].is_string());

    auto made = post(c, "/admin/keys", admin_key,
                     {{"team", "team-h"}, {"name", "ci"}, {"tpm", 5000}, {"models", {"echo-1"}}, {"expires_in", "30d"}});
    REQUIRE(made);
    INFO(made->body);
    CHECK(made->status == 201);
    CHECK(made->get_header_value("Cache-Control") == "no-store");
    const auto k = json::parse(made->body);
    const std::string key = k["key"];
    const std::string key_id = k["id"];
    CHECK(key.starts_with("ck-"));
    CHECK(key_id.starts_with("key_"));
    CHECK(k["team"] == "team-h");
    CHECK(k["name"] == "ci");
    CHECK(k["tpm"] == 5000);
    CHECK(k["models"] == json::array({"echo-1"}));
    CHECK(k["expires_at"].is_string());
    CHECK(key.starts_with(k["prefix"].get<std::string>()));

    CHECK(chat_status_within_5s(c, key, 200) == 200);

    // Listed, by team or all, without the key or its digest.
    for (const char* path : {"/admin/keys?team=team-h", "/admin/keys"}) {
        auto list = c.Get(path, bearer(admin_key));
        REQUIRE(list);
        INFO(list->body);
        CHECK(list->status == 200);
        const auto data = json::parse(list->body)["data"];
        REQUIRE(data.size() == 1);
        CHECK(data[0]["id"] == key_id);
        CHECK(data[0]["revoked_at"].is_null());
        CHECK_FALSE(data[0].contains("key"));
        CHECK(list->body.find(key.substr(3)) == std::string::npos);
        CHECK(list->body.find(hex(sha256(key))) == std::string::npos);
    }
    auto other_team = c.Get("/admin/keys?team=nobody", bearer(admin_key));
    REQUIRE(other_team);
    CHECK(json::parse(other_team->body)["data"].empty());

    auto revoked = post(c, "/admin/keys/revoke", admin_key, {{"id", key_id}});
    REQUIRE(revoked);
    INFO(revoked->body);
    CHECK(revoked->status == 200);
    const auto r = json::parse(revoked->body);
    CHECK(r["id"] == key_id);
    CHECK(r["revoked_at"].is_string());
    CHECK(r["team"] == "team-h");
    CHECK_FALSE(r.contains("key"));
    CHECK(chat_status_within_5s(c, key, 401) == 401);

    // The admin key may chat too: no model list, no limits, key id "admin" in the access log.
    auto admin_chat = c.Post("/chat", bearer(admin_key), json{{"content", "hi"}, {"model", "any-model"}}.dump(), "application/json");
    REQUIRE(admin_chat);
    CHECK(admin_chat->status != 403);
    server.stop();
    check_secrets_not_in(server.log());
    CHECK(server.log().find(key.substr(3)) == std::string::npos); // nor the key made over HTTP
    bool named = false;
    for (const auto& line : server.request_logs())
        if (line.value("path", "") == "/admin/teams" && line.value("key_id", "") == "admin") named = true;
    CHECK(named);
}

TEST_CASE("admin: no key gets 401, a team key 403, and bad bodies 400 naming the field, an existing team 409, an unknown key 404") {
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", admin_key}});
    auto c = server.client();
    REQUIRE(post(c, "/admin/teams", admin_key, {{"id", "t"}})->status == 201);
    auto made = post(c, "/admin/keys", admin_key, {{"team", "t"}});
    REQUIRE(made);
    REQUIRE(made->status == 201);
    const std::string team_key = json::parse(made->body)["key"];
    REQUIRE(chat_status_within_5s(c, team_key, 200) == 200);

    check_error(c.Get("/admin/keys"), 401, "invalid_api_key");
    check_error(c.Post("/admin/teams", json{{"id", "x"}}.dump(), "application/json"), 401, "invalid_api_key");
    check_error(c.Get("/admin/keys", bearer("ck-" + std::string(43, 'A'))), 401, "invalid_api_key");
    check_error(c.Get("/admin/keys", bearer(admin_key + "x")), 401, "invalid_api_key");
    check_error(c.Get("/admin/keys", bearer(team_key)), 403, "permission_denied");
    check_error(post(c, "/admin/teams", team_key, {{"id", "mine"}}), 403, "permission_denied");
    check_error(post(c, "/admin/keys", team_key, {{"team", "t"}}), 403, "permission_denied");
    check_error(post(c, "/admin/keys/revoke", team_key, {{"id", "key_x"}}), 403, "permission_denied");

    // Bad bodies: 400 with the field named, checked as the command line checks its flags.
    check_error(c.Post("/admin/teams", bearer(admin_key), "{not json", "application/json"), 400, "invalid_value");
    check_error(c.Post("/admin/teams", bearer(admin_key), "[1]", "application/json"), 400, "invalid_value");
    check_error(post(c, "/admin/teams", admin_key, json::object()), 400, "invalid_value", "id");
    check_error(post(c, "/admin/teams", admin_key, {{"id", 7}}), 400, "invalid_value", "id");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"idd", "x"}}), 400, "invalid_value", "idd");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"rpm", 0}}), 400, "invalid_value", "rpm");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"rpm", 1.5}}), 400, "invalid_value", "rpm");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"tpm", "lots"}}), 400, "invalid_value", "tpm");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"budget_usd", 5}}), 400, "invalid_value", "budget_period");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"budget_usd", -5}, {"budget_period", "month"}}), 400, "invalid_value",
                "budget_usd");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}, {"budget_usd", 5}, {"budget_period", "week"}}), 400, "invalid_value",
                "budget_period");
    check_error(post(c, "/admin/keys", admin_key, {{"name", "no team"}}), 400, "invalid_value", "team");
    check_error(post(c, "/admin/keys", admin_key, {{"team", "nope"}}), 400, "team_not_found", "team");
    check_error(post(c, "/admin/keys", admin_key, {{"team", "t"}, {"expires_in", "soon"}}), 400, "invalid_value", "expires_in");
    check_error(post(c, "/admin/keys", admin_key, {{"team", "t"}, {"models", "echo-1"}}), 400, "invalid_value", "models");
    check_error(post(c, "/admin/keys", admin_key, {{"team", "t"}, {"models", {"echo-1", " "}}}), 400, "invalid_value", "models");
    check_error(post(c, "/admin/keys/revoke", admin_key, json::object()), 400, "invalid_value", "id");
    // None of them made anything.
    CHECK(json::parse(c.Get("/admin/keys", bearer(admin_key))->body)["data"].size() == 1);

    check_error(post(c, "/admin/teams", admin_key, {{"id", "t"}}), 409, "team_exists");
    check_error(post(c, "/admin/keys/revoke", admin_key, {{"id", "key_unknown"}}), 404, "key_not_found");
    server.stop();
    check_secrets_not_in(server.log());
}

TEST_CASE("admin: CHAT_ADMIN_KEY as sha256:<hex> of the key works, and neither the key nor its digest is logged") {
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", "sha256:" + hex(sha256(admin_key))}});
    auto c = server.client();
    auto team = post(c, "/admin/teams", admin_key, {{"id", "hashed"}});
    REQUIRE(team);
    INFO(team->body);
    CHECK(team->status == 201);
    // The digest itself is not a key.
    check_error(c.Get("/admin/keys", bearer(hex(sha256(admin_key)))), 401, "invalid_api_key");
    check_error(c.Get("/admin/keys", bearer("sha256:" + hex(sha256(admin_key)))), 401, "invalid_api_key");
    server.stop();
    check_secrets_not_in(server.log());
}

TEST_CASE("admin: a malformed CHAT_ADMIN_KEY stops start-up naming the variable without quoting it, and without CHAT_AUTH=keys "
          "CHAT_ADMIN_KEY stops start-up and /admin answers 404") {
    temp_dir dir;
    const std::map<std::string, std::string> base{
        {"CHAT_PORT", "0"}, {"CHAT_AUTH", "keys"}, {"CHAT_DATABASE_URL", "sqlite:" + (dir.path() / "keys.db").string()}};
    const std::string short_key = "too-short-admin-key-31-characte";
    REQUIRE(short_key.size() == 31);
    const std::string bad_hex = "sha256:" + hex(sha256(admin_key)).substr(0, 62) + "zz";
    for (const auto& value : {short_key, bad_hex, "sha256:" + hex(sha256(admin_key)).substr(0, 60), std::string{"sha256:"}}) {
        auto env = base;
        env["CHAT_ADMIN_KEY"] = value;
        const auto run = run_to_exit(env, {});
        INFO(run.output);
        CHECK(run.exit_code == 2);
        CHECK(run.output.find("CHAT_ADMIN_KEY") != std::string::npos);
        if (value != "sha256:") CHECK(run.output.find(value.starts_with("sha256:") ? value.substr(6) : value) == std::string::npos);
    }
    // The flag too, named as given.
    const auto by_flag = run_to_exit(base, {"--admin-key=" + short_key});
    CHECK(by_flag.exit_code == 2);
    CHECK(by_flag.output.find("--admin-key") != std::string::npos);
    CHECK(by_flag.output.find(short_key) == std::string::npos);

    // An admin key with nothing to check it: refused rather than silently off.
    auto open_env = base;
    open_env["CHAT_AUTH"] = "none";
    open_env["CHAT_ADMIN_KEY"] = admin_key;
    const auto unchecked = run_to_exit(open_env, {});
    INFO(unchecked.output);
    CHECK(unchecked.exit_code == 2);
    CHECK(unchecked.output.find("CHAT_ADMIN_KEY needs CHAT_AUTH=keys") != std::string::npos);
    check_secrets_not_in(unchecked.output);

    // Without CHAT_AUTH=keys the routes are never open, whatever the caller sends.
    server_process open_server;
    auto c = open_server.client();
    check_error(c.Get("/admin/keys"), 404, "not_found");
    check_error(c.Get("/admin/keys", bearer(admin_key)), 404, "not_found");
    check_error(post(c, "/admin/teams", admin_key, {{"id", "x"}}), 404, "not_found");
    check_error(post(c, "/admin/keys", admin_key, {{"team", "x"}}), 404, "not_found");
    check_error(post(c, "/admin/keys/revoke", admin_key, {{"id", "key_x"}}), 404, "not_found");
}

TEST_CASE("admin: with CHAT_AUTH=keys and no CHAT_ADMIN_KEY, a team key gets 403 and no key 401") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    REQUIRE(run_to_exit({{"CHAT_DATABASE_URL", "sqlite:" + db.string()}}, {"teams", "create", "--id", "t"}).exit_code == 0);
    const auto created = run_to_exit({{"CHAT_DATABASE_URL", "sqlite:" + db.string()}}, {"keys", "create", "--team", "t"});
    REQUIRE(created.exit_code == 0);
    const std::string key = json::parse(created.output)["key"];
    server_process server({{"CHAT_AUTH", "keys"}}, db);
    auto c = server.client();
    check_error(c.Get("/admin/keys"), 401, "invalid_api_key");
    check_error(c.Get("/admin/keys", bearer(key)), 403, "permission_denied");
    check_error(post(c, "/admin/teams", key, {{"id", "x"}}), 403, "permission_denied");
}

TEST_CASE("admin: the admin key may read another team's usage (GET /v1/usage?team=), a team key may not") {
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", admin_key}, {"CHAT_USAGE", "on"}});
    auto c = server.client();
    REQUIRE(post(c, "/admin/teams", admin_key, {{"id", "a"}, {"name", "Team A"}})->status == 201);
    REQUIRE(post(c, "/admin/teams", admin_key, {{"id", "b"}})->status == 201);
    auto made = post(c, "/admin/keys", admin_key, {{"team", "b"}});
    REQUIRE(made);
    REQUIRE(made->status == 201);
    const std::string team_b_key = json::parse(made->body)["key"];
    REQUIRE(chat_status_within_5s(c, team_b_key, 200) == 200);

    auto as_admin = c.Get("/v1/usage?team=a", bearer(admin_key));
    REQUIRE(as_admin);
    INFO(as_admin->body);
    CHECK(as_admin->status == 200);
    const auto report = json::parse(as_admin->body);
    CHECK(report["team_id"] == "a");
    CHECK(report["team_name"] == "Team A");
    check_error(c.Get("/v1/usage?team=a", bearer(team_b_key)), 403, "permission_denied", "team");
}

TEST_CASE("GET /metrics: with keys, the admin key reads it and a team key gets 403, and the scrape passes promtool's checks") {
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", admin_key}});
    auto c = server.client();
    REQUIRE(post(c, "/admin/teams", admin_key, {{"id", "team-m"}})->status == 201);
    auto made = post(c, "/admin/keys", admin_key, {{"team", "team-m"}});
    REQUIRE(made->status == 201);
    const std::string key = json::parse(made->body)["key"];
    REQUIRE(chat_status_within_5s(c, key, 200) == 200);
    for (int i = 0; i < 3; ++i) CHECK(chat(c, key)->status == 200);

    auto refused = c.Get("/metrics", bearer(key));
    REQUIRE(refused);
    CHECK(refused->status == 403);
    CHECK(c.Get("/metrics")->status == 401);
    auto scrape = c.Get("/metrics", bearer(admin_key));
    REQUIRE(scrape);
    REQUIRE(scrape->status == 200);
    CHECK(scrape->get_header_value("Content-Type").starts_with("text/plain; version=0.0.4"));
    const std::string& text = scrape->body;
    CHECK(text.find(R"(chatkit_http_requests_total{route="/chat",method="POST",status="200"})") != std::string::npos);
    CHECK(text.find(R"(chatkit_cost_usd_total{team="team-m",gen_ai_request_model="echo-1"})") != std::string::npos);
    CHECK(text.find(key.substr(3)) == std::string::npos);
    const auto [status, said] = promtool_check(text);
    INFO(said);
    CHECK(status == 0);
}

TEST_CASE("GET /metrics is open without keys, and absent with CHAT_METRICS=off") {
    server_process open_server;
    auto c = open_server.client();
    CHECK(c.Post("/chat", json{{"content", "hi"}}.dump(), "application/json")->status == 200);
    auto scrape = c.Get("/metrics");
    REQUIRE(scrape);
    CHECK(scrape->status == 200);
    CHECK(scrape->body.find("gen_ai_client_token_usage_bucket") != std::string::npos);
    server_process off{std::map<std::string, std::string>{{"CHAT_METRICS", "off"}}};
    CHECK(off.client().Get("/metrics")->status == 404);
}
