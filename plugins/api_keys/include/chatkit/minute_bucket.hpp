// The bucket behind per-key limits: a per-minute limit as a continuously refilled token bucket,
// kept as GCRA (the time the bucket is full again) in integer nanoseconds, as
// chatkit::rate_limiter keeps its own. chatkit::key_rate_limits takes one request at a time from
// it; chatkit::key_usage_limits takes a request's token bound and gives back what it did not use.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace chatkit {

struct minute_bucket {
    using nanos = std::chrono::nanoseconds;

    std::int64_t limit = 0; // per minute
    nanos interval{};       // time to earn one unit: a minute / limit, floored
    nanos window{};         // interval * limit: the capacity, in time
    nanos due{};            // when the bucket is full again; `due - now` is its debt

    // A full bucket of `l` per minute.
    static minute_bucket full(std::int64_t l, nanos now) {
        minute_bucket b;
        b.set_limit(l);
        b.due = now;
        return b;
    }
    // A new limit (changed in the directory) keeps the time until the bucket is full again, cut to
    // the new window.
    void change_limit(std::int64_t l, nanos now) {
        const nanos d = debt(now);
        set_limit(l);
        due = now + std::min(d, window);
    }

    [[nodiscard]] nanos debt(nanos now) const { return std::max(due - now, nanos::zero()); }
    // Zero when `n` units fit now, else how long until they do.
    [[nodiscard]] nanos wait_for(std::int64_t n, nanos now) const { return std::max(debt(now) + interval * n - window, nanos::zero()); }
    // Units left now.
    [[nodiscard]] std::int64_t remaining(nanos now) const { return (window - std::min(debt(now), window)) / interval; }

    void take(std::int64_t n, nanos now) { due = now + debt(now) + interval * n; }
    void give_back(std::int64_t n, nanos now) {
        if (n > 0) due = now + std::max(debt(now) - interval * n, nanos::zero());
    }

    // A limit of 0 or less is no limit (the command line refuses one, so it can only come from a
    // hand-edited row); a huge one is capped so that a unit's interval stays above a few nanoseconds.
    static std::optional<std::int64_t> positive(std::optional<std::int64_t> l) {
        if (l && *l > 0) return std::min<std::int64_t>(*l, 1'000'000'000);
        return std::nullopt;
    }

private:
    void set_limit(std::int64_t l) {
        limit = l;
        interval = std::max(nanos{1}, nanos{std::chrono::duration_cast<nanos>(std::chrono::minutes{1}).count() / l});
        window = interval * l;
    }
};

/// OpenAI's duration format for x-ratelimit-reset-*: "120ms" under a second, else whole seconds
/// rounded up, with minutes when there are any ("6s", "1m0s"); "0s" for a full bucket.
[[nodiscard]] inline std::string openai_duration(std::chrono::nanoseconds d) {
    if (d <= std::chrono::nanoseconds::zero()) return "0s";
    if (d < std::chrono::seconds{1}) return std::to_string(std::chrono::ceil<std::chrono::milliseconds>(d).count()) + "ms";
    const std::int64_t s = std::chrono::ceil<std::chrono::seconds>(d).count();
    if (s < 60) return std::to_string(s) + "s";
    return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
}

} // namespace chatkit
