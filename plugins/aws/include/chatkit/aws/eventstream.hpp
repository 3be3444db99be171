// The AWS event-stream binary framing (application/vnd.amazon.eventstream, docs/protocols.md §3) that
// Bedrock ConverseStream answers with: an incremental decoder that takes bytes as they arrive, in
// chunks of any size, and an encoder for tests and fake servers.
#pragma once

#include "chatkit/error.hpp"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace chatkit::aws {

using event_uuid = std::array<std::uint8_t, 16>;
using event_timestamp = std::chrono::sys_time<std::chrono::milliseconds>;

// One alternative per wire type of §3.3; types 0 and 1 (bool true, bool false) share `bool`.
using event_header_value = std::variant<bool,                      // 0 / 1
                                        std::int8_t,               // 2 byte
                                        std::int16_t,              // 3 short
                                        std::int32_t,              // 4 integer
                                        std::int64_t,              // 5 long
                                        std::vector<std::uint8_t>, // 6 byte_array
                                        std::string,               // 7 string
                                        event_timestamp,           // 8 timestamp, ms since the epoch
                                        event_uuid>;               // 9 uuid

// The wire type byte of a header value (§3.3).
[[nodiscard]] inline std::uint8_t event_header_type(const event_header_value& v) noexcept {
    if (const bool* b = std::get_if<bool>(&v)) return *b ? 0 : 1;
    return static_cast<std::uint8_t>(v.index() + 1);
}

struct event_message {
    std::vector<std::pair<std::string, event_header_value>> headers{};
    std::string payload{};

    // The value of a string header (type 7), or nullptr when absent or of another type. The
    // semantic headers :message-type, :event-type, :exception-type are all strings (§3.4).
    [[nodiscard]] const std::string* header_string(std::string_view name) const noexcept {
        for (const auto& [n, v] : headers)
            if (n == name) return std::get_if<std::string>(&v);
        return nullptr;
    }
};

namespace eventstream_detail {

inline constexpr std::size_t prelude_length = 12; // total_length, headers_length, prelude_crc
inline constexpr std::size_t overhead = 16;       // prelude + message_crc (§3.1)

[[nodiscard]] inline std::uint32_t crc32_of(std::string_view bytes, std::uint32_t seed = 0) noexcept {
    // Standard CRC-32 (ISO-HDLC, zlib's), not CRC-32C (§3.2).
    return static_cast<std::uint32_t>(::crc32_z(seed, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

[[nodiscard]] inline std::uint64_t read_be(const char* p, std::size_t n) noexcept {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
    return v;
}

inline void write_be(std::string& out, std::uint64_t v, std::size_t n) {
    for (std::size_t i = n; i-- > 0;) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

[[nodiscard]] inline error corrupt(std::string message) {
    return error{error_kind::upstream, "event stream: " + std::move(message), "eventstream_corrupt"};
}

[[nodiscard]] inline std::string hex32(std::uint32_t v) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s = "0x";
    for (int i = 7; i >= 0; --i) s += digits[(v >> (4 * i)) & 0xF];
    return s;
}

// Parses the headers section (§3.3). The message CRC has already passed, so a failure here means
// the sender built a bad message rather than the bytes being damaged in transit.
[[nodiscard]] inline result<void> parse_headers(std::string_view h, event_message& msg) {
    std::size_t i = 0;
    auto need = [&](std::size_t n) { return h.size() - i >= n; };
    while (i < h.size()) {
        const std::size_t name_len = static_cast<unsigned char>(h[i++]);
        if (name_len == 0) return corrupt("empty header name");
        if (!need(name_len + 1)) return corrupt("header runs past the headers section");
        std::string name(h.substr(i, name_len));
        i += name_len;
        const auto type = static_cast<unsigned char>(h[i++]);
        event_header_value value;
        auto fixed = [&](std::size_t n) -> std::optional<std::uint64_t> {
            if (!need(n)) return std::nullopt;
            std::uint64_t v = read_be(h.data() + i, n);
            i += n;
            return v;
        };
        switch (type) {
        case 0: value = true; break;
        case 1: value = false; break;
        case 2:
        case 3:
        case 4:
        case 5:
        case 8: {
            const std::size_t n = type == 2 ? 1 : type == 3 ? 2 : type == 4 ? 4 : 8;
            auto v = fixed(n);
            if (!v) return corrupt("header value runs past the headers section");
            // Two's complement reinterpretation of the big-endian bits.
            if (type == 2) value = static_cast<std::int8_t>(static_cast<std::uint8_t>(*v));
            else if (type == 3) value = static_cast<std::int16_t>(static_cast<std::uint16_t>(*v));
            else if (type == 4) value = static_cast<std::int32_t>(static_cast<std::uint32_t>(*v));
            else if (type == 5) value = static_cast<std::int64_t>(*v);
            else value = event_timestamp(std::chrono::milliseconds(static_cast<std::int64_t>(*v)));
            break;
        }
        case 6:
        case 7: {
            auto len = fixed(2);
            if (!len || !need(*len)) return corrupt("header value runs past the headers section");
            std::string_view bytes = h.substr(i, *len);
            i += *len;
            if (type == 7) value = std::string(bytes);
            else value = std::vector<std::uint8_t>(bytes.begin(), bytes.end());
            break;
        }
        case 9: {
            if (!need(16)) return corrupt("header value runs past the headers section");
            event_uuid u{};
            for (std::size_t k = 0; k < 16; ++k) u[k] = static_cast<std::uint8_t>(h[i + k]);
            i += 16;
            value = u;
            break;
        }
        default: return corrupt("unknown header value type " + std::to_string(type));
        }
        // botocore rejects a repeated name (DuplicateHeader, §3.3): which copy would win is unclear.
        if (std::any_of(msg.headers.begin(), msg.headers.end(), [&](const auto& p) { return p.first == name; }))
            return corrupt("duplicate header " + name);
        msg.headers.emplace_back(std::move(name), std::move(value));
    }
    return {};
}

} // namespace eventstream_detail

// Incremental decoder (the checklist of §3.7). Not thread-safe: one per response stream.
class eventstream_decoder {
public:
    // The largest message the spec allows: 24 MiB of payload plus 128 KiB of headers (§3.1). A
    // longer length field is corruption; refusing it stops us buffering a bogus length forever.
    static constexpr std::size_t default_max_message_length = 24 * 1024 * 1024 + 128 * 1024 + 16;

    eventstream_decoder() = default;
    explicit eventstream_decoder(std::size_t max_message_length) : max_length_(max_message_length) {}

    // Feeds the next bytes of the stream and calls on_message(event_message&&) for each complete
    // message, in order; if on_message throws, the exception propagates and the decoder must not be
    // fed again. Returns an error (kind upstream, code "eventstream_corrupt") on the first
    // damaged message; the decoder then stays failed, as the stream must be terminated (§3.1).
    template <class OnMessage>
    result<void> feed(std::string_view bytes, OnMessage&& on_message) {
        static_assert(std::is_invocable_v<OnMessage&, event_message&&>,
                      "eventstream_decoder::feed: on_message must be callable as f(event_message&&)");
        if (failure_) return *failure_;

        // Parse straight from the caller's bytes when nothing is pending, copying only a partial tail.
        const bool direct = buffer_.empty();
        if (!direct) buffer_.append(bytes);
        const std::string_view data = direct ? bytes : std::string_view(buffer_);

        std::size_t pos = 0;
        while (data.size() - pos >= eventstream_detail::prelude_length) {
            auto need = check_prelude(data.substr(pos));
            if (!need) return fail(std::move(need).error());
            if (data.size() - pos < *need) break;
            event_message msg;
            if (auto r = decode_message(data.substr(pos, *need), msg); !r) return fail(std::move(r).error());
            pos += *need;
            std::invoke(on_message, std::move(msg));
        }

        if (direct) buffer_.assign(data.substr(pos));
        else buffer_.erase(0, pos);
        return {};
    }

    // Bytes of an incomplete message held back. Non-zero when the HTTP body ends means the stream
    // was truncated.
    [[nodiscard]] std::size_t buffered() const noexcept { return buffer_.size(); }
    [[nodiscard]] bool failed() const noexcept { return failure_.has_value(); }

private:
    // Validates the 12-byte prelude before trusting its lengths (§3.1, §3.7 step 1); returns the
    // message's total length.
    [[nodiscard]] result<std::size_t> check_prelude(std::string_view m) const {
        using namespace eventstream_detail;
        const auto total = static_cast<std::size_t>(read_be(m.data(), 4));
        const auto headers = static_cast<std::size_t>(read_be(m.data() + 4, 4));
        const auto expected = static_cast<std::uint32_t>(read_be(m.data() + 8, 4));
        const std::uint32_t computed = crc32_of(m.substr(0, 8));
        if (computed != expected)
            return corrupt("Prelude checksum mismatch (expected " + hex32(expected) + ", computed " + hex32(computed) + ")");
        if (total < overhead) return corrupt("message length " + std::to_string(total) + " is below 16");
        if (total > max_length_)
            return corrupt("message length " + std::to_string(total) + " exceeds the limit of " + std::to_string(max_length_));
        if (headers > total - overhead)
            return corrupt("headers length " + std::to_string(headers) + " exceeds message length " + std::to_string(total));
        return total;
    }

    // §3.7 steps 2 and 3, on exactly one whole message.
    [[nodiscard]] static result<void> decode_message(std::string_view m, event_message& msg) {
        using namespace eventstream_detail;
        const std::size_t total = m.size();
        const auto headers = static_cast<std::size_t>(read_be(m.data() + 4, 4));
        const auto expected = static_cast<std::uint32_t>(read_be(m.data() + total - 4, 4));
        const std::uint32_t computed = crc32_of(m.substr(0, total - 4));
        if (computed != expected)
            return corrupt("Message checksum mismatch (expected " + hex32(expected) + ", computed " + hex32(computed) + ")");
        if (auto r = parse_headers(m.substr(prelude_length, headers), msg); !r) return r;
        msg.payload.assign(m.substr(prelude_length + headers, total - overhead - headers));
        return {};
    }

    result<void> fail(error e) {
        failure_ = e;
        buffer_.clear();
        buffer_.shrink_to_fit();
        return e;
    }

    std::size_t max_length_ = default_max_message_length;
    std::string buffer_{};
    std::optional<error> failure_{};
};

// Encodes one message (§3.1, §3.3). Throws std::invalid_argument for what the wire cannot carry:
// an empty or >255-byte header name, or a string/byte-array value over 32767 bytes (the limit
// aws-c-event-stream and the Java SDK enforce).
[[nodiscard]] inline std::string encode_event(const event_message& msg) {
    using namespace eventstream_detail;
    std::string headers;
    for (const auto& header : msg.headers) {
        // Not a structured binding: clang before 16 cannot capture one in the lambda below.
        const std::string& name = header.first;
        const event_header_value& value = header.second;
        if (name.empty() || name.size() > 255) throw std::invalid_argument("encode_event: header name must be 1..255 bytes");
        headers += static_cast<char>(name.size());
        headers += name;
        headers += static_cast<char>(event_header_type(value));
        std::visit(
            [&](const auto& v) {
                using T = std::decay_t<decltype(v)>;
                if constexpr (std::is_same_v<T, bool>) {
                    // The type byte carries the value.
                } else if constexpr (std::is_integral_v<T>) {
                    write_be(headers, static_cast<std::uint64_t>(static_cast<std::int64_t>(v)), sizeof(T));
                } else if constexpr (std::is_same_v<T, event_timestamp>) {
                    write_be(headers, static_cast<std::uint64_t>(v.time_since_epoch().count()), 8);
                } else if constexpr (std::is_same_v<T, event_uuid>) {
                    headers.append(reinterpret_cast<const char*>(v.data()), v.size());
                } else { // std::string, std::vector<std::uint8_t>
                    if (v.size() > 32767) throw std::invalid_argument("encode_event: header value " + name + " exceeds 32767 bytes");
                    write_be(headers, v.size(), 2);
                    headers.append(reinterpret_cast<const char*>(v.data()), v.size());
                }
            },
            value);
    }

    const std::size_t total = overhead + headers.size() + msg.payload.size();
    if (total > 0xFFFFFFFFu) throw std::invalid_argument("encode_event: message exceeds 4 GiB");
    std::string out;
    out.reserve(total);
    write_be(out, total, 4);
    write_be(out, headers.size(), 4);
    write_be(out, crc32_of(out), 4);
    out += headers;
    out += msg.payload;
    write_be(out, crc32_of(out), 4);
    return out;
}

} // namespace chatkit::aws
