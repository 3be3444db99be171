// chatkit::postgres_key_directory and chatkit::postgres_usage_store against a PostgreSQL cluster
// the test creates: the key directory and usage store conformance checks (which the SQLite ones
// pass too), reading the keys and records written through another handle (another replica),
// ranges longer than a page, a batch with a value no text column would take, and a server that
// restarts under them.
#include "chatkit/postgres_key_directory.hpp"
#include "chatkit/postgres_usage_store.hpp"

#include <chatkit/testing/key_directory.hpp>
#include <chatkit/testing/usage_store.hpp>

#include "../support/postgres_server.hpp"
#include "../support/usage_history.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace {

using chatkit::postgres_key_directory;
using chatkit::postgres_usage_store;
using test_support::dec1;
using test_support::postgres_server;
constexpr auto day = test_support::day_ms;

postgres_server& shared_server() {
    static postgres_server server;
    return server;
}

chatkit::postgres_options options_for(const std::string& url) {
    chatkit::postgres_options o;
    o.url = url;
    o.connect_timeout = std::chrono::seconds{2};
    return o;
}

} // namespace

TEST_CASE("postgres_key_directory passes the key directory conformance checks") {
    auto& server = shared_server();
    chatkit::testing::check_key_directory_conformance(
        [&] { return postgres_key_directory(options_for(server.url(server.create_database()))); });
}

TEST_CASE("postgres_usage_store passes the usage store conformance checks") {
    auto& server = shared_server();
    chatkit::testing::check_usage_store_conformance(
        [&] { return postgres_usage_store(options_for(server.url(server.create_database()))); });
}

TEST_CASE("postgres keys and usage: what one replica writes, another reads, and the database holds no key") {
    auto& server = shared_server();
    const auto url = server.url(server.create_database());
    postgres_key_directory a{options_for(url)}, b{options_for(url)};
    REQUIRE(a.create_team({"t", "T", {.requests_per_minute = 5}, 1}));
    const std::string secret = chatkit::api_keys::generate_key();
    chatkit::key_record k;
    k.id = chatkit::api_keys::generate_key_id();
    k.team_id = "t";
    k.prefix = chatkit::api_keys::display_prefix(secret);
    k.digest = chatkit::api_keys::digest(secret);
    REQUIRE(a.create_key(k));
    auto seen = b.keys();
    REQUIRE(seen);
    REQUIRE(seen->size() == 1);
    CHECK(seen->front().team_limits.requests_per_minute == 5);
    REQUIRE(b.revoke_key(k.id, 42));
    CHECK(a.keys()->front().revoked_at == 42);
    // Only the digest: the secret part of the key is nowhere in the table.
    CHECK(server.number("SELECT count(*) FROM chatkit_api_keys AS k WHERE position('" + secret.substr(3, 20) + "' IN k::text) > 0",
                        url.substr(url.rfind('/') + 1)) == 0);

    postgres_usage_store writer{options_for(url)}, reader{options_for(url)};
    REQUIRE(writer.append(test_support::usage_history()));
    CHECK(reader.summarize({"t1", dec1, dec1 + 5 * day})->total.requests == 5);
}

TEST_CASE("postgres_usage_store: a range longer than a page comes back whole, once each") {
    auto& server = shared_server();
    postgres_usage_store store{options_for(server.url(server.create_database()))};
    const auto n = static_cast<int>(chatkit::postgres_usage_store_detail::page_size * 2 + 17);
    std::vector<chatkit::usage_record> batch;
    for (int i = 0; i < n; ++i) batch.push_back(test_support::usage_record_of(i % 2 ? "odd" : "even", "k", "m", dec1 + i, 1, 1, 0.5));
    REQUIRE(store.append(batch));
    const auto all = chatkit::testing::records_of(store, {std::nullopt, dec1, dec1 + n});
    REQUIRE(all.size() == static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) CHECK(all[static_cast<std::size_t>(i)].time == dec1 + i);
    CHECK(chatkit::testing::records_of(store, {"odd", dec1, dec1 + n}).size() == static_cast<std::size_t>(n / 2));
}

TEST_CASE("postgres_usage_store: strings are stored byte for byte, so a NUL or bad UTF-8 in a model name fails no batch") {
    auto& server = shared_server();
    postgres_usage_store store{options_for(server.url(server.create_database()))};
    auto odd = test_support::usage_record_of("t", "k", std::string{"gpt\0x\xff", 6}, dec1, 1, 2, 0.1);
    auto plain = test_support::usage_record_of("t", "k", "gpt-4o", dec1 + 1, 1, 2, 0.1);
    REQUIRE(store.append(std::vector{odd, plain}));
    const auto got = chatkit::testing::records_of(store, {"t", dec1, dec1 + 2});
    REQUIRE(got.size() == 2);
    CHECK(got[0] == odd);
    CHECK(got[1] == plain);
}

TEST_CASE("postgres keys and usage: a server restart fails the calls in between cleanly, and the pools reconnect") {
    postgres_server server; // its own: this test stops it
    const auto url = server.url(server.create_database());
    postgres_key_directory keys{options_for(url)};
    postgres_usage_store usage{options_for(url)};
    REQUIRE(keys.create_team({"t", "", {}, 1}));
    REQUIRE(usage.append(test_support::usage_history()));
    server.stop();
    auto down = usage.append(test_support::usage_history());
    REQUIRE_FALSE(down);
    CHECK(down.error().kind == chatkit::error_kind::unavailable);
    CHECK(down.error().message.find(postgres_server::password) == std::string::npos);
    auto no_keys = keys.keys();
    REQUIRE_FALSE(no_keys);
    CHECK(no_keys.error().kind == chatkit::error_kind::unavailable);
    server.start();
    REQUIRE(keys.keys()); // the idle connection was broken: dropped, and a fresh one made
    REQUIRE(usage.append(test_support::usage_history()));
    CHECK(usage.summarize({"t1", dec1, dec1 + 5 * day})->total.requests == 10); // the failed batch stored nothing
}
