// The transport-neutral request and response the service speaks. Adapters (cpp-httplib, AWS
// Lambda, a user's own server) translate to and from these; the core never sees a socket.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/usage_limits.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace chatkit {

struct case_insensitive_less {
    using is_transparent = void;
    // ASCII only, as header names are; std::tolower consults the locale on every character.
    static constexpr unsigned char lower(unsigned char c) noexcept { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; }
    bool operator()(std::string_view a, std::string_view b) const noexcept {
        return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                            [](unsigned char x, unsigned char y) { return lower(x) < lower(y); });
    }
};

// Header names compare case-insensitively (RFC 9110 §5.1).
using header_map = std::map<std::string, std::string, case_insensitive_less>;

// Who sent a request, as an authenticating middleware (chatkit::api_key_auth) proved it: the id of
// the API key and of its team. Never filled from anything the client sends, so the rate limiter and
// the history can trust it. Empty when no such middleware runs (authentication off).
// The deployment's admin key (api_key_auth_options::admin_key_digest) is key_id "admin", no team
// (team_id empty), no limits, and `admin` set: what administration routes check.
struct caller_identity {
    std::string key_id{};
    std::string team_id{};
    // The key's and its team's limits, set with the identity from the authenticating middleware's
    // snapshot, for chatkit::key_rate_limits and chatkit::key_usage_limits to enforce without a
    // database read.
    usage_limits key_limits{};
    usage_limits team_limits{};
    // The deployment's admin key (CHAT_ADMIN_KEY): may administer keys and read any team's usage.
    bool admin = false;

    [[nodiscard]] bool authenticated() const noexcept { return !key_id.empty(); }
};

struct http_request {
    std::string method{}; // "GET", "POST", ...
    std::string path{};   // percent-decoded, without the query
    std::map<std::string, std::string, std::less<>> query{};
    header_map headers{};
    std::string body{};
    std::string remote_addr{}; // the peer, for per-client limits
    std::string request_id{};  // assigned by the request_id middleware (or the service when absent)
    caller_identity caller{};  // set by an authenticating middleware; empty when authentication is off

    [[nodiscard]] std::string_view header(std::string_view name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string_view{} : std::string_view{it->second};
    }
};

// What an access log wants to know about an answered request, without reading its body.
struct response_meta {
    std::string model{};
    token_usage usage{};
    bool cached = false;
    double time_to_first_token_ms = 0;
    std::string error_code{};                                 // an error answer's code ("invalid_value", "upstream_error", ...)
    std::optional<double> cost_usd{};                         // at the service's prices; empty: unpriced or nothing used
    double upstream_ms = 0;                                   // time spent waiting on the provider (for Server-Timing)
    std::string finish_reason{};                              // the answer's ("stop", "length", ...); empty when none
    std::chrono::steady_clock::time_point upstream_started{}; // when the provider call began; none: no call
    std::string
        provider{}; // the provider that answered (`x-chatkit-provider`), or a router's member that failed last (for the log); empty: none (a cache hit)
};

// What a middleware's `finish` learns about a request once its last byte has been sent (or the
// request was abandoned): the final usage of a stream included.
struct response_summary {
    int status = 0;
    std::string model{};
    token_usage usage{};
    bool cached = false;
    bool streamed = false;
    std::size_t bytes_sent = 0;        // body bytes handed to the transport
    double time_to_first_token_ms = 0; // streams: when the first delta was sent; else the latency
    double duration_ms = 0;            // from the request's arrival to its last byte
    bool client_left = false;          // the client went away before the answer was complete
    std::string error_code{};          // the error's code when the answer is (or a stream ended in) an error
    std::string provider{};            // the provider's name, for usage records
    std::optional<double> cost_usd{};  // the answer's cost at the service's prices (0 for a cache hit);
                                       // empty when unpriced or when nothing was used
    bool usage_estimated = false;      // the usage is counted from the text delivered, not reported by
                                       // the provider (a stream the client left, or that failed midway)
    double upstream_ms = 0;            // of duration_ms, the time spent waiting on the provider: the
                                       // rest is the gateway's own overhead
    std::string finish_reason{};       // the answer's ("stop", "length", "tool_calls", ...); empty when none
    // When the provider call began (with upstream_ms, a trace's upstream span); none when there
    // was no call (a cache hit, a refusal).
    std::chrono::steady_clock::time_point upstream_started{};
};

// What an adapter calls for the requests it answers itself (malformed HTTP, limits), which never
// reach the service and its middlewares' `finish`.
using adapter_log = std::function<void(const http_request&, const response_summary&)>;

// Writes one chunk of a streamed body; false once the client is gone, so the producer stops.
using chunk_writer = std::function<bool(std::string_view)>;

struct http_response {
    int status = 200;
    header_map headers{};
    std::string body{};
    // When set, the body is produced by this call, chunk by chunk (Server-Sent Events); the adapter
    // runs it after sending the status and headers. It fills `meta` as it learns the usage.
    std::function<void(const chunk_writer&, response_meta&)> stream{};
    response_meta meta{};

    [[nodiscard]] bool is_stream() const noexcept { return static_cast<bool>(stream); }
};

// A JSON answer whose body is already written (chatkit/json_text.hpp).
[[nodiscard]] inline http_response json_text_response(int status, std::string body) {
    http_response res;
    res.status = status;
    res.headers.emplace("Content-Type", "application/json");
    res.body = std::move(body);
    return res;
}
[[nodiscard]] inline http_response json_response(int status, const nlohmann::json& body) {
    return json_text_response(status, dump_json(body));
}

// Every error leaves as the OpenAI envelope plus the request id, with the matching status.
[[nodiscard]] inline http_response error_response(const error& e, std::string_view request_id) {
    auto body = to_envelope(e);
    body["request_id"] = request_id;
    auto res = json_response(http_status(e.kind), body);
    res.meta.error_code = e.code;
    if (e.retry_after_seconds) res.headers["Retry-After"] = std::to_string(*e.retry_after_seconds);
    return res;
}

} // namespace chatkit
