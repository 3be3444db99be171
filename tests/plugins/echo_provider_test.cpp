// The echo provider is the embedded default: deterministic answers, word-by-word streams and
// token counts a client can predict.
#include <chatkit/echo_provider.hpp>
#include <chatkit/testing/provider.hpp>

#include <catch2/catch.hpp>

namespace {
chatkit::chat_request ask(std::vector<chatkit::message> messages) {
    chatkit::chat_request r;
    r.messages = std::move(messages);
    return r;
}
} // namespace

TEST_CASE("echo answers with the last user message and counts words as tokens") {
    chatkit::echo_provider echo;
    auto c = echo.complete(ask({{chatkit::role::system, "be terse"},
                                {chatkit::role::user, "first question"},
                                {chatkit::role::assistant, "an answer"},
                                {chatkit::role::user, "how are  you today"}}));
    REQUIRE(c);
    CHECK(c->content == "how are  you today");
    CHECK(c->model == "echo-1");
    CHECK(c->finish_reason == "stop");
    CHECK(c->usage.prompt_tokens == 10);
    CHECK(c->usage.completion_tokens == 4);
}

TEST_CASE("echo streams word by word and the deltas join to the whole answer") {
    chatkit::echo_provider echo;
    std::vector<std::string> deltas;
    auto c = echo.stream(ask({{chatkit::role::user, " hello  brave\nnew world "}}), [&](std::string_view d) {
        deltas.emplace_back(d);
        return true;
    });
    REQUIRE(c);
    CHECK(deltas == std::vector<std::string>{" hello", "  brave", "\nnew", " world"});
    std::string joined;
    for (const auto& d : deltas) joined += d;
    CHECK(joined == c->content);
    CHECK(c->usage.completion_tokens == 4);
}

TEST_CASE("echo honours max_tokens with finish_reason length, and the requested model") {
    chatkit::echo_provider echo{chatkit::echo_options{.model = "house-model"}};
    auto r = ask({{chatkit::role::user, "one two three four"}});
    r.max_tokens = 2;
    auto c = echo.complete(r);
    CHECK(c->content == "one two");
    CHECK(c->finish_reason == "length");
    CHECK(c->model == "house-model");
    r.model = "asked-for";
    CHECK(echo.complete(r)->model == "asked-for");
}

TEST_CASE("echo with no user message answers with nothing") {
    chatkit::echo_provider echo;
    auto c = echo.complete(ask({{chatkit::role::system, "only a system prompt"}}));
    CHECK(c->content.empty());
    CHECK(c->usage.completion_tokens == 0);
    CHECK(echo.health().ok);
}

TEST_CASE("echo refuses request fields it cannot honour, and ignores those that change nothing") {
    chatkit::echo_provider echo;
    auto r = ask({{chatkit::role::user, "hi"}});
    r.extensions = {{"seed", 3}, {"top_p", 0.5}};
    CHECK(echo.complete(r));
    r.extensions["tools"] = nlohmann::json::array();
    auto refused = echo.complete(r);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().kind == chatkit::error_kind::invalid_request);
    CHECK(refused.error().param == "tools");
    CHECK(refused.error().message == "the echo provider cannot honour 'tools'");
    CHECK(echo.models() == std::vector<std::string>{"echo-1"});
}

TEST_CASE("echo passes the provider conformance checks") {
    chatkit::testing::provider_kit_options options;
    for (const char* field : {"tools", "response_format", "stop"}) {
        auto r = options.request;
        r.extensions[field] = nlohmann::json::array();
        options.refusals.push_back({std::string{"an unhonoured '"} + field + "'", r, chatkit::error_kind::invalid_request});
    }
    chatkit::testing::check_provider_conformance<chatkit::echo_provider>([] { return chatkit::echo_provider{}; }, options);
}
