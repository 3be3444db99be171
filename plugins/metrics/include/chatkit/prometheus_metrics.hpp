// A Middleware that counts what the service does, and renders it in the Prometheus text
// exposition format (version 0.0.4) for GET /metrics: requests by route and status, durations and
// the gateway's own overhead, time to first token, tokens by type and model and cost by team and
// model (named after the OpenTelemetry GenAI conventions), cache hits, upstream errors, retries
// and fallbacks, limit refusals, streams in flight, the store's group commits, and the process's
// memory, file descriptors and CPU. Retries, fallbacks and commits are told to it by the program
// that composes the service (count_retry, count_fallback, observe_store_commit), so that this
// plugin depends on no provider or store.
//
// Written here rather than with prometheus-cpp (Debian's prometheus-cpp-dev): its histograms lock
// a mutex per observation and its families look a label set up under a lock per call, so a
// request's eight observations would take eight locks; ours take one, in `finish`, after the last
// byte. Its package also brings civetweb and libcurl, and three shared libraries into the Lambda
// zip, for an exposition format of a few dozen lines.
#pragma once

#include "chatkit/chat_routes.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/middleware.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

namespace chatkit {

struct prometheus_metrics_options {
    // The paths counted under their own name; any other is counted as route="other", so that a
    // client probing random paths cannot grow the series. "/history/..." is "/history/{user_id}", a
    // conversation's path its template ("/api/v1/conversations/{id}/stream").
    std::vector<std::string> routes{
        "/chat", "/v1/chat/completions", "/v1/chat", "/v1/messages", "/v1/responses", "/v1/models", "/health", "/ready", "/", "/metrics"};
    // The most label sets kept per metric; past it new ones are counted as "other" (models and
    // teams come from requests and the key directory, so bound them).
    std::size_t max_series = 1000;
};

/// Requirements this middleware meets, and why:
///   1. Cheap enough to leave on: a request is counted once, in `finish` (after its last byte, off
///      the client's wait), under one lock held for a few map look-ups and additions.
///   2. Low cardinality: labels are routes, status codes, models, teams, providers and error
///      codes, never request or user ids, and every metric keeps at most `max_series` label sets.
///   3. Streams in flight are a gauge that `after` raises when a stream's headers go out and
///      `finish` lowers, however the stream ends.
///   4. Rendering reads the same state under the same lock; process figures come from /proc at
///      scrape time, not from the request path.
class prometheus_metrics {
public:
    struct context {
        bool stream_open = false;
    };

    // Copies share their counts: a program keeps one to render GET /metrics with while the
    // service holds another.
    explicit prometheus_metrics(prometheus_metrics_options options = {}) : state_(std::make_shared<state>(std::move(options))) {}

    std::optional<http_response> before(http_request&, context&) { return std::nullopt; }

    void after(const http_request&, http_response& res, context& ctx) {
        const auto type = res.headers.find("Content-Type");
        if (res.status != 200 || type == res.headers.end() || type->second != "text/event-stream") return;
        ctx.stream_open = true;
        std::lock_guard lock{state_->mutex};
        ++state_->streams_in_flight;
    }

    void finish(const http_request& req, const response_summary& s, context& ctx) {
        state& st = *state_;
        const std::string_view route = route_of(req.path);
        const bool chat = is_chat_route(route);
        const double seconds = s.duration_ms / 1000;
        char status[12];
        const auto status_size = std::snprintf(status, sizeof status, "%d", s.status);
        std::lock_guard lock{st.mutex};
        if (ctx.stream_open) --st.streams_in_flight;
        st.requests.add(st, {route, req.method, std::string_view{status, static_cast<std::size_t>(std::max(status_size, 0))}}, 1);
        st.duration.observe(st, {route}, seconds);
        if (!chat) return;
        st.overhead.observe(st, {route}, std::max(s.duration_ms - s.upstream_ms, 0.0) / 1000);
        if (s.status == 429) st.limit_refusals.add(st, {s.error_code.empty() ? "rate_limit_exceeded" : s.error_code}, 1);
        if (s.status >= 500 || (s.status == 200 && !s.error_code.empty()))
            st.upstream_errors.add(st, {s.provider, s.error_code.empty() ? "unknown" : s.error_code}, 1);
        if (s.status != 200) return;
        st.cache.add(st, {s.cached ? "hit" : "miss"}, 1);
        const std::string_view model = s.model.empty() ? std::string_view{"unknown"} : std::string_view{s.model};
        if (s.time_to_first_token_ms > 0) st.ttft.observe(st, {model}, s.time_to_first_token_ms / 1000);
        if (s.usage.total_tokens() > 0) {
            st.tokens.observe(st, {"input", model}, s.usage.prompt_tokens);
            st.tokens.observe(st, {"output", model}, s.usage.completion_tokens);
            if (s.usage.cached_tokens > 0) st.tokens.observe(st, {"cached", model}, s.usage.cached_tokens);
            if (s.usage.reasoning_tokens > 0) st.tokens.observe(st, {"reasoning", model}, s.usage.reasoning_tokens);
        }
        const std::string_view team = req.caller.team_id.empty() ? std::string_view{"none"} : std::string_view{req.caller.team_id};
        if (s.cost_usd) st.cost.add(st, {team, model}, *s.cost_usd);
        else if (s.usage.total_tokens() > 0) st.unpriced.add(st, {model}, 1);
    }

    /// One upstream attempt that failed and will be retried (a provider's `on_retry`), by provider
    /// name and a code from a short list (retry_code), so an upstream's own codes cannot grow it.
    void count_retry(std::string_view provider, const error& e) {
        state& st = *state_;
        std::lock_guard lock{st.mutex};
        st.retries.add(st, {provider, retry_code(e)}, 1);
    }

    /// A router's fallback (router_options::on_fallback): `from` failed, `to` is tried next.
    /// Providers are the configured names, and the code comes from retry_code's short list.
    void count_fallback(std::string_view from, std::string_view to, const error& e) {
        state& st = *state_;
        std::lock_guard lock{st.mutex};
        st.fallbacks.add(st, {from, to, retry_code(e)}, 1);
    }

    /// The label of a retried failure: `rate_limited` (a 429 or a throttling), `upstream_timeout`,
    /// chatkit's own `upstream_*` code (`upstream_unreachable`, `upstream_503`, `upstream_truncated`...),
    /// `upstream_unavailable`, else `upstream_error`.
    [[nodiscard]] static std::string_view retry_code(const error& e) {
        if (e.kind == error_kind::rate_limited) return "rate_limited";
        if (e.kind == error_kind::timeout) return "upstream_timeout";
        const bool ours = e.code.starts_with("upstream_") && e.code.size() <= 32 && std::all_of(e.code.begin(), e.code.end(), [](char c) {
                              return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
                          });
        if (ours) return e.code;
        if (e.kind == error_kind::unavailable) return "upstream_unavailable";
        return "upstream_error";
    }

    /// One group commit of a store (e.g. sqlite_options::on_commit): how many appends it answered
    /// and how long its transaction took.
    void observe_store_commit(std::size_t batch, double seconds) {
        state& st = *state_;
        std::lock_guard lock{st.mutex};
        st.commit_seconds.observe(st, {}, seconds);
        st.commit_batch.observe(st, {}, static_cast<double>(batch));
    }

    /// Adds figures counted elsewhere (a trace exporter's spans, a queue's depth) to every scrape:
    /// `write` appends whole metric families in the text format, after chatkit's own, and is
    /// called outside this middleware's lock. Call before serving: sources are not synchronized.
    void add_source(std::function<void(std::string&)> write) { state_->sources.push_back(std::move(write)); }

    /// The Prometheus text format of everything counted so far, and the process's figures.
    [[nodiscard]] std::string render() const {
        const state& st = *state_;
        std::string out;
        out.reserve(16 * 1024);
        {
            std::lock_guard lock{st.mutex};
            st.requests.render(out);
            st.duration.render(out);
            st.overhead.render(out);
            st.ttft.render(out);
            st.tokens.render(out);
            st.cost.render(out);
            st.unpriced.render(out);
            st.cache.render(out);
            st.upstream_errors.render(out);
            st.retries.render(out);
            st.fallbacks.render(out);
            st.limit_refusals.render(out);
            st.commit_seconds.render(out);
            st.commit_batch.render(out);
            gauge(out, "chatkit_streams_in_flight", "Streamed answers being sent now.", static_cast<double>(st.streams_in_flight));
        }
        process_figures(out);
        for (const auto& write : st.sources) write(out);
        return out;
    }

    /// GET /metrics's answer.
    [[nodiscard]] http_response response() const {
        http_response res;
        res.status = 200;
        res.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8";
        res.body = render();
        return res;
    }

private:
    using labels = std::initializer_list<std::string_view>;
    struct state;

    // A counter or a histogram family: its label sets, each with its numbers.
    struct family {
        std::string name, help, type; // type: "counter" or "histogram"
        std::vector<std::string> label_names;
        std::vector<double> bounds{}; // histogram buckets' upper bounds
        struct series {
            double value = 0;                  // counter
            std::vector<std::uint64_t> counts; // histogram: per bucket (not cumulative), then +Inf
            double sum = 0;
            std::uint64_t count = 0;
        };
        // Keyed by the label values joined with '\x1f' (which no model, team or route name holds):
        // a look-up builds the key in a buffer of this thread's, so counting allocates nothing once
        // a label set exists.
        std::unordered_map<std::string, series> by_labels{};

        series& at(const state& st, labels l) {
            thread_local std::string key;
            key.clear();
            bool first = true;
            for (const auto& v : l) {
                if (!first) key += '\x1f';
                first = false;
                for (char c : v) key += c == '\x1f' ? '?' : c;
            }
            auto it = by_labels.find(key);
            if (it != by_labels.end()) return it->second;
            if (by_labels.size() >= st.options.max_series) { // requirement 2
                key.clear();
                for (std::size_t i = 0; i < l.size(); ++i) key += i ? "\x1fother" : "other";
                if (auto other = by_labels.find(key); other != by_labels.end()) return other->second;
            }
            auto& fresh = by_labels[key];
            if (!bounds.empty()) fresh.counts.assign(bounds.size() + 1, 0);
            return fresh;
        }
        void add(const state& st, labels l, double v) { at(st, l).value += v; }
        void observe(const state& st, labels l, double v) {
            series& s = at(st, l);
            const auto bucket = static_cast<std::size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
            ++s.counts[bucket];
            s.sum += v;
            ++s.count;
        }

        void render(std::string& out) const {
            if (by_labels.empty()) return;
            out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
            // Sorted, so that a scrape lists a metric's series in a stable order.
            std::vector<const std::pair<const std::string, series>*> sorted;
            sorted.reserve(by_labels.size());
            for (const auto& entry : by_labels) sorted.push_back(&entry);
            std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
            for (const auto* entry : sorted) {
                const std::string& l = entry->first;
                const series& s = entry->second;
                if (type == "counter") {
                    line(out, name, l, {}, s.value);
                    continue;
                }
                std::uint64_t cumulative = 0;
                for (std::size_t i = 0; i <= bounds.size(); ++i) {
                    cumulative += s.counts[i];
                    line(out, name + "_bucket", l, i < bounds.size() ? number(bounds[i]) : "+Inf", static_cast<double>(cumulative));
                }
                line(out, name + "_sum", l, {}, s.sum);
                line(out, name + "_count", l, {}, static_cast<double>(s.count));
            }
        }
        void line(std::string& out, const std::string& metric, const std::string& key, const std::string& le, double v) const {
            out += metric;
            if (!label_names.empty() || !le.empty()) {
                out += '{';
                std::size_t from = 0;
                for (std::size_t i = 0; i < label_names.size(); ++i) {
                    const auto to = std::min(key.find('\x1f', from), key.size());
                    if (i) out += ',';
                    out += label_names[i] + "=\"" + escape(std::string_view{key}.substr(from, to - from)) + '"';
                    from = to + 1;
                }
                if (!le.empty()) out += std::string{label_names.empty() ? "" : ","} + "le=\"" + le + '"';
                out += '}';
            }
            out += ' ' + number(v) + '\n';
        }
    };

    struct state {
        explicit state(prometheus_metrics_options o) : options(std::move(o)) {}
        prometheus_metrics_options options;
        mutable std::mutex mutex;
        std::vector<std::function<void(std::string&)>> sources; // add_source's
        std::int64_t streams_in_flight = 0;
        family requests{
            "chatkit_http_requests_total", "Requests answered, by route, method and status.", "counter", {"route", "method", "status"}};
        family duration{"gen_ai_server_request_duration_seconds",
                        "Time from a request's arrival to its last byte.",
                        "histogram",
                        {"route"},
                        seconds_buckets()};
        family overhead{"chatkit_gateway_overhead_seconds",
                        "A chat request's time not spent waiting on the provider.",
                        "histogram",
                        {"route"},
                        {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}};
        family ttft{"gen_ai_server_time_to_first_token_seconds",
                    "Time to a chat answer's first token (a JSON answer: its latency).",
                    "histogram",
                    {"gen_ai_request_model"},
                    seconds_buckets()};
        family tokens{"gen_ai_client_token_usage",
                      "Tokens per chat answer, by type and model.",
                      "histogram",
                      {"gen_ai_token_type", "gen_ai_request_model"},
                      {1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576}};
        family cost{"chatkit_cost_usd_total",
                    "What chat answers cost at the configured prices, by team and model.",
                    "counter",
                    {"team", "gen_ai_request_model"}};
        family unpriced{"chatkit_unpriced_requests_total",
                        "Chat answers that used tokens of a model with no price.",
                        "counter",
                        {"gen_ai_request_model"}};
        family cache{"chatkit_cache_requests_total", "Chat answers, by whether the cache had them.", "counter", {"result"}};
        family upstream_errors{"chatkit_upstream_errors_total",
                               "Chat requests that ended in an error, by provider and code.",
                               "counter",
                               {"provider", "code"}};
        family limit_refusals{
            "chatkit_limit_refusals_total", "Chat requests refused by a limit or budget (429), by code.", "counter", {"code"}};
        family retries{"chatkit_upstream_retries_total",
                       "Upstream attempts that failed and were retried, by provider and the failure's code.",
                       "counter",
                       {"provider", "code"}};
        family fallbacks{
            "chatkit_upstream_fallbacks_total",
            "Requests a router sent to the next provider of their route, by the provider that failed, the next one and the failure's code.",
            "counter",
            {"from", "to", "code"}};
        family commit_seconds{"chatkit_store_commit_seconds",
                              "Time of one group commit of the history store (its transaction, fsync included).",
                              "histogram",
                              {},
                              {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
        family commit_batch{"chatkit_store_commit_batch_size",
                            "Appends answered by one group commit of the history store.",
                            "histogram",
                            {},
                            {1, 2, 4, 8, 16, 32, 64, 128, 256}};
    };

    std::string_view route_of(std::string_view path) const {
        for (const auto& r : state_->options.routes)
            if (r == path) return r;
        if (path.starts_with("/history/")) return "/history/{user_id}";
        if (const auto conversation = conversation_route_of(path); !conversation.empty()) return conversation;
        return "other";
    }

    static std::vector<double> seconds_buckets() {
        return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    }
    // The shortest of 15 or 17 digits that reads back as `v`: a bucket bound 0.0025 is le="0.0025",
    // not le="0.0025000000000000001", and a sum loses nothing.
    static std::string number(double v) {
        if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
        char text[32];
        int n = std::snprintf(text, sizeof text, "%.15g", v);
        if (std::strtod(text, nullptr) != v) n = std::snprintf(text, sizeof text, "%.17g", v);
        return std::string(text, static_cast<std::size_t>(std::max(n, 0)));
    }
    static std::string escape(std::string_view v) {
        std::string out;
        for (char c : v) {
            if (c == '\\') out += "\\\\";
            else if (c == '"') out += "\\\"";
            else if (c == '\n') out += "\\n";
            else out += c;
        }
        return out;
    }
    static void gauge(std::string& out, const std::string& name, const std::string& help, double v) {
        out += "# HELP " + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " + number(v) + "\n";
    }

    // The names the Prometheus client libraries use, so existing dashboards work.
    static void process_figures(std::string& out) {
        const long page = ::sysconf(_SC_PAGESIZE);
        const long ticks = ::sysconf(_SC_CLK_TCK);
        if (std::ifstream statm{"/proc/self/statm"}; statm) {
            long size = 0, resident = 0;
            if (statm >> size >> resident)
                gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.",
                      static_cast<double>(resident) * static_cast<double>(page));
        }
        std::error_code ec;
        std::size_t fds = 0;
        for (auto it = std::filesystem::directory_iterator{"/proc/self/fd", ec}; !ec && it != std::filesystem::directory_iterator{};
             it.increment(ec))
            ++fds;
        if (!ec) gauge(out, "process_open_fds", "Open file descriptors.", static_cast<double>(fds));
        if (std::ifstream stat{"/proc/self/stat"}; stat && ticks > 0) {
            std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
            // Fields after the command name (which may hold spaces), from its closing parenthesis:
            // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after it.
            const auto close = text.rfind(')');
            if (close != std::string::npos) {
                std::istringstream rest{text.substr(close + 2)};
                std::string field;
                double utime = 0, stime = 0;
                for (int i = 1; i <= 13 && rest >> field; ++i) {
                    if (i == 12) utime = std::stod(field);
                    if (i == 13) stime = std::stod(field);
                }
                out += "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                       "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total " +
                       number((utime + stime) / static_cast<double>(ticks)) + "\n";
            }
        }
    }

    std::shared_ptr<state> state_;
};
static_assert(middleware<prometheus_metrics>);
static_assert(middleware_has_finish<prometheus_metrics>);

} // namespace chatkit
