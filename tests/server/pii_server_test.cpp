// CHAT_PII_MODE through the real binary: mask keeps an e-mail out of the answer and the stored
// history, refuse answers 400 pii_detected without echoing it, and a bad value stops start-up.
#include "../support/server_process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <string>

using nlohmann::json;
using test_support::server_process;

TEST_CASE("CHAT_PII_MODE=mask: the provider, the answer and the history see [EMAIL], never the address") {
    server_process server{{{"CHAT_PII_MODE", "mask"}}};
    auto c = server.client();
    const std::string body = json{{"user_id", "ada"}, {"content", "écrivez à jean.dupont@example.fr, merci"}}.dump();
    auto r = c.Post("/chat", body, "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    CHECK(r->body.find("jean.dupont@example.fr") == std::string::npos);
    CHECK(r->body.find("[EMAIL]") != std::string::npos); // the echo provider answered the masked text
    CHECK(r->get_header_value("x-chatkit-pii") == "email=1");
    auto history = c.Get("/history/ada");
    REQUIRE(history);
    CHECK(history->body.find("jean.dupont@example.fr") == std::string::npos);
    CHECK(history->body.find("écrivez à [EMAIL], merci") != std::string::npos);
}

TEST_CASE("CHAT_PII_MODE=refuse: 400 pii_detected naming the kind, never the value, and nothing stored") {
    server_process server{{{"CHAT_PII_MODE", "refuse"}}};
    auto c = server.client();
    const json openai = {{"messages", {{{"role", "user"}, {"content", "my card is 4111 1111 1111 1111"}}}}, {"user", "bob"}};
    auto r = c.Post("/v1/chat/completions", openai.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(json::parse(r->body)["error"]["code"] == "pii_detected");
    CHECK(r->body.find("card") != std::string::npos);
    CHECK(r->body.find("4111") == std::string::npos);
    auto clean = c.Post("/chat", json{{"user_id", "bob"}, {"content", "nothing personal"}}.dump(), "application/json");
    REQUIRE(clean);
    CHECK(clean->status == 200);
    CHECK(json::parse(c.Get("/history/bob")->body)["messages"].size() == 2); // only the clean exchange
}

TEST_CASE("CHAT_PII_MODE: an unknown value stops start-up naming the setting") {
    const auto r = test_support::run_to_exit({{"CHAT_PII_MODE", "redact"}, {"CHAT_PORT", "0"}}, {});
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("CHAT_PII_MODE") != std::string::npos);
}
