// What the upstream harnesses check of an answer a provider read: written back to a client, in
// every form the service writes it, it is valid JSON. An upstream's bytes must never reach a
// client as broken JSON, whatever they were. And how they read a stream (check_stream).
#pragma once

#include <chatkit/openai_api.hpp>
#include <chatkit/provider.hpp>
#include <chatkit/sse.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz {

inline void require(bool ok) {
    if (!ok) std::abort();
}

// Every event of an SSE text is JSON or [DONE].
inline void require_json_events(const std::string& text) {
    chatkit::sse_parser events;
    events.feed(text, [](const chatkit::sse_message& m) { require(m.data == "[DONE]" || nlohmann::json::accept(m.data)); });
}

// The answer as chat.completion, and as a stream of chunks: its text, the tool-call pieces as a
// provider passed them on, and the closing chunks with its usage and tool calls.
inline void check_answer(const chatkit::completion& c, const std::vector<chatkit::tool_call_delta>& pieces = {}) {
    require(nlohmann::json::accept(chatkit::openai_api::completion_text(c)));
    chatkit::openai_api::completion_chunks chunks{"chatcmpl-fuzz", c.model, 0};
    std::string stream = chunks.delta(c.content);
    for (const auto& p : pieces) stream += chunks.tool_call(p);
    stream += chunks.finish(c, true);
    require_json_events(stream);
}

// A stream cut into `pieces`, read as a provider reads it: the SSE parser feeding the wire's
// stream reader, with a text and a tool-call sink as the async providers set them (and the model
// the provider presets, when it is not empty). The text passed on must be the answer's, a failure
// must not quote `key`, and an answer must pass `check_calls` (the wire's own tool-call rules) and
// check_answer.
template <class Wire, class CheckCalls>
void check_stream(const Wire& w, const std::vector<std::string_view>& pieces, const std::string& key, const std::string& model,
                  CheckCalls check_calls) {
    std::string delivered;
    const chatkit::delta_sink sink = [&delivered](std::string_view text) { return delivered.append(text), true; };
    std::vector<chatkit::tool_call_delta> tool_pieces;
    const chatkit::tool_call_sink tools = [&tool_pieces](const chatkit::tool_call_delta& d) { return tool_pieces.push_back(d), true; };
    typename Wire::stream_reader reader{sink};
    reader.tool_sink = &tools;
    if (!model.empty()) reader.c.model = model;
    chatkit::sse_parser parser;
    for (const auto p : pieces) parser.feed(p, reader);
    require(delivered == reader.c.content);
    auto streamed = w.finish_stream(reader, key);
    if (!streamed) return require(streamed.error().e.message.find(key) == std::string::npos);
    check_calls(*streamed, tool_pieces);
    check_answer(*streamed, tool_pieces);
}

} // namespace fuzz
