// GET /dashboard: the usage dashboard page (docs/dashboard.md) and the files it loads, served from
// the binary (dashboard_assets.hpp, generated from sample_server/dashboard/). The page itself is
// open; what it shows comes from GET /v1/usage and /v1/usage/dashboard with the key the user enters.
#pragma once

#include "dashboard_assets.hpp"

#include <chatkit/http.hpp>

#include <string>
#include <vector>

namespace sample_server {

// The paths the authenticating middleware lets through without a key: a page that asks for the
// key must load without one. They hold no data.
inline std::vector<std::string> dashboard_paths() {
    std::vector<std::string> out;
    for (const auto& a : dashboard_assets) out.emplace_back(a.path);
    return out;
}

template <class Service>
void add_dashboard_routes(Service& service) {
    for (const auto& asset : dashboard_assets)
        service.route("GET", std::string{asset.path}, [&asset](chatkit::http_request&, typename Service::context&) {
            chatkit::http_response res;
            res.status = 200;
            res.headers["Content-Type"] = std::string{asset.content_type};
            res.body = std::string{asset.body};
            // Revalidated each time: the files change with the binary, not with their names.
            res.headers["Cache-Control"] = "no-cache";
            res.headers["X-Content-Type-Options"] = "nosniff";
            res.headers["Referrer-Policy"] = "no-referrer";
            // Only this server's own files and API: the page holds a key, so nothing else may run in
            // it or frame it. uPlot sets inline styles, hence 'unsafe-inline' for styles only.
            res.headers["Content-Security-Policy"] = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                     "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                                     "frame-ancestors 'none'";
            return res;
        });
}

} // namespace sample_server
