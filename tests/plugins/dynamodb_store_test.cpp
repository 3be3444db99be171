// chatkit::dynamodb_store against real DynamoDB emulators (dynalite and moto_server), plus a proxy
// in front of one that injects DynamoDB's own error answers (throttling, a lost answer).
#include "chatkit/dynamodb_store.hpp"

#include "../support/aws_emulators.hpp"
#include "../support/dynamodb_proxy.hpp"
#include "store_conformance.hpp"

#include <catch2/catch.hpp>
#include <httplib.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

using chatkit::dynamodb_options;
using chatkit::dynamodb_store;
using chatkit::error_kind;

using test_support::aws_error;
using test_support::dynamodb_proxy;

namespace {

std::string unique_table() {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    return "chat-" + std::to_string(run) + "-" + std::to_string(++n);
}

void create_table(chatkit::aws::json_client& client, const std::string& table) {
    test_support::create_table(client, dynamodb_store::create_table_input(table));
}

// A store on a new table of the emulator; `ttl` as in the options.
dynamodb_store make_store(const test_support::emulator_process& emulator, std::chrono::seconds ttl = {}) {
    dynamodb_options o;
    o.table = unique_table();
    o.ttl = ttl;
    dynamodb_store store{o, emulator.aws_environment()};
    create_table(store.client(), o.table);
    return store;
}

test_support::emulator_process& dynalite() {
    static test_support::emulator_process e = test_support::start_dynalite();
    return e;
}
test_support::emulator_process& moto() {
    static test_support::emulator_process e = test_support::start_moto();
    return e;
}

// A store that talks to the emulator through the proxy, on a table created directly.
dynamodb_store store_behind(const dynamodb_proxy& proxy, const std::string& table, int max_retries = 5) {
    dynamodb_options o;
    o.table = table;
    o.client.retries.max_retries = max_retries;
    o.client.retries.first_delay = std::chrono::milliseconds{1};
    return dynamodb_store{o, moto().aws_environment({{"AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint()}})};
}

std::string created_table(test_support::emulator_process& emulator) {
    const auto table = unique_table();
    dynamodb_store admin{{.table = table}, emulator.aws_environment()};
    create_table(admin.client(), table);
    return table;
}

nlohmann::json scan(test_support::emulator_process& emulator, const std::string& table) {
    dynamodb_store admin{{.table = table}, emulator.aws_environment()};
    auto items = admin.client().call("Scan", {{"TableName", table}});
    REQUIRE(items.has_value());
    return (*items)["Items"];
}

} // namespace

TEST_CASE("dynamodb store passes the store conformance tests on dynalite") {
    chatkit_test::check_store_conformance<dynamodb_store>([] { return make_store(dynalite()); });
}

TEST_CASE("dynamodb store passes the store conformance tests on moto") {
    chatkit_test::check_store_conformance<dynamodb_store>([] { return make_store(moto()); });
}

TEST_CASE("dynamodb store writes one item per exchange in the documented layout") {
    auto store = make_store(dynalite(), std::chrono::hours{24 * 30});
    const auto created = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    REQUIRE(store.append(chatkit_test::make_exchange("alice", "1", created)));
    const auto items = scan(dynalite(), store.options().table);
    REQUIRE(items.size() == 1);
    const auto& item = items[0];
    CHECK(item["user_id"]["S"] == "alice");
    const std::string key = item["exchange_key"]["S"];
    CHECK(key.starts_with(std::to_string(created) + "-"));
    CHECK(key.size() == 38);
    CHECK(item["created_at"]["N"] == std::to_string(created));
    CHECK(item["expires_at"]["N"] == std::to_string(created / 1000 + 30 * 86'400)); // epoch seconds, as TTL wants
    CHECK(item["model"]["S"] == "model-1");
    CHECK(item["request_id"]["S"] == "req-1");
    REQUIRE(item["messages"]["L"].size() == 2);
    CHECK(item["messages"]["L"][0]["M"]["role"]["S"] == "user");
    CHECK(item["messages"]["L"][1]["M"]["content"]["S"] == "answer 1");

    auto page = store.history({"alice", 10, {}});
    REQUIRE(page);
    CHECK(page->messages[0].id == key + ".0");
    CHECK(page->messages[1].id == key + ".1");
}

TEST_CASE("dynamodb store leaves expired exchanges out of history before DynamoDB deletes them") {
    auto store = make_store(dynalite(), std::chrono::hours{24});
    const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    REQUIRE(store.append(chatkit_test::make_exchange("bob", "old", now_ms - 2 * 86'400'000)));  // expired a day ago
    REQUIRE(store.append(chatkit_test::make_exchange("bob", "new", now_ms)));
    REQUIRE(scan(dynalite(), store.options().table).size() == 2); // both still in the table
    auto page = store.history({"bob", 10, {}});
    REQUIRE(page);
    REQUIRE(page->messages.size() == 2);
    CHECK(page->messages[0].content == "question new");
    CHECK_FALSE(page->next_cursor);
}

TEST_CASE("dynamodb store without a ttl writes no expires_at") {
    auto store = make_store(dynalite());
    REQUIRE(store.append(chatkit_test::make_exchange("alice", "1")));
    const auto items = scan(dynalite(), store.options().table);
    REQUIRE(items.size() == 1);
    CHECK_FALSE(items[0].contains("expires_at"));
}

TEST_CASE("dynamodb store pages across DynamoDB's own query pages") {
    // Exchanges of ~300 KB: a 1 MB Query page holds three, so reading 20 messages takes several.
    auto store = make_store(dynalite());
    for (int i = 0; i < 10; ++i) {
        auto e = chatkit_test::make_exchange("alice", std::to_string(i));
        e.messages[1].content = std::string(300'000, static_cast<char>('a' + i));
        REQUIRE(store.append(e));
    }
    const auto all = chatkit_test::read_all(store, "alice", 7);
    REQUIRE(all.size() == 20);
    for (int i = 0; i < 10; ++i) {
        CHECK(all[2 * i].content == "question " + std::to_string(i));
        CHECK(all[2 * i + 1].content == std::string(300'000, static_cast<char>('a' + i)));
    }
}

TEST_CASE("dynamodb store refuses an exchange larger than an item with 413") {
    auto store = make_store(dynalite());
    auto e = chatkit_test::make_exchange("alice", "big");
    e.messages[1].content = std::string(500'000, 'x');
    auto saved = store.append(e);
    REQUIRE_FALSE(saved);
    CHECK(saved.error().kind == error_kind::payload_too_large);
    CHECK(saved.error().code == "history_too_large");
}

TEST_CASE("dynamodb store reports a missing table as unavailable and names it") {
    dynamodb_store store{{.table = "no-such-table"}, dynalite().aws_environment()};
    auto saved = store.append(chatkit_test::make_exchange("alice", "1"));
    REQUIRE_FALSE(saved);
    CHECK(saved.error().kind == error_kind::unavailable);
    CHECK(saved.error().code == "ResourceNotFoundException");
    CHECK(saved.error().message.find("no-such-table") != std::string::npos);
    auto page = store.history({"alice", 10, {}});
    REQUIRE_FALSE(page);
    CHECK(page.error().kind == error_kind::unavailable);
}

TEST_CASE("dynamodb store retries throttled writes and reads") {
    const auto table = created_table(moto());
    std::atomic<int> throttled{0};
    dynamodb_proxy proxy{moto().port(), [&](const std::string&, const auto&, httplib::Response& res) {
                             if (throttled >= 4) return false;
                             ++throttled;
                             aws_error(res, 400, "ProvisionedThroughputExceededException",
                                       "The level of configured provisioned throughput for the table was exceeded.");
                             return true;
                         }};
    auto store = store_behind(proxy, table);
    REQUIRE(store.append(chatkit_test::make_exchange("alice", "1")));
    CHECK(proxy.count("DynamoDB_20120810.PutItem") == 5); // four throttled, then through
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page);
    CHECK(page->messages.size() == 2);
}

TEST_CASE("dynamodb store gives up on endless throttling with 503 and Retry-After") {
    const auto table = created_table(moto());
    dynamodb_proxy proxy{moto().port(), [](const std::string&, const auto&, httplib::Response& res) {
                             aws_error(res, 400, "ThrottlingException", "Rate of requests exceeds the allowed throughput.");
                             return true;
                         }};
    auto store = store_behind(proxy, table, 2);
    auto saved = store.append(chatkit_test::make_exchange("alice", "1"));
    REQUIRE_FALSE(saved);
    CHECK(saved.error().kind == error_kind::unavailable);
    CHECK(saved.error().retry_after_seconds.has_value());
    CHECK(proxy.count("DynamoDB_20120810.PutItem") == 3);
    CHECK(scan(moto(), table).empty());
}

TEST_CASE("dynamodb store counts a write whose answer was lost once, not twice") {
    // The first PutItem reaches the table but its answer is a 500: the retry's condition fails
    // because the item is there, and the store recognises its own exchange.
    const auto table = created_table(moto());
    std::atomic<bool> lost{false};
    dynamodb_proxy proxy{moto().port(), [&](const std::string& target, const auto& forward, httplib::Response& res) {
                             if (target != "DynamoDB_20120810.PutItem" || lost.exchange(true)) return false;
                             REQUIRE(forward());
                             aws_error(res, 500, "InternalServerError", "Internal server error");
                             return true;
                         }};
    auto store = store_behind(proxy, table);
    REQUIRE(store.append(chatkit_test::make_exchange("alice", "1")));
    CHECK(proxy.count("DynamoDB_20120810.PutItem") == 2);
    CHECK(proxy.count("DynamoDB_20120810.GetItem") == 1);
    CHECK(scan(moto(), table).size() == 1);
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page);
    CHECK(page->messages.size() == 2);
}

TEST_CASE("dynamodb store keeps a lost-answer write when it cannot read it back, and does not write it again") {
    const auto table = created_table(moto());
    std::atomic<bool> lost{false};
    dynamodb_proxy proxy{moto().port(), [&](const std::string& target, const auto& forward, httplib::Response& res) {
                             if (target == "DynamoDB_20120810.GetItem") { // the read-back fails, not retryably
                                 aws_error(res, 400, "AccessDeniedException", "not allowed to GetItem");
                                 return true;
                             }
                             if (target != "DynamoDB_20120810.PutItem" || lost.exchange(true)) return false;
                             REQUIRE(forward());
                             aws_error(res, 500, "InternalServerError", "Internal server error");
                             return true;
                         }};
    auto store = store_behind(proxy, table);
    REQUIRE(store.append(chatkit_test::make_exchange("alice", "1")));
    CHECK(proxy.count("DynamoDB_20120810.GetItem") == 1);
    CHECK(proxy.count("DynamoDB_20120810.PutItem") == 2); // the first, its retry; no write under a fresh key
    CHECK(scan(moto(), table).size() == 1);
}

TEST_CASE("dynamodb store health follows reachability") {
    auto store = make_store(dynalite());
    CHECK(store.health().ok);
    dynamodb_options o;
    o.table = "chat";
    o.client.endpoint = "http://127.0.0.1:1"; // nothing listens on port 1
    o.client.retries.max_retries = 0;
    dynamodb_store down{o, dynalite().aws_environment()};
    CHECK(down.health().ok);
    for (int i = 0; i < 3; ++i) {
        auto saved = down.append(chatkit_test::make_exchange("alice", "1"));
        REQUIRE_FALSE(saved);
        CHECK(saved.error().kind == error_kind::unavailable);
        CHECK(saved.error().code == "upstream_unreachable");
    }
    CHECK_FALSE(down.health().ok);
}

TEST_CASE("dynamodb store without credentials is down and says why") {
    chatkit::aws::environment env;
    env.getenv = [](const std::string& name) -> std::optional<std::string> {
        if (name == "AWS_REGION") return "us-east-1";
        return std::nullopt;
    };
    dynamodb_store store{{.table = "chat"}, env};
    CHECK_FALSE(store.health().ok);
    auto saved = store.append(chatkit_test::make_exchange("alice", "1"));
    REQUIRE_FALSE(saved);
    CHECK(saved.error().kind == error_kind::unavailable);
    CHECK(saved.error().code == "upstream_credentials");
}

TEST_CASE("dynamodb store endpoint comes from AWS_ENDPOINT_URL_DYNAMODB, else the region's") {
    auto env_of = [](std::map<std::string, std::string> vars) {
        chatkit::aws::environment env;
        env.getenv = [vars](const std::string& name) -> std::optional<std::string> {
            auto it = vars.find(name);
            return it == vars.end() ? std::nullopt : std::optional<std::string>{it->second};
        };
        return env;
    };
    CHECK(dynamodb_store({.table = "chat"}, env_of({{"AWS_REGION", "eu-west-3"}})).client().endpoint() ==
          "https://dynamodb.eu-west-3.amazonaws.com");
    CHECK(dynamodb_store({.table = "chat"}, env_of({{"AWS_REGION", "eu-west-3"}, {"AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000/"}}))
              .client()
              .endpoint() == "http://127.0.0.1:8000");
    CHECK_THROWS_AS(dynamodb_store({.table = "chat"}, env_of({})), std::invalid_argument); // no region
}

TEST_CASE("dynamodb URLs name a table and optional region and ttl") {
    auto o = chatkit::parse_dynamodb_url("dynamodb://chat-history?region=eu-west-1&ttl_days=30");
    REQUIRE(o);
    CHECK(o->table == "chat-history");
    CHECK(o->client.region == "eu-west-1");
    CHECK(o->ttl == std::chrono::hours{24 * 30});
    auto plain = chatkit::parse_dynamodb_url("dynamodb://chat");
    REQUIRE(plain);
    CHECK(plain->client.region.empty());
    CHECK(plain->ttl.count() == 0);
    for (const char* bad : {"sqlite:chat.db", "dynamodb://", "dynamodb://ab", "dynamodb://a/b", "dynamodb://chat?ttl_days=x",
                            "dynamodb://chat?ttl_days=-1", "dynamodb://chat?colour=red", "dynamodb://chat?region="}) {
        INFO(bad);
        auto r = chatkit::parse_dynamodb_url(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == "invalid_database_url");
        CHECK(r.error().message.starts_with(std::string{"'"} + bad + "'")); // quotes the URL as given
    }
}
