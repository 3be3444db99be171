// docs/providers.md's samples. Those that would call a real upstream are compiled, not run.
#include <chatkit/aws/credentials.hpp>
#include <chatkit/aws/sigv4.hpp>
#include <httplib.h>

#include <chatkit/anthropic_provider.hpp>
#include <chatkit/async_anthropic_provider.hpp>
#include <chatkit/async_gemini_provider.hpp>
#include <chatkit/async_openai_provider.hpp>
#include <chatkit/aws/json_client.hpp>
#include <chatkit/beast_client.hpp>
#include <chatkit/bedrock_provider.hpp>
#include <chatkit/chatkit.hpp>
#include <chatkit/gemini_provider.hpp>
#include <chatkit/openai_provider.hpp>
#include <chatkit/router.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace providers_sample {

// Lists DynamoDB tables; returns the HTTP status, or 0.
int list_tables() {
    chatkit::aws::credentials_provider credentials; // the chain, from the process environment
    auto creds = credentials.get();                 // chatkit::result<credentials>
    if (!creds) return 0;                           // creds.error().message names what is missing
    const std::string region = chatkit::aws::resolve_region(chatkit::aws::process_environment()).value_or("us-east-1");
    const std::string host = "dynamodb." + region + ".amazonaws.com";
    const std::string body = R"({"Limit":10})";

    const auto sig = chatkit::aws::sign(
        {.method = "POST",
         .host = host,
         .path = "/",
         .headers = {{"content-type", "application/x-amz-json-1.0"}, {"x-amz-target", "DynamoDB_20120810.ListTables"}},
         .body = body},
        *creds, region, "dynamodb", std::chrono::system_clock::now());
    httplib::Headers headers{{"Host", host},
                             {"X-Amz-Target", "DynamoDB_20120810.ListTables"},
                             {"Authorization", sig.authorization},
                             {"X-Amz-Date", sig.amz_date}};
    if (!sig.security_token.empty()) headers.emplace("X-Amz-Security-Token", sig.security_token);
    httplib::Client client{"https://" + host};
    auto res = client.Post("/", headers, body, "application/x-amz-json-1.0");
    return res ? res->status : 0;
}

// The same with json_client; not run (it would call AWS).
chatkit::result<nlohmann::json> list_tables_with_json_client() {
    // name, SigV4 service name, X-Amz-Target prefix, JSON version, AWS_ENDPOINT_URL_<suffix>
    chatkit::aws::json_client dynamodb{{"DynamoDB", "dynamodb", "DynamoDB_20120810", "1.0", "DYNAMODB"}, {}};
    auto tables = dynamodb.call("ListTables", {{"Limit", 10}}); // chatkit::result<nlohmann::json>
    return tables;
}

} // namespace providers_sample

TEST_CASE("providers.md: OpenAI, Anthropic and Gemini providers, blocking and on a loop, from their options") {
    chatkit::openai_options options;
    auto upstream = std::make_shared<chatkit::beast_client>(); // target chatkit::beast_client
    chatkit::async_openai_provider openai{options, upstream};  // the same openai_options
    CHECK(openai.name() == "openai");

    SECTION("Anthropic") {
        chatkit::anthropic_options options;
        if (const char* key = std::getenv("ANTHROPIC_API_KEY")) options.api_key = key;
        chatkit::anthropic_provider claude{options}; // blocking

        auto upstream = std::make_shared<chatkit::beast_client>();         // target chatkit::beast_client
        chatkit::async_anthropic_provider async_claude{options, upstream}; // on its loops
        CHECK(claude.name() == async_claude.name());
    }
    SECTION("Gemini") {
        chatkit::gemini_options options;
        if (const char* key = std::getenv("GEMINI_API_KEY")) options.api_key = key;
        chatkit::gemini_provider gemini{options}; // blocking

        auto upstream = std::make_shared<chatkit::beast_client>();      // target chatkit::beast_client
        chatkit::async_gemini_provider async_gemini{options, upstream}; // on its loops
        CHECK(gemini.name() == async_gemini.name());
    }
}

TEST_CASE("providers.md: a Bedrock model table entry of the deployment's own") {
    ::setenv("AWS_REGION", "us-east-1", 1);
    chatkit::bedrock_options options;
    options.model = "house";                                  // the default when a request names none
    options.models["house"] = {"amazon.nova-pro-v1:0", true}; // id, cross-region
    options.models.erase("mistral-large");
    chatkit::bedrock_provider bedrock{std::move(options)}; // region, endpoint, credentials from the environment

    std::string id = bedrock.resolve_model("house"); // "us.amazon.nova-pro-v1:0" in us-east-1
    CHECK(id == "us.amazon.nova-pro-v1:0");
}

TEST_CASE("providers.md: a router among an OpenAI and an Anthropic deployment is a provider") {
    chatkit::openai_options primary_options;
    chatkit::anthropic_options claude_options;
    std::shared_ptr<chatkit::http_client> client = std::make_shared<chatkit::beast_client>();
    chatkit::no_store store;
    chatkit::no_cache cache;

    using member = chatkit::provider_variant<chatkit::async_openai_provider, chatkit::async_anthropic_provider>;
    std::vector<chatkit::router<member>::member> members;
    members.push_back({"primary", chatkit::async_openai_provider{primary_options, client}});
    members.push_back({"claude", chatkit::async_anthropic_provider{claude_options, client}});
    chatkit::router<member> router{std::move(members),
                                   {{"gpt-4o-mini", {{{"primary"}}, {{"claude", "claude-haiku-4-5"}}}}},
                                   chatkit::router_options{.cooldown_after = 3}};
    chatkit::service svc{std::move(router), store, cache};
    CHECK(svc.models() == std::vector<std::string>{"gpt-4o-mini"});
}
