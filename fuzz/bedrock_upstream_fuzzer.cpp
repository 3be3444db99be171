// What Bedrock sends, as the Bedrock provider reads it: the AWS event-stream framing cut into
// pieces (each message decoded the same as when the whole arrives at once, a damaged one
// refused), the stream's events, and a Converse answer body. Nothing throws.
#include "fuzz_input.hpp"

#include <chatkit/bedrock_wire.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace {
using wire = chatkit::detail::bedrock_wire;

struct decoded {
    std::vector<std::string> payloads;
    bool ok = true;
};
decoded decode(const std::vector<std::string_view>& pieces) {
    decoded out;
    chatkit::aws::eventstream_decoder decoder;
    for (const auto p : pieces) {
        if (!decoder.feed(p, [&out](chatkit::aws::event_message&& m) { out.payloads.push_back(m.payload); })) {
            out.ok = false;
            break;
        }
    }
    return out;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto pieces = fuzz::pieces(data, size);
    if (pieces.empty()) return 0;
    const std::string whole = fuzz::joined(pieces);

    const auto cut = decode(pieces);
    const auto at_once = decode({whole});
    if (cut.ok != at_once.ok || cut.payloads != at_once.payloads) std::abort();

    const chatkit::delta_sink sink = [](std::string_view) { return true; };
    wire::stream_reader reader{sink};
    chatkit::aws::eventstream_decoder decoder;
    for (const auto p : pieces)
        if (!decoder.feed(p, reader)) break;
    (void)wire::finish_stream(reader);
    (void)wire::parse_answer(whole);
    return 0;
}
