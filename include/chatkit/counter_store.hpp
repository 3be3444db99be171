// The Counter store concept: named counters that several processes share, each increased only
// while it stays within its limit. chatkit::shared_key_limits keeps the requests and tokens per
// minute and the budgets of API keys and teams in one, so that N replicas (or N Lambda
// instances) enforce one limit, not N of them. A store lives where the replicas meet: a DynamoDB
// table (chatkit::dynamodb_counter_store) or Redis (chatkit::redis_counter_store);
// memory_counter_store below is the model, counter_store_variant picks one at run time.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace chatkit {

/// An amount to add to one counter.
struct counter_add {
    std::string name{};      // the counter, window included ("key#k1#rpm#29512345"): a new window is a new counter
    std::int64_t amount = 0; // may be negative (a reservation given back)
    std::int64_t limit = 0;  // take(): the counter may not pass it; add(): ignored
    unix_ms expires_at = 0;  // when the counter may be forgotten (after its window ends)
};

/// What take() did: every amount added (`taken`, and the counters' new values in order), or none
/// of them because the counter at `refused` would have passed its limit (`values[refused]` is
/// that counter's value then; the others are 0).
struct counters_taken {
    bool taken = false;
    std::size_t refused = 0;
    std::vector<std::int64_t> values{};
};

namespace detail {
template <class C>
concept counter_store_has_take = requires(C& c, std::span<const counter_add> adds) {
    { c.take(adds) } -> std::same_as<result<counters_taken>>;
};
template <class C>
concept counter_store_has_add = requires(C& c, std::span<const counter_add> adds) {
    { c.add(adds) } -> std::same_as<result<void>>;
};
} // namespace detail

/// A Counter store model provides:
///   1. `result<counters_taken> take(std::span<const counter_add>)` — adds every amount if every
///      counter stays within its limit (a counter that does not exist is 0), else adds none. Why
///      all or none: a request refused by its team's limit must not use up its key's. Why the
///      condition in the store: a read, a check and a write from each replica would let two
///      replicas pass the same last unit. A store that cannot add to several counters in one
///      atomic step may add them one by one, each with its condition, and take back those it
///      added when a later one refuses: no counter ever passes its limit, and a request may
///      briefly see the units of one that is being refused.
///   2. `result<void> add(std::span<const counter_add>)` — adds every amount unconditionally (an
///      answer's reservation settled: negative gives back, positive charges what passed the
///      bound). Why no limit: what was used is counted whether or not it fits.
///   3. Counters expire: a store may forget a counter after its `expires_at`, so names that carry
///      their window need no clean-up.
///   4. Both may block (a network round trip); failures are `error_kind::unavailable` values,
///      never exceptions, and the caller decides (chatkit::shared_key_limits refuses with 503).
///   5. Thread-safe: one store serves every request of a process.
template <class C>
concept counter_store = detail::counter_store_has_take<C> && detail::counter_store_has_add<C>;

template <class C>
struct counter_store_check {
    static_assert(detail::counter_store_has_take<C>,
                  "chatkit::counter_store: missing `chatkit::result<chatkit::counters_taken> take(std::span<const chatkit::counter_add>)`");
    static_assert(detail::counter_store_has_add<C>,
                  "chatkit::counter_store: missing `chatkit::result<void> add(std::span<const chatkit::counter_add>)`");
    static constexpr bool value = counter_store<C>;
};

/// The model: counters in this process's memory, all or none under one lock. Replicas that share
/// one object (tests, several services in one process) share its limits.
class memory_counter_store {
public:
    result<counters_taken> take(std::span<const counter_add> adds) {
        std::lock_guard lock{mutex_};
        const unix_ms now = now_unix_ms();
        forget_expired(now);
        counters_taken t;
        t.values.assign(adds.size(), 0);
        for (std::size_t i = 0; i < adds.size(); ++i) {
            const std::int64_t value = value_of(adds[i].name);
            if (adds[i].amount > 0 && value + adds[i].amount > adds[i].limit) {
                t.refused = i;
                t.values.assign(adds.size(), 0);
                t.values[i] = value;
                return t;
            }
            t.values[i] = value + adds[i].amount;
        }
        for (const auto& a : adds) bump(a);
        t.taken = true;
        return t;
    }

    result<void> add(std::span<const counter_add> adds) {
        std::lock_guard lock{mutex_};
        for (const auto& a : adds) bump(a);
        return {};
    }

    /// A counter's value now (0 when absent): for tests and reports.
    [[nodiscard]] std::int64_t value(const std::string& name) {
        std::lock_guard lock{mutex_};
        return value_of(name);
    }

private:
    struct counter {
        std::int64_t value = 0;
        unix_ms expires_at = 0;
    };

    std::int64_t value_of(const std::string& name) const {
        const auto it = counters_.find(name);
        return it == counters_.end() ? 0 : it->second.value;
    }
    void bump(const counter_add& a) {
        counter& c = counters_[a.name];
        c.value += a.amount;
        c.expires_at = std::max(c.expires_at, a.expires_at);
    }
    // Requirement 3, amortized: a sweep when the map has doubled since the last one.
    void forget_expired(unix_ms now) {
        if (counters_.size() < 2 * swept_size_ + 64) return;
        std::erase_if(counters_, [now](const auto& entry) { return entry.second.expires_at <= now; });
        swept_size_ = counters_.size();
    }

    std::mutex mutex_;
    std::unordered_map<std::string, counter> counters_;
    std::size_t swept_size_ = 0;
};
static_assert(counter_store<memory_counter_store>);

/// One of several counter stores, chosen at run time (where a program's configuration says the
/// replicas meet); itself a counter store, so chatkit::shared_key_limits takes it as any other.
template <counter_store... Stores>
class counter_store_variant {
public:
    template <class S>
        requires(std::same_as<S, Stores> || ...)
    counter_store_variant(S store) : held_(std::in_place_type<S>, std::move(store)) {} // NOLINT: implicit on purpose

    result<counters_taken> take(std::span<const counter_add> adds) {
        return std::visit([adds](auto& s) { return s.take(adds); }, held_);
    }
    result<void> add(std::span<const counter_add> adds) {
        return std::visit([adds](auto& s) { return s.add(adds); }, held_);
    }

    /// The store held, if it is an S.
    template <class S>
    [[nodiscard]] S* get_if() noexcept {
        return std::get_if<S>(&held_);
    }

private:
    std::variant<Stores...> held_;
};
static_assert(counter_store<counter_store_variant<memory_counter_store>>);

} // namespace chatkit
