#include <chatkit/lru_cache.hpp>
#include <chatkit/testing/cache.hpp>
#include <chatkit/two_level_cache.hpp>

#include <catch2/catch.hpp>

#include "../support/manual_clock.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using test_support::manual_clock;

using test_cache = chatkit::lru_cache<chatkit::null_mutex, manual_clock>;
static_assert(chatkit::cache<test_cache>);

constexpr std::chrono::seconds minute{60};

chatkit::completion answer(std::string content) {
    return chatkit::completion{.id = "chatcmpl-1", .model = "m", .content = std::move(content)};
}

} // namespace

// Round trips, exact keys, per-user keys, replacement, TTL (on the manual clock) and threads.
TEST_CASE("lru_cache passes the cache conformance checks", "[lru_cache]") {
    using kit_cache = chatkit::lru_cache<std::mutex, manual_clock>;
    chatkit::testing::check_cache_conformance<kit_cache>([] { return kit_cache{}; },
                                                         {.pass_time = [](std::chrono::seconds d) { manual_clock::advance(d); }});
}

// The combinator sample_server puts in front of Redis is a cache too, and passes the same checks.
TEST_CASE("two_level_cache of two LRU caches passes the cache conformance checks", "[lru_cache]") {
    using kit_cache = chatkit::lru_cache<std::mutex, manual_clock>;
    using two_levels = chatkit::two_level_cache<kit_cache, kit_cache>;
    chatkit::testing::check_cache_conformance<two_levels>(
        [] {
            return two_levels{kit_cache{}, kit_cache{}};
        },
        {.pass_time = [](std::chrono::seconds d) { manual_clock::advance(d); }});
}

TEST_CASE("an entry expires after its TTL and is then erased", "[lru_cache]") {
    test_cache cache;
    cache.put("k", answer("a"), minute);

    manual_clock::advance(minute - std::chrono::nanoseconds{1});
    CHECK(cache.get("k"));
    manual_clock::advance(std::chrono::nanoseconds{1});
    CHECK_FALSE(cache.get("k"));
    CHECK(cache.size() == 0);
    CHECK(cache.bytes() == 0);
}

TEST_CASE("a zero TTL stores nothing and a huge TTL does not overflow the clock", "[lru_cache]") {
    test_cache cache;
    cache.put("zero", answer("a"), std::chrono::seconds{0});
    CHECK_FALSE(cache.get("zero"));

    cache.put("forever", answer("a"), std::chrono::seconds::max());
    manual_clock::advance(std::chrono::hours{24 * 365});
    CHECK(cache.get("forever"));
}

TEST_CASE("the least recently used entry is evicted first, and get refreshes recency", "[lru_cache]") {
    test_cache cache{{.max_entries = 3}};
    cache.put("a", answer("1"), minute);
    cache.put("b", answer("2"), minute);
    cache.put("c", answer("3"), minute);
    REQUIRE(cache.get("a")); // a is now the most recent; b is the least

    cache.put("d", answer("4"), minute);
    CHECK_FALSE(cache.get("b"));
    CHECK(cache.get("a"));
    CHECK(cache.get("c"));
    CHECK(cache.get("d"));

    // Order is now a, c, d from oldest: a goes next.
    cache.put("e", answer("5"), minute);
    CHECK_FALSE(cache.get("a"));
    CHECK(cache.size() == 3);
}

TEST_CASE("the entry count never exceeds max_entries", "[lru_cache]") {
    test_cache cache{{.max_entries = 10}};
    for (int i = 0; i < 100; ++i) {
        cache.put("key-" + std::to_string(i), answer("v"), minute);
        CHECK(cache.size() <= 10);
    }
    CHECK(cache.size() == 10);
    CHECK(cache.get("key-99"));
    CHECK(cache.get("key-90"));
    CHECK_FALSE(cache.get("key-89"));
}

TEST_CASE("bytes() tracks puts, replacements and evictions, and stays within max_bytes", "[lru_cache]") {
    const auto small = answer("0123456789");
    const std::size_t each = test_cache::entry_bytes("a", small);
    CHECK(each == 1 + 10 + 1 + 10 + 4 + test_cache::entry_overhead);

    test_cache cache{{.max_entries = 100, .max_bytes = 3 * each}};
    cache.put("a", small, minute);
    cache.put("b", small, minute);
    CHECK(cache.bytes() == 2 * each);

    // Replacing with a larger value charges the new size, not both.
    const auto larger = answer(std::string(each / 2, 'x'));
    cache.put("a", larger, minute);
    CHECK(cache.size() == 2);
    CHECK(cache.bytes() == each + test_cache::entry_bytes("a", larger));

    // Over budget now: the oldest ("b") goes, and only as many as needed.
    cache.put("c", small, minute);
    CHECK_FALSE(cache.get("b"));
    CHECK(cache.get("a"));
    CHECK(cache.get("c"));
    CHECK(cache.bytes() == test_cache::entry_bytes("a", larger) + each);
    CHECK(cache.bytes() <= 3 * each);
    CHECK(cache.health().detail == "2 entries, " + std::to_string(cache.bytes()) + " bytes");
}

TEST_CASE("an entry larger than max_bytes alone is not stored and evicts nothing", "[lru_cache]") {
    test_cache cache{{.max_entries = 10, .max_bytes = 1000}};
    cache.put("small", answer("s"), minute);
    const std::size_t before = cache.bytes();

    cache.put("big", answer(std::string(1000, 'x')), minute);
    CHECK_FALSE(cache.get("big"));
    CHECK(cache.get("small"));
    CHECK(cache.bytes() == before);

    // Replacing a key with an oversized value drops the stale one rather than serving it.
    cache.put("small", answer(std::string(1000, 'x')), minute);
    CHECK_FALSE(cache.get("small"));
    CHECK(cache.bytes() == 0);
}

TEST_CASE("putting an existing key replaces its value and refreshes its TTL", "[lru_cache]") {
    test_cache cache{{.max_entries = 2}};
    cache.put("k", answer("old"), minute);
    cache.put("other", answer("o"), minute);
    manual_clock::advance(std::chrono::seconds{50});
    cache.put("k", answer("new"), minute);
    CHECK(cache.size() == 2);

    manual_clock::advance(std::chrono::seconds{30}); // past the first TTL, within the second
    auto hit = cache.get("k");
    REQUIRE(hit);
    CHECK(hit->content == "new");
    CHECK_FALSE(cache.get("other"));

    // The replacement also made "k" the most recent: a third key pushes out "other", not "k".
    test_cache order{{.max_entries = 2}};
    order.put("k", answer("1"), minute);
    order.put("other", answer("2"), minute);
    order.put("k", answer("3"), minute);
    order.put("third", answer("4"), minute);
    CHECK(order.get("k"));
    CHECK_FALSE(order.get("other"));
}

TEST_CASE("health reports ok with the entry count and bytes", "[lru_cache]") {
    test_cache cache;
    CHECK(cache.health().ok);
    CHECK(cache.health().detail == "0 entries, 0 bytes");
    cache.put("k", answer("a"), minute);
    CHECK(cache.health().detail == "1 entries, " + std::to_string(test_cache::entry_bytes("k", answer("a"))) + " bytes");
}

TEST_CASE("a cache can be moved, e.g. into a service or a cache_variant", "[lru_cache]") {
    chatkit::lru_cache_mt cache;
    cache.put("k", answer("a"), minute);
    chatkit::lru_cache_mt moved{std::move(cache)};
    CHECK(moved.get("k"));

    chatkit::cache_variant<chatkit::lru_cache_mt, chatkit::no_cache> chosen{std::move(moved)};
    CHECK(chosen.get("k"));
    CHECK(chosen.health().detail == "1 entries, " + std::to_string(chatkit::lru_cache_mt::entry_bytes("k", answer("a"))) + " bytes");
}

TEST_CASE("lru_cache_mt survives concurrent gets and puts and keeps its bounds", "[lru_cache][threads]") {
    constexpr std::size_t max_entries = 64;
    const std::size_t max_bytes = 40 * chatkit::lru_cache_mt::entry_bytes("key-000", answer(std::string(64, 'x')));
    chatkit::lru_cache_mt cache{{.max_entries = max_entries, .max_bytes = max_bytes}};

    std::atomic<bool> bounds_held{true};
    std::atomic<int> hits{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 5000; ++i) {
                // 30 keys: a thread re-reads what it just wrote even if the threads never overlap,
                // and values up to 128 bytes still overflow the byte bound, so evictions happen.
                const std::string key = "key-" + std::to_string((i + t) % 30);
                if (i % 3 == 0) {
                    cache.put(key, answer(std::string(static_cast<std::size_t>(i % 128), 'x')), minute);
                } else if (auto hit = cache.get(key)) {
                    if (hit->model != "m") bounds_held = false; // a torn value
                    ++hits;
                }
                if (i % 100 == 0) {
                    if (cache.size() > max_entries || cache.bytes() > max_bytes) bounds_held = false;
                    (void)cache.health();
                }
            }
        });
    }
    for (auto& th : threads) th.join();

    CHECK(bounds_held);
    CHECK(hits > 0);
    CHECK(cache.size() <= max_entries);
    CHECK(cache.bytes() <= max_bytes);
}
