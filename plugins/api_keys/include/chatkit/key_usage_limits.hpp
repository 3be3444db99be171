// A Middleware that enforces the tokens-per-minute limits and the USD budgets of API keys and of
// their teams. It runs after chatkit::api_key_auth, which puts the limits on the request
// (http_request::caller). A chat request reserves its worst case in `admit` (once the service has
// parsed it): its prompt-token bound plus max_tokens, and that many tokens at the model's price.
// `finish` settles the reservation with the usage the answer really had, so what an answer did
// not use is given back.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/limit_terms.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/minute_bucket.hpp"
#include "chatkit/null_mutex.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

namespace chatkit {

struct key_usage_limits_options {
    // What a key or team had spent in its current period before this process started (a restart
    // must not reset a budget): called once per key or team and period, on the first request that
    // needs it, with "key" or "team", the id and the period's start. None: spending starts at 0.
    // It runs under the middleware's lock, so it should be quick (a usage store's indexed sum).
    // Empty when it cannot tell (the store is down): the request is then refused with 503, rather
    // than let through against a budget whose spending is unknown, and the next one asks again.
    std::function<std::optional<double>(std::string_view scope, const std::string& id, unix_ms period_start)> spent_before{};
};

/// Requirements this middleware meets, and why:
///   1. Exact under concurrency: a request reserves its worst case from the key's and the team's
///      token bucket and budget under one lock, all four or none, so concurrent requests can never
///      overshoot a limit (a request must fit what is left after every reservation in flight).
///   2. Nothing overspent by a cent while answers stay within their bounds: money is counted in
///      integer micro-dollars, reservations rounded up, so rounding never lets a request through
///      that would not fit.
///   3. What was not used is given back: `finish` returns the difference between the reservation
///      and the real usage, from a stream too (its final usage, or the estimate the service bills
///      an abandoned stream with). A refused or failed request gives everything back.
///   4. A budgeted key cannot use an unpriced model (403 `model_not_priced`): its cost could not
///      be counted, and reporting it as $0 would let it spend without limit.
///   5. Cache hits cost nothing: the service prices them at $0, so their reservation is all
///      given back.
/// Tokens per minute are a chatkit::minute_bucket, as requests per minute are in
/// chatkit::key_rate_limits, taken and given back by many tokens at a time. Budgets are per UTC calendar day or month; a new
/// period starts from zero.
template <class Mutex = std::mutex, class Clock = std::chrono::steady_clock>
class key_usage_limits {
public:
    // What admit() reserved, for finish() to settle and after() to report.
    struct context {
        bool reserved = false;
        std::int64_t tokens = 0;    // reserved from each token bucket that has a limit
        std::int64_t micro_usd = 0; // reserved from each budget that is set
        std::string key_id, team_id;
        bool key_tokens = false, team_tokens = false, key_budget = false, team_budget = false;
        // The tighter token bucket after the reservation, for the x-ratelimit-*-tokens headers.
        bool report_tokens = false;
        std::int64_t token_limit = 0, tokens_remaining = 0;
        std::chrono::nanoseconds tokens_reset{};
    };

    explicit key_usage_limits(key_usage_limits_options options = {}) : state_(std::make_unique<state>(std::move(options))) {}
    key_usage_limits(key_usage_limits&&) noexcept = default;
    key_usage_limits& operator=(key_usage_limits&&) noexcept = default;

    std::optional<http_response> before(http_request&, context&) { return std::nullopt; }

    std::optional<error> admit(const http_request& req, chat_admission& a, context& ctx) {
        const caller_identity& caller = req.caller;
        if (!caller.authenticated()) return std::nullopt;
        const auto key_tpm = minute_bucket::positive(caller.key_limits.tokens_per_minute);
        const auto team_tpm = minute_bucket::positive(caller.team_limits.tokens_per_minute);
        const auto key_budget = budget_of(caller.key_limits);
        const auto team_budget = budget_of(caller.team_limits);
        if (!key_tpm && !team_tpm && !key_budget && !team_budget) return std::nullopt;

        std::int64_t reserve_micro = 0;
        if (key_budget || team_budget) {
            if (!a.worst_case_usd) return limit_terms::unpriced_refusal(a.model, limit_terms::owner(key_budget.has_value(), caller));
            reserve_micro = limit_terms::micro_usd_up(*a.worst_case_usd);
        }
        const std::int64_t tokens = a.token_bound();
        // Who is named is built only for a refusal: the admission path itself allocates nothing.
        for (const bool key_scope : {true, false}) {
            const auto& limit = key_scope ? key_tpm : team_tpm;
            if (limit && tokens > *limit) return limit_terms::tokens_too_large(limit_terms::owner(key_scope, caller), a, *limit);
        }

        const nanos now = std::chrono::duration_cast<nanos>(Clock::now().time_since_epoch());
        const unix_ms wall = now_unix_ms();
        state& s = *state_;
        std::lock_guard lock{s.mutex};
        minute_bucket* kb = key_tpm ? &s.bucket_for(s.key_tokens, caller.key_id, *key_tpm, now) : nullptr;
        minute_bucket* tb = team_tpm ? &s.bucket_for(s.team_tokens, caller.team_id, *team_tpm, now) : nullptr;
        budget* kd = key_budget ? s.budget_for(s.key_spend, "key", caller.key_id, *key_budget, wall) : nullptr;
        budget* td = team_budget ? s.budget_for(s.team_spend, "team", caller.team_id, *team_budget, wall) : nullptr;
        if ((key_budget && !kd) || (team_budget && !td))
            return error{error_kind::unavailable,
                         "cannot read what " + (key_budget && !kd ? "API key " + caller.key_id : "team '" + caller.team_id + "'") +
                             " has spent this budget period; try again shortly",
                         "budget_unavailable", "", 1};

        // Requirement 1: every check first, then every reservation.
        if (kd && !kd->fits(reserve_micro)) return over_budget(limit_terms::owner(true, caller), *kd, reserve_micro, wall);
        if (td && !td->fits(reserve_micro)) return over_budget(limit_terms::owner(false, caller), *td, reserve_micro, wall);
        const nanos key_wait = kb ? kb->wait_for(tokens, now) : nanos::zero();
        const nanos team_wait = tb ? tb->wait_for(tokens, now) : nanos::zero();
        if (key_wait > nanos::zero() || team_wait > nanos::zero()) {
            const bool key_refused = key_wait > nanos::zero();
            note_tokens(ctx, kb, tb, now);
            return limit_terms::tokens_refusal(limit_terms::owner(key_refused, caller), key_refused ? *key_tpm : *team_tpm, tokens,
                                               limit_terms::retry_seconds(std::max(key_wait, team_wait)));
        }
        if (kb) kb->take(tokens, now);
        if (tb) tb->take(tokens, now);
        if (kd) kd->reserved += reserve_micro;
        if (td) td->reserved += reserve_micro;
        ctx.reserved = true;
        a.bounds_reserved = true;
        ctx.tokens = tokens;
        ctx.micro_usd = reserve_micro;
        ctx.key_id = caller.key_id;
        ctx.team_id = caller.team_id;
        ctx.key_tokens = kb;
        ctx.team_tokens = tb;
        ctx.key_budget = kd;
        ctx.team_budget = td;
        note_tokens(ctx, kb, tb, now);
        return std::nullopt;
    }

    void after(const http_request&, http_response& res, context& ctx) {
        if (!ctx.report_tokens) return;
        res.headers["x-ratelimit-limit-tokens"] = std::to_string(ctx.token_limit);
        res.headers["x-ratelimit-remaining-tokens"] = std::to_string(ctx.tokens_remaining);
        res.headers["x-ratelimit-reset-tokens"] = openai_duration(ctx.tokens_reset);
    }

    // Requirement 3: the reservation becomes the real usage.
    void finish(const http_request&, const response_summary& s, context& ctx) {
        if (!ctx.reserved) return;
        ctx.reserved = false;
        const std::int64_t used_tokens = std::min<std::int64_t>(s.usage.total_tokens(), ctx.tokens);
        const std::int64_t used_micro = s.cost_usd ? limit_terms::micro_usd_nearest(*s.cost_usd) : 0;
        const nanos now = std::chrono::duration_cast<nanos>(Clock::now().time_since_epoch());
        const unix_ms wall = now_unix_ms();
        state& st = *state_;
        std::lock_guard lock{st.mutex};
        auto give_back = [&](auto& buckets, const std::string& id) {
            if (auto it = buckets.find(id); it != buckets.end()) it->second.give_back(ctx.tokens - used_tokens, now);
        };
        if (ctx.key_tokens) give_back(st.key_tokens, ctx.key_id);
        if (ctx.team_tokens) give_back(st.team_tokens, ctx.team_id);
        auto settle = [&](auto& budgets, const std::string& id) {
            if (auto it = budgets.find(id); it != budgets.end()) it->second.settle(ctx.micro_usd, used_micro, wall);
        };
        if (ctx.key_budget) settle(st.key_spend, ctx.key_id);
        if (ctx.team_budget) settle(st.team_spend, ctx.team_id);
    }

    /// What a key or team has spent in its current period, in USD, as this process counts it
    /// (settled answers only, not reservations); 0 for one it has not seen.
    [[nodiscard]] double spent_usd(std::string_view scope, const std::string& id) const {
        const state& s = *state_;
        std::lock_guard lock{s.mutex};
        const auto& budgets = scope == "team" ? s.team_spend : s.key_spend;
        auto it = budgets.find(id);
        return it == budgets.end() ? 0.0 : static_cast<double>(it->second.spent) / 1e6;
    }

private:
    using nanos = std::chrono::nanoseconds;

    struct budget_limit {
        std::int64_t micro_usd;
        std::string period;
    };

    struct budget {
        budget_limit limit{};
        unix_ms period_start = 0, period_end = 0;
        std::int64_t spent = 0;    // settled in this period, in micro-USD
        std::int64_t reserved = 0; // by requests in flight

        [[nodiscard]] bool fits(std::int64_t micro) const { return spent + reserved + micro <= limit.micro_usd; }
        void settle(std::int64_t reservation, std::int64_t used, unix_ms now) {
            reserved = std::max<std::int64_t>(reserved - reservation, 0);
            roll(now, nullptr);
            spent += used;
        }
        // A new period starts from what was spent in it before (zero, or what `before` reads);
        // reservations in flight stay reserved. False when `before` cannot tell: the period is
        // left unread, so the next request asks again.
        bool roll(unix_ms now, const std::function<std::optional<std::int64_t>(unix_ms)>* before) {
            if (now < period_end) return true;
            const auto [start, end] = limit_terms::budget_period(limit.period, now);
            std::optional<std::int64_t> earlier = 0;
            if (before) earlier = (*before)(start);
            if (!earlier) return false;
            period_start = start;
            period_end = end;
            spent = *earlier;
            return true;
        }
    };

    struct state {
        key_usage_limits_options options;
        mutable Mutex mutex;
        std::unordered_map<std::string, minute_bucket> key_tokens, team_tokens;
        std::unordered_map<std::string, budget> key_spend, team_spend;

        explicit state(key_usage_limits_options o) : options(std::move(o)) {}

        minute_bucket& bucket_for(std::unordered_map<std::string, minute_bucket>& buckets, const std::string& id, std::int64_t limit,
                                  nanos now) {
            auto [it, created] = buckets.try_emplace(id);
            if (created) it->second = minute_bucket::full(limit, now);
            else if (it->second.limit != limit) it->second.change_limit(limit, now); // changed in the directory
            return it->second;
        }
        // The budget of `id` in its current period; null when what it spent before cannot be read.
        budget* budget_for(std::unordered_map<std::string, budget>& budgets, std::string_view scope, const std::string& id,
                           const budget_limit& limit, unix_ms now) {
            auto [it, created] = budgets.try_emplace(id);
            budget& b = it->second;
            if (!created && b.limit.period != limit.period) b.period_end = 0; // a new kind of period: recount
            b.limit = limit;
            const std::function<std::optional<std::int64_t>(unix_ms)> before = [&](unix_ms start) -> std::optional<std::int64_t> {
                if (!options.spent_before) return 0;
                const auto usd = options.spent_before(scope, id, start);
                if (!usd) return std::nullopt;
                return limit_terms::micro_usd_nearest(*usd);
            };
            return b.roll(now, &before) ? &b : nullptr;
        }
    };

    void note_tokens(context& ctx, const minute_bucket* kb, const minute_bucket* tb, nanos now) const {
        if (!kb && !tb) return;
        const bool team = tb && (!kb || tb->remaining(now) < kb->remaining(now));
        const minute_bucket& shown = team ? *tb : *kb;
        ctx.report_tokens = true;
        ctx.token_limit = shown.limit;
        ctx.tokens_remaining = shown.remaining(now);
        ctx.tokens_reset = shown.debt(now);
    }

    static error over_budget(const std::string& who, const budget& b, std::int64_t need, unix_ms now) {
        return limit_terms::budget_refusal(
            who, "has spent " + limit_terms::usd(b.spent) + " (and requests in flight reserve " + limit_terms::usd(b.reserved) + ") of",
            b.limit.micro_usd, b.limit.period, need, b.period_end, now);
    }

    static std::optional<budget_limit> budget_of(const usage_limits& l) {
        if (!l.budget_usd || !(*l.budget_usd >= 0)) return std::nullopt;
        return budget_limit{limit_terms::micro_usd_nearest(*l.budget_usd), l.budget_period == "month" ? "month" : "day"};
    }

    std::unique_ptr<state> state_;
};

using key_usage_limits_mt = key_usage_limits<std::mutex>;
using key_usage_limits_st = key_usage_limits<null_mutex>;
static_assert(middleware<key_usage_limits_mt>);
static_assert(middleware_has_admit<key_usage_limits_mt>);
static_assert(middleware_has_finish<key_usage_limits_mt>);

} // namespace chatkit
