// chatkit::dynamodb_key_directory against real DynamoDB emulators (dynalite and moto_server, each
// case on both): teams and keys written with conditions, keys read with their teams' limits across
// Scan pages, revocation, and the URL that names the table.
#include "chatkit/dynamodb_key_directory.hpp"

#include "../support/aws_emulators.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <random>
#include <set>

using chatkit::dynamodb_key_directory;
using chatkit::dynamodb_key_directory_options;
using chatkit::error_kind;
using chatkit::key_record;
using chatkit::team_record;

namespace {

test_support::emulator_process& dynalite() {
    static test_support::emulator_process e = test_support::start_dynalite();
    return e;
}
test_support::emulator_process& moto() {
    static test_support::emulator_process e = test_support::start_moto();
    return e;
}

std::string unique_table() {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    return "keys-" + std::to_string(run) + "-" + std::to_string(++n);
}

// A directory on a new table of the emulator named "dynalite" or "moto".
dynamodb_key_directory make_directory(const std::string& emulator, std::size_t scan_page_size = 0) {
    dynamodb_key_directory_options o;
    o.table = unique_table();
    o.scan_page_size = scan_page_size;
    dynamodb_key_directory dir{o, (emulator == "moto" ? moto() : dynalite()).aws_environment()};
    test_support::create_table(dir.client(), dynamodb_key_directory::create_table_input(o.table));
    return dir;
}

// A key record as `keys create` makes one, with a digest that is not the key.
key_record make_key(const std::string& id, const std::string& team, chatkit::unix_ms created_at) {
    key_record k;
    k.id = id;
    k.team_id = team;
    k.name = "name of " + id;
    k.prefix = "ck-AbC123";
    k.digest = std::string(32, '\0');
    for (std::size_t i = 0; i < k.digest.size(); ++i)
        k.digest[i] = static_cast<char>(i * 7 + id.size()); // bytes of every kind, '\0' included
    k.created_at = created_at;
    return k;
}

// Every item of the table, as DynamoDB holds it.
nlohmann::json scan_all(dynamodb_key_directory& dir) {
    auto all = dir.client().call("Scan", {{"TableName", dir.options().table}});
    REQUIRE(all);
    return (*all)["Items"];
}

} // namespace

TEST_CASE("dynamodb_key_directory: a team is created once, its id is refused a second time and team() reads it back") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto dir = make_directory(emulator);
    team_record t{"research", "Research", {}, 1'700'000'000'000};
    t.limits.requests_per_minute = 600;
    t.limits.budget_usd = 49.5;
    t.limits.budget_period = "month";
    REQUIRE(dir.create_team(t));

    team_record again{"research", "Someone else", {}, 1'700'000'000'001};
    auto refused = dir.create_team(again);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().kind == error_kind::conflict);
    CHECK(refused.error().code == "team_exists");

    auto read = dir.team("research");
    REQUIRE(read);
    REQUIRE(*read);
    CHECK((*read)->name == "Research"); // the first one, not overwritten
    CHECK((*read)->created_at == 1'700'000'000'000);
    CHECK((*read)->limits == t.limits);
    auto missing = dir.team("nobody");
    REQUIRE(missing);
    CHECK_FALSE(*missing);
}

TEST_CASE("dynamodb_key_directory: keys() returns each key's digest, never the key, with its team's limits joined") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto dir = make_directory(emulator);
    team_record limited{"limited", "", {}, 1};
    limited.limits.requests_per_minute = 10;
    limited.limits.tokens_per_minute = 5000;
    REQUIRE(dir.create_team(limited));
    REQUIRE(dir.create_team(team_record{"open", "", {}, 2}));

    auto first = make_key("key_first", "limited", 1'000);
    first.limits.requests_per_minute = 3;
    first.models = {"echo-1", "gpt-4o-mini"};
    first.expires_at = 9'000'000'000'000;
    REQUIRE(dir.create_key(first));
    const auto second = make_key("key_second", "open", 2'000);
    REQUIRE(dir.create_key(second));

    auto keys = dir.keys();
    REQUIRE(keys);
    REQUIRE(keys->size() == 2);
    const auto& a = (*keys)[0]; // oldest first
    CHECK(a.id == "key_first");
    CHECK(a.team_id == "limited");
    CHECK(a.name == "name of key_first");
    CHECK(a.prefix == "ck-AbC123");
    CHECK(a.digest == first.digest); // the 32 raw bytes, through base64 and back
    CHECK(a.created_at == 1'000);
    CHECK(a.expires_at == first.expires_at);
    CHECK_FALSE(a.revoked_at);
    CHECK(a.limits == first.limits);
    CHECK(a.team_limits == limited.limits);
    CHECK(a.models == first.models);
    const auto& b = (*keys)[1];
    CHECK(b.id == "key_second");
    CHECK(b.team_limits == chatkit::usage_limits{}); // a team without limits
    CHECK(b.models.empty());
    CHECK_FALSE(b.expires_at);

    // The item holds the digest as DynamoDB binary, and no attribute named or holding a key.
    for (const auto& item : scan_all(dir)) {
        if (!item["pk"]["S"].get<std::string>().starts_with("key#")) continue;
        CHECK(item["digest"].contains("B"));
        CHECK_FALSE(item.contains("key"));
    }
}

TEST_CASE("dynamodb_key_directory: a key id is never overwritten, and a key needs an existing team and a 32-byte digest") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto dir = make_directory(emulator);
    REQUIRE(dir.create_team(team_record{"t", "", {}, 1}));
    REQUIRE(dir.create_key(make_key("key_one", "t", 10)));

    auto again = make_key("key_one", "t", 20);
    again.name = "impostor";
    auto refused = dir.create_key(again);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == "key_exists");
    auto keys = dir.keys();
    REQUIRE(keys);
    REQUIRE(keys->size() == 1);
    CHECK(keys->front().name == "name of key_one");

    auto no_team = dir.create_key(make_key("key_two", "nope", 30));
    REQUIRE_FALSE(no_team);
    CHECK(no_team.error().code == "team_not_found");
    CHECK(no_team.error().message == "no team 'nope'");

    auto short_digest = make_key("key_three", "t", 40);
    short_digest.digest = "too short";
    CHECK(dir.create_key(short_digest).error().code == "invalid_value");
    CHECK(dir.create_key(make_key("key:colon", "t", 50)).error().code == "invalid_value");
    REQUIRE(dir.keys()->size() == 1);
}

TEST_CASE("dynamodb_key_directory: revoke_key returns the revocation time, keeps the first one, and refuses an unknown id") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto dir = make_directory(emulator);
    REQUIRE(dir.create_team(team_record{"t", "", {}, 1}));
    REQUIRE(dir.create_key(make_key("key_r", "t", 10)));

    auto revoked = dir.revoke_key("key_r", 5'000);
    REQUIRE(revoked);
    CHECK(*revoked == 5'000);
    auto twice = dir.revoke_key("key_r", 9'000);
    REQUIRE(twice);
    CHECK(*twice == 5'000);
    auto keys = dir.keys();
    REQUIRE(keys);
    REQUIRE(keys->size() == 1);
    CHECK(keys->front().revoked_at == 5'000);
    CHECK_FALSE(keys->front().active_at(6'000));

    auto unknown = dir.revoke_key("key_unknown", 5'000);
    REQUIRE_FALSE(unknown);
    CHECK(unknown.error().kind == error_kind::not_found);
    CHECK(unknown.error().code == "key_not_found");
    CHECK(scan_all(dir).size() == 2); // the refused UpdateItem made no item
}

TEST_CASE("dynamodb_key_directory: keys() follows LastEvaluatedKey across Scan pages and joins teams read on any page") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto dir = make_directory(emulator, 4); // 4 items per Scan page
    for (int t = 0; t < 3; ++t) {
        team_record team{"team-" + std::to_string(t), "", {}, t};
        team.limits.requests_per_minute = 100 + t;
        REQUIRE(dir.create_team(team));
    }
    std::set<std::string> made;
    for (int i = 0; i < 23; ++i) {
        const auto id = "key_" + std::to_string(100 + i);
        REQUIRE(dir.create_key(make_key(id, "team-" + std::to_string(i % 3), 1'000 + i)));
        made.insert(id);
    }
    // The pages are real: a Scan of 4 items leaves the rest for later.
    auto one_page = dir.client().call("Scan", {{"TableName", dir.options().table}, {"Limit", 4}});
    REQUIRE(one_page);
    CHECK((*one_page)["Items"].size() == 4);
    CHECK((*one_page).contains("LastEvaluatedKey"));

    auto keys = dir.keys();
    REQUIRE(keys);
    REQUIRE(keys->size() == 23);
    std::set<std::string> read;
    for (std::size_t i = 0; i < keys->size(); ++i) {
        const auto& k = (*keys)[i];
        read.insert(k.id);
        CHECK(k.created_at == 1'000 + static_cast<chatkit::unix_ms>(i)); // oldest first
        const int team = std::stoi(k.team_id.substr(5));
        CHECK(k.team_limits.requests_per_minute == 100 + team);
    }
    CHECK(read == made);
}

TEST_CASE("dynamodb_key_directory: a missing table is an unavailable error that names it, never an exception") {
    dynamodb_key_directory_options o;
    o.table = "no-such-table-" + unique_table();
    o.client.retries.max_retries = 0;
    dynamodb_key_directory dir{o, dynalite().aws_environment()};
    auto keys = dir.keys();
    REQUIRE_FALSE(keys);
    CHECK(keys.error().kind == error_kind::unavailable);
    CHECK(keys.error().code == "ResourceNotFoundException");
    CHECK(keys.error().message.find(o.table) != std::string::npos);
    auto created = dir.create_team(team_record{"t", "", {}, 1});
    REQUIRE_FALSE(created);
    CHECK(created.error().kind == error_kind::unavailable);
}

TEST_CASE("dynamodb_key_directory: keys() skips items of other kinds, and an unreadable key item is an unavailable error") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto dir = make_directory(emulator);
    REQUIRE(dir.create_team(team_record{"t", "", {}, 1}));
    REQUIRE(dir.create_key(make_key("key_good", "t", 10)));
    REQUIRE(dir.client().call("PutItem",
                              {{"TableName", dir.options().table}, {"Item", {{"pk", {{"S", "usage#2026-12"}}}, {"count", {{"N", "3"}}}}}}));
    auto keys = dir.keys();
    REQUIRE(keys);
    CHECK(keys->size() == 1);

    // A key item without its digest cannot be checked against any key: the read fails, so the
    // middleware keeps its last snapshot rather than silently dropping the key.
    REQUIRE(dir.client().call(
        "PutItem",
        {{"TableName", dir.options().table},
         {"Item",
          {{"pk", {{"S", "key#key_broken"}}}, {"id", {{"S", "key_broken"}}}, {"team_id", {{"S", "t"}}}, {"created_at", {{"N", "20"}}}}}}));
    auto broken = dir.keys();
    REQUIRE_FALSE(broken);
    CHECK(broken.error().kind == error_kind::unavailable);
    CHECK(broken.error().code == "store_malformed");
    CHECK(broken.error().message.find("key#key_broken") != std::string::npos);
}

TEST_CASE("dynamodb_key_directory: the database URL names the keys table, TABLE-keys unless keys_table says otherwise") {
    auto plain = chatkit::parse_dynamodb_url("dynamodb://chat-history?region=eu-west-1");
    REQUIRE(plain);
    CHECK(plain->keys_table == "chat-history-keys");
    const auto o = dynamodb_key_directory_options::of(*plain);
    CHECK(o.table == "chat-history-keys");
    CHECK(o.client.region == "eu-west-1");

    auto named = chatkit::parse_dynamodb_url("dynamodb://chat-history?keys_table=team-keys");
    REQUIRE(named);
    CHECK(dynamodb_key_directory_options::of(*named).table == "team-keys");

    CHECK(chatkit::parse_dynamodb_url("dynamodb://chat?keys_table=x").error().code == "invalid_database_url");
    auto too_long = chatkit::parse_dynamodb_url("dynamodb://" + std::string(252, 'h'));
    REQUIRE_FALSE(too_long);
    CHECK(too_long.error().message.find("keys_table") != std::string::npos);
}
