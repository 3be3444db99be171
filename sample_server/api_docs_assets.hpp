// The /openapi.json description and the /docs page's files, defined in api_docs_assets.cpp, which
// CMake generates from sample_server/openapi/ (sample_server/CMakeLists.txt).
#pragma once

#include <array>
#include <span>
#include <string_view>

namespace sample_server {

struct api_docs_asset {
    std::string_view path;
    std::string_view content_type;
    // The file in pieces: Swagger UI's bundle is larger than one string literal may be.
    std::span<const std::string_view> parts;
};

extern const std::array<api_docs_asset, 5> api_docs_assets;

} // namespace sample_server
