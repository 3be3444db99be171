// What the harnesses share: the fuzzer's bytes cut into a few pieces, so a parser that keeps state
// between calls (SSE, the event-stream decoder) sees every way its input can arrive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz {

// The first byte chooses up to 8 cut points (its bits pick them spread over the rest); the rest is
// the input, cut there.
inline std::vector<std::string_view> pieces(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return {};
    const unsigned cuts = data[0];
    const std::string_view all{reinterpret_cast<const char*>(data + 1), size - 1};
    std::vector<std::string_view> out;
    std::size_t from = 0;
    for (unsigned bit = 0; bit < 8; ++bit) {
        if (!(cuts & (1u << bit))) continue;
        const std::size_t at = all.size() * (bit + 1) / 9;
        if (at <= from) continue;
        out.push_back(all.substr(from, at - from));
        from = at;
    }
    out.push_back(all.substr(from));
    return out;
}

// The pieces back together: what a parser fed all at once sees.
inline std::string joined(const std::vector<std::string_view>& pieces) {
    std::string whole;
    for (const auto p : pieces) whole.append(p);
    return whole;
}

} // namespace fuzz
