// Tests for the docs' example middleware (docs/writing-a-middleware.md): the middleware
// conformance kit with the requests it lets through and the one it refuses, then the middleware
// composed into a service.
#include "version_gate.hpp"

#include <chatkit/service.hpp>
#include <chatkit/testing/middleware.hpp>

#include <catch2/catch.hpp>

#include <string>

using nlohmann::json;

namespace {
chatkit::http_request chat(std::string version) {
    auto req = chatkit::testing::kit_request("POST", "/chat", R"({"user_id":"ada","content":"hi"})");
    if (!version.empty()) req.headers.emplace("X-Chat-Version", std::move(version));
    return req;
}
} // namespace

TEST_CASE("version_gate passes the middleware conformance checks") {
    chatkit::testing::middleware_kit_options options;
    options.cases.push_back({"a version it speaks", chat("2025-01")});
    options.cases.push_back({"a version it does not speak", chat("1999-01"), /*answered_in_before=*/true});
    chatkit::testing::check_middleware_conformance<example::version_gate>([] { return example::version_gate{}; }, options);
}

TEST_CASE("composed into a service, version_gate answers in the version asked for, or refuses it") {
    example::version_gate gate;
    chatkit::service<chatkit::no_provider, chatkit::no_store, chatkit::no_cache, example::version_gate> svc{
        chatkit::no_provider{}, chatkit::no_store{}, chatkit::no_cache{}, gate};

    auto plain = chat("");
    const auto defaulted = svc.handle(plain);
    CHECK(defaulted.status == 200);
    CHECK(defaulted.headers.at("X-Chat-Version") == "2025-06");

    auto older = chat("2025-01");
    CHECK(svc.handle(older).headers.at("X-Chat-Version") == "2025-01");

    auto unknown = chat("1999-01");
    const auto refused = svc.handle(unknown);
    CHECK(refused.status == 400);
    CHECK_FALSE(refused.headers.contains("X-Chat-Version"));
    const auto body = json::parse(refused.body);
    CHECK(body["error"]["code"] == "unsupported_version");
    CHECK(body["error"]["message"] == "unknown API version; this server speaks 2025-06, 2025-01");

    // The copy in the service shares its counters with `gate`.
    CHECK(gate.answered() == 2);
    CHECK(gate.refused() == 1);
}
