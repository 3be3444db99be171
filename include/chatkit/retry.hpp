// Retrying an upstream call the way the official SDKs do: only what may succeed next time, only
// before any byte reached the client, within a total deadline, after the server's requested delay
// or an exponential backoff with jitter (docs/protocols.md §1.8, §2.4).
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/http_client.hpp"
#include "chatkit/sleep.hpp"
#include "chatkit/task.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>

namespace chatkit {

// One failed attempt, and what it says about the next.
struct upstream_failure {
    error e;
    bool retryable = false;
    std::optional<std::chrono::milliseconds> retry_after{}; // the server's own delay, when it gave one
    bool delivered = false;                                 // bytes already reached the client
};

struct retry_policy {
    int max_retries = 2;
    std::chrono::milliseconds first_delay{500};
    std::chrono::milliseconds max_delay{8'000};
    std::chrono::milliseconds max_server_delay{120'000}; // a longer Retry-After is not waited for
    // Told of each failed attempt that will be retried, before the wait (not of the last failure,
    // which is the call's answer): for a metric of retries by code. Runs on the calling thread or
    // loop, so it must be cheap and must not block; keep what it captures small (the policy is
    // copied per call).
    std::function<void(const upstream_failure&)> on_retry{};
};

// 0.5 s · 2^n capped at 8 s by default, shortened by up to 25% so clients do not retry in step.
[[nodiscard]] inline std::chrono::milliseconds backoff_delay(const retry_policy& p, int attempt) {
    thread_local std::mt19937 rng{std::random_device{}()};
    const double base = std::min(static_cast<double>(p.max_delay.count()),
                                 static_cast<double>(p.first_delay.count()) * std::pow(2.0, attempt));
    return std::chrono::milliseconds(static_cast<long>(base * std::uniform_real_distribution<>(0.75, 1.0)(rng)));
}

// What attempt `n`'s failure means for the next: the delay before another attempt, or nothing
// when `f.e` is the answer (a 429 that outlived its retries then keeps its Retry-After for the
// client). The one place the retry rules live, for the blocking and the async loop alike.
inline std::optional<std::chrono::milliseconds> retry_delay(const retry_policy& policy, int n,
                                                            std::chrono::steady_clock::time_point deadline, upstream_failure& f) {
    const auto delay = f.retry_after.value_or(backoff_delay(policy, n));
    if (f.retryable && !f.delivered && n < policy.max_retries && delay <= policy.max_server_delay &&
        std::chrono::steady_clock::now() + delay < deadline)
        return delay;
    if (f.e.kind == error_kind::rate_limited && !f.e.retry_after_seconds)
        f.e.retry_after_seconds = static_cast<int>(std::max<long>(1, (delay.count() + 999) / 1000));
    return std::nullopt;
}

// An async client's transport failure as an attempt's outcome, in `upstream`'s name ("the
// upstream", "Bedrock"): what may pass is retryable, nothing is once bytes reached the client.
inline upstream_failure client_failure(const client_error& e, bool delivered, std::string_view upstream,
                                       std::chrono::milliseconds read_timeout, std::size_t max_answer_bytes) {
    const std::string who{upstream};
    switch (e.kind) {
    case client_error_kind::cancelled:
        return {
            {error_kind::timeout, "the request was cancelled; its upstream call was closed", "request_cancelled"}, false, {}, delivered};
    case client_error_kind::past_deadline:
        return {{error_kind::timeout, who + " did not finish within the deadline", "upstream_timeout"}, false, {}, delivered};
    case client_error_kind::tls_verification:
        return {{error_kind::upstream, who + "'s TLS certificate verification failed", "upstream_tls"}, false};
    case client_error_kind::too_large:
        return {{error_kind::upstream, who + "'s answer is over " + std::to_string(max_answer_bytes >> 20) + " MiB", "upstream_error"},
                false};
    default: break;
    }
    if (delivered)
        return {{error_kind::upstream, who + " connection broke mid-stream (" + e.detail + ")", "upstream_error"}, false, {}, true};
    if (e.kind == client_error_kind::connect_timeout)
        return {{error_kind::timeout, "could not connect to " + who + " in time", "upstream_timeout"}, true};
    if (e.kind == client_error_kind::read_timeout)
        return {{error_kind::timeout, who + " did not answer within " + std::to_string(read_timeout.count()) + " ms", "upstream_timeout"},
                true};
    return {{error_kind::upstream, "cannot reach " + who + " (" + e.detail + ")", "upstream_unreachable"}, true};
}

// Calls `attempt()` (returning result<T, upstream_failure>) until it succeeds or must stop; a 429
// that outlived its retries keeps its Retry-After for the client. A stop request ends the wait
// before a retry at once.
template <class T, class Attempt>
result<T> call_with_retries(const retry_policy& policy, std::chrono::steady_clock::time_point deadline, Attempt&& attempt,
                            const std::stop_token& stop = {}) {
    for (int n = 0;; ++n) {
        result<T, upstream_failure> outcome = attempt();
        if (outcome) return std::move(outcome).value();
        upstream_failure f = std::move(outcome).error();
        const auto delay = retry_delay(policy, n, deadline, f);
        if (!delay) return std::move(f.e);
        if (policy.on_retry) policy.on_retry(f);
        if (!wait_unless_stopped(*delay, stop))
            return error{error_kind::timeout, "the request was cancelled while waiting to retry", "request_cancelled"};
    }
}

// The same for an asynchronous attempt (`task<result<T, upstream_failure>> attempt()`): the wait
// before a retry is a loop timer that the request's stop token cuts short.
template <class T, class Attempt>
task<result<T>> call_with_retries_async(retry_policy policy, std::chrono::steady_clock::time_point deadline, Attempt attempt) {
    for (int n = 0;; ++n) {
        result<T, upstream_failure> outcome = co_await attempt();
        if (outcome) co_return std::move(outcome).value();
        upstream_failure f = std::move(outcome).error();
        const auto delay = retry_delay(policy, n, deadline, f);
        if (!delay) co_return std::move(f.e);
        if (policy.on_retry) policy.on_retry(f);
        const bool waited = co_await sleep_for(*delay);
        if (!waited) co_return error{error_kind::timeout, "the request was cancelled while waiting to retry", "request_cancelled"};
    }
}

} // namespace chatkit
