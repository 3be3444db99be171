// The asynchronous provider of docs/architecture.md: the same words-reversed answer as
// reverse_provider.hpp, written as coroutines that run on the request's event loop. A real one
// would `co_await` its upstream client here; this one only awaits the client's socket, through
// `out.write()`, which suspends while the socket is full.
#pragma once

#include <chatkit/provider.hpp>
#include <chatkit/task.hpp>

#include <sstream>
#include <string>
#include <vector>

namespace example {

class async_reverse_provider {
public:
    std::string_view name() const { return "async-reverse"; }

    // Parameters by value: a coroutine outlives its caller's expression (GCC 12 guidance).
    chatkit::task<chatkit::result<chatkit::completion>> complete(chatkit::chat_request r) {
        chatkit::completion c = start(r);
        for (const auto& w : reversed_words(r)) c.content += w;
        c.usage.completion_tokens = static_cast<int>(reversed_words(r).size());
        co_return c;
    }

    chatkit::task<chatkit::result<chatkit::completion>> stream(chatkit::chat_request r, chatkit::delta_writer out) {
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
