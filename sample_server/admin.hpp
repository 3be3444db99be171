// sample_server's administration commands: teams and API keys in the database the server uses
// (CHAT_DATABASE_URL, or --database-url), for CHAT_AUTH=keys. Output is JSON on stdout; errors go
// to stderr, with exit code 2 for bad usage and 1 for a refusal (an existing team, an unknown key).
// docs/gateway.md walks through them.
#pragma once

#include "config.hpp"
#include "key_admin.hpp"
#include "key_directory.hpp"

#include <chatkit/api_keys.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sample_server::admin {

inline constexpr std::string_view usage =
    "usage:\n"
    "  sample_server teams create --id ID [--name N] [--rpm N] [--tpm N] [--budget-usd X --budget-period day|month]\n"
    "  sample_server keys create --team ID [--name N] [--rpm N] [--tpm N] [--budget-usd X --budget-period day|month]\n"
    "                            [--models a,b] [--expires-in 30d]\n"
    "  sample_server keys list [--team ID]\n"
    "  sample_server keys revoke ID\n"
    "Each also takes --database-url URL (default: CHAT_DATABASE_URL, else sqlite:chatkit.db): sqlite:PATH or\n"
    "dynamodb://TABLE[?region=R&keys_table=KEYS] (keys in the table KEYS, by default TABLE-keys).\n";

// Bad usage: exit code 2, with the usage text.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Whether argv names an administration command rather than server flags.
inline bool is_command(int argc, char** argv) {
    return argc >= 2 && (std::string_view{argv[1]} == "teams" || std::string_view{argv[1]} == "keys");
}

namespace detail {

// "--flag value" or "--flag=value" pairs after the command words; a bare word is a positional.
struct arguments {
    std::map<std::string, std::string, std::less<>> flags;
    std::vector<std::string> positional;

    std::optional<std::string> get(std::string_view flag) const {
        if (auto it = flags.find(flag); it != flags.end()) return it->second;
        return std::nullopt;
    }
};

inline arguments parse(int argc, char** argv, int first, std::initializer_list<std::string_view> known) {
    arguments a;
    for (int i = first; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (!arg.starts_with("--")) {
            a.positional.emplace_back(arg);
            continue;
        }
        const auto eq = arg.find('=');
        const std::string name{arg.substr(0, eq)};
        if (name != "--database-url" && std::find(known.begin(), known.end(), name) == known.end())
            throw usage_error("unknown option '" + name + "'");
        if (eq != std::string_view::npos) a.flags[name] = std::string{arg.substr(eq + 1)};
        else if (i + 1 < argc) a.flags[name] = argv[++i];
        else throw usage_error("option '" + name + "' needs a value");
    }
    return a;
}

// The limits flags, checked as the /admin routes check the same fields.
inline chatkit::usage_limits limits(const arguments& a) {
    return key_admin::limits({"--rpm", a.get("--rpm")}, {"--tpm", a.get("--tpm")}, {"--budget-usd", a.get("--budget-usd")},
                             {"--budget-period", a.get("--budget-period")});
}

// "a,b" as a key's model list.
inline std::vector<std::string> split_models(const std::string& text) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= text.size()) {
        const auto comma = std::min(text.find(',', start), text.size());
        out.push_back(text.substr(start, comma - start));
        start = comma + 1;
    }
    return key_admin::models("--models", std::move(out));
}

// --database-url, checked as the server checks CHAT_DATABASE_URL.
inline void set_database_url(config& c, std::string_view value) {
    for (const auto& s : settings())
        if (s.env == "CHAT_DATABASE_URL") s.apply(c, "--database-url", value);
}

inline void print(const nlohmann::ordered_json& j) {
    const std::string line = j.dump() + "\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
}

// Any refusal from the directory: exit code 1.
struct refused : std::runtime_error {
    using std::runtime_error::runtime_error;
};
template <class T>
T checked(chatkit::result<T> r) {
    if (!r) throw refused(r.error().message);
    return std::move(*r);
}
inline void checked(chatkit::result<void> r) {
    if (!r) throw refused(r.error().message);
}

// `Directory`: sqlite_key_directory, dynamodb_key_directory or postgres_key_directory, which have the same administration.
template <class Directory>
int teams(int argc, char** argv, Directory& dir) {
    const std::string_view verb = argc > 2 ? argv[2] : "";
    if (verb != "create") throw usage_error("unknown command 'teams " + std::string{verb} + "'");
    const auto a = parse(argc, argv, 3, {"--id", "--name", "--rpm", "--tpm", "--budget-usd", "--budget-period"});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    const auto id = a.get("--id");
    if (!id || id->empty()) throw usage_error("teams create needs --id");
    chatkit::team_record t{*id, a.get("--name").value_or(""), limits(a), chatkit::now_unix_ms()};
    checked(dir.create_team(t));
    print(key_admin::team_json(t));
    return 0;
}

template <class Directory>
int keys(int argc, char** argv, Directory& dir) {
    const std::string_view verb = argc > 2 ? argv[2] : "";
    if (verb == "create") {
        const auto a = parse(argc, argv, 3,
                             {"--team", "--name", "--rpm", "--tpm", "--budget-usd", "--budget-period", "--models", "--expires-in"});
        if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
        const auto team = a.get("--team");
        if (!team || team->empty()) throw usage_error("keys create needs --team");
        key_admin::key_request request{.team = *team, .name = a.get("--name").value_or(""), .limits = limits(a)};
        if (auto m = a.get("--models")) request.models = split_models(*m);
        if (auto e = a.get("--expires-in")) request.expires_in_ms = key_admin::duration_ms("--expires-in", *e);
        const auto issued = key_admin::issue_key(std::move(request));
        checked(dir.create_key(issued.record));
        print(key_admin::key_json(issued.record, &issued.key)); // the only time the key is shown
        return 0;
    }
    if (verb == "list") {
        const auto a = parse(argc, argv, 3, {"--team"});
        if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
        const auto team = a.get("--team");
        for (const auto& k : checked(dir.keys()))
            if (!team || k.team_id == *team) print(key_admin::key_json(k, nullptr));
        return 0;
    }
    if (verb == "revoke") {
        const auto a = parse(argc, argv, 3, {});
        if (a.positional.size() != 1) throw usage_error("keys revoke needs one key id (see keys list)");
        const auto at = checked(dir.revoke_key(a.positional.front(), chatkit::now_unix_ms()));
        nlohmann::ordered_json j;
        j["id"] = a.positional.front();
        j["revoked_at"] = chatkit::format_rfc3339(at);
        print(j);
        return 0;
    }
    throw usage_error("unknown command 'keys " + std::string{verb} + "'");
}

} // namespace detail

// Runs `sample_server teams ...` or `sample_server keys ...`; returns the exit code.
inline int run(int argc, char** argv) {
    const std::string command = std::string{argv[1]} + (argc > 2 ? " " + std::string{argv[2]} : "");
    try {
        for (int i = 1; i < argc; ++i)
            if (std::string_view{argv[i]} == "--help" || std::string_view{argv[i]} == "-h") {
                std::fputs(std::string{usage}.c_str(), stdout);
                return 0;
            }
        // The database as the server finds it: its environment, or --database-url.
        const char* no_args[] = {argv[0], nullptr};
        config c = load_config(1, no_args);
        for (int i = 3; i < argc; ++i) {
            std::string_view arg = argv[i];
            if (arg.starts_with("--database-url=")) detail::set_database_url(c, arg.substr(15));
            else if (arg == "--database-url" && i + 1 < argc) detail::set_database_url(c, argv[i + 1]);
        }
        auto directory = make_key_directory(c, "sample_server " + command);
        return directory.visit([&](auto& dir) {
            return std::string_view{argv[1]} == "teams" ? detail::teams(argc, argv, dir) : detail::keys(argc, argv, dir);
        });
    } catch (const usage_error& e) {
        std::fprintf(stderr, "sample_server %s: %s\n%s", command.c_str(), e.what(), std::string{usage}.c_str());
        return 2;
    } catch (const key_admin::invalid_field& e) {
        std::fprintf(stderr, "sample_server %s: %s\n%s", command.c_str(), e.what(), std::string{usage}.c_str());
        return 2;
    } catch (const config_error& e) {
        std::fprintf(stderr, "sample_server %s: %s\n", command.c_str(), e.what());
        return 2;
    } catch (const detail::refused& e) {
        std::fprintf(stderr, "sample_server %s: %s\n", command.c_str(), e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sample_server %s: %s\n", command.c_str(), e.what());
        return 1;
    }
}

} // namespace sample_server::admin
