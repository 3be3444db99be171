// A provider's health as its calls tell it, for GET /health (chatkit/health.hpp), without a
// network probe of its own.
#pragma once

#include "chatkit/error.hpp"
#include "chatkit/health.hpp"

#include <mutex>
#include <string>
#include <string_view>

namespace chatkit {

// A provider's health without a network probe (one would cost a request per check): down after
// `threshold` calls in a row (each with its retries) failed in a way only an operator can fix:
// the upstream unreachable, or the credentials refused.
class upstream_health {
public:
    explicit upstream_health(int threshold = 3) : threshold_(threshold) {}

    template <class T>
    void record(const result<T>& outcome) {
        const bool operator_fault = !outcome &&
                                    (outcome.error().code == "upstream_unreachable" || outcome.error().code == "upstream_credentials");
        record(operator_fault, operator_fault ? std::string_view{outcome.error().message} : std::string_view{});
    }
    void record(bool operator_fault, std::string_view why) {
        const std::lock_guard lock{mutex_};
        failures_in_a_row_ = operator_fault ? failures_in_a_row_ + 1 : 0;
        if (operator_fault) last_failure_ = why;
    }
    [[nodiscard]] component_health report(std::string ok_detail) const {
        const std::lock_guard lock{mutex_};
        if (failures_in_a_row_ >= threshold_) return {false, last_failure_};
        return {true, std::move(ok_detail)};
    }

private:
    int threshold_;
    mutable std::mutex mutex_;
    int failures_in_a_row_ = 0;
    std::string last_failure_;
};

} // namespace chatkit
