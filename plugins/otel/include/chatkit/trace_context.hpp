// W3C Trace Context's `traceparent` header (https://www.w3.org/TR/trace-context/): the trace id,
// the caller's span id and the sampled flag, which carry one trace across processes.
//   traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
//                version-trace id (16 bytes)-parent span id (8 bytes)-flags
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace chatkit {

using trace_id = std::array<std::uint8_t, 16>;
using span_id = std::array<std::uint8_t, 8>;

struct trace_context {
    chatkit::trace_id trace{};
    chatkit::span_id span{}; // the caller's span: the parent of the spans made here
    std::uint8_t flags = 0;  // bit 0: the caller sampled (records) this trace

    [[nodiscard]] bool sampled() const noexcept { return (flags & 1) != 0; }
};

namespace trace_detail {
inline int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; // upper case is invalid: the spec asks for lower case, and to ignore anything else
}
template <std::size_t N>
bool read_hex(std::string_view text, std::array<std::uint8_t, N>& out) noexcept {
    bool any = false;
    for (std::size_t i = 0; i < N; ++i) {
        const int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
        any = any || out[i] != 0;
    }
    return any; // an all-zero id is invalid
}
template <std::size_t N>
void append_hex(std::string& out, const std::array<std::uint8_t, N>& bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    for (const auto b : bytes) {
        out += digits[b >> 4];
        out += digits[b & 0xf];
    }
}
} // namespace trace_detail

/// The context a `traceparent` value carries, or none when the value is malformed: the trace is
/// then started afresh, as the spec requires. Versions after 00 are read as 00 (their first
/// fields keep 00's layout); version ff is invalid.
[[nodiscard]] inline std::optional<trace_context> parse_traceparent(std::string_view v) noexcept {
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return std::nullopt;
    const auto byte_at = [v](std::size_t i) {
        const int hi = trace_detail::hex_value(v[i]), lo = trace_detail::hex_value(v[i + 1]);
        return hi < 0 || lo < 0 ? -1 : hi << 4 | lo;
    };
    const int version = byte_at(0), flags = byte_at(53);
    if (version < 0 || version == 0xff || flags < 0) return std::nullopt;
    if ((version == 0 && v.size() != 55) || (v.size() > 55 && v[55] != '-')) return std::nullopt;
    trace_context c;
    if (!trace_detail::read_hex(v.substr(3, 32), c.trace) || !trace_detail::read_hex(v.substr(36, 16), c.span)) return std::nullopt;
    c.flags = static_cast<std::uint8_t>(flags);
    return c;
}

/// "00-TRACE-SPAN-FLAGS" for a trace and the span that is the next hop's parent.
[[nodiscard]] inline std::string format_traceparent(const trace_id& trace, const span_id& span, std::uint8_t flags) {
    std::string out;
    out.reserve(55);
    out += "00-";
    trace_detail::append_hex(out, trace);
    out += '-';
    trace_detail::append_hex(out, span);
    out += '-';
    static constexpr char digits[] = "0123456789abcdef";
    out += digits[flags >> 4];
    out += digits[flags & 0xf];
    return out;
}

/// Lower-case hex of an id, as OTLP/JSON and logs write it.
template <std::size_t N>
[[nodiscard]] std::string to_hex(const std::array<std::uint8_t, N>& bytes) {
    std::string out;
    out.reserve(2 * N);
    trace_detail::append_hex(out, bytes);
    return out;
}

/// A fresh random id, never all zeros. Ids need to be unique, not secret: a per-thread PRNG
/// seeded from std::random_device is enough (and far cheaper than a system call per id).
template <class Id>
[[nodiscard]] Id random_trace_bytes() {
    thread_local std::mt19937_64 engine{(std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()};
    Id id{};
    do {
        for (std::size_t i = 0; i < id.size(); i += 8) {
            std::uint64_t bits = engine();
            for (std::size_t j = i; j < id.size() && j < i + 8; ++j, bits >>= 8) id[j] = static_cast<std::uint8_t>(bits);
        }
    } while (id == Id{});
    return id;
}

} // namespace chatkit
