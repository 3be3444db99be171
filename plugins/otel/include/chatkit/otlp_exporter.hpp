// Sends spans to an OpenTelemetry collector over OTLP/HTTP, in batches, from a thread of its own:
// a request only appends its spans to a bounded queue. A collector that is down or slow costs the
// requests nothing: when the queue is full, spans are dropped and counted.
#pragma once

#include "chatkit/otlp_traces.hpp"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit {

enum class otlp_encoding { protobuf, json };

struct otlp_exporter_options {
    // The traces URL itself (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT
    // with /v1/traces appended). http:// or https:// (verified against the system's CAs).
    std::string endpoint = "http://localhost:4318/v1/traces";
    otlp_encoding encoding = otlp_encoding::protobuf;
    // Sent with every export (a collector's API key, say): never logged.
    std::vector<std::pair<std::string, std::string>> headers{};
    std::chrono::milliseconds timeout{10'000};       // per export: connect, send and answer
    std::size_t max_queue = 2048;                    // spans waiting; past it new ones are dropped
    std::size_t max_batch = 512;                     // spans per export
    std::chrono::milliseconds schedule_delay{5'000}; // the longest a span waits for a batch to fill
    trace_resource resource{};
    // Why an export failed (the collector's status, or the transport's error): for the program's
    // log. Called on the exporter's thread; it never names a header's value.
    std::function<void(std::string_view)> on_error{};
};

/// What the exporter has done since it started, for /metrics and tests.
struct otlp_exporter_stats {
    std::uint64_t exported = 0; // spans the collector accepted
    std::uint64_t dropped = 0;  // spans refused because the queue was full
    std::uint64_t failed = 0;   // spans in exports that failed (collector down, refused, timed out)
};

class otlp_exporter {
public:
    explicit otlp_exporter(otlp_exporter_options options)
        : state_(std::make_unique<state>(std::move(options))), worker_([s = state_.get()](std::stop_token stop) { s->run(stop); }) {}
    // Exports what is queued (for at most the export timeout), then stops.
    ~otlp_exporter() {
        (void)flush(state_->options.timeout);
        worker_.request_stop();
        state_->wake.notify_all();
    }
    otlp_exporter(const otlp_exporter&) = delete;
    otlp_exporter& operator=(const otlp_exporter&) = delete;

    /// Queues `spans` (moved from) for export; what does not fit is dropped and counted.
    void push(std::span<span_data> spans) {
        state& s = *state_;
        bool full_batch = false;
        {
            std::lock_guard lock{s.mutex};
            for (auto& span : spans) {
                if (s.queue.size() >= s.options.max_queue) {
                    ++s.stats.dropped;
                    continue;
                }
                s.queue.push_back(std::move(span));
            }
            full_batch = s.queue.size() >= s.options.max_batch;
        }
        if (full_batch) s.wake.notify_one();
    }

    /// Exports everything queued now, waiting at most `timeout`: for a Lambda function before it
    /// is frozen between invocations, and at shutdown. False when it did not finish in time.
    bool flush(std::chrono::milliseconds timeout) {
        state& s = *state_;
        std::unique_lock lock{s.mutex};
        const std::uint64_t target = s.enqueued_total();
        s.flush_wanted = std::max(s.flush_wanted, target);
        s.wake.notify_one();
        return s.done.wait_for(lock, timeout, [&] { return s.settled >= target; });
    }

    [[nodiscard]] otlp_exporter_stats stats() const {
        std::lock_guard lock{state_->mutex};
        return state_->stats;
    }
    [[nodiscard]] const otlp_exporter_options& options() const noexcept { return state_->options; }

private:
    struct state {
        explicit state(otlp_exporter_options o) : options(std::move(o)) {}

        otlp_exporter_options options;
        mutable std::mutex mutex;
        std::condition_variable_any wake; // the worker: a full batch, a flush or the stop
        std::condition_variable done;     // flush(): spans settled
        std::deque<span_data> queue;
        otlp_exporter_stats stats;
        std::uint64_t taken = 0;   // spans the worker has taken from the queue, ever
        std::uint64_t settled = 0; // of those, exported or failed
        std::uint64_t flush_wanted = 0;

        std::uint64_t enqueued_total() const { return taken + queue.size(); }

        void run(std::stop_token stop) {
            auto [origin, path] = split_endpoint(options.endpoint);
            httplib::Client client{origin};
            const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(options.timeout);
            const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(options.timeout - seconds);
            client.set_connection_timeout(seconds.count(), micros.count());
            client.set_read_timeout(seconds.count(), micros.count());
            client.set_write_timeout(seconds.count(), micros.count());
            client.set_keep_alive(true);
            httplib::Headers headers;
            for (const auto& [name, value] : options.headers) headers.emplace(name, value);
            const char* type = options.encoding == otlp_encoding::json ? "application/json" : "application/x-protobuf";

            std::vector<span_data> batch;
            for (;;) {
                {
                    std::unique_lock lock{mutex};
                    wake.wait_for(lock, stop, options.schedule_delay,
                                  [&] { return queue.size() >= options.max_batch || flush_wanted > taken; });
                    if (queue.empty()) {
                        if (stop.stop_requested()) return;
                        continue;
                    }
                    const std::size_t n = std::min(queue.size(), options.max_batch);
                    batch.assign(std::make_move_iterator(queue.begin()),
                                 std::make_move_iterator(queue.begin() + static_cast<std::ptrdiff_t>(n)));
                    queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n));
                    taken += n;
                }
                const std::string body = options.encoding == otlp_encoding::json ? otlp_json(options.resource, batch)
                                                                                 : otlp_protobuf(options.resource, batch);
                std::string failure;
                if (auto res = client.Post(path, headers, body, type)) {
                    if (res->status < 200 || res->status > 299) failure = "the collector answered " + std::to_string(res->status);
                } else {
                    failure = "cannot reach the collector (" + httplib::to_string(res.error()) + ")";
                }
                if (!failure.empty() && options.on_error) options.on_error(failure);
                {
                    std::lock_guard lock{mutex};
                    (failure.empty() ? stats.exported : stats.failed) += batch.size();
                    settled += batch.size();
                }
                done.notify_all();
                batch.clear();
            }
        }

        // "http://host:4318/v1/traces" -> ("http://host:4318", "/v1/traces")
        static std::pair<std::string, std::string> split_endpoint(const std::string& url) {
            const auto scheme_end = url.find("://");
            const auto path_at = url.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
            if (path_at == std::string::npos) return {url, "/"};
            return {url.substr(0, path_at), url.substr(path_at)};
        }
    };

    std::unique_ptr<state> state_;
    std::jthread worker_; // joined first, while the state it reads still exists
};

} // namespace chatkit
