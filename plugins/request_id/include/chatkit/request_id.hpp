// Lets a client choose the id that follows its request through logs, the store and the answer:
// its X-Request-ID when that is 1–128 characters of [A-Za-z0-9._-]; otherwise the id the service
// generated is kept. Either way the id is echoed in the X-Request-ID response header.
#pragma once

#include "chatkit/middleware.hpp"

#include <optional>
#include <string_view>

namespace chatkit {

class request_id {
public:
    static constexpr std::string_view header = "X-Request-ID";

    static bool is_valid(std::string_view id) noexcept {
        if (id.empty() || id.size() > 128) return false;
        for (char c : id)
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
                return false;
        return true;
    }

    std::optional<http_response> before(http_request& req, no_context&) {
        if (const auto offered = req.header(header); is_valid(offered)) req.request_id = offered;
        return std::nullopt;
    }

    void after(const http_request& req, http_response& res, no_context&) {
        res.headers.insert_or_assign(std::string{header}, req.request_id);
    }
};
static_assert(middleware<request_id>);

} // namespace chatkit
