// A small Middleware plugin, the worked example of docs/writing-a-middleware.md. Clients may ask
// for an API version in the X-Chat-Version header: a version the server speaks is kept for the
// request and echoed in the answer's header; any other is refused with a 400 before routing.
// It counts the requests it refused and the ones answered without an error.
#pragma once

#include <chatkit/error.hpp>
#include <chatkit/http.hpp>
#include <chatkit/middleware.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace example {

struct version_gate_options {
    std::vector<std::string> versions = {"2025-06", "2025-01"}; // the first is the default
};

class version_gate {
public:
    static constexpr std::string_view header = "X-Chat-Version";

    // Per-request state, made fresh (default-constructed) for each request and handed to every
    // hook of that request: the version it is answered in, empty when before() refused it.
    struct context {
        std::string version;
    };

    explicit version_gate(version_gate_options options = {}) : options_(std::move(options)) {}

    // Runs before routing. Returning a response answers the request at once.
    std::optional<chatkit::http_response> before(chatkit::http_request& req, context& ctx) {
        const std::string_view asked = req.header(header);
        if (asked.empty()) {
            ctx.version = options_.versions.front();
            return std::nullopt;
        }
        for (const auto& version : options_.versions)
            if (version == asked) {
                ctx.version = version;
                return std::nullopt;
            }
        counters_->refused.fetch_add(1, std::memory_order_relaxed);
        // Never echo what the client sent: the list of versions the server speaks is enough.
        std::string spoken;
        for (const auto& version : options_.versions) spoken += (spoken.empty() ? "" : ", ") + version;
        return chatkit::error_response({chatkit::error_kind::invalid_request, "unknown API version; this server speaks " + spoken,
                                        "unsupported_version", std::string{header}},
                                       req.request_id);
    }

    // Runs for every request whose before() ran, its own refusal included (then the context has
    // no version). It decorates; the status and the body stay as they are.
    void after(const chatkit::http_request&, chatkit::http_response& res, context& ctx) {
        if (!ctx.version.empty()) res.headers.insert_or_assign(std::string{header}, ctx.version);
    }

    // Optional: runs once per request after its last byte, with the final status.
    void finish(const chatkit::http_request&, const chatkit::response_summary& summary, context& ctx) {
        if (!ctx.version.empty() && summary.status < 400) counters_->answered.fetch_add(1, std::memory_order_relaxed);
    }

    [[nodiscard]] std::uint64_t refused() const noexcept { return counters_->refused.load(std::memory_order_relaxed); }
    [[nodiscard]] std::uint64_t answered() const noexcept { return counters_->answered.load(std::memory_order_relaxed); }

private:
    // One instance serves every request at once: what requests share is atomic. Shared, so that
    // the middleware can be moved into a service (an atomic cannot move).
    struct counters {
        std::atomic<std::uint64_t> refused{0};
        std::atomic<std::uint64_t> answered{0};
    };
    version_gate_options options_;
    std::shared_ptr<counters> counters_ = std::make_shared<counters>();
};

static_assert(chatkit::middleware<version_gate>);

} // namespace example
