// GET /v1/usage/dashboard: what a usage dashboard draws, from the records of a period
// (chatkit::usage_store::for_each_record), aggregated here: requests, tokens and cost per day (per
// hour for one day) by model and by team, the teams and keys that cost most, error and 429 rates,
// latency and time-to-first-token percentiles, the cache hit ratio and unpriced requests. Totals
// follow the arithmetic of GET /v1/usage (memory_usage_store::add), so both agree on a period.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/usage_report.hpp"
#include "chatkit/usage_store.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace chatkit {

/// What the dashboard shows: a period, and optionally one team and one model.
struct usage_dashboard_query {
    usage_period period{};
    std::optional<std::string> team_id{}; // empty: every team
    std::optional<std::string> model{};   // empty: every model
    std::size_t top = 10;                 // rows of the top keys
};

namespace dashboard_detail {

inline constexpr unix_ms hour_ms = 3'600'000;
inline constexpr unix_ms day_ms = 86'400'000;

// Nearest-rank percentile of sorted values: the smallest value with at least p% of them at or
// below it. Null when there are none.
inline nlohmann::json percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return nullptr;
    auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

inline nlohmann::json percentiles(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return {{"p50", percentile(v, 50)}, {"p90", percentile(v, 90)}, {"p99", percentile(v, 99)}};
}

inline nlohmann::json ratio(std::int64_t part, std::int64_t whole) {
    if (whole == 0) return nullptr;
    return static_cast<double>(part) / static_cast<double>(whole);
}

// A group's totals per bucket of the series, as columns (what a chart library plots).
struct columns {
    std::vector<std::int64_t> requests, tokens;
    std::vector<double> cost_usd;
    explicit columns(std::size_t n) : requests(n, 0), tokens(n, 0), cost_usd(n, 0.0) {}
    void add(std::size_t i, const usage_record& r) {
        ++requests[i];
        tokens[i] += r.usage.total_tokens();
        if (r.cost_usd) cost_usd[i] += *r.cost_usd;
    }
};

// Groups ordered as GET /v1/usage orders by_model: largest cost first, equal costs by name.
template <class Map>
std::vector<typename Map::const_iterator> by_cost(const Map& m) {
    std::vector<typename Map::const_iterator> out;
    for (auto it = m.begin(); it != m.end(); ++it) out.push_back(it);
    std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->second.cost_usd > b->second.cost_usd; });
    return out;
}

inline nlohmann::json totals_json(const usage_totals& t) {
    return {{"requests", t.requests}, {"tokens", t.tokens}, {"cost_usd", t.cost_usd}, {"unpriced_requests", t.unpriced_requests}};
}

inline nlohmann::json nullable(const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); }

} // namespace dashboard_detail

/// The dashboard's JSON for `q`, from `store`. `team_name` looks a team's name up (empty when
/// unknown). Blocking: it reads the whole period's records.
template <class Store>
[[nodiscard]] result<nlohmann::json> usage_dashboard_json(Store& store, const usage_dashboard_query& q,
                                                          const std::function<std::string(const std::string&)>& team_name) {
    static_assert(usage_store_check<Store>::value);
    using namespace dashboard_detail;
    const auto& p = q.period;
    // One day is drawn by the hour, longer periods by the UTC day; every bucket is listed, empty
    // ones as zeros, so that a chart's time axis has no gaps.
    const bool hourly = p.days == 1;
    const unix_ms step = hourly ? hour_ms : day_ms;
    const auto buckets = static_cast<std::size_t>(std::max<unix_ms>(1, (p.until - p.since + step - 1) / step));

    usage_totals total;
    std::map<std::string, usage_totals, std::less<>> models, teams, keys;
    std::map<std::string, std::string, std::less<>> key_team;
    std::map<std::string, columns, std::less<>> model_series, team_series;
    columns series{buckets};
    std::int64_t errors = 0, rate_limited = 0, answered = 0, cache_hits = 0;
    std::vector<double> latencies, ttfts;

    auto read = store.for_each_record(usage_range{q.team_id, p.since, p.until}, [&](const usage_record& r) {
        if (q.model && r.model != *q.model) return;
        memory_usage_store::add(total, r);
        memory_usage_store::add(models[r.model], r);
        memory_usage_store::add(teams[r.team_id], r);
        if (!r.key_id.empty()) {
            memory_usage_store::add(keys[r.key_id], r);
            key_team[r.key_id] = r.team_id;
        }
        const auto i = std::min(buckets - 1, static_cast<std::size_t>((r.time - p.since) / step));
        series.add(i, r);
        model_series.try_emplace(r.model, buckets).first->second.add(i, r);
        team_series.try_emplace(r.team_id, buckets).first->second.add(i, r);
        if (r.status >= 400) ++errors; // 429 included
        if (r.status == 429) ++rate_limited;
        if (r.status > 0 && r.status < 400) {
            // Latency and the cache are about answers: a refused request's few microseconds
            // would pull the percentiles down.
            ++answered;
            if (r.cached) ++cache_hits;
            latencies.push_back(r.latency_ms);
            if (r.time_to_first_token_ms > 0) ttfts.push_back(r.time_to_first_token_ms);
        }
    });
    if (!read) return read.error();

    nlohmann::json times = nlohmann::json::array(), labels = nlohmann::json::array();
    for (std::size_t i = 0; i < buckets; ++i) {
        const unix_ms t = p.since + static_cast<unix_ms>(i) * step;
        times.push_back(t / 1000); // seconds: what chart libraries take for a time axis
        labels.push_back(hourly ? format_rfc3339(t).substr(0, 13) + ":00Z" : format_rfc3339(t).substr(0, 10));
    }
    auto column_json = [](const columns& c) {
        return nlohmann::json{{"requests", c.requests}, {"tokens", c.tokens}, {"cost_usd", c.cost_usd}};
    };
    nlohmann::json by_model = nlohmann::json::array(), by_team = nlohmann::json::array(), top_keys = nlohmann::json::array();
    nlohmann::json model_columns = nlohmann::json::array(), team_columns = nlohmann::json::array();
    for (const auto& it : by_cost(models)) {
        auto row = totals_json(it->second);
        row["model"] = it->first;
        by_model.push_back(row);
        auto col = column_json(model_series.at(it->first));
        col["model"] = it->first;
        model_columns.push_back(std::move(col));
    }
    for (const auto& it : by_cost(teams)) {
        auto row = totals_json(it->second);
        row["team_id"] = nullable(it->first);
        row["team_name"] = it->first.empty() ? nlohmann::json(nullptr) : nullable(team_name(it->first));
        by_team.push_back(row);
        auto col = column_json(team_series.at(it->first));
        col["team_id"] = nullable(it->first);
        team_columns.push_back(std::move(col));
    }
    for (const auto& it : by_cost(keys)) {
        if (top_keys.size() == q.top) break;
        auto row = totals_json(it->second);
        row["key_id"] = it->first;
        row["team_id"] = nullable(key_team[it->first]);
        top_keys.push_back(row);
    }
    const std::string team = q.team_id.value_or("");
    return nlohmann::json{{"period", {{"days", p.days}, {"start", p.start()}, {"end", p.end()}, {"bucket", hourly ? "hour" : "day"}}},
                          {"team_id", q.team_id ? nullable(team) : nlohmann::json(nullptr)},
                          {"team_name", team.empty() ? nlohmann::json(nullptr) : nullable(team_name(team))},
                          {"all_teams", !q.team_id},
                          {"model", q.model ? nlohmann::json(*q.model) : nlohmann::json(nullptr)},
                          {"summary",
                           {{"total_requests", total.requests},
                            {"total_tokens", total.tokens},
                            {"total_cost_usd", total.cost_usd},
                            {"avg_daily_cost_usd", total.cost_usd / p.days},
                            {"unpriced_requests", total.unpriced_requests},
                            {"errors", errors},
                            {"error_rate", ratio(errors, total.requests)},
                            {"rate_limited", rate_limited},
                            {"rate_limited_rate", ratio(rate_limited, total.requests)},
                            {"cache_hits", cache_hits},
                            {"cache_hit_ratio", ratio(cache_hits, answered)}}},
                          {"latency_ms", percentiles(std::move(latencies))},
                          {"ttft_ms", percentiles(std::move(ttfts))},
                          {"by_model", std::move(by_model)},
                          {"by_team", std::move(by_team)},
                          {"top_keys", std::move(top_keys)},
                          {"series",
                           {{"bucket", hourly ? "hour" : "day"},
                            {"time", std::move(times)},
                            {"label", std::move(labels)},
                            {"requests", series.requests},
                            {"tokens", series.tokens},
                            {"cost_usd", series.cost_usd},
                            {"by_model", std::move(model_columns)},
                            {"by_team", std::move(team_columns)}}}};
}

/// The whole route. `days` as GET /v1/usage takes it (1 to 366, 30 when absent; the page asks for
/// 1, 7, 30 or 90), `team=` and `model=` optional. A team's key sees its own team only (another
/// `team=` is 403); the admin key, or anyone when nothing authenticates, sees every team unless
/// `team=` names one.
template <class Store>
[[nodiscard]] http_response usage_dashboard_response(Store& store, const http_request& req,
                                                     const std::function<std::string(const std::string&)>& team_name) {
    auto days = usage_days(req);
    if (!days) return error_response(days.error(), req.request_id);
    usage_dashboard_query q;
    const bool sees_all = !req.caller.authenticated() || req.caller.admin;
    if (!sees_all) q.team_id = req.caller.team_id;
    if (auto it = req.query.find("team"); it != req.query.end()) {
        if (!sees_all && it->second != req.caller.team_id)
            return error_response(
                {error_kind::permission_denied, "only the admin key may read another team's usage", "permission_denied", "team"},
                req.request_id);
        q.team_id = it->second;
    }
    if (auto it = req.query.find("model"); it != req.query.end()) {
        if (it->second.empty())
            return error_response({error_kind::invalid_request, "'model' must name a model", "invalid_value", "model"}, req.request_id);
        q.model = it->second;
    }
    q.period = usage_period::last_days(*days, now_unix_ms());
    auto body = usage_dashboard_json(store, q, team_name);
    if (!body) return error_response(body.error(), req.request_id);
    return json_response(200, *body);
}

} // namespace chatkit
