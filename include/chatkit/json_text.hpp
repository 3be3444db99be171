// JSON text written without a tree. The relay's answers, stream chunks and log lines have a fixed
// shape, and building an nlohmann tree only to dump it cost more instructions than the rest of a
// relayed request (docs/performance.md). These functions append to a string instead. A string
// that needs escaping still goes through nlohmann's serializer, so the bytes are exactly what
// `dump_json` writes and invalid UTF-8 is replaced the same way.
#pragma once

#include <nlohmann/json.hpp>

#include <charconv>
#include <string>
#include <string_view>
#include <type_traits>

namespace chatkit {

// Serializes without ever throwing: invalid UTF-8 from a provider is replaced, not fatal.
[[nodiscard]] inline std::string dump_json(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Appends `s` as a JSON string. Most text (ids, model names, plain answers) is printable ASCII
// that needs no escaping, so that case is a copy; anything else takes nlohmann's escaper.
inline void append_json_string(std::string& out, std::string_view s) {
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7f) {
            out += dump_json(nlohmann::json(s));
            return;
        }
    }
    out += '"';
    out.append(s);
    out += '"';
}

// Appends an integer in JSON's (and nlohmann's) form.
template <class Int>
    requires std::is_integral_v<Int>
void append_json_int(std::string& out, Int v) {
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof digits, v).ptr;
    out.append(digits, end);
}

// Appends any value as nlohmann writes it (the rare, open-ended parts: tool calls, extensions).
inline void append_json(std::string& out, const nlohmann::json& j) { out += dump_json(j); }

} // namespace chatkit
