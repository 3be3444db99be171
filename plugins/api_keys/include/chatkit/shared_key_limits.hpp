// A Middleware that enforces every limit of API keys and their teams — requests per minute, tokens
// per minute, USD budgets — on counters in a chatkit::counter_store that every replica shares
// (several sample_server processes, or every instance of a Lambda function), so a limit of 10 per
// minute is 10 for the whole fleet, not 10 per replica. It replaces chatkit::key_rate_limits and
// chatkit::key_usage_limits (which count in one process) where the deployment has more than one
// process; it answers a client exactly as they do (chatkit/limit_terms.hpp), headers included.
#pragma once

#include "chatkit/api_keys.hpp"
#include "chatkit/chat_routes.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/counter_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/limit_terms.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/minute_bucket.hpp"
#include "chatkit/shared_rate_limiter.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace chatkit {

struct shared_key_limits_options {
    // Wall-clock time, not steady: every replica must agree on which minute and which day it is.
    // Tests set their own.
    std::function<unix_ms()> clock = now_unix_ms;
    // A settlement the store could not write (the reservation then stays counted until its window
    // ends): for the deployment's log.
    std::function<void(const error&)> on_error{};
    // When the store cannot be reached: false refuses every limited request with 503 (requirement
    // 5); true counts in this process's memory instead until it can be reached, so each replica
    // enforces the limits alone meanwhile (up to N times a limit over N replicas), which keeps a
    // gateway serving through a Redis outage.
    bool fall_back_to_local = false;
    // Each check that fell back, with the store's error (from the request's thread): to count it
    // and to log it, throttled.
    std::function<void(const error&)> on_fallback{};
    // A per-client limit (what chatkit::shared_rate_limiter counts alone: CHAT_RATE_LIMIT), counted
    // in the same take as the key's and team's limits (requirement 9).
    std::optional<rate_limit> client_limit{};
};

/// Requirements this middleware meets, and why:
///   1. One limit for the fleet: every check is a conditional add in the shared store (the store's
///      requirement 1), so 50 concurrent requests against 10 per minute let exactly 10 through
///      however many replicas they reach.
///   2. All or none, as the local limits: a request refused by its team's counter takes nothing
///      from its key's (the store gives back what it took).
///   3. Reserve, then settle: tokens and money are reserved at their worst case in `admit` and
///      settled in `finish` with the answer's real usage and cost, so what an answer did not use is
///      given back to the fleet; a cache hit costs nothing.
///   4. Fixed windows: a per-minute limit counts UTC calendar minutes, a budget its UTC day or
///      month. A sliding bucket (what the local limits keep) needs a read-modify-write that
///      replicas would race on; a fixed window is one conditional add. The price: up to twice a
///      minute's limit can pass across a minute's boundary (never more than the limit inside one).
///   5. The store unreachable: the request is refused with 503 `limits_unavailable` and
///      Retry-After, never let through unlimited, since the limits are what a budget's owner pays
///      for; or, with `fall_back_to_local`, counted in this process's memory until the store is
///      back, and settled where it was reserved. A settlement that fails is reported to
///      `on_error` and counts as spent.
///   6. A budgeted key cannot use an unpriced model (403 `model_not_priced`), as locally.
///   7. Never on an event loop: a check is a network round trip (the Counter store's requirement
///      4), so `blocks()` says so for a request with a key and the service runs its hooks on the
///      worker pool.
///   8. One round trip before the answer: for a chat request (chatkit::is_chat_request), the
///      requests-per-minute check waits for `admit` and goes to the store with the tokens and
///      budget reservation, in one take; other requests are checked in `before`. A chat request
///      refused before admission (a malformed body, an unknown conversation) counts against no
///      limit, which is what the service's own 400 or 404 costs anyway.
///   9. A per-client limit (`client_limit`) is one more counter in the same take, not a round trip
///      of its own: for a chat request with a key, the client's, the key's and the team's counts
///      all go in admit's one take. It answers as chatkit::shared_rate_limiter does
///      (X-RateLimit-*, "rate limit of N/minute exceeded"); a request it refuses takes nothing
///      from the key or team, and a request they refuse takes nothing from it.
/// Writes per request: one conditional add per limit that is set (0 to 7), in one take, and one
/// add per reserved counter at the end, after the last byte. A store does each in one round trip.
template <counter_store Counters>
class shared_key_limits {
public:
    struct context {
        client_window::standing client{}; // requirement 9
        // Requests: the tighter counter, for the x-ratelimit-*-requests headers.
        bool report_requests = false;
        std::int64_t request_limit = 0, requests_remaining = 0;
        std::chrono::nanoseconds requests_reset{};
        // Tokens and budgets: what admit() reserved, for finish() to settle; the first
        // `token_counters` are tokens per minute, the rest budgets.
        std::vector<counter_add> reserved{};
        bool reserved_locally = false; // in the fallback store (requirement 5): settled there
        std::size_t token_counters = 0;
        std::int64_t tokens = 0, micro_usd = 0;
        bool report_tokens = false;
        std::int64_t token_limit = 0, tokens_remaining = 0;
        std::chrono::nanoseconds tokens_reset{};
    };

    // Throws std::invalid_argument for a client_limit of 0 requests, or a period under a second or over a year.
    explicit shared_key_limits(std::shared_ptr<Counters> counters, shared_key_limits_options options = {})
        : counters_(std::move(counters)), options_(std::move(options)) {
        if (options_.client_limit) options_.client_limit = client_window::checked(*options_.client_limit);
    }

    // Requirement 7 (the Middleware concept's requirement 6): only a request that presents a key
    // can be counted, or with a client limit any request but a health probe.
    [[nodiscard]] bool blocks(const http_request& req) const noexcept {
        return options_.client_limit ? !rate_limited::exempt(req) : !api_keys::presented_key(req).empty();
    }

    std::optional<http_response> before(http_request& req, context& ctx) {
        const caller_identity& caller = req.caller;
        if (caller.authenticated() && is_chat_request(req.method, req.path)) return std::nullopt; // requirement 8: in admit
        const unix_ms now = options_.clock();
        const auto client = client_window_of(req, now);
        if (!caller.authenticated() && !client) return std::nullopt;
        const minute m = minute_of(now);
        std::vector<counter_add> adds;
        std::vector<bool> key_scope;
        if (client) adds.push_back(client->counter());
        if (caller.authenticated()) add_requests(caller, m, adds, key_scope);
        if (adds.empty()) return std::nullopt;
        bool locally = false;
        auto taken = take(adds, locally);
        if (!taken) return error_response(unavailable(taken.error()), req.request_id);
        if (client)
            if (auto refused = split_client(*client, ctx, adds, *taken)) return error_response(*refused, req.request_id);
        if (adds.empty()) return std::nullopt;
        if (auto refused = note_requests(ctx, caller, adds, key_scope, *taken, now, m.end)) return error_response(*refused, req.request_id);
        return std::nullopt;
    }

    std::optional<error> admit(const http_request& req, chat_admission& a, context& ctx) {
        const caller_identity& caller = req.caller;
        if (!caller.authenticated()) return std::nullopt;
        const auto key_tpm = minute_bucket::positive(caller.key_limits.tokens_per_minute);
        const auto team_tpm = minute_bucket::positive(caller.team_limits.tokens_per_minute);
        const bool key_budget = has_budget(caller.key_limits), team_budget = has_budget(caller.team_limits);
        const unix_ms now = options_.clock();
        const minute m = minute_of(now);
        // Requirement 8: the requests per minute first, in the same take as the reservation, and
        // requirement 9: the client's count before them.
        const auto client = client_window_of(req, now);
        std::vector<counter_add> adds;
        std::vector<bool> request_scope;
        if (client) adds.push_back(client->counter());
        add_requests(caller, m, adds, request_scope);
        const std::size_t requests = adds.size() - (client ? 1 : 0);
        if (!key_tpm && !team_tpm && !key_budget && !team_budget) {
            if (adds.empty()) return std::nullopt;
            bool locally = false;
            auto taken = take(adds, locally);
            if (!taken) return unavailable(taken.error());
            if (client)
                if (auto refused = split_client(*client, ctx, adds, *taken)) return refused;
            if (requests == 0) return std::nullopt;
            return note_requests(ctx, caller, adds, request_scope, *taken, now, m.end);
        }

        std::int64_t reserve_micro = 0;
        if (key_budget || team_budget) {
            if (!a.worst_case_usd) return limit_terms::unpriced_refusal(a.model, limit_terms::owner(key_budget, caller));
            reserve_micro = limit_terms::micro_usd_up(*a.worst_case_usd);
        }
        const std::int64_t tokens = a.token_bound();
        for (const bool k : {true, false}) {
            const auto& limit = k ? key_tpm : team_tpm;
            if (limit && tokens > *limit) return limit_terms::tokens_too_large(limit_terms::owner(k, caller), a, *limit);
        }

        std::vector<what> kinds;
        for (const bool k : {true, false}) {
            const auto& limit = k ? key_tpm : team_tpm;
            if (!limit) continue;
            adds.push_back({counter_name(k, caller, "tpm", m.index), tokens, *limit, m.end + minute_counter_kept});
            kinds.push_back({k, false, m.end});
        }
        for (const bool k : {true, false}) {
            const usage_limits& l = k ? caller.key_limits : caller.team_limits;
            if (!has_budget(l)) continue;
            const std::string period = l.budget_period == "month" ? "month" : "day";
            const auto [start, end] = limit_terms::budget_period(period, now);
            adds.push_back({counter_name(k, caller, period, start), reserve_micro, limit_terms::micro_usd_nearest(*l.budget_usd),
                            end + budget_counter_kept});
            kinds.push_back({k, true, end});
        }
        auto taken = take(adds, ctx.reserved_locally);
        if (!taken) return unavailable(taken.error());
        if (client)
            if (auto refused = split_client(*client, ctx, adds, *taken)) return refused;
        if (requests > 0) {
            // The request counters' verdict and headers; a refusal there took nothing anywhere.
            const counters_taken of_requests{taken->taken || taken->refused >= requests,
                                             std::min(taken->refused, requests),
                                             {taken->values.begin(), taken->values.begin() + static_cast<std::ptrdiff_t>(requests)}};
            if (auto refused = note_requests(ctx, caller, std::span{adds}.first(requests), request_scope, of_requests, now, m.end))
                return refused;
            // What is reserved, and settled in finish(), is the tokens and budgets after them.
            adds.erase(adds.begin(), adds.begin() + static_cast<std::ptrdiff_t>(requests));
            taken->values.erase(taken->values.begin(), taken->values.begin() + static_cast<std::ptrdiff_t>(requests));
            if (!taken->taken) taken->refused -= requests;
        }
        if (!taken->taken) {
            const std::size_t i = taken->refused;
            const std::string owner = limit_terms::owner(kinds[i].key_scope, caller);
            if (!kinds[i].budget) {
                note_tokens(ctx, adds, taken->values, i, i + 1, now, m.end);
                return limit_terms::tokens_refusal(owner, adds[i].limit, tokens, limit_terms::retry_seconds(until(m.end, now)));
            }
            const bool monthly = (kinds[i].key_scope ? caller.key_limits : caller.team_limits).budget_period == "month";
            return limit_terms::budget_refusal(owner, "has spent or reserved " + limit_terms::usd(taken->values[i]) + " of", adds[i].limit,
                                               monthly ? "month" : "day", reserve_micro, kinds[i].end, now);
        }
        const auto token_counters = static_cast<std::size_t>(
            std::count_if(kinds.begin(), kinds.end(), [](const what& w) { return !w.budget; }));
        note_tokens(ctx, adds, taken->values, 0, token_counters, now, m.end);
        ctx.reserved = std::move(adds);
        ctx.token_counters = token_counters;
        ctx.tokens = tokens;
        ctx.micro_usd = reserve_micro;
        a.bounds_reserved = true;
        return std::nullopt;
    }

    void after(const http_request&, http_response& res, context& ctx) {
        if (options_.client_limit) client_window::report(ctx.client, *options_.client_limit, res);
        if (ctx.report_requests) {
            res.headers["x-ratelimit-limit-requests"] = std::to_string(ctx.request_limit);
            res.headers["x-ratelimit-remaining-requests"] = std::to_string(ctx.requests_remaining);
            res.headers["x-ratelimit-reset-requests"] = openai_duration(ctx.requests_reset);
        }
        if (ctx.report_tokens) {
            res.headers["x-ratelimit-limit-tokens"] = std::to_string(ctx.token_limit);
            res.headers["x-ratelimit-remaining-tokens"] = std::to_string(ctx.tokens_remaining);
            res.headers["x-ratelimit-reset-tokens"] = openai_duration(ctx.tokens_reset);
        }
    }

    // Requirement 3: each reserved counter gets the difference between its reservation and the
    // real use (tokens capped at the reservation, as the service caps max_tokens; money not).
    void finish(const http_request&, const response_summary& s, context& ctx) {
        if (ctx.reserved.empty()) return;
        std::vector<counter_add> settle = std::move(ctx.reserved);
        ctx.reserved.clear();
        const std::int64_t used_tokens = std::min<std::int64_t>(s.usage.total_tokens(), ctx.tokens);
        const std::int64_t used_micro = s.cost_usd ? limit_terms::micro_usd_nearest(*s.cost_usd) : 0;
        for (std::size_t i = 0; i < settle.size(); ++i)
            settle[i].amount = i < ctx.token_counters ? used_tokens - ctx.tokens : used_micro - ctx.micro_usd;
        std::erase_if(settle, [](const counter_add& c) { return c.amount == 0; });
        if (settle.empty()) return;
        auto added = ctx.reserved_locally ? local_->add(settle) : counters_->add(settle);
        if (!added && options_.on_error) options_.on_error(added.error());
    }

    [[nodiscard]] Counters& counters() noexcept { return *counters_; }

private:
    // How long a counter outlives its window: long enough to read it while looking into a
    // complaint, short enough that a table keeps a few days of them.
    static constexpr unix_ms minute_counter_kept = 60 * 60 * 1000;
    static constexpr unix_ms budget_counter_kept = 31LL * 24 * 60 * 60 * 1000;

    struct minute {
        std::int64_t index; // minutes since the epoch
        unix_ms end;
    };
    struct what {
        bool key_scope, budget;
        unix_ms end; // of the counter's window
    };

    // Requirement 9: the client's window, when there is a client limit and the request counts.
    std::optional<client_window> client_window_of(const http_request& req, unix_ms now) const {
        if (!options_.client_limit || rate_limited::exempt(req)) return std::nullopt;
        return client_window{req, *options_.client_limit, now};
    }
    // The client's verdict from the first counter of a take, which is then removed from `adds` and
    // `taken` so that what follows reads the key's and team's counters alone. When another counter
    // refused, the store reports no value for the client's: it was not counted, and gets no headers.
    static std::optional<error> split_client(const client_window& client, context& ctx, std::vector<counter_add>& adds,
                                             counters_taken& taken) {
        if (taken.taken || taken.refused == 0)
            if (auto refused = client.note(ctx.client, taken.taken, taken.values.front())) return refused;
        adds.erase(adds.begin());
        taken.values.erase(taken.values.begin());
        if (!taken.taken) --taken.refused;
        return std::nullopt;
    }

    // The requests-per-minute counters that are set, key's first, one request each.
    void add_requests(const caller_identity& caller, const minute& m, std::vector<counter_add>& adds, std::vector<bool>& key_scope) const {
        for (const bool k : {true, false}) {
            const auto limit = minute_bucket::positive(k ? caller.key_limits.requests_per_minute : caller.team_limits.requests_per_minute);
            if (!limit) continue;
            adds.push_back({counter_name(k, caller, "rpm", m.index), 1, *limit, m.end + minute_counter_kept});
            key_scope.push_back(k);
        }
    }
    // The x-ratelimit-*-requests headers from the request counters' values, and the refusal when
    // one of them refused.
    static std::optional<error> note_requests(context& ctx, const caller_identity& caller, std::span<const counter_add> adds,
                                              const std::vector<bool>& key_scope, const counters_taken& taken, unix_ms now, unix_ms end) {
        const std::size_t shown = taken.taken ? tightest(adds, taken.values) : taken.refused;
        ctx.report_requests = true;
        ctx.request_limit = adds[shown].limit;
        ctx.requests_remaining = std::max<std::int64_t>(adds[shown].limit - taken.values[shown], 0);
        ctx.requests_reset = until(end, now);
        if (taken.taken) return std::nullopt;
        return limit_terms::requests_refusal(limit_terms::requests_allowed(limit_terms::owner(key_scope[shown], caller), adds[shown].limit),
                                             limit_terms::retry_seconds(until(end, now)));
    }

    static minute minute_of(unix_ms now) {
        const std::int64_t index = now / 60'000;
        return {index, (index + 1) * 60'000};
    }
    static std::chrono::nanoseconds until(unix_ms end, unix_ms now) { return std::chrono::milliseconds{std::max<unix_ms>(end - now, 0)}; }
    // "key#k_1#rpm#29512345", "team#t#tpm#29512345", "key#k_1#day#1767139200000": the window is
    // in the name, so each window is a new counter and the store forgets the old ones.
    static std::string counter_name(bool key_scope, const caller_identity& caller, std::string_view what, std::int64_t window) {
        std::string name = key_scope ? "key#" + caller.key_id : "team#" + caller.team_id;
        name += '#';
        name += what;
        name += '#';
        name += std::to_string(window);
        return name;
    }
    static bool has_budget(const usage_limits& l) { return l.budget_usd && *l.budget_usd >= 0; }
    // The counter with the fewest units left after the reservation (requests or tokens).
    static std::size_t tightest(std::span<const counter_add> adds, const std::vector<std::int64_t>& values) {
        std::size_t best = 0;
        for (std::size_t i = 1; i < adds.size(); ++i)
            if (adds[i].limit - values[i] < adds[best].limit - values[best]) best = i;
        return best;
    }
    // The x-ratelimit-*-tokens headers: the tighter of the token counters in [from, to).
    static void note_tokens(context& ctx, const std::vector<counter_add>& adds, const std::vector<std::int64_t>& values, std::size_t from,
                            std::size_t to, unix_ms now, unix_ms end) {
        if (from == to) return;
        std::size_t shown = from;
        for (std::size_t i = from + 1; i < to; ++i)
            if (adds[i].limit - values[i] < adds[shown].limit - values[shown]) shown = i;
        ctx.report_tokens = true;
        ctx.token_limit = adds[shown].limit;
        ctx.tokens_remaining = std::max<std::int64_t>(adds[shown].limit - values[shown], 0);
        ctx.tokens_reset = until(end, now);
    }
    // The shared store's answer; with fall_back_to_local, this process's while it cannot be reached.
    result<counters_taken> take(std::span<const counter_add> adds, bool& locally) {
        auto taken = counters_->take(adds);
        locally = false;
        if (taken || !options_.fall_back_to_local) return taken;
        if (options_.on_fallback) options_.on_fallback(taken.error());
        locally = true;
        return local_->take(adds);
    }
    static error unavailable(const error& cause) {
        return error{error_kind::unavailable, "the shared limits cannot be checked right now (" + cause.message + "); try again shortly",
                     "limits_unavailable", "", 1};
    }

    std::shared_ptr<Counters> counters_;
    std::shared_ptr<memory_counter_store> local_ = std::make_shared<memory_counter_store>(); // requirement 5's fallback
    shared_key_limits_options options_;
};

static_assert(middleware<shared_key_limits<memory_counter_store>>);
static_assert(middleware_has_admit<shared_key_limits<memory_counter_store>>);
static_assert(middleware_has_finish<shared_key_limits<memory_counter_store>>);
static_assert(middleware_may_block<shared_key_limits<memory_counter_store>>);

} // namespace chatkit
