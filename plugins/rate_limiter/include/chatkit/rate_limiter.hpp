// A Middleware that limits each client (its authenticated key, else the API key it sends, else its
// address) to N requests per period with a continuously refilled token bucket, answers 429 with
// Retry-After when the bucket is empty, and reports the client's standing in X-RateLimit-* headers.
// GET /health is never limited.
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/null_mutex.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

namespace chatkit {

struct rate_limit {
    std::uint32_t requests = 60;
    std::chrono::seconds per{60};

    // "N/second", "N/minute" or "N/hour" ("s", "sec", "m", "min", "h" too), N >= 1, nothing around.
    [[nodiscard]] static std::optional<rate_limit> parse(std::string_view text) {
        const auto slash = text.find('/');
        if (slash == std::string_view::npos) return std::nullopt;
        const std::string_view count = text.substr(0, slash);
        const std::string_view unit = text.substr(slash + 1);
        std::uint32_t n = 0;
        const auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), n);
        if (count.empty() || ec != std::errc{} || end != count.data() + count.size() || n < 1) return std::nullopt;
        if (unit == "second" || unit == "sec" || unit == "s") return rate_limit{n, std::chrono::seconds{1}};
        if (unit == "minute" || unit == "min" || unit == "m") return rate_limit{n, std::chrono::minutes{1}};
        if (unit == "hour" || unit == "h") return rate_limit{n, std::chrono::hours{1}};
        return std::nullopt;
    }

    // "60/minute"; a period that is not a second, minute or hour shows as seconds ("10/30s").
    [[nodiscard]] std::string to_string() const {
        const std::string n = std::to_string(requests) + "/";
        if (per == std::chrono::seconds{1}) return n + "second";
        if (per == std::chrono::minutes{1}) return n + "minute";
        if (per == std::chrono::hours{1}) return n + "hour";
        return n + std::to_string(per.count()) + "s";
    }

    friend bool operator==(const rate_limit&, const rate_limit&) = default;
};

/// The name a rate limiter counts a request's client under, and whether it is counted at all; the
/// local limiter (chatkit::rate_limiter) and the fleet's (chatkit::shared_rate_limiter) agree on both.
namespace rate_limited {

/// GET /health is never limited: a load balancer's probe must not use up a client's requests.
[[nodiscard]] inline bool exempt(const http_request& req) { return req.path == "/health" && (req.method == "GET" || req.method == "HEAD"); }

/// API keys are cut to this length when used as a client's name, bounding each bucket's size.
inline constexpr std::size_t max_key_bytes = 256;

namespace detail {
inline bool iequals(std::string_view a, std::string_view b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                      [](unsigned char x, unsigned char y) { return std::tolower(x) == std::tolower(y); });
}
inline std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}
} // namespace detail

/// The authenticated key when an authenticating middleware ran before the limiter (req.caller: a
/// client cannot invent it, so inventing keys cannot dodge the limit). Without authentication,
/// the API key the client sends (Authorization: Bearer, X-API-Key, or Azure's api-key), else the
/// peer address. The prefixes ("id:", "key:", "ip:") keep the three from ever naming the same client.
[[nodiscard]] inline std::string client(const http_request& req) {
    if (req.caller.authenticated()) return "id:" + req.caller.key_id;
    std::string_view key;
    // The auth scheme is case-insensitive (RFC 9110 §11.1).
    if (auto auth = detail::trim(req.header("Authorization")); auth.size() > 7 && detail::iequals(auth.substr(0, 7), "bearer "))
        key = detail::trim(auth.substr(7));
    if (key.empty()) key = detail::trim(req.header("X-API-Key"));
    if (key.empty()) key = detail::trim(req.header("api-key"));
    if (key.empty()) return "ip:" + req.remote_addr;
    return "key:" + std::string{key.substr(0, max_key_bytes)};
}

} // namespace rate_limited

template <class Mutex = std::mutex, class Clock = std::chrono::steady_clock>
class rate_limiter {
public:
    // Past this many tracked clients the ones closest to a full bucket are forgotten (which only
    // ever lets them through sooner), so a flood of distinct clients cannot exhaust memory.
    static constexpr std::size_t default_max_clients = 100'000;
    static constexpr std::size_t max_key_bytes = rate_limited::max_key_bytes;

    // What before() decided, for after() to report.
    struct context {
        bool counted = false; // false for exempt requests: no headers
        std::uint32_t remaining = 0;
        std::int64_t reset_seconds = 0;
    };

    // Throws std::invalid_argument for a limit of 0 requests, or a period under a second or over a year.
    explicit rate_limiter(rate_limit limit, std::size_t max_clients = default_max_clients)
        : limit_(checked(limit)), state_(std::make_unique<state>()) {
        // Whole nanoseconds per token, floored; the bucket then holds exactly `requests` of them.
        interval_ = std::max(nanos{1}, nanos{std::chrono::duration_cast<nanos>(limit_.per).count() / limit_.requests});
        window_ = interval_ * limit_.requests;
        max_clients_ = std::max<std::size_t>(max_clients, 1);
        state_->sweep_at = std::min(max_clients_, min_sweep);
    }
    // A moved-from limiter may only be destroyed or assigned to.
    rate_limiter(rate_limiter&&) noexcept = default;
    rate_limiter& operator=(rate_limiter&&) noexcept = default;

    std::optional<http_response> before(http_request& req, context& ctx) {
        if (rate_limited::exempt(req)) return std::nullopt;
        std::string client = rate_limited::client(req);
        const nanos now = std::chrono::duration_cast<nanos>(Clock::now().time_since_epoch());

        // The bucket is kept as the time it will be full again (GCRA, the token bucket in integer
        // time): `due - now` is the debt, and the tokens left are (window - debt) / interval.
        nanos debt{};
        bool allowed = false;
        {
            state& s = *state_;
            std::lock_guard lock{s.mutex};
            auto found = s.buckets.find(client);
            if (found == s.buckets.end()) {
                if (s.buckets.size() >= s.sweep_at) sweep(s, now);
                found = s.buckets.emplace(std::move(client), now).first;
            }
            nanos& due = found->second;
            debt = std::max(due - now, nanos::zero());
            allowed = debt + interval_ <= window_;
            if (allowed) {
                debt += interval_;
                due = now + debt;
            }
        }

        ctx.counted = true;
        ctx.remaining = static_cast<std::uint32_t>((window_ - std::min(debt, window_)) / interval_);
        ctx.reset_seconds = ceil_seconds(debt);
        if (allowed) return std::nullopt;

        const std::int64_t retry = std::clamp<std::int64_t>(ceil_seconds(debt + interval_ - window_), 1, std::numeric_limits<int>::max());
        return error_response(error{error_kind::rate_limited,
                                    "rate limit of " + limit_.to_string() + " exceeded; retry in " + std::to_string(retry) + " s",
                                    "rate_limit_exceeded", "", static_cast<int>(retry)},
                              req.request_id);
    }

    void after(const http_request&, http_response& res, context& ctx) {
        if (!ctx.counted) return;
        res.headers["X-RateLimit-Limit"] = std::to_string(limit_.requests);
        res.headers["X-RateLimit-Remaining"] = std::to_string(ctx.remaining);
        res.headers["X-RateLimit-Reset"] = std::to_string(ctx.reset_seconds);
    }

    [[nodiscard]] const rate_limit& limit() const noexcept { return limit_; }

    // Clients currently tracked; buckets full again are dropped lazily, when the map grows.
    [[nodiscard]] std::size_t clients() const {
        const state& s = *state_;
        std::lock_guard lock{s.mutex};
        return s.buckets.size();
    }

private:
    using nanos = std::chrono::nanoseconds;
    static constexpr std::size_t min_sweep = 1024;

    struct state {
        mutable Mutex mutex;
        std::unordered_map<std::string, nanos> buckets; // client -> when its bucket is full again
        std::size_t sweep_at = min_sweep;               // map size that triggers the next sweep
    };

    static rate_limit checked(rate_limit limit) {
        if (limit.requests < 1) throw std::invalid_argument("chatkit::rate_limiter: the limit must allow 1 request or more");
        // The upper bound keeps every time computed in nanoseconds far from overflow.
        if (limit.per < std::chrono::seconds{1} || limit.per > std::chrono::hours{24 * 366})
            throw std::invalid_argument("chatkit::rate_limiter: the period must be from 1 second to 1 year");
        return limit;
    }

    static std::int64_t ceil_seconds(nanos d) { return std::chrono::ceil<std::chrono::seconds>(d).count(); }

    // Drops buckets that are full again, which behave exactly like a client never seen. If that is
    // not enough, keeps only the most indebted 3/4 of max_clients. The next sweep waits until the
    // map has doubled, so the cost per request stays constant.
    void sweep(state& s, nanos now) {
        std::erase_if(s.buckets, [now](const auto& bucket) { return bucket.second <= now; });
        const std::size_t keep = max_clients_ - std::max<std::size_t>(1, max_clients_ / 4); // room for the newcomer
        if (s.buckets.size() > keep) {
            std::vector<nanos> dues;
            dues.reserve(s.buckets.size());
            for (const auto& bucket : s.buckets) dues.push_back(bucket.second);
            const auto cut = dues.begin() + static_cast<std::ptrdiff_t>(dues.size() - keep);
            std::nth_element(dues.begin(), cut, dues.end());
            const nanos threshold = *cut; // drop every bucket due before it, and ties as needed
            std::size_t excess = s.buckets.size() - keep;
            for (auto it = s.buckets.begin(); it != s.buckets.end() && excess > 0;) {
                if (it->second < threshold) {
                    it = s.buckets.erase(it);
                    --excess;
                } else {
                    ++it;
                }
            }
            for (auto it = s.buckets.begin(); it != s.buckets.end() && excess > 0;) {
                if (it->second == threshold) {
                    it = s.buckets.erase(it);
                    --excess;
                } else {
                    ++it;
                }
            }
        }
        s.sweep_at = std::min(max_clients_, std::max(min_sweep, 2 * s.buckets.size()));
    }

    rate_limit limit_;
    nanos interval_{}; // time to earn one token
    nanos window_{};   // time to refill an empty bucket: the bucket's capacity, in time
    std::size_t max_clients_ = default_max_clients;
    std::unique_ptr<state> state_;
};

using rate_limiter_mt = rate_limiter<std::mutex>;
using rate_limiter_st = rate_limiter<null_mutex>;
static_assert(middleware<rate_limiter_mt>);
static_assert(middleware<rate_limiter_st>);

} // namespace chatkit
