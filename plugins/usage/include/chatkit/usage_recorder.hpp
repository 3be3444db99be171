// A Middleware that writes one usage record per chat request into a chatkit::usage_store, off the
// request path: `finish` only queues the record; a thread of the recorder's own writes the queue
// in batches (a SQLite group commit, one DynamoDB batch), so no request waits on the database and
// the durability cost is paid per batch.
#pragma once

#include "chatkit/chat_routes.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"
#include "chatkit/usage_store.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit {

struct usage_recorder_options {
    // The routes whose requests are recorded (POST, and GET of a conversation's stream), by their
    // templates (chatkit::route_template): the chat routes, whose answers use tokens.
    std::vector<std::string> paths{chat_routes.begin(), chat_routes.end()};
    // Records written per append at most; a longer queue takes several.
    std::size_t max_batch = 500;
    // Records queued at most. Past it a new record is dropped and counted (dropped()), so that a
    // database that is down for long cannot take the process's memory with it.
    std::size_t max_queued = 100'000;
    // How long a failed batch waits before it is tried again (it stays first in the queue).
    std::chrono::milliseconds retry_after{1000};
    // Told when a batch cannot be written (it will be tried again), or when a record was dropped.
    std::function<void(const error&)> on_error{};
};

/// Requirements this middleware meets, and why:
///   1. No request waits on the store: `finish` appends to an in-memory queue under a mutex held
///      for a push. Why: an fsync or a network round trip per request would cap throughput.
///   2. Nothing acknowledged is lost on a clean stop: the destructor writes what is queued before
///      it returns (a store that is down then gets a few more tries, then what is left is dropped
///      and counted). A crash loses at most the records of the last moments (what was queued and
///      not yet written), never a written one.
///   3. A store that is down does not lose records while it comes back: a failed batch stays
///      queued and is retried; only past `max_queued` are records dropped, and counted.
///   4. Records follow the order requests finished in; a batch is written whole or not at all
///      (usage_store requirement 1), so a retry never writes a record twice.
template <class Store>
class usage_recorder {
    static_assert(usage_store_check<Store>::value);

public:
    // `store` is shared: the same store answers GET /v1/usage and budgets' spent_usd.
    explicit usage_recorder(std::shared_ptr<Store> store, usage_recorder_options options = {})
        : state_(std::make_shared<state>(std::move(store), std::move(options))) {
        state_->writer = std::jthread([s = state_.get()](std::stop_token stop) { s->write_until(stop); });
    }
    usage_recorder(usage_recorder&&) noexcept = default;
    usage_recorder& operator=(usage_recorder&&) noexcept = default;
    // Writes what is queued (requirement 2), then stops the writer.
    ~usage_recorder() {
        if (!state_) return;
        state_->writer.request_stop();
        state_->wake.notify_all();
        if (state_->writer.joinable()) state_->writer.join();
    }

    std::optional<http_response> before(http_request&, no_context&) { return std::nullopt; }
    void after(const http_request&, http_response&, no_context&) {}

    void finish(const http_request& req, const response_summary& s, no_context&) {
        if ((req.method != "POST" && !is_chat_request(req.method, req.path)) || !recorded(route_template(req.path))) return;
        usage_record r;
        r.time = now_unix_ms();
        r.request_id = req.request_id;
        r.team_id = req.caller.team_id;
        r.key_id = req.caller.key_id;
        r.model = s.model;
        r.provider = s.provider;
        r.status = s.status;
        r.usage = s.usage;
        r.cost_usd = s.cost_usd;
        r.latency_ms = s.duration_ms;
        r.time_to_first_token_ms = s.time_to_first_token_ms;
        r.cached = s.cached;
        r.streamed = s.streamed;
        r.cancelled = s.client_left;
        r.estimated = s.usage_estimated;
        state_->push(std::move(r));
    }

    /// Waits until every record queued so far is written; true when they are. False when
    /// `timeout` passes or as soon as a write fails (the records stay queued, retried as always):
    /// a store that is down must not hold the caller for the whole timeout each time. For a
    /// program's pauses (the Lambda runtime calls it before asking for the next event, since the
    /// instance may be frozen then) and tests; requests never call it.
    bool flush(std::chrono::milliseconds timeout = std::chrono::seconds{10}) {
        std::unique_lock lock{state_->mutex};
        const std::uint64_t target = state_->queued_total;
        const std::uint64_t failures = state_->failed_batches;
        state_->wake.notify_all();
        state_->written_cv.wait_for(lock, timeout, [&] { return state_->written_total >= target || state_->failed_batches != failures; });
        return state_->written_total >= target;
    }

    /// Records dropped because the queue was full (requirement 3).
    [[nodiscard]] std::uint64_t dropped() const {
        std::lock_guard lock{state_->mutex};
        return state_->dropped;
    }

    /// What the recorder has done so far, for a program's metrics.
    struct stats {
        std::size_t queued = 0;          // records waiting now
        std::uint64_t written = 0;       // records written, ever
        std::uint64_t dropped = 0;       // records dropped because the queue was full
        std::uint64_t failed_writes = 0; // batches whose write failed (their records stay queued)
    };
    [[nodiscard]] stats figures() const { return state_->figures(); }
    /// The same from a handle that stays valid once the recorder has moved (into a service): for
    /// a metrics source set up before the service is built.
    [[nodiscard]] std::function<stats()> figures_source() const {
        return [s = std::shared_ptr<const state>(state_)] { return s->figures(); };
    }

    [[nodiscard]] const std::shared_ptr<Store>& store() const noexcept { return state_->store; }

private:
    bool recorded(std::string_view path) const {
        for (const auto& p : state_->options.paths)
            if (p == path) return true;
        return false;
    }

    struct state {
        std::shared_ptr<Store> store;
        usage_recorder_options options;
        mutable std::mutex mutex;
        std::condition_variable_any wake;
        std::condition_variable written_cv;
        std::vector<usage_record> queue;
        std::uint64_t queued_total = 0;   // records ever queued (dropped ones not counted)
        std::uint64_t written_total = 0;  // records ever written
        std::uint64_t failed_batches = 0; // appends that failed, for flush() to stop waiting
        std::uint64_t dropped = 0;
        int failures_while_stopping = 0;
        std::jthread writer; // last: joined (by the destructor) before the rest goes

        state(std::shared_ptr<Store> s, usage_recorder_options o) : store(std::move(s)), options(std::move(o)) {}

        stats figures() const {
            std::lock_guard lock{mutex};
            return {queue.size(), written_total, dropped, failed_batches};
        }

        void push(usage_record r) {
            {
                std::lock_guard lock{mutex};
                if (queue.size() >= options.max_queued) {
                    ++dropped;
                } else {
                    queue.push_back(std::move(r));
                    ++queued_total;
                    if (queue.size() == 1) wake.notify_one();
                    return;
                }
            }
            if (options.on_error)
                options.on_error({error_kind::unavailable, "usage queue full: a usage record was dropped", "usage_dropped"});
        }

        void write_until(std::stop_token stop) {
            std::unique_lock lock{mutex};
            for (;;) {
                wake.wait(lock, stop, [&] { return !queue.empty(); });
                if (queue.empty()) return; // stopped, nothing left (requirement 2)
                const std::size_t n = std::min(queue.size(), options.max_batch);
                std::vector<usage_record> batch(std::make_move_iterator(queue.begin()),
                                                std::make_move_iterator(queue.begin() + static_cast<std::ptrdiff_t>(n)));
                lock.unlock();
                auto written = store->append(std::span<const usage_record>{batch});
                lock.lock();
                if (written) {
                    queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n));
                    written_total += n;
                    written_cv.notify_all();
                    continue;
                }
                // Requirement 3: the batch was moved from; put it back as it was, first in line.
                std::move(batch.begin(), batch.end(), queue.begin());
                lock.unlock();
                if (options.on_error) options.on_error(written.error());
                lock.lock();
                ++failed_batches; // after on_error: a flush() that returns on it finds the failure reported
                written_cv.notify_all();
                if (stop.stop_requested()) {
                    // Stopping: a few more tries, briefly apart, then give up on what is left (a
                    // store that stays down cannot hold the process's exit forever).
                    if (++failures_while_stopping > 3) {
                        dropped += queue.size();
                        queue.clear();
                        return;
                    }
                    lock.unlock();
                    std::this_thread::sleep_for(std::min(options.retry_after, std::chrono::milliseconds{100}));
                    lock.lock();
                    continue;
                }
                wake.wait_for(lock, stop, options.retry_after, [] { return false; });
            }
        }
    };

    // Shared only with figures_source()'s handles; the writer is stopped by ~usage_recorder.
    std::shared_ptr<state> state_;
};

} // namespace chatkit
