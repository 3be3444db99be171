// What the `teams` and `keys` commands (admin.hpp) and the /admin routes (admin_routes.hpp) share:
// the checking of what they are given (limits, durations, model lists), the making of a team or a
// key from it, and the JSON they show of either. One copy, so that the command line and HTTP
// accept the same values and answer with the same shapes.
#pragma once

#include <chatkit/api_keys.hpp>
#include <chatkit/clock.hpp>
#include <chatkit/key_directory.hpp>
#include <chatkit/usage_limits.hpp>

#include <nlohmann/json.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sample_server::key_admin {

// A value that is refused, with the name of its field as the caller spelled it ("--rpm" on the
// command line, "rpm" in a JSON body): what the message starts with, and a 400's `param`.
struct invalid_field : std::invalid_argument {
    invalid_field(std::string_view field_name, const std::string& message) : std::invalid_argument(message), field(field_name) {}
    std::string field;
};

// One field as given: its name as the caller spells it, and its text when it was given.
struct given {
    std::string_view name;
    std::optional<std::string> text{};
};

inline std::int64_t positive_int(std::string_view name, const std::string& text) {
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc{} || end != text.data() + text.size() || n < 1)
        throw invalid_field(name, std::string{name} + " must be a whole number of 1 or more, not '" + text + "'");
    return n;
}

// Requests and tokens per minute, and a budget in USD per day or month (the last two together).
inline chatkit::usage_limits limits(const given& rpm, const given& tpm, const given& budget_usd, const given& budget_period) {
    chatkit::usage_limits l;
    if (rpm.text) l.requests_per_minute = positive_int(rpm.name, *rpm.text);
    if (tpm.text) l.tokens_per_minute = positive_int(tpm.name, *tpm.text);
    if (budget_usd.text.has_value() != budget_period.text.has_value())
        throw invalid_field(budget_usd.text ? budget_period.name : budget_usd.name,
                            std::string{budget_usd.name} + " and " + std::string{budget_period.name} + " go together");
    if (budget_usd.text) {
        const std::string& budget = *budget_usd.text;
        char* end = nullptr;
        const double usd = std::strtod(budget.c_str(), &end);
        if (budget.empty() || *end != '\0' || !std::isfinite(usd) || usd <= 0)
            throw invalid_field(budget_usd.name, std::string{budget_usd.name} + " must be a positive amount, not '" + budget + "'");
        if (*budget_period.text != "day" && *budget_period.text != "month")
            throw invalid_field(budget_period.name, std::string{budget_period.name} + " must be day or month");
        l.budget_usd = usd;
        l.budget_period = *budget_period.text;
    }
    return l;
}

// "30d", "12h", "45m" or "3600s" as milliseconds, up to 100 years.
inline std::int64_t duration_ms(std::string_view name, const std::string& text) {
    if (text.size() >= 2) {
        const char unit = text.back();
        const std::int64_t per = unit == 'd' ? 86'400'000 : unit == 'h' ? 3'600'000 : unit == 'm' ? 60'000 : unit == 's' ? 1000 : 0;
        std::int64_t n = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size() - 1, n);
        if (per && ec == std::errc{} && end == text.data() + text.size() - 1 && n >= 1 && n <= 36'500 * 86'400'000LL / per) return n * per;
    }
    throw invalid_field(name, std::string{name} + " must be a duration such as 30d, 12h, 45m or 3600s, not '" + text + "'");
}

// A key's model list: names without surrounding spaces, none empty.
inline std::vector<std::string> models(std::string_view name, std::vector<std::string> names) {
    for (auto& m : names) {
        while (!m.empty() && m.front() == ' ') m.erase(0, 1);
        while (!m.empty() && m.back() == ' ') m.pop_back();
        if (m.empty()) throw invalid_field(name, std::string{name} + " must list model names, such as gpt-4o-mini,echo-1, none empty");
    }
    return names;
}

// What a new key is made of, checked.
struct key_request {
    std::string team{};
    std::string name{};
    chatkit::usage_limits limits{};
    std::vector<std::string> models{};
    std::optional<std::int64_t> expires_in_ms{};
};

// A new key: its record for the directory (its digest, never the key) and the key itself, to be
// shown once and then forgotten.
struct issued_key {
    chatkit::key_record record;
    std::string key;
};

inline issued_key issue_key(key_request request) {
    issued_key issued;
    auto& k = issued.record;
    k.id = chatkit::api_keys::generate_key_id();
    k.team_id = std::move(request.team);
    k.name = std::move(request.name);
    k.limits = std::move(request.limits);
    k.models = std::move(request.models);
    k.created_at = chatkit::now_unix_ms();
    if (request.expires_in_ms) k.expires_at = k.created_at + *request.expires_in_ms;
    issued.key = chatkit::api_keys::generate_key();
    k.prefix = chatkit::api_keys::display_prefix(issued.key);
    k.digest = chatkit::api_keys::digest(issued.key);
    return issued;
}

namespace detail {
inline nlohmann::json optional_number(const std::optional<std::int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }
inline nlohmann::json optional_time(const std::optional<chatkit::unix_ms>& v) {
    return v ? nlohmann::json(chatkit::format_rfc3339(*v)) : nlohmann::json(nullptr);
}
inline void add_limits(nlohmann::ordered_json& j, const chatkit::usage_limits& l) {
    j["rpm"] = optional_number(l.requests_per_minute);
    j["tpm"] = optional_number(l.tokens_per_minute);
    j["budget_usd"] = l.budget_usd ? nlohmann::json(*l.budget_usd) : nlohmann::json(nullptr);
    j["budget_period"] = l.budget_period.empty() ? nlohmann::json(nullptr) : nlohmann::json(l.budget_period);
}
} // namespace detail

inline nlohmann::ordered_json team_json(const chatkit::team_record& t) {
    nlohmann::ordered_json j;
    j["id"] = t.id;
    j["name"] = t.name;
    j["created_at"] = chatkit::format_rfc3339(t.created_at);
    detail::add_limits(j, t.limits);
    return j;
}

// A key as a list shows it, or with `key` (the key itself) as its creation shows it, once: never
// its digest.
inline nlohmann::ordered_json key_json(const chatkit::key_record& k, const std::string* key) {
    nlohmann::ordered_json j;
    j["id"] = k.id;
    if (key) j["key"] = *key;
    j["team"] = k.team_id;
    j["name"] = k.name;
    j["prefix"] = k.prefix;
    j["created_at"] = chatkit::format_rfc3339(k.created_at);
    j["expires_at"] = detail::optional_time(k.expires_at);
    if (!key) j["revoked_at"] = detail::optional_time(k.revoked_at);
    detail::add_limits(j, k.limits);
    j["models"] = k.models.empty() ? nlohmann::json(nullptr) : nlohmann::json(k.models);
    return j;
}

} // namespace sample_server::key_admin
