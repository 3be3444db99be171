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

    // Tool-call pieces, as an async provider passes them on.
    std::vector<chatkit::tool_call_delta> tool_pieces;
    chatkit::tool_call_sink tool_sink() {
        return [this](const chatkit::tool_call_delta& d) {
            tool_pieces.push_back(d);
            return true;
        };
    }
    // A call's arguments, joined from its pieces.
    std::string arguments_of(std::size_t index) const {
        std::string s;
        for (const auto& p : tool_pieces)
            if (p.index == index) s += p.arguments;
        return s;
    }
};

} // namespace test_support
