// A delta sink that keeps what a provider streamed, for tests.
#pragma once

#include <chatkit/provider.hpp>

#include <string>
#include <vector>

namespace test_support {

struct collected_deltas {
    std::vector<std::string> deltas;
    chatkit::delta_sink sink() {
        return [this](std::string_view d) {
            deltas.emplace_back(d);
            return true;
        };
    }
    std::string joined() const {
        std::string s;
        for (const auto& d : deltas) s += d;
        return s;
    }
};

} // namespace test_support
