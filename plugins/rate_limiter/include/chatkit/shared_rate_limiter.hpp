// A Middleware that limits each client to N requests per period on counters in a
// chatkit::counter_store that every replica shares (Redis, a DynamoDB table), so CHAT_RATE_LIMIT's
// 60 per minute is 60 for the fleet, not 60 per replica. It answers a client as
// chatkit::rate_limiter does (the same client names, 429 with Retry-After, X-RateLimit-* headers);
// what differs is how it counts (requirement 2).
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/counter_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/rate_limiter.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace chatkit {

struct shared_rate_limiter_options {
    // Wall-clock time: every replica must agree on which window it is. Tests set their own.
    std::function<unix_ms()> clock = now_unix_ms;
    // When the store cannot be reached: false answers 503 `limits_unavailable`; true counts in
    // this process until it can be reached (each replica then enforces the limit alone).
    bool fall_back_to_local = false;
    // Each check that fell back, with the store's error: to count it and to log it, throttled.
    std::function<void(const error&)> on_fallback{};
};

/// One client's count in a fixed window of a rate limit, on a shared counter store: the counter to
/// take, and what its value means for the answer. chatkit::shared_rate_limiter takes it alone;
/// chatkit::shared_key_limits takes it with a key's and team's limits, in the same round trip.
class client_window {
public:
    // Whether and how the client was counted, for the X-RateLimit-* headers.
    struct standing {
        bool counted = false; // false for exempt requests: no headers
        std::int64_t remaining = 0;
        std::int64_t reset_seconds = 0;
    };

    // The window of `limit` that holds `now`, for the client of `req` (rate_limited::client).
    client_window(const http_request& req, const rate_limit& limit, unix_ms now) : limit_(limit), now_(now) {
        const unix_ms period = std::chrono::duration_cast<std::chrono::milliseconds>(limit.per).count();
        const std::int64_t window = now / period;
        end_ = (window + 1) * period;
        add_ = {counter_name(rate_limited::client(req), limit, window), 1, limit.requests, end_ + period};
    }

    [[nodiscard]] const counter_add& counter() const noexcept { return add_; }

    // The client's standing once the store answered with the counter's `value` (after the add, or
    // the value that refused it), and the refusal when it did not fit.
    std::optional<error> note(standing& s, bool taken, std::int64_t value) const {
        s.counted = true;
        s.remaining = std::max<std::int64_t>(limit_.requests - value, 0);
        s.reset_seconds = (std::max<unix_ms>(end_ - now_, 0) + 999) / 1000;
        if (taken) return std::nullopt;
        const std::int64_t retry = std::clamp<std::int64_t>(s.reset_seconds, 1, 366LL * 24 * 3600);
        return error{error_kind::rate_limited,
                     "rate limit of " + limit_.to_string() + " exceeded; retry in " + std::to_string(retry) + " s", "rate_limit_exceeded",
                     "", static_cast<int>(retry)};
    }

    static void report(const standing& s, const rate_limit& limit, http_response& res) {
        if (!s.counted) return;
        res.headers["X-RateLimit-Limit"] = std::to_string(limit.requests);
        res.headers["X-RateLimit-Remaining"] = std::to_string(s.remaining);
        res.headers["X-RateLimit-Reset"] = std::to_string(s.reset_seconds);
    }

    // Throws std::invalid_argument for a limit of 0 requests, or a period under a second or over a year.
    static rate_limit checked(rate_limit limit) {
        if (limit.requests < 1) throw std::invalid_argument("chatkit: a shared rate limit must allow 1 request or more");
        if (limit.per < std::chrono::seconds{1} || limit.per > std::chrono::hours{24 * 366})
            throw std::invalid_argument("chatkit: a shared rate limit's period must be from 1 second to 1 year");
        return limit;
    }

private:
    // "client#ip:10.0.0.7#60#29512345": the period and the window are in the name, so each window is
    // a new counter that the store forgets after it (the Counter store's requirement 3), and two
    // limits with different periods never share one. A key the client sends is replaced by its
    // FNV-1a hash (64 bits: collisions between clients are negligible, and the name does not give
    // the key back), so a Redis or a table never holds a caller's secret.
    static std::string counter_name(const std::string& client, const rate_limit& limit, std::int64_t window) {
        std::string name = "client#";
        if (client.starts_with("key:")) {
            std::uint64_t h = 14695981039346656037ULL;
            for (const unsigned char c : client) h = (h ^ c) * 1099511628211ULL;
            static constexpr char digits[] = "0123456789abcdef";
            name += "keyhash:";
            for (int shift = 60; shift >= 0; shift -= 4) name += digits[(h >> shift) & 0xF];
        } else {
            name += client;
        }
        name += '#' + std::to_string(limit.per.count()) + '#' + std::to_string(window);
        return name;
    }

    rate_limit limit_;
    unix_ms now_ = 0, end_ = 0;
    counter_add add_{};
};

/// Requirements this middleware meets, and why:
///   1. One limit for the fleet: each counted request is one conditional add in the shared store
///      (the Counter store's requirement 1), so 40 concurrent requests against 10 per minute let
///      exactly 10 through however many replicas they reach.
///   2. Fixed windows aligned to the epoch (a per-minute limit counts UTC calendar minutes): a
///      token bucket, what chatkit::rate_limiter keeps in memory, needs a read-modify-write that
///      replicas would race on, where a window is one conditional add. The price: up to twice the
///      limit can pass across a window's boundary, never more than the limit inside one.
///   3. The clients of chatkit::rate_limiter (chatkit::rate_limited::client): the authenticated key,
///      else the key the client sends, else its address; GET /health is never counted. A key the
///      client sends is stored as a hash (client_window), so a Redis or a table never holds a
///      caller's secret.
///   4. The store unreachable: 503 `limits_unavailable` with Retry-After, or with
///      `fall_back_to_local`, the same windows counted in this process until it is back.
///   5. Never on an event loop: a check is a network round trip, so `blocks()` is true for every
///      counted request and the service runs the hooks on its worker pool.
/// With API keys, chatkit::shared_key_limits can count the client instead (its `client_limit`),
/// in the same round trip as the key's and team's limits.
template <counter_store Counters>
class shared_rate_limiter {
public:
    using context = client_window::standing;

    // Throws std::invalid_argument for a limit of 0 requests, or a period under a second or over a year.
    shared_rate_limiter(std::shared_ptr<Counters> counters, rate_limit limit, shared_rate_limiter_options options = {})
        : counters_(std::move(counters)), limit_(client_window::checked(limit)), options_(std::move(options)) {}

    [[nodiscard]] bool blocks(const http_request& req) const noexcept { return !rate_limited::exempt(req); }

    std::optional<http_response> before(http_request& req, context& ctx) {
        if (rate_limited::exempt(req)) return std::nullopt;
        const client_window window{req, limit_, options_.clock()};
        auto taken = counters_->take({&window.counter(), 1});
        if (!taken && options_.fall_back_to_local) {
            if (options_.on_fallback) options_.on_fallback(taken.error());
            taken = local_->take({&window.counter(), 1});
        }
        if (!taken)
            return error_response(
                error{error_kind::unavailable,
                      "the shared rate limit cannot be checked right now (" + taken.error().message + "); try again shortly",
                      "limits_unavailable", "", 1},
                req.request_id);
        if (auto refused = window.note(ctx, taken->taken, taken->values.empty() ? 0 : taken->values.front()))
            return error_response(*refused, req.request_id);
        return std::nullopt;
    }

    void after(const http_request&, http_response& res, context& ctx) { client_window::report(ctx, limit_, res); }

    [[nodiscard]] const rate_limit& limit() const noexcept { return limit_; }

private:
    std::shared_ptr<Counters> counters_;
    std::shared_ptr<memory_counter_store> local_ = std::make_shared<memory_counter_store>(); // requirement 4's fallback
    rate_limit limit_;
    shared_rate_limiter_options options_;
};

static_assert(middleware<shared_rate_limiter<memory_counter_store>>);
static_assert(middleware_may_block<shared_rate_limiter<memory_counter_store>>);

} // namespace chatkit
