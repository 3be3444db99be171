// docs/dynamodb-and-secrets.md's samples, compiled, not run: each would call AWS.
#include <chatkit/aws/secrets_manager.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/openai_provider.hpp>

#include <string>

namespace dynamodb_sample {

// Creates the history table (not run: it would call DynamoDB).
bool create_table() {
    chatkit::dynamodb_store store{{.table = "chat-history"}};
    auto created = store.client().call("CreateTable", chatkit::dynamodb_store::create_table_input("chat-history"));
    // CreateTable answers while the table is CREATING: poll DescribeTable until TableStatus is ACTIVE.
    return created.has_value();
}

} // namespace dynamodb_sample

namespace dynamodb_sample {

// The OpenAI provider's key from a secret (not run: get() would call Secrets Manager).
chatkit::openai_options key_from_secret(const std::string& arn) {
    chatkit::aws::cached_secret<> key{{.secret_id = arn, .json_field = "api_key"}};
    chatkit::openai_options o;
    o.api_key_source = [key]() mutable { return key.get(); };
    o.on_key_rejected = [key](const std::string& refused) mutable { key.expire(refused); };
    return o;
}

} // namespace dynamodb_sample
