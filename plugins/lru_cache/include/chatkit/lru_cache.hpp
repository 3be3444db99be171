// An in-memory Cache bounded by entry count and by bytes: when either bound is exceeded the least
// recently used entries go first, and each entry expires after the TTL it was stored with.
// `lru_cache_mt` is safe to share between threads; `lru_cache_st` is for one thread only.
#pragma once

#include "chatkit/cache.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/health.hpp"
#include "chatkit/null_mutex.hpp"

#include <chrono>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace chatkit {

struct lru_cache_options {
    std::size_t max_entries = 1024;
    std::size_t max_bytes = 64u << 20;
};

template <class Mutex = std::mutex, class Clock = std::chrono::steady_clock>
class lru_cache {
public:
    // What an entry costs beyond its strings: the list and hash nodes and the completion's fixed
    // fields (about 270 bytes with libstdc++). A round figure, so a budget means the same everywhere.
    static constexpr std::size_t entry_overhead = 256;
    // In memory, held for a map lookup: cheaper on the loop than a hop to the worker pool.
    static constexpr bool nonblocking = true;

    explicit lru_cache(lru_cache_options options = {}) : options_(options), state_(std::make_unique<state>()) {}
    // A moved-from cache may only be destroyed or assigned to.
    lru_cache(lru_cache&&) noexcept = default;
    lru_cache& operator=(lru_cache&&) noexcept = default;

    // The bytes an entry is charged against max_bytes.
    [[nodiscard]] static std::size_t entry_bytes(std::string_view key, const completion& value) noexcept {
        return key.size() + value.content.size() + value.model.size() + value.id.size() + value.finish_reason.size() + entry_overhead;
    }

    std::optional<completion> get(std::string_view key) {
        const auto now = Clock::now();
        state& s = *state_;
        std::lock_guard lock{s.mutex};
        auto found = s.index.find(key);
        if (found == s.index.end()) return std::nullopt;
        auto node = found->second;
        if (now >= node->expires) {
            erase(s, node);
            return std::nullopt;
        }
        s.entries.splice(s.entries.begin(), s.entries, node);
        return node->value;
    }

    // Replaces any entry under `key`, then evicts from the least recently used end until both
    // bounds hold. An entry that alone exceeds max_bytes is not stored (and the old one is gone).
    void put(std::string_view key, const completion& value, std::chrono::seconds ttl) {
        const auto now = Clock::now();
        const std::size_t cost = entry_bytes(key, value);
        const bool storable = ttl > std::chrono::seconds::zero() && options_.max_entries > 0 && cost <= options_.max_bytes;
        state& s = *state_;
        std::lock_guard lock{s.mutex};
        if (auto found = s.index.find(key); found != s.index.end()) erase(s, found->second);
        if (!storable) return;
        try {
            // Build the node aside so a failed allocation leaves the cache as it was.
            std::list<entry> fresh;
            fresh.push_back(entry{std::string{key}, value, expiry(now, ttl), cost});
            s.index.emplace(std::string_view{fresh.front().key}, fresh.begin());
            s.entries.splice(s.entries.begin(), fresh); // the node, and the key the index views, stay put
        } catch (const std::bad_alloc&) {
            return; // a cache never fails a request: out of memory, it simply does not store
        }
        s.bytes += cost;
        while (s.entries.size() > options_.max_entries || s.bytes > options_.max_bytes) erase(s, std::prev(s.entries.end()));
    }

    component_health health() {
        const state& s = *state_;
        std::lock_guard lock{s.mutex};
        return {.ok = true, .detail = std::to_string(s.entries.size()) + " entries, " + std::to_string(s.bytes) + " bytes"};
    }

    // Entries held, expired ones included until a get() or eviction removes them.
    [[nodiscard]] std::size_t size() const {
        const state& s = *state_;
        std::lock_guard lock{s.mutex};
        return s.entries.size();
    }
    [[nodiscard]] std::size_t bytes() const {
        const state& s = *state_;
        std::lock_guard lock{s.mutex};
        return s.bytes;
    }

private:
    struct entry {
        std::string key; // never reassigned: the index holds a view of it
        completion value;
        typename Clock::time_point expires;
        std::size_t bytes;
    };
    using entry_list = std::list<entry>; // front: most recently used

    // The index keys view the key strings inside the list nodes, which never move, so each key is
    // stored once (a key is a whole conversation, so it can be large) and get() allocates nothing.
    struct state {
        mutable Mutex mutex;
        entry_list entries;
        std::unordered_map<std::string_view, typename entry_list::iterator> index;
        std::size_t bytes = 0;
    };

    static void erase(state& s, typename entry_list::iterator node) noexcept {
        s.bytes -= node->bytes;
        s.index.erase(std::string_view{node->key});
        s.entries.erase(node);
    }

    // now + ttl, saturating: a TTL of years must not overflow the clock's representation.
    static typename Clock::time_point expiry(typename Clock::time_point now, std::chrono::seconds ttl) {
        const auto room = std::chrono::floor<std::chrono::seconds>(Clock::time_point::max() - now);
        if (ttl >= room) return Clock::time_point::max();
        return now + ttl;
    }

    lru_cache_options options_;
    std::unique_ptr<state> state_;
};

using lru_cache_mt = lru_cache<std::mutex>;
using lru_cache_st = lru_cache<null_mutex>;
static_assert(cache<lru_cache_mt>);
static_assert(cache<lru_cache_st>);

} // namespace chatkit
