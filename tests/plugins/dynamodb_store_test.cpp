// chatkit::dynamodb_store against real DynamoDB emulators (dynalite and moto_server), plus a proxy
// in front of one that injects DynamoDB's own error answers (throttling, a lost answer). Its
// conversations need TransactWriteItems, which dynalite lacks: they are tested on moto, and on
// dynalite only the members that make no transaction.
#include "chatkit/dynamodb_store.hpp"

#include "../support/aws_emulators.hpp"
#include "../support/dynamodb_proxy.hpp"
#include <chatkit/testing/conversation_store.hpp>
#include <chatkit/testing/store.hpp>

#include <catch2/catch.hpp>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
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

// A store on a new history table and a new conversations table of the emulator.
dynamodb_store make_conversation_store(const test_support::emulator_process& emulator) {
    dynamodb_options o;
    o.table = unique_table();
    o.conversations_table = o.table + "-conversations";
    dynamodb_store store{o, emulator.aws_environment()};
    create_table(store.client(), o.table);
    test_support::create_table(store.client(), dynamodb_store::create_conversations_table_input(o.conversations_table));
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

// A conversations table created directly on moto, and a store that reaches it through the proxy.
std::string created_conversations_table() {
    const auto table = unique_table();
    dynamodb_store admin{{.table = table}, moto().aws_environment()};
    test_support::create_table(admin.client(), dynamodb_store::create_conversations_table_input(table));
    return table;
}
dynamodb_store conversation_store_behind(const dynamodb_proxy& proxy, const std::string& conversations_table, int max_retries = 5) {
    dynamodb_options o;
    o.table = "history-unused";
    o.conversations_table = conversations_table;
    o.client.retries.max_retries = max_retries;
    o.client.retries.first_delay = std::chrono::milliseconds{1};
    return dynamodb_store{o, moto().aws_environment({{"AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint()}})};
}

// The conversations table's items by sort key.
std::map<std::string, nlohmann::json> conversation_items(test_support::emulator_process& emulator, const std::string& table) {
    std::map<std::string, nlohmann::json> by_sk;
    for (const auto& item : scan(emulator, table))
        by_sk[item["pk"]["S"].get<std::string>() + " " + item["sk"]["S"].get<std::string>()] = item;
    return by_sk;
}

} // namespace

TEST_CASE("dynamodb store passes the store conformance tests on dynalite") {
    chatkit::testing::check_store_conformance<dynamodb_store>([] { return make_store(dynalite()); });
}

TEST_CASE("dynamodb store passes the store conformance tests on moto") {
    chatkit::testing::check_store_conformance<dynamodb_store>([] { return make_store(moto()); });
}

TEST_CASE("dynamodb store passes the conversation store conformance tests on moto") {
    chatkit::testing::check_conversation_store_conformance<dynamodb_store>([] { return make_conversation_store(moto()); });
}

TEST_CASE("dynamodb store writes one item per exchange in the documented layout") {
    auto store = make_store(dynalite(), std::chrono::hours{24 * 30});
    const auto created = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    REQUIRE(store.append(chatkit::testing::make_exchange("alice", "1", created)));
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
    REQUIRE(store.append(chatkit::testing::make_exchange("bob", "old", now_ms - 2 * 86'400'000))); // expired a day ago
    REQUIRE(store.append(chatkit::testing::make_exchange("bob", "new", now_ms)));
    REQUIRE(scan(dynalite(), store.options().table).size() == 2); // both still in the table
    auto page = store.history({"bob", 10, {}});
    REQUIRE(page);
    REQUIRE(page->messages.size() == 2);
    CHECK(page->messages[0].content == "question new");
    CHECK_FALSE(page->next_cursor);
}

TEST_CASE("dynamodb store without a ttl writes no expires_at") {
    auto store = make_store(dynalite());
    REQUIRE(store.append(chatkit::testing::make_exchange("alice", "1")));
    const auto items = scan(dynalite(), store.options().table);
    REQUIRE(items.size() == 1);
    CHECK_FALSE(items[0].contains("expires_at"));
}

TEST_CASE("dynamodb store pages across DynamoDB's own query pages") {
    // Exchanges of ~300 KB: a 1 MB Query page holds three, so reading 20 messages takes several.
    auto store = make_store(dynalite());
    for (int i = 0; i < 10; ++i) {
        auto e = chatkit::testing::make_exchange("alice", std::to_string(i));
        e.messages[1].content = std::string(300'000, static_cast<char>('a' + i));
        REQUIRE(store.append(e));
    }
    const auto all = chatkit::testing::read_all(store, "alice", 7);
    REQUIRE(all.size() == 20);
    for (int i = 0; i < 10; ++i) {
        CHECK(all[2 * i].content == "question " + std::to_string(i));
        CHECK(all[2 * i + 1].content == std::string(300'000, static_cast<char>('a' + i)));
    }
}

TEST_CASE("dynamodb store refuses an exchange larger than an item with 413") {
    auto store = make_store(dynalite());
    auto e = chatkit::testing::make_exchange("alice", "big");
    e.messages[1].content = std::string(500'000, 'x');
    auto saved = store.append(e);
    REQUIRE_FALSE(saved);
    CHECK(saved.error().kind == error_kind::payload_too_large);
    CHECK(saved.error().code == "history_too_large");
}

TEST_CASE("dynamodb store reports a missing table as unavailable and names it") {
    dynamodb_store store{{.table = "no-such-table"}, dynalite().aws_environment()};
    auto saved = store.append(chatkit::testing::make_exchange("alice", "1"));
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
    REQUIRE(store.append(chatkit::testing::make_exchange("alice", "1")));
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
    auto saved = store.append(chatkit::testing::make_exchange("alice", "1"));
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
    REQUIRE(store.append(chatkit::testing::make_exchange("alice", "1")));
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
    REQUIRE(store.append(chatkit::testing::make_exchange("alice", "1")));
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
        auto saved = down.append(chatkit::testing::make_exchange("alice", "1"));
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
    auto saved = store.append(chatkit::testing::make_exchange("alice", "1"));
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

// ---- Conversations (the single-table design of dynamodb_store.hpp) ----

TEST_CASE("dynamodb store writes a conversation in the documented single-table layout") {
    auto store = make_conversation_store(moto());
    auto c = chatkit::testing::make_conversation("team:a", "ada", 1'700'000'000'123, "Support");
    REQUIRE(store.create_conversation(c));
    const auto turn = chatkit::testing::make_turn(c, "1", 1'700'000'000'200);
    REQUIRE(store.append_to_conversation(turn));
    const chatkit::feedback fb{
        chatkit::conversations_api::make_uuid(), c.id, turn.messages[1].id, "thumbs_up", 5, "good", 1'700'000'000'300};
    REQUIRE(store.add_feedback({c.owner, fb}));

    const auto items = conversation_items(moto(), store.options().conversations_table);
    REQUIRE(items.size() == 6); // #META, two messages, their two MID items, one feedback
    const std::string pk = "CONV#" + c.id;
    const auto& meta = items.at(pk + " #META");
    CHECK(meta["owner"]["S"] == "team:a");
    CHECK(meta["user_id"]["S"] == "ada");
    CHECK(meta["title"]["S"] == "Support");
    CHECK(nlohmann::json::parse(meta["metadata"]["S"].get<std::string>()) == c.metadata);
    CHECK(meta["created_at"]["N"] == "1700000000123");
    CHECK(meta["updated_at"]["N"] == "1700000000200");
    CHECK(meta["message_count"]["N"] == "2");
    CHECK(meta["total_tokens"]["N"] == "15");
    CHECK(std::stod(meta["total_cost_usd"]["N"].get<std::string>()) == Approx(0.25));
    CHECK(meta["gsi1pk"]["S"] == "6:team:a#ada");
    const std::string listed = meta["gsi1sk"]["S"];
    CHECK(listed.size() == 38);
    CHECK(listed.starts_with("1700000000123-"));

    std::vector<std::string> message_sks;
    for (const auto& [key, item] : items)
        if (item["sk"]["S"].get<std::string>().starts_with("MSG#")) message_sks.push_back(item["sk"]["S"]);
    REQUIRE(message_sks.size() == 2);
    CHECK(message_sks[0].size() == 4 + 24 + 3);
    CHECK(message_sks[0].substr(0, 28) == message_sks[1].substr(0, 28)); // one order per append
    CHECK(message_sks[0].ends_with("#00"));
    CHECK(message_sks[1].ends_with("#01"));
    const auto& question = items.at(pk + " " + message_sks[0]);
    CHECK(question["id"]["S"] == turn.messages[0].id);
    CHECK(question["role"]["S"] == "user");
    CHECK_FALSE(question.contains("prompt_tokens"));
    CHECK_FALSE(question.contains("provider"));
    const auto& answer = items.at(pk + " " + message_sks[1]);
    CHECK(answer["role"]["S"] == "assistant");
    CHECK(answer["prompt_tokens"]["N"] == "10");
    CHECK(answer["completion_tokens"]["N"] == "5");
    CHECK(answer["cost_usd"]["N"] == "0.25");
    CHECK(answer["ttft_ms"]["N"] == "3.25");
    CHECK(answer["provider"]["S"] == "provider-1");
    for (std::size_t i = 0; i < 2; ++i) CHECK(items.at(pk + " MID#" + turn.messages[i].id)["msg_sk"]["S"] == message_sks[i]);

    const auto feedback = std::find_if(items.begin(), items.end(), [](const std::pair<const std::string, nlohmann::json>& kv) {
        return kv.second["sk"]["S"].get<std::string>().starts_with("FB#");
    });
    REQUIRE(feedback != items.end());
    CHECK(feedback->second["id"]["S"] == fb.id);
    CHECK(feedback->second["message_id"]["S"] == turn.messages[1].id);
    CHECK(feedback->second["rating"]["N"] == "5");
    CHECK(feedback->second["comment"]["S"] == "good");

    CHECK(scan(moto(), store.options().table).empty()); // the history table is not touched

    // The message cursor is the message's sort key without MSG#.
    auto page = store.conversation_messages({{c.owner, c.id}, 1, {}, false});
    REQUIRE(page);
    REQUIRE(page->next_cursor);
    CHECK(*page->next_cursor == message_sks[0].substr(4));
}

TEST_CASE("dynamodb store keeps owners and users apart in its listing index, whatever they contain") {
    auto store = make_conversation_store(moto());
    const auto one = chatkit::testing::make_conversation("a#b", "c", 1'700'000'000'000);
    const auto two = chatkit::testing::make_conversation("a", "b#c", 1'700'000'000'000);
    REQUIRE(store.create_conversation(one));
    REQUIRE(store.create_conversation(two));
    auto first = store.conversations({"a#b", "c", 10, {}});
    auto second = store.conversations({"a", "b#c", 10, {}});
    REQUIRE(first);
    REQUIRE(second);
    REQUIRE(first->conversations.size() == 1);
    CHECK(first->conversations[0].id == one.id);
    REQUIRE(second->conversations.size() == 1);
    CHECK(second->conversations[0].id == two.id);
}

TEST_CASE("dynamodb store deletes every item of a conversation, across batches and query pages") {
    auto store = make_conversation_store(moto());
    auto doomed = chatkit::testing::make_conversation("", "ada", 1'700'000'000'000);
    auto kept = chatkit::testing::make_conversation("", "ada", 1'700'000'000'001);
    REQUIRE(store.create_conversation(doomed));
    REQUIRE(store.create_conversation(kept));
    for (int i = 0; i < 20; ++i) { // 81 items: more than three BatchWriteItem calls
        const auto turn = chatkit::testing::make_turn(doomed, std::to_string(i), 1'700'000'000'100 + i);
        REQUIRE(store.append_to_conversation(turn));
        REQUIRE(store.add_feedback({"", {chatkit::conversations_api::make_uuid(), doomed.id, turn.messages[0].id, "flag", {}, {}, 0}}));
    }
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(kept, "k", 1'700'000'000'200)));
    REQUIRE(conversation_items(moto(), store.options().conversations_table).size() == 1 + 20 * 5 + 5);

    REQUIRE(store.delete_conversation({"", doomed.id}));
    const auto left = conversation_items(moto(), store.options().conversations_table);
    CHECK(left.size() == 5);
    for (const auto& [key, item] : left) CHECK(item["pk"]["S"] == "CONV#" + kept.id);
}

TEST_CASE("dynamodb store hides a conversation whose delete failed half-way, and a retried delete finishes it") {
    const auto table = created_conversations_table();
    {
        dynamodb_store direct{{.table = "history-unused", .conversations_table = table}, moto().aws_environment()};
        auto c = chatkit::testing::make_conversation("", "ada", 1'700'000'000'000);
        c.id = "11111111-1111-4111-8111-111111111111";
        REQUIRE(direct.create_conversation(c));
        REQUIRE(direct.append_to_conversation(chatkit::testing::make_turn(c, "1", 1'700'000'000'001)));
    }
    const chatkit::conversation_ref ref{"", "11111111-1111-4111-8111-111111111111"};
    dynamodb_proxy proxy{moto().port(), [](const std::string& target, const auto&, httplib::Response& res) {
                             if (target != "DynamoDB_20120810.BatchWriteItem") return false;
                             aws_error(res, 400, "ValidationException", "refused for the test");
                             return true;
                         }};
    auto store = conversation_store_behind(proxy, table);
    auto deleted = store.delete_conversation(ref);
    REQUIRE_FALSE(deleted);
    CHECK(deleted.error().kind == error_kind::unavailable);
    CHECK(deleted.error().message.find(table) != std::string::npos);

    CHECK(store.find_conversation(ref).error().code == "conversation_not_found");
    CHECK(store.conversation_messages({ref, 10, {}, false}).error().code == "conversation_not_found");
    CHECK(store.conversation_feedback(ref).error().code == "conversation_not_found");
    CHECK(store.append_to_conversation(chatkit::testing::make_turn({.id = ref.id, .owner = ""}, "2", 0)).error().code ==
          "conversation_not_found");
    auto listed = store.conversations({"", "ada", 10, {}});
    REQUIRE(listed);
    CHECK(listed->conversations.empty());
    CHECK(conversation_items(moto(), table).size() == 5); // nothing was deleted yet

    dynamodb_store direct{{.table = "history-unused", .conversations_table = table}, moto().aws_environment()};
    REQUIRE(direct.delete_conversation(ref)); // the retry
    CHECK(scan(moto(), table).empty());
}

TEST_CASE("dynamodb store stores an append whose answer was lost once") {
    // The first TransactWriteItems reaches the table but its answer is a 500: the retry is
    // cancelled by the message Puts' conditions, and the store recognises its own messages.
    const auto table = created_conversations_table();
    std::atomic<bool> lost{false};
    dynamodb_proxy proxy{moto().port(), [&](const std::string& target, const auto& forward, httplib::Response& res) {
                             if (target != "DynamoDB_20120810.TransactWriteItems" || lost.exchange(true)) return false;
                             REQUIRE(forward());
                             aws_error(res, 500, "InternalServerError", "Internal server error");
                             return true;
                         }};
    auto store = conversation_store_behind(proxy, table);
    const auto c = chatkit::testing::make_conversation("", "ada", 1'700'000'000'000);
    REQUIRE(store.create_conversation(c));
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 1'700'000'000'001)));
    CHECK(proxy.count("DynamoDB_20120810.TransactWriteItems") == 2);
    auto found = store.find_conversation({"", c.id});
    REQUIRE(found);
    CHECK(found->totals.message_count == 2); // added once
    CHECK(conversation_items(moto(), table).size() == 5);
}

TEST_CASE("dynamodb store tries a transaction again after a conflict with another one") {
    const auto table = created_conversations_table();
    std::atomic<int> conflicts{0};
    dynamodb_proxy proxy{moto().port(), [&](const std::string& target, const auto&, httplib::Response& res) {
                             if (target != "DynamoDB_20120810.TransactWriteItems" || conflicts >= 2) return false;
                             ++conflicts;
                             aws_error(res, 400, "TransactionCanceledException",
                                       "Transaction cancelled, please refer cancellation reasons for specific reasons "
                                       "[TransactionConflict, None, None, None, None]");
                             return true;
                         }};
    auto store = conversation_store_behind(proxy, table);
    const auto c = chatkit::testing::make_conversation("", "ada", 1'700'000'000'000);
    REQUIRE(store.create_conversation(c));
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 1'700'000'000'001)));
    CHECK(proxy.count("DynamoDB_20120810.TransactWriteItems") == 3);
    CHECK(store.find_conversation({"", c.id})->totals.message_count == 2);
}

TEST_CASE("dynamodb store refuses a message larger than an item with 413 and writes nothing") {
    auto store = make_conversation_store(moto());
    const auto c = chatkit::testing::make_conversation("", "ada", 1'700'000'000'000);
    REQUIRE(store.create_conversation(c));
    auto turn = chatkit::testing::make_turn(c, "big", 1'700'000'000'001);
    turn.messages[1].content = std::string(410'000, 'x');
    auto saved = store.append_to_conversation(turn);
    REQUIRE_FALSE(saved);
    CHECK(saved.error().kind == error_kind::payload_too_large);
    CHECK(saved.error().code == "message_too_large");
    CHECK(store.find_conversation({"", c.id})->totals.message_count == 0);
    CHECK(conversation_items(moto(), store.options().conversations_table).size() == 1);

    turn.messages[1].content = std::string(400'000, 'x'); // fits
    REQUIRE(store.append_to_conversation(turn));
    const auto all = chatkit::testing::all_messages(store, {"", c.id}, 10);
    REQUIRE(all.size() == 2);
    CHECK(all[1].content.size() == 400'000);
}

TEST_CASE("dynamodb store without a conversations table keeps none and calls nothing") {
    dynamodb_options o;
    o.table = "chat";
    o.client.endpoint = "http://127.0.0.1:1"; // nothing listens: any call would fail
    o.client.retries.max_retries = 0;
    dynamodb_store store{o, dynalite().aws_environment()};
    CHECK_FALSE(store.keeps_conversations());
    const auto c = chatkit::testing::make_conversation("", "ada", 1'700'000'000'000);
    auto created = store.create_conversation(c);
    REQUIRE_FALSE(created);
    CHECK(created.error().kind == error_kind::not_found);
    CHECK(created.error().code == "conversations_unsupported");
    auto listed = store.conversations({"", "ada", 10, {}});
    REQUIRE(listed);
    CHECK(listed->conversations.empty());
    CHECK(store.find_conversation({"", c.id}).error().code == "conversation_not_found");
    CHECK(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 0)).error().code == "conversation_not_found");
    CHECK(store.add_feedback({"", {"f", c.id, "m", "flag", {}, {}, 0}}).error().code == "conversation_not_found");
    CHECK(store.health().ok); // no call failed
}

TEST_CASE("dynamodb store serves the conversation members without transactions on dynalite, and fails appends as unavailable") {
    // dynalite has no TransactWriteItems; everything else is its own validation of the calls.
    auto store = make_conversation_store(dynalite());
    std::vector<chatkit::conversation> made;
    for (int i = 0; i < 3; ++i) {
        made.push_back(chatkit::testing::make_conversation("team:a", "ada", 1'700'000'000'000 + i, "c" + std::to_string(i)));
        REQUIRE(store.create_conversation(made.back()));
    }
    auto page = store.conversations({"team:a", "ada", 2, {}});
    REQUIRE(page);
    REQUIRE(page->conversations.size() == 2);
    CHECK(page->conversations[0].id == made[2].id);
    REQUIRE(page->next_cursor);
    auto rest = store.conversations({"team:a", "ada", 2, *page->next_cursor});
    REQUIRE(rest);
    REQUIRE(rest->conversations.size() == 1);
    CHECK(rest->conversations[0].id == made[0].id);
    CHECK_FALSE(rest->next_cursor);

    auto updated = store.update_conversation({{"team:a", made[0].id}, std::optional<std::string>{}, nlohmann::json{{"k", 1}}, 5});
    REQUIRE(updated);
    CHECK_FALSE(updated->title);
    CHECK(updated->metadata == nlohmann::json{{"k", 1}});
    CHECK(store.update_conversation({{"team:b", made[0].id}, {}, {}, 6}).error().code == "conversation_not_found");
    CHECK(store.delete_conversation({"team:b", made[0].id}).error().code == "conversation_not_found");
    auto messages = store.conversation_messages({{"team:a", made[0].id}, 10, {}, false});
    REQUIRE(messages);
    CHECK(messages->messages.empty());

    auto appended = store.append_to_conversation(chatkit::testing::make_turn(made[0], "1", 7));
    REQUIRE_FALSE(appended);
    CHECK(appended.error().kind == error_kind::unavailable); // never a 404 for a store failure

    REQUIRE(store.delete_conversation({"team:a", made[0].id}));
    CHECK(store.find_conversation({"team:a", made[0].id}).error().code == "conversation_not_found");
    CHECK(conversation_items(dynalite(), store.options().conversations_table).size() == 2);
}

TEST_CASE("dynamodb URLs may name a conversations table, which has no default") {
    auto o = chatkit::parse_dynamodb_url("dynamodb://chat?conversations_table=chat-conversations");
    REQUIRE(o);
    CHECK(o->conversations_table == "chat-conversations");
    auto plain = chatkit::parse_dynamodb_url("dynamodb://chat");
    REQUIRE(plain);
    CHECK(plain->conversations_table.empty());
    auto bad = chatkit::parse_dynamodb_url("dynamodb://chat?conversations_table=a/b");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == "invalid_database_url");
}
