// Wall-clock time as chatkit stores and prints it: milliseconds since the Unix epoch, shown as
// RFC 3339 UTC ("2026-11-24T07:06:33.123Z").
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>

namespace chatkit {

using unix_ms = std::int64_t;

[[nodiscard]] inline unix_ms now_unix_ms() noexcept {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

[[nodiscard]] inline std::string format_rfc3339(unix_ms ms) {
    const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char text[64];
    std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour,
                  utc.tm_min, utc.tm_sec, static_cast<int>(ms % 1000));
    return text;
}

} // namespace chatkit
