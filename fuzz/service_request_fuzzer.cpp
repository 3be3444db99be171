// The service's request decoding and answer writing: a body from outside through /chat,
// /v1/chat/completions, /v1/messages, /v1/responses, /history and /v1/models, with and without a
// JSON Content-Type. Whatever the bytes, the answer has a valid status and is JSON (every event of
// a stream too).
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace {
using service_type = chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_st>;

service_type& service() {
    static service_type s{chatkit::echo_provider{}, chatkit::no_store{},
                          chatkit::lru_cache_st{chatkit::lru_cache_options{.max_entries = 64}}};
    return s;
}

void require(bool ok) {
    if (!ok) std::abort();
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    static constexpr const char* paths[] = {"/chat", "/v1/chat/completions", "/history/fuzz", "/v1/models"};
    chatkit::http_request req;
    req.method = (data[0] & 4) ? "GET" : "POST";
    req.path = (data[0] & 64) ? "/v1/responses" : (data[0] & 32) ? "/v1/messages" : paths[data[0] & 3];
    if (data[0] & 8) req.headers.emplace("Content-Type", "application/json");
    if (data[0] & 16) req.query.emplace("limit", std::string(reinterpret_cast<const char*>(data + 1), std::min<std::size_t>(size - 1, 4)));
    req.body.assign(reinterpret_cast<const char*>(data + 1), size - 1);

    auto res = service().handle(req);
    require(res.status >= 200 && res.status < 600);
    if (res.is_stream()) {
        std::string text;
        res.stream([&text](std::string_view chunk) { return text.append(chunk), true; }, res.meta);
        chatkit::sse_parser events;
        events.feed(text, [](const chatkit::sse_message& m) { require(m.data == "[DONE]" || nlohmann::json::accept(m.data)); });
    } else {
        require(nlohmann::json::accept(res.body));
    }
    return 0;
}
