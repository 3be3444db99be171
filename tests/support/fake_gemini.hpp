// A fake Gemini upstream for tests: real HTTP on 127.0.0.1, the Gemini API's wire format
// (POST /v1beta/models/{model}:generateContent answers a GenerateContentResponse;
// :streamGenerateContent?alt=sse sends one per SSE event, CR LF framed, with no end marker;
// Google's error envelope), the checks the real API makes on a request's key and shape, and
// scripted faults. Unscripted requests are answered with "echo: <last user message>", word by
// word when streaming; a request declaring functions whose last turn holds no functionResponse
// gets a functionCall of the first with {"q":"<last user message>"} (without an id, as Gemini
// often sends it), and one whose last turn holds functionResponses "tool said: <their results>".
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

struct fake_gemini_reply {
    int status = 200;
    std::string body; // for status != 200: the error body
    std::vector<std::pair<std::string, std::string>> headers;
    std::chrono::milliseconds delay_before{0};  // before the status line
    std::chrono::milliseconds delay_between{0}; // between stream events
    std::size_t chunk_bytes = 0;                // cut the SSE bytes into pieces this size (0: one per event)
    int break_after_events = -1;                // drop the connection after this many events
    bool error_after_first_delta = false;       // an error object (UNAVAILABLE) as the event after the first text
    bool error_before_content = false;          // an error object as the first event
    bool end_without_finish = false;            // the stream ends cleanly but no chunk has a finishReason
    bool thought_part = false;                  // a part with thought: true before the text
    std::string finish_reason = "STOP";
    std::string block_reason;  // non-empty: the prompt is blocked (promptFeedback, no candidate)
    int cached_tokens = 0;     // cachedContentTokenCount (part of the prompt count)
    int thoughts_tokens = 0;   // thoughtsTokenCount
    std::string content;       // the answer; empty: echo the last user message
    std::string model_version; // modelVersion; empty: the request's model; "-": none
};

// An error answer in Google's envelope.
inline fake_gemini_reply gemini_error_reply(int status, std::string google_status, std::string message,
                                            nlohmann::json details = nlohmann::json::array()) {
    fake_gemini_reply r;
    r.status = status;
    nlohmann::json e = {{"code", status}, {"message", message}, {"status", google_status}};
    if (!details.empty()) e["details"] = details;
    r.body = nlohmann::json{{"error", e}}.dump(2);
    return r;
}

struct fake_gemini_request {
    std::string model;  // from the path
    std::string method; // generateContent or streamGenerateContent
    std::string alt;    // the alt query parameter
    nlohmann::json body;
    httplib::Headers headers;
};

class fake_gemini {
public:
    // `key`: the one API key it accepts (empty: any non-empty key).
    explicit fake_gemini(fake_gemini_reply defaults = {}, std::string key = {}) : defaults_(std::move(defaults)), key_(std::move(key)) {
        server_.new_task_queue = [] { return new httplib::ThreadPool(8); };
        server_.Post(R"(/v1beta/models/([A-Za-z0-9._-]+):(generateContent|streamGenerateContent))",
                     [this](const httplib::Request& req, httplib::Response& res) { answer(req, res); });
        port_ = server_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { server_.listen_after_bind(); });
        while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~fake_gemini() {
        server_.stop();
        thread_.join();
    }
    fake_gemini(const fake_gemini&) = delete;
    fake_gemini& operator=(const fake_gemini&) = delete;

    int port() const { return port_; }
    // As the provider takes it: the origin, without /v1beta.
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

    // From now on only `key` is accepted, as when a key is rotated and the old one revoked.
    void accept_only(std::string key) {
        std::lock_guard lock{mutex_};
        key_ = std::move(key);
    }

    void script(std::vector<fake_gemini_reply> replies) {
        std::lock_guard lock{mutex_};
        for (auto& r : replies) script_.push_back(std::move(r));
    }
    std::vector<fake_gemini_request> requests() const {
        std::lock_guard lock{mutex_};
        return requests_;
    }

    static std::vector<std::string> words(const std::string& text) {
        std::vector<std::string> out;
        std::istringstream in{text};
        for (std::string w; in >> w;) out.push_back(out.empty() ? w : " " + w);
        return out;
    }

    // One SSE event as Google frames it.
    static std::string event(const nlohmann::json& data) { return "data: " + data.dump() + "\r\n\r\n"; }

private:
    static fake_gemini_reply unknown_field(const std::string& name) {
        return gemini_error_reply(
            400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"" + name + "\": Cannot find field.",
            nlohmann::json::array(
                {{{"@type", "type.googleapis.com/google.rpc.BadRequest"},
                  {"fieldViolations", {{{"description", "Invalid JSON payload received. Unknown name \"" + name + "\""}}}}}}));
    }

    // What the real API refuses before it answers: no key or a wrong one, fields it does not
    // know, no contents, a role other than user or model, an empty text part, a temperature
    // out of range.
    std::optional<fake_gemini_reply> refusal(const httplib::Request& req, const nlohmann::json& body) const {
        if (!req.has_header("x-goog-api-key"))
            return gemini_error_reply(
                403, "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or "
                "other form of API consumer identity to call this API.");
        const std::string key = req.get_header_value("x-goog-api-key");
        const std::string accepted = [this] {
            std::lock_guard lock{mutex_};
            return key_;
        }();
        if (key.empty() || (!accepted.empty() && key != accepted))
            return gemini_error_reply(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                      nlohmann::json::array({{{"@type", "type.googleapis.com/google.rpc.ErrorInfo"},
                                                              {"reason", "API_KEY_INVALID"},
                                                              {"domain", "googleapis.com"},
                                                              {"metadata", {{"service", "generativelanguage.googleapis.com"}}}}}));
        if (!body.is_object()) return gemini_error_reply(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
        static const std::set<std::string> top = {"contents", "systemInstruction", "generationConfig", "safetySettings",
                                                  "tools",    "toolConfig",        "cachedContent"};
        for (const auto& [name, value] : body.items())
            if (!top.contains(name)) return unknown_field(name);
        static const std::set<std::string> config = {"temperature",
                                                     "maxOutputTokens",
                                                     "topP",
                                                     "topK",
                                                     "stopSequences",
                                                     "seed",
                                                     "candidateCount",
                                                     "presencePenalty",
                                                     "frequencyPenalty",
                                                     "responseMimeType",
                                                     "responseSchema",
                                                     "thinkingConfig"};
        if (body.contains("generationConfig")) {
            for (const auto& [name, value] : body["generationConfig"].items())
                if (!config.contains(name)) return unknown_field("generation_config." + name);
            const auto& g = body["generationConfig"];
            if (g.contains("temperature") &&
                (!g["temperature"].is_number() || g["temperature"].get<double>() < 0 || g["temperature"].get<double>() > 2))
                return gemini_error_reply(400, "INVALID_ARGUMENT",
                                          "* GenerateContentRequest.generation_config.temperature: must be between 0 and 2");
        }
        if (!body.contains("contents") || !body["contents"].is_array() || body["contents"].empty())
            return gemini_error_reply(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n");
        for (const auto& c : body["contents"]) {
            const std::string role = c.is_object() && c.contains("role") && c["role"].is_string() ? c["role"].get<std::string>() : "";
            if (role != "user" && role != "model")
                return gemini_error_reply(400, "INVALID_ARGUMENT", "Please use a valid role: user, model.");
            if (!c.contains("parts") || !c["parts"].is_array() || c["parts"].empty())
                return gemini_error_reply(400, "INVALID_ARGUMENT",
                                          "* GenerateContentRequest.contents.parts: contents.parts must not be empty.\n");
            for (const auto& p : c["parts"]) {
                if (p.is_object() && p.size() == 1 && p.contains("functionCall") && p["functionCall"].is_object() &&
                    p["functionCall"].contains("name") && p["functionCall"].value("args", nlohmann::json::object()).is_object())
                    continue;
                if (p.is_object() && p.size() == 1 && p.contains("functionResponse") && p["functionResponse"].is_object() &&
                    p["functionResponse"].contains("name") && p["functionResponse"].value("response", nlohmann::json()).is_object())
                    continue;
                if (!p.is_object() || !p.contains("text") || !p["text"].is_string() || p["text"].get<std::string>().empty())
                    return gemini_error_reply(
                        400, "INVALID_ARGUMENT",
                        "Unable to submit request because it has an empty text parameter. Add a value to the parameter and try again.");
            }
        }
        // Function responses answer the function calls of the turn before, one for one.
        const auto& contents = body["contents"];
        for (std::size_t i = 0; i < contents.size(); ++i) {
            std::size_t responses = 0, calls = 0;
            for (const auto& p : contents[i]["parts"]) responses += p.contains("functionResponse");
            if (responses == 0) continue;
            if (i > 0)
                for (const auto& p : contents[i - 1]["parts"]) calls += p.contains("functionCall");
            if (responses != calls)
                return gemini_error_reply(400, "INVALID_ARGUMENT",
                                          "Please ensure that the number of function response parts is equal to the number of function "
                                          "call parts of the function call turn.");
        }
        if (body.contains("tools")) {
            for (const auto& tool : body["tools"])
                for (const auto& [name, value] : tool.items()) {
                    if (name != "functionDeclarations") return unknown_field("tools[0]." + name);
                    for (const auto& d : value) {
                        for (const auto& [field, v] : d.items())
                            if (field != "name" && field != "description" && field != "parameters" && field != "parametersJsonSchema")
                                return unknown_field("tools[0].function_declarations[0]." + field);
                        if (!d.contains("name"))
                            return gemini_error_reply(
                                400, "INVALID_ARGUMENT",
                                "* GenerateContentRequest.tools[0].function_declarations[0].name: Name cannot be empty.\n");
                    }
                }
        }
        if (body.contains("toolConfig")) {
            const std::string mode = body["toolConfig"].value("functionCallingConfig", nlohmann::json::object()).value("mode", "");
            if (mode != "AUTO" && mode != "ANY" && mode != "NONE")
                return gemini_error_reply(400, "INVALID_ARGUMENT", "Invalid value at 'tool_config.function_calling_config.mode'");
        }
        return std::nullopt;
    }

    // The results of the functionResponse parts of a turn, or nothing when it has none.
    static std::optional<std::string> function_results(const nlohmann::json& content) {
        std::optional<std::string> results;
        for (const auto& p : content["parts"])
            if (p.contains("functionResponse")) results = results.value_or("") + p["functionResponse"]["response"].value("result", "");
        return results;
    }

    static std::string text_of(const nlohmann::json& content) {
        std::string text;
        if (content.is_object() && content.contains("parts") && content["parts"].is_array())
            for (const auto& p : content["parts"])
                if (p.is_object() && p.contains("text") && p["text"].is_string()) text += p["text"].get<std::string>();
        return text;
    }

    void answer(const httplib::Request& req, httplib::Response& res) {
        fake_gemini_reply reply = defaults_;
        auto body = nlohmann::json::parse(req.body, nullptr, false);
        const std::string model = req.matches[1];
        const std::string method = req.matches[2];
        const std::string alt = req.has_param("alt") ? req.get_param_value("alt") : "";
        {
            std::lock_guard lock{mutex_};
            requests_.push_back({model, method, alt, body, req.headers});
            if (!script_.empty()) {
                reply = std::move(script_.front());
                script_.pop_front();
            }
        }
        if (reply.status == 200)
            if (auto refused = refusal(req, body)) reply = std::move(*refused);
        std::this_thread::sleep_for(reply.delay_before);
        for (const auto& [k, v] : reply.headers) res.set_header(k, v);
        if (reply.status != 200) {
            res.status = reply.status;
            res.set_content(reply.body, "application/json; charset=UTF-8");
            return;
        }
        std::string last_user;
        for (const auto& c : body["contents"])
            if (c.value("role", "") == "user") last_user = text_of(c);
        const auto results = function_results(body["contents"].back());
        const bool declares = body.contains("tools") && !body["tools"].empty() && body["tools"][0].contains("functionDeclarations");
        const std::string content = !reply.content.empty() ? reply.content : results ? "tool said: " + *results : "echo: " + last_user;
        const auto pieces = words(content);
        const int prompt_tokens = static_cast<int>(words(last_user).size()) + reply.cached_tokens;
        const int candidates_tokens = static_cast<int>(pieces.size());
        auto usage = [&](int candidates, bool final) {
            nlohmann::json u = {{"promptTokenCount", prompt_tokens},
                                {"candidatesTokenCount", candidates},
                                {"totalTokenCount", prompt_tokens + candidates + (final ? reply.thoughts_tokens : 0)}};
            if (reply.cached_tokens) u["cachedContentTokenCount"] = reply.cached_tokens;
            if (final && reply.thoughts_tokens) u["thoughtsTokenCount"] = reply.thoughts_tokens;
            u["promptTokensDetails"] = nlohmann::json::array({{{"modality", "TEXT"}, {"tokenCount", prompt_tokens}}});
            return u;
        };
        auto response = [&](nlohmann::json parts, const std::string& finish, nlohmann::json u) {
            nlohmann::json candidate = {{"content", {{"parts", std::move(parts)}, {"role", "model"}}}, {"index", 0}};
            if (!finish.empty()) candidate["finishReason"] = finish;
            nlohmann::json r = {
                {"candidates", nlohmann::json::array({candidate})}, {"usageMetadata", std::move(u)}, {"responseId", "fake-response-id"}};
            if (reply.model_version != "-") r["modelVersion"] = reply.model_version.empty() ? model : reply.model_version;
            return r;
        };
        nlohmann::json blocked;
        if (!reply.block_reason.empty()) {
            blocked = {
                {"promptFeedback",
                 {{"blockReason", reply.block_reason},
                  {"safetyRatings", nlohmann::json::array({{{"category", "HARM_CATEGORY_DANGEROUS_CONTENT"}, {"probability", "HIGH"}}})}}},
                {"usageMetadata", {{"promptTokenCount", prompt_tokens}, {"totalTokenCount", prompt_tokens}}}};
            if (reply.model_version != "-") blocked["modelVersion"] = model;
        }
        const nlohmann::json thought = {{"text", "Let me think."}, {"thought", true}};

        if (declares && !results && reply.content.empty() && blocked.is_null()) {
            const nlohmann::json call = {
                {"functionCall", {{"name", body["tools"][0]["functionDeclarations"][0]["name"]}, {"args", {{"q", last_user}}}}}};
            const auto answer = response(nlohmann::json::array({call}), "STOP", usage(7, true));
            if (method == "generateContent") return res.set_content(answer.dump(2), "application/json; charset=UTF-8");
            if (alt != "sse") return res.set_content(nlohmann::json::array({answer}).dump(2), "application/json; charset=UTF-8");
            return res.set_content(event(answer), "text/event-stream");
        }

        if (method == "generateContent") {
            if (!blocked.is_null()) return res.set_content(blocked.dump(2), "application/json; charset=UTF-8");
            nlohmann::json parts = nlohmann::json::array();
            if (reply.thought_part) parts.push_back(thought);
            parts.push_back({{"text", content}});
            res.set_content(response(parts, reply.finish_reason, usage(candidates_tokens, true)).dump(2),
                            "application/json; charset=UTF-8");
            return;
        }

        // streamGenerateContent: one GenerateContentResponse per word, the finish reason and the
        // final counts on the last.
        std::vector<nlohmann::json> chunks;
        if (!blocked.is_null()) chunks.push_back(blocked);
        else {
            if (reply.error_before_content)
                chunks.push_back(
                    nlohmann::json::parse(gemini_error_reply(503, "UNAVAILABLE", "The model is overloaded. Please try again later.").body));
            if (reply.thought_part) chunks.push_back(response(nlohmann::json::array({thought}), "", usage(0, false)));
            for (std::size_t i = 0; i < pieces.size(); ++i) {
                const bool last = i + 1 == pieces.size();
                chunks.push_back(response(nlohmann::json::array({{{"text", pieces[i]}}}),
                                          last && !reply.end_without_finish ? reply.finish_reason : "",
                                          usage(static_cast<int>(i + 1), last)));
                if (i == 0 && reply.error_after_first_delta)
                    chunks.push_back(nlohmann::json::parse(
                        gemini_error_reply(503, "UNAVAILABLE", "The model is overloaded. Please try again later.").body));
            }
        }
        if (alt != "sse") { // without alt=sse, Google sends the chunks as one JSON array
            res.set_content(nlohmann::json(chunks).dump(2), "application/json; charset=UTF-8");
            return;
        }
        std::vector<std::string> events;
        for (const auto& c : chunks) events.push_back(event(c));
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

    fake_gemini_reply defaults_;
    std::string key_;
    httplib::Server server_;
    std::thread thread_;
    int port_ = 0;
    mutable std::mutex mutex_;
    std::deque<fake_gemini_reply> script_;
    std::vector<fake_gemini_request> requests_;
};

} // namespace test_support
