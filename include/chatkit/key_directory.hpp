// The Key directory concept: where an authenticating middleware finds the API keys it accepts
// (a SQLite table, a DynamoDB table). Only a key's SHA-256 digest is ever stored or handed out;
// the key itself is shown once, when it is created, and never kept.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/usage_limits.hpp"

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace chatkit {

/// A team: the owner of keys, with limits of its own.
struct team_record {
    std::string id{};
    std::string name{};
    usage_limits limits{};
    unix_ms created_at = 0;
};

/// One API key, as stored: never the key itself.
struct key_record {
    std::string id{}; // "key_" + random hex: what logs, history and the CLI name the key by; never holds ':'
    std::string team_id{};
    std::string name{};
    std::string prefix{}; // the key's first characters ("ck-AbC1"), to recognize it in a list
    std::string digest{}; // SHA-256 of the whole key: 32 raw bytes
    unix_ms created_at = 0;
    std::optional<unix_ms> expires_at{};
    std::optional<unix_ms> revoked_at{};
    usage_limits limits{};
    // The limits of the key's team, read with the key so that enforcing them needs no read per
    // request. A directory that knows no teams leaves them empty (no team limit).
    usage_limits team_limits{};
    std::vector<std::string> models{}; // the models the key may use; empty: any

    /// Whether the key is accepted at `now`: neither revoked nor past its expiry.
    [[nodiscard]] bool active_at(unix_ms now) const noexcept { return !revoked_at && (!expires_at || now < *expires_at); }
    /// Whether the key may use `model` (every model when its list is empty).
    [[nodiscard]] bool allows_model(std::string_view model) const noexcept {
        if (models.empty()) return true;
        for (const auto& m : models)
            if (m == model) return true;
        return false;
    }
};

/// What every directory refuses to store (invalid_request naming the field), so that each
/// checks the same: an id with ':' (history is scoped "KEY_ID:USER_ID", which stays unambiguous
/// only while key ids hold none), and a digest that is not 32 bytes (it could never match a
/// presented key's SHA-256).
[[nodiscard]] inline std::optional<error> invalid_key_record(const key_record& k) {
    if (k.id.empty() || k.id.find(':') != std::string::npos)
        return error{error_kind::invalid_request, "a key id must be non-empty and hold no ':'", "invalid_value", "id"};
    if (k.digest.size() != 32)
        return error{error_kind::invalid_request, "a key's digest must be its 32-byte SHA-256", "invalid_value", "digest"};
    return std::nullopt;
}

namespace detail {
template <class D>
concept key_directory_has_keys = requires(D& d) {
    { d.keys() } -> std::same_as<result<std::vector<key_record>>>;
};
} // namespace detail

/// A Key directory model provides:
///   1. `result<std::vector<key_record>> keys()` — every key the directory holds, revoked and
///      expired ones included (the caller decides at request time, since a key may expire
///      between two reads). Why whole lists: the authenticating middleware serves requests from
///      an in-memory snapshot it swaps every couple of seconds, so no request ever waits on the
///      database, and a new or revoked key is seen within one refresh.
///   2. It may block (it reads a database): it is called off the request path, by the snapshot's
///      refresher, one call at a time. Why: a blocking call on an event loop would stall every
///      request on it.
///   3. Failures are returned as `error_kind::unavailable` values, never thrown once constructed.
///      Why: a database that is briefly unreachable must not stop the server; the middleware keeps
///      its last snapshot and tries again at the next refresh.
/// A directory must be movable (the middleware owns it). Creating, listing and revoking keys are
/// not part of the concept: they are the administration of a particular storage (see
/// chatkit::sqlite_key_directory and chatkit::dynamodb_key_directory), which the middleware
/// never needs.
template <class D>
concept key_directory = std::movable<D> && detail::key_directory_has_keys<D>;

template <class D>
struct key_directory_check {
    static_assert(std::movable<D>, "chatkit::key_directory: the directory must be movable");
    static_assert(detail::key_directory_has_keys<D>,
                  "chatkit::key_directory: missing `chatkit::result<std::vector<chatkit::key_record>> keys()`");
    static constexpr bool value = key_directory<D>;
};

/// The reference model: a fixed list of keys held in memory (tests, or keys from a config file).
struct static_key_directory {
    std::vector<key_record> records{};

    result<std::vector<key_record>> keys() { return records; }
};
static_assert(key_directory<static_key_directory>);

/// One of several directories, chosen at run time (by a configuration: SQLite or DynamoDB), as
/// store_variant is for stores. It models key_directory; visit() reaches the directory it holds,
/// for the administration members the concept leaves out.
template <key_directory... Ds>
class key_directory_variant {
public:
    template <class D>
        requires(std::same_as<std::remove_cvref_t<D>, Ds> || ...)
    key_directory_variant(D&& d) : v_(std::forward<D>(d)) {}

    result<std::vector<key_record>> keys() {
        return std::visit([](auto& d) { return d.keys(); }, v_);
    }
    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit(std::forward<F>(f), v_);
    }
    template <class D>
    D* get_if() noexcept {
        return std::get_if<D>(&v_);
    }

private:
    std::variant<Ds...> v_;
};
static_assert(key_directory<key_directory_variant<static_key_directory>>);

} // namespace chatkit
