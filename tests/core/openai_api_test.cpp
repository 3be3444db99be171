// POST /v1/chat/completions and GET /v1/models: the OpenAI wire format on the serving side.
#include <chatkit/chatkit.hpp>

#include <catch2/catch.hpp>

#include "map_cache.hpp"

#include <map>

using nlohmann::json;

namespace {

// Answers "ok <n words>", or a tool call when the request offers tools; records what it saw.
struct recording_provider {
    std::shared_ptr<std::vector<chatkit::chat_request>> seen = std::make_shared<std::vector<chatkit::chat_request>>();
    bool fail_stream = false;

    std::string_view name() const { return "recording"; }
    std::vector<std::string> models() const { return {"rec-large", "rec-small"}; }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        seen->push_back(r);
        chatkit::completion c;
        c.model = r.model.empty() ? "rec-large" : r.model;
        if (r.extensions.contains("tools")) {
            c.finish_reason = "tool_calls";
            c.extra = {{"tool_calls", {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}}}}};
        } else {
            c.content = "ok then";
        }
        c.usage = {5, 2};
        return c;
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) {
        seen->push_back(r);
        if (!sink("ok")) return chatkit::completion{};
        if (fail_stream) return chatkit::error{chatkit::error_kind::upstream, "upstream went away", "upstream_error"};
        sink(" then");
        chatkit::completion c;
        c.model = "rec-large";
        c.content = "ok then";
        c.usage = {5, 2};
        return c;
    }
    chatkit::component_health health() { return {}; }
};

using openai_service = chatkit::service<recording_provider, chatkit::no_store, chatkit::no_cache>;

chatkit::http_request post(const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    return req;
}

// The JSON of each `data:` line, and whether the stream ended with [DONE].
std::pair<std::vector<json>, bool> chunks_of(chatkit::http_response& res) {
    std::string text;
    res.stream([&](std::string_view c) { return text.append(c), true; }, res.meta);
    std::vector<json> chunks;
    bool done = false;
    chatkit::sse_parser parser;
    parser.feed(text, [&](const chatkit::sse_message& m) {
        if (m.data == "[DONE]") done = true;
        else chunks.push_back(json::parse(m.data));
    });
    return {chunks, done};
}

const json hello = {{"model", "rec-small"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};

} // namespace

TEST_CASE("the request maps OpenAI roles, content forms and extra fields") {
    auto r = chatkit::openai_api::parse_request(json::parse(R"({
        "model":"m","user":"u-1","max_completion_tokens":9,"max_tokens":3,"seed":7,
        "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto",
        "messages":[
          {"role":"developer","content":"rules"},
          {"role":"user","content":[{"type":"text","text":"look "},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"here"}]},
          {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
          {"role":"tool","tool_call_id":"c1","content":"42"}]})"));
    REQUIRE(r);
    CHECK(r->user_id == "u-1");
    CHECK(r->max_tokens == 9); // max_completion_tokens wins, as in the OpenAI API
    REQUIRE(r->messages.size() == 4);
    CHECK(r->messages[0].role == chatkit::role::system);
    CHECK(r->messages[1].content == "look here");
    CHECK(r->messages[1].extra["content"][1]["type"] == "image_url"); // kept for the upstream
    CHECK(r->messages[2].extra["tool_calls"][0]["id"] == "c1");
    CHECK(r->messages[2].content.empty());
    CHECK(r->messages[3].role == chatkit::role::tool);
    CHECK(r->messages[3].extra["tool_call_id"] == "c1");
    CHECK(r->extensions["seed"] == 7);
    CHECK(r->extensions["tool_choice"] == "auto");
    CHECK_FALSE(r->extensions.contains("max_tokens"));
    CHECK(r->extensions["max_completion_tokens"] == 9); // the name newer OpenAI models insist on
    CHECK_FALSE(r->extensions.contains("user"));
}

TEST_CASE("invalid OpenAI requests name the offending field") {
    auto param = [](const char* body) {
        auto r = chatkit::openai_api::parse_request(json::parse(body));
        REQUIRE_FALSE(r);
        CHECK(r.error().kind == chatkit::error_kind::invalid_request);
        return r.error().param;
    };
    CHECK(param(R"({"messages":[{"role":"user","content":"x"}],"n":2})") == "n");
    CHECK(param(R"({"messages":[{"role":"robot","content":"x"}]})") == "messages[0].role");
    CHECK(param(R"({"messages":[{"role":"user","content":5}]})") == "messages[0].content");
    CHECK(param(R"({"messages":[{"role":"user","content":[{"text":"x"}]}]})") == "messages[0].content");
    CHECK(param(R"({"messages":[]})") == "messages");
    CHECK(param(R"({"messages":[{"role":"user","content":"x"}],"user":""})") == "user");
    CHECK(param(R"({"messages":[{"role":"user","content":"x"}],"temperature":9})") == "temperature");
    CHECK(param(R"({"messages":[{"role":"user","content":"x"}],"stream_options":true})") == "stream_options");
    auto one = chatkit::openai_api::parse_request(
        json::parse(R"({"messages":[{"role":"user","content":"x"}],"n":1,"stop":null,"seed":null})"));
    REQUIRE(one);
    CHECK(one->extensions.empty()); // n:1 is the default, and null means absent
}

TEST_CASE("a non-streamed answer is the exact chat.completion object") {
    openai_service svc;
    auto res = svc.handle(post(hello));
    REQUIRE(res.status == 200);
    CHECK(res.headers.at("X-Cache") == "miss");
    const auto body = json::parse(res.body);
    CHECK(body["object"] == "chat.completion");
    CHECK(body["id"].get<std::string>().starts_with("chatcmpl-"));
    CHECK(body["created"].is_number_integer());
    CHECK(body["model"] == "rec-small");
    REQUIRE(body["choices"].size() == 1);
    const auto& choice = body["choices"][0];
    CHECK(choice["index"] == 0);
    CHECK(choice["message"] == json{{"role", "assistant"}, {"content", "ok then"}, {"refusal", nullptr}});
    CHECK(choice["logprobs"].is_null());
    CHECK(choice["finish_reason"] == "stop");
    CHECK(body["usage"] == json{{"prompt_tokens", 5}, {"completion_tokens", 2}, {"total_tokens", 7}});
}

TEST_CASE("tools are passed to the provider and its tool calls come back in the message") {
    openai_service svc;
    auto with_tools = hello;
    with_tools["tools"] = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
    const auto body = json::parse(svc.handle(post(with_tools)).body);
    CHECK(svc.provider().seen->back().extensions["tools"][0]["function"]["name"] == "f");
    CHECK(body["choices"][0]["finish_reason"] == "tool_calls");
    CHECK(body["choices"][0]["message"]["content"].is_null());
    CHECK(body["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1");
}

TEST_CASE("a stream is chat.completion.chunk events ending in [DONE], with usage when asked") {
    openai_service svc;
    auto ask = hello;
    ask["stream"] = true;
    auto plain = svc.handle(post(ask));
    CHECK(plain.headers.at("Content-Type") == "text/event-stream");
    auto [chunks, done] = chunks_of(plain);
    CHECK(done);
    REQUIRE(chunks.size() == 3);
    CHECK(chunks[0]["choices"][0]["delta"] == json{{"role", "assistant"}, {"content", "ok"}});
    CHECK(chunks[1]["choices"][0]["delta"] == json{{"content", " then"}});
    CHECK(chunks[2]["choices"][0]["finish_reason"] == "stop");
    for (const auto& c : chunks) {
        CHECK(c["object"] == "chat.completion.chunk");
        CHECK(c["id"] == chunks[0]["id"]);
        CHECK(c["created"] == chunks[0]["created"]);
        CHECK_FALSE(c.contains("usage"));
    }

    ask["stream_options"] = {{"include_usage", true}};
    auto with_usage = svc.handle(post(ask));
    auto [usage_chunks, usage_done] = chunks_of(with_usage);
    CHECK(usage_done);
    REQUIRE(usage_chunks.size() == 4);
    CHECK(usage_chunks[3]["choices"].empty());
    CHECK(usage_chunks[3]["usage"]["total_tokens"] == 7);
}

TEST_CASE("a stream that fails mid-way ends with an error object and no [DONE]") {
    recording_provider failing;
    failing.fail_stream = true;
    openai_service svc{failing};
    auto ask = hello;
    ask["stream"] = true;
    auto res = svc.handle(post(ask));
    auto [chunks, done] = chunks_of(res);
    CHECK_FALSE(done);
    REQUIRE(chunks.size() == 2);
    CHECK(chunks[1]["error"]["message"] == "upstream went away");
    CHECK(chunks[1]["error"]["type"] == "upstream_error");
}

TEST_CASE("errors use the OpenAI envelope and status codes") {
    openai_service svc;
    auto res = svc.handle(post({{"messages", json::array()}}));
    CHECK(res.status == 400);
    CHECK(json::parse(res.body)["error"]["type"] == "invalid_request_error");
    chatkit::http_request get;
    get.method = "GET";
    get.path = "/v1/chat/completions";
    CHECK(svc.handle(get).status == 405);
}

TEST_CASE("GET /v1/models lists the provider's models") {
    openai_service svc;
    chatkit::http_request req;
    req.method = "GET";
    req.path = "/v1/models";
    const auto body = json::parse(svc.handle(req).body);
    CHECK(body["object"] == "list");
    REQUIRE(body["data"].size() == 2);
    CHECK(body["data"][0] == json{{"id", "rec-large"}, {"object", "model"}, {"created", 0}, {"owned_by", "recording"}});
}

TEST_CASE("the cache key covers pass-through fields: a different seed or tool list is a miss") {
    chatkit::service<recording_provider, chatkit::no_store, map_cache> svc;
    auto ask = hello;
    ask["seed"] = 1;
    CHECK(svc.handle(post(ask)).headers.at("X-Cache") == "miss");
    CHECK(svc.handle(post(ask)).headers.at("X-Cache") == "hit");
    ask["seed"] = 2;
    CHECK(svc.handle(post(ask)).headers.at("X-Cache") == "miss");
    ask["messages"][0]["name"] = "someone";
    CHECK(svc.handle(post(ask)).headers.at("X-Cache") == "miss");
    CHECK(svc.provider().seen->size() == 3);
}

TEST_CASE("strings written without a tree are escaped exactly as nlohmann dumps them") {
    for (const std::string& s : {std::string{}, std::string{"plain ascii, 123"}, std::string{"quote \" and backslash \\"},
                                 std::string{"tab\tnew line\ncontrol \x01 del \x7f"}, std::string{"caf\xc3\xa9 \xe2\x9c\x93"},
                                 std::string{"broken \xff\xfe utf-8"}, std::string{"nul \0 inside", 13}}) {
        std::string out;
        chatkit::append_json_string(out, s);
        CHECK(out == chatkit::dump_json(json(s)));
    }
    std::string n;
    chatkit::append_json_int(n, -42);
    chatkit::append_json_int(n, std::int64_t{1741569952123});
    CHECK(n == "-421741569952123");
}

TEST_CASE("the chat.completion written as text is the same object as its tree") {
    chatkit::completion plain;
    plain.id = "chatcmpl-1";
    plain.model = "m\xc3\xa9";
    plain.content = "line one\nline \"two\" \xff";
    plain.created_at = 1741569952123;
    plain.usage = {11, 7};
    chatkit::completion tools;
    tools.finish_reason = "tool_calls";
    tools.extra = {{"tool_calls", {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}}}}};
    chatkit::completion refused;
    refused.content = "";
    refused.extra = {{"refusal", "I cannot help with that."}, {"annotations", json::array({{{"type", "url_citation"}}})}};
    for (const auto& c : {plain, tools, refused}) {
        const auto text = chatkit::openai_api::completion_text(c);
        CHECK(json::parse(text) == json::parse(chatkit::dump_json(chatkit::openai_api::completion_object(c))));
        CHECK(text.starts_with(R"({"id":)")); // OpenAI's field order, as its SDKs' fixtures have it
    }
}

TEST_CASE("a streamed tool call carries its index, by which the SDKs assemble calls") {
    chatkit::openai_api::completion_chunks writer{"chatcmpl-x", "m", 0};
    chatkit::completion c;
    c.model = "m";
    c.finish_reason = "tool_calls";
    c.extra = {{"tool_calls",
                {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}},
                 {{"id", "call_2"}, {"type", "function"}, {"function", {{"name", "g"}, {"arguments", R"({"a":1})"}}}}}}};
    std::vector<json> chunks;
    chatkit::sse_parser parser;
    parser.feed(writer.finish(c, false), [&](const chatkit::sse_message& m) {
        if (m.data != "[DONE]") chunks.push_back(json::parse(m.data));
    });
    REQUIRE(chunks.size() == 2);
    const auto& calls = chunks[1]["choices"][0]["delta"]["tool_calls"];
    REQUIRE(calls.size() == 2);
    CHECK(calls[0]["index"] == 0);
    CHECK(calls[1]["index"] == 1);
    CHECK(calls[1]["id"] == "call_2");
    CHECK(calls[1]["function"]["arguments"] == R"({"a":1})");
    CHECK(chunks[1]["choices"][0]["finish_reason"] == "tool_calls");
}
