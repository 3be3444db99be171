// Tests for the docs' example cache (docs/writing-a-cache.md): the cache conformance kit, its own
// bound, then the cache composed into a service.
#include "map_cache.hpp"

#include <chatkit/service.hpp>
#include <chatkit/testing/cache.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <string>

using nlohmann::json;

TEST_CASE("map_cache passes the cache conformance checks") {
    // The TTL check sleeps for 2 s: map_cache reads the steady clock.
    chatkit::testing::check_cache_conformance<example::map_cache>([] { return example::map_cache{}; });
}

TEST_CASE("a full map_cache keeps what it has and misses the rest") {
    example::map_cache cache{{.max_entries = 2}};
    const std::chrono::seconds minute{60};
    cache.put("a", chatkit::completion{.content = "1"}, minute);
    cache.put("b", chatkit::completion{.content = "2"}, minute);
    cache.put("c", chatkit::completion{.content = "3"}, minute);
    CHECK(cache.get("a"));
    CHECK(cache.get("b"));
    CHECK_FALSE(cache.get("c"));
    cache.put("a", chatkit::completion{.content = "4"}, minute); // a key it holds is replaced, full or not
    CHECK(cache.get("a")->content == "4");
    CHECK(cache.health().detail == "2 entries");
}

TEST_CASE("composed into a service, map_cache answers the same question of the same user from the cache") {
    chatkit::service<chatkit::no_provider, chatkit::no_store, example::map_cache> svc{chatkit::no_provider{}, chatkit::no_store{},
                                                                                      example::map_cache{}};
    auto cached = [&svc](const std::string& user) { // POST /chat answers say whether they came from the cache
        chatkit::http_request chat;
        chat.method = "POST";
        chat.path = "/chat";
        chat.headers.emplace("Content-Type", "application/json");
        chat.body = json{{"user_id", user}, {"content", "what is the time?"}}.dump();
        const auto res = svc.handle(chat);
        REQUIRE(res.status == 200);
        return json::parse(res.body).at("cached").get<bool>();
    };
    CHECK_FALSE(cached("ada"));
    CHECK(cached("ada"));
    CHECK_FALSE(cached("bob")); // keys are scoped per user
}
