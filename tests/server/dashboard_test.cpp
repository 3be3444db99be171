// The usage dashboard's data (GET /v1/usage/dashboard) through the real sample_server binary
// (CHAT_AUTH=keys, a priced echo model): the admin key sees every team or one, a team key its own
// only, and the numbers equal GET /v1/usage's for the same period.
#include "../support/key_commands.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;
using test_support::bearer;
using test_support::cli;
using test_support::create_key;
using test_support::create_team;
using test_support::last_json;
using test_support::run_to_exit;
using test_support::server_process;
using test_support::temp_dir;

namespace {

// 44 characters: over the 32 CHAT_ADMIN_KEY needs.
const std::string admin_key = "adm-Dq8vN3xKp5TtR2mW9cY4hJ7bL6fD1sG0eQaUoVi";

json get_json(httplib::Client& c, const std::string& path, const std::string& key, int status = 200) {
    auto r = c.Get(path, bearer(key));
    REQUIRE(r);
    INFO(path << ": " << r->body);
    REQUIRE(r->status == status);
    return json::parse(r->body);
}

int chat(httplib::Client& c, const std::string& key, const std::string& content) {
    auto r = c.Post("/chat", bearer(key), json{{"user_id", "ada"}, {"content", content}}.dump(), "application/json");
    REQUIRE(r);
    return r->status;
}

// The summary fields both routes have, compared: counts exactly, costs as sums of the same
// doubles (SQLite and the report may add them in another order).
void check_same_totals(const json& dashboard, const json& usage) {
    INFO("dashboard: " << dashboard["summary"].dump() << "\nusage: " << usage["summary"].dump());
    CHECK(dashboard["summary"]["total_requests"] == usage["summary"]["total_requests"]);
    CHECK(dashboard["summary"]["total_tokens"] == usage["summary"]["total_tokens"]);
    CHECK(dashboard["summary"]["unpriced_requests"] == usage["summary"]["unpriced_requests"]);
    CHECK(dashboard["summary"]["total_cost_usd"].get<double>() == Approx(usage["summary"]["total_cost_usd"].get<double>()));
    CHECK(dashboard["summary"]["avg_daily_cost_usd"].get<double>() == Approx(usage["summary"]["avg_daily_cost_usd"].get<double>()));
    REQUIRE(dashboard["by_model"].size() == usage["by_model"].size());
    for (std::size_t i = 0; i < usage["by_model"].size(); ++i) {
        CHECK(dashboard["by_model"][i]["model"] == usage["by_model"][i]["model"]);
        CHECK(dashboard["by_model"][i]["requests"] == usage["by_model"][i]["requests"]);
        CHECK(dashboard["by_model"][i]["tokens"] == usage["by_model"][i]["tokens"]);
        CHECK(dashboard["by_model"][i]["cost_usd"].get<double>() == Approx(usage["by_model"][i]["cost_usd"].get<double>()));
    }
}

} // namespace

TEST_CASE("dashboard data: the admin key sees every team or one, a team key its own only, with the numbers of GET /v1/usage") {
    temp_dir dir;
    const auto db = dir.path() / "dash.db";
    const auto prices = dir.path() / "prices.json";
    std::ofstream{prices} << json{{"models", {{"echo-1", {{"input", 3.0}, {"output", 15.0}}}}}}.dump();
    create_team(db, {"--id", "research", "--name", "Research"});
    create_team(db, {"--id", "other"});
    const std::string research = create_key(db, {"--team", "research"});
    const std::string limited = create_key(db, {"--team", "research", "--rpm", "1"});
    const std::string outsider = create_key(db, {"--team", "other"});
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", admin_key}, {"CHAT_PRICING_FILE", prices.string()}}, db);
    auto c = server.client();

    // research: three answers, the third from the cache, and one 429; other: two answers.
    REQUIRE(chat(c, research, "first question for the dashboard") == 200);
    REQUIRE(chat(c, research, "second question") == 200);
    REQUIRE(chat(c, research, "second question") == 200);
    REQUIRE(chat(c, limited, "one a minute") == 200);
    REQUIRE(chat(c, limited, "one a minute, again") == 429);
    REQUIRE(chat(c, outsider, "a question from another team") == 200);
    REQUIRE(chat(c, outsider, "and one more") == 200);

    // The records are written off the request path: poll until all seven are in.
    json all;
    for (int i = 0; i < 100; ++i) {
        all = get_json(c, "/v1/usage/dashboard?days=7", admin_key);
        if (all["summary"]["total_requests"] == 7) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    INFO(all.dump());
    REQUIRE(all["summary"]["total_requests"] == 7);
    CHECK(all["all_teams"] == true);
    CHECK(all["period"]["days"] == 7);
    CHECK(all["period"]["bucket"] == "day");
    CHECK(all["series"]["label"].size() == 7);
    CHECK(all["series"]["requests"].back() == 7); // all made today
    CHECK(all["summary"]["errors"] == 1);
    CHECK(all["summary"]["rate_limited"] == 1);
    CHECK(all["summary"]["rate_limited_rate"].get<double>() == Approx(1.0 / 7));
    CHECK(all["summary"]["cache_hits"] == 1);
    CHECK(all["summary"]["cache_hit_ratio"].get<double>() == Approx(1.0 / 6));
    CHECK(all["summary"]["unpriced_requests"] == 0);
    CHECK(all["summary"]["total_cost_usd"].get<double>() > 0);
    CHECK(all["latency_ms"]["p50"].get<double>() > 0);
    CHECK(all["latency_ms"]["p50"].get<double>() <= all["latency_ms"]["p99"].get<double>());
    REQUIRE(all["by_team"].size() == 2);
    for (const auto& team : all["by_team"]) {
        if (team["team_id"] == "research") {
            CHECK(team["team_name"] == "Research");
            CHECK(team["requests"] == 5);
        } else {
            CHECK(team["team_id"] == "other");
            CHECK(team["requests"] == 2);
        }
    }
    CHECK(all["top_keys"].size() == 3);
    CHECK(all["by_model"][0]["model"] == "echo-1");

    // One team, for the admin key and for the team's own key, equals GET /v1/usage of that team.
    for (const int days : {1, 7, 30, 90}) {
        INFO("days=" << days);
        const auto period = "days=" + std::to_string(days);
        const auto one = get_json(c, "/v1/usage/dashboard?team=research&" + period, admin_key);
        check_same_totals(one, get_json(c, "/v1/usage?team=research&" + period, admin_key));
        CHECK(one["team_id"] == "research");
        CHECK(one["team_name"] == "Research");
        CHECK(one["all_teams"] == false);
        CHECK(one["period"]["bucket"] == (days == 1 ? "hour" : "day"));
        const auto own = get_json(c, "/v1/usage/dashboard?" + period, research);
        check_same_totals(own, get_json(c, "/v1/usage?" + period, research));
        CHECK(own["team_id"] == "research");
        CHECK(own["by_team"].size() == 1);
        CHECK(own["summary"]["total_requests"] == 5);
    }
    check_same_totals(get_json(c, "/v1/usage/dashboard", outsider), get_json(c, "/v1/usage", outsider));

    // The hours of one day add up to the day.
    const auto today = get_json(c, "/v1/usage/dashboard?days=1", admin_key);
    std::int64_t by_hour = 0;
    for (const auto& n : today["series"]["requests"]) by_hour += n.get<std::int64_t>();
    CHECK(by_hour == 7);

    // A model filter; a team key cannot read another team; bad input is a 400 naming the parameter.
    // The 429 was refused before a model was chosen: its record has none.
    CHECK(get_json(c, "/v1/usage/dashboard?model=echo-1", admin_key)["summary"]["total_requests"] == 6);
    CHECK(get_json(c, "/v1/usage/dashboard?model=gpt-4o", admin_key)["summary"]["total_requests"] == 0);
    CHECK(get_json(c, "/v1/usage/dashboard?team=other", research, 403)["error"]["code"] == "permission_denied");
    CHECK(get_json(c, "/v1/usage/dashboard?team=research", research)["summary"]["total_requests"] == 5);
    CHECK(get_json(c, "/v1/usage/dashboard?days=0", admin_key, 400)["error"]["param"] == "days");
    CHECK(get_json(c, "/v1/usage/dashboard?model=", admin_key, 400)["error"]["param"] == "model");
    auto anonymous = c.Get("/v1/usage/dashboard");
    REQUIRE(anonymous);
    CHECK(anonymous->status == 401);
    auto wrong = c.Get("/v1/usage/dashboard", bearer("ck-not-a-key-of-this-server"));
    REQUIRE(wrong);
    CHECK(wrong->status == 401);
    CHECK(server.log().find(admin_key) == std::string::npos);
}

TEST_CASE("dashboard data: without usage records (CHAT_USAGE=off) the route answers 404 usage_not_recorded") {
    server_process server(std::map<std::string, std::string>{{"CHAT_USAGE", "off"}});
    auto c = server.client();
    auto r = c.Get("/v1/usage/dashboard");
    REQUIRE(r);
    CHECK(r->status == 404);
    CHECK(json::parse(r->body)["error"]["code"] == "usage_not_recorded");
}

TEST_CASE("dashboard page: GET /dashboard and its files are served from the binary without a key, under a strict content security policy") {
    server_process server({{"CHAT_AUTH", "keys"}, {"CHAT_ADMIN_KEY", admin_key}});
    auto c = server.client();
    for (const auto& [path, type] : std::vector<std::pair<std::string, std::string>>{{"/dashboard", "text/html"},
                                                                                     {"/dashboard/dashboard.js", "text/javascript"},
                                                                                     {"/dashboard/dashboard.css", "text/css"},
                                                                                     {"/dashboard/uPlot.iife.min.js", "text/javascript"},
                                                                                     {"/dashboard/uPlot.min.css", "text/css"}}) {
        INFO(path);
        auto r = c.Get(path);
        REQUIRE(r);
        CHECK(r->status == 200);
        CHECK(r->get_header_value("Content-Type").starts_with(type));
        CHECK(r->get_header_value("Content-Security-Policy").find("default-src 'none'") != std::string::npos);
        CHECK(r->get_header_value("X-Content-Type-Options") == "nosniff");
        CHECK(!r->body.empty());
    }
    auto page = c.Get("/dashboard");
    REQUIRE(page);
    CHECK(page->body.find("/dashboard/uPlot.iife.min.js") != std::string::npos);
    CHECK(page->body.find("http") == std::string::npos); // nothing loaded from elsewhere
    // Only these paths are open: the data still needs a key, and other methods are unknown routes.
    auto data = c.Get("/v1/usage/dashboard");
    REQUIRE(data);
    CHECK(data->status == 401);
    auto other = c.Get("/dashboard/secret.js");
    REQUIRE(other);
    CHECK(other->status == 401);
}
