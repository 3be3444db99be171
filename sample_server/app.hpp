// sample_server's composition: which plugins make up the service, chosen from the configuration.
// Shared by every front end of the same service (the HTTP server here, a Lambda bootstrap).
#pragma once

#include "admin_routes.hpp"
#include "api_docs.hpp"
#include "config.hpp"
#include "dashboard.hpp"
#include "default_pricing.hpp"
#include "key_directory.hpp"
#include "log.hpp"

#include <chatkit/chatkit.hpp>
#include <chatkit/anthropic_provider.hpp>
#include <chatkit/api_key_auth.hpp>
#include <chatkit/async_anthropic_provider.hpp>
#include <chatkit/async_bedrock_provider.hpp>
#include <chatkit/async_gemini_provider.hpp>
#include <chatkit/async_openai_provider.hpp>
#include <chatkit/aws/secrets_manager.hpp>
#include <chatkit/bedrock_provider.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/dynamodb_usage_store.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/gemini_provider.hpp>
#include <chatkit/key_rate_limits.hpp>
#include <chatkit/key_usage_limits.hpp>
#include <chatkit/cors.hpp>
#include <chatkit/prometheus_metrics.hpp>
#include <chatkit/shared_key_limits.hpp>
#include <chatkit/dynamodb_counter_store.hpp>
#include <chatkit/coalescing_counter_store.hpp>
#include <chatkit/redis_counter_store.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/openai_provider.hpp>
#include <chatkit/otel_tracing.hpp>
#include <chatkit/pii_redaction.hpp>
#ifdef SAMPLE_SERVER_POSTGRES
#include <chatkit/postgres_store.hpp>
#include <chatkit/postgres_usage_store.hpp>
#endif
#include <chatkit/rate_limiter.hpp>
#include <chatkit/shared_rate_limiter.hpp>
#include <chatkit/redis_cache.hpp>
#include <chatkit/request_id.hpp>
#include <chatkit/sqlite_key_directory.hpp>
#include <chatkit/sqlite_store.hpp>
#include <chatkit/sqlite_usage_store.hpp>
#include <chatkit/two_level_cache.hpp>
#include <chatkit/usage_dashboard.hpp>
#include <chatkit/usage_recorder.hpp>
#include <chatkit/usage_report.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace sample_server {

// OpenAI, Anthropic, Gemini and Bedrock in both forms: the async ones on the event-loop server's
// loops (CHAT_SERVER=beast), the blocking ones behind cpp-httplib and in the Lambda bootstrap;
// with CHAT_CONFIG, a router among several of them. The Lambda bootstrap has no event loop, so
// it is built without SAMPLE_SERVER_ASYNC_PROVIDERS: the async forms would be dead code there
// (24 kB of the Lambda zip, docs/lambda.md#size-and-cold-start).
#ifdef SAMPLE_SERVER_ASYNC_PROVIDERS
inline constexpr bool async_providers = true;
template <class... Also>
using providers_and =
    chatkit::provider_variant<chatkit::echo_provider, chatkit::openai_provider, chatkit::async_openai_provider, chatkit::anthropic_provider,
                              chatkit::async_anthropic_provider, chatkit::gemini_provider, chatkit::async_gemini_provider,
                              chatkit::bedrock_provider, chatkit::async_bedrock_provider, Also...>;
#else
inline constexpr bool async_providers = false;
template <class... Also>
using providers_and = chatkit::provider_variant<chatkit::echo_provider, chatkit::openai_provider, chatkit::anthropic_provider,
                                                chatkit::gemini_provider, chatkit::bedrock_provider, Also...>;
#endif
using member_provider_type = providers_and<>;
using provider_type = providers_and<chatkit::router<member_provider_type>>;
using store_type = chatkit::store_variant<chatkit::sqlite_store, chatkit::dynamodb_store,
#ifdef SAMPLE_SERVER_POSTGRES
                                          chatkit::postgres_store,
#endif
                                          chatkit::no_store>;
// CHAT_REDIS_URL adds Redis, shared by every replica: behind the in-memory LRU, or alone.
using shared_cache_type = chatkit::two_level_cache<chatkit::lru_cache_mt, chatkit::redis_cache>;
// Where CHAT_LIMITS=shared counts: Redis (CHAT_REDIS_URL) or the DynamoDB database's limits table;
// settlements after the last byte are merged and written in the background, so a request's one
// round trip to the counters is its take.
using shared_counter_stores = chatkit::counter_store_variant<chatkit::dynamodb_counter_store, chatkit::redis_counter_store>;
using shared_counters = chatkit::coalescing_counter_store<shared_counter_stores>;
using cache_type = chatkit::cache_variant<chatkit::lru_cache_mt, chatkit::no_cache, chatkit::redis_cache, shared_cache_type>;
// CHAT_AUTH=keys: API keys from the database of the history, SQLite, DynamoDB or PostgreSQL (docs/gateway.md).
using auth_type = chatkit::api_key_auth<key_directory_type>;
// The access log comes after the request id (its lines carry it) and before authentication and the
// limits (a refused request is logged too); CORS (CHAT_CORS_ORIGINS) comes before authentication,
// since browsers send preflights without the page's key, and marks refusals readable too; authentication comes before both limits, so they count
// the authenticated key, not what the client claims. The key's and team's requests per minute
// (CHAT_AUTH=keys) come before CHAT_RATE_LIMIT's per-client limiter: both apply, independently, and
// a request the per-client limiter refuses has already taken from the key's and team's buckets.
// Tokens per minute and budgets (key_usage_limits) reserve at admission, once the chat body is
// parsed, which is after every `before`: a request refused earlier reserves nothing.
// With CHAT_LIMITS=shared, shared_key_limits replaces both, and counts the per-client limit too, in
// the same take (one round trip before a chat's answer for all three); without keys,
// shared_rate_limiter replaces the per-client limiter. Both count in Redis or the DynamoDB
// database's limits table, which every replica and Lambda instance shares.
// Tracing (OTEL_EXPORTER_OTLP_ENDPOINT) comes right after the request id, which its spans carry:
// its span then covers everything else, refusals included, and it names its own span in the
// `traceparent` the provider sends upstream.
// Usage records (CHAT_USAGE=on, in the SQLite file, the PostgreSQL database or the DynamoDB usage table)
// are written after the last byte, like the access log line; they are queued, never written on
// the request path.
using usage_store_type = chatkit::usage_store_variant<chatkit::sqlite_usage_store, chatkit::dynamodb_usage_store
#ifdef SAMPLE_SERVER_POSTGRES
                                                      ,
                                                      chatkit::postgres_usage_store
#endif
                                                      >;
using usage_recorder_type = chatkit::usage_recorder<usage_store_type>;
using app_service = chatkit::service<
    provider_type, store_type, cache_type, chatkit::request_id, chatkit::optional_middleware<chatkit::otel_tracing>, access_log,
    chatkit::optional_middleware<chatkit::prometheus_metrics>, chatkit::optional_middleware<chatkit::cors>,
    chatkit::optional_middleware<usage_recorder_type>, chatkit::optional_middleware<auth_type>,
    chatkit::optional_middleware<chatkit::pii_redaction>, chatkit::optional_middleware<chatkit::key_rate_limits_mt>,
    chatkit::optional_middleware<chatkit::key_usage_limits_mt>, chatkit::optional_middleware<chatkit::shared_key_limits<shared_counters>>,
    chatkit::optional_middleware<chatkit::shared_rate_limiter<shared_counters>>, chatkit::optional_middleware<chatkit::rate_limiter_mt>>;

// Whether Bedrock can be called: a region, and credentials the SDK chain finds (environment,
// ~/.aws files, container endpoint) or a Bedrock API key.
inline bool bedrock_configured(const chatkit::aws::environment& env) {
    if (!chatkit::aws::resolve_region(env)) return false;
    if (env.getenv("AWS_BEARER_TOKEN_BEDROCK").value_or("").size() > 0) return true;
    return static_cast<bool>(chatkit::aws::credentials_provider{env}.get());
}

// "echo", "openai", "anthropic", "gemini" or "bedrock"; "auto" takes the first configured: an
// OpenAI API key (or the secret holding it), then an Anthropic API key (or its secret), then a
// Gemini API key (or its secret), then AWS credentials with a region, then the built-in echo.
// Decided once, at start-up.
inline std::string_view chosen_provider(const config& c) {
    if (c.provider != "auto") return c.provider;
    if (!c.openai_api_key.empty() || !c.openai_api_key_secret_arn.empty()) return "openai";
    if (!c.anthropic_api_key.empty() || !c.anthropic_api_key_secret_arn.empty()) return "anthropic";
    if (!c.gemini_api_key.empty() || !c.gemini_api_key_secret_arn.empty()) return "gemini";
    static const bool bedrock = bedrock_configured(chatkit::aws::process_environment());
    return bedrock ? "bedrock" : "echo";
}

// A provider's API key read from the AWS Secrets Manager secret `arn` names (`variable`, for
// messages), kept and read again every CHAT_SECRET_REFRESH, or at once after the upstream refused
// it (a key rotated in the secret and revoked upstream). Read once now, so that start-up (a
// Lambda's init) pays for it; a failure then is retried by the first chat. Sets the provider
// options' api_key_source and on_key_rejected.
template <class Options>
void key_from_secret(Options& o, const config& c, const std::string& arn, std::string_view variable, std::string_view provider,
                     logger* log) {
    try {
        chatkit::aws::secret_options secret;
        secret.secret_id = arn;
        secret.json_field = "api_key";
        secret.refresh = c.secret_refresh;
        secret.retry_after_failure = std::min(secret.retry_after_failure, c.secret_refresh);
        // The whole story, ARN included, goes to the log; a client's 503 names no secret.
        if (log)
            secret.on_error = [log, what = "cannot use the " + std::string{provider} + " key's secret"](const chatkit::error& e) {
                log->error(what, {{"error", e.message}});
            };
        chatkit::aws::cached_secret<> key{std::move(secret)};
        (void)key.get();
        o.api_key_source = [key]() mutable { return key.get(); };
        o.on_key_rejected =
            [key, log,
             what = "the " + std::string{provider} +
                    " upstream refused the key from its secret (HTTP 401): reading the secret again"](const std::string& rejected) mutable {
                if (key.expire(rejected) && log) log->warn(what);
            };
    } catch (const std::invalid_argument& e) {
        throw config_error(std::string{variable} + ": " + e.what());
    }
}

// A provider's async form through `upstream` when there is one, else its blocking form. Without
// async_providers the async form is never instantiated.
template <class V, class Async, class Blocking, class Options>
V one_of_the_forms(Options o, std::shared_ptr<chatkit::http_client> upstream) {
    if constexpr (async_providers)
        if (upstream) return Async{std::move(o), std::move(upstream)};
    return Blocking{std::move(o)};
}

// One provider, of any variant `V` that holds them (a router's member, or the service's own).
// Throws config_error when the chosen provider lacks what it needs. With `upstream` (an async
// client on the server's loops) OpenAI, Anthropic, Gemini and Bedrock are called through it;
// with `metrics`, their retries are counted there, under `label` (default: the provider's name).
template <class V>
V make_single_provider(const config& c, std::shared_ptr<chatkit::http_client> upstream, logger* log,
                       const std::optional<chatkit::prometheus_metrics>& metrics, std::string label = {}) {
    // The provider's name, as service summaries give it, so retries and errors share their labels.
    auto count_retries = [&metrics, &label](std::string_view provider) -> std::function<void(const chatkit::upstream_failure&)> {
        if (!metrics) return {};
        return [m = *metrics, name = label.empty() ? std::string{provider} : label](const chatkit::upstream_failure& f) mutable {
            m.count_retry(name, f.e);
        };
    };
    if (chosen_provider(c) == "openai") {
        const bool from_secret = !c.openai_api_key_secret_arn.empty();
        if (from_secret && !c.openai_api_key.empty())
            throw config_error("both an OpenAI key (CHAT_OPENAI_API_KEY or OPENAI_API_KEY) and CHAT_OPENAI_API_KEY_SECRET_ARN "
                               "are set: keep one");
        if (!from_secret && c.openai_api_key.empty() && c.openai_base_url.starts_with("https://api.openai.com"))
            throw config_error("CHAT_PROVIDER=openai needs CHAT_OPENAI_API_KEY, OPENAI_API_KEY or CHAT_OPENAI_API_KEY_SECRET_ARN "
                               "(or a CHAT_OPENAI_BASE_URL of a server that needs no key)");
        chatkit::openai_options o;
        o.base_url = c.openai_base_url;
        o.api_key = c.openai_api_key;
        if (from_secret) key_from_secret(o, c, c.openai_api_key_secret_arn, "CHAT_OPENAI_API_KEY_SECRET_ARN", "OpenAI", log);
        o.organization = c.openai_organization;
        o.project = c.openai_project;
        if (!c.model.empty()) o.model = c.model;
        o.read_timeout = c.upstream_timeout;
        o.deadline = c.upstream_deadline;
        o.max_retries = c.upstream_max_retries;
        o.on_retry = count_retries("openai");
        o.max_idle_connections = c.threads;
        o.azure_deployment = c.openai_azure_deployment;
        o.azure_api_version = c.openai_azure_api_version;
        return one_of_the_forms<V, chatkit::async_openai_provider, chatkit::openai_provider>(std::move(o), std::move(upstream));
    }
    if (chosen_provider(c) == "anthropic") {
        const bool from_secret = !c.anthropic_api_key_secret_arn.empty();
        if (from_secret && !c.anthropic_api_key.empty())
            throw config_error("both an Anthropic key (CHAT_ANTHROPIC_API_KEY or ANTHROPIC_API_KEY) and CHAT_ANTHROPIC_API_KEY_SECRET_ARN "
                               "are set: keep one");
        if (!from_secret && c.anthropic_api_key.empty() && c.anthropic_base_url.starts_with("https://api.anthropic.com"))
            throw config_error(
                "CHAT_PROVIDER=anthropic needs CHAT_ANTHROPIC_API_KEY, ANTHROPIC_API_KEY or CHAT_ANTHROPIC_API_KEY_SECRET_ARN");
        chatkit::anthropic_options o;
        o.base_url = c.anthropic_base_url;
        o.api_key = c.anthropic_api_key;
        if (from_secret) key_from_secret(o, c, c.anthropic_api_key_secret_arn, "CHAT_ANTHROPIC_API_KEY_SECRET_ARN", "Anthropic", log);
        if (!c.model.empty()) o.model = c.model;
        o.default_max_tokens = std::min(c.default_max_tokens, c.max_tokens);
        o.read_timeout = c.upstream_timeout;
        o.deadline = c.upstream_deadline;
        o.max_retries = c.upstream_max_retries;
        o.on_retry = count_retries("anthropic");
        o.max_idle_connections = c.threads;
        try {
            return one_of_the_forms<V, chatkit::async_anthropic_provider, chatkit::anthropic_provider>(std::move(o), std::move(upstream));
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_PROVIDER=anthropic: "} + e.what());
        }
    }
    if (chosen_provider(c) == "gemini") {
        const bool from_secret = !c.gemini_api_key_secret_arn.empty();
        if (from_secret && !c.gemini_api_key.empty())
            throw config_error(
                "both a Gemini key (CHAT_GEMINI_API_KEY, GEMINI_API_KEY or GOOGLE_API_KEY) and CHAT_GEMINI_API_KEY_SECRET_ARN "
                "are set: keep one");
        if (!from_secret && c.gemini_api_key.empty() && c.gemini_base_url.starts_with("https://generativelanguage.googleapis.com"))
            throw config_error(
                "CHAT_PROVIDER=gemini needs CHAT_GEMINI_API_KEY, GEMINI_API_KEY, GOOGLE_API_KEY or CHAT_GEMINI_API_KEY_SECRET_ARN");
        chatkit::gemini_options o;
        o.base_url = c.gemini_base_url;
        o.api_key = c.gemini_api_key;
        if (from_secret) key_from_secret(o, c, c.gemini_api_key_secret_arn, "CHAT_GEMINI_API_KEY_SECRET_ARN", "Gemini", log);
        if (!c.model.empty()) o.model = c.model;
        o.read_timeout = c.upstream_timeout;
        o.deadline = c.upstream_deadline;
        o.max_retries = c.upstream_max_retries;
        o.on_retry = count_retries("gemini");
        o.max_idle_connections = c.threads;
        try {
            return one_of_the_forms<V, chatkit::async_gemini_provider, chatkit::gemini_provider>(std::move(o), std::move(upstream));
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_PROVIDER=gemini: "} + e.what());
        }
    }
    if (chosen_provider(c) == "bedrock") {
        chatkit::bedrock_options o;
        if (!c.model.empty()) o.model = c.model;
        o.read_timeout = c.upstream_timeout;
        o.deadline = c.upstream_deadline;
        o.max_retries = c.upstream_max_retries;
        o.on_retry = count_retries("bedrock");
        o.max_idle_connections = c.threads;
        if (auto token = chatkit::aws::process_environment().getenv("AWS_BEARER_TOKEN_BEDROCK")) o.bearer_token = *token;
        try {
            return one_of_the_forms<V, chatkit::async_bedrock_provider, chatkit::bedrock_provider>(std::move(o), std::move(upstream));
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_PROVIDER=bedrock: "} + e.what());
        }
    }
    chatkit::echo_options echo;
    if (!c.model.empty()) echo.model = c.model;
    echo.delay_per_word = c.echo_delay;
    return chatkit::echo_provider{echo};
}

// The settings of one CHAT_CONFIG provider, as if it were the only one: no key or model of the
// process's own variables carries over (an OpenAI key must never reach another base URL).
inline config member_config(const config& c, const provider_entry& e) {
    config m = c;
    m.provider = e.type == "azure" ? "openai" : e.type;
    m.model = e.model;
    m.openai_api_key.clear();
    m.openai_api_key_secret_arn.clear();
    m.openai_organization.clear();
    m.openai_project.clear();
    m.openai_azure_deployment.clear();
    m.anthropic_api_key.clear();
    m.anthropic_api_key_secret_arn.clear();
    m.gemini_api_key.clear();
    m.gemini_api_key_secret_arn.clear();
    if (m.provider == "openai") {
        m.openai_api_key = e.api_key;
        m.openai_api_key_secret_arn = e.api_key_secret_arn;
        m.openai_base_url = e.base_url.empty() ? config{}.openai_base_url : e.base_url;
        m.openai_azure_deployment = e.deployment;
        if (!e.api_version.empty()) m.openai_azure_api_version = e.api_version;
    } else if (m.provider == "anthropic") {
        m.anthropic_api_key = e.api_key;
        m.anthropic_api_key_secret_arn = e.api_key_secret_arn;
        m.anthropic_base_url = e.base_url.empty() ? config{}.anthropic_base_url : e.base_url;
    } else if (m.provider == "gemini") {
        m.gemini_api_key = e.api_key;
        m.gemini_api_key_secret_arn = e.api_key_secret_arn;
        m.gemini_base_url = e.base_url.empty() ? config{}.gemini_base_url : e.base_url;
    }
    if (e.max_retries) m.upstream_max_retries = *e.max_retries;
    if (e.timeout) m.upstream_timeout = *e.timeout;
    return m;
}

// CHAT_CONFIG's router: each provider built as CHAT_PROVIDER would build it alone, and a fallback
// counted (chatkit_upstream_fallbacks_total) and logged.
inline chatkit::router<member_provider_type> make_router(const config& c, const std::shared_ptr<chatkit::http_client>& upstream,
                                                         logger* log, const std::optional<chatkit::prometheus_metrics>& metrics) {
    const routing_config& r = *c.routing;
    std::vector<chatkit::router<member_provider_type>::member> members;
    for (const auto& e : r.providers) {
        try {
            members.push_back({e.name, make_single_provider<member_provider_type>(member_config(c, e), upstream, log, metrics, e.name)});
        } catch (const config_error& problem) {
            throw config_error("CHAT_CONFIG=" + r.path + ":" + std::to_string(e.line) + ": provider '" + e.name + "': " + problem.what());
        }
    }
    chatkit::router_options o = r.router;
    o.on_fallback = [log, m = metrics](std::string_view from, std::string_view to, const chatkit::error& e) mutable {
        if (m) m->count_fallback(from, to, e);
        if (log)
            log->warn("provider failed; trying the next of the route",
                      {{"provider", from}, {"next", to}, {"code", e.code}, {"error", e.message}});
    };
    return chatkit::router<member_provider_type>{std::move(members), r.models, std::move(o)};
}

// The service's provider: CHAT_CONFIG's router, or the one provider CHAT_PROVIDER chooses.
inline provider_type make_provider(const config& c, std::shared_ptr<chatkit::http_client> upstream, logger* log = nullptr,
                                   const std::optional<chatkit::prometheus_metrics>& metrics = std::nullopt) {
    if (c.routing) return make_router(c, upstream, log, metrics);
    return make_single_provider<provider_type>(c, std::move(upstream), log, metrics);
}

// With `metrics`, the SQLite and PostgreSQL stores' group commits are measured there (DynamoDB
// writes an exchange with one PutItem: it has no batch to measure).
inline store_type make_store(const config& c, const std::optional<chatkit::prometheus_metrics>& metrics = std::nullopt) {
    if (c.database_url == "none") return chatkit::no_store{};
#ifdef SAMPLE_SERVER_POSTGRES
    if (is_postgres_url(c.database_url)) {
        chatkit::postgres_store_options o;
        o.connection.url = c.database_url;
        // Writes share one connection (group commit); reads take one each. 16 at most per replica,
        // so that a few replicas stay under PostgreSQL's default max_connections (100).
        o.connection.max_connections = std::clamp<std::size_t>(c.threads, 1, 16);
        if (metrics)
            o.on_commit = [m = *metrics](std::size_t batch, std::chrono::duration<double> took) mutable {
                m.observe_store_commit(batch, took.count());
            };
        try {
            return chatkit::postgres_store{std::move(o)};
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_DATABASE_URL: "} + e.what());
        }
    }
#endif
    if (c.database_url.starts_with("dynamodb:")) {
        try {
            return chatkit::dynamodb_store{chatkit::parse_dynamodb_url(c.database_url).value()};
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_DATABASE_URL: "} + e.what());
        }
    }
    std::string path = c.database_url.substr(std::string_view{"sqlite:"}.size());
    if (path.starts_with("//")) path.erase(0, 2); // sqlite:///abs/path.db
    chatkit::sqlite_options o{.path = path};
    if (metrics)
        o.on_commit = [m = *metrics](std::size_t batch, std::chrono::duration<double> took) mutable {
            m.observe_store_commit(batch, took.count());
        };
    return chatkit::sqlite_store{std::move(o)};
}

// CHAT_AUTH=keys: the authenticating middleware over the key directory of CHAT_DATABASE_URL.
// `default_model` is the model of a chat that names none, checked against a key's model list.
inline std::optional<auth_type> make_auth(const config& c, logger* log, std::string default_model) {
    if (c.auth != "keys") return std::nullopt;
    chatkit::api_key_auth_options o;
    o.default_model = std::move(default_model);
    o.admin_key_digest = c.admin_key_digest;
    for (auto& path : dashboard_paths()) o.open_paths.push_back(std::move(path));
    for (auto& path : api_docs_paths()) o.open_paths.push_back(std::move(path));
    if (log)
        o.on_refresh_error = [log](const chatkit::error& e) {
            log->error("cannot refresh the API keys; the last ones read stay in use", {{"error", e.message}});
        };
    return auth_type{make_key_directory(c, "CHAT_AUTH=keys"), std::move(o)};
}

// `what` fails repeatedly while a dependency is down: logged at most once a minute, with how many
// failures went unlogged since, so that an outage does not flood the log.
inline std::function<void(std::string_view)> warn_once_a_minute(logger* log, std::string what) {
    struct throttle {
        std::mutex mutex;
        std::chrono::steady_clock::time_point last{};
        long suppressed = 0;
    };
    return [log, what = std::move(what), t = std::make_shared<throttle>()](std::string_view why) {
        std::lock_guard lock{t->mutex};
        const auto now = std::chrono::steady_clock::now();
        if (t->last != std::chrono::steady_clock::time_point{} && now - t->last < std::chrono::minutes{1}) {
            ++t->suppressed;
            return;
        }
        log->warn(what, {{"error", why}, {"failures_not_logged", t->suppressed}});
        t->last = now;
        t->suppressed = 0;
    };
}

// The Redis cache's counts in the Prometheus text format: a Redis that is down or slow shows as
// failed commands, and a fleet that shares little as misses, long before anyone reads the log.
inline void append_redis_cache_figures(std::string& out, const chatkit::redis_cache_stats& s) {
    out += "# HELP chatkit_redis_cache_lookups_total Lookups in the Redis cache: hits, and misses (absent or expired).\n"
           "# TYPE chatkit_redis_cache_lookups_total counter\n"
           "chatkit_redis_cache_lookups_total{outcome=\"hit\"} " +
           std::to_string(s.hits) +
           "\n"
           "chatkit_redis_cache_lookups_total{outcome=\"miss\"} " +
           std::to_string(s.misses) +
           "\n"
           "# HELP chatkit_redis_cache_failures_total Redis cache commands that failed: each was a miss or a dropped put.\n"
           "# TYPE chatkit_redis_cache_failures_total counter\n"
           "chatkit_redis_cache_failures_total " +
           std::to_string(s.failures) + "\n";
}

// CHAT_CACHE_SIZE entries in memory; with CHAT_REDIS_URL, in front of Redis (docs/fleet.md). A
// Redis that cannot be used at start-up (down, or the credentials refused) is logged, not fatal:
// the cache misses until it can be. With `metrics` (a handle: copies share what they count), the
// Redis cache's counts are scraped there.
inline cache_type make_cache(const config& c, logger* log = nullptr, std::optional<chatkit::prometheus_metrics> metrics = std::nullopt) {
    chatkit::lru_cache_mt near{chatkit::lru_cache_options{.max_entries = c.cache_size}};
    if (c.redis_url.empty()) {
        if (c.cache_size == 0) return chatkit::no_cache{};
        return near;
    }
    auto redis = chatkit::parse_redis_url(c.redis_url);
    if (!redis) throw config_error("CHAT_REDIS_URL: " + redis.error().message);
    chatkit::redis_cache_options o;
    o.redis = std::move(*redis);
    // As many connections as worker threads may use at once, within reason for one Redis.
    o.redis.max_connections = std::clamp<std::size_t>(c.threads, 1, 32);
    if (log) {
        auto warn = warn_once_a_minute(log, "the Redis cache fails; answers are not shared until it works again");
        o.on_error = [warn](const chatkit::error& e) { warn(e.message); };
    }
    chatkit::redis_cache far{std::move(o)};
    if (auto ping = far.ping(); !ping && log)
        log->error("cannot use Redis at start-up; the cache misses until it can", {{"error", ping.error().message}});
    // A copy shares the cache's counters (and its pool): it reads them wherever the cache moves.
    if (metrics) metrics->add_source([counted = far](std::string& out) { append_redis_cache_figures(out, counted.stats()); });
    if (c.cache_size == 0) return far;
    // A far hit is kept near for a minute at most (less with a shorter CHAT_CACHE_TTL).
    return shared_cache_type{std::move(near), std::move(far),
                             chatkit::two_level_cache_options{.near_fill_ttl = std::min(c.cache_ttl, std::chrono::seconds{60})}};
}

// The shipped price table (data/pricing.json, built in), with CHAT_PRICING_FILE's models over it.
// Throws config_error for a file that cannot be read or parsed: billing with wrong prices is worse
// than not starting.
inline std::shared_ptr<const chatkit::price_table> make_prices(const config& c) {
    auto prices = chatkit::price_table::parse(default_pricing_json);
    if (!prices) throw config_error("the built-in price table: " + prices.error().message);
    if (!c.pricing_file.empty()) {
        std::ifstream in{c.pricing_file, std::ios::binary};
        if (!in) throw config_error("CHAT_PRICING_FILE: cannot read '" + c.pricing_file + "'");
        std::ostringstream text;
        text << in.rdbuf();
        auto overrides = chatkit::price_table::parse(text.str());
        if (!overrides) throw config_error("CHAT_PRICING_FILE '" + c.pricing_file + "': " + overrides.error().message);
        prices->merge(*overrides);
    }
    return std::make_shared<const chatkit::price_table>(std::move(*prices));
}

inline chatkit::service_options make_service_options(const config& c) {
    chatkit::service_options o;
    o.limits.max_messages = c.max_messages;
    o.limits.max_tokens = c.max_tokens;
    o.default_max_tokens = c.default_max_tokens;
    o.max_body_bytes = c.max_body_bytes;
    o.cache_ttl = c.cache_ttl;
    o.prices = make_prices(c);
    o.conversations.context_messages = c.context_messages;
    o.conversations.context_tokens = c.context_tokens;
    o.keep_abandoned_turns = c.keep_abandoned_turns == "on";
    return o;
}

// The usage records' store when CHAT_USAGE=on: the SQLite file or PostgreSQL database of the
// history, or the usage table of a DynamoDB database (usage_table, TABLE-usage by default); none
// with CHAT_DATABASE_URL=none.
inline std::shared_ptr<usage_store_type> make_usage_store(const config& c) {
    if (c.usage != "on") return nullptr;
#ifdef SAMPLE_SERVER_POSTGRES
    if (is_postgres_url(c.database_url)) {
        chatkit::postgres_options o;
        o.url = c.database_url;
        o.max_connections = 2; // the recorder's one writer, and a report
        try {
            return std::make_shared<usage_store_type>(chatkit::postgres_usage_store{std::move(o)});
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_DATABASE_URL: "} + e.what());
        }
    }
#endif
    if (c.database_url.starts_with("dynamodb:")) {
        auto database = chatkit::parse_dynamodb_url(c.database_url);
        if (!database) throw config_error("CHAT_DATABASE_URL: " + database.error().message);
        try {
            return std::make_shared<usage_store_type>(chatkit::dynamodb_usage_store{chatkit::dynamodb_usage_store_options::of(*database)});
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_DATABASE_URL: "} + e.what());
        }
    }
    if (!c.database_url.starts_with("sqlite:")) return nullptr;
    std::string path = c.database_url.substr(std::string_view{"sqlite:"}.size());
    if (path.starts_with("//")) path.erase(0, 2); // sqlite:///abs/path.db
    return std::make_shared<usage_store_type>(chatkit::sqlite_usage_store{chatkit::sqlite_options{.path = path}});
}

// GET /metrics (docs/observability.md): what `metrics` counted. With CHAT_AUTH=keys only the admin
// key may read it (what teams spend is in it); without, it is as open as the rest. With
// CHAT_METRICS_PORT it is served there instead (metrics_listener.hpp), not here.
inline void add_metrics_route(app_service& service, const config& c, std::optional<chatkit::prometheus_metrics> metrics) {
    if (!metrics || c.metrics_port >= 0) return;
    const bool keys_on = c.auth == "keys";
    service.route("GET", "/metrics", [metrics = std::move(*metrics), keys_on](chatkit::http_request& req, app_service::context&) {
        if (keys_on && !req.caller.admin)
            return chatkit::error_response(
                {chatkit::error_kind::permission_denied, "only the admin key (CHAT_ADMIN_KEY) may read /metrics", "permission_denied"},
                req.request_id);
        return metrics.response();
    });
}

// GET /v1/usage?days=N (docs/gateway.md): the caller's team, from the usage records; and
// GET /v1/usage/dashboard, what the dashboard page draws. Team names come from the key directory
// when there is one.
inline void add_usage_route(app_service& service, const config& c, std::shared_ptr<usage_store_type> usage) {
    if (!usage) {
        for (const char* path : {"/v1/usage", "/v1/usage/dashboard"})
            service.route("GET", path, [](chatkit::http_request& req, app_service::context&) {
                return chatkit::error_response({chatkit::error_kind::not_found,
                                                "usage is recorded with CHAT_USAGE=on and a database (CHAT_DATABASE_URL=sqlite:PATH, "
                                                "dynamodb://TABLE or postgresql://HOST/DB)",
                                                "usage_not_recorded"},
                                               req.request_id);
            });
        return;
    }
    struct names {
        std::mutex mutex; // one directory call at a time, as the key directory concept asks
        std::optional<key_directory_type> directory;
    };
    auto lookup = std::make_shared<names>();
    if (c.auth == "keys") lookup->directory.emplace(make_key_directory(c, "CHAT_AUTH=keys"));
    const std::function<std::string(const std::string&)> team_name = [lookup](const std::string& id) -> std::string {
        const std::lock_guard lock{lookup->mutex};
        if (!lookup->directory) return {};
        auto team = lookup->directory->visit([&id](auto& d) { return d.team(id); });
        return team && *team ? (*team)->name : std::string{};
    };
    service.route("GET", "/v1/usage", [usage, team_name](chatkit::http_request& req, app_service::context&) {
        return chatkit::usage_report_response(*usage, req, team_name);
    });
    service.route("GET", "/v1/usage/dashboard", [usage, team_name](chatkit::http_request& req, app_service::context&) {
        return chatkit::usage_dashboard_response(*usage, req, team_name);
    });
}

// CHAT_LIMITS=shared: the counters every replica shares, in Redis when CHAT_REDIS_URL names one (a
// round trip of a fraction of a millisecond), else in the DynamoDB database's limits table
// (docs/gateway.md), with what to do while they cannot be reached. "auto" means local here; the
// Lambda bootstrap decides it before. The limits of keys and teams and CHAT_RATE_LIMIT's
// per-client limit count there alike.
struct shared_limits_setup {
    std::shared_ptr<shared_counters> counters;
    bool fall_back_to_local = false;
    std::function<void(const chatkit::error&)> on_fallback{};
};

// Settlements are written every 20 ms at most; one that fails stays held and is logged (once a minute).
inline chatkit::coalescing_counter_store_options settling(logger* log) {
    chatkit::coalescing_counter_store_options o;
    if (log) {
        auto warn = warn_once_a_minute(log, "cannot settle the shared limits; kept, and written again with the next settlements");
        o.on_error = [warn](const chatkit::error& e) { warn(e.message); };
    }
    return o;
}

// With `metrics` and CHAT_LIMITS_FALLBACK=local, the checks counted in this process because the
// shared counters could not be reached are counted there (with refuse, they are the 503s).
inline std::optional<shared_limits_setup> make_shared_limits_setup(const config& c, logger* log,
                                                                   std::optional<chatkit::prometheus_metrics> metrics = std::nullopt) {
    if (c.limits != "shared") return std::nullopt;
    shared_limits_setup setup;
    setup.fall_back_to_local = c.limits_fallback == "local";
    if (setup.fall_back_to_local) {
        auto fell_back = std::make_shared<std::atomic<std::uint64_t>>(0);
        if (metrics)
            metrics->add_source([fell_back](std::string& out) {
                out += "# HELP chatkit_shared_limits_fallbacks_total Limit checks counted in this process because the shared counters "
                       "(Redis or DynamoDB) could not be reached.\n"
                       "# TYPE chatkit_shared_limits_fallbacks_total counter\n"
                       "chatkit_shared_limits_fallbacks_total " +
                       std::to_string(fell_back->load()) + "\n";
            });
        auto warn = log ? warn_once_a_minute(log, "the shared limits cannot be reached; counting in this process until they can")
                        : std::function<void(std::string_view)>{};
        setup.on_fallback = [warn, fell_back](const chatkit::error& e) {
            ++*fell_back;
            if (warn) warn(e.message);
        };
    }
    if (!c.redis_url.empty()) {
        auto redis = chatkit::parse_redis_url(c.redis_url);
        if (!redis) throw config_error("CHAT_REDIS_URL: " + redis.error().message);
        chatkit::redis_counter_store_options ro;
        ro.redis = std::move(*redis);
        ro.redis.max_connections = std::clamp<std::size_t>(c.threads, 1, 32);
        chatkit::redis_counter_store counters{std::move(ro)};
        // A Redis down at start-up is logged, not fatal: limited requests get 503 until it is back.
        if (auto ping = counters.ping(); !ping && log)
            log->error("cannot use Redis for the shared limits at start-up; limited requests get 503 until it can",
                       {{"error", ping.error().message}});
        setup.counters = std::make_shared<shared_counters>(shared_counter_stores{std::move(counters)}, settling(log));
        return setup;
    }
    auto database = c.database_url.starts_with("dynamodb:") ? chatkit::parse_dynamodb_url(c.database_url)
                                                            : chatkit::result<chatkit::dynamodb_options>{chatkit::error{}};
    if (!database)
        throw config_error("CHAT_LIMITS=shared keeps its counters in Redis or DynamoDB: it needs CHAT_REDIS_URL=redis://... or "
                           "CHAT_DATABASE_URL=dynamodb://TABLE (it is '" +
                           c.database_url + "')");
    setup.counters = std::make_shared<shared_counters>(
        shared_counter_stores{chatkit::dynamodb_counter_store{chatkit::dynamodb_counter_store_options::of(*database)}}, settling(log));
    return setup;
}

inline chatkit::shared_key_limits<shared_counters> make_shared_key_limits(const shared_limits_setup& setup, logger* log,
                                                                          std::optional<chatkit::rate_limit> client_limit) {
    chatkit::shared_key_limits_options o;
    o.client_limit = client_limit;
    if (log) o.on_error = [log](const chatkit::error& e) { log->error("cannot settle a shared limit", {{"error", e.message}}); };
    o.fall_back_to_local = setup.fall_back_to_local;
    o.on_fallback = setup.on_fallback;
    return chatkit::shared_key_limits<shared_counters>{setup.counters, std::move(o)};
}

// The exporter of the traces; an export that fails is logged at most once a minute (with how many
// spans failed since), so that a collector that is down does not flood the log.
inline std::shared_ptr<chatkit::otlp_exporter> make_trace_exporter(chatkit::otel_settings settings, logger* log) {
    if (log) settings.exporter.on_error = warn_once_a_minute(log, "cannot export traces");
    return std::make_shared<chatkit::otlp_exporter>(std::move(settings.exporter));
}

// The routes sample_server adds to the service's: named in metrics' labels and in span names
// alike (any other path is "other" there and its method alone here).
inline std::vector<std::string> added_routes() {
    std::vector<std::string> routes{"/v1/usage", "/v1/usage/dashboard", "/admin/teams", "/admin/keys", "/admin/keys/revoke"};
    for (auto& path : dashboard_paths()) routes.push_back(std::move(path));
    for (auto& path : api_docs_paths()) routes.push_back(std::move(path));
    return routes;
}

// The trace exporter's counts in the Prometheus text format: a collector that is down shows as
// failed spans, a queue too small for the load as dropped ones.
inline void append_trace_figures(std::string& out, const chatkit::otlp_exporter_stats& s) {
    out +=
        "# HELP chatkit_trace_spans_total Spans the trace exporter handled: exported, dropped (queue full) or failed (the export failed).\n"
        "# TYPE chatkit_trace_spans_total counter\n";
    for (const auto& [outcome, n] : {std::pair{"exported", s.exported}, std::pair{"dropped", s.dropped}, std::pair{"failed", s.failed}})
        out += std::string{"chatkit_trace_spans_total{outcome=\""} + outcome + "\"} " + std::to_string(n) + "\n";
}

// The usage recorder's queue in the Prometheus text format: a store that is down shows as a
// growing queue and failed writes, long before records are dropped.
inline void append_usage_figures(std::string& out, const usage_recorder_type::stats& s) {
    out += "# HELP chatkit_usage_records_total Usage records written to the usage store, or dropped because the queue was full.\n"
           "# TYPE chatkit_usage_records_total counter\n"
           "chatkit_usage_records_total{outcome=\"written\"} " +
           std::to_string(s.written) +
           "\n"
           "chatkit_usage_records_total{outcome=\"dropped\"} " +
           std::to_string(s.dropped) +
           "\n"
           "# HELP chatkit_usage_write_failures_total Batches of usage records whose write failed (they stay queued and are retried).\n"
           "# TYPE chatkit_usage_write_failures_total counter\n"
           "chatkit_usage_write_failures_total " +
           std::to_string(s.failed_writes) +
           "\n"
           "# HELP chatkit_usage_queue_length Usage records waiting to be written.\n"
           "# TYPE chatkit_usage_queue_length gauge\n"
           "chatkit_usage_queue_length " +
           std::to_string(s.queued) + "\n";
}

// Throws when a component cannot start (e.g. the SQLite file cannot be opened). `log` must outlive
// the service; `upstream`, when given, is the async client the providers call out through.
inline app_service make_service(const config& c, logger* log, std::shared_ptr<chatkit::http_client> upstream = nullptr) {
    if (c.auth == "keys") (void)make_key_directory(c, "CHAT_AUTH=keys"); // fail before anything starts
    // An admin key that nothing checks is a misconfiguration that would leave /admin off unnoticed.
    if (!c.admin_key_digest.empty() && c.auth != "keys")
        throw config_error("CHAT_ADMIN_KEY needs CHAT_AUTH=keys: without API keys, there is no administration over HTTP");
    std::optional<chatkit::prometheus_metrics> metrics;
    if (c.metrics == "on") {
        chatkit::prometheus_metrics_options o;
        for (auto& path : added_routes()) o.routes.push_back(std::move(path));
        metrics.emplace(std::move(o));
    }
    auto provider = make_provider(c, std::move(upstream), log, metrics);
    auto auth = make_auth(c, log, provider.models().front());
    // The limits of keys and teams come with the keys: enforced whenever keys are.
    auto usage = make_usage_store(c);
    std::optional<chatkit::key_rate_limits_mt> key_limits;
    std::optional<chatkit::key_usage_limits_mt> usage_limits;
    // CHAT_RATE_LIMIT counts where the keys' limits do: in this process, or with CHAT_LIMITS=shared
    // on the counters the replicas share, where with keys it goes in the same take as the key's
    // and team's limits (one round trip for all three).
    const auto client_limit = c.rate_limit == "off" ? std::nullopt : chatkit::rate_limit::parse(c.rate_limit);
    auto shared = make_shared_limits_setup(c, log, metrics);
    std::optional<chatkit::shared_key_limits<shared_counters>> shared_limits;
    std::optional<chatkit::shared_rate_limiter<shared_counters>> shared_limiter;
    std::optional<chatkit::rate_limiter_mt> limiter;
    if (shared && auth) shared_limits.emplace(make_shared_key_limits(*shared, log, client_limit));
    else if (shared && client_limit)
        shared_limiter.emplace(
            shared->counters, *client_limit,
            chatkit::shared_rate_limiter_options{.fall_back_to_local = shared->fall_back_to_local, .on_fallback = shared->on_fallback});
    else if (client_limit) limiter.emplace(*client_limit);
    if (auth && !shared) {
        key_limits.emplace();
        chatkit::key_usage_limits_options o;
        // A budget's spending survives a restart: read from the usage records once per key and period.
        if (usage)
            o.spent_before = [usage, log](std::string_view scope, const std::string& id, chatkit::unix_ms since) -> std::optional<double> {
                auto spent = usage->spent_usd(scope, id, since);
                if (spent) return *spent;
                if (log) log->error("cannot read a budget's spending from the usage records", {{"error", spent.error().message}});
                return std::nullopt;
            };
        usage_limits.emplace(std::move(o));
    }
    std::optional<usage_recorder_type> recorder;
    if (usage) {
        chatkit::usage_recorder_options o;
        if (log) o.on_error = [log](const chatkit::error& e) { log->error("cannot write usage records", {{"error", e.message}}); };
        recorder.emplace(usage, std::move(o));
        if (metrics)
            metrics->add_source([figures = recorder->figures_source()](std::string& out) { append_usage_figures(out, figures()); });
    }
    std::optional<chatkit::otel_tracing> tracing;
    if (c.tracing) {
        auto exporter = make_trace_exporter(*c.tracing, log);
        if (metrics) metrics->add_source([exporter](std::string& out) { append_trace_figures(out, exporter->stats()); });
        chatkit::otel_tracing_options o{.sampler = c.tracing->sampler};
        for (auto& path : added_routes()) o.routes.push_back(std::move(path));
        if (c.routing)
            for (const auto& p : c.routing->providers) o.provider_types[p.name] = p.type;
        tracing.emplace(std::move(exporter), std::move(o));
    }
    // CHAT_PII_MODE: after authentication (a caller without a key gets 401 first) and before the
    // limits (a refused request costs nothing), the cache, the provider and the store.
    std::optional<chatkit::pii_redaction> pii;
    if (c.pii_mode != "off") {
        chatkit::pii_redaction_options o;
        o.default_mode = *chatkit::parse_pii_mode(c.pii_mode);
        pii.emplace(std::move(o));
    }
    std::optional<chatkit::cors> cors;
    if (!c.cors_origins.empty())
        cors.emplace(chatkit::cors_options{.origins = c.cors_origins, .headers = c.cors_headers, .max_age = c.cors_max_age});
    app_service service{make_service_options(c), std::move(provider),     make_store(c, metrics),   make_cache(c, log, metrics),
                        chatkit::request_id{},   std::move(tracing),      access_log{log},          metrics,
                        std::move(cors),         std::move(recorder),     std::move(auth),          std::move(pii),
                        std::move(key_limits),   std::move(usage_limits), std::move(shared_limits), std::move(shared_limiter),
                        std::move(limiter)};
    add_usage_route(service, c, std::move(usage));
    add_metrics_route(service, c, std::move(metrics));
    admin_routes::add(service, c); // /admin: teams and keys over HTTP, for CHAT_ADMIN_KEY
    add_dashboard_routes(service);
    add_api_docs_routes(service);
    return service;
}

} // namespace sample_server
