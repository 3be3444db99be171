// What an OpenAI-compatible upstream sends, as the provider reads it: a chat.completion body
// (parse_answer) and a chat.completion.chunk stream cut into pieces (the SSE parser and the
// stream reader, with a text and a tool-call sink as the async provider sets them). Whatever the
// bytes, nothing throws; the text passed on is the answer's, and the tool-call pieces add up to its
// tool_calls; no error message quotes the key; and an answer read from them is written back to a
// client as valid JSON (fuzz/answer_check.hpp).
#include "answer_check.hpp"
#include "fuzz_input.hpp"

#include <chatkit/openai_wire.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace {
using wire = chatkit::detail::openai_wire;
using fuzz::require;

constexpr const char* key = "sk-fuzz-KEY-0123";

// OpenAI streams a call as fragments that name it by index, and the reader passes each fragment
// on as it merges it: for every call the stream ended with, its pieces' arguments add up to the
// call's; the pieces come call by call (a later call's never before an earlier one's); and a
// stream that passed no piece ends without calls.
void check_tool_calls(const chatkit::completion& c, const std::vector<chatkit::tool_call_delta>& pieces) {
    if (pieces.empty()) return require(!c.extra.is_object() || !c.extra.contains("tool_calls"));
    const auto& calls = c.extra.at("tool_calls");
    require(calls.is_array());
    std::vector<std::string> arguments(calls.size());
    std::size_t last = 0;
    for (const auto& p : pieces) {
        require(p.index < calls.size() && p.index >= last);
        last = p.index;
        arguments[p.index] += p.arguments;
    }
    for (std::size_t i = 0; i < calls.size(); ++i) require(calls[i].at("function").at("arguments") == arguments[i]);
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const wire w{chatkit::openai_options{}};
    const auto pieces = fuzz::pieces(data, size);
    if (pieces.empty()) return 0;
    if (auto answer = wire::parse_answer(fuzz::joined(pieces))) fuzz::check_answer(*answer);
    fuzz::check_stream(w, pieces, key, "", check_tool_calls);
    return 0;
}
