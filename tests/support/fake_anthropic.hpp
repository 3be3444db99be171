// A fake Anthropic upstream for tests: real HTTP on 127.0.0.1, the Messages API's exact wire
// format (a `message` body; the event stream message_start, content_block_start/delta/stop,
// ping, message_delta, message_stop; the error envelope), the checks the real API makes on a
// request's headers and shape, and scripted faults. Unscripted requests are answered with
// "echo: <last user message>", word by word when streaming; a request offering tools whose last
// turn holds no tool result gets a tool_use of the first tool with {"q":"<that message>"}, and
// one whose last turn holds tool results gets "tool said: <their texts>".
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

struct fake_anthropic_reply {
    int status = 200;
    std::string body; // for status != 200: the error body
    std::vector<std::pair<std::string, std::string>> headers;
    std::chrono::milliseconds delay_before{0};  // before the status line
    std::chrono::milliseconds delay_between{0}; // between stream events
    std::size_t chunk_bytes = 0;                // cut the SSE bytes into pieces this size (0: one per event)
    int break_after_events = -1;                // drop the connection after this many events
    bool error_after_first_delta = false;       // an `error` event (overloaded_error) after the first text delta
    bool error_before_content = false;          // an `error` event right after message_start
    bool end_without_message_stop = false;      // the stream ends cleanly but message_stop never comes
    bool thinking_block = false;                // a thinking block (thinking_delta, signature_delta) before the text
    std::string stop_reason = "end_turn";
    int cache_creation_input_tokens = 0;
    int cache_read_input_tokens = 0;
    std::string content; // the answer; empty: echo the last user message
    std::string model;   // the model the answer names; empty: the request's
};

// An error answer in Anthropic's envelope.
inline fake_anthropic_reply anthropic_error_reply(int status, std::string type, std::string message) {
    fake_anthropic_reply r;
    r.status = status;
    r.body = nlohmann::json{{"type", "error"}, {"error", {{"type", type}, {"message", message}}}, {"request_id", "req_fake_error"}}.dump();
    return r;
}

struct fake_anthropic_request {
    nlohmann::json body;
    httplib::Headers headers;
    int client_port = 0;
};

class fake_anthropic {
public:
    explicit fake_anthropic(fake_anthropic_reply defaults = {}) : defaults_(std::move(defaults)) {
        server_.new_task_queue = [] { return new httplib::ThreadPool(8); };
        server_.Post("/v1/messages", [this](const httplib::Request& req, httplib::Response& res) { answer(req, res); });
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~fake_anthropic() {
        server_.stop();
        thread_.join();
    }
    fake_anthropic(const fake_anthropic&) = delete;
    fake_anthropic& operator=(const fake_anthropic&) = delete;

    int port() const { return port_; }
    // As ANTHROPIC_BASE_URL takes it: the origin, without /v1.
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

    void script(std::vector<fake_anthropic_reply> replies) {
        std::lock_guard lock{mutex_};
        for (auto& r : replies) script_.push_back(std::move(r));
    }
    std::vector<fake_anthropic_request> requests() const {
        std::lock_guard lock{mutex_};
        return requests_;
    }

    static std::vector<std::string> words(const std::string& text) {
        std::vector<std::string> out;
        std::istringstream in{text};
        for (std::string w; in >> w;) out.push_back(out.empty() ? w : " " + w);
        return out;
    }

    static std::string event(const std::string& type, const nlohmann::json& data) {
        return "event: " + type + "\ndata: " + data.dump() + "\n\n";
    }

private:
    // What the real API refuses before it answers: no key, no version, a body without
    // max_tokens or with turns that do not alternate.
    static std::optional<fake_anthropic_reply> refusal(const httplib::Request& req, const nlohmann::json& body) {
        if (!req.has_header("x-api-key")) return anthropic_error_reply(401, "authentication_error", "x-api-key header is required");
        if (!req.has_header("anthropic-version"))
            return anthropic_error_reply(400, "invalid_request_error", "anthropic-version: header is required");
        if (!body.is_object()) return anthropic_error_reply(400, "invalid_request_error", "request body is not valid JSON");
        if (!body.contains("max_tokens") || !body["max_tokens"].is_number_integer())
            return anthropic_error_reply(400, "invalid_request_error", "max_tokens: Field required");
        if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
            return anthropic_error_reply(400, "invalid_request_error", "messages: Field required");
        std::string previous;
        for (const auto& m : body["messages"]) {
            const std::string role = m.value("role", "");
            if (role != "user" && role != "assistant")
                return anthropic_error_reply(400, "invalid_request_error", "messages: roles must be user or assistant");
            if (role == previous)
                return anthropic_error_reply(400, "invalid_request_error",
                                             "messages: roles must alternate between \"user\" and \"assistant\"");
            previous = role;
        }
        // Each tool_result answers a tool_use of the assistant turn just before it, and comes first.
        const auto& ms = body["messages"];
        for (std::size_t i = 0; i < ms.size(); ++i) {
            if (!ms[i]["content"].is_array()) continue;
            bool text_seen = false;
            for (const auto& block : ms[i]["content"]) {
                if (block.value("type", "") != "tool_result") {
                    text_seen = true;
                    continue;
                }
                bool answered = false;
                if (i > 0 && ms[i - 1]["content"].is_array())
                    for (const auto& use : ms[i - 1]["content"])
                        if (use.value("type", "") == "tool_use" && use.value("id", "") == block.value("tool_use_id", "")) answered = true;
                if (!answered || text_seen)
                    return anthropic_error_reply(400, "invalid_request_error",
                                                 "messages." + std::to_string(i) +
                                                     ": tool_result blocks must answer a tool_use of the previous message and come first");
            }
        }
        return std::nullopt;
    }

    // The tool_result texts of a turn, or nothing when it has none.
    static std::optional<std::string> tool_results(const nlohmann::json& content) {
        if (!content.is_array()) return std::nullopt;
        std::optional<std::string> text;
        for (const auto& block : content)
            if (block.is_object() && block.value("type", "") == "tool_result") text = text.value_or("") + block.value("content", "");
        return text;
    }

    static std::string text_of(const nlohmann::json& content) {
        if (content.is_string()) return content.get<std::string>();
        std::string text;
        if (content.is_array())
            for (const auto& block : content)
                if (block.is_object() && block.value("type", "") == "text") text += block.value("text", "");
        return text;
    }

    void answer(const httplib::Request& req, httplib::Response& res) {
        fake_anthropic_reply reply = defaults_;
        auto body = nlohmann::json::parse(req.body, nullptr, false);
        {
            std::lock_guard lock{mutex_};
            requests_.push_back({body, req.headers, req.remote_port});
            if (!script_.empty()) {
                reply = std::move(script_.front());
                script_.pop_front();
            }
        }
        if (reply.status == 200)
            if (auto refused = refusal(req, body)) reply = std::move(*refused);
        std::this_thread::sleep_for(reply.delay_before);
        for (const auto& [k, v] : reply.headers) res.set_header(k, v);
        res.set_header("request-id", "req_fake");
        if (reply.status != 200) {
            res.status = reply.status;
            res.set_content(reply.body, "application/json");
            return;
        }
        std::string last_user;
        for (const auto& m : body["messages"])
            if (m.value("role", "") == "user") last_user = text_of(m["content"]);
        const auto results = tool_results(body["messages"].back()["content"]);
        const bool offers_tools = body.contains("tools") && body["tools"].is_array() && !body["tools"].empty();
        if (offers_tools && !results && reply.content.empty()) return answer_tool_use(body, last_user, reply, res);
        const std::string content = !reply.content.empty() ? reply.content : results ? "tool said: " + *results : "echo: " + last_user;
        const auto pieces = words(content);
        const std::string model = reply.model.empty() ? body.value("model", "claude-fake") : reply.model;
        const int input_tokens = static_cast<int>(words(last_user).size());
        const int output_tokens = static_cast<int>(pieces.size());
        nlohmann::json usage = {{"input_tokens", input_tokens},
                                {"cache_creation_input_tokens", reply.cache_creation_input_tokens},
                                {"cache_read_input_tokens", reply.cache_read_input_tokens},
                                {"output_tokens", output_tokens}};
        if (!body.value("stream", false)) {
            nlohmann::json blocks = nlohmann::json::array();
            if (reply.thinking_block) blocks.push_back({{"type", "thinking"}, {"thinking", "let me see"}, {"signature", "sig"}});
            blocks.push_back({{"type", "text"}, {"text", content}});
            res.set_content(nlohmann::json{{"id", "msg_fake"},
                                           {"type", "message"},
                                           {"role", "assistant"},
                                           {"model", model},
                                           {"content", blocks},
                                           {"stop_reason", reply.stop_reason},
                                           {"stop_sequence", nullptr},
                                           {"usage", usage}}
                                .dump(),
                            "application/json");
            return;
        }
        // The events in the order the real API sends them.
        std::vector<std::string> events;
        nlohmann::json start_usage = usage;
        start_usage["output_tokens"] = 1;
        events.push_back(event("message_start", {{"type", "message_start"},
                                                 {"message",
                                                  {{"id", "msg_fake"},
                                                   {"type", "message"},
                                                   {"role", "assistant"},
                                                   {"content", nlohmann::json::array()},
                                                   {"model", model},
                                                   {"stop_reason", nullptr},
                                                   {"stop_sequence", nullptr},
                                                   {"usage", start_usage}}}}));
        if (reply.error_before_content)
            events.push_back(event("error", {{"type", "error"}, {"error", {{"type", "overloaded_error"}, {"message", "Overloaded"}}}}));
        int index = 0;
        if (reply.thinking_block) {
            events.push_back(
                event("content_block_start",
                      {{"type", "content_block_start"}, {"index", index}, {"content_block", {{"type", "thinking"}, {"thinking", ""}}}}));
            events.push_back(event(
                "content_block_delta",
                {{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "thinking_delta"}, {"thinking", "let me see"}}}}));
            events.push_back(
                event("content_block_delta",
                      {{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "signature_delta"}, {"signature", "sig"}}}}));
            events.push_back(event("content_block_stop", {{"type", "content_block_stop"}, {"index", index}}));
            ++index;
        }
        events.push_back(event("content_block_start",
                               {{"type", "content_block_start"}, {"index", index}, {"content_block", {{"type", "text"}, {"text", ""}}}}));
        events.push_back(event("ping", {{"type", "ping"}}));
        for (std::size_t i = 0; i < pieces.size(); ++i) {
            events.push_back(
                event("content_block_delta",
                      {{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "text_delta"}, {"text", pieces[i]}}}}));
            if (i == 0 && reply.error_after_first_delta)
                events.push_back(event("error", {{"type", "error"}, {"error", {{"type", "overloaded_error"}, {"message", "Overloaded"}}}}));
        }
        events.push_back(event("content_block_stop", {{"type", "content_block_stop"}, {"index", index}}));
        events.push_back(event("message_delta", {{"type", "message_delta"},
                                                 {"delta", {{"stop_reason", reply.stop_reason}, {"stop_sequence", nullptr}}},
                                                 {"usage", {{"output_tokens", output_tokens}}}}));
        if (!reply.end_without_message_stop) events.push_back(event("message_stop", {{"type", "message_stop"}}));

        res.set_chunked_content_provider("text/event-stream", [events, reply](std::size_t, httplib::DataSink& sink) {
            for (std::size_t e = 0; e < events.size(); ++e) {
                if (reply.break_after_events >= 0 && static_cast<int>(e) == reply.break_after_events) return false; // drop the connection
                if (e > 0) std::this_thread::sleep_for(reply.delay_between);
                const std::string& bytes = events[e];
                const std::size_t step = reply.chunk_bytes ? reply.chunk_bytes : bytes.size();
                for (std::size_t at = 0; at < bytes.size(); at += step)
                    if (!sink.write(bytes.data() + at, std::min(step, bytes.size() - at))) return false;
            }
            sink.done();
            return true;
        });
    }

    // A tool_use of the request's first tool, as Anthropic sends one; streamed, its input arrives
    // in two input_json_delta fragments.
    static void answer_tool_use(const nlohmann::json& body, const std::string& last_user, const fake_anthropic_reply& reply,
                                httplib::Response& res) {
        const std::string name = body["tools"][0].value("name", "");
        const nlohmann::json input = {{"q", last_user}};
        const nlohmann::json usage = {{"input_tokens", static_cast<int>(words(last_user).size())},
                                      {"cache_creation_input_tokens", 0},
                                      {"cache_read_input_tokens", 0},
                                      {"output_tokens", 9}};
        const std::string model = body.value("model", "claude-fake");
        if (!body.value("stream", false)) {
            res.set_content(nlohmann::json{{"id", "msg_fake"},
                                           {"type", "message"},
                                           {"role", "assistant"},
                                           {"model", model},
                                           {"content", {{{"type", "tool_use"}, {"id", "toolu_fake_1"}, {"name", name}, {"input", input}}}},
                                           {"stop_reason", "tool_use"},
                                           {"stop_sequence", nullptr},
                                           {"usage", usage}}
                                .dump(),
                            "application/json");
            return;
        }
        const std::string json_input = input.dump();
        const std::size_t half = json_input.size() / 2;
        std::string events =
            event("message_start", {{"type", "message_start"},
                                    {"message",
                                     {{"id", "msg_fake"},
                                      {"type", "message"},
                                      {"role", "assistant"},
                                      {"content", nlohmann::json::array()},
                                      {"model", model},
                                      {"stop_reason", nullptr},
                                      {"stop_sequence", nullptr},
                                      {"usage", usage}}}}) +
            event(
                "content_block_start",
                {{"type", "content_block_start"},
                 {"index", 0},
                 {"content_block", {{"type", "tool_use"}, {"id", "toolu_fake_1"}, {"name", name}, {"input", nlohmann::json::object()}}}}) +
            event("content_block_delta", {{"type", "content_block_delta"},
                                          {"index", 0},
                                          {"delta", {{"type", "input_json_delta"}, {"partial_json", json_input.substr(0, half)}}}}) +
            event("content_block_delta", {{"type", "content_block_delta"},
                                          {"index", 0},
                                          {"delta", {{"type", "input_json_delta"}, {"partial_json", json_input.substr(half)}}}}) +
            event("content_block_stop", {{"type", "content_block_stop"}, {"index", 0}}) +
            event("message_delta", {{"type", "message_delta"},
                                    {"delta", {{"stop_reason", "tool_use"}, {"stop_sequence", nullptr}}},
                                    {"usage", {{"output_tokens", 9}}}}) +
            event("message_stop", {{"type", "message_stop"}});
        const std::size_t step = reply.chunk_bytes ? reply.chunk_bytes : events.size();
        res.set_chunked_content_provider("text/event-stream", [events, step](std::size_t, httplib::DataSink& sink) {
            for (std::size_t at = 0; at < events.size(); at += step)
                if (!sink.write(events.data() + at, std::min(step, events.size() - at))) return false;
            sink.done();
            return true;
        });
    }

    fake_anthropic_reply defaults_;
    httplib::Server server_;
    std::thread thread_;
    int port_ = 0;
    mutable std::mutex mutex_;
    std::deque<fake_anthropic_reply> script_;
    std::vector<fake_anthropic_request> requests_;
};

} // namespace test_support
