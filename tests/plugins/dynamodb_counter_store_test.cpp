// chatkit::dynamodb_counter_store against real DynamoDB emulators (dynalite and moto_server, each
// case on both): conditional adds that never pass a limit, all or none across counters, settling,
// several stores — several Lambda instances — on one table, and a store that cannot reach its table.
#include "chatkit/dynamodb_counter_store.hpp"

#include "../support/aws_emulators.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

using chatkit::counter_add;
using chatkit::dynamodb_counter_store;
using chatkit::dynamodb_counter_store_options;

namespace {

test_support::emulator_process& dynalite() {
    static test_support::emulator_process e = test_support::start_dynalite();
    return e;
}
test_support::emulator_process& moto() {
    static test_support::emulator_process e = test_support::start_moto();
    return e;
}
test_support::emulator_process& emulator_named(const std::string& name) { return name == "moto" ? moto() : dynalite(); }

std::string unique_table() {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    return "limits-" + std::to_string(run) + "-" + std::to_string(++n);
}

// A store on `table` (created when `create`), as one instance of a function would open it.
dynamodb_counter_store open_store(const std::string& emulator, const std::string& table, bool create = false) {
    dynamodb_counter_store store{dynamodb_counter_store_options{table, {}}, emulator_named(emulator).aws_environment()};
    if (create) test_support::create_table(store.client(), dynamodb_counter_store::create_table_input(table));
    return store;
}

counter_add add(std::string name, std::int64_t amount, std::int64_t limit) {
    return {std::move(name), amount, limit, chatkit::now_unix_ms() + 3'600'000};
}

} // namespace

TEST_CASE("dynamodb_counter_store: a counter grows while it fits its limit, and a refusal says its value") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    const auto table = unique_table();
    auto store = open_store(emulator, table, true);
    for (int i = 1; i <= 3; ++i) {
        const std::vector<counter_add> adds{add("key#k#tpm#1", 40, 100)};
        auto t = store.take(adds);
        REQUIRE(t);
        if (i < 3) {
            CHECK(t->taken);
            CHECK(t->values == std::vector<std::int64_t>{40 * i});
        } else {
            CHECK_FALSE(t->taken); // 80 + 40 > 100
            CHECK(t->refused == 0);
            CHECK(t->values == std::vector<std::int64_t>{80});
        }
    }
    // Exactly up to the limit fits; a settlement may go either way.
    const std::vector<counter_add> last{add("key#k#tpm#1", 20, 100)};
    CHECK(store.take(last)->taken);
    const std::vector<counter_add> back{add("key#k#tpm#1", -30, 0)};
    REQUIRE(store.add(back));
    CHECK(*store.value_of("key#k#tpm#1") == 70);
    // An amount larger than the limit never fits, even on a counter that does not exist yet.
    const std::vector<counter_add> huge{add("key#k#tpm#2", 101, 100)};
    auto refused = store.take(huge);
    REQUIRE(refused);
    CHECK_FALSE(refused->taken);
    CHECK(refused->values == std::vector<std::int64_t>{0});

    // The item: its name, its value and a TTL in epoch seconds.
    auto item = store.client().call("GetItem", {{"TableName", table}, {"Key", {{"counter", {{"S", "key#k#tpm#1"}}}}}});
    REQUIRE(item);
    CHECK((*item)["Item"]["n"]["N"] == "70");
    CHECK(std::stoll((*item)["Item"]["expires_at"]["N"].get<std::string>()) > chatkit::now_unix_ms() / 1000);
}

TEST_CASE("dynamodb_counter_store: several counters are taken all or none: a refusal by the last gives back the others") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    auto store = open_store(emulator, unique_table(), true);
    const std::vector<counter_add> both{add("key#k#rpm#1", 1, 5), add("team#t#rpm#1", 1, 2)};
    CHECK(store.take(both)->taken);
    CHECK(store.take(both)->taken);
    auto third = store.take(both);
    REQUIRE(third);
    CHECK_FALSE(third->taken);
    CHECK(third->refused == 1);
    CHECK(third->values == std::vector<std::int64_t>{0, 2});
    CHECK(*store.value_of("key#k#rpm#1") == 2); // the key's unit was taken back
    CHECK(*store.value_of("team#t#rpm#1") == 2);
}

TEST_CASE("dynamodb_counter_store: 50 concurrent takes from four stores on one table against a limit of 10: exactly 10 fit") {
    const std::string emulator = GENERATE(as<std::string>{}, "dynalite", "moto");
    INFO("on " << emulator);
    const auto table = unique_table();
    std::vector<dynamodb_counter_store> instances;
    instances.push_back(open_store(emulator, table, true));
    for (int i = 0; i < 3; ++i) instances.push_back(open_store(emulator, table));
    std::atomic<int> taken{0}, refused{0}, failed{0};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < 50; ++i)
        threads.emplace_back([&instances, &taken, &refused, &failed, i] {
            const std::vector<counter_add> one{add("team#t#day#0", 100'000, 1'000'000)};
            auto t = instances[i % instances.size()].take(one);
            if (!t) ++failed;
            else if (t->taken) ++taken;
            else ++refused;
        });
    for (auto& t : threads) t.join();
    CHECK(failed == 0);
    CHECK(taken == 10);
    CHECK(refused == 40);
    CHECK(*instances[3].value_of("team#t#day#0") == 1'000'000);
}

TEST_CASE("dynamodb_counter_store: a table that cannot be reached is an unavailable error, not a refusal") {
    auto store = open_store("dynalite", unique_table()); // never created
    const std::vector<counter_add> one{add("key#k#rpm#1", 1, 5)};
    auto t = store.take(one);
    REQUIRE_FALSE(t);
    CHECK(t.error().kind == chatkit::error_kind::unavailable);
    CHECK(t.error().code == "counters_unavailable");
    CHECK_FALSE(store.add(one));
}

TEST_CASE("dynamodb_counter_store: the database URL names the limits table, TABLE-limits by default") {
    auto url = chatkit::parse_dynamodb_url("dynamodb://chat?region=us-east-1");
    REQUIRE(url);
    CHECK(dynamodb_counter_store_options::of(*url).table == "chat-limits");
    auto named = chatkit::parse_dynamodb_url("dynamodb://chat?region=us-east-1&limits_table=fleet-limits");
    REQUIRE(named);
    CHECK(dynamodb_counter_store_options::of(*named).table == "fleet-limits");
    auto bad = chatkit::parse_dynamodb_url("dynamodb://chat?limits_table=x");
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message, Catch::Contains("limits_table"));
}
