// The conversations API through the real sample_server, on SQLite and, where the dynamodb plugin
// is built, on DynamoDB (moto, started here; dynalite has no transactions): every route and its
// errors, the context window a turn is sent with (read off a relaying provider's upstream),
// streamed turns, team scoping with keys, concurrent turns, and a restart.
#include "../support/fake_openai.hpp"
#include "../support/key_commands.hpp"
#include "../support/server_process.hpp"
#ifdef CONVERSATIONS_ON_DYNAMODB
#include "../support/aws_emulators.hpp"
#include "../support/sse_text.hpp"

#include <chatkit/dynamodb_store.hpp>
#endif

#include <catch2/catch.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <thread>

using nlohmann::json;
using test_support::bearer;
using test_support::cli;
using test_support::fake_openai;
using test_support::last_json;
using test_support::server_process;
using test_support::sse_json;
using test_support::temp_dir;

namespace {

const std::regex uuid_shape{"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"};

json body_of(const httplib::Result& r) {
    REQUIRE(r);
    INFO(r->body);
    return json::parse(r->body);
}

httplib::Result post(httplib::Client& c, const std::string& path, const json& body, const httplib::Headers& h = {}) {
    return c.Post(path, h, body.dump(), "application/json");
}

json create(httplib::Client& c, const json& body, const httplib::Headers& h = {}) {
    auto r = post(c, "/api/v1/conversations", body, h);
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 201);
    return json::parse(r->body);
}

json turn(httplib::Client& c, const std::string& id, const json& body, const httplib::Headers& h = {}) {
    auto r = post(c, "/api/v1/conversations/" + id + "/messages", body, h);
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    return json::parse(r->body);
}

// An error answer: its status and chatkit's envelope.
void expect_error(const httplib::Result& r, int status, const std::string& code, const std::string& param = {}) {
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == status);
    const auto body = json::parse(r->body);
    CHECK(body["error"]["code"] == code);
    if (!param.empty()) CHECK(body["error"]["param"] == param);
}

std::string conversation_path(const std::string& id, const std::string& rest = {}) { return "/api/v1/conversations/" + id + rest; }

// Where the server keeps its conversations: what it is started with, the same across restarts.
struct backend {
    std::string name;
    std::map<std::string, std::string> env{}; // empty: server_process's SQLite file
};

#ifdef CONVERSATIONS_ON_DYNAMODB
test_support::emulator_process& moto() {
    static test_support::emulator_process e = test_support::start_moto();
    return e;
}

// A history table and a conversations table, new for each call, and the URL that names them, as
// deploy/template.yaml configures the function.
backend dynamodb_backend() {
    static std::atomic<int> n{0};
    static const auto run = std::random_device{}();
    const auto table = "conv-" + std::to_string(run) + "-" + std::to_string(++n);
    const auto conversations = table + "-conversations";
    chatkit::aws::json_client client{chatkit::dynamodb_store::service(), {}, moto().aws_environment()};
    test_support::create_table(client, chatkit::dynamodb_store::create_table_input(table));
    test_support::create_table(client, chatkit::dynamodb_store::create_conversations_table_input(conversations));
    return {"dynamodb (moto)",
            {{"AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"},
             {"AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
             {"AWS_REGION", "us-east-1"},
             {"AWS_ENDPOINT_URL_DYNAMODB", moto().endpoint()},
             {"CHAT_PROVIDER", "echo"}, // with AWS credentials around, auto would pick Bedrock
             {"CHAT_USAGE", "off"},
             {"CHAT_DATABASE_URL", "dynamodb://" + table + "?region=us-east-1&conversations_table=" + conversations}}};
}
#endif

// Each store the binary can keep conversations in; a test case runs once per backend.
std::vector<std::function<backend()>> backends() {
    std::vector<std::function<backend()>> out{[] { return backend{"sqlite"}; }};
#ifdef CONVERSATIONS_ON_DYNAMODB
    out.emplace_back(dynamodb_backend);
#endif
    return out;
}

} // namespace

TEST_CASE("conversations: the design's walk-through, every route answering in the design's shapes") {
    const auto store = GENERATE(from_range(backends()))();
    INFO(store.name);
    server_process server{store.env};
    auto c = server.client();

    const auto conv = create(c, {{"user_id", "user_123"}, {"title", "Customer Support Chat"}, {"metadata", {{"source", "web"}}}});
    const std::string id = conv["id"];
    CHECK(std::regex_match(id, uuid_shape));
    CHECK(conv["user_id"] == "user_123");
    CHECK(conv["title"] == "Customer Support Chat");
    CHECK(conv["metadata"] == json{{"source", "web"}});
    CHECK(conv["created_at"] == conv["updated_at"]);
    CHECK(conv.size() == 6);

    const auto answer = turn(c, id, {{"message", "What is the weather like today?"}, {"temperature", 0.7}, {"max_tokens", 150}});
    const auto& m = answer["message"];
    CHECK(std::regex_match(m["id"].get<std::string>(), uuid_shape));
    CHECK(m["conversation_id"] == id);
    CHECK(m["role"] == "assistant");
    CHECK(m["content"] == "What is the weather like today?"); // the echo provider
    CHECK(m["provider"] == "echo");
    CHECK(m["model"].is_string());
    CHECK(m["prompt_tokens"] == 6);
    CHECK(m["completion_tokens"] == 6);
    CHECK(m["total_tokens"] == 12);
    CHECK(m.contains("cost_usd"));
    CHECK(m["latency_ms"].is_number());
    CHECK(m["time_to_first_token_ms"].is_number());
    CHECK(m["created_at"].is_string());
    CHECK(answer["conversation_id"] == id);
    CHECK(answer["usage"] == json{{"prompt_tokens", 6}, {"completion_tokens", 6}, {"total_tokens", 12}});
    CHECK(answer["cost_usd"] == m["cost_usd"]);

    const auto second = turn(c, id, {{"message", "and tomorrow?"}});

    auto got = body_of(c.Get(conversation_path(id)));
    CHECK(got["id"] == id);
    CHECK(got["title"] == "Customer Support Chat");
    REQUIRE(got["messages"].size() == 4);
    CHECK(got["messages"][0]["role"] == "user");
    CHECK(got["messages"][0]["content"] == "What is the weather like today?");
    CHECK(got["messages"][0]["prompt_tokens"].is_null());
    CHECK(got["messages"][1] == m); // what the turn answered is what was stored
    CHECK(got["messages"][3]["id"] == second["message"]["id"]);
    CHECK(got["message_count"] == 4);
    CHECK(got["total_tokens"] == 12 + second["message"]["total_tokens"].get<int>());
    CHECK(got["total_cost_usd"].is_number());
    CHECK(got["next_cursor"].is_null());
    CHECK(got["updated_at"] == second["message"]["created_at"]);

    // messages, oldest first, a page at a time
    std::vector<std::string> contents;
    std::string cursor;
    for (int pages = 0; pages < 10; ++pages) {
        auto page = body_of(c.Get(conversation_path(id, "/messages?limit=3" + (cursor.empty() ? "" : "&cursor=" + cursor))));
        CHECK(page["conversation_id"] == id);
        for (const auto& x : page["messages"]) contents.push_back(x["content"]);
        if (page["next_cursor"].is_null()) break;
        cursor = page["next_cursor"];
    }
    CHECK(contents ==
          std::vector<std::string>{"What is the weather like today?", "What is the weather like today?", "and tomorrow?", "and tomorrow?"});

    // list, newest first
    const auto newer = create(c, {{"user_id", "user_123"}});
    CHECK(newer["title"].is_null());
    CHECK(newer["metadata"] == json::object());
    create(c, {{"user_id", "someone_else"}});
    auto listed = body_of(c.Get("/api/v1/conversations?user_id=user_123&limit=1"));
    REQUIRE(listed["conversations"].size() == 1);
    CHECK(listed["conversations"][0]["id"] == newer["id"]);
    REQUIRE(listed["next_cursor"].is_string());
    auto rest = body_of(c.Get("/api/v1/conversations?user_id=user_123&limit=1&cursor=" + listed["next_cursor"].get<std::string>()));
    REQUIRE(rest["conversations"].size() == 1);
    CHECK(rest["conversations"][0]["id"] == id);
    CHECK(rest["next_cursor"].is_null());

    // rename, feedback, delete
    auto patched = c.Patch(conversation_path(id), json{{"title", "Renamed"}}.dump(), "application/json");
    auto renamed = body_of(patched);
    CHECK(patched->status == 200);
    CHECK(renamed["title"] == "Renamed");
    CHECK(renamed["metadata"] == json{{"source", "web"}});
    CHECK(renamed["updated_at"] >= got["updated_at"]);

    auto fb = post(c, conversation_path(id, "/feedback"),
                   {{"message_id", m["id"]}, {"feedback_type", "thumbs_up"}, {"rating", 5}, {"comment", "Very helpful response!"}});
    const auto stored = body_of(fb);
    CHECK(fb->status == 201);
    CHECK(std::regex_match(stored["id"].get<std::string>(), uuid_shape));
    CHECK(stored["conversation_id"] == id);
    CHECK(stored["message_id"] == m["id"]);
    CHECK(stored["feedback_type"] == "thumbs_up");
    CHECK(stored["rating"] == 5);
    CHECK(stored["comment"] == "Very helpful response!");
    auto feedback = body_of(c.Get(conversation_path(id, "/feedback")));
    REQUIRE(feedback["feedback"].size() == 1);
    CHECK(feedback["feedback"][0] == stored);

    auto deleted = c.Delete(conversation_path(id));
    REQUIRE(deleted);
    CHECK(deleted->status == 204);
    CHECK(deleted->body.empty());
    expect_error(c.Get(conversation_path(id)), 404, "conversation_not_found");
    expect_error(c.Get(conversation_path(id, "/messages")), 404, "conversation_not_found");
    expect_error(c.Get(conversation_path(id, "/feedback")), 404, "conversation_not_found");
    expect_error(c.Delete(conversation_path(id)), 404, "conversation_not_found");
    // the others are untouched, and /chat and /history work as before
    CHECK(body_of(c.Get("/api/v1/conversations?user_id=user_123"))["conversations"].size() == 1);
    auto chat = body_of(post(c, "/chat", {{"user_id", "user_123"}, {"content", "plain"}}));
    CHECK(chat["timestamp"] == chat["created_at"]);
    CHECK(body_of(c.Get("/history/user_123"))["messages"].size() == 2);
}

TEST_CASE("conversations: bad requests get a clear error with the right status, and change nothing") {
    const auto store = GENERATE(from_range(backends()))();
    INFO(store.name);
    server_process server{store.env};
    auto c = server.client();
    const std::string id = create(c, {{"user_id", "ada"}})["id"];
    const std::string answer_id = turn(c, id, {{"message", "hello"}})["message"]["id"];
    const std::string other = create(c, {{"user_id", "ada"}})["id"];
    const std::string other_answer = turn(c, other, {{"message", "elsewhere"}})["message"]["id"];
    const std::string unknown = "0b6f6a8e-3c1d-4e2f-9a7b-5c4d3e2f1a0b";

    expect_error(c.Get(conversation_path(unknown)), 404, "conversation_not_found");
    expect_error(post(c, conversation_path(unknown, "/messages"), {{"message", "hi"}}), 404, "conversation_not_found");
    expect_error(c.Get(conversation_path(unknown, "/stream?message=hi")), 404, "conversation_not_found");
    expect_error(c.Get(conversation_path("not-a-uuid")), 400, "invalid_id", "id");
    expect_error(post(c, conversation_path("123", "/messages"), {{"message", "hi"}}), 400, "invalid_id", "id");
    expect_error(c.Get(conversation_path(id, "/nothing")), 404, "not_found");

    expect_error(post(c, "/api/v1/conversations", json::object()), 400, "missing_field", "user_id");
    expect_error(post(c, "/api/v1/conversations", {{"user_id", ""}}), 400, "invalid_value", "user_id");
    expect_error(post(c, "/api/v1/conversations", {{"user_id", "ada"}, {"title", 5}}), 400, "invalid_type", "title");
    expect_error(post(c, "/api/v1/conversations", {{"user_id", "ada"}, {"metadata", "x"}}), 400, "invalid_type", "metadata");
    expect_error(post(c, "/api/v1/conversations", {{"user_id", "ada"}, {"colour", "red"}}), 400, "unknown_field", "colour");
    expect_error(c.Post("/api/v1/conversations", "{not json", "application/json"), 400, "invalid_json");
    expect_error(c.Get("/api/v1/conversations"), 400, "missing_field", "user_id");
    expect_error(c.Get("/api/v1/conversations?user_id=ada&limit=0"), 400, "invalid_value", "limit");
    expect_error(c.Get("/api/v1/conversations?user_id=ada&cursor=zzz"), 400, "invalid_cursor", "cursor");
    expect_error(c.Get(conversation_path(id, "/messages?cursor=-4")), 400, "invalid_cursor", "cursor");

    expect_error(post(c, conversation_path(id, "/messages"), {{"message", ""}}), 400, "empty_message", "message");
    expect_error(post(c, conversation_path(id, "/messages"), {{"message", "  \n"}}), 400, "empty_message", "message");
    expect_error(post(c, conversation_path(id, "/messages"), json::object()), 400, "missing_field", "message");
    expect_error(post(c, conversation_path(id, "/messages"), {{"message", "hi"}, {"temperature", 3}}), 400, "invalid_value", "temperature");
    expect_error(post(c, conversation_path(id, "/messages"), {{"message", "hi"}, {"max_tokens", "x"}}), 400, "invalid_type", "max_tokens");
    expect_error(c.Get(conversation_path(id, "/stream")), 400, "missing_field", "message");

    expect_error(c.Patch(conversation_path(id), json{{"user_id", "mallory"}}.dump(), "application/json"), 400, "unknown_field", "user_id");
    expect_error(c.Patch(conversation_path(id), json{{"title", json::array()}}.dump(), "application/json"), 400, "invalid_type", "title");
    expect_error(c.Patch(conversation_path(unknown), json{{"title", "x"}}.dump(), "application/json"), 404, "conversation_not_found");

    const auto fb = [&](json body) { return post(c, conversation_path(id, "/feedback"), body); };
    expect_error(fb({{"message_id", answer_id}, {"feedback_type", "meh"}}), 400, "invalid_value", "feedback_type");
    expect_error(fb({{"message_id", answer_id}, {"feedback_type", "flag"}, {"rating", 6}}), 400, "invalid_value", "rating");
    expect_error(fb({{"message_id", answer_id}, {"feedback_type", "flag"}, {"rating", 0}}), 400, "invalid_value", "rating");
    expect_error(fb({{"message_id", answer_id}, {"feedback_type", "flag"}, {"rating", 2.5}}), 400, "invalid_type", "rating");
    expect_error(fb({{"message_id", "nope"}, {"feedback_type", "flag"}}), 400, "invalid_id", "message_id");
    expect_error(fb({{"feedback_type", "flag"}}), 400, "missing_field", "message_id");
    expect_error(fb({{"message_id", other_answer}, {"feedback_type", "flag"}}), 404, "message_not_found", "message_id");
    expect_error(fb({{"message_id", unknown}, {"feedback_type", "flag"}}), 404, "message_not_found", "message_id");

    auto put = c.Put(conversation_path(id), "{}", "application/json");
    REQUIRE(put);
    CHECK(put->status == 405);
    CHECK(put->get_header_value("Allow") == "GET, PATCH, DELETE");

    // none of it changed the conversation
    auto got = body_of(c.Get(conversation_path(id)));
    CHECK(got["messages"].size() == 2);
    CHECK(got["title"].is_null());
    CHECK(body_of(c.Get(conversation_path(id, "/feedback")))["feedback"].empty());
}

TEST_CASE("conversations: a turn is sent with the system prompt and the newest earlier messages that fit the window") {
    fake_openai fake;
    server_process server{{{"OPENAI_API_KEY", "sk-test-conversations"},
                           {"OPENAI_BASE_URL", fake.base_url()},
                           {"CHAT_MODEL", "fake-1"},
                           {"CHAT_CONTEXT_MESSAGES", "2"},
                           {"CHAT_CACHE_SIZE", "0"}}};
    auto c = server.client();
    const std::string id = create(c, {{"user_id", "ada"}, {"metadata", {{"system_prompt", "Be brief."}}}})["id"];
    for (const char* text : {"first question", "second question", "third question"}) turn(c, id, {{"message", text}});

    const auto sent = fake.requests();
    REQUIRE(sent.size() == 3);
    const json expected_first = json::array(
        {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "first question"}}});
    CHECK(sent[0].body["messages"] == expected_first);
    const json expected_third = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                             {{"role", "user"}, {"content", "second question"}},
                                             {{"role", "assistant"}, {"content", "echo: second question"}},
                                             {{"role", "user"}, {"content", "third question"}}});
    CHECK(sent[2].body["messages"] == expected_third);
    CHECK(sent[2].body["user"] == "ada");

    // a streamed turn through the relaying provider: deltas, then the stored answer's id and usage
    auto streamed = c.Get(conversation_path(id, "/stream?message=fourth%20question"));
    REQUIRE(streamed);
    REQUIRE(streamed->status == 200);
    CHECK(streamed->get_header_value("Content-Type") == "text/event-stream");
    const auto events = sse_json(streamed->body);
    REQUIRE(events.size() >= 2);
    std::string text;
    for (std::size_t i = 0; i + 1 < events.size(); ++i) {
        CHECK(events[i]["done"] == false);
        text += events[i]["content"].get<std::string>();
    }
    CHECK(text == "echo: fourth question");
    const auto& done = events.back();
    CHECK(done["done"] == true);
    CHECK(done["content"] == "");
    CHECK(done["usage"]["total_tokens"] == 5);
    auto messages = body_of(c.Get(conversation_path(id, "/messages")))["messages"];
    REQUIRE(messages.size() == 8);
    CHECK(messages[7]["id"] == done["message_id"]);
    CHECK(messages[7]["content"] == "echo: fourth question");
    CHECK(messages[7]["provider"] == "openai");
    CHECK(messages[6]["content"] == "fourth question");
}

TEST_CASE("conversations: streamed turns with the echo provider, by GET and by POST, are stored once complete") {
    const auto store = GENERATE(from_range(backends()))();
    INFO(store.name);
    server_process server{store.env};
    auto c = server.client();
    const std::string id = create(c, {{"user_id", "ada"}})["id"];

    auto by_get = c.Get(conversation_path(id, "/stream?message=one%20two%20three&max_tokens=50"));
    REQUIRE(by_get);
    REQUIRE(by_get->status == 200);
    auto events = sse_json(by_get->body);
    REQUIRE(events.size() == 4);
    CHECK(events[0] == json{{"content", "one"}, {"done", false}});
    CHECK(events[1] == json{{"content", " two"}, {"done", false}});
    CHECK(events[3]["done"] == true);
    CHECK(events[3]["conversation_id"] == id);
    CHECK(events[3]["usage"]["completion_tokens"] == 3);

    auto by_post = post(c, conversation_path(id, "/stream"), {{"message", "four five"}});
    REQUIRE(by_post);
    REQUIRE(by_post->status == 200);
    const auto post_events = sse_json(by_post->body);
    REQUIRE(post_events.size() == 3);

    auto got = body_of(c.Get(conversation_path(id)));
    REQUIRE(got["messages"].size() == 4);
    CHECK(got["messages"][1]["id"] == events[3]["message_id"]);
    CHECK(got["messages"][1]["content"] == "one two three");
    CHECK(got["messages"][3]["id"] == post_events[2]["message_id"]);
    CHECK(got["messages"][3]["time_to_first_token_ms"].is_number());

    // an error before the stream starts is a plain JSON error
    expect_error(post(c, conversation_path(id, "/stream"), {{"message", ""}}), 400, "empty_message");
}

TEST_CASE("conversations: a streamed turn the client abandons stores nothing, unless configured to keep it") {
    for (const bool keep : {false, true}) {
        DYNAMIC_SECTION("CHAT_KEEP_ABANDONED_TURNS=" << (keep ? "on" : "off")) {
            server_process server{{{"CHAT_ECHO_DELAY_MS", "300"}, {"CHAT_KEEP_ABANDONED_TURNS", keep ? "on" : "off"}}};
            auto c = server.client();
            const std::string id = create(c, {{"user_id", "ada"}})["id"];
            std::string received;
            auto r = c.Get(conversation_path(id, "/stream?message=w1%20w2%20w3%20w4%20w5%20w6%20w7%20w8"),
                           [&](const char* data, std::size_t size) {
                               received.append(data, size);
                               return received.find("w2") == std::string::npos; // leave after two words
                           });
            CHECK_FALSE(r); // cancelled by the client
            json messages;
            for (int i = 0; i < 60; ++i) { // the server notices at its next write
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                messages = body_of(c.Get(conversation_path(id, "/messages")))["messages"];
                if (!keep || !messages.empty()) break;
            }
            if (!keep) {
                std::this_thread::sleep_for(std::chrono::milliseconds(1500)); // past the next word: nothing may appear
                CHECK(body_of(c.Get(conversation_path(id, "/messages")))["messages"].empty());
            } else {
                REQUIRE(messages.size() == 2);
                CHECK(messages[0]["content"] == "w1 w2 w3 w4 w5 w6 w7 w8");
                const std::string kept = messages[1]["content"];
                CHECK(kept.starts_with("w1 w2"));
                CHECK(kept.size() < std::string("w1 w2 w3 w4 w5 w6 w7 w8").size());
            }
        }
    }
}

TEST_CASE("conversations: concurrent turns into one conversation keep each question next to its answer") {
    const auto store = GENERATE(from_range(backends()))();
    INFO(store.name);
    server_process server{store.env};
    const int port = server.port();
    std::string id;
    {
        auto c = server.client();
        id = create(c, {{"user_id", "ada"}})["id"];
    }
    constexpr int threads = 8, per_thread = 4;
    std::atomic<int> failures{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < threads; ++t)
        clients.emplace_back([&, t] {
            httplib::Client c{"127.0.0.1", port};
            for (int i = 0; i < per_thread; ++i) {
                auto r = post(c, conversation_path(id, "/messages"), {{"message", "q" + std::to_string(t) + "x" + std::to_string(i)}});
                if (!r || r->status != 200) ++failures;
            }
        });
    for (auto& t : clients) t.join();
    CHECK(failures == 0);
    auto c = server.client();
    auto messages = body_of(c.Get(conversation_path(id, "/messages?limit=100")))["messages"];
    REQUIRE(messages.size() == 2 * threads * per_thread);
    std::set<std::string> questions;
    for (std::size_t i = 0; i < messages.size(); i += 2) {
        CHECK(messages[i]["role"] == "user");
        CHECK(messages[i + 1]["role"] == "assistant");
        CHECK(messages[i + 1]["content"] == messages[i]["content"]); // echo: each answer right after its question
        questions.insert(messages[i]["content"]);
    }
    CHECK(questions.size() == threads * per_thread);
    CHECK(body_of(c.Get(conversation_path(id)))["message_count"] == 2 * threads * per_thread);
}

TEST_CASE("conversations: a restart keeps conversations, messages and feedback") {
    const auto store = GENERATE(from_range(backends()))();
    INFO(store.name);
    temp_dir dir;
    const auto db = dir.path() / "kept.db"; // for SQLite
    std::string id, answer_id;
    {
        server_process first{store.env, db};
        auto c = first.client();
        id = create(c, {{"user_id", "ada"}, {"title", "Kept"}})["id"];
        answer_id = turn(c, id, {{"message", "remember me"}})["message"]["id"];
        REQUIRE(post(c, conversation_path(id, "/feedback"), {{"message_id", answer_id}, {"feedback_type", "flag"}})->status == 201);
        CHECK(first.stop() == 0);
    }
    server_process second{store.env, db};
    auto c = second.client();
    auto got = body_of(c.Get(conversation_path(id)));
    CHECK(got["title"] == "Kept");
    REQUIRE(got["messages"].size() == 2);
    CHECK(got["messages"][1]["id"] == answer_id);
    CHECK(body_of(c.Get(conversation_path(id, "/feedback")))["feedback"].size() == 1);
    CHECK(body_of(c.Get("/api/v1/conversations?user_id=ada"))["conversations"].size() == 1);
}

TEST_CASE("conversations: with keys, a conversation belongs to its team, and another team gets 404, never 403") {
    temp_dir dir;
    const auto db = dir.path() / "keys.db";
    for (const char* team : {"red", "blue"}) REQUIRE(cli(db, {"teams", "create", "--id", team}).exit_code == 0);
    const std::string red = last_json(cli(db, {"keys", "create", "--team", "red"}).output)["key"];
    const std::string red_too = last_json(cli(db, {"keys", "create", "--team", "red"}).output)["key"];
    const std::string blue = last_json(cli(db, {"keys", "create", "--team", "blue"}).output)["key"];
    const std::string limited = last_json(cli(db, {"keys", "create", "--team", "red", "--models", "only-this"}).output)["key"];
    server_process server({{"CHAT_AUTH", "keys"}}, db);
    auto c = server.client();

    expect_error(post(c, "/api/v1/conversations", {{"user_id", "ada"}}), 401, "invalid_api_key");
    const std::string id = create(c, {{"user_id", "ada"}}, bearer(red))["id"];
    const std::string answer_id = turn(c, id, {{"message", "team secret"}}, bearer(red))["message"]["id"];
    // the same team, another key: the team's conversation
    CHECK(body_of(c.Get(conversation_path(id), bearer(red_too)))["messages"].size() == 2);

    expect_error(c.Get(conversation_path(id), bearer(blue)), 404, "conversation_not_found");
    expect_error(c.Get(conversation_path(id, "/messages"), bearer(blue)), 404, "conversation_not_found");
    expect_error(post(c, conversation_path(id, "/messages"), {{"message", "let me in"}}, bearer(blue)), 404, "conversation_not_found");
    expect_error(c.Get(conversation_path(id, "/stream?message=x"), bearer(blue)), 404, "conversation_not_found");
    expect_error(c.Patch(conversation_path(id), json{{"title", "mine now"}}.dump(), "application/json"), 401, "invalid_api_key");
    auto patch = c.Patch(conversation_path(id), bearer(blue), json{{"title", "mine now"}}.dump(), "application/json");
    expect_error(patch, 404, "conversation_not_found");
    expect_error(post(c, conversation_path(id, "/feedback"), {{"message_id", answer_id}, {"feedback_type", "flag"}}, bearer(blue)), 404,
                 "conversation_not_found");
    expect_error(c.Delete(conversation_path(id), bearer(blue)), 404, "conversation_not_found");
    CHECK(body_of(c.Get("/api/v1/conversations?user_id=ada", bearer(blue)))["conversations"].empty());
    CHECK(body_of(c.Get("/api/v1/conversations?user_id=ada", bearer(red)))["conversations"].size() == 1);

    // a key limited to some models may not use another through a turn, posted or streamed
    const std::string limited_id = create(c, {{"user_id", "ada"}}, bearer(limited))["id"];
    expect_error(post(c, conversation_path(limited_id, "/messages"), {{"message", "hi"}, {"model", "echo-1"}}, bearer(limited)), 403,
                 "model_not_allowed");
    expect_error(c.Get(conversation_path(limited_id, "/stream?message=hi&model=echo-1"), bearer(limited)), 403, "model_not_allowed");

    // nothing the blue team tried changed it
    auto got = body_of(c.Get(conversation_path(id), bearer(red)));
    CHECK(got["title"].is_null());
    CHECK(got["messages"].size() == 2);
}
