// A client for AWS services that speak the JSON protocol (awsJson1_0 / awsJson1_1): DynamoDB,
// Secrets Manager and many more. Every call is `POST /` with `X-Amz-Target: Prefix.Operation`,
// a JSON body, and SigV4 over content-type, host, x-amz-date and x-amz-target, as botocore signs
// them. Errors come back as `{"__type": "...#Name", "message": "..."}`; throttling, 5xx and
// dropped connections are retried with backoff, as the SDKs do.
#pragma once

#include "chatkit/aws/credentials.hpp"
#include "chatkit/aws/sigv4.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/http.hpp"
#include "chatkit/httplib_client_pool.hpp"
#include "chatkit/retry.hpp"
#include "chatkit/upstream_health.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <strings.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace chatkit::aws {

// What tells one JSON-protocol service from another.
struct json_service {
    std::string name;          // for messages: "DynamoDB"
    std::string signing_name;  // SigV4 service name and endpoint prefix: "dynamodb"
    std::string target_prefix; // X-Amz-Target before the '.': "DynamoDB_20120810"
    std::string json_version;  // "1.0" or "1.1"
    std::string endpoint_env;  // AWS_ENDPOINT_URL_<this> overrides the endpoint: "DYNAMODB"
};

struct json_client_options {
    std::string region;   // empty: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region
    std::string endpoint; // empty: AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL, then the public endpoint
    std::chrono::milliseconds connect_timeout{3'000};
    std::chrono::milliseconds read_timeout{10'000};
    std::chrono::milliseconds deadline{20'000}; // one call, retries included
    retry_policy retries{.max_retries = 5, .first_delay = std::chrono::milliseconds{50}, .max_delay = std::chrono::milliseconds{2'000}};
    std::size_t max_idle_connections = 16;
};

// Error types the SDKs retry (botocore's retry model, standard mode).
inline bool retryable_error_type(std::string_view type) {
    static constexpr std::array<std::string_view, 16> retryable = {"Throttling",
                                                                   "ThrottlingException",
                                                                   "ThrottledException",
                                                                   "RequestThrottledException",
                                                                   "TooManyRequestsException",
                                                                   "ProvisionedThroughputExceededException",
                                                                   "TransactionInProgressException",
                                                                   "RequestLimitExceeded",
                                                                   "BandwidthLimitExceeded",
                                                                   "LimitExceededException",
                                                                   "RequestThrottled",
                                                                   "SlowDown",
                                                                   "PriorRequestNotComplete",
                                                                   "InternalServerError",
                                                                   "InternalFailure",
                                                                   "ServiceUnavailable"};
    return std::find(retryable.begin(), retryable.end(), type) != retryable.end() || type == "RequestTimeout" ||
           type == "RequestTimeoutException";
}

inline bool credentials_error_type(std::string_view type) {
    static constexpr std::array<std::string_view, 8> refused = {
        "UnrecognizedClientException",         "InvalidSignatureException",    "AccessDeniedException", "ExpiredTokenException",
        "MissingAuthenticationTokenException", "IncompleteSignatureException", "InvalidClientTokenId",  "ExpiredToken"};
    return std::find(refused.begin(), refused.end(), type) != refused.end();
}

// Calls are safe from any number of threads; connections are pooled and kept alive.
//
// Errors: `code` is the service's error type ("ConditionalCheckFailedException") for a modelled
// error, "upstream_credentials" when the credentials were refused or missing,
// "upstream_unreachable" / "upstream_timeout" for transport failures. Kinds: throttling that
// outlived its retries is `rate_limited`, an unreachable or failing service `unavailable`, a
// timeout `timeout`, anything the service refused as invalid `invalid_request`.
class json_client {
public:
    // Throws std::invalid_argument when no region can be found or the endpoint is unusable.
    json_client(json_service service, json_client_options options, environment env = process_environment())
        : s_(std::make_shared<shared>(std::move(service), std::move(options), std::move(env))) {}

    result<nlohmann::json> call(std::string_view operation, const nlohmann::json& input) {
        const std::string payload = dump_json(input);
        const std::string target = s_->service.target_prefix + "." + std::string{operation};
        const auto deadline = clock::now() + s_->options.deadline;
        auto answer = call_with_retries<nlohmann::json>(s_->options.retries, deadline, [&] { return attempt(target, payload, deadline); });
        s_->health.record(answer);
        return answer;
    }

    // Down when there are no credentials, or after three calls in a row could not reach the
    // service or were refused their credentials.
    [[nodiscard]] component_health health() {
        if (auto creds = s_->credentials.get(); !creds) return {false, creds.error().message};
        return s_->health.report(s_->region + " via " + s_->credentials.source());
    }

    [[nodiscard]] const std::string& region() const noexcept { return s_->region; }
    [[nodiscard]] const std::string& endpoint() const noexcept { return s_->endpoint.origin; }

private:
    using clock = std::chrono::steady_clock;

    struct shared {
        shared(json_service svc, json_client_options o, environment e)
            : service(std::move(svc)), options(std::move(o)), env(std::move(e)), credentials(env) {
            region = !options.region.empty() ? options.region : resolve_region(env).value_or("");
            if (region.empty())
                throw std::invalid_argument("no AWS region for " + service.name + ": set AWS_REGION (or AWS_DEFAULT_REGION)");
            endpoint = service_endpoint::parse(!options.endpoint.empty()
                                                   ? options.endpoint
                                                   : endpoint_override(env, service.endpoint_env)
                                                         .value_or("https://" + service.signing_name + "." + region + ".amazonaws.com"),
                                               service.name);
            content_type = "application/x-amz-json-" + service.json_version;
            pool.emplace(endpoint.origin,
                         httplib_client_options{options.connect_timeout, options.read_timeout, options.max_idle_connections});
        }
        json_service service;
        json_client_options options;
        environment env;
        credentials_provider credentials;
        std::string region, content_type;
        service_endpoint endpoint;
        std::optional<httplib_client_pool> pool;
        upstream_health health;
    };

    result<nlohmann::json, upstream_failure> attempt(const std::string& target, const std::string& payload, clock::time_point deadline) {
        auto& s = *s_;
        auto creds = s.credentials.get();
        if (!creds) {
            auto e = std::move(creds).error();
            e.kind = error_kind::unavailable;
            e.code = "upstream_credentials";
            return upstream_failure{std::move(e), false};
        }
        const auto sig = sign({.method = "POST",
                               .host = s.endpoint.host,
                               .path = "/",
                               .query = {},
                               .headers = {{"content-type", s.content_type}, {"x-amz-target", target}},
                               .body = payload},
                              *creds, s.region, s.service.signing_name, std::chrono::system_clock::now());
        httplib::Request req;
        req.method = "POST";
        req.path = "/";
        req.body = payload;
        req.set_header("Host", s.endpoint.host);
        req.set_header("Content-Type", s.content_type);
        req.set_header("X-Amz-Target", target);
        req.set_header("X-Amz-Date", sig.amz_date);
        req.set_header("Authorization", sig.authorization);
        if (!sig.security_token.empty()) req.set_header("X-Amz-Security-Token", sig.security_token);

        const auto x = s.pool->send(
            req, deadline, [](std::string_view) { return true; }, false);
        const std::string& name = s.service.name;
        if (!x.sent) {
            if (x.past_deadline || x.error == httplib::Error::ConnectionTimeout ||
                (x.error == httplib::Error::Read && x.took + std::chrono::milliseconds(50) >= s.options.read_timeout))
                return upstream_failure{{error_kind::timeout, name + " did not answer in time", "upstream_timeout"}, true};
            if (x.error == httplib::Error::SSLServerVerification)
                return upstream_failure{{error_kind::unavailable, name + "'s TLS certificate verification failed", "upstream_tls"}, false};
            return upstream_failure{{error_kind::unavailable,
                                     "cannot reach " + name + " at " + s.endpoint.origin + " (" + httplib::to_string(x.error) + ")",
                                     "upstream_unreachable"},
                                    true};
        }
        auto body = nlohmann::json::parse(x.body, nullptr, false);
        if (x.status == 200) {
            if (body.is_discarded())
                return upstream_failure{{error_kind::unavailable, name + " sent a malformed answer", "upstream_malformed"}, true};
            return body;
        }
        return classify(body, x.headers, x.status);
    }

    upstream_failure classify(const nlohmann::json& body, const httplib::Headers& headers, int status) const {
        std::string type, message;
        if (body.is_object()) {
            // Read by type: a field of another type is ignored, not an exception.
            const auto text = [&body](const char* key) {
                const auto it = body.find(key);
                return it != body.end() && it->is_string() ? it->get<std::string>() : std::string{};
            };
            type = text("__type");
            message = text("message");
            if (message.empty()) message = text("Message");
        }
        for (const auto& [k, v] : headers)
            if (type.empty() && strcasecmp(k.c_str(), "x-amzn-errortype") == 0) type = v;
        // "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException", or "Name:http://...".
        if (auto hash = type.rfind('#'); hash != std::string::npos) type.erase(0, hash + 1);
        if (auto colon = type.find(':'); colon != std::string::npos) type.erase(colon);

        const std::string& name = s_->service.name;
        const std::string text = name + " " + (type.empty() ? "HTTP " + std::to_string(status) : type) +
                                 (message.empty() ? std::string{} : ": " + message);
        if (credentials_error_type(type) || status == 401 || status == 403)
            return {{error_kind::unavailable, text, "upstream_credentials"}, false};
        if (type.find("Throttl") != std::string::npos || type == "ProvisionedThroughputExceededException" ||
            type == "RequestLimitExceeded" || type == "TooManyRequestsException" || type == "SlowDown" || status == 429)
            return {{error_kind::rate_limited, text, type}, true};
        if (retryable_error_type(type) || status >= 500)
            return {{error_kind::unavailable, text, type.empty() ? "upstream_error" : type}, status != 501};
        return {{error_kind::invalid_request, text, type.empty() ? "upstream_error" : type}, false};
    }

    std::shared_ptr<shared> s_; // shared: copies of a client share its pool and credentials
};

} // namespace chatkit::aws
