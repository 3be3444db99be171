// Gives every request an id that follows it through logs, the store and the response: the
// client's X-Request-ID when it is 1–128 characters of [A-Za-z0-9._-], otherwise a new one.
#pragma once

#include "chatkit/middleware.hpp"
#include "chatkit/random_id.hpp"

#include <optional>
#include <string_view>

namespace chatkit {

class request_id {
public:
    static constexpr std::string_view header = "X-Request-ID";

    static bool is_valid(std::string_view id) noexcept {
        if (id.empty() || id.size() > 128) return false;
        for (char c : id)
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-'))
                return false;
        return true;
    }

    std::optional<http_response> before(http_request& req, no_context&) {
        const auto offered = req.header(header);
        req.request_id = is_valid(offered) ? std::string{offered} : random_id();
        return std::nullopt;
    }

    void after(const http_request& req, http_response& res, no_context&) {
        res.headers.insert_or_assign(std::string{header}, req.request_id);
    }
};
static_assert(middleware<request_id>);

} // namespace chatkit
