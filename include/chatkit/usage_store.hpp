// The Usage store concept: where a gateway keeps one record per chat request (who, which model,
// how many tokens, what it cost) and answers "what did this team use, and spend". Records come
// from chatkit::usage_recorder, which batches them off the request path; reports serve
// GET /v1/usage; sums serve budgets that must survive a restart.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

namespace chatkit {

/// One chat request, as billed.
struct usage_record {
    unix_ms time = 0; // when the request finished (its last byte, or the client left)
    std::string request_id{};
    std::string team_id{}; // empty without authentication
    std::string key_id{};
    std::string model{};
    std::string provider{};
    int status = 0;
    token_usage usage{};
    std::optional<double> cost_usd{}; // empty: unpriced (the model has no price), never $0
    double latency_ms = 0;
    double time_to_first_token_ms = 0;
    bool cached = false;
    bool streamed = false;
    bool cancelled = false; // the client left before the answer was complete
    bool estimated = false; // usage counted from the text delivered, not reported by the provider

    friend bool operator==(const usage_record&, const usage_record&) = default;
};

/// Totals of a set of records.
struct usage_totals {
    std::int64_t requests = 0;
    std::int64_t tokens = 0;
    double cost_usd = 0;                // of the priced records
    std::int64_t unpriced_requests = 0; // records that used tokens of a model with no price

    friend bool operator==(const usage_totals&, const usage_totals&) = default;
};

/// What a team used in [since, until): by model (largest cost first) and by UTC day (oldest
/// first, days without requests left out).
struct usage_summary {
    usage_totals total{};
    std::vector<std::pair<std::string, usage_totals>> by_model{};
    std::vector<std::pair<std::string, usage_totals>> by_day{}; // "YYYY-MM-DD"
};

struct usage_query {
    std::string team_id{}; // empty: the requests made without authentication
    unix_ms since = 0;
    unix_ms until = 0;
};

/// The records of a time range [since, until), of one team or of every team (a dashboard's
/// breakdowns by team, key and hour, and its percentiles, need the records themselves).
struct usage_range {
    std::optional<std::string> team_id{}; // empty: every team's records, and those made without authentication
    unix_ms since = 0;
    unix_ms until = 0;
};

/// Called once per record of a range, in no particular order.
using usage_record_visitor = std::function<void(const usage_record&)>;

namespace detail {
template <class U>
concept usage_store_has_append = requires(U& u, std::span<const usage_record> records) {
    { u.append(records) } -> std::same_as<result<void>>;
};
template <class U>
concept usage_store_has_summarize = requires(U& u, const usage_query& q) {
    { u.summarize(q) } -> std::same_as<result<usage_summary>>;
};
template <class U>
concept usage_store_has_spent = requires(U& u, std::string_view scope, std::string_view id, unix_ms since) {
    { u.spent_usd(scope, id, since) } -> std::same_as<result<double>>;
};
template <class U>
concept usage_store_has_for_each_record = requires(U& u, const usage_range& range, const usage_record_visitor& each) {
    { u.for_each_record(range, each) } -> std::same_as<result<void>>;
};
} // namespace detail

/// A Usage store model provides:
///   1. `result<void> append(std::span<const usage_record>)` — stores a batch, all of it or none,
///      durably before it returns. Why batches: the recorder writes many requests per commit, so
///      the durability cost (an fsync, a network round trip) is paid per batch, not per request.
///      A store that cannot write a batch atomically (DynamoDB's BatchWriteItem) must make a
///      failed batch safe to write again whole: each record stored once however often it is
///      written, since the recorder writes a failed batch again.
///   2. `result<usage_summary> summarize(const usage_query&)` — one team's totals in a time range,
///      by model and by UTC day. Why in the store: it can aggregate where the records are (an
///      indexed GROUP BY) instead of shipping every record to the caller.
///   3. `result<double> spent_usd(std::string_view scope, std::string_view id, unix_ms since)` —
///      the cost of the priced records of a key (scope "key") or a team ("team") since a time.
///      Why: a budget's spending must survive a restart; chatkit::key_usage_limits reads it once
///      per key and period.
///   4. `result<void> for_each_record(const usage_range&, const usage_record_visitor& each)` — hands every
///      record of a range (one team's, or every team's) to `each`, which must not call the store.
///      Why: a dashboard breaks usage down by team, key and hour and takes latency percentiles,
///      which no fixed summary serves; visiting, rather than returning a vector, lets the caller
///      keep only what it aggregates. On an error, `each` may have seen some of the records.
///   5. All four may block; they are called off the request path (the recorder's thread, a
///      custom route on the worker pool). Failures are `error_kind::unavailable` values.
template <class U>
concept usage_store = detail::usage_store_has_append<U> && detail::usage_store_has_summarize<U> && detail::usage_store_has_spent<U> &&
    detail::usage_store_has_for_each_record<U>;

template <class U>
struct usage_store_check {
    static_assert(detail::usage_store_has_append<U>,
                  "chatkit::usage_store: missing `chatkit::result<void> append(std::span<const chatkit::usage_record>)`");
    static_assert(detail::usage_store_has_summarize<U>,
                  "chatkit::usage_store: missing `chatkit::result<chatkit::usage_summary> summarize(const chatkit::usage_query&)`");
    static_assert(
        detail::usage_store_has_spent<U>,
        "chatkit::usage_store: missing `chatkit::result<double> spent_usd(std::string_view, std::string_view, chatkit::unix_ms)`");
    static_assert(detail::usage_store_has_for_each_record<U>, "chatkit::usage_store: missing `chatkit::result<void> for_each_record(const "
                                                              "chatkit::usage_range&, const chatkit::usage_record_visitor&)`");
    static constexpr bool value = usage_store<U>;
};

/// The reference model: records kept in memory (tests, or a process that needs no history).
struct memory_usage_store {
    std::vector<usage_record> records{};

    result<void> append(std::span<const usage_record> batch) {
        records.insert(records.end(), batch.begin(), batch.end());
        return {};
    }
    result<usage_summary> summarize(const usage_query& q) const {
        usage_summary s;
        for (const auto& r : records) {
            if (r.team_id != q.team_id || r.time < q.since || r.time >= q.until) continue;
            add(s.total, r);
            add(slot(s.by_model, r.model), r);
            add(slot(s.by_day, format_rfc3339(r.time).substr(0, 10)), r);
        }
        std::stable_sort(s.by_model.begin(), s.by_model.end(),
                         [](const auto& a, const auto& b) { return a.second.cost_usd > b.second.cost_usd; });
        std::sort(s.by_day.begin(), s.by_day.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        return s;
    }
    result<void> for_each_record(const usage_range& range, const usage_record_visitor& each) const {
        for (const auto& r : records)
            if (r.time >= range.since && r.time < range.until && (!range.team_id || r.team_id == *range.team_id)) each(r);
        return {};
    }
    result<double> spent_usd(std::string_view scope, std::string_view id, unix_ms since) const {
        double sum = 0;
        for (const auto& r : records)
            if (r.time >= since && r.cost_usd && (scope == "team" ? r.team_id : r.key_id) == id) sum += *r.cost_usd;
        return sum;
    }

    /// Adds one record to a total: the arithmetic every store's summary follows.
    static void add(usage_totals& t, const usage_record& r) {
        ++t.requests;
        t.tokens += r.usage.total_tokens();
        if (r.cost_usd) t.cost_usd += *r.cost_usd;
        else if (r.usage.total_tokens() > 0) ++t.unpriced_requests;
    }

private:
    static usage_totals& slot(std::vector<std::pair<std::string, usage_totals>>& v, const std::string& key) {
        for (auto& [k, t] : v)
            if (k == key) return t;
        return v.emplace_back(key, usage_totals{}).second;
    }
};
static_assert(usage_store<memory_usage_store>);

/// One of several Usage stores, chosen at run time (a SQLite file or a DynamoDB table, as the
/// database URL says), itself a Usage store: the recorder, the report and budgets take one type.
template <class... Us>
class usage_store_variant {
    static_assert((usage_store_check<Us>::value && ...));

public:
    template <class U>
        requires(std::same_as<std::remove_cvref_t<U>, Us> || ...)
    usage_store_variant(U&& u) : v_(std::forward<U>(u)) {}

    result<void> append(std::span<const usage_record> batch) {
        return std::visit([batch](auto& u) { return u.append(batch); }, v_);
    }
    result<usage_summary> summarize(const usage_query& q) {
        return std::visit([&q](auto& u) { return u.summarize(q); }, v_);
    }
    result<double> spent_usd(std::string_view scope, std::string_view id, unix_ms since) {
        return std::visit([=](auto& u) { return u.spent_usd(scope, id, since); }, v_);
    }
    result<void> for_each_record(const usage_range& range, const usage_record_visitor& each) {
        return std::visit([&range, &each](auto& u) { return u.for_each_record(range, each); }, v_);
    }
    template <class U>
    U* get_if() noexcept {
        return std::get_if<U>(&v_);
    }

private:
    std::variant<Us...> v_;
};
static_assert(usage_store<usage_store_variant<memory_usage_store>>);

} // namespace chatkit
