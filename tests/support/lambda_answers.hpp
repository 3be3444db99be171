// Catch2 checks of what a Lambda runtime posted to a fake_lambda_runtime: buffered v2 response
// objects (docs/protocols.md §6.2) and response-streaming bodies behind the HTTP integration prelude
// (§5.4).
#pragma once

#include "fake_lambda_runtime.hpp"

#include <nlohmann/json.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <string_view>

namespace test_support {

// The v2 response object a buffered invocation posted (§6.2).
inline nlohmann::json buffered_answer(const fake_lambda_runtime::posted& p) {
    INFO(p.body);
    CHECK(p.kind == "response");
    CHECK(p.header("Lambda-Runtime-Function-Response-Mode").empty());
    auto answer = nlohmann::json::parse(p.body);
    CHECK(answer["isBase64Encoded"] == false);
    return answer;
}

inline void check_error_envelope(const nlohmann::json& answer, int status, std::string_view type) {
    INFO(answer.dump());
    CHECK(answer["statusCode"] == status);
    CHECK(answer["headers"]["Content-Type"] == "application/json");
    const auto body = nlohmann::json::parse(answer["body"].get<std::string>());
    CHECK(body["error"]["type"] == type);
    CHECK(body["error"]["message"].is_string());
    CHECK(body["request_id"].is_string());
}

struct streamed_answer {
    nlohmann::json prelude; // statusCode, headers, cookies
    std::string body;       // what the caller receives, e.g. SSE
};

// A streamed invocation's post (§5.4): streaming mode, chunked, the HTTP integration content type,
// and a body that opens with the JSON prelude and 8 NUL bytes.
inline streamed_answer streamed(const fake_lambda_runtime::posted& posted) {
    CHECK(posted.kind == "response");
    CHECK(posted.header("Lambda-Runtime-Function-Response-Mode") == "streaming");
    CHECK(posted.header("Transfer-Encoding") == "chunked");
    CHECK(posted.header("Content-Type") == "application/vnd.awslambda.http-integration-response");
    const auto delimiter = posted.body.find(std::string(8, '\0'));
    REQUIRE(delimiter != std::string::npos);
    return {nlohmann::json::parse(posted.body.substr(0, delimiter)), posted.body.substr(delimiter + 8)};
}

// What the echo provider streams for a /chat of "one two three": a delta per word, then `done`
// with the whole answer and the request id.
inline void check_echoed_stream(const std::string& sse, const std::string& request_id) {
    INFO(sse);
    CHECK(sse.starts_with("event: delta\ndata: {\"content\":\"one\"}\n\n"));
    const auto done = sse.rfind("event: done\ndata: ");
    REQUIRE(done != std::string::npos);
    CHECK(sse.ends_with("\n\n"));
    const auto meta = nlohmann::json::parse(sse.substr(done + 18));
    CHECK(meta["content"] == "one two three");
    CHECK(meta["request_id"] == request_id);
}

} // namespace test_support
