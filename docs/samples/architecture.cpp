// docs/architecture.md's samples: a custom route that reads a middleware's per-request context.
#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/request_id.hpp>

#include <catch2/catch.hpp>

#include <optional>
#include <string>

TEST_CASE("architecture.md: a custom route reads the context a middleware filled in") {
    struct tenant { // a middleware with per-request state
        struct context {
            std::string name;
        };
        std::optional<chatkit::http_response> before(chatkit::http_request& req, context& ctx) {
            ctx.name = std::string{req.header("X-Tenant")};
            return std::nullopt;
        }
        void after(const chatkit::http_request&, chatkit::http_response&, context&) {}
    };
    using app = chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::no_cache, chatkit::request_id, tenant>;

    app svc; // every plugin here is default-constructible
    svc.route("GET", "/whoami", [](chatkit::http_request&, app::context& ctx) {
        return chatkit::json_response(200, {{"tenant", ctx.get<tenant>().name}});
    });

    chatkit::http_request req{.method = "GET", .path = "/whoami"};
    req.headers.emplace("X-Tenant", "acme");
    const auto res = svc.handle(req);
    CHECK(res.status == 200);
    CHECK(nlohmann::json::parse(res.body) == nlohmann::json{{"tenant", "acme"}});
}
