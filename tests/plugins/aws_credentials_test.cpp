// The AWS credentials chain, region and endpoint resolution: real temporary files for the shared
// config, a real container-credentials endpoint on 127.0.0.1, and an injected environment so no
// test ever reads the real HOME or process environment.
#include "../support/untrusted_tls_server.hpp"

#include <chatkit/aws/credentials.hpp>

#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdlib.h>

#include <atomic>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

using chatkit::aws::credentials_provider;
using chatkit::aws::environment;
using namespace std::chrono_literals;

namespace {

constexpr const char* env_secret = "ENV-SECRET-wJalrXUtnFEMI";
constexpr const char* file_secret = "FILE-SECRET-K7MDENGbPxRfiCY";
constexpr const char* session_secret = "SESSION-TOKEN-FwoGZXIvYXdzE";
constexpr const char* bearer = "BEARER-TOKEN-container-42";

environment fake_env(std::map<std::string, std::string> vars, std::string home) {
    return {[vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
                if (auto it = vars.find(name); it != vars.end()) return it->second;
                return std::nullopt;
            },
            std::move(home)};
}

// A fresh directory, used as HOME or to hold files; removed with everything in it.
struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        auto pattern = (std::filesystem::temp_directory_path() / "chatkit-aws-creds-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    std::string home() const { return path.string(); }
    std::string write(const std::string& relative, const std::string& text) const {
        const auto p = path / relative;
        std::filesystem::create_directories(p.parent_path());
        std::ofstream(p, std::ios::binary) << text;
        return p.string();
    }
};

std::string iso8601(std::chrono::system_clock::time_point tp) {
    const std::time_t t = std::chrono::system_clock::to_time_t(tp);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// A container credentials endpoint (what the ECS agent or EKS Pod Identity agent serves).
struct container_endpoint {
    httplib::Server server;
    std::thread thread;
    int port = 0;
    std::atomic<int> requests{0};
    std::atomic<int> status{200};
    std::atomic<int> expires_in_seconds{3600};
    std::mutex mutex;
    std::vector<std::string> authorizations;
    std::string body_override;

    container_endpoint() {
        server.Get("/creds", [this](const httplib::Request& req, httplib::Response& res) {
            const int n = ++requests;
            const std::lock_guard lock{mutex};
            authorizations.push_back(req.get_header_value("Authorization"));
            res.status = status;
            if (!body_override.empty()) return res.set_content(body_override, "application/json");
            nlohmann::json body = {
                {"AccessKeyId", "AKID-" + std::to_string(n)},
                {"SecretAccessKey", "CONTAINER-SECRET-" + std::to_string(n)},
                {"Token", std::string(session_secret) + "-" + std::to_string(n)},
                {"Expiration", iso8601(std::chrono::system_clock::now() + std::chrono::seconds(expires_in_seconds.load()))}};
            res.set_content(body.dump(), "application/json");
        });
        port = server.bind_to_any_port("127.0.0.1");
        REQUIRE(port > 0);
        thread = std::thread([this] { server.listen_after_bind(); });
        while (!server.is_running()) std::this_thread::sleep_for(1ms);
    }
    ~container_endpoint() {
        server.stop();
        thread.join();
    }
    container_endpoint(const container_endpoint&) = delete;
    container_endpoint& operator=(const container_endpoint&) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port) + "/creds"; }
    std::string authorization(std::size_t i) {
        const std::lock_guard lock{mutex};
        return i < authorizations.size() ? authorizations[i] : std::string("<no request>");
    }
};

void require_no_secret(const std::string& text) {
    for (const std::string s : {env_secret, file_secret, session_secret, bearer, "CONTAINER-SECRET"}) {
        INFO(text);
        CHECK(text.find(s) == std::string::npos);
    }
}

const char* const credentials_file = R"(# a comment
; another comment

[default]
aws_access_key_id=AKID-DEFAULT
aws_secret_access_key   =   FILE-SECRET-K7MDENGbPxRfiCY

[dev]
  aws_access_key_id = AKID-DEV
AWS_Secret_Access_Key = FILE-SECRET-K7MDENGbPxRfiCY-dev
aws_session_token = SESSION-TOKEN-FwoGZXIvYXdzE-dev
)";

} // namespace

TEST_CASE("environment variables win over the shared credentials file") {
    temp_dir home;
    home.write(".aws/credentials", credentials_file);
    credentials_provider p{fake_env(
        {{"AWS_ACCESS_KEY_ID", "AKID-ENV"}, {"AWS_SECRET_ACCESS_KEY", env_secret}, {"AWS_SESSION_TOKEN", session_secret}}, home.home())};
    CHECK(p.source() == "none");
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-ENV");
    CHECK(c->secret_access_key == env_secret);
    CHECK(c->session_token == session_secret);
    CHECK_FALSE(c->expiration);
    CHECK(p.source() == "environment");
}

TEST_CASE("an access key id without a secret in the environment falls through to the files") {
    temp_dir home;
    home.write(".aws/credentials", credentials_file);
    credentials_provider p{fake_env({{"AWS_ACCESS_KEY_ID", "AKID-ENV"}, {"AWS_SECRET_ACCESS_KEY", ""}}, home.home())};
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-DEFAULT");
}

TEST_CASE("the default profile is read from ~/.aws/credentials despite spaces and comments") {
    temp_dir home;
    home.write(".aws/credentials", credentials_file);
    credentials_provider p{fake_env({}, home.home())};
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-DEFAULT");
    CHECK(c->secret_access_key == file_secret);
    CHECK(c->session_token.empty());
    CHECK(p.source() == "shared credentials file (profile default)");
    require_no_secret(p.source());
}

TEST_CASE("AWS_PROFILE selects a named profile, with its session token") {
    temp_dir home;
    home.write(".aws/credentials", credentials_file);
    credentials_provider p{fake_env({{"AWS_PROFILE", "dev"}}, home.home())};
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-DEV");
    CHECK(c->secret_access_key == std::string(file_secret) + "-dev");
    CHECK(c->session_token == std::string(session_secret) + "-dev");
    CHECK(p.source() == "shared credentials file (profile dev)");
}

TEST_CASE("a [profile dev] section of the config file supplies credentials") {
    temp_dir home;
    home.write(".aws/config", "[default]\nregion = eu-west-1\n\n[profile dev]\r\naws_access_key_id = AKID-CONFIG-DEV\r\n"
                              "aws_secret_access_key = FILE-SECRET-K7MDENGbPxRfiCY\r\n[dev]\naws_access_key_id = WRONG\n");
    credentials_provider p{fake_env({{"AWS_PROFILE", "dev"}}, home.home())};
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-CONFIG-DEV");
    CHECK(c->secret_access_key == file_secret);
}

TEST_CASE("AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE move the shared files") {
    temp_dir home, elsewhere;
    home.write(".aws/credentials", credentials_file);
    const auto creds = elsewhere.write("creds.ini", "[default]\naws_access_key_id = AKID-MOVED\naws_secret_access_key = s\n");
    credentials_provider p{fake_env({{"AWS_SHARED_CREDENTIALS_FILE", creds}}, home.home())};
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-MOVED");

    const auto config = elsewhere.write("config.ini", "[profile ops]\naws_access_key_id = AKID-OPS\naws_secret_access_key = s\n");
    credentials_provider q{fake_env({{"AWS_CONFIG_FILE", config}, {"AWS_PROFILE", "ops"}}, home.home())};
    auto d = q.get();
    REQUIRE(d);
    CHECK(d->access_key_id == "AKID-OPS");
}

TEST_CASE("region: AWS_REGION, then AWS_DEFAULT_REGION, then the profile's region in the config file") {
    using chatkit::aws::resolve_region;
    temp_dir home, elsewhere;
    home.write(".aws/config", "[default]\nregion = eu-west-1\n[profile dev]\n# comment\nregion=ap-south-1\n");
    CHECK(resolve_region(fake_env({{"AWS_REGION", "us-east-1"}, {"AWS_DEFAULT_REGION", "us-west-2"}}, home.home())) == "us-east-1");
    CHECK(resolve_region(fake_env({{"AWS_DEFAULT_REGION", "us-west-2"}}, home.home())) == "us-west-2");
    CHECK(resolve_region(fake_env({}, home.home())) == "eu-west-1");
    CHECK(resolve_region(fake_env({{"AWS_PROFILE", "dev"}}, home.home())) == "ap-south-1");
    CHECK_FALSE(resolve_region(fake_env({{"AWS_PROFILE", "missing"}}, home.home())));
    const auto config = elsewhere.write("config", "[default]\nregion = sa-east-1\n");
    CHECK(resolve_region(fake_env({{"AWS_CONFIG_FILE", config}}, home.home())) == "sa-east-1");
    CHECK_FALSE(resolve_region(fake_env({}, elsewhere.home())));
    CHECK_FALSE(resolve_region(environment{}));
}

TEST_CASE("endpoint override: the service's variable, then AWS_ENDPOINT_URL") {
    using chatkit::aws::endpoint_override;
    CHECK(endpoint_override(fake_env({{"AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "http://a"}, {"AWS_ENDPOINT_URL", "http://b"}}, ""),
                            "BEDROCK_RUNTIME") == "http://a");
    CHECK(endpoint_override(fake_env({{"AWS_ENDPOINT_URL_S3", "http://s3"}, {"AWS_ENDPOINT_URL", "http://b"}}, ""), "BEDROCK_RUNTIME") ==
          "http://b");
    CHECK_FALSE(endpoint_override(fake_env({{"AWS_ENDPOINT_URL_S3", "http://s3"}}, ""), "BEDROCK_RUNTIME"));
    CHECK_FALSE(endpoint_override(fake_env({{"AWS_ENDPOINT_URL", "http://b"}, {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"}}, ""), "S3"));
}

TEST_CASE("container credentials: the token is sent and the JSON with its expiration is parsed") {
    temp_dir home;
    container_endpoint endpoint;
    credentials_provider p{
        fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}, {"AWS_CONTAINER_AUTHORIZATION_TOKEN", bearer}}, home.home())};
    const auto before = std::chrono::system_clock::now();
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-1");
    CHECK(c->secret_access_key == "CONTAINER-SECRET-1");
    CHECK(c->session_token == std::string(session_secret) + "-1");
    REQUIRE(c->expiration);
    CHECK(*c->expiration > before + 3590s);
    CHECK(*c->expiration < before + 3610s);
    CHECK(endpoint.authorization(0) == bearer);
    CHECK(p.source() == "container credentials");

    auto again = p.get(); // far from expiry: from the cache
    REQUIRE(again);
    CHECK(again->access_key_id == "AKID-1");
    CHECK(endpoint.requests == 1);
}

TEST_CASE("container credentials: the token file wins over the variable and is re-read at each refresh") {
    temp_dir home;
    container_endpoint endpoint;
    endpoint.expires_in_seconds = 2;
    const auto token_file = home.write("token", "file-token-1\n");
    credentials_provider p{fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()},
                                     {"AWS_CONTAINER_AUTHORIZATION_TOKEN", bearer},
                                     {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file}},
                                    home.home()),
                           5s};
    REQUIRE(p.get());
    CHECK(endpoint.authorization(0) == "file-token-1");
    home.write("token", "file-token-2");
    REQUIRE(p.get());
    CHECK(endpoint.authorization(1) == "file-token-2");
}

TEST_CASE("container credentials are refreshed before they expire") {
    temp_dir home;
    container_endpoint endpoint;
    endpoint.expires_in_seconds = 2;
    credentials_provider p{fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}}, home.home()), 5s};
    auto first = p.get();
    REQUIRE(first);
    CHECK(first->access_key_id == "AKID-1");
    CHECK(endpoint.authorization(0).empty()); // no token configured: no Authorization header
    auto second = p.get();                    // still valid, but within refresh_before of expiry
    REQUIRE(second);
    CHECK(second->access_key_id == "AKID-2");
    CHECK(endpoint.requests == 2);

    endpoint.expires_in_seconds = 3600;
    auto third = p.get();
    REQUIRE(third);
    CHECK(third->access_key_id == "AKID-3");
    REQUIRE(p.get());
    CHECK(endpoint.requests == 3);
}

TEST_CASE("a failed refresh keeps the old credentials while they are still valid") {
    temp_dir home;
    container_endpoint endpoint;
    endpoint.expires_in_seconds = 60;
    credentials_provider p{fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}}, home.home()), 300s};
    REQUIRE(p.get());
    endpoint.status = 500;
    auto c = p.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-1");
    CHECK(endpoint.requests == 2);
    REQUIRE(p.get()); // within the retry pause: no request
    CHECK(endpoint.requests == 2);
}

TEST_CASE("expired credentials are not returned when the refresh fails") {
    temp_dir home;
    container_endpoint endpoint;
    endpoint.expires_in_seconds = -10;
    credentials_provider p{
        fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}, {"AWS_CONTAINER_AUTHORIZATION_TOKEN", bearer}}, home.home())};
    REQUIRE(p.get());
    endpoint.status = 503;
    auto c = p.get();
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::unavailable);
    CHECK(c.error().code == "aws_container_credentials_failed");
    CHECK(c.error().message.find("503") != std::string::npos);
    require_no_secret(c.error().message);
    CHECK(p.source() == "none");
}

TEST_CASE("a container response with secrets but bad JSON is rejected without quoting it") {
    temp_dir home;
    container_endpoint endpoint;
    endpoint.body_override = std::string("{\"AccessKeyId\":\"AKID\",\"SecretAccessKey\":\"CONTAINER-SECRET-9\",\"Token\":\"") +
                             session_secret + "\"";
    credentials_provider p{
        fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}, {"AWS_CONTAINER_AUTHORIZATION_TOKEN", bearer}}, home.home())};
    auto c = p.get();
    REQUIRE_FALSE(c);
    CHECK(c.error().message.find("AccessKeyId/SecretAccessKey") != std::string::npos);
    require_no_secret(c.error().message);
}

TEST_CASE("FULL_URI over plain http to a non-loopback host is refused") {
    temp_dir home;
    for (const std::string url : {"http://example.com/creds", "http://10.0.0.1/creds", "http://169.254.170.2.evil.example/creds",
                                  "http://[fe80::1]/creds", "ftp://127.0.0.1/creds"}) {
        INFO(url);
        credentials_provider p{
            fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", url}, {"AWS_CONTAINER_AUTHORIZATION_TOKEN", bearer}}, home.home())};
        auto c = p.get();
        REQUIRE_FALSE(c);
        CHECK(c.error().code == "aws_container_uri_refused");
        require_no_secret(c.error().message);
    }
    credentials_provider p{fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://example.com/creds"}}, home.home())};
    auto c = p.get();
    REQUIRE_FALSE(c);
    CHECK(c.error().message.find("refusing plain http to host 'example.com'") != std::string::npos);
    CHECK(c.error().message.find("https") != std::string::npos);
}

TEST_CASE("plain http to any loopback address is allowed") {
    temp_dir home;
    for (const std::string url : {"http://127.0.0.2:1/creds", "http://[::1]:1/creds", "http://localhost:1/creds"}) {
        INFO(url);
        credentials_provider p{fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", url}}, home.home())};
        auto c = p.get();
        REQUIRE_FALSE(c); // nothing listens on port 1: refused by the network, not by the rule
        CHECK(c.error().code == "aws_container_credentials_failed");
    }
}

TEST_CASE("https to the container endpoint verifies the server certificate") {
    test_support::untrusted_tls_server untrusted;
    temp_dir home;
    credentials_provider p{
        fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", "https://127.0.0.1:" + std::to_string(untrusted.port()) + "/creds"},
                  {"AWS_CONTAINER_AUTHORIZATION_TOKEN", bearer}},
                 home.home())};
    auto c = p.get();
    REQUIRE_FALSE(c);
    CHECK(c.error().code == "aws_container_credentials_failed");
    CHECK(c.error().message.find("SSL") != std::string::npos);
    require_no_secret(c.error().message);
    CHECK(untrusted.requests() == 0);
}

TEST_CASE("with nothing configured get() fails with aws_credentials_missing") {
    temp_dir home;
    credentials_provider p{fake_env({{"AWS_PROFILE", "dev"}}, home.home())};
    auto c = p.get();
    REQUIRE_FALSE(c);
    CHECK(c.error().kind == chatkit::error_kind::unavailable);
    CHECK(c.error().code == "aws_credentials_missing");
    CHECK(c.error().message ==
          "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials, or container credentials");
    CHECK(p.source() == "none");
    CHECK_FALSE(credentials_provider{environment{}}.get());
}

TEST_CASE("an empty token file sends no Authorization header") {
    temp_dir home;
    container_endpoint endpoint;
    const auto token_file = home.write("token", "");
    credentials_provider p{fake_env(
        {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}, {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file}}, home.home())};
    REQUIRE(p.get());
    CHECK(endpoint.authorization(0).empty());
}

TEST_CASE("secrets never appear in source()") {
    temp_dir home;
    container_endpoint endpoint;
    const auto token_file = home.write("token", bearer);
    for (const auto& vars : std::vector<std::map<std::string, std::string>>{
             {{"AWS_ACCESS_KEY_ID", "AKID"}, {"AWS_SECRET_ACCESS_KEY", env_secret}, {"AWS_SESSION_TOKEN", session_secret}},
             {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}, {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file}}}) {
        credentials_provider p{fake_env(vars, home.home())};
        REQUIRE(p.get());
        require_no_secret(p.source());
    }
}

TEST_CASE("a moved provider keeps its cache, and concurrent callers share one fetch") {
    temp_dir home;
    container_endpoint endpoint;
    credentials_provider p{fake_env({{"AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url()}}, home.home())};
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int i = 0; i < 8; ++i)
        threads.emplace_back([&] {
            if (auto c = p.get(); c && c->access_key_id == "AKID-1") ++ok;
        });
    for (auto& t : threads) t.join();
    CHECK(ok == 8);
    credentials_provider moved = std::move(p);
    auto c = moved.get();
    REQUIRE(c);
    CHECK(c->access_key_id == "AKID-1");
    CHECK(endpoint.requests == 1);
    CHECK(moved.source() == "container credentials");
}

TEST_CASE("container expiration times parse as ISO-8601 UTC") {
    using chatkit::aws::detail::parse_time;
    using namespace std::chrono;
    const auto expected = sys_days{2026y / November / 24} + 12h;
    CHECK(parse_time("2026-11-24T12:00:00Z") == expected);
    CHECK(parse_time("2026-11-24T12:00:00.123Z") == expected);
    CHECK(parse_time("2026-11-24T14:00:00+02:00") == expected);
    CHECK_FALSE(parse_time("2026-11-24 12:00:00"));
    CHECK_FALSE(parse_time("2026-02-30T12:00:00Z"));
    CHECK_FALSE(parse_time("2026-11-24T12:00:00Zjunk"));
}
