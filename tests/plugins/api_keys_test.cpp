// API keys: their format and digest, where a request carries one, the authenticating middleware's
// decisions, and its snapshot of a real SQLite key directory seeing new and revoked keys.
#include "chatkit/api_key_auth.hpp"
#include "chatkit/api_keys.hpp"
#include "chatkit/sqlite_key_directory.hpp"

#include "chatkit/random_id.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>

namespace {

namespace api_keys = chatkit::api_keys;
using chatkit::http_request;
using chatkit::key_record;
namespace fs = std::filesystem;

class temp_db {
public:
    temp_db() = default;
    temp_db(const temp_db&) = delete;
    temp_db& operator=(const temp_db&) = delete;
    ~temp_db() {
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm", "-journal"}) fs::remove(path_ + suffix, ec);
    }
    const std::string& path() const { return path_; }

private:
    std::string path_ = (fs::temp_directory_path() / ("chatkit-keys-test-" + chatkit::random_id({}, 16) + ".db")).string();
};

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

    for (const std::string& header : {std::string{}, "Bearer " + api_keys::generate_key(), "Bearer " + revoked,
                                      "Bearer " + expired, std::string{"Bearer not-a-key"}, "Basic " + good}) {
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

TEST_CASE("sqlite_key_directory: keys and teams round-trip, only the digest is stored, and revoking is recorded once") {
    temp_db file;
    chatkit::sqlite_key_directory dir{{.path = file.path()}};
    chatkit::team_record team{"team-a", "Team A", {.requests_per_minute = 60, .budget_usd = 12.5, .budget_period = "month"}, 1};
    REQUIRE(dir.create_team(team).has_value());
    auto again = dir.create_team(team);
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code == "team_exists");

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
