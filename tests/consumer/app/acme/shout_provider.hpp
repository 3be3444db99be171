// A third-party provider, as a plugin author outside chatkit writes one: it answers with the last
// user message in capitals, streamed word by word. Its test (shout_provider_test.cpp) runs the
// provider conformance kit that chatkit installs.
#pragma once

#include <chatkit/provider.hpp>

#include <cctype>
#include <string>
#include <string_view>

namespace acme {

class shout_provider {
public:
    std::string_view name() const { return "shout"; }

    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) { return run(r, nullptr); }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) { return run(r, &sink); }
    chatkit::component_health health() { return {}; }

private:
    chatkit::result<chatkit::completion> run(const chatkit::chat_request& r, const chatkit::delta_sink* sink) {
        if (r.messages.empty() || r.messages.back().role != chatkit::role::user)
            return chatkit::error{chatkit::error_kind::invalid_request, "shout answers the user's last message", "no_user_message",
                                  "messages"};
        if (!r.extensions.empty())
            return chatkit::error{chatkit::error_kind::invalid_request, "shout honours no extension field", "unsupported_parameter",
                                  r.extensions.begin().key()};
        chatkit::completion c;
        c.model = "shout-1";
        const std::string& text = r.messages.back().content;
        for (const auto& m : r.messages) c.usage.prompt_tokens += static_cast<int>(m.content.size() / 4 + 1);
        // Deltas: each word with the spaces before it, in capitals.
        std::size_t pos = 0;
        while (pos < text.size()) {
            std::size_t end = text.find_first_not_of(' ', pos);
            end = end == std::string::npos ? text.size() : text.find(' ', end);
            if (end == std::string::npos) end = text.size();
            std::string delta = text.substr(pos, end - pos);
            for (char& ch : delta) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
            pos = end;
            if (sink && !(*sink)(delta)) break;
            c.content += delta;
            ++c.usage.completion_tokens;
        }
        return c;
    }
};
static_assert(chatkit::provider<shout_provider>);

} // namespace acme
