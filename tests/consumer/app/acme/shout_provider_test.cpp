// The third-party provider checked with chatkit's installed provider conformance kit, in the few
// lines a plugin author writes: Catch2's main, and one test case that hands the kit a way to make
// the provider and the requests it must refuse.
#define CATCH_CONFIG_MAIN
#include "shout_provider.hpp"

#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

TEST_CASE("acme::shout_provider passes chatkit's provider conformance checks") {
    chatkit::testing::provider_kit_options options;
    auto with_tools = options.request;
    with_tools.extensions["tools"] = nlohmann::json::array();
    auto system_only = options.request;
    system_only.messages.pop_back();
    options.refusals = {{"an unhonoured 'tools'", with_tools}, {"no user message", system_only}};
    chatkit::testing::check_provider_conformance<acme::shout_provider>([] { return acme::shout_provider{}; }, options);
}

TEST_CASE("acme::shout_provider shouts") {
    acme::shout_provider shout;
    CHECK(shout.complete(chatkit::testing::kit_chat("hello  there"))->content == "HELLO  THERE");
}
