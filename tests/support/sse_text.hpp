// Reads a text/event-stream body the way a client does, for the tests that check what a stream
// carried: one reader, so that every test splits events alike (a blank line ends an event; `event:`
// names it; its `data:` lines are joined with '\n'; a line starting with ':' is a comment). It
// deliberately does not use chatkit's own SSE parser (chatkit/sse.hpp): a test must not read the
// server's output through the code it is checking.
#pragma once

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace test_support {

struct sse_event {
    std::string name; // empty when the event has no `event:` field
    std::string data;
    // The data as JSON (a test that reads it as JSON expects JSON: invalid JSON fails the test).
    [[nodiscard]] nlohmann::json json() const { return nlohmann::json::parse(data); }
};

// The events of a stream. Every event must end with its blank line: a stream cut short fails the
// test that reads it, unless it asks for `allow_unterminated` (what a client of a broken
// connection reads: the events that arrived whole).
inline std::vector<sse_event> sse_events(std::string_view body, bool allow_unterminated = false) {
    std::vector<sse_event> out;
    for (std::size_t pos = 0; pos < body.size();) {
        const auto end = body.find("\n\n", pos);
        if (end == std::string_view::npos) {
            if (!allow_unterminated) FAIL("the stream ends inside an event: " << body.substr(pos));
            break;
        }
        sse_event e;
        bool has_data = false;
        for (std::string_view block = body.substr(pos, end - pos); !block.empty();) {
            const auto nl = block.find('\n');
            const auto line = block.substr(0, nl);
            block = nl == std::string_view::npos ? std::string_view{} : block.substr(nl + 1);
            if (line.starts_with(':')) continue;
            const auto colon = line.find(':');
            const auto field = line.substr(0, colon);
            auto value = colon == std::string_view::npos ? std::string_view{} : line.substr(colon + 1);
            if (value.starts_with(' ')) value.remove_prefix(1);
            if (field == "event") e.name = value;
            else if (field == "data") {
                if (has_data) e.data += '\n';
                e.data += value;
                has_data = true;
            }
        }
        if (has_data || !e.name.empty()) out.push_back(std::move(e));
        pos = end + 2;
    }
    return out;
}

// The data of each event, in order ("[DONE]" included).
inline std::vector<std::string> sse_data(std::string_view body) {
    std::vector<std::string> out;
    for (auto& e : sse_events(body)) out.push_back(std::move(e.data));
    return out;
}

// The data of each event as JSON, OpenAI's closing "[DONE]" left out.
inline std::vector<nlohmann::json> sse_json(std::string_view body) {
    std::vector<nlohmann::json> out;
    for (const auto& e : sse_events(body))
        if (e.data != "[DONE]") out.push_back(e.json());
    return out;
}

} // namespace test_support
