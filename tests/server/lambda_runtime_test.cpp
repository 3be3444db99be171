// The real `bootstrap` binary against a local Runtime API (docs/protocols.md §5): API Gateway HTTP API
// 2.0 and Function URL events (§6) in, buffered and streamed answers and error reports out, with
// the echo provider and a real SQLite file; API keys and usage records in DynamoDB (dynalite) as
// the deployment keeps them, and the /admin routes that make keys.
#include "../support/aws_emulators.hpp"
#include "../support/fake_lambda_runtime.hpp"
#include "../support/lambda_answers.hpp"
#include "../support/lambda_events.hpp"
#include "../support/lambda_sandbox.hpp"

#include <chatkit/api_keys.hpp>
#include <chatkit/dynamodb_counter_store.hpp>
#include <chatkit/dynamodb_key_directory.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/dynamodb_usage_store.hpp>
#include <chatkit/lambda_runtime.hpp>

#include <nlohmann/json.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>

#ifndef BOOTSTRAP_PATH
#error "BOOTSTRAP_PATH must name the bootstrap binary"
#endif

using nlohmann::json;
using test_support::buffered_answer;
using test_support::check_error_envelope;
using test_support::fake_lambda_runtime;
using test_support::function_url_event;
using test_support::gateway_event;

namespace {

// Runs `bootstrap` from the build against `runtime`, with Lambda's environment and nothing else
// (lambda_environment), a SQLite file in a fresh directory, the echo provider and no rate limit.
class bootstrap_process {
public:
    explicit bootstrap_process(const fake_lambda_runtime& runtime, const std::map<std::string, std::string>& env = {})
        : dir_(fresh_directory()),
          child_({BOOTSTRAP_PATH}, test_support::lambda_launch(environment(runtime, env, dir_), dir_ / "bootstrap.log")) {}
    ~bootstrap_process() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    bootstrap_process(const bootstrap_process&) = delete;
    bootstrap_process& operator=(const bootstrap_process&) = delete;

    int wait_exit() { return child_.wait_exit(); }
    std::string log() const { return child_.log(); }

private:
    static std::filesystem::path fresh_directory() {
        std::random_device rd;
        auto dir = std::filesystem::temp_directory_path() / ("chatkit-lambda-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(dir);
        return dir;
    }

    static std::map<std::string, std::string> environment(const fake_lambda_runtime& runtime, const std::map<std::string, std::string>& env,
                                                          const std::filesystem::path& dir) {
        std::map<std::string, std::string> full{
            {"CHAT_DATABASE_URL", "sqlite:" + (dir / "chat.db").string()}, {"CHAT_RATE_LIMIT", "off"}, {"CHAT_PROVIDER", "echo"}};
        for (const char* sanitizer : {"ASAN_OPTIONS", "UBSAN_OPTIONS"}) // the sanitizer build's settings
            if (const char* value = std::getenv(sanitizer)) full[sanitizer] = value;
        for (const auto& [k, v] : env) full[k] = v;
        return test_support::lambda_environment(runtime.address(), full);
    }

    std::filesystem::path dir_;
    test_support::child_process child_; // declared after dir_: killed before the directory goes
};

// One emulator for every DynamoDB case of this program, started by the first.
test_support::emulator_process& dynalite() {
    static test_support::emulator_process e = test_support::start_dynalite();
    return e;
}

// A new key of `team` in `keys`, as `sample_server keys create` makes one; the key itself.
std::string create_key(chatkit::dynamodb_key_directory& keys, const std::string& team) {
    const std::string key = chatkit::api_keys::generate_key();
    chatkit::key_record record;
    record.id = chatkit::api_keys::generate_key_id();
    record.team_id = team;
    record.prefix = chatkit::api_keys::display_prefix(key);
    record.digest = chatkit::api_keys::digest(key);
    record.created_at = chatkit::now_unix_ms();
    REQUIRE(keys.create_key(record));
    return key;
}

std::string base64(std::string_view in) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += 3) {
        unsigned n = static_cast<unsigned char>(in[i]) << 16;
        if (i + 1 < in.size()) n |= static_cast<unsigned char>(in[i + 1]) << 8;
        if (i + 2 < in.size()) n |= static_cast<unsigned char>(in[i + 2]);
        out += alphabet[(n >> 18) & 63];
        out += alphabet[(n >> 12) & 63];
        out += i + 1 < in.size() ? alphabet[(n >> 6) & 63] : '=';
        out += i + 2 < in.size() ? alphabet[n & 63] : '=';
    }
    return out;
}

} // namespace

TEST_CASE("GET /health through an API Gateway v2 event is answered with a buffered 200") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    const auto id = runtime.push(gateway_event("GET", "/health").dump());
    const auto answer = buffered_answer(runtime.wait_for(id));
    CHECK(answer["statusCode"] == 200);
    CHECK(answer["headers"]["Content-Type"] == "application/json");
    CHECK(answer["headers"]["X-Request-ID"] == id); // the Lambda request id follows the request
    CHECK(json::parse(answer["body"].get<std::string>())["status"] == "ok");
}

TEST_CASE("GET /dashboard through an API Gateway v2 event is the dashboard page, as sample_server serves it") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    const auto answer = buffered_answer(runtime.wait_for(runtime.push(gateway_event("GET", "/dashboard").dump())));
    CHECK(answer["statusCode"] == 200);
    CHECK(answer["headers"]["Content-Type"].get<std::string>().starts_with("text/html"));
    CHECK(answer["body"].get<std::string>().find("/dashboard/uPlot.iife.min.js") != std::string::npos);
    const auto script = buffered_answer(runtime.wait_for(runtime.push(gateway_event("GET", "/dashboard/uPlot.iife.min.js").dump())));
    CHECK(script["statusCode"] == 200);
    CHECK(script["body"].get<std::string>().find("uPlot") != std::string::npos);
}

TEST_CASE("GET /openapi.json and the /docs page through API Gateway v2 events are what sample_server serves") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    const auto answer = buffered_answer(runtime.wait_for(runtime.push(gateway_event("GET", "/openapi.json").dump())));
    CHECK(answer["statusCode"] == 200);
    CHECK(answer["headers"]["Content-Type"] == "application/json");
    const auto spec = json::parse(answer["body"].get<std::string>());
    CHECK(spec["openapi"] == "3.1.0");
    CHECK(spec["paths"].contains("/v1/chat/completions"));
    // Swagger UI's bundle, the largest answer either binary gives (1.7 MB), fits a buffered answer.
    const auto bundle = buffered_answer(runtime.wait_for(runtime.push(gateway_event("GET", "/docs/swagger-ui-bundle.js").dump())));
    CHECK(bundle["statusCode"] == 200);
    CHECK(bundle["body"].get<std::string>().find("SwaggerUIBundle") != std::string::npos);
}

TEST_CASE("POST /chat answers JSON with the content, and GET /history returns the exchange") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    const auto chat = runtime.push(
        gateway_event("POST", "/chat", "", json{{"user_id", "alice"}, {"content", "hello there"}}.dump(), {{"x-request-id", "trace-7"}})
            .dump());
    const auto answer = buffered_answer(runtime.wait_for(chat));
    REQUIRE(answer["statusCode"] == 200);
    CHECK(answer["headers"]["X-Request-ID"] == "trace-7"); // a valid X-Request-ID wins over the Lambda id
    const auto body = json::parse(answer["body"].get<std::string>());
    CHECK(body["content"] == "hello there");
    CHECK(body["model"] == "echo-1");
    CHECK(body["request_id"] == "trace-7");

    const auto history = runtime.push(gateway_event("GET", "/history/alice", "limit=10&ignored=a+b").dump());
    const auto page = buffered_answer(runtime.wait_for(history));
    REQUIRE(page["statusCode"] == 200);
    const auto messages = json::parse(page["body"].get<std::string>())["messages"];
    REQUIRE(messages.size() == 2);
    CHECK(messages[0]["role"] == "user");
    CHECK(messages[0]["content"] == "hello there");
    CHECK(messages[1]["role"] == "assistant");
    CHECK(messages[1]["request_id"] == "trace-7");

    const auto bad_limit = runtime.push(gateway_event("GET", "/history/alice", "limit=0").dump());
    check_error_envelope(buffered_answer(runtime.wait_for(bad_limit)), 400, "invalid_request_error");
}

TEST_CASE("a streaming POST /chat through a Function URL is sent in streaming mode with the HTTP integration prelude") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime, {{"CHAT_FUNCTION_URL_INVOKE_MODE", "RESPONSE_STREAM"}}};
    const auto id = runtime.push(
        function_url_event("POST", "/chat", json{{"messages", {{{"role", "user"}, {"content", "one two three"}}}}, {"stream", true}}.dump())
            .dump());
    const auto [prelude, sse] = test_support::streamed(runtime.wait_for(id));
    CHECK(prelude["statusCode"] == 200);
    CHECK(prelude["headers"]["Content-Type"] == "text/event-stream");
    CHECK(prelude["headers"]["X-Request-ID"] == id);
    test_support::check_echoed_stream(sse, id);
}

TEST_CASE("through a RESPONSE_STREAM Function URL every answer is streamed, a buffered one behind a prelude with its status") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime, {{"CHAT_FUNCTION_URL_INVOKE_MODE", "RESPONSE_STREAM"}}};
    auto health_event = function_url_event("GET", "/health", "");
    health_event.erase("body");
    const auto [health_prelude, health] = test_support::streamed(runtime.wait_for(runtime.push(health_event.dump())));
    CHECK(health_prelude["statusCode"] == 200);
    CHECK(health_prelude["headers"]["Content-Type"] == "application/json");
    CHECK(json::parse(health)["status"] == "ok");

    const auto [bad_prelude,
                bad] = test_support::streamed(runtime.wait_for(runtime.push(function_url_event("POST", "/chat", "{oops").dump())));
    CHECK(bad_prelude["statusCode"] == 400);
    CHECK(json::parse(bad)["error"]["type"] == "invalid_request_error");

    // API Gateway invokes buffered whatever the Function URL's mode.
    CHECK(buffered_answer(runtime.wait_for(runtime.push(gateway_event("GET", "/health").dump())))["statusCode"] == 200);
}

TEST_CASE("a streaming chat through API Gateway, or a BUFFERED Function URL, arrives whole as one buffered SSE body") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime}; // CHAT_FUNCTION_URL_INVOKE_MODE defaults to BUFFERED, as AWS does
    const auto ask = json{{"messages", {{{"role", "user"}, {"content", "one two"}}}}, {"stream", true}, {"cache", false}}.dump();
    for (const auto& event : {gateway_event("POST", "/chat", "", ask), function_url_event("POST", "/chat", ask)}) {
        const auto answer = buffered_answer(runtime.wait_for(runtime.push(event.dump())));
        CHECK(answer["statusCode"] == 200);
        CHECK(answer["headers"]["Content-Type"] == "text/event-stream");
        const auto sse = answer["body"].get<std::string>();
        INFO(sse);
        CHECK(sse.starts_with("event: delta\ndata: {\"content\":\"one\"}\n\n"));
        CHECK(sse.find("event: done\ndata: ") != std::string::npos);
    }
}

TEST_CASE("an invalid JSON body is answered 400 with the JSON error envelope") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    const auto id = runtime.push(gateway_event("POST", "/chat", "", std::string{"{\"content\": "}).dump());
    check_error_envelope(buffered_answer(runtime.wait_for(id)), 400, "invalid_request_error");
}

TEST_CASE("a base64-encoded body is decoded before the service sees it") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    auto event = gateway_event("POST", "/chat", "", base64(json{{"content", "über binary-safe"}}.dump()));
    event["isBase64Encoded"] = true;
    const auto answer = buffered_answer(runtime.wait_for(runtime.push(event.dump())));
    REQUIRE(answer["statusCode"] == 200);
    CHECK(json::parse(answer["body"].get<std::string>())["content"] == "über binary-safe");
}

TEST_CASE("a body over CHAT_MAX_BODY_BYTES is answered 413") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime, {{"CHAT_MAX_BODY_BYTES", "4096"}}};
    const auto id = runtime.push(gateway_event("POST", "/chat", "", json{{"content", std::string(5000, 'x')}}.dump()).dump());
    const auto answer = buffered_answer(runtime.wait_for(id));
    CHECK(answer["statusCode"] == 413);
    CHECK(json::parse(answer["body"].get<std::string>())["error"]["code"] == "body_too_large");
}

TEST_CASE("an event that is not JSON is reported through /error and the next event is still served") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime};
    const auto broken = runtime.push("this is not json");
    const auto not_http = runtime.push(R"({"key1":"value1"})"); // a console test event: JSON, not HTTP
    const auto health = runtime.push(gateway_event("GET", "/health").dump());
    for (const auto& id : {broken, not_http}) {
        const auto posted = runtime.wait_for(id);
        INFO(posted.body);
        CHECK(posted.kind == "error");
        CHECK(posted.header("Lambda-Runtime-Function-Error-Type") == "Runtime.InvalidEvent");
        const auto body = json::parse(posted.body);
        CHECK(body["errorType"] == "Runtime.InvalidEvent");
        CHECK(body["errorMessage"].is_string());
        CHECK(body["stackTrace"] == json::array());
    }
    CHECK(buffered_answer(runtime.wait_for(health))["statusCode"] == 200);
}

TEST_CASE("a bad configuration is reported through /runtime/init/error and bootstrap exits") {
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime, {{"CHAT_RATE_LIMIT", "lots"}}};
    const auto posted = runtime.wait_for("");
    INFO(posted.body);
    CHECK(posted.kind == "init/error");
    CHECK(posted.header("Lambda-Runtime-Function-Error-Type") == "Runtime.InvalidConfiguration");
    CHECK(json::parse(posted.body)["errorMessage"].get<std::string>().find("CHAT_RATE_LIMIT") != std::string::npos);
    CHECK(bootstrap.wait_exit() == 2);
    CHECK(runtime.next_calls() == 0);
}

namespace {

// A service that answers every request with what it saw, for the adapter alone.
struct mirror_service {
    chatkit::http_response handle(chatkit::http_request& req) {
        return chatkit::json_response(200, {{"method", req.method},
                                            {"path", req.path},
                                            {"query", req.query},
                                            {"content_type", req.header("Content-Type")},
                                            {"remote_addr", req.remote_addr},
                                            {"request_id", req.request_id},
                                            {"body", req.body}});
    }
};

} // namespace

TEST_CASE("the event maps to the request: decoded path and query, headers by any case, source IP, Lambda id") {
    fake_lambda_runtime runtime;
    mirror_service service;
    chatkit::lambda_runtime lambda{service, chatkit::lambda_options{.runtime_api = runtime.address(), .max_invocations = 1}};
    const auto id = runtime.push(gateway_event("POST", "/history/j%C3%BCrgen%20k", "a=1&a=2&b=x+y%26z&flag", std::string{"hi"}).dump());
    CHECK(lambda.run());
    const auto seen = json::parse(buffered_answer(runtime.wait_for(id))["body"].get<std::string>());
    CHECK(seen["method"] == "POST");
    CHECK(seen["path"] == "/history/j\u00fcrgen k");
    CHECK(seen["query"] == json{{"a", "1"}, {"b", "x y&z"}, {"flag", ""}});
    CHECK(seen["content_type"] == "application/json");
    CHECK(seen["remote_addr"] == "192.0.2.1");
    CHECK(seen["request_id"] == id);
    CHECK(seen["body"] == "hi");
}

TEST_CASE("run returns when its stop token is requested while it waits on /next") {
    fake_lambda_runtime runtime;
    mirror_service service;
    chatkit::lambda_runtime lambda{service, chatkit::lambda_options{.runtime_api = runtime.address()}};
    std::stop_source stop;
    bool result = false;
    std::thread loop{[&] { result = lambda.run(stop.get_token()); }};
    const auto id = runtime.push(gateway_event("GET", "/anything").dump());
    CHECK(buffered_answer(runtime.wait_for(id))["statusCode"] == 200);
    for (int i = 0; i < 1000 && runtime.next_calls() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    REQUIRE(runtime.next_calls() == 2); // polling again
    stop.request_stop();
    loop.join();
    CHECK(result);
}

TEST_CASE("run gives up after three failed /next calls") {
    std::string address;
    {
        fake_lambda_runtime gone;
        address = gone.address(); // nothing listens there any more
    }
    mirror_service service;
    chatkit::lambda_runtime lambda{service, chatkit::lambda_options{.runtime_api = address}};
    CHECK_FALSE(lambda.run());
}

// Found by fuzz/lambda_event_fuzzer: an event without a requestContext object was read past its
// end when the adapter asked whether it came from a Function URL.
TEST_CASE("an event without a request context is no Function URL event and no request") {
    CHECK_FALSE(chatkit::lambda::from_function_url(nlohmann::json::object()));
    CHECK_FALSE(chatkit::lambda::from_function_url(nlohmann::json{{"requestContext", "x"}}));
    CHECK_FALSE(chatkit::lambda::from_function_url(nlohmann::json::array()));
    CHECK(chatkit::lambda::from_function_url(nlohmann::json{{"requestContext", {{"domainName", "abc.lambda-url.us-east-1.on.aws"}}}}));
    CHECK_FALSE(chatkit::lambda::request_from_event(nlohmann::json{{"version", "2.0"}, {"rawPath", "/chat"}}));
    // Found by the same fuzzer: an isBase64Encoded that is not a boolean threw; it now means "not encoded".
    const nlohmann::json odd = {
        {"requestContext", {{"http", {{"method", "POST"}, {"path", "/chat"}}}}}, {"body", "{}"}, {"isBase64Encoded", "yes"}};
    const auto req = chatkit::lambda::request_from_event(odd);
    REQUIRE(req);
    CHECK(req->body == "{}");
}

TEST_CASE("with CHAT_AUTH=keys and a dynamodb:// database, bootstrap accepts a key from the keys table and refuses a request without one") {
    const std::string history = "history-" + std::to_string(std::random_device{}());
    chatkit::dynamodb_key_directory keys{chatkit::dynamodb_key_directory_options{.table = history + "-keys"}, dynalite().aws_environment()};
    test_support::create_table(keys.client(), chatkit::dynamodb_key_directory::create_table_input(history + "-keys"));
    REQUIRE(keys.create_team(chatkit::team_record{"lambda-team", "", {}, chatkit::now_unix_ms()}));
    const std::string key = create_key(keys, "lambda-team");

    // As the template configures the function, with the emulator for DynamoDB. The history table
    // is never made: /v1/models reads no history, and only the keys are under test here.
    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime,
                                {{"CHAT_DATABASE_URL", "dynamodb://" + history + "?region=us-east-1"},
                                 {"CHAT_AUTH", "keys"},
                                 {"AWS_ENDPOINT_URL_DYNAMODB", dynalite().endpoint()}}};
    const auto refused = runtime.push(gateway_event("GET", "/v1/models").dump());
    const auto answer = buffered_answer(runtime.wait_for(refused));
    CHECK(answer["statusCode"] == 401);
    CHECK(json::parse(answer["body"].get<std::string>())["error"]["code"] == "invalid_api_key");

    const auto allowed = runtime.push(gateway_event("GET", "/v1/models", "", std::nullopt, {{"x-api-key", key}}).dump());
    const auto models = buffered_answer(runtime.wait_for(allowed));
    INFO(models.dump());
    CHECK(models["statusCode"] == 200);
    CHECK(bootstrap.log().find(key.substr(3)) == std::string::npos);
}

TEST_CASE("bootstrap has the /admin routes: the admin key makes a team and a key in DynamoDB, a team key gets 403") {
    const std::string history = "history-" + std::to_string(std::random_device{}());
    chatkit::dynamodb_key_directory keys{chatkit::dynamodb_key_directory_options{.table = history + "-keys"}, dynalite().aws_environment()};
    test_support::create_table(keys.client(), chatkit::dynamodb_key_directory::create_table_input(history + "-keys"));
    // The team has a limit: on DynamoDB the bootstrap counts it in the limits table.
    test_support::create_table(keys.client(), chatkit::dynamodb_counter_store::create_table_input(history + "-limits"));
    const std::string admin_key = chatkit::api_keys::generate_key(); // a ck- key serves as an admin key too

    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime,
                                {{"CHAT_DATABASE_URL", "dynamodb://" + history + "?region=us-east-1"},
                                 {"CHAT_AUTH", "keys"},
                                 {"CHAT_ADMIN_KEY", admin_key},
                                 {"AWS_ENDPOINT_URL_DYNAMODB", dynalite().endpoint()}}};
    const auto call = [&](const std::string& method, const std::string& path, const std::string& key, std::optional<std::string> body) {
        const auto id = runtime.push(gateway_event(method, path, "", std::move(body), {{"authorization", "Bearer " + key}}).dump());
        return buffered_answer(runtime.wait_for(id));
    };

    const auto team = call("POST", "/admin/teams", admin_key, R"({"id":"lambda-team","rpm":10})");
    INFO(team.dump());
    CHECK(team["statusCode"] == 201);
    const auto made = call("POST", "/admin/keys", admin_key, R"({"team":"lambda-team","name":"from lambda"})");
    INFO(made.dump());
    REQUIRE(made["statusCode"] == 201);
    const std::string key = json::parse(made["body"].get<std::string>())["key"];
    // The directory holds the new key, as the next instance (or the next refresh) reads it.
    const auto stored = keys.keys();
    REQUIRE(stored);
    REQUIRE(stored->size() == 1);
    CHECK(stored->front().team_id == "lambda-team");
    CHECK(stored->front().digest == chatkit::api_keys::digest(key));

    // Once this instance's snapshot has the key (2 s refresh), it may chat but not administer.
    json refused;
    for (int attempt = 0; attempt < 50; ++attempt) {
        refused = call("GET", "/admin/keys", key, std::nullopt);
        if (refused["statusCode"] != 401) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(refused["statusCode"] == 403);
    CHECK(json::parse(refused["body"].get<std::string>())["error"]["code"] == "permission_denied");
    CHECK(bootstrap.log().find(admin_key.substr(3)) == std::string::npos);
    CHECK(bootstrap.log().find(key.substr(3)) == std::string::npos);
}

TEST_CASE("with a dynamodb:// database, bootstrap records a chat's usage in TABLE-usage and GET /v1/usage reports it") {
    const std::string history = "history-" + std::to_string(std::random_device{}());
    chatkit::dynamodb_key_directory keys{chatkit::dynamodb_key_directory_options{.table = history + "-keys"}, dynalite().aws_environment()};
    test_support::create_table(keys.client(), chatkit::dynamodb_store::create_table_input(history));
    test_support::create_table(keys.client(), chatkit::dynamodb_key_directory::create_table_input(history + "-keys"));
    test_support::create_table(keys.client(), chatkit::dynamodb_usage_store::create_table_input(history + "-usage"));
    REQUIRE(keys.create_team(chatkit::team_record{"lambda-team", "Lambda", {}, chatkit::now_unix_ms()}));
    const std::string key = create_key(keys, "lambda-team");

    fake_lambda_runtime runtime;
    bootstrap_process bootstrap{runtime,
                                {{"CHAT_DATABASE_URL", "dynamodb://" + history + "?region=us-east-1"},
                                 {"CHAT_AUTH", "keys"},
                                 {"AWS_ENDPOINT_URL_DYNAMODB", dynalite().endpoint()}}};
    const json auth = {{"x-api-key", key}};
    const auto chat = runtime.push(gateway_event("POST", "/chat", "", json{{"content", "count these words"}}.dump(), auth).dump());
    const auto answered = buffered_answer(runtime.wait_for(chat));
    INFO(answered.dump());
    REQUIRE(answered["statusCode"] == 200);
    const auto tokens = json::parse(answered["body"].get<std::string>())["usage"]["total_tokens"].get<std::int64_t>();

    // The record is written by the recorder's thread after the answer, and the runtime waits for
    // it before asking for the next event (Lambda may freeze the instance while it asks): the very
    // next invocation finds it, with no waiting.
    const auto asked = runtime.push(gateway_event("GET", "/v1/usage", "days=1", std::nullopt, auth).dump());
    const auto answer = buffered_answer(runtime.wait_for(asked));
    INFO(answer.dump());
    REQUIRE(answer["statusCode"] == 200);
    const json usage = json::parse(answer["body"].get<std::string>());
    INFO(usage.dump());
    CHECK(usage["team_id"] == "lambda-team");
    CHECK(usage["team_name"] == "Lambda");
    CHECK(usage["summary"]["total_requests"] == 1);
    CHECK(usage["summary"]["total_tokens"] == tokens);
    CHECK(bootstrap.log().find(key.substr(3)) == std::string::npos);
}

TEST_CASE("on a dynamodb:// database, the bootstrap's instances count one limit in TABLE-limits: two instances let a team's 3 per minute "
          "through, not 6") {
    const std::string history = "history-" + std::to_string(std::random_device{}());
    chatkit::dynamodb_key_directory keys{chatkit::dynamodb_key_directory_options{.table = history + "-keys"}, dynalite().aws_environment()};
    test_support::create_table(keys.client(), chatkit::dynamodb_store::create_table_input(history));
    test_support::create_table(keys.client(), chatkit::dynamodb_key_directory::create_table_input(history + "-keys"));
    test_support::create_table(keys.client(), chatkit::dynamodb_usage_store::create_table_input(history + "-usage"));
    test_support::create_table(keys.client(), chatkit::dynamodb_counter_store::create_table_input(history + "-limits"));
    chatkit::team_record team{"lambda-team", "Lambda", {}, chatkit::now_unix_ms()};
    team.limits.requests_per_minute = 3;
    REQUIRE(keys.create_team(team));
    const std::string key = create_key(keys, "lambda-team");

    // A per-minute limit counts UTC calendar minutes: keep the six requests inside one.
    if (const auto into = chatkit::now_unix_ms() % 60'000; into > 45'000)
        std::this_thread::sleep_for(std::chrono::milliseconds(60'000 - into + 200));
    fake_lambda_runtime runtime;
    const std::map<std::string, std::string> env{{"CHAT_DATABASE_URL", "dynamodb://" + history + "?region=us-east-1"},
                                                 {"CHAT_AUTH", "keys"},
                                                 {"AWS_ENDPOINT_URL_DYNAMODB", dynalite().endpoint()}};
    bootstrap_process first{runtime, env}, second{runtime, env};
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i)
        ids.push_back(runtime.push(gateway_event("POST", "/chat", "", json{{"content", "hello"}}.dump(), {{"x-api-key", key}}).dump()));
    int ok = 0, limited = 0;
    for (const auto& id : ids) {
        const auto answer = buffered_answer(runtime.wait_for(id));
        INFO(answer.dump());
        if (answer["statusCode"] == 200) ++ok;
        else if (answer["statusCode"] == 429) {
            ++limited;
            CHECK(json::parse(answer["body"].get<std::string>())["error"]["code"] == "rate_limit_exceeded");
        }
    }
    CHECK(ok == 3);
    CHECK(limited == 3);
    auto items = keys.client().call("Scan", {{"TableName", history + "-limits"}});
    REQUIRE(items);
    REQUIRE((*items)["Items"].size() == 1);
    CHECK((*items)["Items"][0]["counter"]["S"].get<std::string>().starts_with("team#lambda-team#rpm#"));
    CHECK((*items)["Items"][0]["n"]["N"] == "3");
}
