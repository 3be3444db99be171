// The /dashboard page's files, defined in dashboard_assets.cpp, which CMake generates from
// sample_server/dashboard/ (sample_server/CMakeLists.txt).
#pragma once

#include <array>
#include <string_view>

namespace sample_server {

struct dashboard_asset {
    std::string_view path;
    std::string_view content_type;
    std::string_view body;
};

extern const std::array<dashboard_asset, 5> dashboard_assets;

} // namespace sample_server
