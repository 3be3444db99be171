// The administration every chatkit key directory with teams has (sqlite_key_directory,
// dynamodb_key_directory, postgres_key_directory: create_team, team, create_key, revoke_key, and
// the concept's keys()), as Catch2 checks. A directory's test calls
// check_key_directory_conformance(make) from a TEST_CASE, where make() returns a new, empty one.
#pragma once

#include <chatkit/api_keys.hpp>
#include <chatkit/key_directory.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace chatkit::testing {

template <class Make>
void check_key_directory_conformance(Make make) {
    namespace api_keys = chatkit::api_keys;
    using chatkit::key_record;
    using chatkit::team_record;
    auto key_for = [](const std::string& id, const std::string& team, const std::string& secret) {
        key_record k;
        k.id = id;
        k.team_id = team;
        k.name = "name of " + id;
        k.prefix = api_keys::display_prefix(secret);
        k.digest = api_keys::digest(secret);
        k.created_at = 1'700'000'000'000;
        return k;
    };

    SECTION("a team is created once and read back with its limits") {
        auto dir = make();
        team_record team{"team-a", "Team A", {.requests_per_minute = 60, .budget_usd = 12.5, .budget_period = "month"}, 7};
        REQUIRE(dir.create_team(team));
        auto again = dir.create_team(team_record{"team-a", "Other", {}, 8});
        REQUIRE_FALSE(again);
        CHECK(again.error().kind == chatkit::error_kind::conflict); // 409 over HTTP (POST /admin/teams)
        CHECK(again.error().code == "team_exists");
        auto t = dir.team("team-a");
        REQUIRE(t);
        REQUIRE(t->has_value());
        CHECK((*t)->name == "Team A");
        CHECK((*t)->limits == team.limits);
        CHECK((*t)->created_at == 7);
        auto none = dir.team("no-such-team");
        REQUIRE(none);
        CHECK_FALSE(none->has_value());
    }

    SECTION("a key comes back as stored, its digest only, with its team's limits joined") {
        auto dir = make();
        REQUIRE(dir.create_team(team_record{"team-a", "", {.requests_per_minute = 10, .tokens_per_minute = 900}, 1}));
        const std::string secret = api_keys::generate_key();
        auto k = key_for("key_abc", "team-a", secret);
        k.expires_at = k.created_at + 1000;
        k.limits.requests_per_minute = 3;
        k.limits.budget_usd = 0.25;
        k.limits.budget_period = "day";
        k.models = {"echo-1", "gpt-4o"};
        REQUIRE(dir.create_key(k));
        auto plain = key_for("key_def", "team-a", api_keys::generate_key());
        plain.created_at += 1; // oldest first
        REQUIRE(dir.create_key(plain));

        auto keys = dir.keys();
        REQUIRE(keys);
        REQUIRE(keys->size() == 2);
        const key_record& got = keys->front();
        CHECK(got.id == "key_abc");
        CHECK(got.team_id == "team-a");
        CHECK(got.name == "name of key_abc");
        CHECK(got.prefix == api_keys::display_prefix(secret));
        CHECK(api_keys::digests_equal(got.digest, api_keys::digest(secret)));
        CHECK(got.created_at == k.created_at);
        CHECK(got.expires_at == k.expires_at);
        CHECK_FALSE(got.revoked_at);
        CHECK(got.limits == k.limits);
        CHECK(got.team_limits.requests_per_minute == 10);
        CHECK(got.team_limits.tokens_per_minute == 900);
        CHECK(got.models == k.models);
        CHECK(keys->back().id == "key_def");
        CHECK(keys->back().models.empty());
        CHECK_FALSE(keys->back().expires_at);
        CHECK(keys->back().limits == chatkit::usage_limits{});
    }

    SECTION("a key id is never overwritten, and a key needs an existing team and a 32-byte digest") {
        auto dir = make();
        REQUIRE(dir.create_team(team_record{"t", "", {}, 1}));
        REQUIRE(dir.create_key(key_for("key_one", "t", api_keys::generate_key())));
        auto impostor = key_for("key_one", "t", api_keys::generate_key());
        impostor.name = "impostor";
        auto refused = dir.create_key(impostor);
        REQUIRE_FALSE(refused);
        CHECK(refused.error().code == "key_exists");
        auto no_team = dir.create_key(key_for("key_two", "nope", api_keys::generate_key()));
        REQUIRE_FALSE(no_team);
        CHECK(no_team.error().code == "team_not_found");
        auto short_digest = key_for("key_three", "t", api_keys::generate_key());
        short_digest.digest = "too short";
        CHECK(dir.create_key(short_digest).error().code == "invalid_value");
        CHECK(dir.create_key(key_for("key:colon", "t", api_keys::generate_key())).error().code == "invalid_value");
        auto keys = dir.keys();
        REQUIRE(keys);
        REQUIRE(keys->size() == 1);
        CHECK(keys->front().name == "name of key_one");
    }

    SECTION("revoke_key returns the revocation time, keeps the first one, and refuses an unknown id") {
        auto dir = make();
        REQUIRE(dir.create_team(team_record{"t", "", {}, 1}));
        REQUIRE(dir.create_key(key_for("key_r", "t", api_keys::generate_key())));
        auto first = dir.revoke_key("key_r", 5000);
        REQUIRE(first);
        CHECK(*first == 5000);
        auto second = dir.revoke_key("key_r", 9000);
        REQUIRE(second);
        CHECK(*second == 5000);
        CHECK(dir.keys()->front().revoked_at == 5000);
        auto unknown = dir.revoke_key("key_nope", 1);
        REQUIRE_FALSE(unknown);
        CHECK(unknown.error().kind == chatkit::error_kind::not_found);
        CHECK(unknown.error().code == "key_not_found");
    }
}

} // namespace chatkit::testing
