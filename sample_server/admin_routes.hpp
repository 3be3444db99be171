// sample_server's administration over HTTP: the `teams create` and `keys create|list|revoke`
// commands as routes under /admin, for the admin key (CHAT_ADMIN_KEY, with CHAT_AUTH=keys) only.
// Bodies are JSON objects whose fields are the commands' flags (budget_usd for --budget-usd);
// answers are the JSON the commands print; errors are the usual envelope. docs/gateway.md,
// "Administration over HTTP", lists them.
#pragma once

#include "config.hpp"
#include "key_admin.hpp"
#include "key_directory.hpp"

#include <chatkit/error.hpp>
#include <chatkit/http.hpp>
#include <chatkit/json_text.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sample_server::admin_routes {

namespace detail {

using key_admin::invalid_field;

// The directory the routes write to: a handle of its own on the database whose keys the
// authenticating middleware reads, so what they write is seen within one refresh of its snapshot.
// One call at a time: the routes run on the worker pool, and a directory is not made for
// concurrent calls.
struct directory_access {
    std::mutex mutex;
    key_directory_type directory;
};

// The body as a JSON object, every field of it one of `known`: a misspelled field is refused
// rather than ignored, as the commands refuse an unknown flag.
inline nlohmann::json object_body(const chatkit::http_request& req, std::initializer_list<std::string_view> known) {
    // Never quote the body: a mistyped one may hold a secret.
    auto body = nlohmann::json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) throw invalid_field("", "the body must be a JSON object");
    for (const auto& [name, value] : body.items())
        if (std::find(known.begin(), known.end(), name) == known.end()) throw invalid_field(name, "unknown field '" + name + "'");
    return body;
}

// A string field; absent or null: not given.
inline std::optional<std::string> string_field(const nlohmann::json& body, std::string_view name) {
    const auto it = body.find(std::string{name});
    if (it == body.end() || it->is_null()) return std::nullopt;
    if (!it->is_string()) throw invalid_field(name, std::string{name} + " must be a string");
    return it->get<std::string>();
}

// A number field as the text the commands would have been given, so that it is checked by the
// same code ("1.5" is then refused as rpm, as --rpm 1.5 is).
inline key_admin::given number_field(const nlohmann::json& body, std::string_view name) {
    const auto it = body.find(std::string{name});
    if (it == body.end() || it->is_null()) return {name};
    if (!it->is_number()) throw invalid_field(name, std::string{name} + " must be a number");
    return {name, it->dump()};
}

inline chatkit::usage_limits limits(const nlohmann::json& body) {
    return key_admin::limits(number_field(body, "rpm"), number_field(body, "tpm"), number_field(body, "budget_usd"),
                             {"budget_period", string_field(body, "budget_period")});
}

inline std::string required_string(const nlohmann::json& body, std::string_view name, std::string_view what) {
    auto value = string_field(body, name);
    if (!value || value->empty()) throw invalid_field(name, std::string{name} + " is required: " + std::string{what});
    return std::move(*value);
}

inline chatkit::http_response json_answer(int status, const nlohmann::ordered_json& j) {
    return chatkit::json_text_response(status, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

inline chatkit::http_response team_create(const chatkit::http_request& req, directory_access& access) {
    const auto body = object_body(req, {"id", "name", "rpm", "tpm", "budget_usd", "budget_period"});
    chatkit::team_record t{required_string(body, "id", "the new team's id"), string_field(body, "name").value_or(""), limits(body),
                           chatkit::now_unix_ms()};
    const std::lock_guard lock{access.mutex};
    if (auto done = access.directory.visit([&](auto& dir) { return dir.create_team(t); }); !done)
        return chatkit::error_response(done.error(), req.request_id); // an existing team: 409
    return json_answer(201, key_admin::team_json(t));
}

inline chatkit::http_response key_create(const chatkit::http_request& req, directory_access& access) {
    const auto body = object_body(req, {"team", "name", "rpm", "tpm", "budget_usd", "budget_period", "models", "expires_in"});
    key_admin::key_request request{.team = required_string(body, "team", "the id of the key's team"),
                                   .name = string_field(body, "name").value_or(""),
                                   .limits = limits(body)};
    if (const auto it = body.find("models"); it != body.end() && !it->is_null()) {
        if (!it->is_array() || !std::all_of(it->begin(), it->end(), [](const auto& m) { return m.is_string(); }))
            throw invalid_field("models", "models must be an array of model names");
        request.models = key_admin::models("models", it->get<std::vector<std::string>>());
    }
    if (auto e = string_field(body, "expires_in")) request.expires_in_ms = key_admin::duration_ms("expires_in", *e);
    const auto issued = key_admin::issue_key(std::move(request));
    {
        const std::lock_guard lock{access.mutex};
        if (auto done = access.directory.visit([&](auto& dir) { return dir.create_key(issued.record); }); !done)
            return chatkit::error_response(done.error(), req.request_id); // an unknown team: 400, param "team"
    }
    auto res = json_answer(201, key_admin::key_json(issued.record, &issued.key)); // the only time the key is shown
    res.headers["Cache-Control"] = "no-store";
    return res;
}

inline chatkit::http_response key_list(const chatkit::http_request& req, directory_access& access) {
    const auto team = req.query.find("team");
    auto keys = [&] {
        const std::lock_guard lock{access.mutex};
        return access.directory.keys();
    }();
    if (!keys) return chatkit::error_response(keys.error(), req.request_id);
    nlohmann::ordered_json data = nlohmann::ordered_json::array();
    for (const auto& k : *keys)
        if (team == req.query.end() || k.team_id == team->second) data.push_back(key_admin::key_json(k, nullptr));
    nlohmann::ordered_json j;
    j["data"] = std::move(data);
    return json_answer(200, j);
}

inline chatkit::http_response key_revoke(const chatkit::http_request& req, directory_access& access) {
    const auto body = object_body(req, {"id"});
    const std::string id = required_string(body, "id", "the id of the key to revoke (key_...)");
    const std::lock_guard lock{access.mutex};
    auto at = access.directory.visit([&](auto& dir) { return dir.revoke_key(id, chatkit::now_unix_ms()); });
    if (!at) return chatkit::error_response(at.error(), req.request_id); // an unknown key: 404
    // The key as `keys list` shows it. A read just after the write may not see it yet (DynamoDB's
    // scans are eventually consistent), so its revocation is the one just written.
    auto keys = access.directory.keys();
    nlohmann::ordered_json j;
    j["id"] = id;
    j["revoked_at"] = chatkit::format_rfc3339(*at);
    if (keys) {
        const auto k = std::find_if(keys->begin(), keys->end(), [&](const auto& r) { return r.id == id; });
        if (k != keys->end()) {
            k->revoked_at = *at;
            j = key_admin::key_json(*k, nullptr);
        }
    }
    return json_answer(200, j);
}

// Why a caller may not administer, or nothing when it may. Without CHAT_AUTH=keys there is no
// admin key to check, so the routes are answered as if absent: they are never open.
inline std::optional<chatkit::http_response> refusal(const chatkit::http_request& req, bool keys_on, bool admin_key_set) {
    using chatkit::error_kind;
    if (!keys_on)
        return chatkit::error_response(
            {error_kind::not_found,
             "no route for " + req.method + " " + req.path + ": administration over HTTP needs CHAT_AUTH=keys and CHAT_ADMIN_KEY",
             "not_found"},
            req.request_id);
    if (!req.caller.admin)
        return chatkit::error_response({error_kind::permission_denied,
                                        admin_key_set
                                            ? "only the admin key (CHAT_ADMIN_KEY) may call " + req.path
                                            : "only the admin key may call " + req.path + ", and this server has none (CHAT_ADMIN_KEY)",
                                        "permission_denied"},
                                       req.request_id);
    return std::nullopt;
}

} // namespace detail

// Adds POST /admin/teams, POST /admin/keys, GET /admin/keys and POST /admin/keys/revoke to
// `service`. With CHAT_AUTH=keys they open a directory of their own on CHAT_DATABASE_URL (no call
// to DynamoDB yet); without it they answer 404.
template <class Service>
void add(Service& service, const config& c) {
    std::shared_ptr<detail::directory_access> access;
    if (c.auth == "keys") access.reset(new detail::directory_access{{}, make_key_directory(c, "CHAT_AUTH=keys")});
    const bool admin_key_set = !c.admin_key_digest.empty();
    using answer = chatkit::http_response (*)(const chatkit::http_request&, detail::directory_access&);
    const auto route = [&](std::string method, std::string path, answer fn) {
        service.route(std::move(method), std::move(path), [access, admin_key_set, fn](chatkit::http_request& req, auto&) {
            if (auto refused = detail::refusal(req, access != nullptr, admin_key_set)) return std::move(*refused);
            try {
                return fn(req, *access);
            } catch (const key_admin::invalid_field& e) {
                return chatkit::error_response({chatkit::error_kind::invalid_request, e.what(), "invalid_value", e.field}, req.request_id);
            }
        });
    };
    route("POST", "/admin/teams", detail::team_create);
    route("POST", "/admin/keys", detail::key_create);
    route("GET", "/admin/keys", detail::key_list);
    route("POST", "/admin/keys/revoke", detail::key_revoke);
}

} // namespace sample_server::admin_routes
