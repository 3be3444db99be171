// The asynchronous provider of docs/architecture.md: the same words-reversed answer as
// reverse_provider.hpp, written as coroutines that run on the request's event loop. A real one
// would `co_await` its upstream client here; this one only awaits the client's socket, through
// `out.write()`, which suspends while the socket is full.
#pragma once

#include <chatkit/provider.hpp>
#include <chatkit/task.hpp>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace example {

class async_reverse_provider {
public:
    std::string_view name() const { return "async-reverse"; }

    // Parameters by value: a coroutine outlives its caller's expression (GCC 12 guidance).
    chatkit::task<chatkit::result<chatkit::completion>> complete(chatkit::chat_request r) {
        if (auto refused = refusal(r)) co_return *refused; // an error is a value, never thrown
        chatkit::completion c = start(r);
        for (const auto& w : reversed_words(r)) c.content += w;
        c.usage.completion_tokens = static_cast<int>(reversed_words(r).size());
        co_return c;
    }

    chatkit::task<chatkit::result<chatkit::completion>> stream(chatkit::chat_request r, chatkit::delta_writer out) {
        if (auto refused = refusal(r)) co_return *refused;
        chatkit::completion c = start(r);
        const std::stop_token stop = co_await chatkit::current_stop_token();
        for (const auto& w : reversed_words(r)) {
            if (stop.stop_requested()) co_return chatkit::error{chatkit::error_kind::timeout, "cancelled", "request_cancelled"};
            if (!co_await out.write(w)) co_return c; // the client left: stop, the service drops the reply
            c.content += w;
            ++c.usage.completion_tokens;
        }
        co_return c;
    }

    chatkit::component_health health() { return {}; }

private:
    // It answers the last message, which must be the user's, and honours no OpenAI extension field.
    static std::optional<chatkit::error> refusal(const chatkit::chat_request& r) {
        if (r.messages.empty() || r.messages.back().role != chatkit::role::user)
            return chatkit::error{chatkit::error_kind::invalid_request, "the last message must be the user's", "no_user_message",
                                  "messages"};
        for (const auto& [field, value] : r.extensions.items())
            if (!value.is_null())
                return chatkit::error{chatkit::error_kind::invalid_request, "async_reverse_provider cannot honour '" + field + "'",
                                      "unsupported_parameter", field};
        return std::nullopt;
    }
    static chatkit::completion start(const chatkit::chat_request& r) {
        chatkit::completion c;
        c.model = r.model.empty() ? "async-reverse-1" : r.model;
        c.usage.prompt_tokens = static_cast<int>(r.messages.back().content.size() / 4 + 1);
        return c;
    }
    // "hello big world" -> {"world", " big", " hello"}
    static std::vector<std::string> reversed_words(const chatkit::chat_request& r) {
        std::istringstream in{r.messages.back().content};
        std::vector<std::string> words;
        for (std::string w; in >> w;) words.insert(words.begin(), w);
        for (std::size_t i = 1; i < words.size(); ++i) words[i] = " " + words[i];
        return words;
    }
};
static_assert(chatkit::async_provider<async_reverse_provider>);

} // namespace example
