// A Cache model for core tests: an unbounded map that never expires, shared by its copies so a
// test can look inside the one the service holds.
#pragma once

#include <chatkit/cache.hpp>

#include <map>
#include <memory>
#include <string>

struct map_cache {
    std::shared_ptr<std::map<std::string, chatkit::completion, std::less<>>> entries =
        std::make_shared<std::map<std::string, chatkit::completion, std::less<>>>();
    std::optional<chatkit::completion> get(std::string_view key) {
        auto it = entries->find(key);
        return it == entries->end() ? std::nullopt : std::optional{it->second};
    }
    void put(std::string_view key, const chatkit::completion& c, std::chrono::seconds) { (*entries)[std::string{key}] = c; }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::cache<map_cache>);
