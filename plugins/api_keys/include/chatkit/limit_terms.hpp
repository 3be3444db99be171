// The terms the per-key limits share: their refusals worded once, money in micro-dollars, budget
// periods. The local limits (chatkit::key_rate_limits, chatkit::key_usage_limits) and the shared
// ones (chatkit::shared_key_limits) must answer a client the same way, whichever the deployment
// runs. A refusal names a key by its id and a team by its id, never the key itself.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

namespace chatkit::limit_terms {

/// "API key k_…" or "team 't'": who a limit belongs to.
[[nodiscard]] inline std::string owner(bool key_scope, const caller_identity& caller) {
    return key_scope ? "API key " + caller.key_id : "team '" + caller.team_id + "'";
}

/// Retry-After: whole seconds, rounded up, at least 1.
[[nodiscard]] inline int retry_seconds(std::chrono::nanoseconds wait) {
    return static_cast<int>(
        std::clamp<std::int64_t>(std::chrono::ceil<std::chrono::seconds>(wait).count(), 1, std::numeric_limits<int>::max()));
}

/// `refused`: "API key k_1 allows 10 requests per minute" (or both owners, joined by ", and ").
[[nodiscard]] inline error requests_refusal(const std::string& refused, int retry) {
    return error{error_kind::rate_limited, "rate limit exceeded: " + refused + "; retry in " + std::to_string(retry) + " s",
                 "rate_limit_exceeded", "", retry};
}
[[nodiscard]] inline std::string requests_allowed(const std::string& owner, std::int64_t limit) {
    return owner + " allows " + std::to_string(limit) + " requests per minute";
}

/// A request whose token bound is more than a whole minute of its limit: it can never fit.
[[nodiscard]] inline error tokens_too_large(const std::string& owner, const chat_admission& a, std::int64_t limit) {
    return error{error_kind::rate_limited,
                 "request too large: it may use up to " + std::to_string(a.token_bound()) + " tokens (prompt bound " +
                     std::to_string(a.prompt_token_bound) + " + max_tokens " + std::to_string(a.max_completion_tokens) + "), and " + owner +
                     " allows " + std::to_string(limit) + " tokens per minute; lower max_tokens",
                 "rate_limit_exceeded", "max_tokens"};
}

[[nodiscard]] inline error tokens_refusal(const std::string& owner, std::int64_t limit, std::int64_t reserve, int retry) {
    return error{error_kind::rate_limited,
                 "rate limit exceeded: " + owner + " allows " + std::to_string(limit) +
                     " tokens per minute, and this request reserves up to " + std::to_string(reserve) + "; retry in " +
                     std::to_string(retry) + " s",
                 "rate_limit_exceeded", "", retry};
}

/// Requirement of every budget: a budgeted key cannot use a model whose cost cannot be counted.
[[nodiscard]] inline error unpriced_refusal(const std::string& model, const std::string& owner) {
    return error{error_kind::permission_denied,
                 "model '" + model + "' has no price, and " + owner + " has a budget: a budgeted key may use priced models only",
                 "model_not_priced", "model"};
}

[[nodiscard]] inline std::string usd(std::int64_t micro) {
    char text[32];
    std::snprintf(text, sizeof text, "$%.6f", static_cast<double>(micro) / 1e6);
    return text;
}

/// `spent`: what the owner has used of the budget, in words ("has spent $0.1 of", ...).
[[nodiscard]] inline error budget_refusal(const std::string& owner, const std::string& spent, std::int64_t limit_micro,
                                          const std::string& period, std::int64_t need_micro, unix_ms period_end, unix_ms now) {
    const auto retry = static_cast<int>(std::clamp<std::int64_t>((period_end - now + 999) / 1000, 1, std::numeric_limits<int>::max()));
    return error{error_kind::rate_limited,
                 owner + " " + spent + " its " + usd(limit_micro) + " " + (period == "month" ? "monthly" : "daily") +
                     " budget, and this request may cost up to " + usd(need_micro) + "; the budget resets at " + format_rfc3339(period_end),
                 "insufficient_quota", "", retry};
}

/// Money as the limits count it: integer micro-dollars, a reservation rounded up (so rounding
/// never lets through a request that would not fit), a cost to the nearest.
[[nodiscard]] inline std::int64_t micro_usd_up(double usd) { return static_cast<std::int64_t>(std::ceil(usd * 1e6 - 1e-6)); }
[[nodiscard]] inline std::int64_t micro_usd_nearest(double usd) { return static_cast<std::int64_t>(std::llround(usd * 1e6)); }

/// The start of the UTC calendar period ("day" or "month") holding `t`, and the next one's.
[[nodiscard]] inline std::pair<unix_ms, unix_ms> budget_period(std::string_view period, unix_ms t) {
    const std::time_t secs = static_cast<std::time_t>(t / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    if (period == "month") tm.tm_mday = 1;
    const unix_ms start = static_cast<unix_ms>(timegm(&tm)) * 1000;
    if (period == "month") ++tm.tm_mon;
    else ++tm.tm_mday;
    return {start, static_cast<unix_ms>(timegm(&tm)) * 1000}; // timegm normalizes day 32, month 12
}

} // namespace chatkit::limit_terms
