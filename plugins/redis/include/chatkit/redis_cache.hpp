// A Cache in Redis, so every replica of a service answers from the same cached answers. Blocking
// (hiredis): the service calls it on its worker pool, never on a loop thread. A Redis that is
// down, slow or refuses the credentials makes it miss and drop puts, counted and reported through
// on_error; it never fails a chat.
//
// Size: each entry is stored with its TTL (SET key value PX ms), under `key_prefix`. The bound on
// memory is Redis's own: run it with `maxmemory` and `maxmemory-policy volatile-lru` (or
// allkeys-lru when the Redis holds nothing else), and Redis evicts the least recently used entries
// when full. The plugin keeps no count of its own: a count kept beside the entries would be
// bookkeeping of our own, racing between replicas, for what Redis does already.
#pragma once

#include "chatkit/cache.hpp"
#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/redis_connection_pool.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace chatkit {

struct redis_cache_options {
    redis_options redis{};
    // Prepended to the service's key (itself scoped per user): several services may share a Redis.
    std::string key_prefix = "chatkit:cache:";
    // An entry (key and value) larger than this is not stored: one huge answer must not push out
    // thousands of others, nor hold a connection for long.
    std::size_t max_entry_bytes = 4u << 20;
    // Called for each failed command, from the thread that ran it (concurrently: must be
    // thread-safe, and cheap — throttle logging in it). The error names no password.
    std::function<void(const error&)> on_error{};
};

/// Counts since the cache was made.
struct redis_cache_stats {
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;   // absent or expired entries
    std::uint64_t failures = 0; // commands that failed: each was a miss or a dropped put
};

class redis_cache {
public:
    // The encoding of an entry's value; an entry of another version is a miss.
    static constexpr int format_version = 1;

    explicit redis_cache(redis_cache_options options)
        : s_(std::make_shared<state>(redis_connection_pool{options.redis}, std::move(options))) {}

    std::optional<completion> get(std::string_view key) {
        state& s = *s_;
        auto reply = s.pool.command({"GET", s.key(key)});
        if (!reply) {
            s.failed(reply.error());
            return std::nullopt;
        }
        if ((*reply)->type != REDIS_REPLY_STRING) {
            ++s.misses;
            return std::nullopt;
        }
        auto value = decode(std::string_view{(*reply)->str, (*reply)->len});
        if (value) ++s.hits;
        else ++s.misses;
        return value;
    }

    void put(std::string_view key, const completion& value, std::chrono::seconds ttl) {
        if (ttl <= std::chrono::seconds::zero()) return;
        state& s = *s_;
        const std::string full_key = s.key(key);
        const std::string encoded = encode(value);
        if (full_key.size() + encoded.size() > s.options.max_entry_bytes) return;
        const std::string ms = std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(ttl).count());
        if (auto reply = s.pool.command({"SET", full_key, encoded, "PX", ms}); !reply) s.failed(reply.error());
    }

    // Never a round trip (it may be called on a loop thread): what the last commands found. A
    // Redis that is down is not a reason for a load balancer to take this replica out, so ok
    // stays true; the detail says what is wrong.
    component_health health() {
        const state& s = *s_;
        std::string detail = s.pool.options().redacted_url() + ", " + std::to_string(s.failures.load()) + " failed commands";
        std::lock_guard lock{s.mutex};
        if (!s.last_error.empty()) detail += ", last: " + s.last_error;
        return {.ok = true, .detail = std::move(detail)};
    }

    [[nodiscard]] redis_cache_stats stats() const { return {s_->hits.load(), s_->misses.load(), s_->failures.load()}; }

    // Connects and PINGs now, for a check at start-up (a failure then is no reason not to start:
    // the cache misses until Redis answers).
    result<void> ping() { return s_->pool.ping(); }

    [[nodiscard]] const redis_cache_options& options() const noexcept { return s_->options; }

    // The stored form: the answer's fields, not the per-request ones (latency, cost, cached).
    static std::string encode(const completion& c) {
        nlohmann::json j = {{"v", format_version},
                            {"id", c.id},
                            {"model", c.model},
                            {"content", c.content},
                            {"finish_reason", c.finish_reason},
                            {"usage", c.usage},
                            {"created_at", c.created_at}};
        if (!c.extra.is_null()) j["extra"] = c.extra;
        return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    static std::optional<completion> decode(std::string_view text) {
        const auto j = nlohmann::json::parse(text, nullptr, false);
        if (!j.is_object() || j.value("v", 0) != format_version) return std::nullopt;
        try {
            completion c;
            c.id = j.at("id").get<std::string>();
            c.model = j.at("model").get<std::string>();
            c.content = j.at("content").get<std::string>();
            c.finish_reason = j.at("finish_reason").get<std::string>();
            c.usage = j.at("usage").get<token_usage>();
            c.created_at = j.at("created_at").get<unix_ms>();
            if (auto extra = j.find("extra"); extra != j.end()) c.extra = *extra;
            return c;
        } catch (const nlohmann::json::exception&) {
            return std::nullopt;
        }
    }

private:
    // Shared, so the cache moves (into a cache_variant, a service) while its counters stay put.
    struct state {
        state(redis_connection_pool p, redis_cache_options o) : pool(std::move(p)), options(std::move(o)) {}
        redis_connection_pool pool;
        redis_cache_options options;
        std::atomic<std::uint64_t> hits{0}, misses{0}, failures{0};
        mutable std::mutex mutex;
        std::string last_error;

        [[nodiscard]] std::string key(std::string_view k) const { return options.key_prefix + std::string{k}; }
        void failed(const error& e) {
            ++failures;
            {
                std::lock_guard lock{mutex};
                last_error = e.message;
            }
            if (options.on_error) options.on_error(e);
        }
    };

    std::shared_ptr<state> s_;
};

static_assert(cache<redis_cache>);

} // namespace chatkit
