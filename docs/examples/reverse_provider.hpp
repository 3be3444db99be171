// A small Provider plugin, the worked example of docs/writing-a-provider.md: it answers with the
// last user message, its words in reverse order, and streams the answer one word per delta.
#pragma once

#include <chatkit/provider.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace example {

struct reverse_options {
    std::string model = "reverse-1"; // reported as the answering model unless the request names one
};

/// Token rule: a token is a run of non-space characters. prompt_tokens counts them over every
/// message, completion_tokens over the reply; max_tokens cuts the reply (finish_reason "length").
class reverse_provider {
public:
    explicit reverse_provider(reverse_options options = {}) : options_(std::move(options)) {}

    std::string_view name() const { return "reverse"; }

    // Optional: the models it serves, its default first. GET /v1/models lists them.
    std::vector<std::string> models() const { return {options_.model}; }

    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) { return run(r, nullptr); }

    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) { return run(r, &sink); }

    // Nothing can be down in a local computation; a remote provider would report its upstream here.
    chatkit::component_health health() { return {}; }

    // "one two  three" -> {"one", "two", "three"}
    static std::vector<std::string_view> split_words(std::string_view text) {
        std::vector<std::string_view> words;
        std::size_t pos = 0;
        while ((pos = text.find_first_not_of(" \t\r\n", pos)) != std::string_view::npos) {
            const std::size_t end = std::min(text.find_first_of(" \t\r\n", pos), text.size());
            words.push_back(text.substr(pos, end - pos));
            pos = end;
        }
        return words;
    }

private:
    // complete() and stream() share one path; `sink` is null when not streaming. The provider holds
    // no mutable state, so concurrent calls on the one shared instance are safe.
    chatkit::result<chatkit::completion> run(const chatkit::chat_request& r, const chatkit::delta_sink* sink) {
        const chatkit::message* last_user = nullptr;
        for (const auto& m : r.messages)
            if (m.role == chatkit::role::user) last_user = &m;
        if (!last_user) // an error is a value: the service answers 400 with this message and param
            return chatkit::error{chatkit::error_kind::invalid_request, "reverse_provider needs a user message", "no_user_message",
                                  "messages"};
        // OpenAI clients may send fields chatkit does not model (tools, stop, seed, ...); they arrive
        // in `extensions`. This provider honours none of them, so it refuses them, never ignores them.
        for (const auto& [field, value] : r.extensions.items())
            if (!value.is_null())
                return chatkit::error{chatkit::error_kind::invalid_request, "reverse_provider cannot honour '" + field + "'",
                                      "unsupported_parameter", field};

        chatkit::completion c;
        c.model = r.model.empty() ? options_.model : r.model;
        for (const auto& m : r.messages) c.usage.prompt_tokens += static_cast<int>(split_words(m.content).size());

        const auto words = split_words(last_user->content);
        for (auto word = words.rbegin(); word != words.rend(); ++word) {
            if (r.max_tokens && c.usage.completion_tokens == *r.max_tokens) {
                c.finish_reason = "length";
                break;
            }
            // Each delta carries the space before its word, so the deltas join to the content.
            std::string delta = c.content.empty() ? std::string{*word} : " " + std::string{*word};
            if (sink && !(*sink)(delta)) break; // the client has gone: stop and return promptly
            c.content += delta;
            ++c.usage.completion_tokens;
        }
        return c; // the service fills in id, created_at and latency_ms
    }

    reverse_options options_;
};

static_assert(chatkit::provider<reverse_provider>);

} // namespace example
