// sample_server's service, compiled once (compiled_app.hpp): the composition of app.hpp built from
// the configuration, and what main.cpp needs to know of it.
#include "compiled_app.hpp"

#include "app.hpp"

#include <utility>

namespace sample_server {

namespace {

// "from ARN", "set" or "none": how a provider's key was given, never the key.
std::string key_source(const std::string& key, const std::string& secret_arn) {
    if (!secret_arn.empty()) return "from " + secret_arn;
    return key.empty() ? "none" : "set";
}

} // namespace

compiled_app make_compiled_app(const config& c, logger* log, std::shared_ptr<chatkit::http_client> upstream) {
    auto service = std::make_shared<app_service>(make_service(c, log, std::move(upstream)));
    compiled_app app{.service = chatkit::any_service{service},
                     .drain = [service] { service->drain(); },
                     .metrics = service->middleware<chatkit::optional_middleware<chatkit::prometheus_metrics>>().get(),
                     .provider_name = std::string{service->provider().name()},
                     .default_model = service->models().front(),
                     .announce_provider = {}};
    app.announce_provider = [c, log, service] {
        if (!log) return;
        const auto provider = chosen_provider(c);
        if (c.routing) {
            nlohmann::ordered_json providers = nlohmann::ordered_json::object();
            for (const auto& p : c.routing->providers) providers[p.name] = p.type;
            log->info("routing by model", {{"config", c.config_file}, {"providers", providers}, {"models", service->models()}});
        } else if (provider == "echo")
            log->info("no real provider is configured; using the built-in echo provider, which answers with your last message");
        else if (provider == "openai")
            log->info("using the OpenAI provider",
                      {{"base_url", c.openai_base_url}, {"api_key", key_source(c.openai_api_key, c.openai_api_key_secret_arn)}});
        else if (provider == "anthropic")
            log->info("using the Anthropic provider",
                      {{"base_url", c.anthropic_base_url}, {"api_key", key_source(c.anthropic_api_key, c.anthropic_api_key_secret_arn)}});
        else if (provider == "gemini")
            log->info("using the Gemini provider",
                      {{"base_url", c.gemini_base_url}, {"api_key", key_source(c.gemini_api_key, c.gemini_api_key_secret_arn)}});
        else if (auto* bedrock = service->provider().get_if<chatkit::bedrock_provider>())
            log->info("using the Bedrock provider", {{"region", bedrock->region()}, {"endpoint", bedrock->endpoint()}});
        else if (auto* async_bedrock = service->provider().get_if<chatkit::async_bedrock_provider>())
            log->info("using the Bedrock provider", {{"region", async_bedrock->region()}, {"endpoint", async_bedrock->endpoint()}});
    };
    return app;
}

} // namespace sample_server
