// The embedding examples' reader of an OpenAI chat stream (Server-Sent Events): the text of every
// delta in order, and whether the stream ended with `data: [DONE]`.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace example {

struct stream_text {
    std::string text;
    bool done = false;
};

inline stream_text openai_stream_text(std::string_view body) {
    stream_text out;
    std::size_t at = 0;
    while ((at = body.find("data: ", at)) != std::string_view::npos) {
        const auto end = body.find("\n\n", at);
        const auto data = body.substr(at + 6, end == std::string_view::npos ? std::string_view::npos : end - at - 6);
        at = end;
        if (data == "[DONE]") {
            out.done = true;
            break;
        }
        const auto chunk = nlohmann::json::parse(data);
        if (!chunk["choices"].empty()) out.text += chunk["choices"][0]["delta"].value("content", "");
        if (end == std::string_view::npos) break;
    }
    return out;
}

} // namespace example
