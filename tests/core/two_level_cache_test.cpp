// two_level_cache over two in-memory caches: where a get looks, what a put writes, and that a far
// hit is kept near for near_fill_ttl.
#include <chatkit/two_level_cache.hpp>

#include <catch2/catch.hpp>

#include "map_cache.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace {

// A map_cache that records the TTL of each put and counts gets, and can be switched off (every
// get misses, every put is dropped), as a networked cache that is down does.
struct recording_cache {
    map_cache map{};
    std::shared_ptr<std::vector<std::pair<std::string, std::chrono::seconds>>> puts =
        std::make_shared<std::vector<std::pair<std::string, std::chrono::seconds>>>();
    std::shared_ptr<int> gets = std::make_shared<int>(0);
    std::shared_ptr<bool> down = std::make_shared<bool>(false);
    std::optional<chatkit::completion> get(std::string_view key) {
        ++*gets;
        if (*down) return std::nullopt;
        return map.get(key);
    }
    void put(std::string_view key, const chatkit::completion& c, std::chrono::seconds ttl) {
        if (*down) return;
        puts->emplace_back(std::string{key}, ttl);
        map.put(key, c, ttl);
    }
    chatkit::component_health health() { return {.ok = !*down, .detail = *down ? "down" : "fine"}; }
};

using cache_pair = chatkit::two_level_cache<recording_cache, recording_cache>;
static_assert(chatkit::cache<cache_pair>);
static_assert(chatkit::blocking_cache<cache_pair>);
static_assert(!chatkit::declared_nonblocking<cache_pair>);
static_assert(chatkit::declared_nonblocking<chatkit::two_level_cache<chatkit::no_cache, chatkit::no_cache>>);

chatkit::completion answer(std::string content) { return chatkit::completion{.id = "c-1", .model = "m", .content = std::move(content)}; }

constexpr std::chrono::seconds hour{3600};

} // namespace

TEST_CASE("a put writes both levels with its TTL", "[two_level_cache]") {
    recording_cache near, far;
    cache_pair cache{near, far};
    cache.put("k", answer("both"), hour);
    REQUIRE(near.puts->size() == 1);
    REQUIRE(far.puts->size() == 1);
    CHECK(near.puts->front() == std::pair{std::string{"k"}, hour});
    CHECK(far.puts->front() == std::pair{std::string{"k"}, hour});
}

TEST_CASE("a near hit does not ask the far level", "[two_level_cache]") {
    recording_cache near, far;
    cache_pair cache{near, far};
    cache.put("k", answer("near"), hour);
    const auto hit = cache.get("k");
    REQUIRE(hit);
    CHECK(hit->content == "near");
    CHECK(*near.gets == 1);
    CHECK(*far.gets == 0);
}

TEST_CASE("a far hit is returned and kept near for near_fill_ttl", "[two_level_cache]") {
    recording_cache near, far;
    cache_pair cache{near, far, chatkit::two_level_cache_options{.near_fill_ttl = std::chrono::seconds{30}}};
    far.put("k", answer("from another replica"), hour); // written by another replica's put
    far.puts->clear();

    const auto hit = cache.get("k");
    REQUIRE(hit);
    CHECK(hit->content == "from another replica");
    REQUIRE(near.puts->size() == 1);
    CHECK(near.puts->front() == std::pair{std::string{"k"}, std::chrono::seconds{30}});
    CHECK(far.puts->empty()); // nothing written back far

    REQUIRE(cache.get("k"));
    CHECK(*far.gets == 1); // the second get was a near hit
}

TEST_CASE("a miss at both levels misses, and keys stay apart", "[two_level_cache]") {
    recording_cache near, far;
    cache_pair cache{near, far};
    cache.put("alice|q", answer("for alice"), hour);
    CHECK_FALSE(cache.get("bob|q"));
    CHECK(*near.gets == 1);
    CHECK(*far.gets == 1);
    CHECK(near.puts->size() == 1); // a miss fills nothing
}

TEST_CASE("a far level that is down leaves the near level working, and health says so", "[two_level_cache]") {
    recording_cache near, far;
    cache_pair cache{near, far};
    *far.down = true;
    cache.put("k", answer("near only"), hour);
    REQUIRE(cache.get("k"));
    CHECK_FALSE(cache.get("other"));
    const auto health = cache.health();
    CHECK_FALSE(health.ok);
    CHECK(health.detail == "near: fine; far: down");
}
