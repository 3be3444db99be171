// CORS: preflights answered before anything needs a key, answers marked readable for allowed
// origins only (errors included), requests without Origin untouched, origins checked when parsed.
#include <chatkit/cors.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/service.hpp>
#include <chatkit/testing/middleware.hpp>

#include <catch2/catch.hpp>

namespace {

// Refuses every request without a key, as API-key authentication does.
struct needs_key {
    std::optional<chatkit::http_response> before(chatkit::http_request& req, chatkit::no_context&) {
        if (!req.header("Authorization").empty()) return std::nullopt;
        return chatkit::error_response({chatkit::error_kind::unauthenticated, "missing API key", "invalid_api_key"}, req.request_id);
    }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
};

using guarded = chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::no_cache, chatkit::cors, needs_key>;

guarded make(std::vector<std::string> origins) {
    chatkit::cors_options o;
    o.origins = std::move(origins);
    return guarded{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::no_cache{}, chatkit::cors{o}, needs_key{}};
}

chatkit::http_request request(std::string method, std::string origin, bool with_key = true) {
    chatkit::http_request req;
    req.method = std::move(method);
    req.path = "/v1/chat/completions";
    req.body = R"({"messages":[{"role":"user","content":"hi"}]})";
    if (!origin.empty()) req.headers.emplace("Origin", origin);
    if (with_key) req.headers.emplace("Authorization", "Bearer ck-test");
    return req;
}

std::string header(const chatkit::http_response& res, std::string_view name) {
    const auto it = res.headers.find(name);
    return it == res.headers.end() ? std::string{} : it->second;
}

} // namespace

TEST_CASE("cors: an allowed origin's preflight gets 204 with the Allow headers, without a key") {
    auto svc = make({"https://app.example.com"});
    auto pre = request("OPTIONS", "https://app.example.com", false);
    pre.headers.emplace("Access-Control-Request-Method", "POST");
    pre.headers.emplace("Access-Control-Request-Headers", "authorization, content-type");
    const auto res = svc.handle(pre);
    CHECK(res.status == 204);
    CHECK(header(res, "Access-Control-Allow-Origin") == "https://app.example.com");
    CHECK_THAT(header(res, "Access-Control-Allow-Methods"), Catch::Contains("POST"));
    CHECK_THAT(header(res, "Access-Control-Allow-Headers"), Catch::Contains("Authorization") && Catch::Contains("Content-Type"));
    CHECK(header(res, "Access-Control-Max-Age") == "600");
    CHECK_THAT(header(res, "Vary"), Catch::Contains("Origin"));
    CHECK(res.body.empty());
}

TEST_CASE("cors: another origin's preflight is refused with 403 and a JSON error, and its requests are not marked") {
    auto svc = make({"https://app.example.com"});
    auto pre = request("OPTIONS", "https://evil.example", false);
    pre.headers.emplace("Access-Control-Request-Method", "POST");
    const auto refused = svc.handle(pre);
    CHECK(refused.status == 403);
    CHECK(nlohmann::json::parse(refused.body)["error"]["code"] == "origin_not_allowed");
    CHECK(header(refused, "Access-Control-Allow-Origin").empty());
    const auto actual = svc.handle(request("POST", "https://evil.example"));
    CHECK(actual.status == 200); // the server answers; the browser will not let the page read it
    CHECK(header(actual, "Access-Control-Allow-Origin").empty());
}

TEST_CASE("cors: an allowed origin's answers are readable, errors included, and vary by Origin") {
    auto svc = make({"https://a.example", "https://app.example.com"});
    const auto ok = svc.handle(request("POST", "https://app.example.com"));
    CHECK(ok.status == 200);
    CHECK(header(ok, "Access-Control-Allow-Origin") == "https://app.example.com");
    CHECK(header(ok, "Vary") == "Origin");
    CHECK_THAT(header(ok, "Access-Control-Expose-Headers"),
               Catch::Contains("X-Request-ID") && Catch::Contains("x-ratelimit-remaining-tokens"));
    const auto unauthenticated = svc.handle(request("POST", "https://app.example.com", false));
    CHECK(unauthenticated.status == 401);
    CHECK(header(unauthenticated, "Access-Control-Allow-Origin") == "https://app.example.com");
    // No Origin: not a cross-origin call, nothing added.
    const auto plain = svc.handle(request("POST", ""));
    CHECK(header(plain, "Access-Control-Allow-Origin").empty());
    CHECK(header(plain, "Vary").empty());
}

TEST_CASE("cors: with * every origin may call and the answer says *, and with no origins nothing is added") {
    auto any = make({"*"});
    CHECK(header(any.handle(request("POST", "https://anywhere.example")), "Access-Control-Allow-Origin") == "*");
    auto off = make({});
    auto pre = request("OPTIONS", "https://app.example.com", false);
    pre.headers.emplace("Access-Control-Request-Method", "POST");
    CHECK(off.handle(pre).status == 401); // no CORS: the preflight is just a request without a key
    CHECK(header(off.handle(request("POST", "https://app.example.com")), "Access-Control-Allow-Origin").empty());
}

TEST_CASE("cors: origins are parsed from a comma list, and a malformed one is named") {
    auto ok = chatkit::cors_options::parse_origins(" https://a.example , http://localhost:5173,");
    REQUIRE(ok);
    CHECK(*ok == std::vector<std::string>{"https://a.example", "http://localhost:5173"});
    CHECK(*chatkit::cors_options::parse_origins("*") == std::vector<std::string>{"*"});
    for (const char* bad : {"a.example", "https://a.example/", "https://a.example/path", "://x", "https://"}) {
        auto refused = chatkit::cors_options::parse_origins(bad);
        REQUIRE_FALSE(refused);
        CHECK_THAT(refused.error().message, Catch::Contains(bad));
    }
}

TEST_CASE("cors passes the middleware conformance checks") {
    chatkit::testing::middleware_kit_options options;
    auto preflight = [](std::string origin) {
        auto req = chatkit::testing::kit_request("OPTIONS", "/v1/chat/completions");
        req.headers.emplace("Origin", std::move(origin));
        req.headers.emplace("Access-Control-Request-Method", "POST");
        return req;
    };
    auto chat_from = [](std::string origin) {
        auto req = chatkit::testing::kit_request("POST", "/chat", R"({"content":"hi"})");
        req.headers.emplace("Origin", std::move(origin));
        return req;
    };
    options.cases.push_back({"a chat from an allowed origin", chat_from("https://app.example")});
    options.cases.push_back({"a chat from another origin", chat_from("https://evil.example")});
    options.cases.push_back({"a preflight from an allowed origin", preflight("https://app.example"), /*answered_in_before=*/true});
    options.cases.push_back({"a preflight from another origin", preflight("https://evil.example"), /*answered_in_before=*/true});
    chatkit::testing::check_middleware_conformance<chatkit::cors>(
        [] { return chatkit::cors{chatkit::cors_options{.origins = {"https://app.example"}}}; }, options);
}
