// Real-shaped events for the Lambda tests (docs/protocols.md §6): API Gateway HTTP API payload 2.0 and
// Function URL events, as the Runtime API hands them out from /next.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace test_support {

// An API Gateway HTTP API payload 2.0 event, shaped like docs/protocols.md §6.1.
inline nlohmann::json gateway_event(const std::string& method, const std::string& raw_path, const std::string& query = "",
                                    std::optional<std::string> body = std::nullopt, nlohmann::json headers = nlohmann::json::object()) {
    headers["content-type"] = "application/json";
    headers["user-agent"] = "agent";
    nlohmann::json event = {
        {"version", "2.0"},
        {"routeKey", "$default"},
        {"rawPath", raw_path},
        {"rawQueryString", query},
        {"cookies", {"cookie1", "cookie2"}},
        {"headers", headers},
        {"pathParameters", {{"proxy", raw_path.substr(1)}}},
        {"stageVariables", {{"stageVariable1", "value1"}}},
        {"requestContext",
         {{"accountId", "123456789012"},
          {"apiId", "api-id"},
          {"domainName", "id.execute-api.us-east-1.amazonaws.com"},
          {"domainPrefix", "id"},
          {"http", {{"method", method}, {"path", raw_path}, {"protocol", "HTTP/1.1"}, {"sourceIp", "192.0.2.1"}, {"userAgent", "agent"}}},
          {"requestId", "id"},
          {"routeKey", "$default"},
          {"stage", "$default"},
          {"time", "12/Mar/2020:19:03:58 +0000"},
          {"timeEpoch", 1583348638390},
          {"authorizer", {{"jwt", {{"claims", {{"claim1", "value1"}}}, {"scopes", {"scope1"}}}}}}}},
        {"isBase64Encoded", false}};
    if (body) event["body"] = *body;
    return event;
}

// The same request as a Function URL delivers it (§6.3).
inline nlohmann::json function_url_event(const std::string& method, const std::string& raw_path, const std::string& body) {
    auto event = gateway_event(method, raw_path, "", body);
    event.erase("pathParameters");
    event.erase("stageVariables");
    event["requestContext"]["domainName"] = "abcdefg.lambda-url.us-east-1.on.aws";
    event["requestContext"]["domainPrefix"] = "abcdefg";
    event["requestContext"].erase("authorizer");
    return event;
}

} // namespace test_support
