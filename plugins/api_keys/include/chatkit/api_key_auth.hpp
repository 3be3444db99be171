// A Middleware that lets through only requests carrying a valid chatkit API key, and tells the
// rest of the chain who sent them (http_request::caller). Keys come from a chatkit::key_directory,
// read into an in-memory snapshot that a background thread refreshes every couple of seconds, so
// no request waits on the database and a new or revoked key is seen within one refresh.
#pragma once

#include "chatkit/api_keys.hpp"
#include "chatkit/chat_routes.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/http.hpp"
#include "chatkit/key_directory.hpp"
#include "chatkit/middleware.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace chatkit {

struct api_key_auth_options {
    // How often the background thread reads the directory again. 2 s, so that a key created or
    // revoked from the command line is seen within 5 s even when one read fails. Zero: never;
    // call refresh() yourself (tests).
    std::chrono::milliseconds refresh_interval{2000};
    // The model a chat request that names none gets, checked against a key's model list. Empty:
    // such a request is refused for a key limited to some models, since its model is unknown here.
    std::string default_model{};
    // Paths answered without a key: probes that load balancers and orchestrators send.
    std::vector<std::string> open_paths{"/health", "/ready"};
    // Told when a background refresh fails (the last snapshot stays in use). The message comes from
    // the directory and never holds a key or a digest.
    std::function<void(const error&)> on_refresh_error{};
    // The SHA-256 digest (32 raw bytes, api_keys::digest) of the deployment's admin key; empty:
    // there is none. Only the digest is held, so the admin key itself need not be kept in clear.
    // The admin key is in no directory: it is accepted as caller "admin" (caller_identity::admin),
    // of no team, with no limits and every model.
    std::string admin_key_digest{};
};

template <class Directory>
class api_key_auth {
    static_assert(key_directory_check<Directory>::value);

public:
    // Reads the directory once; throws std::runtime_error when that fails, since a server that
    // cannot read its keys can only refuse everyone. Starts the refresher thread.
    explicit api_key_auth(Directory directory, api_key_auth_options options = {})
        : state_(std::make_unique<state>(std::move(directory), std::move(options))) {
        if (auto loaded = refresh(); !loaded)
            throw std::runtime_error("chatkit::api_key_auth: cannot read the API keys: " + loaded.error().message);
        if (state_->options.refresh_interval > std::chrono::milliseconds::zero())
            state_->refresher = std::jthread([s = state_.get()](std::stop_token stop) { s->refresh_until(stop); });
    }
    // A moved-from middleware may only be destroyed or assigned to.
    api_key_auth(api_key_auth&&) noexcept = default;
    api_key_auth& operator=(api_key_auth&&) noexcept = default;

    std::optional<http_response> before(http_request& req, no_context&) {
        for (const auto& open : state_->options.open_paths)
            if (req.path == open) return std::nullopt;
        const std::string_view key = api_keys::presented_key(req);
        if (key.empty()) return refuse(req, "missing API key: send it as 'Authorization: Bearer ck-...' or 'x-api-key: ck-...'");
        // Only the digest is compared, and never shown: neither the key nor it goes into a message.
        const std::string digest = api_keys::digest(key);
        if (!state_->options.admin_key_digest.empty() && api_keys::digests_equal(digest, state_->options.admin_key_digest)) {
            req.caller = caller_identity{.key_id = "admin", .admin = true};
            return std::nullopt; // no model list: the admin key may use every model
        }
        const auto snap = snapshot();
        const key_record* record = snap->find(digest);
        if (!record) return refuse(req, "invalid API key");
        if (record->revoked_at) return refuse(req, "this API key has been revoked");
        if (!record->active_at(now_unix_ms())) return refuse(req, "this API key has expired");
        // Known before the model check: a 403 is the key's own (its access-log line names it).
        req.caller = caller_identity{record->id, record->team_id, record->limits, record->team_limits};
        if (!record->models.empty() && is_chat(req)) return check_model(req, *record);
        return std::nullopt;
    }
    void after(const http_request&, http_response&, no_context&) {}

    // Reads the directory now and swaps the snapshot in. The lock guarding the snapshot is held only
    // to swap a pointer, never across the read, so requests go on meanwhile.
    result<void> refresh() { return state_->refresh(); }

    // The keys in the current snapshot (revoked and expired ones included).
    [[nodiscard]] std::size_t key_count() const { return snapshot()->records.size(); }

private:
    // The keys, indexed by the first 8 bytes of their digest; the whole digest is then compared in
    // constant time. The index leaks nothing useful through timing: it is a digest of a 256-bit
    // random key, which no one can steer.
    struct key_snapshot {
        std::vector<key_record> records;
        std::unordered_multimap<std::uint64_t, std::size_t> by_head;

        explicit key_snapshot(std::vector<key_record> r) : records(std::move(r)) {
            for (std::size_t i = 0; i < records.size(); ++i)
                if (records[i].digest.size() == api_keys::digest_bytes) by_head.emplace(head(records[i].digest), i);
        }
        static std::uint64_t head(std::string_view digest) noexcept {
            std::uint64_t h = 0;
            std::memcpy(&h, digest.data(), sizeof h);
            return h;
        }
        const key_record* find(std::string_view digest) const {
            const auto [first, last] = by_head.equal_range(head(digest));
            for (auto it = first; it != last; ++it)
                if (api_keys::digests_equal(records[it->second].digest, digest)) return &records[it->second];
            return nullptr;
        }
    };

    struct state {
        Directory directory;
        api_key_auth_options options;
        std::mutex directory_mutex;        // one read of the directory at a time (concept requirement 2)
        mutable std::mutex snapshot_mutex; // held only to copy or swap `current`
        std::shared_ptr<const key_snapshot> current = std::make_shared<const key_snapshot>(std::vector<key_record>{});
        std::mutex wake_mutex;
        std::condition_variable_any wake;
        std::jthread refresher; // last: stopped and joined before the rest is destroyed

        state(Directory d, api_key_auth_options o) : directory(std::move(d)), options(std::move(o)) {}

        result<void> refresh() {
            std::shared_ptr<const key_snapshot> next;
            {
                const std::lock_guard lock{directory_mutex};
                auto keys = directory.keys();
                if (!keys) return keys.error();
                next = std::make_shared<const key_snapshot>(std::move(*keys));
            }
            const std::lock_guard lock{snapshot_mutex};
            current.swap(next);
            return {}; // the old snapshot is freed here or by the last request still reading it
        }

        void refresh_until(std::stop_token stop) {
            std::unique_lock lock{wake_mutex};
            while (!stop.stop_requested()) {
                // Woken only by the interval or by the stop request (the destructor's).
                (void)wake.wait_for(lock, stop, options.refresh_interval, [] { return false; });
                if (stop.stop_requested()) return;
                lock.unlock();
                if (auto done = refresh(); !done && options.on_refresh_error) options.on_refresh_error(done.error());
                lock.lock();
            }
        }
    };

    std::shared_ptr<const key_snapshot> snapshot() const {
        const std::lock_guard lock{state_->snapshot_mutex};
        return state_->current;
    }

    static bool is_chat(const http_request& req) { return is_chat_request(req.method, req.path); }

    // 403 when the request's model is not one the key may use. A body that is not a JSON object is
    // let through: the service answers it with its own 400.
    std::optional<http_response> check_model(const http_request& req, const key_record& record) const {
        std::string model = state_->options.default_model;
        if (req.method == "GET") { // a conversation's stream, its turn in the query
            if (auto it = req.query.find("model"); it != req.query.end()) model = it->second;
        } else {
            const auto body = nlohmann::json::parse(req.body, nullptr, false);
            if (body.is_discarded() || !body.is_object()) return std::nullopt;
            if (auto it = body.find("model"); it != body.end() && it->is_string()) model = it->get<std::string>();
        }
        if (!model.empty() && record.allows_model(model)) return std::nullopt;
        std::string allowed;
        for (const auto& m : record.models) allowed += (allowed.empty() ? "" : ", ") + m;
        const std::string message = model.empty() ? "this API key may use only these models; name one in 'model': " + allowed
                                                  : "this API key may not use the model '" + model + "'; it may use: " + allowed;
        return error_response(error{error_kind::permission_denied, message, "model_not_allowed", "model"}, req.request_id);
    }

    static http_response refuse(const http_request& req, std::string message) {
        auto res = error_response(error{error_kind::unauthenticated, std::move(message), "invalid_api_key"}, req.request_id);
        res.headers["WWW-Authenticate"] = "Bearer"; // RFC 9110 §11.6.1: a 401 names the scheme it wants
        return res;
    }

    std::unique_ptr<state> state_;
};

static_assert(middleware<api_key_auth<static_key_directory>>);

} // namespace chatkit
