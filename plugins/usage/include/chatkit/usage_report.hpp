// GET /v1/usage?days=N: a team's requests, tokens and cost over the last N UTC days, by model and
// by day, from a chatkit::usage_store. The answer's shape is the gateway reference design's:
//   {"team_id","team_name","period":{"days","start","end"},
//    "summary":{"total_requests","total_tokens","total_cost_usd","avg_daily_cost_usd","unpriced_requests"},
//    "by_model":[{"model","requests","tokens","cost_usd"}],"by_day":[{"date","requests","tokens","cost_usd"}]}
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/usage_store.hpp"

#include <nlohmann/json.hpp>

#include <charconv>
#include <functional>
#include <string>

namespace chatkit {

/// The last `days` UTC calendar days, today included: [midnight `days - 1` days ago, now).
struct usage_period {
    int days = 30;
    unix_ms since = 0;
    unix_ms until = 0;

    static usage_period last_days(int days, unix_ms now) {
        constexpr unix_ms day = 86'400'000;
        const unix_ms today = now - now % day;
        return {days, today - (days - 1) * day, now};
    }
    [[nodiscard]] std::string start() const { return format_rfc3339(since).substr(0, 10); }
    [[nodiscard]] std::string end() const { return format_rfc3339(until).substr(0, 10); }
};

/// `days` from the query: 1 to 366, 30 when absent.
[[nodiscard]] inline result<int> usage_days(const http_request& req) {
    auto it = req.query.find("days");
    if (it == req.query.end()) return 30;
    int n = 0;
    const auto& s = it->second;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end != s.data() + s.size() || n < 1 || n > 366)
        return error{error_kind::invalid_request, "'days' must be an integer from 1 to 366", "invalid_value", "days"};
    return n;
}

[[nodiscard]] inline nlohmann::json usage_report_json(const std::string& team_id, const std::string& team_name, const usage_period& p,
                                                      const usage_summary& s) {
    auto rows = [](const auto& groups, const char* label) {
        nlohmann::json out = nlohmann::json::array();
        for (const auto& [name, t] : groups)
            out.push_back({{label, name}, {"requests", t.requests}, {"tokens", t.tokens}, {"cost_usd", t.cost_usd}});
        return out;
    };
    return {{"team_id", team_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(team_id)},
            {"team_name", team_name.empty() ? nlohmann::json(nullptr) : nlohmann::json(team_name)},
            {"period", {{"days", p.days}, {"start", p.start()}, {"end", p.end()}}},
            {"summary",
             {{"total_requests", s.total.requests},
              {"total_tokens", s.total.tokens},
              {"total_cost_usd", s.total.cost_usd},
              {"avg_daily_cost_usd", s.total.cost_usd / p.days},
              {"unpriced_requests", s.total.unpriced_requests}}},
            {"by_model", rows(s.by_model, "model")},
            {"by_day", rows(s.by_day, "date")}};
}

/// The whole route: the caller's team (the authenticated key's), or with `team=` another team for
/// an admin caller only. `team_name` looks a team's name up (empty when unknown). Blocking: call it
/// from a custom route (service::route runs those on the worker pool).
template <class Store>
[[nodiscard]] http_response usage_report_response(Store& store, const http_request& req,
                                                  const std::function<std::string(const std::string&)>& team_name) {
    static_assert(usage_store_check<Store>::value);
    auto days = usage_days(req);
    if (!days) return error_response(days.error(), req.request_id);
    std::string team = req.caller.team_id;
    if (auto it = req.query.find("team"); it != req.query.end() && it->second != team) {
        // Without authentication every caller is the same anonymous one, who may read any team.
        if (req.caller.authenticated() && !req.caller.admin)
            return error_response(
                {error_kind::permission_denied, "only the admin key may read another team's usage", "permission_denied", "team"},
                req.request_id);
        team = it->second;
    }
    const auto period = usage_period::last_days(*days, now_unix_ms());
    auto summary = store.summarize(usage_query{team, period.since, period.until});
    if (!summary) return error_response(summary.error(), req.request_id);
    return json_response(200, usage_report_json(team, team.empty() ? std::string{} : team_name(team), period, *summary));
}

} // namespace chatkit
