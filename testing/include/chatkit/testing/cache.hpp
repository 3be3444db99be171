// The behaviour every chatkit::cache model must have (chatkit/cache.hpp), as Catch2 sections. A
// cache's test calls check_cache_conformance<its_cache>(make) from a TEST_CASE, where make()
// returns a new, empty cache with room for at least 1,000 entries and 4 MiB; each section gets its
// own. Both forms are checked: a blocking cache directly, an asynchronous one through
// chatkit::sync_wait.
#pragma once

#include <chatkit/cache.hpp>
#include <chatkit/task.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit::testing {

struct cache_kit_options {
    // Lets `d` pass on the cache's clock, for the TTL check (an entry put with a TTL of 1 s is
    // asked for again after 2 s). By default the kit sleeps; a cache on a clock of its own passes
    // the function that moves that clock.
    std::function<void(std::chrono::seconds d)> pass_time = [](std::chrono::seconds d) { std::this_thread::sleep_for(d); };
};

// get() and put() of either form, awaited when the cache is asynchronous.
template <class C>
std::optional<completion> cache_get(C& cache, std::string key) {
    if constexpr (blocking_cache<C>) return cache.get(std::string_view{key});
    else return sync_wait(cache.get(std::move(key)));
}
template <class C>
void cache_put(C& cache, std::string key, const completion& value, std::chrono::seconds ttl) {
    if constexpr (blocking_cache<C>) cache.put(std::string_view{key}, value, ttl);
    else sync_wait(cache.put(std::move(key), value, ttl));
}

// A completion whose every field a cache must keep carries `tag`: what a hit replays to the client.
inline completion cacheable_answer(const std::string& tag) {
    completion c;
    c.id = "chatcmpl-" + tag;
    c.model = "model-" + tag;
    c.content = "answer " + tag;
    c.finish_reason = "length";
    c.usage = {11, 7, 3, 2};
    c.extra = {{"tool_calls", {{{"id", "call-" + tag}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}}}}};
    return c;
}

// A key shaped like the service's (chatkit::service scopes every key to its user): the JSON of
// the user, the model, the sampling fields, the messages and the extensions.
inline std::string service_shaped_key(const std::string& user, const std::string& content) {
    return nlohmann::json::array(
               {user, "m", nullptr, nullptr, nlohmann::json::array({{"user", content, nullptr}}), nlohmann::json::object()})
        .dump();
}

template <class C, class MakeCache>
void check_cache_conformance(MakeCache make, cache_kit_options options = {}) {
    static_assert(cache<C>, "check_cache_conformance: C is not a chatkit::cache (see chatkit/cache.hpp)");
    using std::chrono::seconds;
    constexpr seconds minute{60};

    SECTION("a stored completion comes back from get with every field a hit replays") {
        auto cache = make();
        const auto stored = cacheable_answer("1");
        cache_put(cache, "k", stored, minute);
        const auto hit = cache_get(cache, "k");
        REQUIRE(hit.has_value());
        CHECK(hit->content == stored.content);
        CHECK(hit->model == stored.model);
        CHECK(hit->finish_reason == stored.finish_reason);
        CHECK(hit->usage == stored.usage);
        CHECK(hit->extra == stored.extra); // tool calls, refusals: an answer without them is another answer
    }

    SECTION("an absent key misses") {
        auto cache = make();
        CHECK_FALSE(cache_get(cache, "never stored").has_value());
        CHECK_FALSE(cache_get(cache, "").has_value());
    }

    SECTION("keys match exactly: case, spaces, prefixes and extensions are other keys") {
        auto cache = make();
        cache_put(cache, "key", cacheable_answer("1"), minute);
        for (const std::string& other : std::vector<std::string>{"Key", "key ", " key", "ke", "keyy", "key\n", std::string("key\0", 4)}) {
            INFO("key " << nlohmann::json(other).dump());
            CHECK_FALSE(cache_get(cache, other).has_value());
        }
        REQUIRE(cache_get(cache, "key").has_value());
    }

    SECTION("keys the service builds keep users apart: the same question of two users is two entries") {
        auto cache = make();
        const auto alice = service_shaped_key("alice", "what is the time?");
        const auto bob = service_shaped_key("bob", "what is the time?");
        cache_put(cache, alice, cacheable_answer("alice"), minute);
        CHECK_FALSE(cache_get(cache, bob).has_value());
        cache_put(cache, bob, cacheable_answer("bob"), minute);
        const auto a = cache_get(cache, alice);
        const auto b = cache_get(cache, bob);
        REQUIRE(a.has_value());
        REQUIRE(b.has_value());
        CHECK(a->content == "answer alice");
        CHECK(b->content == "answer bob");
    }

    SECTION("long keys are compared whole, not by a prefix, and odd bytes are kept") {
        auto cache = make();
        const std::string long_question(20'000, 'q'); // a long conversation: the key holds every message
        const auto one = service_shaped_key("alice", long_question + "1");
        const auto two = service_shaped_key("alice", long_question + "2");
        cache_put(cache, one, cacheable_answer("one"), minute);
        CHECK_FALSE(cache_get(cache, two).has_value());
        cache_put(cache, two, cacheable_answer("two"), minute);
        REQUIRE(cache_get(cache, one).has_value());
        CHECK(cache_get(cache, one)->content == "answer one");
        CHECK(cache_get(cache, two)->content == "answer two");

        const std::string odd = std::string("caf\xc3\xa9 \"quoted\" ") + std::string(1, '\0') + "\x01\x7f";
        auto stored = cacheable_answer("odd");
        stored.content = odd + std::string(100'000, 'z'); // a long answer, with the same bytes
        cache_put(cache, odd, stored, minute);
        const auto hit = cache_get(cache, odd);
        REQUIRE(hit.has_value());
        CHECK(hit->content == stored.content);
    }

    SECTION("a later put replaces the entry") {
        auto cache = make();
        cache_put(cache, "k", cacheable_answer("old"), minute);
        cache_put(cache, "k", cacheable_answer("new"), minute);
        const auto hit = cache_get(cache, "k");
        REQUIRE(hit.has_value());
        CHECK(hit->content == "answer new");
        CHECK(hit->model == "model-new");
    }

    SECTION("an entry is live until its TTL and misses after it, and a TTL of zero keeps nothing") {
        auto cache = make();
        cache_put(cache, "short", cacheable_answer("short"), seconds{1});
        cache_put(cache, "long", cacheable_answer("long"), minute);
        cache_put(cache, "zero", cacheable_answer("zero"), seconds{0});
        CHECK(cache_get(cache, "short").has_value());
        CHECK_FALSE(cache_get(cache, "zero").has_value());
        options.pass_time(seconds{2});
        CHECK_FALSE(cache_get(cache, "short").has_value());
        CHECK(cache_get(cache, "long").has_value());
    }

    SECTION("concurrent gets and puts never mix entries, and what was put is found") {
        auto cache = make();
        constexpr int threads = 8, keys_per_thread = 50;
        std::atomic<int> wrong{0}, missing{0};
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; ++t)
            workers.emplace_back([&cache, &wrong, &missing, t] {
                const std::chrono::seconds ttl{60};
                for (int i = 0; i < keys_per_thread; ++i) {
                    const std::string tag = std::to_string(t) + "-" + std::to_string(i);
                    cache_put(cache, "key-" + tag, cacheable_answer(tag), ttl);
                    cache_put(cache, "shared", cacheable_answer("shared-" + tag), ttl);
                    const auto own = cache_get(cache, "key-" + tag);
                    if (!own) ++missing;
                    else if (own->content != "answer " + tag || own->model != "model-" + tag) ++wrong;
                    // Whoever wrote last, the shared entry is one whole answer, never a mix of two.
                    if (const auto shared = cache_get(cache, "shared"); shared && shared->content.substr(std::string("answer ").size()) !=
                                                                                      shared->model.substr(std::string("model-").size()))
                        ++wrong;
                }
            });
        for (auto& w : workers) w.join();
        CHECK(wrong == 0);
        CHECK(missing == 0);
        for (int t = 0; t < threads; ++t) {
            const std::string tag = std::to_string(t) + "-" + std::to_string(keys_per_thread - 1);
            const auto hit = cache_get(cache, "key-" + tag);
            REQUIRE(hit.has_value());
            CHECK(hit->content == "answer " + tag);
        }
    }

    SECTION("health is ok") {
        auto cache = make();
        CHECK(cache.health().ok);
    }
}

} // namespace chatkit::testing
