// README.md, "Use it in your own server": the whole program; its test checks what it prints.
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/request_id.hpp>
#include <iostream>

using my_service = chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_mt, chatkit::request_id>;

int main() {
    my_service svc{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::lru_cache_mt{}, chatkit::request_id{}};
    chatkit::http_request req{.method = "POST", .path = "/chat", .body = R"({"user_id":"ada","content":"hello"})"};
    chatkit::http_response res = svc.handle(req);
    std::cout << res.status << ' ' << res.body << '\n'; // 200 {"cached":false,"content":"hello",...}
}
