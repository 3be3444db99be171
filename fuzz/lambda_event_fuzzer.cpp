// API Gateway (HTTP API, payload v2) and Function URL events, as the Lambda adapter turns them
// into requests, and the answer it sends back: nothing throws, and the answer event is JSON.
#include <chatkit/lambda_runtime.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text{reinterpret_cast<const char*>(data), size};
    const auto event = nlohmann::json::parse(text, nullptr, false);
    if (event.is_discarded()) return 0;
    (void)chatkit::lambda::from_function_url(event);
    const auto req = chatkit::lambda::request_from_event(event);
    if (!req) return 0;
    chatkit::http_response res;
    res.headers.emplace("X-Path", req->path);
    res.body = req->body;
    if (!nlohmann::json::accept(chatkit::lambda::response_to_event(res))) std::abort();
    return 0;
}
