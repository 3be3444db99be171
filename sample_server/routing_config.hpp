// CHAT_CONFIG: the providers a gateway routes among and the models it serves, from a YAML file
// (JSON is YAML too). Read once at start-up; every problem stops it naming the file, the line and
// what is wrong (docs/providers.md has the format).
#pragma once

#include <chatkit/router.hpp>

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sample_server {

// One entry of `providers:`. Its key is read from the variable `api_key_env` names (never from
// the file, which is often committed), at start-up.
struct provider_entry {
    std::string name;
    std::string type; // openai | azure | anthropic | gemini | bedrock | echo
    std::string base_url;
    std::string api_key; // a secret: never shown, logged or quoted in an error
    std::string api_key_env;
    std::string api_key_secret_arn; // openai, azure, anthropic, gemini: the key from AWS Secrets Manager instead
    std::string model;              // its default model, for a route that names none
    std::string deployment;         // azure
    std::string api_version;        // azure
    std::optional<int> max_retries;
    std::optional<std::chrono::seconds> timeout;
    int line = 0;
};

struct routing_config {
    std::string path;
    std::vector<provider_entry> providers;
    std::vector<chatkit::model_route> models;
    chatkit::router_options router; // its cool-down; on_fallback is the program's
};

// A problem in the file, as "PATH:LINE:COLUMN: what" (lines and columns from 1).
struct routing_config_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

namespace routing_detail {

inline const std::vector<std::string_view>& provider_types() {
    static const std::vector<std::string_view> types{"openai", "azure", "anthropic", "gemini", "bedrock", "echo"};
    return types;
}

class reader {
public:
    explicit reader(std::string path) : path_(std::move(path)) {}

    [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const {
        const auto mark = at.Mark();
        if (mark.line < 0) throw routing_config_error(path_ + ": " + what);
        throw routing_config_error(path_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": " + what);
    }

    // A mapping whose keys are all among `known`: a misspelt key is an error, not a silent default.
    void expect_map(const YAML::Node& node, std::string_view what, std::initializer_list<std::string_view> known) const {
        if (!node.IsMap()) fail(node, std::string{what} + " must be a mapping");
        for (const auto& kv : node) {
            // A key may be YAML's complex kind (a list or a mapping, after "? "), which as<std::string>
            // would throw on with an exception start-up does not catch.
            if (!kv.first.IsScalar()) fail(kv.first, std::string{what} + " has a key that is not a name");
            const auto key = kv.first.as<std::string>();
            bool ok = false;
            std::string list;
            for (auto k : known) {
                ok = ok || key == k;
                list += (list.empty() ? "" : ", ") + std::string{k};
            }
            if (!ok) fail(kv.first, "unknown key '" + key + "' in " + std::string{what} + " (known: " + list + ")");
        }
    }

    std::string text(const YAML::Node& map, const char* key, bool required, std::string_view what) const {
        const YAML::Node v = map[key];
        if (!v) {
            if (required) fail(map, std::string{what} + " needs '" + key + "'");
            return {};
        }
        if (!v.IsScalar()) fail(v, "'" + std::string{key} + "' must be a string");
        auto s = v.as<std::string>();
        if (required && s.empty()) fail(v, "'" + std::string{key} + "' must not be empty");
        return s;
    }

    std::optional<long> integer(const YAML::Node& map, const char* key, long min, long max) const {
        const YAML::Node v = map[key];
        if (!v) return std::nullopt;
        long n = 0;
        if (!v.IsScalar() || !YAML::convert<long>::decode(v, n) || n < min || n > max)
            fail(v, "'" + std::string{key} + "' must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
        return n;
    }

private:
    std::string path_;
};

} // namespace routing_detail

// Reads and checks the file; `getenv` gives the keys the entries name. Throws routing_config_error.
inline routing_config load_routing_config(const std::string& path, const std::function<const char*(const char*)>& getenv) {
    routing_detail::reader in{path};
    YAML::Node root;
    try {
        root = YAML::LoadFile(path);
    } catch (const YAML::BadFile&) {
        throw routing_config_error(path + ": cannot be read");
    } catch (const YAML::ParserException& e) {
        throw routing_config_error(path + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) + ": " + e.msg);
    }
    if (!root.IsMap()) throw routing_config_error(path + ": must be a mapping with 'providers' and 'models'");
    in.expect_map(root, "the file", {"providers", "models", "router"});

    routing_config out;
    out.path = path;
    const YAML::Node providers = root["providers"];
    if (!providers || !providers.IsSequence() || providers.size() == 0) in.fail(root, "'providers' must be a list of one provider or more");
    std::set<std::string> names;
    for (const auto& p : providers) {
        in.expect_map(p, "a provider",
                      {"name", "type", "base_url", "api_key_env", "api_key_secret_arn", "model", "deployment", "api_version", "max_retries",
                       "timeout_seconds"});
        provider_entry e;
        e.line = p.Mark().line + 1;
        e.name = in.text(p, "name", true, "a provider");
        if (e.name.find('/') != std::string::npos)
            in.fail(p["name"], "a provider's name may not contain '/' (clients ask for provider/model)");
        if (!names.insert(e.name).second) in.fail(p["name"], "provider '" + e.name + "' is defined twice");
        e.type = in.text(p, "type", true, "provider '" + e.name + "'");
        bool known = false;
        std::string types;
        for (auto t : routing_detail::provider_types()) {
            known = known || e.type == t;
            types += (types.empty() ? "" : ", ") + std::string{t};
        }
        if (!known) in.fail(p["type"], "provider '" + e.name + "' has type '" + e.type + "'; the types are " + types);
        e.base_url = in.text(p, "base_url", e.type == "azure", "provider '" + e.name + "' (azure)");
        if (!e.base_url.empty() && !e.base_url.starts_with("http://") && !e.base_url.starts_with("https://"))
            in.fail(p["base_url"], "provider '" + e.name + "': base_url must start with http:// or https://");
        e.api_key_env = in.text(p, "api_key_env", false, "");
        e.api_key_secret_arn = in.text(p, "api_key_secret_arn", false, "");
        if (!e.api_key_env.empty()) {
            const char* key = getenv(e.api_key_env.c_str());
            if (!key || !*key) in.fail(p["api_key_env"], "provider '" + e.name + "': the variable " + e.api_key_env + " is not set");
            e.api_key = key;
        }
        // The public APIs need a key; a base_url of one's own (a local server) may not.
        const bool public_api = e.type == "azure" ||
                                ((e.type == "openai" || e.type == "anthropic" || e.type == "gemini") && e.base_url.empty());
        if (public_api && e.api_key_env.empty() && e.api_key_secret_arn.empty())
            in.fail(p, "provider '" + e.name + "' needs api_key_env: the variable that holds its key");
        if (!e.api_key_env.empty() && !e.api_key_secret_arn.empty())
            in.fail(p, "provider '" + e.name + "' has both api_key_env and api_key_secret_arn: keep one");
        if (!e.api_key_secret_arn.empty() && e.type != "openai" && e.type != "azure" && e.type != "anthropic" && e.type != "gemini")
            in.fail(p["api_key_secret_arn"],
                    "provider '" + e.name + "': api_key_secret_arn is for openai, azure, anthropic and gemini providers");
        e.model = in.text(p, "model", false, "");
        e.deployment = in.text(p, "deployment", e.type == "azure", "provider '" + e.name + "' (azure)");
        e.api_version = in.text(p, "api_version", false, "");
        if (auto n = in.integer(p, "max_retries", 0, 10)) e.max_retries = static_cast<int>(*n);
        if (auto n = in.integer(p, "timeout_seconds", 1, 3600)) e.timeout = std::chrono::seconds{*n};
        out.providers.push_back(std::move(e));
    }

    const YAML::Node models = root["models"];
    if (!models || !models.IsSequence() || models.size() == 0) in.fail(root, "'models' must be a list of one model or more");
    std::set<std::string> routed;
    for (const auto& m : models) {
        in.expect_map(m, "a model", {"name", "route", "model"});
        chatkit::model_route route;
        route.name = in.text(m, "name", true, "a model");
        if (!routed.insert(route.name).second) in.fail(m["name"], "model '" + route.name + "' is defined twice");
        const std::string upstream_model = in.text(m, "model", false, "");
        const YAML::Node steps = m["route"];
        if (!steps || !steps.IsSequence() || steps.size() == 0)
            in.fail(steps ? steps : m, "model '" + route.name + "' needs a 'route': a list of provider names");
        // A step: a provider's name, {provider, model, weight}, or a list of those sharing the traffic.
        auto target = [&](const YAML::Node& t) {
            chatkit::route_target r;
            if (t.IsScalar()) {
                r.provider = t.as<std::string>();
            } else {
                in.expect_map(t, "a route step", {"provider", "model", "weight"});
                r.provider = in.text(t, "provider", true, "a route step");
                r.model = in.text(t, "model", false, "");
                if (auto w = in.integer(t, "weight", 1, 1'000'000)) r.weight = static_cast<unsigned>(*w);
            }
            if (!names.contains(r.provider))
                in.fail(t, "model '" + route.name + "' routes to '" + r.provider + "', which is not among the providers");
            if (r.model.empty()) r.model = upstream_model;
            return r;
        };
        for (const auto& step : steps) {
            std::vector<chatkit::route_target> group;
            if (step.IsSequence()) {
                if (step.size() == 0) in.fail(step, "model '" + route.name + "' has an empty group in its route");
                for (const auto& t : step) group.push_back(target(t));
            } else {
                group.push_back(target(step));
            }
            route.groups.push_back(std::move(group));
        }
        out.models.push_back(std::move(route));
    }

    if (const YAML::Node r = root["router"]) {
        in.expect_map(r, "'router'", {"cooldown_after", "cooldown_seconds"});
        if (auto n = in.integer(r, "cooldown_after", 1, 1000)) out.router.cooldown_after = static_cast<int>(*n);
        if (auto n = in.integer(r, "cooldown_seconds", 0, 86'400)) out.router.cooldown = std::chrono::seconds{*n};
    }
    return out;
}

} // namespace sample_server
