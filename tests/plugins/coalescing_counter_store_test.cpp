// coalescing_counter_store: settlements held back, merged per counter and written in one add() of
// the store behind; takes never held. The store behind here counts what it is asked for and can
// be made to fail; it is the shared limits' store in shared_key_limits_test.cpp and, on Redis,
// in tests/server/redis_fleet_test.cpp.
#include "chatkit/coalescing_counter_store.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

namespace {

struct behind {
    std::shared_ptr<chatkit::memory_counter_store> counters = std::make_shared<chatkit::memory_counter_store>();
    std::shared_ptr<std::atomic<int>> adds = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<bool>> down = std::make_shared<std::atomic<bool>>(false);

    chatkit::result<chatkit::counters_taken> take(std::span<const chatkit::counter_add> a) { return counters->take(a); }
    chatkit::result<void> add(std::span<const chatkit::counter_add> a) {
        if (*down) return chatkit::error{chatkit::error_kind::unavailable, "redis is down"};
        ++*adds;
        return counters->add(a);
    }
};
static_assert(chatkit::counter_store<behind>);

const chatkit::unix_ms later = chatkit::now_unix_ms() + 3'600'000;

chatkit::counter_add settle(std::string name, std::int64_t amount) { return {std::move(name), amount, 0, later}; }

template <class F>
bool eventually(F f) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{10};
    while (std::chrono::steady_clock::now() < deadline) {
        if (f()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds{5});
    }
    return f();
}

} // namespace

TEST_CASE("coalescing_counter_store: 100 settlements to 3 counters are one add() of their sums, and takes are not held", "[coalescing]") {
    behind b;
    chatkit::coalescing_counter_store<behind> store{b, {.interval = std::chrono::seconds{60}}};
    const chatkit::counter_add reserve{"tpm#1", 500, 1000, later};
    REQUIRE(store.take({&reserve, 1}).value().taken);
    CHECK(b.counters->value("tpm#1") == 500); // at once

    for (int i = 0; i < 100; ++i) {
        const std::vector<chatkit::counter_add> adds{settle("tpm#1", -3), settle("day#1", i % 2 ? 7 : -2), settle("tpm#2", 1)};
        REQUIRE(store.add(adds));
    }
    CHECK(*b.adds == 0);
    CHECK(store.pending() == 3);
    CHECK(b.counters->value("tpm#1") == 500); // not yet

    REQUIRE(store.flush());
    CHECK(*b.adds == 1);
    CHECK(store.pending() == 0);
    CHECK(b.counters->value("tpm#1") == 200);
    CHECK(b.counters->value("day#1") == 250);
    CHECK(b.counters->value("tpm#2") == 100);
}

TEST_CASE("coalescing_counter_store: held settlements are written by its own thread within the interval", "[coalescing]") {
    behind b;
    chatkit::coalescing_counter_store<behind> store{b, {.interval = std::chrono::milliseconds{20}}};
    REQUIRE(store.add(std::vector{settle("tpm#1", 42)}));
    CHECK(eventually([&] { return b.counters->value("tpm#1") == 42; }));
    CHECK(*b.adds == 1);
}

TEST_CASE("coalescing_counter_store: a batch the store refuses is kept and written with the next, and the destructor writes what is left",
          "[coalescing]") {
    behind b;
    std::atomic<int> errors{0};
    {
        chatkit::coalescing_counter_store<behind> store{
            b, {.interval = std::chrono::seconds{60}, .on_error = [&errors](const chatkit::error&) { ++errors; }}};
        *b.down = true;
        REQUIRE(store.add(std::vector{settle("tpm#1", -10)}));
        CHECK_FALSE(store.flush());
        CHECK(store.pending() == 1);
        REQUIRE(store.add(std::vector{settle("tpm#1", -5), settle("tpm#2", 3)}));
        *b.down = false;
        REQUIRE(store.flush());
        CHECK(b.counters->value("tpm#1") == -15);
        REQUIRE(store.add(std::vector{settle("tpm#2", 4)}));
    } // destroyed with one held
    CHECK(b.counters->value("tpm#2") == 7);
    CHECK(errors == 0); // flush() reported its failure itself; the thread had none
}

TEST_CASE("coalescing_counter_store: past max_pending counters, an add() is written through, never dropped", "[coalescing]") {
    behind b;
    chatkit::coalescing_counter_store<behind> store{b, {.interval = std::chrono::seconds{60}, .max_pending = 2}};
    REQUIRE(store.add(std::vector{settle("a", 1), settle("b", 1)}));
    CHECK(*b.adds == 0);
    REQUIRE(store.add(std::vector{settle("c", 1)}));
    CHECK(*b.adds == 1);
    CHECK(b.counters->value("c") == 1);
    REQUIRE(store.flush());
    CHECK(b.counters->value("a") == 1);
}

TEST_CASE("coalescing_counter_store: settlements from many threads add up exactly", "[coalescing]") {
    behind b;
    {
        chatkit::coalescing_counter_store<behind> store{b, {.interval = std::chrono::milliseconds{1}}};
        std::vector<std::thread> threads;
        for (int t = 0; t < 8; ++t)
            threads.emplace_back([&store] {
                for (int i = 0; i < 500; ++i) (void)store.add(std::vector{settle("n", 1)});
            });
        for (auto& t : threads) t.join();
    }
    CHECK(b.counters->value("n") == 4000);
    CHECK(*b.adds <= 4000);
}

TEST_CASE("coalescing_counter_store: a store that cannot be moved is made in place behind it", "[coalescing]") {
    chatkit::coalescing_counter_store<chatkit::memory_counter_store> store{std::in_place, {.interval = std::chrono::seconds{60}}};
    REQUIRE(store.add(std::vector{settle("n", 5), settle("n", -2)}));
    CHECK(store.inner().value("n") == 0);
    REQUIRE(store.flush());
    CHECK(store.inner().value("n") == 3);
}
