// What every plugin reports from health(): up or down, and why when down.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

namespace chatkit {

struct component_health {
    bool ok = true;
    std::string detail{}; // why it is down; shown in GET /health, so never a secret
    // A combinator's members, each by name (a router's providers): so that /health shows which
    // one is down while the whole still serves. Empty for a plain plugin.
    std::vector<std::pair<std::string, component_health>> parts{};
};

inline void to_json(nlohmann::json& j, const component_health& h) {
    j = {{"status", h.ok ? "ok" : "down"}};
    if (!h.detail.empty()) j["detail"] = h.detail;
    if (!h.parts.empty()) {
        nlohmann::json& parts = j["parts"] = nlohmann::json::object();
        for (const auto& [name, part] : h.parts) to_json(parts[name], part);
    }
}

} // namespace chatkit
