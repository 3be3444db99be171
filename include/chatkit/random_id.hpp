// Random identifiers for requests and completions. Not for secrets: a per-thread PRNG seeded
// from std::random_device is enough to make collisions practically impossible.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>

namespace chatkit {

// `prefix` followed by `hex_digits` lowercase hex digits.
[[nodiscard]] inline std::string random_id(std::string_view prefix = {}, std::size_t hex_digits = 32) {
    thread_local std::mt19937_64 engine{(std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()};
    static constexpr char digits[] = "0123456789abcdef";
    std::string id{prefix};
    id.reserve(prefix.size() + hex_digits);
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < hex_digits; ++i) {
        if (i % 16 == 0) bits = engine();
        id += digits[bits & 0xf];
        bits >>= 4;
    }
    return id;
}

} // namespace chatkit
