// The files an operator writes, as sample_server reads them at start-up: the pricing file
// (CHAT_PRICING_FILE, chatkit::price_table::parse) and the routing file (CHAT_CONFIG,
// load_routing_config, YAML). The same bytes go to both. Whatever they are: the pricing file is a
// clean error or a table of finite prices >= 0 that prices any usage; the routing file is a valid
// config or a routing_config_error (the only exception it may throw, the one start-up catches)
// that quotes no key from the environment. Any other exception escapes this function and is
// reported as a crash.
#include "answer_check.hpp"

#include "../sample_server/routing_config.hpp"

#include <chatkit/pricing.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <unistd.h>

namespace {
using fuzz::require;

// What the variables a file names hold: set for names starting with KEY_, else unset.
constexpr const char* secret = "sk-fuzz-SECRET-0123";
const char* getenv_for_test(const char* name) { return std::string_view{name}.starts_with("KEY_") ? secret : nullptr; }

void check_prices(std::string_view text) {
    const auto table = chatkit::price_table::parse(text);
    if (!table) {
        require(table.error().kind == chatkit::error_kind::invalid_request && !table.error().message.empty());
        return;
    }
    chatkit::token_usage most;
    most.prompt_tokens = most.completion_tokens = most.cached_tokens = std::numeric_limits<int>::max();
    for (const auto& [model, price] : table->models()) {
        require(std::isfinite(price.input) && price.input >= 0 && std::isfinite(price.output) && price.output >= 0);
        require(!price.cached_input || (std::isfinite(*price.cached_input) && *price.cached_input >= 0));
        require(table->find(model) == &price);
        const auto cost = table->cost_usd(model, most);
        require(cost && !std::isnan(*cost) && *cost >= 0);
    }
    auto merged = *table;
    merged.merge(*table);
    require(merged.models() == table->models());
}

void check_routing(const std::string& path, std::string_view text) {
    sample_server::routing_config config;
    try {
        config = sample_server::load_routing_config(path, getenv_for_test);
    } catch (const sample_server::routing_config_error& e) {
        const std::string_view what = e.what();
        // The key may be quoted only when the file itself holds it.
        require(what.starts_with(path) && (what.find(secret) == std::string_view::npos || text.find(secret) != std::string_view::npos));
        return;
    }
    require(!config.providers.empty() && !config.models.empty());
    std::set<std::string> names;
    for (const auto& p : config.providers) {
        require(!p.name.empty() && p.name.find('/') == std::string::npos && names.insert(p.name).second);
        require(p.type == "openai" || p.type == "azure" || p.type == "anthropic" || p.type == "gemini" || p.type == "bedrock" ||
                p.type == "echo");
        require(p.api_key.empty() == p.api_key_env.empty() && (p.api_key.empty() || p.api_key == secret));
        require(!p.max_retries || (*p.max_retries >= 0 && *p.max_retries <= 10));
        require(!p.timeout || (p.timeout->count() >= 1 && p.timeout->count() <= 3600));
    }
    std::set<std::string> models;
    for (const auto& m : config.models) {
        require(models.insert(m.name).second && !m.groups.empty());
        for (const auto& group : m.groups) {
            require(!group.empty());
            for (const auto& t : group) require(names.contains(t.provider) && t.weight >= 1 && t.weight <= 1'000'000);
        }
    }
    require(config.router.cooldown_after >= 1 && config.router.cooldown_after <= 1000);
}

// One file for the whole run, rewritten for each input (the loader reads a path), and removed at
// exit: registered after the path's own destructor, so it runs before it.
const std::string& file() {
    static const std::string path = "/tmp/config_fuzzer-" + std::to_string(::getpid()) + ".yaml";
    static const bool removed_at_exit = std::atexit([] { std::remove(file().c_str()); }) == 0;
    (void)removed_at_exit;
    return path;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text{reinterpret_cast<const char*>(data), size};
    check_prices(text);

    std::FILE* f = std::fopen(file().c_str(), "wb");
    require(f != nullptr);
    require(std::fwrite(data, 1, size, f) == size || size == 0);
    require(std::fclose(f) == 0);
    check_routing(file(), text);
    return 0;
}
