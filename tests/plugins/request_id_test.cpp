// Request ids: a valid client id is kept, anything else replaced, and the id is echoed back in
// the header and the body of every answer, errors included.
#include <chatkit/request_id.hpp>
#include <chatkit/service.hpp>
#include <chatkit/testing/middleware.hpp>

#include <catch2/catch.hpp>

namespace {
chatkit::http_request with_id(std::string_view id) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/chat";
    req.body = R"({"content":"hi"})";
    if (!id.empty()) req.headers.emplace("X-Request-ID", std::string{id});
    return req;
}
} // namespace

TEST_CASE("valid ids are 1-128 characters of [A-Za-z0-9._-]") {
    using chatkit::request_id;
    CHECK(request_id::is_valid("a"));
    CHECK(request_id::is_valid("Abc-123_x.y"));
    CHECK(request_id::is_valid(std::string(128, 'z')));
    CHECK_FALSE(request_id::is_valid(""));
    CHECK_FALSE(request_id::is_valid(std::string(129, 'z')));
    CHECK_FALSE(request_id::is_valid("has space"));
    CHECK_FALSE(request_id::is_valid("new\nline"));
    CHECK_FALSE(request_id::is_valid("semi;colon"));
    CHECK_FALSE(request_id::is_valid("\xc3\xa9"));
}

TEST_CASE("the service echoes a valid client id in the header and body") {
    chatkit::service<chatkit::no_provider, chatkit::no_store, chatkit::no_cache, chatkit::request_id> svc;
    auto res = svc.handle(with_id("trace-42"));
    CHECK(res.headers.at("X-Request-ID") == "trace-42");
    CHECK(nlohmann::json::parse(res.body)["request_id"] == "trace-42");
}

TEST_CASE("an invalid or missing id is replaced by a fresh one, distinct per request") {
    chatkit::service<chatkit::no_provider, chatkit::no_store, chatkit::no_cache, chatkit::request_id> svc;
    auto a = svc.handle(with_id("bad id!"));
    auto b = svc.handle(with_id(""));
    const auto id_a = a.headers.at("X-Request-ID");
    CHECK(id_a != "bad id!");
    CHECK(chatkit::request_id::is_valid(id_a));
    CHECK(id_a != b.headers.at("X-Request-ID"));
    CHECK(nlohmann::json::parse(a.body)["request_id"] == id_a);
}

TEST_CASE("error answers carry the request id too") {
    chatkit::service<chatkit::no_provider, chatkit::no_store, chatkit::no_cache, chatkit::request_id> svc;
    auto req = with_id("err-1");
    req.path = "/missing";
    auto res = svc.handle(req);
    CHECK(res.status == 404);
    CHECK(res.headers.at("X-Request-ID") == "err-1");
    CHECK(nlohmann::json::parse(res.body)["request_id"] == "err-1");
}

TEST_CASE("request_id passes the middleware conformance checks") {
    chatkit::testing::middleware_kit_options options;
    options.cases.push_back({"a client's own id", with_id("client-7")});
    options.cases.push_back({"a client's invalid id", with_id("not valid!")});
    chatkit::testing::check_middleware_conformance<chatkit::request_id>([] { return chatkit::request_id{}; }, options);
}
