// What every plugin reports from health(): up or down, and why when down.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace chatkit {

struct component_health {
    bool ok = true;
    std::string detail{}; // why it is down; shown in GET /health, so never a secret
};

inline void to_json(nlohmann::json& j, const component_health& h) {
    j = {{"status", h.ok ? "ok" : "down"}};
    if (!h.detail.empty()) j["detail"] = h.detail;
}

} // namespace chatkit
