// A Middleware that enforces the requests-per-minute limits of API keys and of their teams (issue
// 12, step 2). It runs after chatkit::api_key_auth, which puts the key's and the team's limits on
// the request (http_request::caller), so no request reads the database. A request must fit both
// the key's bucket and its team's bucket (shared by all the team's keys); it is answered 429 with
// Retry-After otherwise, and every counted answer carries OpenAI's x-ratelimit-*-requests headers.
// Tokens per minute and budgets are chatkit::key_usage_limits' (they need the parsed request).
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/limit_terms.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/minute_bucket.hpp"
#include "chatkit/null_mutex.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

namespace chatkit {

/// Requirements this middleware meets, and why:
///   1. Exact under concurrency: checking and taking from the key's and the team's bucket happen
///      under one lock, so 50 concurrent requests against a limit of 10 let exactly 10 through. The
///      lock is held for a few map look-ups, never across I/O.
///   2. All or nothing: a request refused by one bucket takes nothing from the other, so a team
///      that is out of requests does not also drain its keys (and the reverse).
///   3. The buckets follow the snapshot: a limit changed on the command line applies from the
///      request after the next refresh; the time until the bucket is full again is kept, cut to
///      the new bucket's size. A key or team with no limit has no bucket and is never refused.
///   4. No secret in an answer: a 429 names the key by its id and the team by its id, never the key.
/// The buckets are continuously refilled token buckets (kept as GCRA, in integer time like
/// chatkit::rate_limiter): capacity the limit, refilled at limit/60 per second. One bucket per key
/// id and per team id; their number is bounded by the keys in the directory.
template <class Mutex = std::mutex, class Clock = std::chrono::steady_clock>
class key_rate_limits {
public:
    // What before() decided, for after() to report: the tighter of the two buckets.
    struct context {
        bool counted = false; // false when neither limit is set (or no key): no headers
        std::int64_t limit = 0;
        std::int64_t remaining = 0;
        std::chrono::nanoseconds reset{}; // until that bucket is full again
    };

    key_rate_limits() : state_(std::make_unique<state>()) {}
    // A moved-from middleware may only be destroyed or assigned to.
    key_rate_limits(key_rate_limits&&) noexcept = default;
    key_rate_limits& operator=(key_rate_limits&&) noexcept = default;

    std::optional<http_response> before(http_request& req, context& ctx) {
        const caller_identity& caller = req.caller;
        // Unauthenticated requests are the open paths (/health, /ready): never limited.
        if (!caller.authenticated()) return std::nullopt;
        const auto key_limit = minute_bucket::positive(caller.key_limits.requests_per_minute);
        const auto team_limit = minute_bucket::positive(caller.team_limits.requests_per_minute);
        if (!key_limit && !team_limit) return std::nullopt;
        const nanos now = std::chrono::duration_cast<nanos>(Clock::now().time_since_epoch());

        decision key{}, team{};
        {
            state& s = *state_;
            std::lock_guard lock{s.mutex};
            minute_bucket* kb = key_limit ? &s.bucket_for(s.keys, caller.key_id, *key_limit, now) : nullptr;
            minute_bucket* tb = team_limit ? &s.bucket_for(s.teams, caller.team_id, *team_limit, now) : nullptr;
            if (kb) key = look(*kb, now);
            if (tb) team = look(*tb, now);
            if ((!kb || key.allowed) && (!tb || team.allowed)) { // requirement 2: take from both or neither
                if (kb) key = take(*kb, now);
                if (tb) team = take(*tb, now);
            }
        }

        // The tighter bucket is the one with fewer requests left (the smaller limit on a tie).
        const bool report_team = team_limit && (!key_limit || team.remaining < key.remaining ||
                                                (team.remaining == key.remaining && *team_limit < *key_limit));
        const decision& shown = report_team ? team : key;
        ctx.counted = true;
        ctx.limit = report_team ? *team_limit : *key_limit;
        ctx.remaining = shown.remaining;
        ctx.reset = shown.reset;

        const bool key_refused = key_limit && !key.allowed;
        const bool team_refused = team_limit && !team.allowed;
        if (!key_refused && !team_refused) return std::nullopt;
        // Retry when every refusing bucket has a token again.
        const nanos wait = std::max(key_refused ? key.retry : nanos::zero(), team_refused ? team.retry : nanos::zero());
        std::string refused;
        if (key_refused) refused = limit_terms::requests_allowed(limit_terms::owner(true, caller), *key_limit);
        if (key_refused && team_refused) refused += ", and ";
        if (team_refused) refused += limit_terms::requests_allowed(limit_terms::owner(false, caller), *team_limit);
        return error_response(limit_terms::requests_refusal(refused, limit_terms::retry_seconds(wait)), req.request_id);
    }

    void after(const http_request&, http_response& res, context& ctx) {
        if (!ctx.counted) return;
        res.headers["x-ratelimit-limit-requests"] = std::to_string(ctx.limit);
        res.headers["x-ratelimit-remaining-requests"] = std::to_string(ctx.remaining);
        res.headers["x-ratelimit-reset-requests"] = openai_duration(ctx.reset);
    }

private:
    using nanos = std::chrono::nanoseconds;

    struct decision {
        bool allowed = true;
        std::int64_t remaining = 0; // requests left after this one (when taken)
        nanos reset{};              // until the bucket is full again
        nanos retry{};              // until one request fits (when refused)
    };

    static decision look(const minute_bucket& b, nanos now) {
        const nanos wait = b.wait_for(1, now);
        return {wait == nanos::zero(), b.remaining(now), b.debt(now), wait};
    }
    static decision take(minute_bucket& b, nanos now) {
        b.take(1, now);
        decision d = look(b, now); // what is left after this request, which was allowed
        d.allowed = true;
        d.retry = nanos::zero();
        return d;
    }

    struct state {
        Mutex mutex;
        std::unordered_map<std::string, minute_bucket> keys;  // key id -> its bucket
        std::unordered_map<std::string, minute_bucket> teams; // team id -> its bucket

        // The bucket of `id`, created full, or resized when its limit changed (requirement 3).
        minute_bucket& bucket_for(std::unordered_map<std::string, minute_bucket>& buckets, const std::string& id, std::int64_t limit,
                                  nanos now) {
            auto [it, created] = buckets.try_emplace(id);
            if (created) it->second = minute_bucket::full(limit, now);
            else if (it->second.limit != limit) it->second.change_limit(limit, now);
            return it->second;
        }
    };

    std::unique_ptr<state> state_;
};

using key_rate_limits_mt = key_rate_limits<std::mutex>;
using key_rate_limits_st = key_rate_limits<null_mutex>;
static_assert(middleware<key_rate_limits_mt>);
static_assert(middleware<key_rate_limits_st>);

} // namespace chatkit
