// AWS credentials, region and endpoint resolution as the AWS SDKs do it (minus IMDS, SSO and
// assume-role): environment, then the shared files ~/.aws/credentials and ~/.aws/config, then the
// ECS/EKS container endpoint. Configuration comes through an injectable `environment` so tests are
// hermetic. No error message and no source() ever carries a secret key, session token or bearer.
#pragma once

#include "chatkit/aws/sigv4.hpp"
#include "chatkit/error.hpp"

#include <arpa/inet.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace chatkit::aws {

// Where configuration comes from; tests inject these. A default-constructed environment has no
// variables at all (an empty `getenv` answers nothing); process_environment() is the real one.
struct environment {
    std::function<std::optional<std::string>(const std::string&)> getenv; // process: ::getenv
    std::string home;                                                     // process: $HOME
};

inline environment process_environment() {
    environment e;
    e.getenv = [](const std::string& name) -> std::optional<std::string> {
        if (const char* v = std::getenv(name.c_str())) return std::string(v);
        return std::nullopt;
    };
    if (const char* h = std::getenv("HOME")) e.home = h;
    return e;
}

namespace detail {

// An unset and an empty variable mean the same, as in the SDKs.
inline std::optional<std::string> var(const environment& env, const std::string& name) {
    auto v = env.getenv ? env.getenv(name) : std::nullopt;
    return v && !v->empty() ? v : std::nullopt;
}

inline std::string trim(std::string_view s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    return b == std::string_view::npos ? std::string{} : std::string(s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1));
}

// `name` from the environment, else ~/<fallback>; a leading "~/" expands to the home directory.
inline std::string file_path(const environment& env, const std::string& name, const std::string& fallback) {
    auto p = var(env, name);
    if (!p) return env.home.empty() ? std::string{} : env.home + "/" + fallback;
    return p->starts_with("~/") && !env.home.empty() ? env.home + p->substr(1) : *p;
}

using ini = std::map<std::string, std::map<std::string, std::string>>; // section -> key -> value

// The SDKs' INI dialect: `[section]`, `key = value`, whole-line # and ; comments, lower-cased
// keys; indented lines under a key with an empty value are a nested block (e.g. `s3 =`), skipped.
inline ini read_ini(const std::string& path) {
    ini out;
    std::ifstream in(path);
    std::string line, section;
    bool nested = false;
    while (in && std::getline(in, line)) {
        if (line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);
        const auto t = trim(line);
        if (t.empty() || t[0] == '#' || t[0] == ';') continue;
        if (t[0] == '[') {
            const auto close = t.find(']');
            section = close == std::string::npos ? std::string{} : trim(std::string_view(t).substr(1, close - 1));
            if (section.starts_with("profile") && section.size() > 7 && std::isspace(static_cast<unsigned char>(section[7])))
                section = "profile " + trim(std::string_view(section).substr(8)); // "[profile   dev]"
            nested = false;
            continue;
        }
        const bool indented = std::isspace(static_cast<unsigned char>(line[0]));
        const auto eq = t.find('=');
        if (section.empty() || eq == std::string::npos || (indented && nested)) continue;
        auto key = trim(std::string_view(t).substr(0, eq));
        std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return char(std::tolower(c)); });
        auto value = trim(std::string_view(t).substr(eq + 1));
        nested = value.empty();
        out[section][key] = std::move(value);
    }
    return out;
}

inline std::string profile_name(const environment& env) { return var(env, "AWS_PROFILE").value_or("default"); }

// One profile's settings: config's [default] / [profile name], overridden key by key by the
// credentials file's [name], as botocore merges them.
inline std::map<std::string, std::string> profile(const environment& env, const std::string& name, bool with_credentials_file) {
    std::map<std::string, std::string> out;
    auto merge = [&](const ini& file, const std::string& section) {
        if (auto it = file.find(section); it != file.end())
            for (const auto& [k, v] : it->second) out[k] = v;
    };
    const auto config = read_ini(file_path(env, "AWS_CONFIG_FILE", ".aws/config"));
    if (name == "default") merge(config, "default");
    merge(config, "profile " + name);
    if (with_credentials_file) merge(read_ini(file_path(env, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")), name);
    return out;
}

// ISO-8601 UTC as the container endpoint sends it: 2026-11-24T12:00:00Z, optionally with
// fractional seconds (dropped) or a ±hh:mm offset.
inline std::optional<std::chrono::system_clock::time_point> parse_time(std::string_view s) {
    using namespace std::chrono;
    auto num = [&](std::size_t at, std::size_t len) {
        int v = 0;
        for (std::size_t i = at; i < at + len; ++i) {
            if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return -1;
            v = v * 10 + (s[i] - '0');
        }
        return v;
    };
    if (s.size() < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':') return std::nullopt;
    const int y = num(0, 4), mo = num(5, 2), d = num(8, 2), h = num(11, 2), mi = num(14, 2), se = num(17, 2);
    std::size_t i = 19;
    if (s[i] == '.')
        for (++i; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]));) ++i;
    minutes offset{0};
    if (i + 1 == s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    } else if (i + 6 == s.size() && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':' && num(i + 1, 2) >= 0 && num(i + 4, 2) >= 0) {
        offset = (s[i] == '-' ? -1 : 1) * (hours{num(i + 1, 2)} + minutes{num(i + 4, 2)});
    } else {
        return std::nullopt;
    }
    const year_month_day date{year{y}, month{unsigned(mo)}, day{unsigned(d)}};
    if (std::min({y, mo, d, h, mi, se}) < 0 || !date.ok() || h > 23 || mi > 59 || se > 60) return std::nullopt;
    return sys_days{date} + hours{h} + minutes{mi} + seconds{se} - offset;
}

// Plain http may carry credentials only to the host itself or the ECS/EKS agents (the SDKs' rule).
inline bool trusted_http_host(const std::string& host) {
    in_addr v4{};
    in6_addr v6{}, eks{};
    if (host == "localhost") return true;
    if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
        const auto a = ntohl(v4.s_addr);
        return (a >> 24) == 127 || a == 0xA9FEAA02u /* 169.254.170.2 */ || a == 0xA9FEAA17u /* 169.254.170.23 */;
    }
    return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && inet_pton(AF_INET6, "fd00:ec2::23", &eks) == 1 &&
           (IN6_IS_ADDR_LOOPBACK(&v6) || std::equal(v6.s6_addr, v6.s6_addr + 16, eks.s6_addr));
}

inline error container_error(std::string message, std::string code = "aws_container_credentials_failed") {
    return error{error_kind::unavailable, "container credentials: " + std::move(message), std::move(code)};
}

// ECS task roles / EKS Pod Identity: GET the endpoint, bearer in Authorization (re-read each time).
inline result<credentials> fetch_container(const environment& env) {
    std::string url;
    if (auto rel = var(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"))
        url = std::string("http://169.254.170.2") + (rel->starts_with('/') ? "" : "/") + *rel;
    else url = var(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI").value_or("");
    const bool https = url.starts_with("https://");
    if (!https && !url.starts_with("http://"))
        return container_error("AWS_CONTAINER_CREDENTIALS_FULL_URI must be an http:// or https:// URL", "aws_container_uri_refused");
    const auto rest = std::string_view(url).substr(https ? 8 : 7);
    const auto slash = std::min(rest.find_first_of("/?#"), rest.size());
    const auto authority = rest.substr(0, slash);
    std::string path(rest.substr(slash));
    if (path.empty() || path[0] != '/') path.insert(0, "/");
    if (const auto hash = path.find('#'); hash != std::string::npos) path.erase(hash);
    std::string host(authority), port_text;
    if (authority.starts_with('[')) {
        const auto close = authority.find(']');
        host = std::string(authority.substr(1, close == std::string_view::npos ? 0 : close - 1));
        if (close != std::string_view::npos && close + 1 < authority.size() && authority[close + 1] == ':')
            port_text = authority.substr(close + 2);
    } else if (const auto colon = authority.find(':'); colon != std::string_view::npos) {
        host = std::string(authority.substr(0, colon));
        port_text = authority.substr(colon + 1);
    }
    int port = https ? 443 : 80;
    if (!port_text.empty())
        port = port_text.find_first_not_of("0123456789") == std::string::npos && port_text.size() <= 5 ? std::stoi(port_text) : -1;
    if (host.empty() || authority.find('@') != std::string_view::npos || port <= 0 || port > 65535)
        return container_error("AWS_CONTAINER_CREDENTIALS_FULL_URI is not a valid URL with a host", "aws_container_uri_refused");
    if (!https && !trusted_http_host(host))
        return container_error("refusing plain http to host '" + host +
                                   "': AWS_CONTAINER_CREDENTIALS_FULL_URI must use https, or http to "
                                   "a loopback address (127.0.0.0/8, ::1), 169.254.170.2 or 169.254.170.23",
                               "aws_container_uri_refused");
    std::optional<std::string> token;
    if (auto file = var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")) {
        std::ifstream in(*file, std::ios::binary);
        std::ostringstream text;
        if (!in) return container_error("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE '" + *file + "'");
        text << in.rdbuf(); // an empty file sets failbit on `text`: no token, not an error
        token = trim(text.str());
    } else {
        token = var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    }
    httplib::Headers headers;
    if (token && token->find_first_of("\r\n") != std::string::npos) return container_error("the authorization token contains a line break");
    if (token && !token->empty()) headers.emplace("Authorization", *token);
    std::unique_ptr<httplib::ClientImpl> client;
    if (https) client = std::make_unique<httplib::SSLClient>(host, port);
    else client = std::make_unique<httplib::ClientImpl>(host, port);
    client->set_connection_timeout(2);
    client->set_read_timeout(2);
    client->set_write_timeout(2);
    client->enable_server_certificate_verification(true);
    const auto res = client->Get(path, headers);
    if (!res) return container_error("cannot reach " + host + " (" + httplib::to_string(res.error()) + ")");
    if (res->status != 200) return container_error(host + " answered HTTP " + std::to_string(res->status));
    const auto j = nlohmann::json::parse(res->body, nullptr, false); // the body holds secrets: never quoted
    auto field = [&](const char* k) {
        return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string{};
    };
    credentials c{field("AccessKeyId"), field("SecretAccessKey"), field("Token"), std::nullopt};
    if (c.empty()) return container_error(host + " answered without AccessKeyId/SecretAccessKey");
    if (const auto exp = field("Expiration"); !exp.empty() && !(c.expiration = parse_time(exp)))
        return container_error(host + " answered an unreadable Expiration '" + exp + "'");
    return c;
}

struct resolved {
    credentials creds;
    std::string source;
};

inline result<resolved> resolve_chain(const environment& env) {
    auto id = var(env, "AWS_ACCESS_KEY_ID"), secret = var(env, "AWS_SECRET_ACCESS_KEY");
    if (id && secret) return resolved{{*id, *secret, var(env, "AWS_SESSION_TOKEN").value_or(""), std::nullopt}, "environment"};
    const auto name = profile_name(env);
    auto p = profile(env, name, true);
    if (!p["aws_access_key_id"].empty() && !p["aws_secret_access_key"].empty())
        return resolved{{p["aws_access_key_id"], p["aws_secret_access_key"], p["aws_session_token"], std::nullopt},
                        "shared credentials file (profile " + name + ")"};
    if (var(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") || var(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI")) {
        auto c = fetch_container(env);
        if (!c) return c.error();
        return resolved{std::move(c).value(), "container credentials"};
    }
    return error{
        error_kind::unavailable,
        "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials, or container credentials",
        "aws_credentials_missing"};
}

} // namespace detail

// The AWS SDK default chain, minus IMDS/SSO/assume-role. Thread-safe: one lock guards the cache,
// so concurrent callers that find it stale wait for one refresh instead of each fetching.
class credentials_provider {
public:
    explicit credentials_provider(environment env = process_environment(), std::chrono::seconds refresh_before = std::chrono::seconds(300))
        : s_(std::make_unique<state>(std::move(env), refresh_before)) {}
    credentials_provider(credentials_provider&&) noexcept = default;
    credentials_provider& operator=(credentials_provider&&) noexcept = default;

    // Cached; fetched again once within refresh_before of expiration. If that fails while the old
    // credentials are still valid they are kept, and the next attempt waits retry_pause.
    result<credentials> get() {
        using clock = std::chrono::system_clock;
        const std::lock_guard lock{s_->mutex};
        const auto now = clock::now();
        const auto& cached = s_->cached;
        if (cached && (!cached->expiration || now + s_->refresh_before < *cached->expiration)) return *cached;
        const bool still_valid = cached && now < *cached->expiration;
        if (still_valid && now < s_->next_attempt) return *cached;
        auto fresh = detail::resolve_chain(s_->env);
        if (fresh) {
            s_->cached = fresh->creds;
            s_->source = std::move(fresh->source);
            return std::move(fresh).value().creds;
        }
        if (still_valid) {
            s_->next_attempt = now + retry_pause;
            return *cached;
        }
        s_->cached.reset();
        s_->source = "none";
        return std::move(fresh).error();
    }

    // The cached credentials when they need no refresh, or nothing; never waits for a fetch
    // (another thread's included), so an event loop can ask and fetch through get() on a worker
    // only when this is empty.
    std::optional<credentials> cached_if_fresh() const {
        const std::unique_lock lock{s_->mutex, std::try_to_lock};
        if (!lock.owns_lock()) return std::nullopt;
        const auto& cached = s_->cached;
        if (cached && (!cached->expiration || std::chrono::system_clock::now() + s_->refresh_before < *cached->expiration)) return *cached;
        return std::nullopt;
    }

    // "environment" | "shared credentials file (profile X)" | "container credentials" | "none".
    [[nodiscard]] std::string source() const {
        const std::lock_guard lock{s_->mutex};
        return s_->source;
    }

    static constexpr std::chrono::seconds retry_pause{10};

private:
    struct state {
        state(environment e, std::chrono::seconds r) : env(std::move(e)), refresh_before(r) {}
        environment env;
        std::chrono::seconds refresh_before;
        std::mutex mutex;
        std::optional<credentials> cached;
        std::string source = "none";
        std::chrono::system_clock::time_point next_attempt{};
    };
    std::unique_ptr<state> s_; // behind a pointer so the provider moves while the mutex stays put
};

// AWS_REGION, then AWS_DEFAULT_REGION, then `region` of the profile in the config file.
inline std::optional<std::string> resolve_region(const environment& env) {
    if (auto r = detail::var(env, "AWS_REGION")) return r;
    if (auto r = detail::var(env, "AWS_DEFAULT_REGION")) return r;
    auto p = detail::profile(env, detail::profile_name(env), false);
    if (auto it = p.find("region"); it != p.end() && !it->second.empty()) return it->second;
    return std::nullopt;
}

// e.g. suffix "BEDROCK_RUNTIME": AWS_ENDPOINT_URL_BEDROCK_RUNTIME, then AWS_ENDPOINT_URL; none
// when AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true (the SDKs' switch).
inline std::optional<std::string> endpoint_override(const environment& env, std::string_view service_env_suffix) {
    if (detail::var(env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") == "true") return std::nullopt;
    if (auto e = detail::var(env, "AWS_ENDPOINT_URL_" + std::string(service_env_suffix))) return e;
    return detail::var(env, "AWS_ENDPOINT_URL");
}

// An endpoint as given (https://host[:port]) and the Host header it is signed with: the default
// port is left out, any other is part of the signature.
struct service_endpoint {
    std::string origin;
    std::string host;

    // Throws std::invalid_argument unless `url` is http(s)://host[:port] (a trailing '/' is fine).
    static service_endpoint parse(std::string url, std::string_view what) {
        while (url.ends_with('/')) url.pop_back();
        const auto scheme_end = url.find("://");
        if (scheme_end == std::string::npos || (!url.starts_with("http://") && !url.starts_with("https://")) ||
            url.size() == scheme_end + 3 || url.find('/', scheme_end + 3) != std::string::npos)
            throw std::invalid_argument(std::string{what} + " endpoint must be http(s)://host[:port], not '" + url + "'");
        std::string host = url.substr(scheme_end + 3);
        if (host.ends_with(url.starts_with("https") ? ":443" : ":80")) host.erase(host.rfind(':'));
        return {std::move(url), std::move(host)};
    }
};

} // namespace chatkit::aws
