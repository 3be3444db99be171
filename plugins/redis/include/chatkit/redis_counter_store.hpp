// chatkit::redis_counter_store: the counters of chatkit::shared_key_limits in Redis, so every
// replica of a deployment enforces one limit. A chatkit::counter_store.
//
// Each counter is one Redis string, "<key_prefix><name>" (name as chatkit::shared_key_limits makes
// it, its window included: "key#k_1#rpm#29512345"), holding an integer (requests, tokens or
// micro-USD), with an expiry at the counter's expires_at. take() and add() are each one Lua script,
// run by EVALSHA: Redis runs a script alone, so every counter of a take is checked and then added
// to in one atomic step (all or none, exactly, without the give-back the DynamoDB store needs),
// and each call is one round trip. Why a script and not MULTI/WATCH: WATCH fails and retries under
// the contention a busy key's counter sees by design; a script never conflicts.
//
// Needs Redis 7.0 or later (PEXPIRETIME keeps the later of two expiries). Every counter of one
// take must live on one server: a plain Redis or a primary with replicas. On a Redis Cluster, put
// a hash tag in key_prefix ("{chatkit}:limits:") so that all counters share a slot.
#pragma once

#include "chatkit/counter_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/redis_connection_pool.hpp"

#include <hiredis/hiredis.h>

#include <charconv>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct redis_counter_store_options {
    redis_options redis{};
    // Prepended to every counter's name: several deployments may share a Redis.
    std::string key_prefix = "chatkit:limits:";
};

class redis_counter_store {
public:
    // KEYS: the counters. ARGV: amount, limit, expires_at (unix ms) of each, in order. Returns
    // {1, value, ...} (every new value) or {0, refused index (0-based), its value}. A counter that
    // does not exist is 0; a negative amount is never refused (a reservation given back).
    static constexpr std::string_view take_script = R"lua(
for i = 1, #KEYS do
  local amount = tonumber(ARGV[3 * i - 2])
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if amount > 0 and value + amount > tonumber(ARGV[3 * i - 1]) then return {0, i - 1, value} end
end
local out = {1}
for i = 1, #KEYS do
  out[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  local expires_at = tonumber(ARGV[3 * i])
  if redis.call('PEXPIRETIME', KEYS[i]) < expires_at then redis.call('PEXPIREAT', KEYS[i], expires_at) end
end
return out
)lua";
    // The same arguments; adds every amount, whatever the limits.
    static constexpr std::string_view add_script = R"lua(
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  local expires_at = tonumber(ARGV[3 * i])
  if redis.call('PEXPIRETIME', KEYS[i]) < expires_at then redis.call('PEXPIREAT', KEYS[i], expires_at) end
end
return 1
)lua";

    explicit redis_counter_store(redis_counter_store_options options)
        : s_(std::make_unique<state>(redis_connection_pool{options.redis}, std::move(options))) {}

    result<counters_taken> take(std::span<const counter_add> adds) {
        counters_taken t;
        if (adds.empty()) {
            t.taken = true;
            return t;
        }
        auto reply = run(s_->take, adds);
        if (!reply) return std::move(reply).error();
        const redisReply& r = **reply;
        const auto integer = [&](std::size_t i) { return r.element[i]->integer; };
        const bool shaped = r.type == REDIS_REPLY_ARRAY && r.elements >= 1 && r.element[0]->type == REDIS_REPLY_INTEGER;
        if (shaped && integer(0) == 1 && r.elements == adds.size() + 1) {
            t.taken = true;
            for (std::size_t i = 1; i < r.elements; ++i) t.values.push_back(integer(i));
            return t;
        }
        if (shaped && integer(0) == 0 && r.elements == 3 && integer(1) >= 0 && static_cast<std::size_t>(integer(1)) < adds.size()) {
            t.refused = static_cast<std::size_t>(integer(1));
            t.values.assign(adds.size(), 0);
            t.values[t.refused] = integer(2);
            return t;
        }
        return error{error_kind::unavailable, s_->pool.options().redacted_url() + ": the limits script answered in an unknown shape",
                     "limits_unavailable"};
    }

    result<void> add(std::span<const counter_add> adds) {
        if (adds.empty()) return {};
        auto reply = run(s_->add, adds);
        if (!reply) return std::move(reply).error();
        return {};
    }

    /// A counter's value now (0 when absent): for tests and reports.
    result<std::int64_t> value(const std::string& name) {
        const std::string key = s_->options.key_prefix + name;
        auto reply = s_->pool.command({"GET", key});
        if (!reply) return unavailable(reply.error());
        std::int64_t n = 0;
        if ((*reply)->type == REDIS_REPLY_STRING) std::from_chars((*reply)->str, (*reply)->str + (*reply)->len, n);
        return n;
    }

    /// Connects and PINGs, for a check at start-up.
    result<void> ping() { return s_->pool.ping(); }

    [[nodiscard]] const redis_counter_store_options& options() const noexcept { return s_->options; }

private:
    // A script and its SHA-1 as Redis named it on SCRIPT LOAD (empty until loaded).
    struct script {
        explicit script(std::string_view t) : text(t) {}
        std::string_view text;
        std::mutex mutex;
        std::string sha;
    };
    struct state {
        state(redis_connection_pool p, redis_counter_store_options o) : pool(std::move(p)), options(std::move(o)) {}
        redis_connection_pool pool;
        redis_counter_store_options options;
        script take{take_script};
        script add{add_script};
    };

    // Requirement 4 of the concept: every failure is `unavailable`; the message names no password.
    static error unavailable(const error& e) { return error{error_kind::unavailable, e.message, "limits_unavailable"}; }

    // EVALSHA of the script, loading it first when this store has not yet, and again when Redis
    // has forgotten it (a restart, SCRIPT FLUSH): the script's text crosses the wire once per
    // server, not with every request.
    result<redis_reply> run(script& sc, std::span<const counter_add> adds) {
        std::vector<std::string> words;
        words.reserve(4 * adds.size() + 1);
        words.push_back(std::to_string(adds.size()));
        for (const auto& a : adds) words.push_back(s_->options.key_prefix + a.name);
        for (const auto& a : adds) {
            words.push_back(std::to_string(a.amount));
            words.push_back(std::to_string(a.limit));
            words.push_back(std::to_string(a.expires_at));
        }
        for (int attempt = 0; attempt < 2; ++attempt) {
            std::string sha;
            {
                std::lock_guard lock{sc.mutex};
                sha = sc.sha;
            }
            if (sha.empty()) {
                auto loaded = s_->pool.command({"SCRIPT", "LOAD", sc.text});
                if (!loaded) return unavailable(loaded.error());
                if ((*loaded)->type != REDIS_REPLY_STRING) return unavailable({error_kind::unavailable, "SCRIPT LOAD answered no SHA-1"});
                sha.assign((*loaded)->str, (*loaded)->len);
                std::lock_guard lock{sc.mutex};
                sc.sha = sha;
            }
            std::vector<std::string_view> argv{"EVALSHA", sha};
            argv.insert(argv.end(), words.begin(), words.end());
            auto reply = s_->pool.command(std::span<const std::string_view>{argv});
            if (reply) return reply;
            if (reply.error().message.find("NOSCRIPT") == std::string::npos) return unavailable(reply.error());
            std::lock_guard lock{sc.mutex};
            sc.sha.clear(); // forgotten by Redis: load it again
        }
        return error{error_kind::unavailable, s_->pool.options().redacted_url() + ": the limits script could not be loaded",
                     "limits_unavailable"};
    }

    std::unique_ptr<state> s_; // movable; the scripts' mutexes stay put
};
static_assert(counter_store<redis_counter_store>);

} // namespace chatkit
