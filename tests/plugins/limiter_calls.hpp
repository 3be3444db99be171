// What the tests of chatkit::rate_limiter and chatkit::shared_rate_limiter share: a request from a
// client address, and one request through a limiter as the service runs it.
#pragma once

#include <chatkit/http.hpp>
#include <chatkit/rate_limiter.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace limiter_calls {

inline chatkit::http_request request_from(std::string addr, std::string path = "/chat") {
    chatkit::http_request req;
    req.method = path == "/health" ? "GET" : "POST";
    req.path = std::move(path);
    req.remote_addr = std::move(addr);
    req.request_id = "req-1";
    return req;
}

struct outcome {
    chatkit::http_response response;
    bool refused = false;
};

// before(), then after() on the answer.
template <class Limiter>
outcome send(Limiter& limiter, chatkit::http_request req) {
    typename Limiter::context ctx;
    outcome out;
    if (auto early = limiter.before(req, ctx)) {
        out.response = std::move(*early);
        out.refused = true;
    }
    limiter.after(req, out.response, ctx);
    return out;
}

inline std::string header(const chatkit::http_response& res, std::string_view name) {
    auto it = res.headers.find(name);
    return it == res.headers.end() ? std::string{"<absent>"} : it->second;
}

inline chatkit::rate_limit per_minute(std::uint32_t n) { return {n, std::chrono::minutes{1}}; }

} // namespace limiter_calls
