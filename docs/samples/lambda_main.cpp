// docs/dynamodb-and-secrets.md: a Lambda function with DynamoDB history and the OpenAI key from
// Secrets Manager, the whole program. Built, not run: it would serve a Runtime API.
#include <chatkit/chatkit.hpp>
#include <chatkit/aws/secrets_manager.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/lambda_runtime.hpp>
#include <chatkit/openai_provider.hpp>

#include <cstdio>

int main() {
    // History: one item per exchange in an existing table, kept 30 days.
    auto history = chatkit::parse_dynamodb_url("dynamodb://chat-history?region=eu-west-1&ttl_days=30");
    if (!history) {
        std::fprintf(stderr, "%s\n", history.error().message.c_str());
        return 2;
    }
    chatkit::dynamodb_store store{*history}; // throws std::invalid_argument without a region

    // The OpenAI key: read when first asked for, then again once `refresh` (300 s) has passed.
    chatkit::aws::cached_secret<> key{
        {.secret_id = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:chatkit/openai-AbCdEf", .json_field = "api_key"}};
    chatkit::openai_options openai;
    openai.api_key_source = [key]() mutable { return key.get(); }; // copies share one cache

    chatkit::service<chatkit::openai_provider, chatkit::dynamodb_store> service{chatkit::openai_provider{std::move(openai)},
                                                                                std::move(store)};
    chatkit::lambda_options lambda;                                    // the Runtime API address from AWS_LAMBDA_RUNTIME_API
    lambda.function_url = chatkit::function_url_mode::response_stream; // as the Function URL's InvokeMode
    chatkit::lambda_runtime runtime{service, lambda};
    return runtime.run() ? 0 : 1;
}
