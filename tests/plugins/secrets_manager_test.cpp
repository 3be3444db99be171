// chatkit::aws::cached_secret against moto_server's Secrets Manager, started by the test, with a
// clock the test moves to cross the refresh interval.
#include "chatkit/aws/secrets_manager.hpp"

#include "../support/aws_emulators.hpp"
#include "../support/manual_clock.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

using chatkit::error_kind;
using chatkit::aws::secret_options;
using secret = chatkit::aws::cached_secret<test_support::manual_clock>;
using test_support::manual_clock;

namespace {

test_support::emulator_process& moto() {
    static test_support::emulator_process e = test_support::start_moto();
    return e;
}

chatkit::aws::json_client secrets_client(const std::string& region = "us-east-1") {
    chatkit::aws::json_client_options o;
    o.region = region;
    return chatkit::aws::json_client{chatkit::aws::secrets_manager_service(), o, moto().aws_environment()};
}

std::string unique_name() {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    return "chatkit/openai-" + std::to_string(run) + "-" + std::to_string(++n);
}

// Creates a secret holding `value`; returns its ARN.
std::string create_secret(const std::string& value, const std::string& region = "us-east-1") {
    auto client = secrets_client(region);
    auto created = client.call("CreateSecret", {{"Name", unique_name()}, {"SecretString", value}});
    if (!created) FAIL("CreateSecret: " << created.error().message);
    return (*created)["ARN"];
}

void put_value(const std::string& arn, const std::string& value) {
    auto client = secrets_client();
    auto put = client.call("PutSecretValue", {{"SecretId", arn}, {"SecretString", value}});
    if (!put) FAIL("PutSecretValue: " << put.error().message);
}

secret_options options_for(const std::string& arn) {
    return {.secret_id = arn, .json_field = "api_key", .refresh = std::chrono::seconds{300}};
}

} // namespace

TEST_CASE("a secret is read once and served from the cache until its refresh interval has passed") {
    const auto arn = create_secret("sk-first\n"); // as put-secret-value --secret-string file://key.txt stores it
    secret key{options_for(arn), moto().aws_environment()};
    auto got = key.get();
    REQUIRE(got);
    CHECK(*got == "sk-first"); // the newline trimmed

    put_value(arn, "sk-rotated");
    manual_clock::advance(std::chrono::seconds{299});
    CHECK(key.get().value() == "sk-first");
    manual_clock::advance(std::chrono::seconds{2});
    CHECK(key.get().value() == "sk-rotated");
}

TEST_CASE("a JSON secret gives its named field, and one without a usable field is a 503 that does not echo it") {
    secret from_json{options_for(create_secret(R"({"api_key":"sk-from-json","note":"x"})")), moto().aws_environment()};
    CHECK(from_json.get().value() == "sk-from-json");

    // The template creates the secret with an empty key, filled in after deploying.
    secret unset{options_for(create_secret(R"({"api_key":""})")), moto().aws_environment()};
    auto empty = unset.get();
    REQUIRE_FALSE(empty);
    CHECK(empty.error().kind == error_kind::unavailable);
    CHECK(empty.error().code == "secret_unusable");
    CHECK(empty.error().message.find("put-secret-value") != std::string::npos);

    // What a caller gets (and a client may see) names no secret; on_error hears the whole story.
    const auto arn = create_secret(R"({"openai":"sk-wrong-field-value"})");
    auto told = options_for(arn);
    std::vector<std::string> logged;
    told.on_error = [&logged](const chatkit::error& e) { logged.push_back(e.message); };
    secret wrong_field{told, moto().aws_environment()};
    auto wrong = wrong_field.get();
    REQUIRE_FALSE(wrong);
    CHECK(wrong.error().message.find(arn) == std::string::npos);
    CHECK(wrong.error().message.find("arn:") == std::string::npos);
    CHECK(wrong.error().message.find("\"api_key\"") != std::string::npos);
    CHECK(wrong.error().message.find("sk-wrong-field-value") == std::string::npos);
    REQUIRE(logged.size() == 1);
    CHECK(logged[0].find(arn) != std::string::npos);
    CHECK(logged[0].find("sk-wrong-field-value") == std::string::npos);
}

TEST_CASE("a refresh that fails keeps the last value, and a secret never read is a 503 whose log line names the secret") {
    const auto arn = create_secret("sk-kept");
    secret key{options_for(arn), moto().aws_environment()};
    REQUIRE(key.get().value() == "sk-kept");

    auto client = secrets_client();
    REQUIRE(client.call("DeleteSecret", {{"SecretId", arn}, {"ForceDeleteWithoutRecovery", true}}));
    manual_clock::advance(std::chrono::seconds{301});
    CHECK(key.get().value() == "sk-kept");

    auto logged_options = options_for(arn);
    std::string logged;
    logged_options.on_error = [&logged](const chatkit::error& e) { logged = e.message; };
    secret gone{logged_options, moto().aws_environment()};
    auto missing = gone.get();
    REQUIRE_FALSE(missing);
    CHECK(missing.error().kind == error_kind::unavailable);
    CHECK(missing.error().code == "ResourceNotFoundException");
    CHECK(missing.error().message.find(arn) == std::string::npos);
    CHECK(missing.error().message.find("ResourceNotFoundException") != std::string::npos);
    CHECK(logged.find(arn) != std::string::npos);
}

TEST_CASE("after a failed read the secret is asked again only once retry_after_failure has passed") {
    // moto answers for any account; a name that does not exist yet, created after the first read.
    const auto name = unique_name();
    auto o = options_for(name);
    o.retry_after_failure = std::chrono::seconds{10};
    secret key{o, moto().aws_environment()};
    REQUIRE_FALSE(key.get());

    auto client = secrets_client();
    REQUIRE(client.call("CreateSecret", {{"Name", name}, {"SecretString", "sk-late"}}));
    CHECK_FALSE(key.get()); // still within retry_after_failure: the error is remembered
    manual_clock::advance(std::chrono::seconds{11});
    CHECK(key.get().value() == "sk-late");
}

TEST_CASE("the region comes from the secret's ARN when the environment names none") {
    const auto arn = create_secret("sk-eu", "eu-west-1");
    REQUIRE(chatkit::aws::region_of_arn(arn) == "eu-west-1");
    auto env = moto().aws_environment({{"AWS_REGION", ""}});
    secret key{options_for(arn), env};
    CHECK(key.get().value() == "sk-eu");

    CHECK_THROWS_AS((secret{options_for("a-name-without-region"), env}), std::invalid_argument);
}

TEST_CASE("threads reading a cold secret at once all get its value") {
    secret key{options_for(create_secret("sk-shared")), moto().aws_environment()};
    std::vector<std::thread> readers;
    std::atomic<int> right{0};
    for (int i = 0; i < 8; ++i)
        readers.emplace_back([&] {
            auto copy = key; // copies share the cache
            if (auto got = copy.get(); got && *got == "sk-shared") ++right;
        });
    for (auto& t : readers) t.join();
    CHECK(right == 8);
}

TEST_CASE("a key the upstream refused is read again at once, but only once per value") {
    const auto arn = create_secret("sk-old");
    secret key{options_for(arn), moto().aws_environment()};
    REQUIRE(key.get().value() == "sk-old");

    CHECK_FALSE(key.expire("sk-something-else")); // a key no longer held: nothing to do
    put_value(arn, "sk-new");
    CHECK(key.get().value() == "sk-old"); // refresh is 300 s away

    CHECK(key.expire("sk-old"));
    CHECK(key.get().value() == "sk-new"); // read again without the clock moving
    CHECK(key.get().value() == "sk-new");

    // The new key refused too, and a fresh read gives it again: one read brought forward, not one per 401.
    CHECK(key.expire("sk-new"));
    CHECK(key.get().value() == "sk-new");
    put_value(arn, "sk-newest");
    CHECK_FALSE(key.expire("sk-new"));
    CHECK(key.get().value() == "sk-new");
    manual_clock::advance(std::chrono::seconds{301});
    CHECK(key.get().value() == "sk-newest"); // the regular refresh still comes
}
