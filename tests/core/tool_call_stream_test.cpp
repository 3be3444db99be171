// Streamed tool calls reach the client as the provider produces them, on every surface, in the
// form each surface's official SDK assembles; a cached answer's calls come whole at the end.
#include <chatkit/chatkit.hpp>

#include <catch2/catch.hpp>

#include "map_cache.hpp"

using nlohmann::json;

namespace {

const json whole_calls = {{{"id", "call_a"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", R"({"q":"x"})"}}}},
                          {{"id", "call_b"}, {"type", "function"}, {"function", {{"name", "fetch"}, {"arguments", R"({"id":7})"}}}}};

// Says a few words, then calls two tools, the first one's arguments in two fragments, as an
// upstream streams them. Counts its calls, so a test can tell a cache hit.
struct tool_streamer {
    std::shared_ptr<int> calls = std::make_shared<int>(0);
    // Fails after the first tool piece, when set: what the client saw by then cannot be taken back.
    bool fail_after_first_piece = false;

    std::string_view name() const { return "tool-streamer"; }
    static chatkit::completion whole() {
        chatkit::completion c;
        c.model = "tools-1";
        c.content = "Let me look.";
        c.finish_reason = "tool_calls";
        c.extra = {{"tool_calls", whole_calls}};
        c.usage = {20, 9};
        return c;
    }
    chatkit::task<chatkit::result<chatkit::completion>> complete(chatkit::chat_request r) {
        (void)r;
        ++*calls;
        co_return whole();
    }
    chatkit::task<chatkit::result<chatkit::completion>> stream(chatkit::chat_request r, chatkit::delta_writer out) {
        (void)r;
        ++*calls;
        if (!co_await out.write("Let me look.")) co_return whole();
        // Named pieces: GCC 12 mishandles a temporary with a destructor inside a co_await expression.
        const chatkit::tool_call_delta first{0, "call_a", "lookup", ""};
        if (!co_await out.write_tool_call(first)) co_return whole();
        if (fail_after_first_piece) co_return chatkit::error{chatkit::error_kind::upstream, "upstream went away", "upstream_error"};
        const chatkit::tool_call_delta more{0, "", "", R"({"q":)"}, rest{0, "", "", R"("x"})"}, second{1, "call_b", "fetch", R"({"id":7})"};
        if (!co_await out.write_tool_call(more)) co_return whole();
        if (!co_await out.write_tool_call(rest)) co_return whole();
        if (!co_await out.write_tool_call(second)) co_return whole();
        co_return whole();
    }
    chatkit::component_health health() { return {}; }
};
static_assert(chatkit::async_provider<tool_streamer>);

using tools_service = chatkit::service<tool_streamer, chatkit::no_store, map_cache>;

const json tools = json::array({{{"type", "function"}, {"function", {{"name", "lookup"}, {"parameters", {{"type", "object"}}}}}},
                                {{"type", "function"}, {"function", {{"name", "fetch"}, {"parameters", {{"type", "object"}}}}}}});

chatkit::http_request post(std::string path, const json& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = std::move(path);
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    return req;
}

struct event {
    std::string name;
    json data;
};

// Collects what the service sends.
struct collecting_sink final : chatkit::response_sink {
    int status = 0;
    std::string body;
    void start(const chatkit::http_request&, const chatkit::http_response& res, bool, callback done) override {
        status = res.status;
        body = res.body;
        done(true);
    }
    void write(std::string_view chunk, callback done) override {
        body += chunk;
        done(true);
    }
    void end(callback done) override { done(true); }
};

// Serves one request to its end on this thread; the events of its stream.
template <class Service>
std::vector<event> stream_of(Service& svc, chatkit::http_request req) {
    collecting_sink sink;
    chatkit::sync_wait(svc.serve(std::move(req), &sink));
    std::vector<event> events;
    chatkit::sse_parser parser;
    parser.feed(sink.body, [&](const chatkit::sse_message& m) {
        if (m.data != "[DONE]") events.push_back({m.event, json::parse(m.data)});
    });
    return events;
}

std::vector<std::string> names_of(const std::vector<event>& events) {
    std::vector<std::string> names;
    for (const auto& e : events) names.push_back(e.data.contains("type") ? e.data["type"].get<std::string>() : e.name);
    return names;
}

// Assembles tool calls from chat.completion.chunk deltas as the official SDKs do: by index, the
// first fragment's id and name, the arguments concatenated.
json assemble(const std::vector<event>& chunks) {
    json calls = json::array();
    for (const auto& c : chunks) {
        if (c.data["choices"].empty()) continue;
        const auto& delta = c.data["choices"][0]["delta"];
        if (!delta.contains("tool_calls")) continue;
        for (const auto& piece : delta["tool_calls"]) {
            const auto i = piece["index"].get<std::size_t>();
            while (calls.size() <= i) calls.push_back({{"id", ""}, {"type", "function"}, {"function", {{"name", ""}, {"arguments", ""}}}});
            if (piece.contains("id")) calls[i]["id"] = piece["id"];
            if (piece["function"].contains("name")) calls[i]["function"]["name"] = piece["function"]["name"];
            calls[i]["function"]["arguments"] = calls[i]["function"]["arguments"].get<std::string>() +
                                                piece["function"]["arguments"].get<std::string>();
        }
    }
    return calls;
}

const json chat_ask = {
    {"model", "tools-1"}, {"stream", true}, {"messages", {{{"role", "user"}, {"content", "look it up"}}}}, {"tools", tools}};

} // namespace

TEST_CASE("Chat Completions: tool-call pieces are chunks as they arrive, and assemble into the calls") {
    tools_service svc;
    const auto chunks = stream_of(svc, post("/v1/chat/completions", chat_ask));
    // role and text, four tool-call pieces, the finish reason
    REQUIRE(chunks.size() == 6);
    CHECK(chunks[0].data["choices"][0]["delta"]["content"] == "Let me look.");
    const auto& first = chunks[1].data["choices"][0]["delta"]["tool_calls"];
    REQUIRE(first.size() == 1);
    CHECK(first[0] == json{{"index", 0}, {"id", "call_a"}, {"type", "function"}, {"function", {{"name", "lookup"}, {"arguments", ""}}}});
    // later pieces of a call carry only its index and more arguments, as OpenAI sends them
    CHECK(chunks[2].data["choices"][0]["delta"]["tool_calls"][0] == json{{"index", 0}, {"function", {{"arguments", R"({"q":)"}}}});
    CHECK(chunks[4].data["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_b");
    const auto& last = chunks[5].data["choices"][0];
    CHECK(last["finish_reason"] == "tool_calls");
    CHECK_FALSE(last["delta"].contains("tool_calls")); // not sent twice
    CHECK(assemble(chunks) == whole_calls);
}

TEST_CASE("Chat Completions: a cached answer's tool calls come whole in the last chunk") {
    tools_service svc;
    (void)stream_of(svc, post("/v1/chat/completions", chat_ask));
    const auto chunks = stream_of(svc, post("/v1/chat/completions", chat_ask));
    CHECK(*svc.provider().calls == 1); // the second came from the cache
    CHECK(chunks.back().data["choices"][0]["delta"]["tool_calls"].size() == 2);
    CHECK(assemble(chunks) == whole_calls);
}

TEST_CASE("Messages: a text block, then a tool_use block per call whose input grows by input_json_delta") {
    tools_service svc;
    json ask = {
        {"model", "tools-1"},
        {"max_tokens", 64},
        {"stream", true},
        {"messages", {{{"role", "user"}, {"content", "look it up"}}}},
        {"tools",
         {{{"name", "lookup"}, {"input_schema", {{"type", "object"}}}}, {{"name", "fetch"}, {"input_schema", {{"type", "object"}}}}}}};
    const auto events = stream_of(svc, post("/v1/messages", ask));
    CHECK(names_of(events) == std::vector<std::string>{"message_start", "ping", "content_block_start", "content_block_delta",
                                                       "content_block_stop", "content_block_start", "content_block_delta",
                                                       "content_block_delta", "content_block_stop", "content_block_start",
                                                       "content_block_delta", "content_block_stop", "message_delta", "message_stop"});
    for (const auto& e : events) CHECK(e.name == e.data["type"]);
    CHECK(events[2].data["index"] == 0);
    CHECK(events[3].data["delta"] == json{{"type", "text_delta"}, {"text", "Let me look."}});
    CHECK(events[4].data["index"] == 0);
    CHECK(events[5].data["index"] == 1);
    CHECK(events[5].data["content_block"] == json{{"type", "tool_use"}, {"id", "call_a"}, {"name", "lookup"}, {"input", json::object()}});
    // the SDK joins a block's partial_json and parses it at content_block_stop
    CHECK(json::parse(events[6].data["delta"]["partial_json"].get<std::string>() +
                      events[7].data["delta"]["partial_json"].get<std::string>()) == json{{"q", "x"}});
    CHECK(events[8].data["index"] == 1);
    CHECK(events[9].data["index"] == 2);
    CHECK(events[9].data["content_block"]["id"] == "call_b");
    CHECK(json::parse(events[10].data["delta"]["partial_json"].get<std::string>()) == json{{"id", 7}});
    CHECK(events[11].data["index"] == 2);
    CHECK(events[12].data["delta"]["stop_reason"] == "tool_use");
}

TEST_CASE("Responses: a message item, then a function_call item per call whose arguments grow by deltas") {
    tools_service svc;
    json ask = {{"model", "tools-1"},
                {"stream", true},
                {"input", "look it up"},
                {"tools", {{{"type", "function"}, {"name", "lookup"}}, {{"type", "function"}, {"name", "fetch"}}}}};
    const auto events = stream_of(svc, post("/v1/responses", ask));
    CHECK(names_of(events) ==
          std::vector<std::string>{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                                   "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                                   "response.output_item.done", "response.output_item.added", "response.function_call_arguments.delta",
                                   "response.function_call_arguments.delta", "response.function_call_arguments.done",
                                   "response.output_item.done", "response.output_item.added", "response.function_call_arguments.delta",
                                   "response.function_call_arguments.done", "response.output_item.done", "response.completed"});
    for (std::size_t i = 0; i < events.size(); ++i) CHECK(events[i].data["sequence_number"] == i);
    const auto& added = events[8].data;
    CHECK(added["output_index"] == 1);
    CHECK(added["item"]["status"] == "in_progress");
    CHECK(added["item"]["call_id"] == "call_a");
    CHECK(added["item"]["name"] == "lookup");
    CHECK(added["item"]["arguments"] == "");
    CHECK(events[9].data["item_id"] == added["item"]["id"]);
    CHECK(events[11].data["arguments"] == R"({"q":"x"})");
    CHECK(events[13].data["output_index"] == 2);
    // the final response lists what was streamed, with the ids a non-streamed answer gives
    const auto& output = events.back().data["response"]["output"];
    REQUIRE(output.size() == 3);
    CHECK(output[0]["content"][0]["text"] == "Let me look.");
    CHECK(output[1] == events[12].data["item"]);
    CHECK(output[2]["arguments"] == R"({"id":7})");
    collecting_sink whole;
    chatkit::sync_wait(
        svc.serve(post("/v1/responses", json{{"model", "tools-1"}, {"input", "look it up"}, {"tools", ask["tools"]}}), &whole));
    const auto body = json::parse(whole.body);
    REQUIRE(body["output"].size() == 3);
    for (std::size_t i = 1; i < 3; ++i) {
        CHECK(body["output"][i]["call_id"] == output[i]["call_id"]);
        CHECK(body["output"][i]["arguments"] == output[i]["arguments"]);
    }
}

TEST_CASE("a router does not fall back once a tool-call piece has reached the client") {
    tool_streamer failing;
    failing.fail_after_first_piece = true;
    tool_streamer backup;
    using router = chatkit::router<tool_streamer>;
    std::vector<router::member> members{{"first", failing}, {"second", backup}};
    std::vector<chatkit::model_route> routes{{"tools-1", {{{"first"}}, {{"second"}}}}};
    chatkit::service<router, chatkit::no_store, chatkit::no_cache> svc{router{std::move(members), std::move(routes)}};
    const auto chunks = stream_of(svc, post("/v1/chat/completions", chat_ask));
    CHECK(*backup.calls == 0);
    REQUIRE_FALSE(chunks.empty());
    CHECK(chunks.back().data.contains("error"));
}
