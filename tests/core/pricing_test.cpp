// The price table: its JSON form, what it refuses, and what an answer costs.
#include <chatkit/pricing.hpp>

#include <catch2/catch.hpp>

TEST_CASE("a price table reads USD per 1M tokens, and bills cached prompt tokens at the cached price") {
    auto t = chatkit::price_table::parse(R"({"_comment": "ignored",
        "models": {"m": {"input": 2.0, "output": 8.0, "cached_input": 0.5}, "plain": {"input": 1, "output": 3}}})");
    REQUIRE(t);
    // 1,000 prompt tokens of which 400 cached, 500 completion tokens (reasoning among them: no extra term).
    chatkit::token_usage u{.prompt_tokens = 1000, .completion_tokens = 500, .cached_tokens = 400, .reasoning_tokens = 200};
    CHECK(t->cost_usd("m", u).value() == Approx((600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1e6));
    // No cached price: cached tokens cost the input price.
    CHECK(t->cost_usd("plain", u).value() == Approx((1000 * 1.0 + 500 * 3.0) / 1e6));
    // A model with no price is unpriced, never $0.
    CHECK_FALSE(t->cost_usd("unknown", u));
    CHECK(t->worst_case_usd("m", 100, 50).value() == Approx((100 * 2.0 + 50 * 8.0) / 1e6));
    CHECK_FALSE(t->worst_case_usd("unknown", 1, 1));
}

TEST_CASE("a dated model name takes its family's price unless it has its own") {
    auto t = chatkit::price_table::parse(R"({"models": {"gpt-4o-mini": {"input": 0.15, "output": 0.6},
        "gpt-4o-mini-2024-07-18": {"input": 9, "output": 9}, "gpt-4o": {"input": 2.5, "output": 10}}})");
    REQUIRE(t);
    CHECK(t->find("gpt-4o-2024-08-06")->input == 2.5);
    CHECK(t->find("gpt-4o-mini-2024-07-18")->input == 9);
    CHECK(t->find("gpt-4o-mini-2099-01-01")->input == 0.15);
    CHECK(t->find("gpt-4o-2024-08-6") == nullptr); // not a date
    CHECK(t->find("gpt-4o-x") == nullptr);
}

TEST_CASE("an override file replaces the prices of its models and keeps the rest") {
    auto shipped = chatkit::price_table::parse(R"({"models": {"a": {"input": 1, "output": 1}, "b": {"input": 2, "output": 2}}})");
    auto mine = chatkit::price_table::parse(R"({"models": {"b": {"input": 5, "output": 6}, "c": {"input": 0, "output": 0}}})");
    REQUIRE(shipped);
    REQUIRE(mine);
    shipped->merge(*mine);
    CHECK(shipped->find("a")->input == 1);
    CHECK(shipped->find("b")->output == 6);
    CHECK(shipped->cost_usd("c", {10, 10}).value() == 0.0); // priced at zero is not unpriced
}

TEST_CASE("a malformed price table is refused with a message naming the model") {
    auto message = [](std::string_view text) {
        auto t = chatkit::price_table::parse(text);
        REQUIRE_FALSE(t);
        CHECK(t.error().kind == chatkit::error_kind::invalid_request);
        return t.error().message;
    };
    CHECK_THAT(message("{"), Catch::Contains("not valid JSON"));
    CHECK_THAT(message(R"({"prices": {}})"), Catch::Contains("\"models\""));
    CHECK_THAT(message(R"({"models": {"m": {"input": 1}}})"), Catch::Contains("'m'") && Catch::Contains("output"));
    CHECK_THAT(message(R"({"models": {"m": {"input": -1, "output": 1}}})"), Catch::Contains(">= 0"));
    CHECK_THAT(message(R"({"models": {"m": {"input": "1", "output": 1}}})"), Catch::Contains("'m'"));
    CHECK_THAT(message(R"({"models": {"m": 3}}})"), Catch::Contains("not valid JSON"));
    CHECK_THAT(message(R"({"models": {"m": 3}})"), Catch::Contains("must be an object"));
}

TEST_CASE("token estimates: a quarter of the bytes for billing, the bytes themselves as a reservation bound") {
    CHECK(chatkit::estimate_tokens(0) == 0);
    CHECK(chatkit::estimate_tokens(1) == 1);
    CHECK(chatkit::estimate_tokens(8) == 2);
    CHECK(chatkit::estimate_tokens(9) == 3);
    CHECK(chatkit::prompt_token_bound(100, 2) == 116);
}
