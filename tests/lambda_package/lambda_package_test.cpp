// dist/lambda.zip, as scripts/lambda-zip packs it (the zip scripts/package-lambda writes): its
// layout, then the packaged bootstrap unpacked into a bare chroot and run there as Lambda runs it,
// with only Lambda's environment, against a local Runtime API with real-shaped API Gateway v2 and
// Function URL events. Bare: nothing of this machine's file system (no /lib, /etc or /proc) but
// what the zip leaves to provided.al2023's image, OpenSSL's two libraries in /usr/lib64 (this
// machine's copies standing in for Amazon Linux's). That it answers at all shows it loads the
// bundled loader and libraries, and those two from where Lambda's LD_LIBRARY_PATH finds them.
// The zip made with --self-contained carries OpenSSL too, and runs in a chroot with nothing else.
#include "../support/aws_emulators.hpp"
#include "../support/fake_lambda_runtime.hpp"
#include "../support/fake_openai.hpp"
#include "../support/lambda_answers.hpp"
#include "../support/lambda_events.hpp"
#include "../support/lambda_sandbox.hpp"
#include "../support/untrusted_tls_server.hpp"

#include <chatkit/aws/secrets_manager.hpp>
#include <chatkit/dynamodb_counter_store.hpp>
#include <chatkit/dynamodb_store.hpp>
#include <chatkit/dynamodb_usage_store.hpp>

#include <nlohmann/json.hpp>

#include <catch2/catch.hpp>

#include <elf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if !defined(LAMBDA_ZIP_PATH) || !defined(SELF_CONTAINED_ZIP_PATH) || !defined(NEWER_OPENSSL_PATH) || !defined(CHATKIT_SOURCE_DIR)
#error                                                                                                                                     \
    "LAMBDA_ZIP_PATH and SELF_CONTAINED_ZIP_PATH must name the packaged zips, NEWER_OPENSSL_PATH a program, CHATKIT_SOURCE_DIR the sources"
#endif

using nlohmann::json;
using test_support::buffered_answer;
using test_support::fake_lambda_runtime;
using test_support::function_url_event;
using test_support::gateway_event;
using test_support::lambda_environment;
using test_support::lambda_sandbox;

namespace {

const std::filesystem::path zip_path{LAMBDA_ZIP_PATH};
const std::filesystem::path self_contained_zip_path{SELF_CONTAINED_ZIP_PATH};
constexpr const char* loader = "/var/task/lib/ld-linux-x86-64.so.2";

// What Lambda sets, plus the two settings a zip deployment of sample_server needs.
std::map<std::string, std::string> function_environment(const fake_lambda_runtime& runtime, std::map<std::string, std::string> extra = {}) {
    extra.try_emplace("CHAT_DATABASE_URL", "sqlite:/tmp/chat.db"); // only /tmp is writable on Lambda
    extra.try_emplace("CHAT_PROVIDER", "echo");
    return lambda_environment(runtime.address(), extra);
}

// Queues `event` and returns what bootstrap posted for it; a timeout reports bootstrap's output.
fake_lambda_runtime::posted invoke(fake_lambda_runtime& runtime, const test_support::child_process& bootstrap, const json& event) {
    const auto id = runtime.push(event.dump());
    try {
        return runtime.wait_for(id);
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string{e.what()} + "\nbootstrap's output:\n" + bootstrap.log());
    }
}

json body_of(const json& answer) { return json::parse(answer["body"].get<std::string>()); }

struct zip_entry {
    std::string mode; // as `ls -l` shows it, e.g. -rwxr-xr-x
    std::string name;
};

// The entries of a zip, from `unzip -Z` (zipinfo): "-rwxr-xr-x 3.0 unx 730608 b- defN 80-Jan-02 00:00 bootstrap".
std::vector<zip_entry> zip_entries(const std::filesystem::path& zip) {
    const auto command = "unzip -Z '" + zip.string() + "'";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) throw std::runtime_error("cannot run " + command);
    std::string output;
    char buffer[4096];
    while (const auto n = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
    if (::pclose(pipe) != 0) throw std::runtime_error(command + " failed (is unzip installed?)");
    std::vector<zip_entry> entries;
    std::istringstream lines{output};
    for (std::string line; std::getline(lines, line);) {
        std::istringstream fields{line};
        std::vector<std::string> f{std::istream_iterator<std::string>{fields}, {}};
        if (f.size() == 9 && f[0].size() == 10 && std::string_view{"-dl"}.find(f[0][0]) != std::string_view::npos)
            entries.push_back({f[0], f[8]});
    }
    return entries;
}

// PT_INTERP and DT_RPATH / DT_RUNPATH of a 64-bit ELF file, read from its headers.
struct elf_paths {
    std::string interpreter;
    std::optional<std::string> rpath, runpath;
};

elf_paths read_elf_paths(const std::filesystem::path& file) {
    std::ifstream in{file, std::ios::binary};
    const std::string bytes{std::istreambuf_iterator<char>{in}, {}};
    const auto at = [&](std::size_t offset, std::size_t size) {
        if (offset + size > bytes.size()) throw std::runtime_error(file.string() + ": truncated ELF file");
        return bytes.data() + offset;
    };
    Elf64_Ehdr header;
    std::memcpy(&header, at(0, sizeof header), sizeof header);
    REQUIRE(std::memcmp(header.e_ident, ELFMAG, SELFMAG) == 0);
    REQUIRE(header.e_ident[EI_CLASS] == ELFCLASS64);
    std::vector<Elf64_Phdr> segments(header.e_phnum);
    for (std::size_t i = 0; i < segments.size(); ++i)
        std::memcpy(&segments[i], at(header.e_phoff + i * header.e_phentsize, sizeof(Elf64_Phdr)), sizeof(Elf64_Phdr));
    const auto file_offset = [&](Elf64_Addr address) -> std::size_t { // a virtual address in the file
        for (const auto& s : segments)
            if (s.p_type == PT_LOAD && address >= s.p_vaddr && address < s.p_vaddr + s.p_filesz) return address - s.p_vaddr + s.p_offset;
        throw std::runtime_error(file.string() + ": address outside every loaded segment");
    };
    elf_paths paths;
    for (const auto& s : segments) {
        if (s.p_type == PT_INTERP) paths.interpreter = std::string{at(s.p_offset, s.p_filesz)}; // NUL-terminated
        if (s.p_type != PT_DYNAMIC) continue;
        std::vector<Elf64_Dyn> entries(s.p_filesz / sizeof(Elf64_Dyn));
        std::memcpy(entries.data(), at(s.p_offset, entries.size() * sizeof(Elf64_Dyn)), entries.size() * sizeof(Elf64_Dyn));
        Elf64_Addr strtab = 0;
        for (const auto& d : entries)
            if (d.d_tag == DT_STRTAB) strtab = d.d_un.d_ptr;
        for (const auto& d : entries) {
            if (d.d_tag == DT_RPATH) paths.rpath = std::string{at(file_offset(strtab) + d.d_un.d_val, 1)};
            if (d.d_tag == DT_RUNPATH) paths.runpath = std::string{at(file_offset(strtab) + d.d_un.d_val, 1)};
        }
    }
    return paths;
}

bool executable_by_all(std::filesystem::perms p) {
    using std::filesystem::perms;
    return (p & perms::owner_exec) != perms::none && (p & perms::group_exec) != perms::none && (p & perms::others_exec) != perms::none;
}

// The name and mode of each entry, after checking that every one is a regular file at the root or in lib/.
std::map<std::string, std::string> zip_layout(const std::filesystem::path& zip) {
    std::map<std::string, std::string> modes;
    for (const auto& e : zip_entries(zip)) {
        INFO(e.mode << " " << e.name);
        CHECK(e.mode[0] == '-'); // regular files only: no directories, no symlinks
        CHECK((e.name == "bootstrap" || (e.name.starts_with("lib/") && e.name.find('/', 4) == std::string::npos)));
        modes[e.name] = e.mode;
    }
    return modes;
}

} // namespace

TEST_CASE("lambda.zip holds an executable bootstrap at its root and its loader and libraries in lib/, nothing else") {
    auto modes = zip_layout(zip_path);
    REQUIRE(modes.count("bootstrap") == 1);
    CHECK(modes["bootstrap"] == "-rwxr-xr-x");
    REQUIRE(modes.count("lib/ld-linux-x86-64.so.2") == 1);
    CHECK(modes["lib/ld-linux-x86-64.so.2"] == "-rwxr-xr-x"); // the kernel execs the interpreter too
    for (const auto* lib : {"lib/libc.so.6", "lib/libm.so.6", "lib/libstdc++.so.6"}) CHECK(modes.count(lib) == 1);
    // OpenSSL is the image's (scripts/lambda-zip): 2 MB of the zip's 6.9 would be its.
    for (const auto& lib : test_support::image_libraries) CHECK(modes.count("lib/" + lib) == 0);
    // SQLite, yaml-cpp, hiredis, spdlog and fmt are linked into bootstrap (sample_server/CMakeLists.txt):
    // their shared libraries would only add to the zip. The chroot cases below keep history in SQLite.
    for (const auto* lib :
         {"lib/libsqlite3.so.0", "lib/libyaml-cpp.so.0.7", "lib/libhiredis.so.0.14", "lib/libspdlog.so.1.10", "lib/libfmt.so.9"})
        CHECK(modes.count(lib) == 0);

    lambda_sandbox sandbox{zip_path};
    CHECK(executable_by_all(std::filesystem::status(sandbox.task_root() / "bootstrap").permissions()));
    const auto paths = read_elf_paths(sandbox.task_root() / "bootstrap");
    CHECK(paths.interpreter == loader);
    CHECK(paths.rpath == "/var/task/lib"); // DT_RPATH: also searched for the libraries' own dependencies
    CHECK_FALSE(paths.runpath);
}

TEST_CASE("lambda.zip unpacked in a bare chroot answers /health, /chat, /history, /v1/chat/completions and /v1/models") {
    fake_lambda_runtime runtime;
    lambda_sandbox sandbox{zip_path};
    std::vector<std::string> top, image;
    for (const auto& entry : std::filesystem::directory_iterator{sandbox.root()}) top.push_back(entry.path().filename());
    for (const auto& entry : std::filesystem::recursive_directory_iterator{sandbox.root() / "usr"})
        image.push_back(std::filesystem::relative(entry.path(), sandbox.root()));
    std::sort(top.begin(), top.end());
    std::sort(image.begin(), image.end());
    REQUIRE(top == std::vector<std::string>{"tmp", "usr", "var"}); // no /lib, /etc, /proc from the host
    REQUIRE(image == std::vector<std::string>{"usr/lib64", "usr/lib64/libcrypto.so.3", "usr/lib64/libssl.so.3"});
    const auto bootstrap = sandbox.start(function_environment(runtime));

    const auto health = invoke(runtime, bootstrap, gateway_event("GET", "/health"));
    const auto health_answer = buffered_answer(health);
    CHECK(health_answer["statusCode"] == 200);
    CHECK(health_answer["headers"]["X-Request-ID"] == health.request_id);
    CHECK(body_of(health_answer)["status"] == "ok");
    CHECK(body_of(health_answer)["components"]["store"]["status"] == "ok");

    const auto chat = buffered_answer(invoke(
        runtime, bootstrap, gateway_event("POST", "/chat", "", json{{"user_id", "alice"}, {"content", "hello from the chroot"}}.dump())));
    REQUIRE(chat["statusCode"] == 200);
    CHECK(chat["headers"]["Content-Type"] == "application/json");
    CHECK(body_of(chat)["content"] == "hello from the chroot");
    CHECK(body_of(chat)["model"] == "echo-1");

    const auto history = buffered_answer(invoke(runtime, bootstrap, gateway_event("GET", "/history/alice", "limit=10")));
    REQUIRE(history["statusCode"] == 200);
    const auto messages = body_of(history)["messages"];
    REQUIRE(messages.size() == 2);
    CHECK(messages[0]["role"] == "user");
    CHECK(messages[0]["content"] == "hello from the chroot");
    CHECK(messages[1]["role"] == "assistant");
    CHECK(std::filesystem::exists(sandbox.root() / "tmp/chat.db")); // the SQLite file, in the chroot's /tmp

    const auto completion = buffered_answer(invoke(
        runtime, bootstrap,
        gateway_event("POST", "/v1/chat/completions", "",
                      json{{"model", "echo-1"}, {"messages", {{{"role", "user"}, {"content", "an OpenAI-style question"}}}}}.dump())));
    REQUIRE(completion["statusCode"] == 200);
    const auto completion_body = body_of(completion);
    CHECK(completion_body["object"] == "chat.completion");
    CHECK(completion_body["choices"][0]["message"]["role"] == "assistant");
    CHECK(completion_body["choices"][0]["message"]["content"] == "an OpenAI-style question");

    const auto models = buffered_answer(invoke(runtime, bootstrap, gateway_event("GET", "/v1/models")));
    REQUIRE(models["statusCode"] == 200);
    CHECK(body_of(models)["object"] == "list");
    CHECK(body_of(models)["data"][0]["id"] == "echo-1");
}

TEST_CASE("lambda.zip unpacked in a bare chroot streams a chat through a Function URL behind the HTTP integration prelude") {
    fake_lambda_runtime runtime;
    lambda_sandbox sandbox{zip_path};
    const auto bootstrap = sandbox.start(function_environment(runtime, {{"CHAT_FUNCTION_URL_INVOKE_MODE", "RESPONSE_STREAM"}}));
    const auto posted = invoke(
        runtime, bootstrap,
        function_url_event("POST", "/chat",
                           json{{"messages", {{{"role", "user"}, {"content", "one two three"}}}}, {"stream", true}}.dump()));
    const auto [prelude, sse] = test_support::streamed(posted);
    CHECK(prelude["statusCode"] == 200);
    CHECK(prelude["headers"]["Content-Type"] == "text/event-stream");
    CHECK(prelude["headers"]["X-Request-ID"] == posted.request_id);
    test_support::check_echoed_stream(sse, posted.request_id);
}

TEST_CASE("lambda.zip unpacked in a bare chroot answers an invalid JSON body with 400") {
    fake_lambda_runtime runtime;
    lambda_sandbox sandbox{zip_path};
    const auto bootstrap = sandbox.start(function_environment(runtime));
    const auto answer = buffered_answer(invoke(runtime, bootstrap, gateway_event("POST", "/chat", "", std::string{"{\"content\": "})));
    test_support::check_error_envelope(answer, 400, "invalid_request_error");
}

TEST_CASE("lambda.zip unpacked in a bare chroot resolves an upstream's name through /etc/hosts with the bundled libc alone") {
    // glibc 2.34 and later carry the files and dns lookups themselves: no NSS module is loaded.
    fake_lambda_runtime runtime;
    test_support::fake_openai upstream;
    lambda_sandbox sandbox{zip_path};
    std::filesystem::create_directories(sandbox.root() / "etc");
    std::ofstream{sandbox.root() / "etc/hosts"} << "127.0.0.1 localhost\n127.0.0.1 openai.internal.test\n";
    std::ofstream{sandbox.root() / "etc/nsswitch.conf"} << "hosts: files dns\n";
    const auto bootstrap = sandbox.start(
        function_environment(runtime, {{"CHAT_PROVIDER", "openai"},
                                       {"OPENAI_API_KEY", "sk-test"},
                                       {"OPENAI_BASE_URL", "http://openai.internal.test:" + std::to_string(upstream.port()) + "/v1"},
                                       {"CHAT_UPSTREAM_MAX_RETRIES", "0"}}));
    const auto answer = buffered_answer(
        invoke(runtime, bootstrap, gateway_event("POST", "/chat", "", json{{"content", "by name"}}.dump())));
    INFO(answer.dump());
    REQUIRE(answer["statusCode"] == 200);
    CHECK(body_of(answer)["content"] == "echo: by name");
    CHECK(upstream.requests().size() == 1);
}

TEST_CASE("lambda.zip unpacked in a bare chroot verifies HTTPS upstreams against Amazon Linux's CA bundle in /etc/pki/tls/certs") {
    fake_lambda_runtime runtime;
    test_support::untrusted_tls_server upstream; // self-signed: trusted only where its certificate is a CA
    lambda_sandbox sandbox{zip_path};
    const auto env = function_environment(runtime, {{"CHAT_PROVIDER", "openai"},
                                                    {"OPENAI_API_KEY", "sk-test"},
                                                    {"OPENAI_BASE_URL", "https://127.0.0.1:" + std::to_string(upstream.port()) + "/v1"},
                                                    {"CHAT_UPSTREAM_MAX_RETRIES", "0"},
                                                    {"CHAT_DATABASE_URL", "none"}});
    const auto ask = gateway_event("POST", "/chat", "", json{{"content", "over TLS"}, {"cache", false}}.dump());

    SECTION("the certificate in the bundle: the handshake succeeds and the request reaches the upstream") {
        std::filesystem::create_directories(sandbox.root() / "etc/pki/tls/certs");
        std::ofstream{sandbox.root() / "etc/pki/tls/certs/ca-bundle.crt"} << upstream.certificate_pem();
        const auto bootstrap = sandbox.start(env);
        invoke(runtime, bootstrap, ask); // the fake answers {}, which is no chat completion: the status does not matter
        CHECK(upstream.requests() >= 1);
    }
    SECTION("no bundle: nothing is trusted and no request is sent") {
        const auto bootstrap = sandbox.start(env);
        const auto answer = buffered_answer(invoke(runtime, bootstrap, ask));
        INFO(answer.dump());
        CHECK(answer["statusCode"] != 200);
        CHECK(upstream.requests() == 0);
    }
}

TEST_CASE("lambda.zip unpacked in a bare chroot, configured as deploy/template.yaml configures it, keeps history in DynamoDB and reads "
          "the OpenAI key from Secrets Manager") {
    // The emulators listen on 127.0.0.1, which the chroot shares (a chroot has its own files, not
    // its own network).
    auto dynalite = test_support::start_dynalite();
    auto moto = test_support::start_moto();
    chatkit::aws::json_client dynamodb{chatkit::dynamodb_store::service(), {}, dynalite.aws_environment()};
    test_support::create_table(dynamodb, chatkit::dynamodb_store::create_table_input("chatkit-history"));
    test_support::create_table(dynamodb, chatkit::dynamodb_usage_store::create_table_input("chatkit-usage"));
    // The default CHAT_RATE_LIMIT counts every instance's requests there (CHAT_LIMITS=auto is shared on DynamoDB).
    test_support::create_table(dynamodb, chatkit::dynamodb_counter_store::create_table_input("chatkit-history-limits"));
    chatkit::aws::json_client secrets{chatkit::aws::secrets_manager_service(), {}, moto.aws_environment()};
    const auto secret = secrets.call("CreateSecret",
                                     {{"Name", "chatkit/openai"}, {"SecretString", R"({"api_key":"sk-in-secrets-manager"})"}});
    REQUIRE(secret);

    fake_lambda_runtime runtime;
    test_support::fake_openai upstream;
    lambda_sandbox sandbox{zip_path};
    const auto bootstrap = sandbox.start(function_environment(
        runtime,
        {{"CHAT_PROVIDER", "openai"},
         {"CHAT_DATABASE_URL", "dynamodb://chatkit-history?region=us-east-1&ttl_days=30&keys_table=chatkit-keys&usage_table=chatkit-usage"},
         {"CHAT_AUTH", "none"}, // the template's default (ChatAuth); with none the keys table is never read
         {"CHAT_OPENAI_API_KEY_SECRET_ARN", (*secret)["ARN"].get<std::string>()},
         {"CHAT_FUNCTION_URL_INVOKE_MODE", "RESPONSE_STREAM"},
         {"AWS_ENDPOINT_URL_DYNAMODB", dynalite.endpoint()},
         {"AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint()},
         {"OPENAI_BASE_URL", upstream.base_url()},
         {"CHAT_UPSTREAM_MAX_RETRIES", "0"}}));

    const auto health = buffered_answer(invoke(runtime, bootstrap, gateway_event("GET", "/health")));
    INFO(health.dump());
    CHECK(body_of(health)["components"]["store"]["status"] == "ok");

    const auto chat = buffered_answer(
        invoke(runtime, bootstrap, gateway_event("POST", "/chat", "", json{{"user_id", "gus"}, {"content", "kept in dynamodb"}}.dump())));
    REQUIRE(chat["statusCode"] == 200);
    CHECK(body_of(chat)["content"] == "echo: kept in dynamodb");
    REQUIRE(upstream.requests().size() == 1);
    CHECK(upstream.requests()[0].headers.find("Authorization")->second == "Bearer sk-in-secrets-manager");

    const auto streamed_chat = invoke(
        runtime, bootstrap,
        function_url_event("POST", "/chat", json{{"user_id", "gus"}, {"content", "and streamed"}, {"stream", true}}.dump()));
    const auto [prelude, sse] = test_support::streamed(streamed_chat);
    CHECK(prelude["statusCode"] == 200);
    CHECK(sse.find("event: done") != std::string::npos);

    const auto history = buffered_answer(invoke(runtime, bootstrap, gateway_event("GET", "/history/gus", "limit=10")));
    REQUIRE(history["statusCode"] == 200);
    const auto messages = body_of(history)["messages"];
    REQUIRE(messages.size() == 4);
    CHECK(messages[0]["content"] == "kept in dynamodb");
    CHECK(messages[3]["content"] == "echo: and streamed");

    // Stored in the emulator's table, not in the chroot: no SQLite file anywhere.
    auto items = dynamodb.call("Query", {{"TableName", "chatkit-history"},
                                         {"KeyConditionExpression", "user_id = :u"},
                                         {"ExpressionAttributeValues", {{":u", {{"S", "gus"}}}}}});
    REQUIRE(items);
    CHECK((*items)["Items"].size() == 2);
    CHECK_FALSE(std::filesystem::exists(sandbox.root() / "tmp/chat.db"));

    // One usage record per chat, written by the recorder's thread after each answer.
    std::size_t recorded = 0;
    for (int i = 0; i < 100 && recorded < 2; ++i) {
        auto usage = dynamodb.call("Scan", {{"TableName", "chatkit-usage"}});
        REQUIRE(usage);
        recorded = (*usage)["Items"].size();
        if (recorded < 2) std::this_thread::sleep_for(std::chrono::milliseconds{50});
    }
    CHECK(recorded == 2);
}

TEST_CASE("lambda-self-contained.zip carries OpenSSL too and answers a chat in a chroot with nothing else") {
    auto modes = zip_layout(self_contained_zip_path);
    for (const auto& lib : test_support::image_libraries) CHECK(modes.count("lib/" + lib) == 1);
    CHECK(modes.count("lib/libc.so.6") == 1);

    fake_lambda_runtime runtime;
    lambda_sandbox sandbox{self_contained_zip_path, test_support::lambda_image::empty};
    REQUIRE_FALSE(std::filesystem::exists(sandbox.root() / "usr"));
    const auto bootstrap = sandbox.start(function_environment(runtime));
    const auto chat = buffered_answer(
        invoke(runtime, bootstrap, gateway_event("POST", "/chat", "", json{{"user_id", "alice"}, {"content", "self-contained"}}.dump())));
    REQUIRE(chat["statusCode"] == 200);
    CHECK(body_of(chat)["content"] == "self-contained");
}

TEST_CASE("scripts/lambda-zip refuses to leave OpenSSL to the image for a program that needs a newer OpenSSL 3 than 3.0.0") {
    const auto work = std::filesystem::temp_directory_path() / ("chatkit-newer-openssl-" + std::to_string(::getpid()));
    std::filesystem::create_directories(work);
    const auto zip = work / "lambda.zip";
    // scripts/lambda-zip's exit code, and what it printed.
    const auto package = [&work, &zip](const std::vector<std::string>& options) {
        std::vector<std::string> argv{std::string{CHATKIT_SOURCE_DIR} + "/scripts/lambda-zip"};
        argv.insert(argv.end(), options.begin(), options.end());
        argv.insert(argv.end(), {NEWER_OPENSSL_PATH, zip.string()});
        test_support::child_process script{argv,
                                           {.output = work / ("lambda-zip-" + std::to_string(options.size()) + ".log"),
                                            .out = test_support::child_sink::file,
                                            .err = test_support::child_sink::file}};
        const int code = script.wait();
        return std::pair{code, script.log()};
    };
    const auto [status, output] = package({});
    INFO(output);
    CHECK(status == 1);
    CHECK(output.find("libcrypto.so.3 OPENSSL_3.0.3") != std::string::npos); // what it needs, and from where
    CHECK(output.find("--self-contained") != std::string::npos);             // and what to do
    CHECK_FALSE(std::filesystem::exists(zip));

    const auto [self_contained_status, self_contained_output] = package({"--self-contained"});
    INFO(self_contained_output);
    CHECK(self_contained_status == 0);
    CHECK(zip_layout(zip).count("lib/libcrypto.so.3") == 1);
    std::filesystem::remove_all(work);
}
