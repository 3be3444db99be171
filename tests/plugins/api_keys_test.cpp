// API keys: their format and digest, where a request carries one, the authenticating middleware's
// decisions, and its snapshot of a real SQLite key directory seeing new and revoked keys.
#include "chatkit/api_key_auth.hpp"
#include "chatkit/api_keys.hpp"
#include "chatkit/key_rate_limits.hpp"
#include "chatkit/sqlite_key_directory.hpp"

#include "chatkit/random_id.hpp"

#include <chatkit/testing/key_directory.hpp>

#include "../support/manual_clock.hpp"

#include "../support/temp_db.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <list>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace api_keys = chatkit::api_keys;
using chatkit::http_request;
using chatkit::key_record;
namespace fs = std::filesystem;

using test_support::temp_db;

// A key record for `key`, as `keys create` stores it.
key_record record_for(const std::string& key, std::string id = "key_1", std::string team = "team-a") {
    key_record r;
    r.id = std::move(id);
    r.team_id = std::move(team);
    r.prefix = api_keys::display_prefix(key);
    r.digest = api_keys::digest(key);
    r.created_at = chatkit::now_unix_ms();
    return r;
}

http_request chat_request(std::string key_header_value, std::string body = R"({"content":"hi"})") {
    http_request req{.method = "POST", .path = "/chat", .body = std::move(body)};
    if (!key_header_value.empty()) req.headers["Authorization"] = std::move(key_header_value);
    return req;
}

nlohmann::json body_of(const chatkit::http_response& res) { return nlohmann::json::parse(res.body); }

using auth_type = chatkit::api_key_auth<chatkit::static_key_directory>;
auth_type make_auth(std::vector<key_record> records, chatkit::api_key_auth_options o = {}) {
    o.refresh_interval = std::chrono::milliseconds::zero();
    return auth_type{chatkit::static_key_directory{std::move(records)}, std::move(o)};
}

} // namespace

TEST_CASE("api keys: a new key is ck- and 43 base62 characters, different every time") {
    std::set<std::string> seen;
    for (int i = 0; i < 200; ++i) {
        const std::string key = api_keys::generate_key();
        REQUIRE(key.size() == 3 + 43); // 43 base62 characters: 256 bits, the 32 random bytes they come from
        CHECK(key.starts_with("ck-"));
        CHECK(api_keys::looks_like_key(key));
        seen.insert(key);
    }
    CHECK(seen.size() == 200);
    // Every base62 character shows up across 200 keys (8,600 draws): the alphabet is used whole.
    std::set<char> chars;
    for (const auto& k : seen) chars.insert(k.begin() + 3, k.end());
    CHECK(chars.size() == 62);
}

TEST_CASE("api keys: ids are key_ and 24 hex digits, and the display prefix shows 6 characters of the secret") {
    const std::string id = api_keys::generate_key_id();
    CHECK(id.size() == 4 + 24);
    CHECK(id.starts_with("key_"));
    CHECK(id.find_first_not_of("0123456789abcdef", 4) == std::string::npos);
    CHECK(api_keys::generate_key_id() != id);
    CHECK(api_keys::display_prefix("ck-AbCdEfGhIjK") == "ck-AbCdEf");
}

TEST_CASE("api keys: the digest is SHA-256 of the whole key, compared whole") {
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    const std::string d = api_keys::digest("abc");
    REQUIRE(d.size() == 32);
    std::string hex;
    for (unsigned char c : d) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 0xf];
    CHECK(hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(api_keys::digests_equal(api_keys::digest("ck-x"), api_keys::digest("ck-x")));
    CHECK_FALSE(api_keys::digests_equal(api_keys::digest("ck-x"), api_keys::digest("ck-y")));
    CHECK_FALSE(api_keys::digests_equal(d, d.substr(0, 31)));
}

TEST_CASE("api keys: the key is read from Authorization: Bearer or x-api-key, spaces trimmed, other schemes ignored") {
    http_request req;
    req.headers["Authorization"] = "Bearer ck-abc";
    CHECK(api_keys::presented_key(req) == "ck-abc");
    req.headers["Authorization"] = "  bearer \t ck-abc  ";
    CHECK(api_keys::presented_key(req) == "ck-abc");
    req.headers["Authorization"] = "BEARER ck-abc";
    CHECK(api_keys::presented_key(req) == "ck-abc");
    req.headers["Authorization"] = "Basic Y2stYWJjOg==";
    CHECK(api_keys::presented_key(req).empty());
    req.headers["Authorization"] = "Bearerck-abc";
    CHECK(api_keys::presented_key(req).empty());
    req.headers["Authorization"] = "Bearer   ";
    CHECK(api_keys::presented_key(req).empty());
    req.headers["X-Api-Key"] = " ck-def ";
    CHECK(api_keys::presented_key(req) == "ck-def"); // Bearer empty: x-api-key
    req.headers["Authorization"] = "Bearer ck-abc";
    CHECK(api_keys::presented_key(req) == "ck-abc"); // Bearer first
    http_request only_x;
    only_x.headers["x-api-key"] = "ck-def";
    CHECK(api_keys::presented_key(only_x) == "ck-def");
}

TEST_CASE("api_key_auth: a valid key passes and names its caller, while missing, unknown, revoked and expired keys get 401") {
    const std::string good = api_keys::generate_key();
    const std::string revoked = api_keys::generate_key();
    const std::string expired = api_keys::generate_key();
    auto revoked_record = record_for(revoked, "key_revoked");
    revoked_record.revoked_at = chatkit::now_unix_ms() - 1000;
    auto expired_record = record_for(expired, "key_expired");
    expired_record.expires_at = chatkit::now_unix_ms() - 1;
    auto auth = make_auth({record_for(good, "key_good", "team-a"), revoked_record, expired_record});
    chatkit::no_context ctx;

    auto ok = chat_request("Bearer " + good);
    CHECK_FALSE(auth.before(ok, ctx).has_value());
    CHECK(ok.caller.key_id == "key_good");
    CHECK(ok.caller.team_id == "team-a");

    http_request by_x{.method = "POST", .path = "/v1/chat/completions"};
    by_x.headers["x-api-key"] = good;
    CHECK_FALSE(auth.before(by_x, ctx).has_value());
    CHECK(by_x.caller.key_id == "key_good");

    for (const std::string& header : {std::string{}, "Bearer " + api_keys::generate_key(), "Bearer " + revoked, "Bearer " + expired,
                                      std::string{"Bearer not-a-key"}, "Basic " + good}) {
        INFO("Authorization: " << header);
        auto req = chat_request(header);
        req.request_id = "rid-1";
        auto res = auth.before(req, ctx);
        REQUIRE(res.has_value());
        CHECK(res->status == 401);
        const auto body = body_of(*res);
        CHECK(body["error"]["code"] == "invalid_api_key");
        CHECK(body["error"]["type"] == "invalid_request_error");
        CHECK(body["request_id"] == "rid-1");
        CHECK(res->headers["WWW-Authenticate"] == "Bearer");
        CHECK_FALSE(req.caller.authenticated());
        // The answer never carries the key sent, nor any key's digest.
        for (const auto& k : {good, revoked, expired}) CHECK(res->body.find(k.substr(3)) == std::string::npos);
        if (header.size() > 10) CHECK(res->body.find(header.substr(10)) == std::string::npos);
    }
    auto rev = chat_request("Bearer " + revoked);
    CHECK(body_of(*auth.before(rev, ctx))["error"]["message"] == "this API key has been revoked");
    auto exp = chat_request("Bearer " + expired);
    CHECK(body_of(*auth.before(exp, ctx))["error"]["message"] == "this API key has expired");
}

TEST_CASE("api_key_auth: /health and /ready need no key, every other route does") {
    auto auth = make_auth({});
    chatkit::no_context ctx;
    http_request health{.method = "GET", .path = "/health"};
    CHECK_FALSE(auth.before(health, ctx).has_value());
    http_request ready{.method = "GET", .path = "/ready"};
    CHECK_FALSE(auth.before(ready, ctx).has_value());
    for (const char* path : {"/v1/models", "/history/ada", "/healthz", "/health/x", "/nope"}) {
        http_request req{.method = "GET", .path = path};
        auto res = auth.before(req, ctx);
        REQUIRE(res.has_value());
        CHECK(res->status == 401);
    }
}

TEST_CASE("api_key_auth: a key limited to some models gets 403 for another model, and for none when the default is not allowed") {
    const std::string key = api_keys::generate_key();
    auto r = record_for(key);
    r.models = {"gpt-4o-mini", "echo-1"};
    chatkit::api_key_auth_options o;
    o.default_model = "gpt-4o";
    auto auth = make_auth({r}, o);
    chatkit::no_context ctx;

    auto allowed = chat_request("Bearer " + key, R"({"model":"echo-1","content":"hi"})");
    CHECK_FALSE(auth.before(allowed, ctx).has_value());
    auto openai = chat_request("Bearer " + key, R"({"model":"gpt-4o-mini","messages":[]})");
    openai.path = "/v1/chat/completions";
    CHECK_FALSE(auth.before(openai, ctx).has_value());

    // Every chat surface is checked: one of them left open would let the key use any model.
    for (const char* path : {"/v1/chat/completions", "/v1/chat", "/v1/messages", "/v1/responses"}) {
        auto elsewhere = chat_request("Bearer " + key, R"({"model":"gpt-4o","max_tokens":5,"input":"hi","messages":[]})");
        elsewhere.path = path;
        INFO(path);
        auto refused = auth.before(elsewhere, ctx);
        REQUIRE(refused.has_value());
        CHECK(refused->status == 403);
    }

    auto other = chat_request("Bearer " + key, R"({"model":"gpt-4o","content":"hi"})");
    auto res = auth.before(other, ctx);
    REQUIRE(res.has_value());
    CHECK(res->status == 403);
    CHECK(body_of(*res)["error"]["code"] == "model_not_allowed");
    CHECK(body_of(*res)["error"]["param"] == "model");
    CHECK(body_of(*res)["error"]["type"] == "permission_error");
    CHECK(other.caller.key_id == "key_1"); // the key is known, only not allowed: logs name it

    auto no_model = chat_request("Bearer " + key, R"({"content":"hi"})"); // gets the default, gpt-4o
    REQUIRE(auth.before(no_model, ctx).has_value());
    CHECK(auth.before(no_model, ctx)->status == 403);

    // A body the service will refuse with its own 400 is not the middleware's business.
    auto malformed = chat_request("Bearer " + key, "{not json");
    CHECK_FALSE(auth.before(malformed, ctx).has_value());
    // Other routes are not about a model.
    http_request models{.method = "GET", .path = "/v1/models"};
    models.headers["x-api-key"] = key;
    CHECK_FALSE(auth.before(models, ctx).has_value());
}

TEST_CASE("api_key_auth: the admin key, known by its digest only, is caller \"admin\" of no team, with no limits and every model") {
    const std::string admin = "an-admin-key-of-at-least-32-characters";
    const std::string team_key = api_keys::generate_key();
    auto r = record_for(team_key);
    r.models = {"echo-1"};
    chatkit::api_key_auth_options o;
    o.admin_key_digest = api_keys::digest(admin);
    auto auth = make_auth({r}, o);
    chatkit::no_context ctx;

    auto as_admin = chat_request("Bearer " + admin, R"({"model":"gpt-4o","content":"hi"})");
    CHECK_FALSE(auth.before(as_admin, ctx).has_value()); // no model list
    CHECK(as_admin.caller.admin);
    CHECK(as_admin.caller.key_id == "admin");
    CHECK(as_admin.caller.team_id.empty());
    CHECK_FALSE(as_admin.caller.key_limits.requests_per_minute.has_value());
    CHECK_FALSE(as_admin.caller.team_limits.budget_usd.has_value());

    auto as_team = chat_request("Bearer " + team_key, R"({"model":"echo-1","content":"hi"})");
    CHECK_FALSE(auth.before(as_team, ctx).has_value());
    CHECK_FALSE(as_team.caller.admin);
    // Neither the digest itself nor a near miss is the admin key.
    for (const std::string& wrong : {api_keys::digest(admin), admin + "x", admin.substr(1)}) {
        auto req = chat_request("Bearer " + wrong);
        auto res = auth.before(req, ctx);
        REQUIRE(res.has_value());
        CHECK(res->status == 401);
        CHECK_FALSE(req.caller.admin);
    }
    // Without an admin key configured, nothing is admin.
    auto plain = make_auth({r});
    auto req = chat_request("Bearer " + admin);
    REQUIRE(plain.before(req, ctx).has_value());
    CHECK_FALSE(req.caller.admin);
}

TEST_CASE("sqlite_key_directory passes the key directory conformance checks") {
    std::list<temp_db> files;
    chatkit::testing::check_key_directory_conformance([&] { return chatkit::sqlite_key_directory{{.path = files.emplace_back().path()}}; });
}

TEST_CASE("sqlite_key_directory: keys and teams round-trip, only the digest is stored, and revoking is recorded once") {
    temp_db file;
    chatkit::sqlite_key_directory dir{{.path = file.path()}};
    chatkit::team_record team{"team-a", "Team A", {.requests_per_minute = 60, .budget_usd = 12.5, .budget_period = "month"}, 1};
    REQUIRE(dir.create_team(team).has_value());
    auto again = dir.create_team(team);
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code == "team_exists");
    CHECK(again.error().kind == chatkit::error_kind::conflict); // 409 over HTTP (POST /admin/teams)

    const std::string key = api_keys::generate_key();
    auto r = record_for(key, "key_abc", "team-a");
    r.name = "ci";
    r.expires_at = r.created_at + 1000;
    r.limits.tokens_per_minute = 1000;
    r.models = {"echo-1"};
    REQUIRE(dir.create_key(r).has_value());
    auto orphan = record_for(api_keys::generate_key(), "key_orphan", "no-such-team");
    auto colon = record_for(api_keys::generate_key(), "key:1", "team-a");
    CHECK_FALSE(dir.create_key(colon).has_value()); // would make scoped history ids ambiguous
    auto refused = dir.create_key(orphan);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == "team_not_found");

    auto keys = dir.keys();
    REQUIRE(keys.has_value());
    REQUIRE(keys->size() == 1);
    const key_record& got = keys->front();
    CHECK(got.id == "key_abc");
    CHECK(got.team_id == "team-a");
    CHECK(got.name == "ci");
    CHECK(got.prefix == api_keys::display_prefix(key));
    CHECK(api_keys::digests_equal(got.digest, api_keys::digest(key)));
    CHECK(got.expires_at == r.expires_at);
    CHECK_FALSE(got.revoked_at);
    CHECK(got.limits.tokens_per_minute == 1000);
    CHECK_FALSE(got.limits.requests_per_minute);
    CHECK(got.models == std::vector<std::string>{"echo-1"});
    auto t = dir.team("team-a");
    REQUIRE(t.has_value());
    REQUIRE(t->has_value());
    CHECK((*t)->limits == team.limits);

    auto first = dir.revoke_key("key_abc", 5000);
    REQUIRE(first.has_value());
    CHECK(*first == 5000);
    auto second = dir.revoke_key("key_abc", 9000);
    REQUIRE(second.has_value());
    CHECK(*second == 5000);
    auto unknown = dir.revoke_key("key_nope", 1);
    REQUIRE_FALSE(unknown.has_value());
    CHECK(unknown.error().kind == chatkit::error_kind::not_found);

    // The file on disk holds no trace of the key's secret part.
    std::ifstream in{file.path(), std::ios::binary};
    const std::string bytes{std::istreambuf_iterator<char>{in}, {}};
    CHECK(bytes.find(key.substr(3, 20)) == std::string::npos);
}

TEST_CASE("api_key_auth over sqlite: a key created or revoked in the file is seen after a refresh, by the background refresher too") {
    temp_db file;
    chatkit::sqlite_key_directory admin{{.path = file.path()}}; // as the CLI, another connection
    REQUIRE(admin.create_team({"team-a", "", {}, 1}).has_value());

    chatkit::api_key_auth_options o;
    o.refresh_interval = std::chrono::milliseconds::zero();
    chatkit::api_key_auth<chatkit::sqlite_key_directory> auth{chatkit::sqlite_key_directory{{.path = file.path()}}, o};
    chatkit::no_context ctx;
    const std::string key = api_keys::generate_key();
    auto req = chat_request("Bearer " + key);
    CHECK(auth.before(req, ctx)->status == 401);

    REQUIRE(admin.create_key(record_for(key, "key_new")).has_value());
    CHECK(auth.before(req, ctx)->status == 401); // not refreshed yet
    REQUIRE(auth.refresh().has_value());
    CHECK_FALSE(auth.before(req, ctx).has_value());
    CHECK(req.caller.key_id == "key_new");

    REQUIRE(admin.revoke_key("key_new", chatkit::now_unix_ms()).has_value());
    REQUIRE(auth.refresh().has_value());
    auto after_revoke = chat_request("Bearer " + key);
    CHECK(auth.before(after_revoke, ctx)->status == 401);

    // The background refresher, at its interval, without anyone calling refresh().
    chatkit::api_key_auth_options fast;
    fast.refresh_interval = std::chrono::milliseconds{50};
    chatkit::api_key_auth<chatkit::sqlite_key_directory> live{chatkit::sqlite_key_directory{{.path = file.path()}}, fast};
    const std::string second = api_keys::generate_key();
    REQUIRE(admin.create_key(record_for(second, "key_second")).has_value());
    bool seen = false;
    for (int i = 0; i < 200 && !seen; ++i) {
        auto r2 = chat_request("Bearer " + second);
        seen = !live.before(r2, ctx).has_value();
        if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
    CHECK(seen);
    CHECK(live.key_count() == 2);
}

TEST_CASE("api_key_auth: requests on several threads keep passing while the snapshot is swapped under them") {
    const std::string key = api_keys::generate_key();
    chatkit::api_key_auth_options o;
    o.refresh_interval = std::chrono::milliseconds{1}; // the background refresher swaps all the time
    chatkit::api_key_auth<chatkit::static_key_directory> auth{chatkit::static_key_directory{{record_for(key, "key_mt")}}, o};
    std::atomic<int> refused{0};
    std::atomic<int> failed_refreshes{0};
    std::atomic<bool> swapping{true};
    std::thread refresher([&] { // a caller's own refreshes too (Catch's assertions stay on this thread)
        while (swapping)
            if (!auth.refresh()) ++failed_refreshes;
    });
    std::vector<std::thread> loops;
    for (int t = 0; t < 4; ++t)
        loops.emplace_back([&] {
            chatkit::no_context ctx;
            for (int i = 0; i < 2000; ++i) {
                auto req = chat_request("Bearer " + key);
                if (auth.before(req, ctx) || req.caller.key_id != "key_mt") ++refused;
            }
        });
    for (auto& l : loops) l.join();
    swapping = false;
    refresher.join();
    CHECK(refused == 0);
    CHECK(failed_refreshes == 0);
}

// --- key_rate_limits: requests per minute per key and per team --------------------------------

namespace {

using limits_under_test = chatkit::key_rate_limits<std::mutex, test_support::manual_clock>;

http_request limited_request(std::string key_id, std::string team_id, std::optional<std::int64_t> key_rpm,
                             std::optional<std::int64_t> team_rpm) {
    http_request req;
    req.method = "POST";
    req.path = "/chat";
    req.request_id = "req-1";
    req.caller = {.key_id = std::move(key_id),
                  .team_id = std::move(team_id),
                  .key_limits = {.requests_per_minute = key_rpm},
                  .team_limits = {.requests_per_minute = team_rpm}};
    return req;
}

// before() then after() on a 200 (or on the 429 before() gave), as the service runs them.
chatkit::http_response send(limits_under_test& limits, http_request req) {
    limits_under_test::context ctx;
    auto refused = limits.before(req, ctx);
    chatkit::http_response res = refused ? std::move(*refused) : chatkit::http_response{};
    if (!refused) res.status = 200;
    limits.after(req, res, ctx);
    return res;
}

std::string header_of(const chatkit::http_response& res, std::string_view name) {
    auto it = res.headers.find(name);
    return it == res.headers.end() ? std::string{} : it->second;
}

} // namespace

TEST_CASE("key_rate_limits: a key limit of N lets exactly N through in a burst, then 429 with Retry-After and the headers") {
    limits_under_test limits;
    for (int i = 0; i < 5; ++i) {
        const auto res = send(limits, limited_request("key_a", "team-a", 5, std::nullopt));
        CHECK(res.status == 200);
        CHECK(header_of(res, "x-ratelimit-limit-requests") == "5");
        CHECK(header_of(res, "x-ratelimit-remaining-requests") == std::to_string(4 - i));
    }
    const auto refused = send(limits, limited_request("key_a", "team-a", 5, std::nullopt));
    CHECK(refused.status == 429);
    CHECK(header_of(refused, "Retry-After") == "12"); // one request earned every 60/5 = 12 s
    CHECK(header_of(refused, "x-ratelimit-limit-requests") == "5");
    CHECK(header_of(refused, "x-ratelimit-remaining-requests") == "0");
    CHECK(header_of(refused, "x-ratelimit-reset-requests") == "1m0s");
    const auto body = nlohmann::json::parse(refused.body);
    CHECK(body["error"]["code"] == "rate_limit_exceeded");
    const std::string message = body["error"]["message"];
    CHECK(message.find("API key key_a allows 5 requests per minute") != std::string::npos);
    CHECK(message.find("team") == std::string::npos);
    // Another key of the same team has its own bucket.
    CHECK(send(limits, limited_request("key_b", "team-a", 5, std::nullopt)).status == 200);
}

TEST_CASE("key_rate_limits: a team limit is shared by its keys, and a request the team refuses takes nothing from the key") {
    limits_under_test limits;
    // The team allows 4; key_a allows 3 of its own.
    for (int i = 0; i < 2; ++i) CHECK(send(limits, limited_request("key_a", "team-t", 3, 4)).status == 200);
    for (int i = 0; i < 2; ++i) CHECK(send(limits, limited_request("key_b", "team-t", std::nullopt, 4)).status == 200);
    const auto refused = send(limits, limited_request("key_a", "team-t", 3, 4));
    CHECK(refused.status == 429);
    const std::string message = nlohmann::json::parse(refused.body)["error"]["message"];
    CHECK(message.find("team 'team-t' allows 4 requests per minute") != std::string::npos);
    CHECK(message.find("API key") == std::string::npos);
    CHECK(header_of(refused, "x-ratelimit-limit-requests") == "4"); // the team is the tighter one now
    CHECK(header_of(refused, "x-ratelimit-remaining-requests") == "0");
    CHECK(send(limits, limited_request("key_b", "team-t", std::nullopt, 4)).status == 429);

    // 15 s later the team has earned one request (60/4 s each). key_a (3/minute, one request every
    // 20 s) had 1 left after its 2, plus 0.75 earned: enough, but only because the refused request
    // took nothing from it; had it taken one, key_a would have 0.75 and be refused here.
    test_support::manual_clock::advance(std::chrono::seconds{15});
    const auto after_refill = send(limits, limited_request("key_a", "team-t", 3, 4));
    CHECK(after_refill.status == 200);
    CHECK(header_of(after_refill, "x-ratelimit-remaining-requests") == "0");
    // A minute later key_a's bucket is full again: exactly its 3 requests, the team now unlimited.
    test_support::manual_clock::advance(std::chrono::minutes{1});
    int passed = 0;
    while (send(limits, limited_request("key_a", "team-t", 3, std::nullopt)).status == 200) ++passed;
    CHECK(passed == 3);
}

TEST_CASE("key_rate_limits: a key refused by its own limit takes nothing from the team") {
    limits_under_test limits;
    CHECK(send(limits, limited_request("key_a", "team-u", 1, 3)).status == 200);
    for (int i = 0; i < 10; ++i) CHECK(send(limits, limited_request("key_a", "team-u", 1, 3)).status == 429);
    // The team has given one of its 3: two are left for another key.
    CHECK(send(limits, limited_request("key_b", "team-u", std::nullopt, 3)).status == 200);
    CHECK(send(limits, limited_request("key_b", "team-u", std::nullopt, 3)).status == 200);
    CHECK(send(limits, limited_request("key_b", "team-u", std::nullopt, 3)).status == 429);
}

TEST_CASE("key_rate_limits: the bucket refills with time, and follows a changed limit") {
    limits_under_test limits;
    for (int i = 0; i < 2; ++i) CHECK(send(limits, limited_request("key_r", "team-r", 2, std::nullopt)).status == 200);
    const auto refused = send(limits, limited_request("key_r", "team-r", 2, std::nullopt));
    CHECK(refused.status == 429);
    CHECK(header_of(refused, "Retry-After") == "30");
    test_support::manual_clock::advance(std::chrono::seconds{29});
    CHECK(send(limits, limited_request("key_r", "team-r", 2, std::nullopt)).status == 429);
    test_support::manual_clock::advance(std::chrono::seconds{1});
    const auto refilled = send(limits, limited_request("key_r", "team-r", 2, std::nullopt));
    CHECK(refilled.status == 200);
    CHECK(header_of(refilled, "x-ratelimit-reset-requests") == "1m0s");

    // The limit is raised to 60 (one a second): the bucket is now 60 requests big, and the minute
    // of debt it had is kept, so one request fits per second from here.
    auto raised = send(limits, limited_request("key_r", "team-r", 60, std::nullopt));
    CHECK(raised.status == 429);
    CHECK(header_of(raised, "x-ratelimit-limit-requests") == "60");
    CHECK(header_of(raised, "Retry-After") == "1");
    test_support::manual_clock::advance(std::chrono::seconds{1});
    raised = send(limits, limited_request("key_r", "team-r", 60, std::nullopt));
    CHECK(raised.status == 200);
    CHECK(header_of(raised, "x-ratelimit-reset-requests") == "1m0s");
    // Lowered to 1: the debt is cut to the new bucket's minute; the next request waits for it.
    const auto lowered = send(limits, limited_request("key_r", "team-r", 1, std::nullopt));
    CHECK(lowered.status == 429);
    CHECK(header_of(lowered, "x-ratelimit-limit-requests") == "1");
    test_support::manual_clock::advance(std::chrono::minutes{1});
    CHECK(send(limits, limited_request("key_r", "team-r", 1, std::nullopt)).status == 200);
}

TEST_CASE("key_rate_limits: no limit set, or no caller, means no headers and never a refusal") {
    limits_under_test limits;
    for (int i = 0; i < 1000; ++i) {
        const auto res = send(limits, limited_request("key_n", "team-n", std::nullopt, std::nullopt));
        REQUIRE(res.status == 200);
        REQUIRE(header_of(res, "x-ratelimit-limit-requests").empty());
    }
    http_request health;
    health.method = "GET";
    health.path = "/health";
    const auto res = send(limits, health);
    CHECK(res.status == 200);
    CHECK(res.headers.empty());
}

TEST_CASE("key_rate_limits: reset durations are written as OpenAI writes them") {
    using std::chrono::milliseconds;
    CHECK(chatkit::openai_duration(milliseconds{0}) == "0s");
    CHECK(chatkit::openai_duration(milliseconds{120}) == "120ms");
    CHECK(chatkit::openai_duration(milliseconds{5'500}) == "6s");
    CHECK(chatkit::openai_duration(milliseconds{60'000}) == "1m0s");
    CHECK(chatkit::openai_duration(milliseconds{61'001}) == "1m2s");
}

TEST_CASE("key_rate_limits: 50 requests on 10 threads against a key limit of 10 and a team limit of 15 let exactly 10 through") {
    chatkit::key_rate_limits_mt limits;
    std::atomic<int> ok{0}, refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 10; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 5; ++i) {
                http_request req = limited_request("key_c", "team-c", 10, 15);
                chatkit::key_rate_limits_mt::context ctx;
                (limits.before(req, ctx) ? refused : ok)++;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(ok == 10);
    CHECK(refused == 40);
    // The team gave exactly 10 of its 15: another key gets 5.
    int team_left = 0;
    for (int i = 0; i < 20; ++i) {
        http_request req = limited_request("key_d", "team-c", std::nullopt, 15);
        chatkit::key_rate_limits_mt::context ctx;
        if (!limits.before(req, ctx)) ++team_left;
    }
    CHECK(team_left == 5);
}

TEST_CASE("sqlite_key_directory: each key comes with its team's limits, and api_key_auth puts both rpm limits on the caller") {
    temp_db db;
    chatkit::sqlite_key_directory dir{chatkit::sqlite_options{.path = db.path()}};
    chatkit::team_record team{.id = "lim", .name = "Limited"};
    team.limits.requests_per_minute = 10;
    REQUIRE(dir.create_team(team));
    key_record k;
    k.id = api_keys::generate_key_id();
    k.team_id = "lim";
    const std::string secret = api_keys::generate_key();
    k.digest = api_keys::digest(secret);
    k.prefix = api_keys::display_prefix(secret);
    k.limits.requests_per_minute = 3;
    REQUIRE(dir.create_key(k));
    auto keys = dir.keys();
    REQUIRE(keys);
    REQUIRE(keys->size() == 1);
    CHECK(keys->front().team_limits.requests_per_minute == 10);
    CHECK(keys->front().limits.requests_per_minute == 3);

    chatkit::api_key_auth<chatkit::sqlite_key_directory> auth{std::move(dir), {.refresh_interval = std::chrono::milliseconds{0}}};
    http_request req;
    req.method = "GET";
    req.path = "/v1/models";
    req.headers.emplace("x-api-key", secret);
    chatkit::no_context none;
    REQUIRE_FALSE(auth.before(req, none));
    CHECK(req.caller.key_limits.requests_per_minute == 3);
    CHECK(req.caller.team_limits.requests_per_minute == 10);
}
