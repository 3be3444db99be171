// Tests for the docs' example store (docs/writing-a-store.md): the store conformance kit, then the
// store composed into a service.
#include "memory_store.hpp"

#include <chatkit/service.hpp>
#include <chatkit/testing/store.hpp>

#include <catch2/catch.hpp>

using nlohmann::json;

TEST_CASE("memory_store passes the store conformance checks") {
    chatkit::testing::check_store_conformance<example::memory_store>([] { return example::memory_store{}; });
}

TEST_CASE("composed into a service, memory_store keeps each chat and pages it back") {
    chatkit::service<chatkit::no_provider, example::memory_store> svc{chatkit::no_provider{}, example::memory_store{}};
    for (const char* content : {"first", "second"}) {
        chatkit::http_request chat;
        chat.method = "POST";
        chat.path = "/chat";
        chat.headers.emplace("Content-Type", "application/json");
        chat.body = json{{"user_id", "ada"}, {"content", content}}.dump();
        REQUIRE(svc.handle(chat).status == 200);
    }
    chatkit::http_request history;
    history.method = "GET";
    history.path = "/history/ada";
    history.query.emplace("limit", "2");
    const auto page = svc.handle(history);
    REQUIRE(page.status == 200);
    const auto body = json::parse(page.body);
    REQUIRE(body["messages"].size() == 2); // the newest two of four: the second question and its answer
    CHECK(body["messages"][0]["content"] == "second");
    CHECK(body["messages"][0]["role"] == "user");
    CHECK(body["messages"][1]["role"] == "assistant");
    CHECK(body["next_cursor"] == "2");
}
