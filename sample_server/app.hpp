// sample_server's composition: which plugins make up the service, chosen from the configuration.
// Shared by every front end of the same service (the HTTP server here, a Lambda bootstrap).
#pragma once

#include "config.hpp"

#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/rate_limiter.hpp>
#include <chatkit/request_id.hpp>
#include <chatkit/sqlite_store.hpp>

#include <string>
#include <vector>

namespace sample_server {

using provider_type = chatkit::provider_variant<chatkit::echo_provider>;
using store_type = chatkit::store_variant<chatkit::sqlite_store, chatkit::no_store>;
using cache_type = chatkit::cache_variant<chatkit::lru_cache_mt, chatkit::no_cache>;
using app_service = chatkit::service<provider_type, store_type, cache_type, chatkit::request_id,
                                     chatkit::optional_middleware<chatkit::rate_limiter_mt>>;

inline provider_type make_provider(const config& c) {
    // "auto" picks a configured real provider; none is built in yet, so it falls back to echo.
    chatkit::echo_options echo;
    if (!c.model.empty()) echo.model = c.model;
    echo.delay_per_word = c.echo_delay;
    return chatkit::echo_provider{echo};
}

inline store_type make_store(const config& c) {
    if (c.database_url == "none") return chatkit::no_store{};
    std::string path = c.database_url.substr(std::string_view{"sqlite:"}.size());
    if (path.starts_with("//")) path.erase(0, 2); // sqlite:///abs/path.db
    return chatkit::sqlite_store{chatkit::sqlite_options{.path = path}};
}

inline cache_type make_cache(const config& c) {
    if (c.cache_size == 0) return chatkit::no_cache{};
    return chatkit::lru_cache_mt{chatkit::lru_cache_options{.max_entries = c.cache_size}};
}

inline chatkit::service_options make_service_options(const config& c) {
    chatkit::service_options o;
    o.limits.max_messages = c.max_messages;
    o.limits.max_tokens = c.max_tokens;
    o.max_body_bytes = c.max_body_bytes;
    o.cache_ttl = c.cache_ttl;
    return o;
}

// Throws when a component cannot start (e.g. the SQLite file cannot be opened).
inline app_service make_service(const config& c) {
    std::optional<chatkit::rate_limiter_mt> limiter;
    if (c.rate_limit != "off") limiter.emplace(*chatkit::rate_limit::parse(c.rate_limit));
    return app_service{make_service_options(c), make_provider(c), make_store(c), make_cache(c), chatkit::request_id{},
                       std::move(limiter)};
}

} // namespace sample_server
