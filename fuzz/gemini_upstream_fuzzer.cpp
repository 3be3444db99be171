// What the Gemini API sends, as the provider reads it: a GenerateContentResponse body
// (parse_answer), an error body (status_failure, Google's envelope, bare or in an array) and a
// streamGenerateContent?alt=sse stream cut into pieces (the SSE parser and the stream reader, with
// a tool-call sink as the async provider sets one). Whatever the bytes, nothing throws; the text
// and function calls passed on are the answer's; an error message never quotes the key; and an
// answer read is written back to a client as valid JSON.
#include "answer_check.hpp"
#include "fuzz_input.hpp"

#include <chatkit/gemini_wire.hpp>

#include <cstdint>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace {
using wire = chatkit::detail::gemini_wire;
using fuzz::require;

constexpr const char* key = "AIzaSy-fuzz-KEY-0123";

// Gemini sends each function call whole: the calls a stream ended with are the pieces passed on,
// one for one, with the same ids.
void check_tool_calls(const chatkit::completion& c, const std::vector<chatkit::tool_call_delta>& pieces) {
    if (pieces.empty()) return require(!c.extra.is_object() || !c.extra.contains("tool_calls"));
    const auto& calls = c.extra.at("tool_calls");
    require(calls.is_array() && calls.size() == pieces.size());
    for (std::size_t i = 0; i < calls.size(); ++i) {
        require(pieces[i].index == i && !pieces[i].id.empty() && calls[i]["id"] == pieces[i].id);
        require(calls[i]["function"]["name"] == pieces[i].name && calls[i]["function"]["arguments"] == pieces[i].arguments);
    }
    require(c.finish_reason != "stop");
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const wire w{chatkit::gemini_options{}};
    const auto pieces = fuzz::pieces(data, size);
    if (pieces.empty()) return 0;
    const std::string whole = fuzz::joined(pieces);

    if (auto answer = wire::parse_answer(whole, "gemini-fuzz", key)) fuzz::check_answer(*answer);

    // The error statuses the provider maps differently, one per input; the body's first bytes as
    // a Retry-After header.
    static constexpr int statuses[] = {400, 401, 403, 404, 429, 500, 501, 503};
    const std::vector<std::pair<std::string, std::string>> headers{{"Retry-After", whole.substr(0, 12)}};
    const auto failure = w.status_failure(statuses[whole.size() % std::size(statuses)], whole, headers, key);
    require(failure.e.message.find(key) == std::string::npos);
    require(!failure.retry_after || failure.retry_after->count() >= 0);

    // The model preset as the provider presets it, for a stream that names no modelVersion.
    fuzz::check_stream(w, pieces, key, "gemini-fuzz", check_tool_calls);
    return 0;
}
