// chatkit::postgres_key_directory: API keys and teams in the PostgreSQL database of the history
// (tables chatkit_teams and chatkit_api_keys, created by postgres_store's migrations, whichever
// opens the database first). A chatkit::key_directory that every replica reads, plus the
// administration sqlite_key_directory has: create a team or a key, read a team, revoke a key.
#pragma once

#include "chatkit/clock.hpp"
#include "chatkit/error.hpp"
#include "chatkit/key_directory.hpp"
#include "chatkit/postgres_connection_pool.hpp"
#include "chatkit/postgres_store.hpp"

#include <nlohmann/json.hpp>

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

namespace postgres_key_directory_detail {

// A key with its team's limits (a LEFT JOIN, as sqlite_key_directory reads them): columns id,
// team_id, name, prefix, digest, created_at, expires_at, revoked_at, then the key's rpm, tpm,
// budget_usd, budget_period, models, then the team's four.
inline const postgres_statement select_keys{
    "chatkit_select_keys", "SELECT k.id, k.team_id, k.name, k.prefix, k.digest, k.created_at, k.expires_at, k.revoked_at, "
                           "k.rpm, k.tpm, k.budget_usd, k.budget_period, k.models::text, t.rpm, t.tpm, t.budget_usd, t.budget_period "
                           "FROM chatkit_api_keys AS k LEFT JOIN chatkit_teams AS t ON t.id = k.team_id ORDER BY k.created_at, k.id"};
inline const postgres_statement insert_team{"chatkit_insert_team",
                                            "INSERT INTO chatkit_teams (id, name, rpm, tpm, budget_usd, budget_period, created_at) "
                                            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                                            {25, 25, 20, 20, 701, 25, 20}};
inline const postgres_statement select_team{
    "chatkit_select_team", "SELECT id, name, rpm, tpm, budget_usd, budget_period, created_at FROM chatkit_teams WHERE id = $1", {25}};
// Inserted only when the team exists: (teams found, keys inserted) tells a missing team from a
// key id that is taken, in one statement. FOR KEY SHARE holds the team's row for the insert.
inline const postgres_statement insert_key{
    "chatkit_insert_key",
    "WITH team AS (SELECT id FROM chatkit_teams WHERE id = $2 FOR KEY SHARE), "
    "added AS (INSERT INTO chatkit_api_keys (id, team_id, name, prefix, digest, created_at, expires_at, revoked_at, rpm, tpm, "
    "budget_usd, budget_period, models) SELECT $1, team.id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb FROM team "
    "ON CONFLICT (id) DO NOTHING RETURNING 1) "
    "SELECT (SELECT count(*) FROM team), (SELECT count(*) FROM added)",
    {25, 25, 25, 25, 17, 20, 20, 20, 20, 20, 701, 25, 25}};
// An earlier revocation stands; no row: no such key.
inline const postgres_statement revoke_key{
    "chatkit_revoke_key", "UPDATE chatkit_api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING revoked_at", {25, 20}};

inline std::optional<std::int64_t> optional_int8(const PGresult* r, int row, int column) {
    if (PQgetisnull(r, row, column)) return std::nullopt;
    return postgres_int8(r, row, column);
}

// Four columns from `first`: rpm, tpm, budget_usd, budget_period.
inline usage_limits read_limits(const PGresult* r, int row, int first) {
    usage_limits l;
    l.requests_per_minute = optional_int8(r, row, first);
    l.tokens_per_minute = optional_int8(r, row, first + 1);
    if (!PQgetisnull(r, row, first + 2)) l.budget_usd = postgres_float8(r, row, first + 2);
    if (!PQgetisnull(r, row, first + 3)) l.budget_period = postgres_bytes(r, row, first + 3);
    return l;
}

inline postgres_param nullable(const std::optional<std::int64_t>& v) { return v ? postgres_param{*v} : postgres_param::null(); }

inline void add_limits(std::vector<postgres_param>& params, const usage_limits& l) {
    params.push_back(nullable(l.requests_per_minute));
    params.push_back(nullable(l.tokens_per_minute));
    params.push_back(l.budget_usd ? postgres_param::float8(*l.budget_usd) : postgres_param::null());
    params.push_back(l.budget_period.empty() ? postgres_param::null() : postgres_param{std::string_view{l.budget_period}});
}

} // namespace postgres_key_directory_detail

class postgres_key_directory {
public:
    // Connects (a small pool of its own: keys are read every couple of seconds and written by an
    // administrator) and migrates the schema as postgres_store does; throws as it does.
    explicit postgres_key_directory(postgres_options options) : pool_(std::move(options)) { postgres_store_detail::migrate(pool_); }

    postgres_key_directory(postgres_key_directory&&) noexcept = default;
    postgres_key_directory& operator=(postgres_key_directory&&) noexcept = default;

    // Every key, revoked and expired ones included, oldest first.
    result<std::vector<key_record>> keys() {
        using namespace postgres_key_directory_detail;
        auto rows = run("read the API keys", select_keys, {});
        if (!rows) return std::move(rows).error();
        const PGresult* r = rows->get();
        std::vector<key_record> out;
        out.reserve(static_cast<std::size_t>(PQntuples(r)));
        for (int i = 0; i < PQntuples(r); ++i) {
            key_record k;
            k.id = postgres_bytes(r, i, 0);
            k.team_id = postgres_bytes(r, i, 1);
            k.name = postgres_bytes(r, i, 2);
            k.prefix = postgres_bytes(r, i, 3);
            k.digest = postgres_bytes(r, i, 4);
            k.created_at = postgres_int8(r, i, 5);
            k.expires_at = optional_int8(r, i, 6);
            k.revoked_at = optional_int8(r, i, 7);
            k.limits = read_limits(r, i, 8);
            k.team_limits = read_limits(r, i, 13);
            if (!PQgetisnull(r, i, 12)) {
                const auto models = nlohmann::json::parse(postgres_bytes(r, i, 12), nullptr, false);
                if (!models.is_array())
                    return error{error_kind::internal, "api_keys: key " + k.id + " has an unreadable model list", "store_corrupt"};
                for (const auto& m : models)
                    if (m.is_string()) k.models.push_back(m.get<std::string>());
            }
            out.push_back(std::move(k));
        }
        return out;
    }

    // Fails with conflict ("team_exists") when the id is taken.
    result<void> create_team(const team_record& t) {
        using namespace postgres_key_directory_detail;
        if (auto bad = unstorable({{t.id, "id"}, {t.name, "name"}, {t.limits.budget_period, "budget_period"}})) return *bad;
        std::vector<postgres_param> params{std::string_view{t.id}, std::string_view{t.name}};
        add_limits(params, t.limits);
        params.emplace_back(t.created_at);
        auto done = run("create the team", insert_team, params);
        if (!done) return std::move(done).error();
        if (postgres_store_detail::affected(*done) == 0)
            return error{error_kind::conflict, "team '" + t.id + "' already exists", "team_exists"};
        return {};
    }

    result<std::optional<team_record>> team(std::string_view id) {
        using namespace postgres_key_directory_detail;
        if (!postgres_store_detail::storable_text(id)) return std::optional<team_record>{}; // no row could hold it
        auto rows = run("read the team", select_team, {id});
        if (!rows) return std::move(rows).error();
        const PGresult* r = rows->get();
        if (PQntuples(r) == 0) return std::optional<team_record>{};
        return std::optional<team_record>{
            team_record{postgres_bytes(r, 0, 0), postgres_bytes(r, 0, 1), read_limits(r, 0, 2), postgres_int8(r, 0, 6)}};
    }

    // Stores a key record (its digest, never the key). Fails with invalid_request
    // ("team_not_found") when its team does not exist, and with conflict ("key_exists") when its
    // id is taken: a key is never overwritten.
    result<void> create_key(const key_record& k) {
        using namespace postgres_key_directory_detail;
        if (auto invalid = invalid_key_record(k)) return *invalid;
        if (auto bad = unstorable(
                {{k.id, "id"}, {k.team_id, "team"}, {k.name, "name"}, {k.prefix, "prefix"}, {k.limits.budget_period, "budget_period"}}))
            return *bad;
        const std::string models = k.models.empty() ? std::string{} : nlohmann::json(k.models).dump();
        std::vector<postgres_param> params{std::string_view{k.id},     std::string_view{k.team_id}, std::string_view{k.name},
                                           std::string_view{k.prefix}, std::string_view{k.digest},  k.created_at,
                                           nullable(k.expires_at),     nullable(k.revoked_at)};
        add_limits(params, k.limits);
        params.push_back(k.models.empty() ? postgres_param::null() : postgres_param{std::string_view{models}});
        auto done = run("create the key", insert_key, params);
        if (!done) return std::move(done).error();
        if (postgres_int8(done->get(), 0, 0) == 0)
            return error{error_kind::invalid_request, "no team '" + k.team_id + "'", "team_not_found", "team"};
        if (postgres_int8(done->get(), 0, 1) == 0)
            return error{error_kind::conflict, "a key with id '" + k.id + "' exists already", "key_exists", "id"};
        return {};
    }

    // Marks the key revoked at `at` and returns when it is revoked (an earlier revocation stands).
    // Fails with not_found ("key_not_found") for an unknown id.
    result<unix_ms> revoke_key(std::string_view id, unix_ms at) {
        using namespace postgres_key_directory_detail;
        const auto not_found = [&] { return error{error_kind::not_found, "no key '" + std::string{id} + "'", "key_not_found"}; };
        if (!postgres_store_detail::storable_text(id)) return not_found();
        auto rows = run("revoke the key", postgres_key_directory_detail::revoke_key, {id, at});
        if (!rows) return std::move(rows).error();
        if (PQntuples(rows->get()) == 0) return not_found();
        return postgres_int8(rows->get(), 0, 0);
    }

private:
    // One statement, all or nothing: retried once on a fresh connection when an idle one had broken.
    result<postgres_result> run(std::string_view action, const postgres_statement& st, const std::vector<postgres_param>& params) {
        auto r = pool_.with_connection([&](postgres_connection_pool::lease& c) { return c.prepared(st, params); });
        if (!r) // the pool's messages name the server, never the password or a bound value
            return error{error_kind::unavailable, "key directory could not " + std::string{action} + ": " + r.error().message,
                         "store_unavailable"};
        return r;
    }

    // A text column takes valid UTF-8 without NUL: anything else is refused by name, before a
    // statement would fail on it.
    struct field {
        std::string_view value;
        const char* name;
    };
    static std::optional<error> unstorable(std::initializer_list<field> fields) {
        for (const auto& f : fields)
            if (!postgres_store_detail::storable_text(f.value))
                return error{error_kind::invalid_request, std::string{f.name} + " must be UTF-8 text without NUL", "invalid_value", f.name};
        return std::nullopt;
    }

    postgres_connection_pool pool_;
};

static_assert(key_directory<postgres_key_directory>);

} // namespace chatkit
