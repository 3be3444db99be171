// What an Anthropic Messages API upstream sends, as the provider reads it: a `message` body
// (parse_answer), an error body (status_failure) and an event stream cut into pieces (the SSE
// parser and the stream reader, with a tool-call sink as the async provider sets one). Whatever
// the bytes, nothing throws; the text and tool-call pieces passed on add up to the answer; an
// error message never quotes the key; and an answer read is written back to a client as valid
// JSON.
#include "answer_check.hpp"
#include "fuzz_input.hpp"

#include <chatkit/anthropic_wire.hpp>

#include <cstdint>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace {
using wire = chatkit::detail::anthropic_wire;
using fuzz::require;

constexpr const char* key = "sk-ant-fuzz-KEY-0123";

// The calls a stream ended with are the ones announced, each with the input fragments passed on
// for it (or "{}" for a call that had none).
void check_tool_calls(const chatkit::completion& c, const std::vector<chatkit::tool_call_delta>& pieces) {
    std::vector<std::pair<std::string, std::string>> streamed; // name, arguments, by index
    for (const auto& p : pieces) {
        if (p.arguments.empty()) {
            require(p.index == streamed.size()); // each call is announced once, in order
            streamed.emplace_back(p.name, "");
        } else {
            require(p.index < streamed.size());
            streamed[p.index].second += p.arguments;
        }
    }
    if (streamed.empty()) return require(!c.extra.is_object() || !c.extra.contains("tool_calls"));
    const auto& calls = c.extra.at("tool_calls");
    require(calls.is_array() && calls.size() == streamed.size());
    for (std::size_t i = 0; i < calls.size(); ++i) {
        require(calls[i]["function"]["name"] == streamed[i].first);
        const auto& arguments = calls[i]["function"]["arguments"].get_ref<const std::string&>();
        require(arguments == (streamed[i].second.empty() ? "{}" : streamed[i].second));
    }
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const wire w{chatkit::anthropic_options{}};
    const auto pieces = fuzz::pieces(data, size);
    if (pieces.empty()) return 0;
    const std::string whole = fuzz::joined(pieces);

    if (auto answer = wire::parse_answer(whole)) fuzz::check_answer(*answer);

    // The error statuses the provider maps differently, one per input; the body's first bytes as
    // a retry-after header.
    static constexpr int statuses[] = {400, 401, 404, 413, 429, 500, 529};
    const std::vector<std::pair<std::string, std::string>> headers{{"retry-after", whole.substr(0, 12)},
                                                                   {"x-should-retry", whole.substr(0, 5)}};
    const auto failure = w.status_failure(statuses[whole.size() % std::size(statuses)], whole, headers, key);
    require(failure.e.message.find(key) == std::string::npos);
    require(!failure.retry_after || failure.retry_after->count() >= 0);

    fuzz::check_stream(w, pieces, key, "", check_tool_calls);
    return 0;
}
