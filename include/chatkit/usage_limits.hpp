// The optional limits of an API key or of a team (chatkit/key_directory.hpp stores them,
// http_request::caller carries them to the middlewares that enforce them).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace chatkit {

/// Requests per minute are enforced by chatkit::key_rate_limits; tokens per minute and budgets by
/// chatkit::key_usage_limits. An empty limit is no limit.
struct usage_limits {
    std::optional<std::int64_t> requests_per_minute{};
    std::optional<std::int64_t> tokens_per_minute{};
    std::optional<double> budget_usd{};
    std::string budget_period{}; // "day" or "month" (UTC calendar periods) when budget_usd is set, else empty

    friend bool operator==(const usage_limits&, const usage_limits&) = default;
};

} // namespace chatkit
