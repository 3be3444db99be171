// POST /v1/responses: the OpenAI Responses API on the serving side, translated to any provider.
#include <chatkit/chatkit.hpp>

#include <catch2/catch.hpp>

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
                        {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", R"({"q":"x"})"}}}},
                         {{"id", "call_2"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", R"({"q":"y"})"}}}}}}};
        } else {
            c.content = "ok then";
            c.finish_reason = r.max_tokens == 2 ? "length" : "stop";
        }
        c.usage = {12, 2, 4, 1};
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

using responses_service = chatkit::service<recording_provider, chatkit::no_store, chatkit::no_cache>;

chatkit::http_request post(const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/v1/responses";
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    return req;
}

std::vector<json> events_of(chatkit::http_response& res) {
    std::string text;
    res.stream([&](std::string_view c) { return text.append(c), true; }, res.meta);
    std::vector<json> events;
    chatkit::sse_parser parser;
    parser.feed(text, [&](const chatkit::sse_message& m) {
        auto data = json::parse(m.data);
        CHECK(data["type"] == m.event); // every event is named by its type
        events.push_back(std::move(data));
    });
    return events;
}

std::vector<std::string> types_of(const std::vector<json>& events) {
    std::vector<std::string> types;
    for (const auto& e : events) types.push_back(e["type"]);
    return types;
}

const json hello = {{"model", "rec-large"}, {"input", "hi"}};

} // namespace

TEST_CASE("a Responses request maps instructions, message items, function calls and their outputs") {
    auto r = chatkit::responses_api::parse_request(json::parse(R"({
        "model":"m","instructions":"be brief","max_output_tokens":100,"temperature":0.5,"top_p":0.9,"user":"u-1","store":false,
        "tools":[{"type":"function","name":"lookup","description":"finds","parameters":{"type":"object"},"strict":true}],
        "tool_choice":{"type":"function","name":"lookup"},"parallel_tool_calls":false,
        "text":{"format":{"type":"json_schema","name":"answer","schema":{"type":"object"},"strict":true}},
        "reasoning":{"effort":"low"},"include":[],"truncation":"disabled","metadata":{"k":"v"},"prompt_cache_key":"p",
        "input":[
          {"role":"developer","content":"rules"},
          {"type":"message","role":"user","content":[{"type":"input_text","text":"look "},{"type":"input_text","text":"here"}]},
          {"type":"function_call","call_id":"c1","name":"lookup","arguments":"{\"q\":1}"},
          {"type":"function_call","call_id":"c2","name":"lookup","arguments":"{\"q\":2}"},
          {"type":"function_call_output","call_id":"c1","output":"42"},
          {"type":"function_call_output","call_id":"c2","output":[{"type":"input_text","text":"43"}]},
          {"role":"assistant","content":[{"type":"output_text","text":"so 42"}]}]})"));
    REQUIRE(r);
    CHECK(r->model == "m");
    CHECK(r->max_tokens == 100);
    CHECK(r->user_id == "u-1");
    REQUIRE(r->messages.size() == 7);
    CHECK(r->messages[0].role == chatkit::role::system);
    CHECK(r->messages[0].content == "be brief");
    CHECK(r->messages[1].role == chatkit::role::system);
    CHECK(r->messages[2].content == "look here");
    CHECK(r->messages[3].role == chatkit::role::assistant);
    REQUIRE(r->messages[3].extra["tool_calls"].size() == 2); // parallel calls in one assistant message
    CHECK(r->messages[3].extra["tool_calls"][1] ==
          json{{"id", "c2"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", R"({"q":2})"}}}});
    CHECK(r->messages[4].role == chatkit::role::tool);
    CHECK(r->messages[4].extra["tool_call_id"] == "c1");
    CHECK(r->messages[5].content == "43");
    CHECK(r->messages[6].content == "so 42");
    CHECK(r->extensions["tools"][0] ==
          json{{"type", "function"},
               {"function", {{"name", "lookup"}, {"description", "finds"}, {"parameters", {{"type", "object"}}}, {"strict", true}}}});
    CHECK(r->extensions["tool_choice"] == json{{"type", "function"}, {"function", {{"name", "lookup"}}}});
    CHECK(r->extensions["parallel_tool_calls"] == false);
    CHECK(r->extensions["response_format"] ==
          json{{"type", "json_schema"}, {"json_schema", {{"name", "answer"}, {"schema", {{"type", "object"}}}, {"strict", true}}}});
    CHECK(r->extensions["reasoning_effort"] == "low");
    CHECK(r->extensions["top_p"] == 0.9);
    CHECK(r->extensions["prompt_cache_key"] == "p");
    CHECK_FALSE(r->extensions.contains("metadata"));
}

TEST_CASE("a Responses request the gateway cannot honour is refused by name") {
    auto refused = [](const char* body) {
        auto r = chatkit::responses_api::parse_request(json::parse(body));
        REQUIRE_FALSE(r);
        CHECK(r.error().kind == chatkit::error_kind::invalid_request);
        return r.error().param;
    };
    CHECK(refused(R"({"model":"m"})") == "input");
    CHECK(refused(R"({"model":"m","input":[]})") == "input");
    CHECK(refused(R"({"model":"m","input":"x","store":true})") == "store");
    CHECK(refused(R"({"model":"m","input":"x","previous_response_id":"resp_1"})") == "previous_response_id");
    CHECK(refused(R"({"model":"m","input":"x","background":true})") == "background");
    CHECK(refused(R"({"model":"m","input":"x","max_output_tokens":0})") == "max_output_tokens");
    CHECK(refused(R"({"model":"m","input":"x","tools":[{"type":"web_search"}]})") == "tools[0].type");
    CHECK(refused(R"({"model":"m","input":"x","include":["message.output_text.logprobs"]})") == "include");
    CHECK(refused(R"({"model":"m","input":"x","reasoning":{"mode":"deep"}})") == "reasoning.mode");
    CHECK(refused(R"({"model":"m","input":[{"type":"reasoning","summary":[]}]})") == "input[0].type");
    CHECK(refused(R"({"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]})") ==
          "input[0].content[0]");
    CHECK(refused(R"({"model":"m","input":[{"role":"tool","content":"x"}]})") == "input[0].role");
    auto code = chatkit::responses_api::parse_request(json::parse(R"({"model":"m","input":"x","store":true})"));
    CHECK(code.error().code == "unsupported_parameter");
}

TEST_CASE("a non-streamed answer is the response object, echoing the request") {
    responses_service svc;
    auto ask = hello;
    ask["instructions"] = "be brief";
    ask["metadata"] = {{"k", "v"}};
    auto res = svc.handle(post(ask));
    REQUIRE(res.status == 200);
    CHECK(res.headers.at("X-Cache") == "miss");
    const auto body = json::parse(res.body);
    CHECK(body["id"].get<std::string>().starts_with("resp_"));
    CHECK(body["object"] == "response");
    CHECK(body["status"] == "completed");
    CHECK(body["created_at"].is_number_integer());
    CHECK(body["model"] == "rec-large");
    CHECK(body["instructions"] == "be brief");
    CHECK(body["metadata"] == json{{"k", "v"}});
    CHECK(body["store"] == false);
    CHECK(body["error"].is_null());
    REQUIRE(body["output"].size() == 1);
    const auto& item = body["output"][0];
    CHECK(item["type"] == "message");
    CHECK(item["role"] == "assistant");
    CHECK(item["status"] == "completed");
    CHECK(item["content"][0]["type"] == "output_text");
    CHECK(item["content"][0]["text"] == "ok then");
    CHECK(body["usage"] == json{{"input_tokens", 12},
                                {"input_tokens_details", {{"cached_tokens", 4}}},
                                {"output_tokens", 2},
                                {"output_tokens_details", {{"reasoning_tokens", 1}}},
                                {"total_tokens", 14}});
    CHECK(svc.provider().seen->back().messages[0].content == "be brief");

    auto cut = hello;
    cut["max_output_tokens"] = 2;
    const auto incomplete = json::parse(svc.handle(post(cut)).body);
    CHECK(incomplete["status"] == "incomplete");
    CHECK(incomplete["incomplete_details"] == json{{"reason", "max_output_tokens"}});
}

TEST_CASE("tool calls come back as function_call items") {
    responses_service svc;
    auto ask = hello;
    ask["tools"] = json::array({{{"type", "function"}, {"name", "lookup"}, {"parameters", {{"type", "object"}}}}});
    const auto body = json::parse(svc.handle(post(ask)).body);
    REQUIRE(body["output"].size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        const auto& call = body["output"][i];
        CHECK(call["type"] == "function_call");
        CHECK(call["status"] == "completed");
        CHECK(call["name"] == "lookup");
        CHECK(call["id"].get<std::string>().starts_with("fc_"));
    }
    CHECK(body["output"][0]["call_id"] == "call_1");
    CHECK(body["output"][1]["arguments"] == R"({"q":"y"})");
    CHECK(body["output"][0]["id"] != body["output"][1]["id"]);
}

TEST_CASE("a stream is the Responses event sequence, numbered, ending with response.completed") {
    responses_service svc;
    auto ask = hello;
    ask["stream"] = true;
    auto res = svc.handle(post(ask));
    CHECK(res.headers.at("Content-Type") == "text/event-stream");
    const auto events = events_of(res);
    CHECK(types_of(events) == std::vector<std::string>{"response.created", "response.in_progress", "response.output_item.added",
                                                       "response.content_part.added", "response.output_text.delta",
                                                       "response.output_text.delta", "response.output_text.done",
                                                       "response.content_part.done", "response.output_item.done", "response.completed"});
    for (std::size_t i = 0; i < events.size(); ++i) CHECK(events[i]["sequence_number"] == i);
    CHECK(events[0]["response"]["status"] == "in_progress");
    CHECK(events[0]["response"]["output"].empty());
    CHECK(events[4]["delta"] == "ok");
    CHECK(events[6]["text"] == "ok then");
    const auto& done = events.back()["response"];
    CHECK(done["id"] == events[0]["response"]["id"]);
    CHECK(done["status"] == "completed");
    CHECK(done["output"][0]["content"][0]["text"] == "ok then");
    CHECK(done["usage"]["output_tokens"] == 2);
}

TEST_CASE("a streamed tool call is a function_call item with its arguments") {
    responses_service svc;
    auto ask = hello;
    ask["stream"] = true;
    ask["tools"] = json::array({{{"type", "function"}, {"name", "lookup"}}});
    auto res = svc.handle(post(ask));
    const auto events = events_of(res);
    CHECK(types_of(events) == std::vector<std::string>{"response.created", "response.in_progress", "response.output_item.added",
                                                       "response.function_call_arguments.delta", "response.function_call_arguments.done",
                                                       "response.output_item.done", "response.output_item.added",
                                                       "response.function_call_arguments.delta", "response.function_call_arguments.done",
                                                       "response.output_item.done", "response.completed"});
    CHECK(events[2]["item"]["arguments"] == "");
    CHECK(events[3]["delta"] == R"({"q":"x"})");
    CHECK(events[6]["output_index"] == 1);
    CHECK(events.back()["response"]["output"].size() == 2);
}

TEST_CASE("a stream that fails mid-way ends with response.failed carrying the error") {
    recording_provider failing;
    failing.fail_stream = true;
    responses_service svc{failing};
    auto ask = hello;
    ask["stream"] = true;
    auto res = svc.handle(post(ask));
    const auto events = events_of(res);
    REQUIRE_FALSE(events.empty());
    CHECK(events.front()["type"] == "response.created");
    CHECK(events.back()["type"] == "response.failed");
    CHECK(events.back()["response"]["status"] == "failed");
    CHECK(events.back()["response"]["error"] == json{{"code", "upstream_error"}, {"message", "upstream went away"}});
}

TEST_CASE("Responses errors use the OpenAI envelope") {
    responses_service svc;
    auto bad = svc.handle(post({{"model", "m"}, {"input", "x"}, {"store", true}}));
    CHECK(bad.status == 400);
    const auto body = json::parse(bad.body);
    CHECK(body["error"]["type"] == "invalid_request_error");
    CHECK(body["error"]["param"] == "store");
    chatkit::http_request get;
    get.method = "GET";
    get.path = "/v1/responses";
    CHECK(svc.handle(get).status == 405);
}

TEST_CASE("what Codex sends with a reasoning model is accepted: a summary and the encrypted reasoning are asked for, none is returned") {
    auto r = chatkit::responses_api::parse_request(json::parse(R"({
        "model":"m","instructions":"you are codex","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"fix it"}]}],
        "tools":[{"type":"function","name":"shell","parameters":{"type":"object"},"strict":false}],"tool_choice":"auto",
        "parallel_tool_calls":false,"reasoning":{"effort":"medium","summary":"auto"},"store":false,"stream":true,
        "include":["reasoning.encrypted_content"],"prompt_cache_key":"session-1"})"));
    REQUIRE(r);
    CHECK(r->extensions["reasoning_effort"] == "medium");
    CHECK_FALSE(r->extensions.contains("reasoning"));
    CHECK(r->extensions["prompt_cache_key"] == "session-1");
}
