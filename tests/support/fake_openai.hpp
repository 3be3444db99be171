// A fake OpenAI upstream for tests: real HTTP on 127.0.0.1, the exact Chat Completions wire format
// (JSON and SSE, docs/protocols.md §1.6–1.8), and scripted faults. Unscripted requests are answered
// with "echo: <last user message>", word by word when streaming; a request offering tools whose
// last message is the user's gets a call of the first tool with {"q":"<that message>"}, and one
// whose last message is a tool result gets "tool said: <result>"; a user message of exactly
// "fake: refuse" gets a 400.
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

struct fake_reply {
    int status = 200;
    std::string body; // for status != 200: the error body
    std::vector<std::pair<std::string, std::string>> headers;
    std::chrono::milliseconds delay_before{0};  // before the status line
    std::chrono::milliseconds delay_between{0}; // between stream chunks
    std::size_t chunk_bytes = 0;                // cut the SSE bytes into pieces this size (0: one per event)
    int break_after_events = -1;                // drop the connection after this many events
    bool malformed_chunk = false;               // a chunk that is not JSON, after the first delta
    bool error_event = false;                   // an {"error":...} event after the first delta
    std::string content;                        // the answer; empty: echo the last user message
};

inline fake_reply status_reply(int status, std::string message, std::string type, std::string code = {}) {
    fake_reply r;
    r.status = status;
    r.body = nlohmann::json{{"error",
                             {{"message", message},
                              {"type", type},
                              {"param", nullptr},
                              {"code", code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code)}}}}
                 .dump();
    return r;
}

struct fake_request {
    nlohmann::json body;
    httplib::Headers headers;
    int client_port = 0; // the client's end of the connection: equal ports, one kept-alive connection
};

class fake_openai {
public:
    // `defaults`: the reply to unscripted requests. `threads`: concurrent connections served
    // (cpp-httplib holds one thread per connection), for benchmarks that open many.
    // `idle_close`: how long a kept-alive connection may idle before the fake closes it.
    explicit fake_openai(fake_reply defaults = {}, std::size_t threads = 16, std::chrono::seconds idle_close = std::chrono::seconds(5))
        : defaults_(std::move(defaults)) {
        server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
        server_.set_keep_alive_max_count(1'000'000);
        server_.set_keep_alive_timeout(idle_close.count());
        server_.set_tcp_nodelay(true);
        server_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { answer(req, res); });
        server_.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
            res.set_content(R"({"object":"list","data":[{"id":"fake-1","object":"model","created":0,"owned_by":"fake"}]})",
                            "application/json");
        });
        port_ = server_.bind_to_any_port("127.0.0.1");
        server_.raise_backlog(4096); // cpp-httplib listens with a backlog of 5: a burst of connects would stall
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~fake_openai() {
        server_.stop();
        thread_.join();
    }
    fake_openai(const fake_openai&) = delete;
    fake_openai& operator=(const fake_openai&) = delete;

    int port() const { return port_; }
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

    // The next requests get these replies, in order; then the default one.
    void script(std::vector<fake_reply> replies) {
        std::lock_guard lock{mutex_};
        for (auto& r : replies) script_.push_back(std::move(r));
    }
    std::vector<fake_request> requests() const {
        std::lock_guard lock{mutex_};
        return requests_;
    }

    // "echo: <text>" split the way a model streams: the first word, then " word" pieces.
    static std::vector<std::string> words(const std::string& text) {
        std::vector<std::string> out;
        std::istringstream in{text};
        for (std::string w; in >> w;) out.push_back(out.empty() ? w : " " + w);
        return out;
    }

private:
    void answer(const httplib::Request& req, httplib::Response& res) {
        fake_reply reply = defaults_;
        auto body = nlohmann::json::parse(req.body, nullptr, false);
        {
            std::lock_guard lock{mutex_};
            requests_.push_back({body, req.headers, req.remote_port});
            if (!script_.empty()) {
                reply = std::move(script_.front());
                script_.pop_front();
            }
        }
        // A request whose user says exactly "fake: refuse" is refused with a 400, as an upstream
        // refuses what it cannot serve (the provider conformance kit's refusal).
        if (reply.status == 200 && req.body.find(R"("content":"fake: refuse")") != std::string::npos)
            reply = status_reply(400, "the fake refuses this request", "invalid_request_error", "refused");
        std::this_thread::sleep_for(reply.delay_before);
        for (const auto& [k, v] : reply.headers) res.set_header(k, v);
        res.set_header("x-request-id", "req_fake");
        if (reply.status != 200) {
            res.status = reply.status;
            res.set_content(reply.body, "application/json");
            return;
        }
        std::string last_user;
        if (body.is_object() && body["messages"].is_array())
            for (const auto& m : body["messages"])
                if (m.value("role", "") == "user" && m["content"].is_string()) last_user = m["content"];
        const bool offers_tools = body.is_object() && body.contains("tools") && body["tools"].is_array() && !body["tools"].empty();
        const nlohmann::json* last = body.is_object() && body["messages"].is_array() && !body["messages"].empty() ? &body["messages"].back()
                                                                                                                  : nullptr;
        const bool after_tool = last && last->value("role", "") == "tool";
        if (offers_tools && !after_tool && reply.content.empty()) return answer_tool_call(body, last_user, res);
        std::string content = reply.content.empty() ? "echo: " + last_user : reply.content;
        if (after_tool && reply.content.empty() && (*last)["content"].is_string())
            content = "tool said: " + (*last)["content"].get<std::string>();
        const auto pieces = words(content);
        const std::string model = body.value("model", "fake-1");
        const nlohmann::json usage = {{"prompt_tokens", static_cast<int>(words(last_user).size())},
                                      {"completion_tokens", static_cast<int>(pieces.size())},
                                      {"total_tokens", static_cast<int>(words(last_user).size() + pieces.size())}};
        if (!body.value("stream", false)) {
            res.set_content(nlohmann::json{{"id", "chatcmpl-fake"},
                                           {"object", "chat.completion"},
                                           {"created", 1741569952},
                                           {"model", model},
                                           {"choices",
                                            {{{"index", 0},
                                              {"message", {{"role", "assistant"}, {"content", content}, {"refusal", nullptr}}},
                                              {"logprobs", nullptr},
                                              {"finish_reason", "stop"}}}},
                                           {"usage", usage}}
                                .dump(),
                            "application/json");
            return;
        }
        // The events, as the real API sends them: role first, the deltas, the finish, the usage, [DONE].
        auto chunk = [&](nlohmann::json choices, nlohmann::json extra = nlohmann::json::object()) {
            nlohmann::json j = {{"id", "chatcmpl-fake"},
                                {"object", "chat.completion.chunk"},
                                {"created", 1741569952},
                                {"model", model},
                                {"choices", std::move(choices)}};
            j.update(extra);
            return "data: " + j.dump() + "\n\n";
        };
        std::vector<std::string> events;
        events.push_back(chunk({{{"index", 0},
                                 {"delta", {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}},
                                 {"logprobs", nullptr},
                                 {"finish_reason", nullptr}}}));
        for (std::size_t i = 0; i < pieces.size(); ++i) {
            events.push_back(
                chunk({{{"index", 0}, {"delta", {{"content", pieces[i]}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}}));
            if (i == 0 && reply.malformed_chunk) events.push_back("data: {\"choices\":[{\"delta\":\n\n");
            if (i == 0 && reply.error_event)
                events.push_back("data: {\"error\":{\"message\":\"The server had an error while processing your "
                                 "request.\",\"type\":\"server_error\"}}\n\n");
        }
        events.push_back(chunk({{{"index", 0}, {"delta", nlohmann::json::object()}, {"logprobs", nullptr}, {"finish_reason", "stop"}}}));
        const auto& options = body["stream_options"];
        if (options.is_object() && options.value("include_usage", false))
            events.push_back(chunk(nlohmann::json::array(), {{"usage", usage}}));
        events.push_back("data: [DONE]\n\n");

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

    // A call of the request's first tool, as OpenAI sends one: content null and finish_reason
    // tool_calls; streamed, the call's id and name come first and its arguments in two fragments.
    static void answer_tool_call(const nlohmann::json& body, const std::string& last_user, httplib::Response& res) {
        const std::string model = body.value("model", "fake-1");
        const std::string name = body["tools"][0].value("function", nlohmann::json::object()).value("name", "");
        const std::string arguments = nlohmann::json{{"q", last_user}}.dump();
        const nlohmann::json usage = {{"prompt_tokens", static_cast<int>(words(last_user).size())},
                                      {"completion_tokens", 7},
                                      {"total_tokens", static_cast<int>(words(last_user).size()) + 7}};
        const nlohmann::json call = {{"id", "call_fake_1"}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
        if (!body.value("stream", false)) {
            res.set_content(
                nlohmann::json{{"id", "chatcmpl-fake"},
                               {"object", "chat.completion"},
                               {"created", 1741569952},
                               {"model", model},
                               {"choices",
                                {{{"index", 0},
                                  {"message", {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}, {"refusal", nullptr}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", "tool_calls"}}}},
                               {"usage", usage}}
                    .dump(),
                "application/json");
            return;
        }
        auto chunk = [&](nlohmann::json delta, nlohmann::json finish = nullptr) {
            return "data: " +
                   nlohmann::json{
                       {"id", "chatcmpl-fake"},
                       {"object", "chat.completion.chunk"},
                       {"created", 1741569952},
                       {"model", model},
                       {"choices",
                        {{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr}, {"finish_reason", std::move(finish)}}}}}
                       .dump() +
                   "\n\n";
        };
        const std::size_t half = arguments.size() / 2;
        std::string events =
            chunk({{"role", "assistant"},
                   {"content", nullptr},
                   {"tool_calls",
                    {{{"index", 0}, {"id", "call_fake_1"}, {"type", "function"}, {"function", {{"name", name}, {"arguments", ""}}}}}}}) +
            chunk({{"tool_calls", {{{"index", 0}, {"function", {{"arguments", arguments.substr(0, half)}}}}}}}) +
            chunk({{"tool_calls", {{{"index", 0}, {"function", {{"arguments", arguments.substr(half)}}}}}}}) +
            chunk(nlohmann::json::object(), "tool_calls");
        const auto options = body.value("stream_options", nlohmann::json::object());
        if (options.is_object() && options.value("include_usage", false))
            events += "data: " +
                      nlohmann::json{{"id", "chatcmpl-fake"}, {"object", "chat.completion.chunk"},  {"created", 1741569952},
                                     {"model", model},        {"choices", nlohmann::json::array()}, {"usage", usage}}
                          .dump() +
                      "\n\n";
        events += "data: [DONE]\n\n";
        res.set_content(events, "text/event-stream");
    }

    // Reaches the listening socket, which cpp-httplib keeps protected.
    struct server_with_backlog : httplib::Server {
        void raise_backlog(int n) { ::listen(svr_sock_, n); }
    };

    fake_reply defaults_;
    server_with_backlog server_;
    std::thread thread_;
    int port_ = 0;
    mutable std::mutex mutex_;
    std::deque<fake_reply> script_;
    std::vector<fake_request> requests_;
};

} // namespace test_support
