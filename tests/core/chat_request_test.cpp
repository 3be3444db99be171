// What a client may send to POST /chat, and the error it gets for what it may not.
#include <chatkit/chat.hpp>
#include <chatkit/chat_body.hpp>

#include <catch2/catch.hpp>

using chatkit::parse_chat_request;
using nlohmann::json;

namespace {
chatkit::error rejected(const json& body, const chatkit::request_limits& limits = {}) {
    auto r = parse_chat_request(body, limits);
    REQUIRE_FALSE(r);
    CHECK(r.error().kind == chatkit::error_kind::invalid_request);
    return r.error();
}
} // namespace

TEST_CASE("the full form keeps every message, in order, with its role") {
    auto r = parse_chat_request(json::parse(R"({"messages":[{"role":"system","content":"be brief"},
        {"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"again"}],
        "model":"m1","temperature":0.5,"max_tokens":7,"user_id":"alice","stream":true,"cache":false})"));
    REQUIRE(r);
    REQUIRE(r->messages.size() == 4);
    CHECK(r->messages[0] == chatkit::message{chatkit::role::system, "be brief"});
    CHECK(r->messages[3] == chatkit::message{chatkit::role::user, "again"});
    CHECK(r->model == "m1");
    CHECK(r->temperature == 0.5);
    CHECK(r->max_tokens == 7);
    CHECK(r->user_id == "alice");
    CHECK(r->stream);
    CHECK_FALSE(r->use_cache);
}

TEST_CASE("the short form is one user message, a missing user_id means anonymous") {
    auto r = parse_chat_request(json::parse(R"({"content":"hello there"})"));
    REQUIRE(r);
    REQUIRE(r->messages.size() == 1);
    CHECK(r->messages[0].role == chatkit::role::user);
    CHECK(r->messages[0].content == "hello there");
    CHECK(r->user_id == "anonymous");
    CHECK_FALSE(r->stream);
    CHECK(r->use_cache);
}

TEST_CASE("unknown fields are ignored, as OpenAI clients expect") {
    CHECK(parse_chat_request(json::parse(R"({"content":"x","top_p":1,"seed":3})")));
}

TEST_CASE("each invalid field is named in the error") {
    CHECK(rejected(json::array()).message == "request body must be a JSON object");
    CHECK(rejected(json::object()).code == "missing_field");
    CHECK(rejected(json::parse(R"({"messages":[]})")).code == "empty_messages");
    CHECK(rejected(json::parse(R"({"messages":{}})")).param == "messages");
    CHECK(rejected(json::parse(R"({"messages":[{"role":"robot","content":"x"}]})")).param == "messages[0].role");
    CHECK(rejected(json::parse(R"({"messages":[{"role":"user","content":5}]})")).param == "messages[0].content");
    CHECK(rejected(json::parse(R"({"messages":[{"role":"user"}]})")).param == "messages[0].content");
    CHECK(rejected(json::parse(R"({"messages":["hi"]})")).param == "messages[0]");
    CHECK(rejected(json::parse(R"({"content":["hi"]})")).param == "content");
    CHECK(rejected(json::parse(R"({"content":"x","model":7})")).param == "model");
    CHECK(rejected(json::parse(R"({"content":"x","stream":"yes"})")).param == "stream");
    CHECK(rejected(json::parse(R"({"content":"x","cache":1})")).param == "cache");
}

TEST_CASE("temperature must be a number from 0 to 2") {
    CHECK(parse_chat_request(json::parse(R"({"content":"x","temperature":0})")));
    CHECK(parse_chat_request(json::parse(R"({"content":"x","temperature":2})")));
    CHECK(rejected(json::parse(R"({"content":"x","temperature":2.01})")).param == "temperature");
    CHECK(rejected(json::parse(R"({"content":"x","temperature":-0.1})")).param == "temperature");
    CHECK(rejected(json::parse(R"({"content":"x","temperature":"hot"})")).param == "temperature");
}

TEST_CASE("max_tokens must be an integer from 1 to the configured cap") {
    chatkit::request_limits limits;
    limits.max_tokens = 100;
    CHECK(parse_chat_request(json::parse(R"({"content":"x","max_tokens":100})"), limits));
    CHECK(rejected(json::parse(R"({"content":"x","max_tokens":101})"), limits).message == "'max_tokens' must be between 1 and 100");
    CHECK(rejected(json::parse(R"({"content":"x","max_tokens":0})"), limits).param == "max_tokens");
    CHECK(rejected(json::parse(R"({"content":"x","max_tokens":1.5})"), limits).param == "max_tokens");
    CHECK(rejected(json::parse(R"({"content":"x","max_tokens":1e30})"), limits).param == "max_tokens");
}

TEST_CASE("too many messages are refused with the limit in the message") {
    chatkit::request_limits limits;
    limits.max_messages = 3;
    json body = {{"messages", json::array()}};
    for (int i = 0; i < 4; ++i) body["messages"].push_back({{"role", "user"}, {"content", "x"}});
    auto e = rejected(body, limits);
    CHECK(e.code == "too_many_messages");
    CHECK(e.message == "'messages' has 4 items; the limit is 3");
}

TEST_CASE("user_id must be 1 to 128 bytes without control characters") {
    CHECK(parse_chat_request(json{{"content", "x"}, {"user_id", std::string(128, 'u')}}));
    CHECK(rejected(json{{"content", "x"}, {"user_id", std::string(129, 'u')}}).param == "user_id");
    CHECK(rejected(json{{"content", "x"}, {"user_id", ""}}).param == "user_id");
    CHECK(rejected(json{{"content", "x"}, {"user_id", "a\nb"}}).param == "user_id");
    CHECK(rejected(json{{"content", "x"}, {"user_id", 42}}).param == "user_id");
    CHECK(rejected(json{{"content", "x"}, {"user_id", "a/b"}}).param == "user_id"); // unreadable via /history/{id}
}

TEST_CASE("errors map to their HTTP status and OpenAI error type") {
    using chatkit::error_kind;
    CHECK(chatkit::http_status(error_kind::invalid_request) == 400);
    CHECK(chatkit::http_status(error_kind::not_found) == 404);
    CHECK(chatkit::http_status(error_kind::method_not_allowed) == 405);
    CHECK(chatkit::http_status(error_kind::conflict) == 409);
    CHECK(chatkit::error_type(error_kind::conflict) == "conflict_error");
    CHECK(chatkit::http_status(error_kind::payload_too_large) == 413);
    CHECK(chatkit::http_status(error_kind::unsupported_media_type) == 415);
    CHECK(chatkit::http_status(error_kind::rate_limited) == 429);
    CHECK(chatkit::http_status(error_kind::upstream) == 502);
    CHECK(chatkit::http_status(error_kind::unavailable) == 503);
    CHECK(chatkit::http_status(error_kind::timeout) == 504);
    const auto envelope = chatkit::to_envelope({error_kind::invalid_request, "bad", "invalid_value", "temperature"});
    CHECK(envelope ==
          json::parse(R"({"error":{"message":"bad","type":"invalid_request_error","param":"temperature","code":"invalid_value"}})"));
    CHECK(chatkit::to_envelope({error_kind::internal, "x"})["error"]["param"].is_null());
}
