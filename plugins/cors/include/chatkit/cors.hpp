// A Middleware that lets web pages on other origins call the API (Cross-Origin Resource Sharing,
// the Fetch standard's CORS protocol): it answers browsers' preflight OPTIONS requests and marks
// the answers to allowed origins as readable by them. Off unless origins are configured.
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

struct cors_options {
    // Exact origins ("https://app.example.com", scheme, host and port as a browser sends them), or
    // "*" for any. Empty: no cross-origin access (the middleware adds nothing).
    std::vector<std::string> origins{};
    // Request headers a page may send. Authorization must be named: a "*" here does not cover it.
    std::vector<std::string> headers{"Authorization", "Content-Type", "X-Api-Key", "X-Request-ID"};
    // How long a browser may reuse a preflight's answer.
    std::chrono::seconds max_age{600};
    // Response headers a page may read beyond the CORS-safelisted ones: the request id, the
    // timing, the limits' state, the cache's verdict, the provider that answered.
    std::vector<std::string> expose{"X-Request-ID",
                                    "Server-Timing",
                                    "Retry-After",
                                    "X-Cache",
                                    "x-chatkit-provider",
                                    "x-ratelimit-limit-requests",
                                    "x-ratelimit-remaining-requests",
                                    "x-ratelimit-reset-requests",
                                    "x-ratelimit-limit-tokens",
                                    "x-ratelimit-remaining-tokens",
                                    "x-ratelimit-reset-tokens"};

    /// The origins of a comma list ("https://a.example, https://b.example" or "*"), each checked:
    /// an origin is scheme://host[:port], nothing after. An error names the one that is not.
    static result<std::vector<std::string>> parse_origins(std::string_view list) {
        std::vector<std::string> out;
        for (auto& item : split(list)) {
            if (item != "*" && !is_origin(item))
                return error{error_kind::invalid_request,
                             "'" + item + "' is not an origin: write scheme://host[:port] with nothing after (or *)", "invalid_origin"};
            out.push_back(std::move(item));
        }
        return out;
    }
    /// The items of a comma list, trimmed, empty ones left out.
    static std::vector<std::string> split(std::string_view list) {
        std::vector<std::string> out;
        while (!list.empty()) {
            const auto comma = list.find(',');
            std::string_view item = list.substr(0, comma);
            list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
            while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
            while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
            if (!item.empty()) out.emplace_back(item);
        }
        return out;
    }

private:
    static bool is_origin(std::string_view o) {
        const auto scheme = o.find("://");
        if (scheme == std::string_view::npos || scheme == 0) return false;
        const auto host = o.substr(scheme + 3);
        return !host.empty() && host.find_first_of("/?#@ ") == std::string_view::npos;
    }
};

/// Requirements this middleware meets, and why:
///   1. Preflights are answered before authentication: a browser sends them without the page's
///      Authorization header, so they must not need a key. An allowed origin's preflight gets 204
///      with the Access-Control-Allow-* headers; another's gets 403 with a JSON error (the
///      browser then refuses the call, and a person testing with curl sees why).
///   2. Only allowed origins get Access-Control-Allow-Origin, always with `Vary: Origin`, so a
///      shared cache never hands one origin's answer to another. With "*" the header is "*":
///      pages send keys in a header, not cookies, so no credentials mode is needed.
///   3. Errors are readable too: `after` marks every answer of an allowed origin, a 401 or a 429
///      included, so the page can show the error instead of an opaque CORS failure.
///   4. A request without Origin (not from a browser page, or same-origin) is untouched.
class cors {
public:
    struct context {
        std::string allow_origin{}; // empty: not a cross-origin request of an allowed origin
    };

    explicit cors(cors_options options = {}) : options_(std::move(options)) {
        allow_headers_ = join(options_.headers);
        expose_headers_ = join(options_.expose);
    }

    std::optional<http_response> before(http_request& req, context& ctx) {
        const std::string_view origin = req.header("Origin");
        if (origin.empty() || options_.origins.empty()) return std::nullopt;
        const bool allowed = allows(origin);
        if (req.method == "OPTIONS" && !req.header("Access-Control-Request-Method").empty()) {
            if (!allowed)
                return error_response(
                    error{error_kind::permission_denied, "origin " + std::string{origin} + " may not call this API", "origin_not_allowed"},
                    req.request_id);
            http_response res;
            res.status = 204;
            res.headers["Access-Control-Allow-Origin"] = allow_origin(origin);
            res.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS";
            res.headers["Access-Control-Allow-Headers"] = allow_headers_;
            res.headers["Access-Control-Max-Age"] = std::to_string(options_.max_age.count());
            res.headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
            return res;
        }
        if (allowed) ctx.allow_origin = allow_origin(origin);
        return std::nullopt;
    }

    void after(const http_request&, http_response& res, context& ctx) {
        if (ctx.allow_origin.empty()) return; // not cross-origin, not allowed, or a preflight (answered whole in before)
        res.headers["Access-Control-Allow-Origin"] = ctx.allow_origin;
        res.headers["Access-Control-Expose-Headers"] = expose_headers_;
        auto& vary = res.headers["Vary"];
        vary = vary.empty() ? "Origin" : vary + ", Origin";
    }

private:
    bool allows(std::string_view origin) const {
        return std::any_of(options_.origins.begin(), options_.origins.end(),
                           [origin](const std::string& o) { return o == "*" || o == origin; });
    }
    std::string allow_origin(std::string_view origin) const {
        const bool any = std::find(options_.origins.begin(), options_.origins.end(), "*") != options_.origins.end();
        return any ? std::string{"*"} : std::string{origin};
    }
    static std::string join(const std::vector<std::string>& items) {
        std::string out;
        for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
        return out;
    }

    cors_options options_;
    std::string allow_headers_, expose_headers_;
};
static_assert(middleware<cors>);

} // namespace chatkit
