// sample_server over real HTTP on 127.0.0.1: the HTTP contract a client depends on, end to end
// through cpp-httplib, the plugins and a real SQLite file.
#include "../support/server_process.hpp"
#include "../support/sse_text.hpp"

#include <chatkit/version.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <atomic>
#include <netinet/in.h>
#include <sys/socket.h>

using nlohmann::json;
using test_support::post_json;
using test_support::server_process;
using test_support::sse_events;

namespace {

json body_of(const httplib::Result& r) {
    REQUIRE(r);
    return json::parse(r->body);
}

void check_error(const httplib::Result& r, int status, std::string_view type) {
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == status);
    CHECK(r->get_header_value("Content-Type") == "application/json");
    const auto body = json::parse(r->body);
    CHECK(body["error"]["type"] == type);
    CHECK(body["error"]["message"].is_string());
    CHECK(body["request_id"].is_string());
}

// A raw TCP connection, for clients that misbehave below HTTP.
class raw_connection {
public:
    explicit raw_connection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        timeval tv{15, 0};
        setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    ~raw_connection() { ::close(fd_); }
    void send(std::string_view data) { REQUIRE(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size())); }
    // Reads until the server closes the connection (or the 15 s receive timeout).
    std::string read_all() {
        std::string out;
        char buf[4096];
        for (ssize_t n; (n = ::recv(fd_, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<std::size_t>(n));
        return out;
    }

private:
    int fd_;
};

} // namespace

TEST_CASE("GET /health reports version and every component") {
    server_process server;
    auto c = server.client();
    auto r = c.Get("/health");
    REQUIRE(r);
    CHECK(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK(body["status"] == "ok");
    CHECK(body["version"] == CHATKIT_VERSION);
    CHECK(body["provider"] == "echo");
    for (const char* component : {"store", "cache", "provider"}) CHECK(body["components"][component]["status"] == "ok");
}

TEST_CASE("the server says at start-up that it answers with the echo provider") {
    server_process server;
    CHECK(server.log().find("using the built-in echo provider") != std::string::npos);
}

TEST_CASE("POST /chat answers the short form with the full metadata and echoes X-Request-ID") {
    server_process server;
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"user_id", "alice"}, {"content", "hello there"}}, {{"X-Request-ID", "trace-7"}});
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("X-Request-ID") == "trace-7");
    const auto body = json::parse(r->body);
    CHECK(body["content"] == "hello there");
    CHECK(body["model"] == "echo-1");
    CHECK(body["usage"] == json{{"prompt_tokens", 2}, {"completion_tokens", 2}, {"total_tokens", 4}});
    CHECK(body["request_id"] == "trace-7");
    CHECK(body["cached"] == false);
    CHECK(body["finish_reason"] == "stop");
    for (const char* key : {"id", "latency_ms", "created_at"}) CHECK(body.contains(key));
}

TEST_CASE("POST /chat with stream:true answers Server-Sent Events, one per word, then the metadata") {
    server_process server;
    auto c = server.client();
    auto r = post_json(c, "/chat", {{"messages", {{{"role", "user"}, {"content", "one two three"}}}}, {"stream", true}});
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("Content-Type") == "text/event-stream");
    const auto events = sse_events(r->body);
    REQUIRE(events.size() == 4);
    CHECK(events[0].name == "delta");
    CHECK(events[0].json() == json{{"content", "one"}});
    CHECK(events[1].json()["content"] == " two");
    CHECK(events[2].json()["content"] == " three");
    CHECK(events[3].name == "done");
    CHECK(events[3].json()["content"] == "one two three");
    CHECK(events[3].json()["usage"]["completion_tokens"] == 3);
    CHECK(events[3].json()["request_id"] == r->get_header_value("X-Request-ID"));
}

TEST_CASE("an identical request is answered from the cache, cache:false opts out") {
    server_process server;
    auto c = server.client();
    const json ask = {{"user_id", "bob"}, {"content", "cache me"}, {"temperature", 0.2}};
    CHECK(body_of(post_json(c, "/chat", ask))["cached"] == false);
    CHECK(body_of(post_json(c, "/chat", ask))["cached"] == true);
    auto other_user = ask;
    other_user["user_id"] = "carol";
    CHECK(body_of(post_json(c, "/chat", other_user))["cached"] == false);
    auto opt_out = ask;
    opt_out["cache"] = false;
    CHECK(body_of(post_json(c, "/chat", opt_out))["cached"] == false);
}

TEST_CASE("GET /history pages a user's exchanges back in time, oldest first within a page") {
    server_process server;
    auto c = server.client();
    for (int i = 0; i < 30; ++i)
        REQUIRE(post_json(c, "/chat", {{"user_id", "dave"}, {"content", "message " + std::to_string(i)}},
                          {{"X-Request-ID", "r" + std::to_string(i)}})
                    ->status == 200);
    REQUIRE(post_json(c, "/chat", {{"user_id", "eve"}, {"content", "not dave's"}})->status == 200);

    auto first = body_of(c.Get("/history/dave?limit=20"));
    CHECK(first["user_id"] == "dave");
    REQUIRE(first["messages"].size() == 20);
    // The newest 20 of 60 messages: exchanges 20..29, user then assistant, oldest first.
    CHECK(first["messages"][0]["content"] == "message 20");
    CHECK(first["messages"][0]["role"] == "user");
    CHECK(first["messages"][1]["role"] == "assistant");
    CHECK(first["messages"][1]["model"] == "echo-1");
    CHECK(first["messages"][1]["request_id"] == "r20");
    CHECK(first["messages"][19]["content"] == "message 29");
    REQUIRE(first["next_cursor"].is_string());

    std::vector<std::string> all;
    std::string cursor = first["next_cursor"];
    for (auto& m : first["messages"]) all.push_back(m["id"]);
    int pages = 1;
    while (!cursor.empty()) {
        auto page = body_of(c.Get(("/history/dave?limit=20&before=" + cursor).c_str()));
        ++pages;
        for (auto& m : page["messages"]) all.push_back(m["id"]);
        cursor = page["next_cursor"].is_null() ? "" : page["next_cursor"].get<std::string>();
    }
    CHECK(pages == 3);
    std::sort(all.begin(), all.end());
    CHECK(std::unique(all.begin(), all.end()) == all.end());
    CHECK(all.size() == 60);

    CHECK(body_of(c.Get("/history/dave"))["messages"].size() == 50); // the default limit
    CHECK(body_of(c.Get("/history/dave?limit=100"))["messages"].size() == 60);
    check_error(c.Get("/history/dave?limit=101"), 400, "invalid_request_error");
    check_error(c.Get("/history/dave?before=not-a-cursor"), 400, "invalid_request_error");
    CHECK(body_of(c.Get("/history/nobody"))["messages"].empty());
}

TEST_CASE("history survives a restart of the server") {
    test_support::temp_dir dir;
    const auto db = dir.path() / "persist.db";
    {
        server_process server{{}, db};
        auto c = server.client();
        REQUIRE(post_json(c, "/chat", {{"user_id", "frank"}, {"content", "remember me"}})->status == 200);
        CHECK(server.stop(SIGTERM) == 0);
    }
    server_process again{{}, db};
    auto c = again.client();
    const auto history = body_of(c.Get("/history/frank"));
    REQUIRE(history["messages"].size() == 2);
    CHECK(history["messages"][0]["content"] == "remember me");
    CHECK(history["messages"][1]["role"] == "assistant");
}

TEST_CASE("concurrent clients all get answers and every exchange is stored") {
    server_process server{{{"CHAT_CACHE_SIZE", "0"}}};
    constexpr int clients = 8, each = 25;
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < clients; ++t)
        threads.emplace_back([&, t] {
            auto c = server.client();
            for (int i = 0; i < each; ++i) {
                auto r = post_json(c, "/chat", {{"user_id", "crowd"}, {"content", "t" + std::to_string(t) + " m" + std::to_string(i)}});
                if (r && r->status == 200) ++ok;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(ok == clients * each);

    auto c = server.client();
    std::size_t stored = 0;
    std::string cursor;
    do {
        auto page = body_of(c.Get(("/history/crowd?limit=100" + (cursor.empty() ? "" : "&before=" + cursor)).c_str()));
        stored += page["messages"].size();
        cursor = page["next_cursor"].is_null() ? "" : page["next_cursor"].get<std::string>();
    } while (!cursor.empty());
    CHECK(stored == 2 * clients * each);
}

TEST_CASE("malformed requests get a JSON error with the right status, never a 5xx") {
    server_process server{{{"CHAT_MAX_BODY_BYTES", "2048"}}};
    auto c = server.client();
    check_error(c.Post("/chat", "{not json", "application/json"), 400, "invalid_request_error");
    auto utf8 = c.Post("/chat", "{\"content\":\"\xc3\x28\"}", "application/json");
    check_error(utf8, 400, "invalid_request_error");
    CHECK(json::parse(utf8->body)["error"]["code"] == "invalid_utf8");
    check_error(post_json(c, "/chat", {{"messages", json::array()}}), 400, "invalid_request_error");
    check_error(post_json(c, "/chat", {{"content", "x"}, {"temperature", 3}}), 400, "invalid_request_error");
    check_error(post_json(c, "/chat", {{"content", "x"}, {"max_tokens", 0}}), 400, "invalid_request_error");
    check_error(post_json(c, "/chat", {{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), 400, "invalid_request_error");
    check_error(post_json(c, "/chat", {{"content", "x"}, {"user_id", std::string(200, 'u')}}), 400, "invalid_request_error");
    check_error(c.Post("/chat", "content=hi", "application/x-www-form-urlencoded"), 415, "invalid_request_error");
    auto too_big = c.Post("/chat", std::string(4096, ' ') + "{}", "application/json");
    check_error(too_big, 413, "invalid_request_error"); // answered by cpp-httplib before the service
    CHECK(too_big->get_header_value("X-Request-ID") == json::parse(too_big->body)["request_id"]);
    check_error(c.Get("/nowhere"), 404, "not_found_error");
    auto wrong = c.Get("/chat");
    check_error(wrong, 405, "method_not_allowed");
    CHECK(wrong->get_header_value("Allow") == "POST");
    check_error(c.Delete("/health"), 405, "method_not_allowed");
    CHECK(c.Get("/health")->status == 200);
}

TEST_CASE("too many messages are refused with 400") {
    server_process server{{{"CHAT_MAX_MESSAGES", "4"}}};
    auto c = server.client();
    json many = {{"messages", json::array()}};
    for (int i = 0; i < 5; ++i) many["messages"].push_back({{"role", "user"}, {"content", "x"}});
    auto r = post_json(c, "/chat", many);
    check_error(r, 400, "invalid_request_error");
    CHECK(json::parse(r->body)["error"]["code"] == "too_many_messages");
}

TEST_CASE("a client over its rate gets 429 with Retry-After and X-RateLimit headers, /health is exempt") {
    server_process server{{{"CHAT_RATE_LIMIT", "3/minute"}}};
    auto c = server.client();
    for (int i = 0; i < 3; ++i) {
        auto r = post_json(c, "/chat", {{"content", "hi"}});
        REQUIRE(r->status == 200);
        CHECK(r->get_header_value("X-RateLimit-Limit") == "3");
        CHECK(r->get_header_value("X-RateLimit-Remaining") == std::to_string(2 - i));
    }
    auto limited = post_json(c, "/chat", {{"content", "hi"}});
    check_error(limited, 429, "rate_limit_exceeded");
    CHECK(std::stoi(limited->get_header_value("Retry-After")) >= 1);
    CHECK(limited->get_header_value("X-RateLimit-Remaining") == "0");
    CHECK(std::stoi(limited->get_header_value("X-RateLimit-Reset")) >= 1);
    CHECK(!limited->get_header_value("X-Request-ID").empty());
    CHECK(c.Get("/health")->status == 200);

    // Another API key is another client.
    auto keyed = post_json(c, "/chat", {{"content", "hi"}}, {{"Authorization", "Bearer other-key"}});
    CHECK(keyed->status == 200);
}

TEST_CASE("every request gets one JSON access-log line, without message content") {
    server_process server;
    auto c = server.client();
    const std::string secret_words = "zebra-unicorn-7731";
    REQUIRE(post_json(c, "/chat", {{"content", secret_words}, {"user_id", "gina"}}, {{"X-Request-ID", "log-1"}})->status == 200);
    REQUIRE(post_json(c, "/chat", {{"content", secret_words}, {"user_id", "gina"}, {"stream", true}})->status == 200);
    REQUIRE(c.Get("/nowhere")->status == 404);

    // A stream's line is written after its last byte, which the client may see first.
    auto entries = server.request_logs();
    for (int i = 0; i < 500 && entries.size() < 3; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        entries = server.request_logs();
    }
    REQUIRE(entries.size() == 3);
    // A stream's line is logged after its last byte, so it may come after the next request's.
    auto find = [&](auto pred) {
        auto it = std::find_if(entries.begin(), entries.end(), pred);
        REQUIRE(it != entries.end());
        return *it;
    };
    const auto first = find([](const json& e) { return e["request_id"] == "log-1"; });
    CHECK(first["method"] == "POST");
    CHECK(first["path"] == "/chat");
    CHECK(first["status"] == 200);
    CHECK(first["latency_ms"].is_number());
    CHECK(first["model"] == "echo-1");
    CHECK(first["completion_tokens"] == 1);
    CHECK(first["ttft_ms"].is_number());
    CHECK(first["cached"] == false);
    const auto streamed = find([](const json& e) { return e["path"] == "/chat" && e["request_id"] != "log-1"; });
    CHECK(streamed["cached"] == true); // the streamed repeat came from the cache
    CHECK(streamed["status"] == 200);
    CHECK(find([](const json& e) { return e["path"] == "/nowhere"; })["status"] == 404);
    CHECK(server.log().find(secret_words) == std::string::npos);
}

TEST_CASE("SIGTERM lets a stream in flight finish, then the server exits 0") {
    server_process server{{{"CHAT_ECHO_DELAY_MS", "150"}}};
    auto c = server.client();
    std::string received;
    std::atomic<bool> first_chunk{false};
    std::thread client([&] {
        httplib::Request req;
        req.method = "POST";
        req.path = "/chat";
        req.set_header("Content-Type", "application/json");
        req.body = json{{"content", "a b c d e f"}, {"stream", true}}.dump();
        req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
            received.append(data, len);
            first_chunk = true;
            return true;
        };
        httplib::Response res;
        httplib::Error err;
        c.send(req, res, err);
    });
    while (!first_chunk) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const int exit_code = server.stop(SIGTERM);
    client.join();
    CHECK(exit_code == 0);
    const auto events = sse_events(received);
    REQUIRE(!events.empty());
    CHECK(events.back().name == "done");
    CHECK(events.back().json()["content"] == "a b c d e f");
}

TEST_CASE("after SIGTERM the server drains for CHAT_DRAIN_DELAY: /ready answers 503 while chats are still served, then it exits 0") {
    server_process server{{{"CHAT_DRAIN_DELAY", "3"}}};
    auto c = server.client();
    auto ready = c.Get("/ready");
    REQUIRE(ready);
    CHECK(ready->status == 200);
    CHECK(json::parse(ready->body)["status"] == "ready");
    CHECK_FALSE(ready->get_header_value("Server-Timing").empty());

    std::thread stopper([&server] { (void)server.stop(SIGTERM); });
    // Until the process says it drains, /ready may still be 200: ask until it is 503.
    int status = 0;
    std::string body;
    for (int attempt = 0; attempt < 200 && status != 503; ++attempt) {
        if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (auto r = c.Get("/ready")) {
            status = r->status;
            body = r->body;
        }
    }
    CHECK(status == 503);
    CHECK(json::parse(body)["status"] == "draining");
    // The process still serves while load balancers take it out of rotation.
    auto chat = c.Post("/chat", json{{"content", "still here"}}.dump(), "application/json");
    REQUIRE(chat);
    CHECK(chat->status == 200);
    CHECK(c.Get("/health")->status == 200);
    stopper.join();
    CHECK(server.log().find("draining") != std::string::npos);
}

TEST_CASE("a client that stalls mid-request does not pin a worker") {
    server_process server{{{"CHAT_THREADS", "1"}, {"CHAT_READ_TIMEOUT", "1"}, {"CHAT_KEEP_ALIVE_TIMEOUT", "1"}}};
    raw_connection stalled{server.port()};
    stalled.send("POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"con");
    // With one worker, this request is served only once the stalled one has been dropped.
    auto c = server.client();
    auto r = c.Get("/health");
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("garbage on the socket is answered or dropped, and the server keeps serving") {
    server_process server{{{"CHAT_READ_TIMEOUT", "1"}, {"CHAT_KEEP_ALIVE_TIMEOUT", "1"}}};
    {
        raw_connection junk{server.port()};
        static constexpr char tls_hello_then_text[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n";
        junk.send(std::string_view{tls_hello_then_text, sizeof tls_hello_then_text - 1});
        const auto answer = junk.read_all();
        if (!answer.empty()) CHECK(answer.starts_with("HTTP/1.1 4"));
    }
    {
        raw_connection bad_length{server.port()};
        bad_length.send("POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n");
        bad_length.read_all();
    }
    auto c = server.client();
    CHECK(c.Get("/health")->status == 200);
}

TEST_CASE("--help lists every CHAT_ variable with its flag and default") {
    const auto r = test_support::run_to_exit({}, {"--help"});
    CHECK(r.exit_code == 0);
    for (const char* name : {"CHAT_HOST",
                             "CHAT_PORT",
                             "CHAT_DATABASE_URL",
                             "CHAT_PROVIDER",
                             "CHAT_MODEL",
                             "CHAT_CACHE_SIZE",
                             "CHAT_CACHE_TTL",
                             "CHAT_RATE_LIMIT",
                             "CHAT_MAX_BODY_BYTES",
                             "CHAT_THREADS",
                             "CHAT_LOG_LEVEL",
                             "CHAT_LOG_FORMAT",
                             "CHAT_AUTH",
                             "--auth",
                             "CHAT_ADMIN_KEY",
                             "--admin-key",
                             "[none]",
                             "--max-body-bytes",
                             "[60/minute]",
                             "[sqlite:chatkit.db]"})
        CHECK(r.output.find(name) != std::string::npos);
}

TEST_CASE("a bad setting stops start-up with a message naming the variable or flag") {
    auto r = test_support::run_to_exit({{"CHAT_PORT", "eighty"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_PORT") != std::string::npos);
    r = test_support::run_to_exit({{"CHAT_RATE_LIMIT", "lots"}}, {});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_RATE_LIMIT") != std::string::npos);
    r = test_support::run_to_exit({{"CHAT_LOG_FORMAT", "xml"}}, {});
    CHECK(r.output.find("CHAT_LOG_FORMAT") != std::string::npos);
    r = test_support::run_to_exit({}, {"--cache-size=-3"});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("--cache-size") != std::string::npos);
    r = test_support::run_to_exit({}, {"--no-such-flag=1"});
    CHECK(r.exit_code == 2);
    r = test_support::run_to_exit({{"CHAT_DATABASE_URL", "sqlite:/nonexistent-dir/x/chat.db"}, {"CHAT_PORT", "0"}}, {});
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("start-up failed") != std::string::npos);
}

TEST_CASE("a flag overrides its environment variable") {
    const auto r = test_support::run_to_exit({{"CHAT_PORT", "not-a-port"}}, {"--port=eighty"});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("--port='eighty'") != std::string::npos); // the flag's value is the one judged
    CHECK(r.output.find("CHAT_PORT") == std::string::npos);
}

TEST_CASE("with CHAT_CORS_ORIGINS, a page on that origin may call the API: preflight 204 and answers marked, others are not") {
    server_process server{{{"CHAT_CORS_ORIGINS", "http://page.example:8080, https://other.example"}, {"CHAT_CORS_MAX_AGE", "120"}}};
    auto c = server.client();
    httplib::Headers preflight{{"Origin", "http://page.example:8080"},
                               {"Access-Control-Request-Method", "POST"},
                               {"Access-Control-Request-Headers", "authorization, content-type"}};
    auto pre = c.Options("/v1/chat/completions", preflight);
    REQUIRE(pre);
    CHECK(pre->status == 204);
    CHECK(pre->get_header_value("Access-Control-Allow-Origin") == "http://page.example:8080");
    CHECK(pre->get_header_value("Access-Control-Max-Age") == "120");
    CHECK(pre->get_header_value("Access-Control-Allow-Headers").find("Authorization") != std::string::npos);

    auto answer = c.Post("/v1/chat/completions", {{"Origin", "http://page.example:8080"}},
                         json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}}.dump(), "application/json");
    REQUIRE(answer);
    CHECK(answer->status == 200);
    CHECK(answer->get_header_value("Access-Control-Allow-Origin") == "http://page.example:8080");
    CHECK(answer->get_header_value("Vary").find("Origin") != std::string::npos);
    CHECK(answer->get_header_value("Access-Control-Expose-Headers").find("X-Request-ID") != std::string::npos);

    preflight.erase("Origin");
    preflight.emplace("Origin", "https://evil.example");
    auto refused = c.Options("/v1/chat/completions", preflight);
    REQUIRE(refused);
    CHECK(refused->status == 403);
    CHECK(json::parse(refused->body)["error"]["code"] == "origin_not_allowed");

    const auto bad = test_support::run_to_exit({{"CHAT_CORS_ORIGINS", "page.example"}}, {});
    CHECK(bad.exit_code == 2);
    CHECK(bad.output.find("CHAT_CORS_ORIGINS") != std::string::npos);
    CHECK(bad.output.find("'page.example' is not an origin") != std::string::npos);
}
