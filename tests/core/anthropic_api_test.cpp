// POST /v1/messages: the Anthropic Messages API on the serving side, translated to any provider.
#include <chatkit/chatkit.hpp>

#include <catch2/catch.hpp>

#include "map_cache.hpp"

using nlohmann::json;

namespace {

// Answers "ok then", or a tool call when the request offers tools; records what it saw.
struct recording_provider {
    std::shared_ptr<std::vector<chatkit::chat_request>> seen = std::make_shared<std::vector<chatkit::chat_request>>();
    bool fail_stream = false;

    std::string_view name() const { return "recording"; }
    std::vector<std::string> models() const { return {"rec-large"}; }
    chatkit::completion answer(const chatkit::chat_request& r) const {
        chatkit::completion c;
        c.model = r.model.empty() ? "rec-large" : r.model;
        if (r.extensions.contains("tools")) {
            c.finish_reason = "tool_calls";
            c.extra = {{"tool_calls",
                        {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", R"({"q":"x"})"}}}}}}};
        } else {
            c.content = "ok then";
            c.finish_reason = r.max_tokens == 2 ? "length" : "stop";
        }
        c.usage = {12, 2, 4, 0};
        return c;
    }
    chatkit::result<chatkit::completion> complete(const chatkit::chat_request& r) {
        seen->push_back(r);
        return answer(r);
    }
    chatkit::result<chatkit::completion> stream(const chatkit::chat_request& r, const chatkit::delta_sink& sink) {
        seen->push_back(r);
        auto c = answer(r);
        if (c.content.empty()) return c;
        if (!sink("ok")) return chatkit::completion{};
        if (fail_stream) return chatkit::error{chatkit::error_kind::upstream, "upstream went away", "upstream_error"};
        sink(" then");
        return c;
    }
    chatkit::component_health health() { return {}; }
};

// Refuses every request as a rate limiter would, in chatkit's envelope.
struct refusing_middleware {
    std::optional<chatkit::http_response> before(chatkit::http_request& req, chatkit::no_context&) {
        return chatkit::error_response({chatkit::error_kind::rate_limited, "slow down", "rate_limited"}, req.request_id);
    }
    void after(const chatkit::http_request&, chatkit::http_response&, chatkit::no_context&) {}
};

using messages_service = chatkit::service<recording_provider, chatkit::no_store, chatkit::no_cache>;

chatkit::http_request post(const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/messages";
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    return req;
}

// Each event of a stream: its name and its JSON.
std::vector<std::pair<std::string, json>> events_of(chatkit::http_response& res) {
    std::string text;
    res.stream([&](std::string_view c) { return text.append(c), true; }, res.meta);
    std::vector<std::pair<std::string, json>> events;
    chatkit::sse_parser parser;
    parser.feed(text, [&](const chatkit::sse_message& m) { events.emplace_back(m.event, json::parse(m.data)); });
    return events;
}

std::vector<std::string> names_of(const std::vector<std::pair<std::string, json>>& events) {
    std::vector<std::string> names;
    for (const auto& e : events) names.push_back(e.first);
    return names;
}

const json hello = {{"model", "rec-large"}, {"max_tokens", 64}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};

} // namespace

TEST_CASE("a Messages request maps system, blocks, tool uses and tool results to chat messages") {
    auto r = chatkit::anthropic_api::parse_request(json::parse(R"({
        "model":"m","max_tokens":100,"temperature":0.5,"top_p":0.9,"stop_sequences":["END"],
        "system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}},{"type":"text","text":"be kind"}],
        "metadata":{"user_id":"u-1"},
        "tools":[{"name":"lookup","description":"finds","input_schema":{"type":"object"}}],
        "tool_choice":{"type":"any"},
        "messages":[
          {"role":"user","content":[{"type":"text","text":"look "},{"type":"text","text":"here"}]},
          {"role":"assistant","content":[{"type":"text","text":"let me"},{"type":"tool_use","id":"tu_1","name":"lookup","input":{"q":"x"}}]},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"tu_1","content":"42"},{"type":"text","text":"and?"}]},
          {"role":"assistant","content":"fine"},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"tu_2","is_error":true,"content":[{"type":"text","text":"boom"}]}]}]})"));
    REQUIRE(r);
    CHECK(r->model == "m");
    CHECK(r->max_tokens == 100);
    CHECK(r->temperature == 0.5);
    CHECK(r->user_id == "u-1");
    REQUIRE(r->messages.size() == 7);
    CHECK(r->messages[0].role == chatkit::role::system);
    CHECK(r->messages[0].content == "be brief\n\nbe kind");
    CHECK(r->messages[1].content == "look here");
    CHECK(r->messages[2].role == chatkit::role::assistant);
    CHECK(r->messages[2].content == "let me");
    CHECK(r->messages[2].extra["tool_calls"][0] ==
          json{{"id", "tu_1"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", R"({"q":"x"})"}}}});
    CHECK(r->messages[3].role == chatkit::role::tool);
    CHECK(r->messages[3].content == "42");
    CHECK(r->messages[3].extra["tool_call_id"] == "tu_1");
    CHECK(r->messages[4].content == "and?");
    CHECK(r->messages[5].content == "fine");
    CHECK(r->messages[6].role == chatkit::role::tool); // a tool result alone adds no empty user message
    CHECK(r->messages[6].content == "Error: boom");
    CHECK(r->extensions["top_p"] == 0.9);
    CHECK(r->extensions["stop"] == json{"END"});
    CHECK(r->extensions["tools"][0] ==
          json{{"type", "function"}, {"function", {{"name", "lookup"}, {"description", "finds"}, {"parameters", {{"type", "object"}}}}}});
    CHECK(r->extensions["tool_choice"] == "required");
}

TEST_CASE("a Messages request the gateway cannot honour is refused by name, never silently changed") {
    auto param = [](const char* body) {
        auto r = chatkit::anthropic_api::parse_request(json::parse(body));
        REQUIRE_FALSE(r);
        CHECK(r.error().kind == chatkit::error_kind::invalid_request);
        return r.error().param;
    };
    CHECK(param(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":5})") == "model");
    CHECK(param(R"({"model":"m","messages":[{"role":"user","content":"x"}]})") == "max_tokens");
    CHECK(param(R"({"model":"m","max_tokens":5,"messages":[]})") == "messages");
    CHECK(param(R"({"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]})") == "messages[0].role");
    CHECK(param(R"({"model":"m","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"x"}]})") == "temperature");
    CHECK(param(R"({"model":"m","max_tokens":5,"top_k":5,"messages":[{"role":"user","content":"x"}]})") == "top_k");
    CHECK(param(R"({"model":"m","max_tokens":5,"thinking":{"type":"enabled"},"messages":[{"role":"user","content":"x"}]})") == "thinking");
    CHECK(param(R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]})") ==
          "messages[0].content[0]");
    CHECK(param(R"({"model":"m","max_tokens":5,"tools":[{"type":"web_search_20250305","name":"web_search"}],
                    "messages":[{"role":"user","content":"x"}]})") == "tools[0].type");
    CHECK(param(R"({"model":"m","max_tokens":5,"metadata":{"session":"s"},"messages":[{"role":"user","content":"x"}]})") ==
          "metadata.session");
    auto code = chatkit::anthropic_api::parse_request(
        json::parse(R"({"model":"m","max_tokens":5,"top_k":5,"messages":[{"role":"user","content":"x"}]})"));
    CHECK(code.error().code == "unsupported_parameter");
}

TEST_CASE("a non-streamed answer is the exact Messages object, with cached tokens out of input_tokens") {
    messages_service svc;
    auto res = svc.handle(post(hello));
    REQUIRE(res.status == 200);
    const auto body = json::parse(res.body);
    CHECK(body["id"].get<std::string>().starts_with("msg_"));
    CHECK(body["type"] == "message");
    CHECK(body["role"] == "assistant");
    CHECK(body["model"] == "rec-large");
    CHECK(body["content"] == json::array({{{"type", "text"}, {"text", "ok then"}}}));
    CHECK(body["stop_reason"] == "end_turn");
    CHECK(body["stop_sequence"].is_null());
    CHECK(body["usage"] ==
          json{{"input_tokens", 8}, {"output_tokens", 2}, {"cache_creation_input_tokens", 0}, {"cache_read_input_tokens", 4}});

    auto short_answer = hello;
    short_answer["max_tokens"] = 2;
    CHECK(json::parse(svc.handle(post(short_answer)).body)["stop_reason"] == "max_tokens");
}

TEST_CASE("a tool call comes back as a tool_use block with its input as an object") {
    messages_service svc;
    auto ask = hello;
    ask["tools"] = json::array({{{"name", "lookup"}, {"input_schema", {{"type", "object"}}}}});
    const auto body = json::parse(svc.handle(post(ask)).body);
    CHECK(svc.provider().seen->back().extensions["tools"][0]["function"]["name"] == "lookup");
    CHECK(body["stop_reason"] == "tool_use");
    CHECK(body["content"] == json::array({{{"type", "tool_use"}, {"id", "call_1"}, {"name", "lookup"}, {"input", {{"q", "x"}}}}}));
}

TEST_CASE("a stream is Anthropic's event sequence with usage in message_delta") {
    messages_service svc;
    auto ask = hello;
    ask["stream"] = true;
    auto res = svc.handle(post(ask));
    CHECK(res.headers.at("Content-Type") == "text/event-stream");
    auto events = events_of(res);
    CHECK(names_of(events) == std::vector<std::string>{"message_start", "ping", "content_block_start", "content_block_delta",
                                                       "content_block_delta", "content_block_stop", "message_delta", "message_stop"});
    for (const auto& [name, data] : events) CHECK(data["type"] == name); // the SDKs read the type, not the event name
    const auto& start = events[0].second["message"];
    CHECK(start["id"].get<std::string>().starts_with("msg_"));
    CHECK(start["model"] == "rec-large");
    CHECK(start["content"].empty());
    CHECK(events[2].second["content_block"] == json{{"type", "text"}, {"text", ""}});
    CHECK(events[3].second["delta"] == json{{"type", "text_delta"}, {"text", "ok"}});
    CHECK(events[4].second["delta"]["text"] == " then");
    CHECK(events[6].second["delta"]["stop_reason"] == "end_turn");
    CHECK(events[6].second["usage"]["output_tokens"] == 2);
    CHECK(events[6].second["usage"]["input_tokens"] == 8);
}

TEST_CASE("a streamed tool call is a tool_use block whose input arrives as input_json_delta") {
    messages_service svc;
    auto ask = hello;
    ask["stream"] = true;
    ask["tools"] = json::array({{{"name", "lookup"}, {"input_schema", {{"type", "object"}}}}});
    auto res = svc.handle(post(ask));
    auto events = events_of(res);
    CHECK(names_of(events) == std::vector<std::string>{"message_start", "ping", "content_block_start", "content_block_delta",
                                                       "content_block_stop", "message_delta", "message_stop"});
    CHECK(events[2].second["index"] == 0);
    CHECK(events[2].second["content_block"] == json{{"type", "tool_use"}, {"id", "call_1"}, {"name", "lookup"}, {"input", json::object()}});
    CHECK(json::parse(events[3].second["delta"]["partial_json"].get<std::string>()) == json{{"q", "x"}});
    CHECK(events[5].second["delta"]["stop_reason"] == "tool_use");
}

TEST_CASE("a stream that fails mid-way ends with an error event and no message_stop") {
    recording_provider failing;
    failing.fail_stream = true;
    messages_service svc{failing};
    auto ask = hello;
    ask["stream"] = true;
    auto res = svc.handle(post(ask));
    auto events = events_of(res);
    REQUIRE_FALSE(events.empty());
    CHECK(events.back().first == "error");
    CHECK(events.back().second["error"]["type"] == "api_error");
    CHECK(events.back().second["error"]["message"] == "upstream went away");
    for (const auto& e : events) CHECK(e.first != "message_stop");
}

TEST_CASE("errors use Anthropic's envelope and types, whoever refused") {
    messages_service svc;
    auto bad = svc.handle(post({{"model", "m"}, {"messages", json::array()}, {"max_tokens", 5}}));
    CHECK(bad.status == 400);
    const auto body = json::parse(bad.body);
    CHECK(body["type"] == "error");
    CHECK(body["error"]["type"] == "invalid_request_error");
    CHECK(body["error"]["message"].get<std::string>().find("messages") != std::string::npos);

    chatkit::http_request get;
    get.method = "GET";
    get.path = "/v1/messages";
    auto wrong = svc.handle(get);
    CHECK(wrong.status == 405);
    CHECK(json::parse(wrong.body)["type"] == "error");

    chatkit::service<recording_provider, chatkit::no_store, chatkit::no_cache, refusing_middleware> limited;
    auto refused = limited.handle(post(hello));
    CHECK(refused.status == 429);
    CHECK(json::parse(refused.body)["error"]["type"] == "rate_limit_error");
    // Other routes keep chatkit's envelope.
    auto other = post(hello);
    other.path = "/v1/chat/completions";
    CHECK(json::parse(limited.handle(other).body)["error"]["type"] != "rate_limit_error");

    CHECK(chatkit::anthropic_api::error_type(503) == "overloaded_error");
    CHECK(chatkit::anthropic_api::error_type(401) == "authentication_error");
    CHECK(chatkit::anthropic_api::error_type(502) == "api_error");
}

TEST_CASE("a repeated Messages request is served from the cache, marked as such") {
    chatkit::service<recording_provider, chatkit::no_store, map_cache> svc;
    CHECK(svc.handle(post(hello)).headers.at("X-Cache") == "miss");
    auto again = svc.handle(post(hello));
    CHECK(again.headers.at("X-Cache") == "hit");
    CHECK(json::parse(again.body)["content"][0]["text"] == "ok then");
    CHECK(svc.provider().seen->size() == 1);
}
