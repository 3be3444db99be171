// sample_server's configuration: CHAT_* environment variables, each mirrored by a --flag that
// wins over it. One table lists every setting, its default and its meaning; --help prints it.
#pragma once

#include <chatkit/api_keys.hpp>
#include <chatkit/cors.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/otel_environment.hpp>
// PostgreSQL is in sample_server, not in the Lambda bootstrap (which keeps history in DynamoDB):
// libpq would bring a dozen shared libraries (Kerberos, LDAP, GnuTLS) into its zip.
#ifdef SAMPLE_SERVER_POSTGRES
#include <chatkit/postgres_connection_pool.hpp>
#endif
#include <chatkit/rate_limiter.hpp>
#include <chatkit/redis_connection_pool.hpp>
#include <chatkit/version.hpp>

#include "routing_config.hpp"

#include <algorithm>
#include <cctype>

#include <charconv>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sample_server {

struct config {
    std::string server = "beast";
    std::string host = "127.0.0.1";
    int port = 8000;
    std::string database_url = "sqlite:chatkit.db";
    std::string auth = "none";
    std::string admin_key_digest; // CHAT_ADMIN_KEY's SHA-256 (32 raw bytes); empty: no admin key. Never the key.
    std::string provider = "auto";
    // CHAT_CONFIG: a file of providers and the models routed to them; when set, the router it
    // describes is the provider, read and checked by load_config.
    std::string config_file;
    std::shared_ptr<const routing_config> routing;
    std::string model;
    std::string pricing_file;
    std::string usage = "on";
    std::string pii_mode = "off"; // CHAT_PII_MODE: chatkit::pii_redaction's mode for every chat route
    std::string limits = "auto";
    std::string limits_fallback = "local"; // CHAT_LIMITS=shared with its store unreachable: local or refuse
    std::string metrics = "on";
    int metrics_port = -1; // -1: GET /metrics on the main port; else its own listener (0: any free port)
    std::vector<std::string> cors_origins{};
    std::vector<std::string> cors_headers = chatkit::cors_options{}.headers;
    std::chrono::seconds cors_max_age{600};
    std::size_t cache_size = 1024;
    std::chrono::seconds cache_ttl{3600};
    // CHAT_REDIS_URL: the cache every replica shares (a secret when it holds a password: never
    // shown, logged or quoted in an error). Empty: none.
    std::string redis_url;
    std::string rate_limit = "60/minute";
    std::size_t max_body_bytes = 1 << 20;
    std::size_t max_messages = 256;
    int max_tokens = 32768;
    int default_max_tokens = 4096;
    // A conversation's context window (chatkit::conversations_api::limits) and whether a streamed
    // turn the client left is stored as far as it was sent.
    std::size_t context_messages = 50;
    std::int64_t context_tokens = 16000;
    std::string keep_abandoned_turns = "off";
    std::size_t threads = 64;
    std::chrono::seconds read_timeout{10};
    std::chrono::seconds keep_alive_timeout{5};
    std::size_t loops = 0;
    std::size_t max_connections = 20000;
    std::size_t max_header_bytes = 16 * 1024;
    std::chrono::seconds request_deadline{600};
    std::chrono::seconds drain_delay{5};
    std::string log_level = "info";
    std::string log_format = "json";
    std::chrono::milliseconds echo_delay{0};
    std::string openai_api_key;
    std::string openai_api_key_secret_arn;
    std::chrono::seconds secret_refresh{300};
    std::string openai_base_url = "https://api.openai.com/v1";
    std::string openai_organization;
    std::string openai_project;
    std::chrono::seconds upstream_timeout{60};
    std::chrono::seconds upstream_deadline{120};
    int upstream_max_retries = 2;
    std::string openai_azure_deployment;
    std::string openai_azure_api_version = "2024-10-21";
    std::string anthropic_api_key;
    std::string anthropic_api_key_secret_arn;
    std::string anthropic_base_url = "https://api.anthropic.com";
    std::string gemini_api_key;
    std::string gemini_api_key_secret_arn;
    std::string gemini_base_url = "https://generativelanguage.googleapis.com";
    std::string function_url_invoke_mode = "BUFFERED";
    // Tracing, from OpenTelemetry's own OTEL_* variables (not CHAT_*: a deployment sets them once
    // for all its services); none: off (docs/observability.md).
    std::optional<chatkit::otel_settings> tracing;
};

// A bad value: start-up stops with this message, which names the variable.
struct config_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// CHAT_DATABASE_URL=postgresql://... (or postgres://): the PostgreSQL store.
inline bool is_postgres_url(std::string_view url) { return url.starts_with("postgresql://") || url.starts_with("postgres://"); }

// CHAT_DATABASE_URL as it may be logged or shown: a PostgreSQL URL may hold a password (in its
// user info, or as a password=... parameter), so it is shown without them and without its query.
inline std::string shown_database_url(const std::string& url) {
    if (!is_postgres_url(url)) return url;
    const auto scheme_end = url.find("://") + 3;
    std::string rest = url.substr(scheme_end);
    rest = rest.substr(0, rest.find('?'));
    const auto slash = rest.find('/');
    if (const auto at = rest.rfind('@', slash); at != std::string::npos) {
        const std::string user = rest.substr(0, std::min(at, rest.find(':')));
        rest = user + "@" + rest.substr(at + 1);
    }
    return url.substr(0, scheme_end) + rest;
}

namespace detail {

template <class Int>
Int parse_int(std::string_view name, std::string_view text, Int min, Int max) {
    Int value{};
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value < min || value > max)
        throw config_error(std::string{name} + "='" + std::string{text} + "' is not an integer from " + std::to_string(min) + " to " +
                           std::to_string(max));
    return value;
}

inline std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& i : items) out += (out.empty() ? "" : ",") + i;
    return out;
}

inline std::string one_of(std::string_view name, std::string_view text, std::initializer_list<std::string_view> allowed) {
    std::string list;
    for (auto a : allowed) {
        if (a == text) return std::string{text};
        list += (list.empty() ? "" : ", ") + std::string{a};
    }
    throw config_error(std::string{name} + "='" + std::string{text} + "' must be one of: " + list);
}

// CHAT_ADMIN_KEY as the digest api_key_auth compares: the key's SHA-256, or the one given as
// "sha256:" and 64 hex digits. Its messages never quote the value: it is a secret, or stands for one.
inline std::string admin_key_digest(std::string_view name, std::string_view value) {
    if (value.empty()) return {};
    if (value.starts_with("sha256:")) {
        const std::string_view hex = value.substr(7);
        std::string digest;
        for (std::size_t i = 0; hex.size() == 2 * chatkit::api_keys::digest_bytes && i < hex.size(); i += 2) {
            unsigned char byte = 0;
            if (std::from_chars(hex.data() + i, hex.data() + i + 2, byte, 16).ptr != hex.data() + i + 2) break;
            digest += static_cast<char>(byte);
        }
        if (digest.size() != chatkit::api_keys::digest_bytes)
            throw config_error(std::string{name} + ": after 'sha256:' must come the 64 hex digits of the admin key's SHA-256 "
                                                   "(printf %s \"$KEY\" | sha256sum)");
        return digest;
    }
    // 32 characters at least, so that it cannot be guessed: a ck- key from `sample_server keys
    // create` has 46, and `openssl rand -hex 32` gives 64.
    if (value.size() < 32)
        throw config_error(std::string{name} + " is too short: the admin key must have at least 32 characters (or give "
                                               "sha256:<64 hex digits> of it)");
    return chatkit::api_keys::digest(value);
}

} // namespace detail

struct setting {
    std::string_view env;         // CHAT_PORT; the flag is --port
    std::string_view description; // for --help
    std::function<void(config&, std::string_view name, std::string_view value)> apply;
    std::function<std::string(const config&)> show;
    std::string_view fallback_env{};        // read when `env` is unset (the OpenAI SDKs' own variables)
    std::string_view second_fallback_env{}; // read when both are unset (GOOGLE_API_KEY after GEMINI_API_KEY)
};

inline const std::vector<setting>& settings() {
    using detail::one_of;
    using detail::parse_int;
    static const std::vector<setting> table = {
        {"CHAT_SERVER", "HTTP server: beast (event loops) or httplib (a thread per connection)",
         [](config& c, auto n, auto v) {
             c.server = one_of(n, v, {"beast", "httplib"});
         },
         [](const config& c) { return c.server; }},
        {"CHAT_HOST", "address to listen on", [](config& c, auto, auto v) { c.host = v; }, [](const config& c) { return c.host; }},
        {"CHAT_PORT", "TCP port (0: any free port, printed at start-up)",
         [](config& c, auto n, auto v) { c.port = parse_int<int>(n, v, 0, 65535); },
         [](const config& c) { return std::to_string(c.port); }},
        {"CHAT_DATABASE_URL",
         "history and conversations store (and API keys): sqlite:PATH, "
         "dynamodb://TABLE[?region=R&ttl_days=N&keys_table=K&conversations_table=C], "
         "postgresql://USER:PASSWORD@HOST:PORT/DB (history and conversations; a secret: never shown), or none",
         [](config& c, auto n, auto v) {
             if (v.starts_with("dynamodb:")) {
                 if (auto parsed = chatkit::parse_dynamodb_url(v); !parsed)
                     throw config_error(std::string{n} + "=" + parsed.error().message);
             } else if (is_postgres_url(v)) {
#ifdef SAMPLE_SERVER_POSTGRES
                 // libpq's own parser, so what passes here is what the store connects with.
                 if (auto parsed = chatkit::parse_postgres_url(std::string{v}); !parsed)
                     throw config_error(std::string{n} + ": " + parsed.error().message);
#else
                 throw config_error(std::string{n} + ": this program has no PostgreSQL store (sample_server has)");
#endif
             } else if (v != "none" && (!v.starts_with("sqlite:") || v.size() == 7)) {
                 throw config_error(std::string{n} + "='" + std::string{v} +
                                    "' must be sqlite:PATH, dynamodb://TABLE, postgresql://HOST/DB or none");
             }
             c.database_url = v;
         },
         [](const config& c) { return shown_database_url(c.database_url); }},
        {"CHAT_AUTH",
         "none (anyone who can reach the server may use it) or keys (every route but /health needs an API key, kept in the database; not "
         "with none)",
         [](config& c, auto n, auto v) {
             c.auth = one_of(n, v, {"none", "keys"});
         },
         [](const config& c) { return c.auth; }},
        {"CHAT_ADMIN_KEY",
         "with CHAT_AUTH=keys: the admin key (32 characters or more), or sha256:<64 hex> of it, that may call the /admin routes (a secret: "
         "prefer the environment to the flag; empty: none)",
         [](config& c, auto n, auto v) { c.admin_key_digest = detail::admin_key_digest(n, v); },
         [](const config&) { return std::string{}; }},
        {"CHAT_PROVIDER",
         "auto (openai with an API key or its secret, else anthropic with an API key, else gemini with an API key, else bedrock with "
         "AWS credentials, else echo), echo, openai, anthropic, gemini or bedrock",
         [](config& c, auto n, auto v) {
             c.provider = one_of(n, v, {"auto", "echo", "openai", "anthropic", "gemini", "bedrock"});
         },
         [](const config& c) { return c.provider; }},
        {"CHAT_CONFIG",
         "a YAML (or JSON) file of providers and the models routed to them, with fallbacks and weights; replaces "
         "CHAT_PROVIDER and CHAT_MODEL (docs/providers.md; empty: none)",
         [](config& c, auto, auto v) { c.config_file = v; }, [](const config& c) { return c.config_file; }},
        {"CHAT_MODEL", "default model (empty: the provider's default)", [](config& c, auto, auto v) { c.model = v; },
         [](const config& c) { return c.model; }},
        {"CHAT_PRICING_FILE",
         "a JSON price table (USD per 1M tokens) merged over the shipped data/pricing.json (empty: the shipped one only)",
         [](config& c, auto, auto v) { c.pricing_file = v; }, [](const config& c) { return c.pricing_file; }},
        {"CHAT_USAGE",
         "on (a usage record per chat request, in the SQLite or PostgreSQL database or the DynamoDB usage table; GET /v1/usage) or off",
         [](config& c, auto n, auto v) {
             c.usage = one_of(n, v, {"on", "off"});
         },
         [](const config& c) { return c.usage; }},
        {"CHAT_PII_MODE",
         "personal data and secrets in chat messages (e-mails, phones, cards, IBANs, SSNs, IP addresses, API keys): off, count "
         "(x-chatkit-pii header), mask (placeholders before the provider, cache and history) or refuse (400 pii_detected)",
         [](config& c, auto n, auto v) {
             c.pii_mode = one_of(n, v, {"off", "count", "mask", "refuse"});
         },
         [](const config& c) { return c.pii_mode; }},
        {"CHAT_LIMITS",
         "where the limits of API keys and teams and CHAT_RATE_LIMIT are counted: local (this process), shared (in Redis with "
         "CHAT_REDIS_URL, else the DynamoDB database's limits table: one count for every replica) or auto (shared in the Lambda bootstrap "
         "on DynamoDB, else local)",
         [](config& c, auto n, auto v) {
             c.limits = one_of(n, v, {"auto", "local", "shared"});
         },
         [](const config& c) { return c.limits; }},
        {"CHAT_LIMITS_FALLBACK",
         "with CHAT_LIMITS=shared, while Redis or DynamoDB cannot be reached: local (count in this process until it can; logged once a "
         "minute) or refuse (503 for every limited request)",
         [](config& c, auto n, auto v) {
             c.limits_fallback = one_of(n, v, {"local", "refuse"});
         },
         [](const config& c) { return c.limits_fallback; }},
        {"CHAT_METRICS", "on (GET /metrics in the Prometheus text format; with CHAT_AUTH=keys, for the admin key only) or off",
         [](config& c, auto n, auto v) {
             c.metrics = one_of(n, v, {"on", "off"});
         },
         [](const config& c) { return c.metrics; }},
        {"CHAT_METRICS_PORT",
         "a TCP port of its own, on CHAT_HOST, that serves only GET /metrics, to anyone who can reach it (no key); the main port then "
         "serves no /metrics (empty: /metrics on the main port; 0: any free port)",
         [](config& c, auto n, auto v) { c.metrics_port = v.empty() ? -1 : parse_int<int>(n, v, 0, 65535); },
         [](const config& c) { return c.metrics_port < 0 ? std::string{} : std::to_string(c.metrics_port); }},
        {"CHAT_CORS_ORIGINS", "origins whose web pages may call the API, a comma list of scheme://host[:port], or * (empty: none)",
         [](config& c, auto n, auto v) {
             auto origins = chatkit::cors_options::parse_origins(v);
             if (!origins) throw config_error(std::string{n} + ": " + origins.error().message);
             c.cors_origins = std::move(*origins);
         },
         [](const config& c) { return detail::join(c.cors_origins); }},
        {"CHAT_CORS_HEADERS", "request headers those pages may send, a comma list (Authorization must be named to send keys)",
         [](config& c, auto, auto v) { c.cors_headers = chatkit::cors_options::split(v); },
         [](const config& c) { return detail::join(c.cors_headers); }},
        {"CHAT_CORS_MAX_AGE", "seconds a browser may reuse a preflight's answer",
         [](config& c, auto n, auto v) { c.cors_max_age = std::chrono::seconds{parse_int<long>(n, v, 0, 86400)}; },
         [](const config& c) { return std::to_string(c.cors_max_age.count()); }},
        {"CHAT_CACHE_SIZE", "cached answers kept (0: no cache)",
         [](config& c, auto n, auto v) { c.cache_size = parse_int<std::size_t>(n, v, 0, 10'000'000); },
         [](const config& c) { return std::to_string(c.cache_size); }},
        {"CHAT_CACHE_TTL", "seconds a cached answer stays valid",
         [](config& c, auto n, auto v) { c.cache_ttl = std::chrono::seconds{parse_int<long>(n, v, 1, 31'536'000)}; },
         [](const config& c) { return std::to_string(c.cache_ttl.count()); }},
        {"CHAT_REDIS_URL",
         "a Redis every replica shares for cached answers, redis://[user:password@]host[:port][/db], or rediss://... for TLS (the "
         "certificate checked against OpenSSL's trust store, which SSL_CERT_FILE can name), behind the in-memory cache of CHAT_CACHE_SIZE "
         "(0: Redis alone) (empty: none; a secret when it holds a password)",
         [](config& c, auto n, auto v) {
             if (!v.empty())
                 if (auto parsed = chatkit::parse_redis_url(v); !parsed) throw config_error(std::string{n} + ": " + parsed.error().message);
             c.redis_url = v;
         },
         [](const config& c) { return c.redis_url.empty() ? std::string{} : chatkit::parse_redis_url(c.redis_url)->redacted_url(); }},
        {"CHAT_RATE_LIMIT", "requests per client: N/second|minute|hour, or off",
         [](config& c, auto n, auto v) {
             if (v != "off" && !chatkit::rate_limit::parse(v))
                 throw config_error(std::string{n} + "='" + std::string{v} + "' must look like 60/minute (N/second|minute|hour) or be off");
             c.rate_limit = v;
         },
         [](const config& c) { return c.rate_limit; }},
        {"CHAT_MAX_BODY_BYTES", "largest request body accepted (413 above)",
         [](config& c, auto n, auto v) { c.max_body_bytes = parse_int<std::size_t>(n, v, 1024, 1u << 30); },
         [](const config& c) { return std::to_string(c.max_body_bytes); }},
        {"CHAT_MAX_MESSAGES", "most messages in one request",
         [](config& c, auto n, auto v) { c.max_messages = parse_int<std::size_t>(n, v, 1, 100'000); },
         [](const config& c) { return std::to_string(c.max_messages); }},
        {"CHAT_MAX_TOKENS", "largest max_tokens a request may ask for",
         [](config& c, auto n, auto v) { c.max_tokens = parse_int<int>(n, v, 1, 10'000'000); },
         [](const config& c) { return std::to_string(c.max_tokens); }},
        {"CHAT_DEFAULT_MAX_TOKENS",
         "max_tokens reserved for (and sent with) a request that names none, when its key has token limits or a budget; "
         "the anthropic provider sends it with every request that names none (its API requires one)",
         [](config& c, auto n, auto v) { c.default_max_tokens = parse_int<int>(n, v, 1, 10'000'000); },
         [](const config& c) { return std::to_string(c.default_max_tokens); }},
        {"CHAT_CONTEXT_MESSAGES", "most earlier messages of a conversation sent with its next turn (the oldest dropped first)",
         [](config& c, auto n, auto v) { c.context_messages = parse_int<std::size_t>(n, v, 0, 10'000); },
         [](const config& c) { return std::to_string(c.context_messages); }},
        {"CHAT_CONTEXT_TOKENS",
         "about how many tokens of a conversation's earlier messages are sent with its next turn (estimated from their bytes)",
         [](config& c, auto n, auto v) { c.context_tokens = parse_int<std::int64_t>(n, v, 0, 10'000'000); },
         [](const config& c) { return std::to_string(c.context_tokens); }},
        {"CHAT_KEEP_ABANDONED_TURNS",
         "on: a conversation's streamed turn the client left is stored as far as it was sent; off: nothing partial is stored",
         [](config& c, auto n, auto v) {
             c.keep_abandoned_turns = one_of(n, v, {"on", "off"});
         },
         [](const config& c) { return c.keep_abandoned_turns; }},
        {"CHAT_THREADS", "worker threads: blocking provider and store calls (beast); one per kept-alive connection (httplib)",
         [](config& c, auto n, auto v) { c.threads = parse_int<std::size_t>(n, v, 1, 100'000); },
         [](const config& c) { return std::to_string(c.threads); }},
        {"CHAT_READ_TIMEOUT", "seconds a client may stall while sending a request",
         [](config& c, auto n, auto v) { c.read_timeout = std::chrono::seconds{parse_int<long>(n, v, 1, 3600)}; },
         [](const config& c) { return std::to_string(c.read_timeout.count()); }},
        {"CHAT_KEEP_ALIVE_TIMEOUT", "seconds an idle kept-alive connection stays open",
         [](config& c, auto n, auto v) { c.keep_alive_timeout = std::chrono::seconds{parse_int<long>(n, v, 1, 3600)}; },
         [](const config& c) { return std::to_string(c.keep_alive_timeout.count()); }},
        {"CHAT_DRAIN_DELAY",
         "seconds between SIGTERM and closing the listener, while GET /ready answers 503 so load balancers stop sending (SIGINT, or a "
         "second signal, stops at once)",
         [](config& c, auto n, auto v) { c.drain_delay = std::chrono::seconds{parse_int<long>(n, v, 0, 3600)}; },
         [](const config& c) { return std::to_string(c.drain_delay.count()); }},
        {"CHAT_LOOPS", "beast: event-loop threads (0: one per core)",
         [](config& c, auto n, auto v) { c.loops = parse_int<std::size_t>(n, v, 0, 1024); },
         [](const config& c) { return std::to_string(c.loops); }},
        {"CHAT_MAX_CONNECTIONS", "beast: open connections at most; more are closed at once",
         [](config& c, auto n, auto v) { c.max_connections = parse_int<std::size_t>(n, v, 1, 10'000'000); },
         [](const config& c) { return std::to_string(c.max_connections); }},
        {"CHAT_MAX_HEADER_BYTES", "beast: largest request line and headers (431 above)",
         [](config& c, auto n, auto v) { c.max_header_bytes = parse_int<std::size_t>(n, v, 1024, 1 << 20); },
         [](const config& c) { return std::to_string(c.max_header_bytes); }},
        {"CHAT_REQUEST_DEADLINE", "beast: seconds a request may run before it is cancelled (its provider stopped)",
         [](config& c, auto n, auto v) { c.request_deadline = std::chrono::seconds{parse_int<long>(n, v, 1, 86'400)}; },
         [](const config& c) { return std::to_string(c.request_deadline.count()); }},
        {"CHAT_LOG_LEVEL", "trace, debug, info, warn, error or off",
         [](config& c, auto n, auto v) {
             c.log_level = one_of(n, v, {"trace", "debug", "info", "warn", "error", "off"});
         },
         [](const config& c) { return c.log_level; }},
        {"CHAT_LOG_FORMAT", "json (one object per line) or text",
         [](config& c, auto n, auto v) {
             c.log_format = one_of(n, v, {"json", "text"});
         },
         [](const config& c) { return c.log_format; }},
        {"CHAT_ECHO_DELAY_MS", "echo provider: pause between streamed words, in ms",
         [](config& c, auto n, auto v) { c.echo_delay = std::chrono::milliseconds{parse_int<long>(n, v, 0, 60'000)}; },
         [](const config& c) { return std::to_string(c.echo_delay.count()); }},
        {"CHAT_OPENAI_API_KEY", "OpenAI API key (a secret: prefer the environment to the flag)",
         [](config& c, auto, auto v) { c.openai_api_key = v; }, [](const config&) { return std::string{}; }, "OPENAI_API_KEY"},
        {"CHAT_OPENAI_API_KEY_SECRET_ARN",
         "AWS Secrets Manager secret holding the OpenAI key (the bare key, or JSON with \"api_key\"), instead of the key itself",
         [](config& c, auto, auto v) { c.openai_api_key_secret_arn = v; }, [](const config& c) { return c.openai_api_key_secret_arn; }},
        {"CHAT_SECRET_REFRESH", "seconds before a secret is read again from Secrets Manager (picks up a rotated key)",
         [](config& c, auto n, auto v) { c.secret_refresh = std::chrono::seconds{parse_int<long>(n, v, 1, 86'400)}; },
         [](const config& c) { return std::to_string(c.secret_refresh.count()); }},
        {"CHAT_OPENAI_BASE_URL", "OpenAI or any OpenAI-compatible server (Ollama, vLLM, OpenRouter, ...)",
         [](config& c, auto n, auto v) {
             if (!v.starts_with("http://") && !v.starts_with("https://"))
                 throw config_error(std::string{n} + "='" + std::string{v} + "' must start with http:// or https://");
             c.openai_base_url = v;
         },
         [](const config& c) { return c.openai_base_url; }, "OPENAI_BASE_URL"},
        {"CHAT_OPENAI_ORGANIZATION", "OpenAI-Organization header", [](config& c, auto, auto v) { c.openai_organization = v; },
         [](const config& c) { return c.openai_organization; }},
        {"CHAT_OPENAI_PROJECT", "OpenAI-Project header", [](config& c, auto, auto v) { c.openai_project = v; },
         [](const config& c) { return c.openai_project; }},
        {"CHAT_UPSTREAM_TIMEOUT", "seconds an upstream (OpenAI, Anthropic, Gemini, Bedrock) may stay silent before a 504",
         [](config& c, auto n, auto v) { c.upstream_timeout = std::chrono::seconds{parse_int<long>(n, v, 1, 3600)}; },
         [](const config& c) { return std::to_string(c.upstream_timeout.count()); }},
        {"CHAT_UPSTREAM_DEADLINE", "seconds one chat may take upstream, retries included",
         [](config& c, auto n, auto v) { c.upstream_deadline = std::chrono::seconds{parse_int<long>(n, v, 1, 3600)}; },
         [](const config& c) { return std::to_string(c.upstream_deadline.count()); }},
        {"CHAT_UPSTREAM_MAX_RETRIES", "upstream retries on 429, 5xx and connection failures",
         [](config& c, auto n, auto v) { c.upstream_max_retries = parse_int<int>(n, v, 0, 10); },
         [](const config& c) { return std::to_string(c.upstream_max_retries); }},
        {"CHAT_OPENAI_AZURE_DEPLOYMENT", "Azure OpenAI deployment (turns on Azure mode)",
         [](config& c, auto, auto v) { c.openai_azure_deployment = v; }, [](const config& c) { return c.openai_azure_deployment; }},
        {"CHAT_OPENAI_AZURE_API_VERSION", "Azure OpenAI api-version", [](config& c, auto, auto v) { c.openai_azure_api_version = v; },
         [](const config& c) { return c.openai_azure_api_version; }},
        {"CHAT_ANTHROPIC_API_KEY", "Anthropic API key (a secret: prefer the environment to the flag)",
         [](config& c, auto, auto v) { c.anthropic_api_key = v; }, [](const config&) { return std::string{}; }, "ANTHROPIC_API_KEY"},
        {"CHAT_ANTHROPIC_API_KEY_SECRET_ARN",
         "AWS Secrets Manager secret holding the Anthropic key (the bare key, or JSON with \"api_key\"), instead of the key itself",
         [](config& c, auto, auto v) { c.anthropic_api_key_secret_arn = v; },
         [](const config& c) { return c.anthropic_api_key_secret_arn; }},
        {"CHAT_ANTHROPIC_BASE_URL", "Anthropic's API origin (its path /v1/messages is appended)",
         [](config& c, auto n, auto v) {
             if (!v.starts_with("http://") && !v.starts_with("https://"))
                 throw config_error(std::string{n} + "='" + std::string{v} + "' must start with http:// or https://");
             c.anthropic_base_url = v;
         },
         [](const config& c) { return c.anthropic_base_url; }, "ANTHROPIC_BASE_URL"},
        {"CHAT_GEMINI_API_KEY", "Gemini API key (a secret: prefer the environment to the flag)",
         [](config& c, auto, auto v) { c.gemini_api_key = v; }, [](const config&) { return std::string{}; }, "GEMINI_API_KEY",
         "GOOGLE_API_KEY"},
        {"CHAT_GEMINI_API_KEY_SECRET_ARN",
         "AWS Secrets Manager secret holding the Gemini key (the bare key, or JSON with \"api_key\"), instead of the key itself",
         [](config& c, auto, auto v) { c.gemini_api_key_secret_arn = v; }, [](const config& c) { return c.gemini_api_key_secret_arn; }},
        {"CHAT_GEMINI_BASE_URL", "the Gemini API's origin (its path /v1beta/models/MODEL:generateContent is appended)",
         [](config& c, auto n, auto v) {
             if (!v.starts_with("http://") && !v.starts_with("https://"))
                 throw config_error(std::string{n} + "='" + std::string{v} + "' must start with http:// or https://");
             c.gemini_base_url = v;
         },
         [](const config& c) { return c.gemini_base_url; }},
        {"CHAT_FUNCTION_URL_INVOKE_MODE",
         "bootstrap only: the InvokeMode of the function's Function URL, BUFFERED or RESPONSE_STREAM (Lambda cannot tell)",
         [](config& c, auto n, auto v) {
             c.function_url_invoke_mode = one_of(n, v, {"BUFFERED", "RESPONSE_STREAM"});
         },
         [](const config& c) { return c.function_url_invoke_mode; }},
    };
    return table;
}

// "CHAT_MAX_BODY_BYTES" -> "--max-body-bytes"
inline std::string flag_name(std::string_view env) {
    std::string flag = "--";
    for (char ch : env.substr(5)) flag += ch == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return flag;
}

inline std::string help_text() {
    std::string text = "usage: sample_server [--flag=value ...]\n\n"
                       "Every setting is read from its environment variable; a flag overrides it.\n\n";
    const config defaults;
    for (const auto& s : settings()) {
        std::string line = "  " + flag_name(s.env) + ", " + std::string{s.env};
        line.resize(std::max<std::size_t>(line.size() + 1, 44), ' ');
        text += line + std::string{s.description} + " [" + s.show(defaults) + "]";
        if (!s.second_fallback_env.empty())
            text += " (or " + std::string{s.fallback_env} + ", then " + std::string{s.second_fallback_env} + ")";
        else if (!s.fallback_env.empty()) text += " (or " + std::string{s.fallback_env} + ")";
        text += "\n";
    }
    return text;
}

// Each setting from its flag ("--port=8001" or "--port 8001") when given, else from its
// environment variable, else its default. Throws config_error.
inline config load_config(int argc, const char* const* argv, const std::function<const char*(const char*)>& getenv = ::getenv) {
    std::vector<std::pair<const setting*, std::string_view>> flags;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        const auto eq = arg.find('=');
        const std::string_view name = arg.substr(0, eq);
        const setting* match = nullptr;
        for (const auto& s : settings())
            if (flag_name(s.env) == name) match = &s;
        if (!match) throw config_error("unknown option '" + std::string{name} + "' (see --help)");
        if (eq != std::string_view::npos) flags.emplace_back(match, arg.substr(eq + 1));
        else if (i + 1 < argc) flags.emplace_back(match, argv[++i]);
        else throw config_error("option '" + std::string{name} + "' needs a value");
    }
    config c;
    for (const auto& s : settings()) {
        const auto flag = std::find_if(flags.rbegin(), flags.rend(), [&](const auto& f) { return f.first == &s; });
        if (flag != flags.rend()) s.apply(c, flag_name(s.env), flag->second);
        else if (const char* value = getenv(std::string{s.env}.c_str())) s.apply(c, s.env, value);
        else if (const char* fallback = s.fallback_env.empty() ? nullptr : getenv(std::string{s.fallback_env}.c_str()))
            s.apply(c, s.fallback_env, fallback);
        else if (!s.second_fallback_env.empty())
            if (const char* value = getenv(std::string{s.second_fallback_env}.c_str())) s.apply(c, s.second_fallback_env, value);
    }
    try {
        c.tracing = chatkit::otel_settings_from_environment(getenv, "chatkit", CHATKIT_VERSION);
    } catch (const std::invalid_argument& e) {
        throw config_error(e.what());
    }
    if (!c.config_file.empty()) {
        if (c.provider != "auto")
            throw config_error("CHAT_CONFIG names the providers: CHAT_PROVIDER=" + c.provider + " cannot be used with it");
        if (!c.model.empty())
            throw config_error("CHAT_CONFIG names the models (the first is the default): CHAT_MODEL cannot be used with it");
        try {
            c.routing = std::make_shared<const routing_config>(load_routing_config(c.config_file, getenv));
        } catch (const routing_config_error& e) {
            throw config_error(std::string{"CHAT_CONFIG="} + e.what());
        }
    }
    // Settings that make sense only together.
    if (c.metrics_port >= 0 && c.metrics != "on")
        throw config_error("CHAT_METRICS_PORT serves the metrics, but CHAT_METRICS=off turns them off: set one or the other");
    if (c.metrics_port > 0 && c.metrics_port == c.port)
        throw config_error("CHAT_METRICS_PORT=" + std::to_string(c.metrics_port) +
                           " is CHAT_PORT too: give the metrics a port of their own");
    return c;
}

} // namespace sample_server
