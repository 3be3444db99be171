// A deterministic local provider: it answers with the last user message, word by word when
// streaming. It needs no network or key, so it is sample_server's embedded default and the
// provider of choice for tests and demos.
#pragma once

#include "chatkit/provider.hpp"

#include <chrono>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace chatkit {

struct echo_options {
    std::string model = "echo-1";
    std::chrono::milliseconds delay_per_word{0}; // paces a stream like a real model, for demos and benchmarks
};

/// Token rule: a token is a run of non-space characters. prompt_tokens counts them over every
/// message, completion_tokens over the reply; max_tokens cuts the reply (finish_reason "length").
class echo_provider {
public:
    explicit echo_provider(echo_options options = {}) : options_(std::move(options)) {}

    std::string_view name() const { return "echo"; }
    std::vector<std::string> models() const { return {options_.model}; }

    result<completion> complete(const chat_request& r) { return run(r, nullptr); }
    result<completion> stream(const chat_request& r, const delta_sink& sink) { return run(r, &sink); }

    component_health health() { return {}; }

    // OpenAI request fields that change what a real model would answer, which echo cannot do;
    // sampling and bookkeeping fields (seed, top_p, metadata, ...) make no difference to it.
    static constexpr std::string_view unsupported_fields[] = {"tools",           "tool_choice", "functions",    "function_call",
                                                              "response_format", "logprobs",    "top_logprobs", "audio",
                                                              "modalities",      "prediction",  "stop",         "web_search_options"};

    // The reply split into deltas that join back to it exactly: each holds one word and the
    // whitespace before it.
    static std::vector<std::string_view> words(std::string_view text) {
        std::vector<std::string_view> out;
        std::size_t start = 0;
        while (start < text.size()) {
            std::size_t word = text.find_first_not_of(" \t\r\n", start);
            if (word == std::string_view::npos) break;
            std::size_t end = text.find_first_of(" \t\r\n", word);
            if (end == std::string_view::npos) end = text.size();
            out.push_back(text.substr(start, end - start));
            start = end;
        }
        return out;
    }

private:
    result<completion> run(const chat_request& r, const delta_sink* sink) {
        for (auto field : unsupported_fields)
            if (r.extensions.contains(field))
                return error{error_kind::invalid_request, "the echo provider cannot honour '" + std::string{field} + "'",
                             "unsupported_parameter", std::string{field}};
        completion c;
        c.model = r.model.empty() ? options_.model : r.model;
        for (const auto& m : r.messages) c.usage.prompt_tokens += static_cast<int>(words(m.content).size());

        std::string_view last_user;
        for (auto it = r.messages.rbegin(); it != r.messages.rend(); ++it)
            if (it->role == role::user) {
                last_user = it->content;
                break;
            }
        const auto reply = words(last_user);
        for (const auto& word : reply) {
            if (r.max_tokens && c.usage.completion_tokens == *r.max_tokens) {
                c.finish_reason = "length";
                break;
            }
            if (sink) {
                if (c.usage.completion_tokens > 0 && options_.delay_per_word.count() > 0)
                    std::this_thread::sleep_for(options_.delay_per_word);
                if (!(*sink)(word)) break;
            }
            c.content += word;
            ++c.usage.completion_tokens;
        }
        return c;
    }

    echo_options options_;
};
static_assert(provider<echo_provider>);

} // namespace chatkit
