// chatkit::coalescing_counter_store: a Counter store in front of another that holds back add()s —
// the settlements written after an answer's last byte — merges those to the same counter, and
// writes them from a thread of its own in one add() of the store behind, at most every
// `interval`. Under load a settlement then costs a fraction of a round trip instead of one, so a
// request with shared token limits or budgets makes one round trip to the counters (its take),
// not two. take() goes straight through: admission is never delayed or batched.
#pragma once

#include "chatkit/counter_store.hpp"
#include "chatkit/error.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace chatkit {

struct coalescing_counter_store_options {
    // How long an add() may wait to be written: the first add() of a batch starts the clock.
    std::chrono::milliseconds interval{20};
    // Counters held at most; an add() past it is written at once, through (never dropped).
    std::size_t max_pending = 100'000;
    // A batch the store behind refused (it is kept and tried again with the next one): for the log.
    std::function<void(const error&)> on_error{};
};

/// Requirements this combinator meets, and why:
///   1. A Counter store itself (counter_store's requirements 1-5), so chatkit::shared_key_limits
///      and chatkit::shared_rate_limiter take it as any other.
///   2. take() is the store behind's, unchanged: whether a request fits is never answered late or
///      from a stale count.
///   3. add() returns at once; what it adds reaches the store behind within `interval` (or when
///      flush() is called), amounts to one counter summed, so a counter's value is what it would
///      have been, only later. Why acceptable: an add() settles a reservation the take already
///      counted at its worst case, so until it is written the count errs on the safe side (a
///      limit is briefly tighter, never looser).
///   4. Nothing is lost while the process lives: a batch the store refuses is kept, merged with
///      what comes next, and tried again (dropped only once its counters have expired); the
///      destructor writes what is left. A process killed with adds held loses them, which again
///      leaves the counts at their reservations (the safe side).
///   5. flush() writes now and says whether it could: for a runtime that freezes the process
///      between requests (AWS Lambda), called before it asks for the next one.
template <counter_store Store>
class coalescing_counter_store {
public:
    explicit coalescing_counter_store(Store store, coalescing_counter_store_options options = {})
        : s_(std::make_unique<state>(std::move(store), std::move(options))) {
        s_->writer = std::jthread{[s = s_.get()](std::stop_token stop) { s->run(stop); }};
    }
    /// The store behind made in place, for one that cannot be moved (memory_counter_store).
    template <class... Args>
    explicit coalescing_counter_store(std::in_place_t, coalescing_counter_store_options options, Args&&... args)
        : s_(std::make_unique<state>(std::move(options), std::forward<Args>(args)...)) {
        s_->writer = std::jthread{[s = s_.get()](std::stop_token stop) { s->run(stop); }};
    }
    coalescing_counter_store(coalescing_counter_store&&) noexcept = default;
    coalescing_counter_store& operator=(coalescing_counter_store&&) noexcept = default;

    result<counters_taken> take(std::span<const counter_add> adds) { return s_->store.take(adds); }

    result<void> add(std::span<const counter_add> adds) {
        state& s = *s_;
        {
            std::lock_guard lock{s.mutex};
            if (s.pending.size() + adds.size() <= s.options.max_pending) {
                const bool first = s.pending.empty();
                for (const auto& a : adds) merge(s.pending, a);
                if (first) s.wake.notify_one();
                return {};
            }
        }
        return s.store.add(adds); // requirement 4: held back no further than max_pending
    }

    /// Writes every held add() now (requirement 5).
    result<void> flush() { return s_->flush(); }

    /// Counters whose adds are held, not yet written.
    [[nodiscard]] std::size_t pending() const {
        std::lock_guard lock{s_->mutex};
        return s_->pending.size();
    }

    [[nodiscard]] Store& inner() noexcept { return s_->store; }

private:
    using batch = std::unordered_map<std::string, counter_add>;

    static void merge(batch& into, const counter_add& a) {
        auto [it, fresh] = into.try_emplace(a.name, a);
        if (fresh) return;
        it->second.amount += a.amount;
        it->second.expires_at = std::max(it->second.expires_at, a.expires_at);
    }

    struct state {
        state(Store s, coalescing_counter_store_options o) : store(std::move(s)), options(std::move(o)) {}
        template <class... Args>
        explicit state(coalescing_counter_store_options o, Args&&... args) : store(std::forward<Args>(args)...), options(std::move(o)) {}
        // The writer is stopped (and writes what is left) before the rest goes.
        ~state() {
            writer.request_stop();
            if (writer.joinable()) writer.join();
        }

        result<void> flush() {
            std::lock_guard one_writer{flushing}; // batches reach the store in order
            batch taken;
            {
                std::lock_guard lock{mutex};
                taken.swap(pending);
            }
            if (taken.empty()) return {};
            std::vector<counter_add> adds;
            adds.reserve(taken.size());
            for (auto& [name, a] : taken)
                if (a.amount != 0) adds.push_back(std::move(a));
            if (adds.empty()) return {};
            auto written = store.add(adds);
            if (written) return written;
            // Requirement 4: kept for the next batch, unless expired (the store would forget it).
            const unix_ms now = now_unix_ms();
            std::lock_guard lock{mutex};
            for (const auto& a : adds)
                if (a.expires_at > now) merge(pending, a);
            return written;
        }

        void run(std::stop_token stop) {
            std::unique_lock lock{mutex};
            while (!stop.stop_requested()) {
                wake.wait(lock, stop, [this] { return !pending.empty(); });
                if (stop.stop_requested()) break;
                // Requirement 3: the first add of a batch waits `interval` for others to join it.
                wake.wait_for(lock, stop, options.interval, [] { return false; });
                lock.unlock();
                if (auto written = flush(); !written && options.on_error) options.on_error(written.error());
                lock.lock();
            }
            lock.unlock();
            if (auto written = flush(); !written && options.on_error) options.on_error(written.error());
        }

        Store store;
        coalescing_counter_store_options options;
        mutable std::mutex mutex;
        std::mutex flushing;
        std::condition_variable_any wake;
        batch pending;
        std::jthread writer; // last: stopped and joined before the members it uses go
    };

    std::unique_ptr<state> s_;
};

static_assert(counter_store<coalescing_counter_store<memory_counter_store>>);

} // namespace chatkit
