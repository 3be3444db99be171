// A user's program: chatkit's echo provider, SQLite store, LRU cache and request-id middleware
// composed into one service, asked to chat and then for the history. Exits 0 only when both
// answers are right. Usage: consumer_app <directory for the SQLite file>
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/request_id.hpp>
#include <chatkit/service.hpp>
#include <chatkit/sqlite_store.hpp>

#include <nlohmann/json.hpp>

#include <exception>
#include <filesystem>
#include <iostream>
#include <string>

namespace {

using app_service = chatkit::service<chatkit::echo_provider, chatkit::sqlite_store, chatkit::lru_cache_mt, chatkit::request_id>;

int failures = 0;

void check(bool ok, const std::string& what) {
    if (!ok) {
        std::cerr << "FAILED: " << what << '\n';
        ++failures;
    }
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " <directory for the SQLite file>\n";
        return 2;
    }
    try {
        const std::filesystem::path dir = argv[1];
        std::filesystem::create_directories(dir);
        const auto db = dir / "consumer.db";
        for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db.string() + suffix); // a fresh history

        app_service svc{chatkit::echo_provider{}, chatkit::sqlite_store{chatkit::sqlite_options{.path = db.string()}},
                        chatkit::lru_cache_mt{}, chatkit::request_id{}};

        chatkit::http_request chat;
        chat.method = "POST";
        chat.path = "/chat";
        chat.headers.emplace("Content-Type", "application/json");
        chat.headers.emplace("X-Request-ID", "consumer-1");
        chat.body = R"({"user_id":"alice","content":"hello from a consumer"})";
        const auto answer = svc.handle(chat);
        std::cout << "POST /chat -> " << answer.status << ' ' << answer.body << '\n';
        check(answer.status == 200, "POST /chat status 200");
        check(!answer.is_stream(), "POST /chat answers in one JSON body");
        if (answer.status == 200) {
            const auto body = nlohmann::json::parse(answer.body);
            check(body.value("content", "") == "hello from a consumer", "the content is echoed");
            check(body.value("request_id", "") == "consumer-1", "the X-Request-ID is honoured");
        }
        const auto id_header = answer.headers.find("x-request-id");
        check(id_header != answer.headers.end() && id_header->second == "consumer-1", "X-Request-ID is echoed");

        chatkit::http_request history;
        history.method = "GET";
        history.path = "/history/alice";
        const auto page = svc.handle(history);
        std::cout << "GET /history/alice -> " << page.status << ' ' << page.body << '\n';
        check(page.status == 200, "GET /history status 200");
        if (page.status == 200) {
            const auto body = nlohmann::json::parse(page.body);
            const auto& messages = body.at("messages");
            check(messages.size() == 2, "the history holds 2 messages");
            if (messages.size() == 2) {
                check(messages[0].value("role", "") == "user" && messages[0].value("content", "") == "hello from a consumer",
                      "the first message is the user's");
                check(messages[1].value("role", "") == "assistant" && messages[1].value("content", "") == "hello from a consumer",
                      "the second message is the echoed reply");
            }
        }
    } catch (const std::exception& e) {
        std::cerr << "FAILED: exception: " << e.what() << '\n';
        return 1;
    }
    if (failures == 0) std::cout << "consumer_app: OK\n";
    return failures == 0 ? 0 : 1;
}
