// sample_server's metrics through the real binary, under both HTTP servers: CHAT_METRICS_PORT (the
// scrape on its own port, none on the main one, a clean stop on SIGTERM, bad values refused at
// start-up), upstream retries counted one for one against a fake OpenAI answering 429, and the
// SQLite store's group commits counted as appends happen.
#include "../support/fake_openai.hpp"
#include "../support/promtool.hpp"
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <sstream>
#include <string>
#include <thread>

using nlohmann::json;
using test_support::fake_openai;
using test_support::promtool_check;
using test_support::run_to_exit;
using test_support::server_process;
using test_support::status_reply;

namespace {

// Each sample line of a scrape, "name{labels}" → value.
std::map<std::string, double> samples(const std::string& text) {
    std::map<std::string, double> out;
    std::istringstream in{text};
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        const auto space = line.rfind(' ');
        out[line.substr(0, space)] = std::stod(line.substr(space + 1));
    }
    return out;
}

// A sample's value, 0 while the series does not exist yet.
double sample(const std::map<std::string, double>& m, const std::string& key) {
    const auto it = m.find(key);
    return it == m.end() ? 0 : it->second;
}

std::map<std::string, double> scrape(httplib::Client& c) {
    auto r = c.Get("/metrics");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    return samples(r->body);
}

// A scrape's text once `key` has reached `wanted`, or the last one after 5 s: a request is counted
// after its last byte went out, so its client may read the answer before the count moves.
std::string scrape_when(httplib::Client& c, const std::string& key, double wanted) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
        auto r = c.Get("/metrics");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        if (sample(samples(r->body), key) >= wanted || std::chrono::steady_clock::now() > give_up) return r->body;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// The metrics port sample_server printed in its "listening" line.
int metrics_port_of(const server_process& server) {
    for (const auto& line : server.log_lines()) {
        auto j = json::parse(line, nullptr, false);
        if (j.is_object() && j.value("msg", "") == "listening") return j.value("metrics_port", -1);
    }
    return -1;
}

httplib::Client client_on(int port) {
    httplib::Client c{"127.0.0.1", port};
    c.set_read_timeout(10, 0);
    return c;
}

httplib::Result chat(httplib::Client& c, const std::string& content) {
    return c.Post("/chat", json{{"user_id", "ann"}, {"content", content}}.dump(), "application/json");
}

} // namespace

TEST_CASE(
    "metrics: with CHAT_METRICS_PORT, the metrics port serves /metrics and nothing else, the main port has none, and SIGTERM stops both") {
    const std::string adapter = GENERATE(as<std::string>{}, "beast", "httplib");
    INFO("CHAT_SERVER=" << adapter);
    server_process server{{{"CHAT_SERVER", adapter}, {"CHAT_METRICS_PORT", "0"}}};
    const int port = metrics_port_of(server);
    REQUIRE(port > 0);
    CHECK(port != server.port());
    auto main_port = server.client();
    auto metrics_port = client_on(port);

    REQUIRE(chat(main_port, "count me")->status == 200);
    auto hidden = main_port.Get("/metrics");
    REQUIRE(hidden);
    CHECK(hidden->status == 404);
    CHECK(json::parse(hidden->body)["error"]["code"] == "not_found");

    auto scraped = metrics_port.Get("/metrics");
    REQUIRE(scraped);
    REQUIRE(scraped->status == 200);
    CHECK(scraped->get_header_value("Content-Type").starts_with("text/plain; version=0.0.4"));
    const std::string main_404 = R"(chatkit_http_requests_total{route="/metrics",method="GET",status="404"})";
    const std::string chat_200 = R"(chatkit_http_requests_total{route="/chat",method="POST",status="200"})";
    (void)scrape_when(metrics_port, chat_200, 1);
    const std::string text = scrape_when(metrics_port, main_404, 1); // counts only grow: the chat's is in it
    const auto m = samples(text);
    CHECK(sample(m, chat_200) == 1);
    CHECK(sample(m, main_404) == 1);
    const auto [status, said] = promtool_check(text);
    INFO(said);
    CHECK(status == 0);

    // Nothing else is served there: not the API, not another method.
    for (const char* path : {"/chat", "/health", "/metrics/", "/"}) {
        auto other = metrics_port.Get(path);
        REQUIRE(other);
        INFO(path);
        CHECK(other->status == 404);
        CHECK(json::parse(other->body)["error"]["code"] == "not_found");
    }
    auto posted = metrics_port.Post("/chat", json{{"content", "hi"}}.dump(), "application/json");
    REQUIRE(posted);
    CHECK(posted->status == 404);
    auto wrong_method = metrics_port.Post("/metrics", "", "text/plain");
    REQUIRE(wrong_method);
    CHECK(wrong_method->status == 405);

    CHECK(server.stop(SIGTERM) == 0);
    CHECK_FALSE(client_on(port).Get("/metrics")); // the listener closed with the server
}

TEST_CASE("metrics: a bad CHAT_METRICS_PORT value, a clash with CHAT_PORT or CHAT_METRICS=off, or a port in use stops start-up") {
    auto refused = [](std::map<std::string, std::string> env) {
        env.emplace("CHAT_DATABASE_URL", "none");
        env.emplace("CHAT_PORT", "0");
        return run_to_exit(env, {});
    };
    for (const char* bad : {"65536", "-1", "metrics", "9100x"}) {
        const auto r = refused({{"CHAT_METRICS_PORT", bad}});
        INFO(r.output);
        CHECK(r.exit_code == 2);
        CHECK(r.output.find(std::string{"CHAT_METRICS_PORT='"} + bad + "' is not an integer from 0 to 65535") != std::string::npos);
    }
    const auto off = refused({{"CHAT_METRICS_PORT", "9100"}, {"CHAT_METRICS", "off"}});
    CHECK(off.exit_code == 2);
    CHECK(off.output.find("CHAT_METRICS=off") != std::string::npos);
    const auto same = refused({{"CHAT_METRICS_PORT", "8123"}, {"CHAT_PORT", "8123"}});
    CHECK(same.exit_code == 2);
    CHECK(same.output.find("CHAT_METRICS_PORT=8123 is CHAT_PORT too") != std::string::npos);

    // A port another socket holds: start-up fails naming the address.
    const int holder = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(holder >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(holder, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(holder, 1) == 0);
    socklen_t size = sizeof address;
    REQUIRE(::getsockname(holder, reinterpret_cast<sockaddr*>(&address), &size) == 0);
    const std::string taken = std::to_string(ntohs(address.sin_port));
    const auto busy = refused({{"CHAT_METRICS_PORT", taken}});
    ::close(holder);
    INFO(busy.output);
    CHECK(busy.exit_code == 1);
    CHECK(busy.output.find("cannot listen on 127.0.0.1:" + taken) != std::string::npos);
}

TEST_CASE("metrics: chatkit_upstream_retries_total moves by exactly the retries a 429 with Retry-After caused") {
    const std::string adapter = GENERATE(as<std::string>{}, "beast", "httplib");
    INFO("CHAT_SERVER=" << adapter);
    fake_openai fake;
    server_process server{{{"CHAT_SERVER", adapter},
                           {"OPENAI_API_KEY", "sk-metrics-SECRET-24680"},
                           {"OPENAI_BASE_URL", fake.base_url()},
                           {"CHAT_MODEL", "fake-1"},
                           {"CHAT_UPSTREAM_MAX_RETRIES", "2"}}};
    auto c = server.client();
    const std::string retried = R"(chatkit_upstream_retries_total{provider="openai",code="rate_limited"})";
    auto limited = status_reply(429, "Rate limit reached", "requests", "rate_limit_exceeded");
    limited.headers = {{"Retry-After", "0.01"}};

    const double before = sample(scrape(c), retried);
    CHECK(before == 0);
    fake.script({limited, limited}); // two 429s, then the default 200
    auto answered = chat(c, "after two refusals");
    INFO(server.log());
    REQUIRE(answered);
    CHECK(answered->status == 200);
    CHECK(fake.requests().size() == 3);
    auto m = scrape(c);
    CHECK(sample(m, retried) == 2);

    REQUIRE(chat(c, "no refusal")->status == 200); // a call that needed no retry adds none
    CHECK(sample(scrape(c), retried) == 2);

    // Three 429s against two retries: the last one is the answer, not a retry.
    fake.script({limited, limited, limited});
    auto refused = chat(c, "three refusals");
    REQUIRE(refused);
    CHECK(refused->status == 429);
    m = scrape(c);
    CHECK(sample(m, retried) == 4);
    CHECK(sample(m, R"(chatkit_upstream_retries_total{provider="openai",code="upstream_unreachable"})") == 0);
}

TEST_CASE("metrics: the SQLite store's group commits are counted: one per appended exchange when chats come one at a time") {
    const std::string adapter = GENERATE(as<std::string>{}, "beast", "httplib");
    INFO("CHAT_SERVER=" << adapter);
    server_process server{{{"CHAT_SERVER", adapter}}};
    auto c = server.client();
    const auto before = scrape(c);
    constexpr int chats = 5;
    for (int i = 0; i < chats; ++i) REQUIRE(chat(c, "remember " + std::to_string(i))->status == 200);
    const auto after = scrape(c);
    // Each chat's exchange is acknowledged (committed) before its answer, so all are in the scrape.
    CHECK(sample(after, "chatkit_store_commit_seconds_count") - sample(before, "chatkit_store_commit_seconds_count") == chats);
    CHECK(sample(after, "chatkit_store_commit_batch_size_count") - sample(before, "chatkit_store_commit_batch_size_count") == chats);
    CHECK(sample(after, "chatkit_store_commit_batch_size_sum") - sample(before, "chatkit_store_commit_batch_size_sum") == chats);
    CHECK(sample(after, R"(chatkit_store_commit_seconds_bucket{le="+Inf"})") == sample(after, "chatkit_store_commit_seconds_count"));
    CHECK(sample(after, "chatkit_store_commit_seconds_sum") > 0);
    auto history = c.Get("/history/ann");
    REQUIRE(history);
    CHECK(json::parse(history->body)["messages"].size() == 2 * chats);
}

TEST_CASE("metrics: the usage recorder's records are counted as written once its thread has written them, and the scrape stays valid") {
    const std::string adapter = GENERATE(as<std::string>{}, "beast", "httplib");
    INFO("CHAT_SERVER=" << adapter);
    server_process server{{{"CHAT_SERVER", adapter}, {"CHAT_USAGE", "on"}}};
    auto c = server.client();
    constexpr int chats = 3;
    for (int i = 0; i < chats; ++i) REQUIRE(chat(c, "count me " + std::to_string(i))->status == 200);
    const std::string written = R"(chatkit_usage_records_total{outcome="written"})";
    const auto text = scrape_when(c, written, chats);
    const auto m = samples(text);
    CHECK(sample(m, written) == chats);
    CHECK(m.count(R"(chatkit_usage_records_total{outcome="dropped"})") == 1);
    CHECK(sample(m, R"(chatkit_usage_records_total{outcome="dropped"})") == 0);
    CHECK(sample(m, "chatkit_usage_write_failures_total") == 0);
    CHECK(m.count("chatkit_usage_queue_length") == 1);
    const auto [status, said] = promtool_check(text);
    INFO(said);
    CHECK(status == 0);
}
