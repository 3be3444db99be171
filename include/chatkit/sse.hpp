// Server-Sent Events framing for the streams the service sends (WHATWG HTML §9.2; protocols.md §7).
#pragma once

#include <string>
#include <string_view>

namespace chatkit {

// One event. `data` must not contain a newline: ours is always single-line JSON, which escapes them.
[[nodiscard]] inline std::string sse_event(std::string_view event, std::string_view data) {
    std::string out;
    out.reserve(event.size() + data.size() + 16);
    if (!event.empty()) out.append("event: ").append(event).append("\n");
    out.append("data: ").append(data).append("\n\n");
    return out;
}

} // namespace chatkit
