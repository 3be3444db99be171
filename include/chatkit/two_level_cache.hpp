// A Cache made of two Caches: a near one (in memory, this process) in front of a far one (shared
// by every replica, e.g. Redis). A hit near costs no round trip; a hit far is one, and is then
// kept near; every answer is written to both, so the next replica asking finds it far.
#pragma once

#include "chatkit/cache.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/health.hpp"
#include "chatkit/task.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace chatkit {

struct two_level_cache_options {
    // How long a far hit is kept near. The far cache does not say how long its entry has left, so
    // the near copy may outlive it by at most this much: short, so an entry evicted far (by its
    // TTL or by Redis's maxmemory) soon goes from every replica too.
    std::chrono::seconds near_fill_ttl{60};
};

/// `two_level_cache<Near, Far>` models Cache (blocking form):
///   1. `get(key)` asks Near, then on a miss Far; a Far hit is put Near for `near_fill_ttl` and
///      returned. The key goes unchanged to both, so the service's per-user scoping holds at both.
///   2. `put(key, value, ttl)` writes Near, then Far, both with `ttl`: a put is never only far
///      (the replica that answered would ask Far again) nor only near (no other replica would see it).
///   3. `health()` is ok when both are; its detail names both.
///   4. Threading: it adds no state of its own, so it is as safe to share as Near and Far are.
///   5. Errors: none of its own. Each level keeps the Cache contract (on trouble it misses or
///      drops the put), so a far cache that is down leaves the near one working.
///   6. It is nonblocking only when both levels are: with a networked Far, the service runs the
///      whole get on its worker pool, near hits included (one pool hop each).
/// Only the blocking form for now: both levels must be blocking caches.
template <blocking_cache Near, blocking_cache Far>
class two_level_cache {
public:
    static constexpr bool nonblocking = declared_nonblocking<Near> && declared_nonblocking<Far>;

    two_level_cache(Near near, Far far, two_level_cache_options options = {})
        : near_(std::move(near)), far_(std::move(far)), options_(options) {}

    std::optional<completion> get(std::string_view key) {
        if (auto hit = near_.get(key)) return hit;
        auto hit = far_.get(key);
        if (hit) near_.put(key, *hit, options_.near_fill_ttl);
        return hit;
    }

    void put(std::string_view key, const completion& value, std::chrono::seconds ttl) {
        near_.put(key, value, ttl);
        far_.put(key, value, ttl);
    }

    component_health health() {
        const component_health near = near_.health();
        const component_health far = far_.health();
        return {.ok = near.ok && far.ok, .detail = "near: " + near.detail + "; far: " + far.detail};
    }

    Near& near() noexcept { return near_; }
    Far& far() noexcept { return far_; }

private:
    Near near_;
    Far far_;
    two_level_cache_options options_;
};

static_assert(cache<two_level_cache<no_cache, no_cache>>);

} // namespace chatkit
