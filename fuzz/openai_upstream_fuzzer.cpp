// What an OpenAI-compatible upstream sends, as the provider reads it: a chat.completion body
// (parse_answer) and a chat.completion.chunk stream cut into pieces (the SSE parser and the
// stream reader). Whatever the bytes, nothing throws, and an answer read from them is written
// back to a client as valid JSON.
#include "fuzz_input.hpp"

#include <chatkit/openai_wire.hpp>
#include <chatkit/openai_api.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace {
using wire = chatkit::detail::openai_wire;

void require(bool ok) {
    if (!ok) std::abort();
}
void check_answer(const chatkit::completion& c) {
    require(nlohmann::json::accept(chatkit::openai_api::completion_text(c)));
    chatkit::openai_api::completion_chunks chunks{"chatcmpl-fuzz", c.model, 0};
    const auto delta = chunks.delta(c.content);
    require(delta.starts_with("data: ") && nlohmann::json::accept(delta.substr(6, delta.size() - 8)));
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const wire w{chatkit::openai_options{}};
    const auto pieces = fuzz::pieces(data, size);
    if (pieces.empty()) return 0;
    const std::string whole = fuzz::joined(pieces);

    if (auto answer = wire::parse_answer(whole)) check_answer(*answer);

    std::string delivered;
    const chatkit::delta_sink sink = [&delivered](std::string_view text) { return delivered.append(text), true; };
    wire::stream_reader reader{sink};
    chatkit::sse_parser parser;
    for (const auto p : pieces) parser.feed(p, reader);
    require(delivered == reader.c.content);
    if (auto streamed = w.finish_stream(reader, "sk-fuzz-key")) check_answer(*streamed);
    return 0;
}
