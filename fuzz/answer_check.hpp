// What the upstream harnesses check of an answer a provider read: written back to a client, in
// every form the service writes it, it is valid JSON. An upstream's bytes must never reach a
// client as broken JSON, whatever they were.
#pragma once

#include <chatkit/openai_api.hpp>
#include <chatkit/sse.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <string>
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

} // namespace fuzz
