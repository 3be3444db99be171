// A small Cache plugin, the worked example of docs/writing-a-cache.md: answers kept in memory in
// an ordered map, each with its expiry, bounded by an entry count. When it is full and nothing
// has expired, a new answer is not kept: a cache may miss, it never fails a request.
#pragma once

#include <chatkit/cache.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace example {

struct map_cache_options {
    std::size_t max_entries = 10'000;
};

class map_cache {
public:
    // Only a mutex guards it, so the service may call it on the event loop instead of the pool.
    static constexpr bool nonblocking = true;

    explicit map_cache(map_cache_options options = {}) : options_(options) {}

    // The entry under exactly this key, while it is younger than its TTL.
    std::optional<chatkit::completion> get(std::string_view key) {
        std::lock_guard lock{state_->mutex};
        const auto it = state_->entries.find(key);
        if (it == state_->entries.end()) return std::nullopt;
        if (clock::now() >= it->second.expires) { // expired: forget it, and miss
            state_->entries.erase(it);
            return std::nullopt;
        }
        return it->second.answer;
    }

    // Keeps the answer for `ttl`, replacing what the key held. A TTL of zero keeps nothing.
    void put(std::string_view key, const chatkit::completion& answer, std::chrono::seconds ttl) {
        if (ttl <= std::chrono::seconds{0}) return;
        const auto now = clock::now();
        std::lock_guard lock{state_->mutex};
        if (state_->entries.size() >= options_.max_entries && !state_->entries.contains(key)) {
            std::erase_if(state_->entries, [now](const auto& entry) { return now >= entry.second.expires; });
            if (state_->entries.size() >= options_.max_entries) return; // full: this one is not kept
        }
        state_->entries.insert_or_assign(std::string{key}, entry{answer, now + ttl});
    }

    // Cheap, and never a secret: the number of entries.
    chatkit::component_health health() {
        std::lock_guard lock{state_->mutex};
        return {.ok = true, .detail = std::to_string(state_->entries.size()) + " entries"};
    }

private:
    using clock = std::chrono::steady_clock;
    struct entry {
        chatkit::completion answer;
        clock::time_point expires;
    };
    struct state {
        std::mutex mutex;
        std::map<std::string, entry, std::less<>> entries; // std::less<>: find() takes the string_view as it is
    };
    map_cache_options options_;
    // Shared, so that the cache can be moved into a service (a mutex cannot move).
    std::shared_ptr<state> state_ = std::make_shared<state>();
};

static_assert(chatkit::cache<map_cache>);

} // namespace example
