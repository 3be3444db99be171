// GET /openapi.json, the OpenAPI 3.1 description of every route sample_server serves, and GET /docs,
// Swagger UI showing it (docs/observability.md, "API documentation"). Both come from the binary
// (api_docs_assets.hpp, generated from sample_server/openapi/). They are routes of sample_server,
// not of the core service: the description names sample_server's own routes (/admin, /metrics,
// /dashboard), and GET / lists them because they are added with service::route.
#pragma once

#include "api_docs_assets.hpp"

#include <chatkit/http.hpp>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sample_server {

// The paths the authenticating middleware lets through without a key. The description of a public
// API is public: it holds no data, no key and nothing about the deployment but its routes, and a
// client needs it before it has a key. The /docs page must load without one too, as /dashboard
// does; what "Try it out" sends carries the key the user enters in "Authorize".
inline std::vector<std::string> api_docs_paths() {
    std::vector<std::string> out;
    for (const auto& a : api_docs_assets) out.emplace_back(a.path);
    return out;
}

template <class Service>
void add_api_docs_routes(Service& service) {
    for (const auto& asset : api_docs_assets) {
        // Joined on the first request, not at start-up: the 2 MB of Swagger UI were 37% of a Lambda
        // cold start (docs/lambda.md), for a page most instances never serve.
        struct joined {
            std::once_flag once;
            std::string text;
        };
        auto body = std::make_shared<joined>();
        service.route("GET", std::string{asset.path}, [body, &asset](chatkit::http_request&, typename Service::context&) {
            std::call_once(body->once, [&] {
                for (const auto part : asset.parts) body->text.append(part);
            });
            chatkit::http_response res;
            res.status = 200;
            res.headers["Content-Type"] = std::string{asset.content_type};
            res.body = body->text;
            // Revalidated each time: the files change with the binary, not with their names.
            res.headers["Cache-Control"] = "no-cache";
            res.headers["X-Content-Type-Options"] = "nosniff";
            res.headers["Referrer-Policy"] = "no-referrer";
            // Only this server's own files and API: a key typed into "Authorize" lives in
            // the page. Swagger UI sets inline styles and draws its icons as data: images.
            res.headers["Content-Security-Policy"] =
                "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
            return res;
        });
    }
}

} // namespace sample_server
