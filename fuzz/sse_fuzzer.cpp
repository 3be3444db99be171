// The SSE parser (what reads every streamed upstream answer): whatever the bytes and however they
// are cut into pieces, it yields the same events as when fed the whole at once.
#include "fuzz_input.hpp"

#include <chatkit/sse.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

namespace {
using event = std::tuple<std::string, std::string, std::string>;

std::vector<event> events_of(const std::vector<std::string_view>& pieces) {
    std::vector<event> out;
    chatkit::sse_parser parser;
    for (const auto piece : pieces) parser.feed(piece, [&out](const chatkit::sse_message& m) { out.emplace_back(m.event, m.data, m.id); });
    return out;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto pieces = fuzz::pieces(data, size);
    if (pieces.empty()) return 0;
    const std::string whole = fuzz::joined(pieces);
    if (events_of(pieces) != events_of({whole})) std::abort();
    return 0;
}
