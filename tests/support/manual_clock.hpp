// A clock a test moves by hand, so expiry and refill are tested without sleeping.
#pragma once

#include <chrono>

namespace test_support {

struct manual_clock {
    using duration = std::chrono::nanoseconds;
    using rep = duration::rep;
    using period = duration::period;
    using time_point = std::chrono::time_point<manual_clock>;
    static constexpr bool is_steady = true;

    static inline time_point current{std::chrono::hours{1}};
    static time_point now() noexcept { return current; }
    static void advance(duration d) { current += d; }
};
static_assert(std::chrono::is_clock_v<manual_clock>);

} // namespace test_support
