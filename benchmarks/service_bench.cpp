// The service's own cost per request, in process (no sockets): POST /chat through handle() with
// the real plugins, against the same service made of null models as the baseline; then the same
// chat on each surface (chatkit's, OpenAI's two, Anthropic's) against /chat: what translating a
// wire format costs.
#include "bench_clock.hpp"

#include <chatkit/chatkit.hpp>
#include <chatkit/echo_provider.hpp>
#include <chatkit/lru_cache.hpp>
#include <chatkit/otel_tracing.hpp>
#include <chatkit/prometheus_metrics.hpp>
#include <chatkit/rate_limiter.hpp>
#include <chatkit/request_id.hpp>
#include <chatkit/sqlite_store.hpp>

#include <filesystem>
#include <thread>

namespace {
constexpr auto duration = std::chrono::milliseconds(1500);

// Request bodies are made before timing starts; a miss cycles through distinct questions.
std::vector<std::string> make_bodies(bool use_cache) {
    std::vector<std::string> bodies;
    for (int n = 0; n < (use_cache ? 1 : 4096); ++n)
        bodies.push_back(nlohmann::json{{"user_id", "bench"},
                                        {"cache", use_cache},
                                        {"messages",
                                         {{{"role", "system"}, {"content", "You are a helpful assistant."}},
                                          {{"role", "user"}, {"content", "question number " + std::to_string(n)}}}}}
                             .dump());
    return bodies;
}

chatkit::http_request chat_request(const std::string& body) {
    chatkit::http_request req;
    req.method = "POST";
    req.path = "/chat";
    req.remote_addr = "127.0.0.1";
    req.headers.emplace("Content-Type", "application/json");
    req.body = body;
    return req;
}

// The same conversation (a system prompt, a distinct question) in each surface's format.
struct surface {
    const char* name;
    const char* path;
    nlohmann::json (*body)(const std::string& question);
};
const surface surfaces[] = {
    {"POST /chat", "/chat",
     [](const std::string& q) {
         return nlohmann::json{
             {"user_id", "bench"},
             {"cache", false},
             {"messages", {{{"role", "system"}, {"content", "You are a helpful assistant."}}, {{"role", "user"}, {"content", q}}}}};
     }},
    {"POST /v1/chat/completions", "/v1/chat/completions",
     [](const std::string& q) {
         return nlohmann::json{
             {"model", "echo-1"},
             {"user", "bench"},
             {"cache", false},
             {"messages", {{{"role", "system"}, {"content", "You are a helpful assistant."}}, {{"role", "user"}, {"content", q}}}}};
     }},
    {"POST /v1/messages", "/v1/messages",
     [](const std::string& q) {
         return nlohmann::json{{"model", "echo-1"},
                               {"max_tokens", 256},
                               {"cache", false},
                               {"metadata", {{"user_id", "bench"}}},
                               {"system", "You are a helpful assistant."},
                               {"messages", {{{"role", "user"}, {"content", q}}}}};
     }},
    {"POST /v1/responses", "/v1/responses",
     [](const std::string& q) {
         return nlohmann::json{
             {"model", "echo-1"}, {"user", "bench"}, {"cache", false}, {"store", false}, {"instructions", "You are a helpful assistant."},
             {"input", q}};
     }},
};

template <class Service>
bench::figure measure_surface(Service& svc, const surface& on) {
    std::vector<chatkit::http_request> requests;
    for (int n = 0; n < 4096; ++n) {
        auto req = chat_request(on.body("question number " + std::to_string(n)).dump());
        req.path = on.path;
        requests.push_back(std::move(req));
    }
    return bench::run_for(duration, 1, [&](int, long n) {
        auto res = svc.handle(requests[static_cast<std::size_t>(n) % requests.size()]);
        if (res.status != 200) std::abort();
    });
}

template <class Service>
bench::figure measure(Service& svc, int threads, bool use_cache) {
    const auto bodies = make_bodies(use_cache);
    return bench::run_for(duration, threads, [&](int, long n) {
        auto res = svc.handle(chat_request(bodies[static_cast<std::size_t>(n) % bodies.size()]));
        if (res.status != 200) std::abort();
    });
}
} // namespace

int main() {
    const auto db = std::filesystem::temp_directory_path() / "chatkit-service-bench.db";
    std::filesystem::remove(db);

    chatkit::service<chatkit::no_provider> null_service;
    chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_mt, chatkit::request_id, chatkit::rate_limiter_mt>
        memory_service{chatkit::echo_provider{}, chatkit::no_store{}, chatkit::lru_cache_mt{}, chatkit::request_id{},
                       chatkit::rate_limiter_mt{chatkit::rate_limit{1'000'000'000, std::chrono::seconds{1}}}};
    // The same with GET /metrics's counting (sample_server's default): its cost is the difference.
    chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_mt, chatkit::request_id, chatkit::rate_limiter_mt,
                     chatkit::prometheus_metrics>
        metered_service{chatkit::echo_provider{},
                        chatkit::no_store{},
                        chatkit::lru_cache_mt{},
                        chatkit::request_id{},
                        chatkit::rate_limiter_mt{chatkit::rate_limit{1'000'000'000, std::chrono::seconds{1}}},
                        chatkit::prometheus_metrics{}};
    // The same with every request traced (otel_tracing, sampled always) to a collector in this
    // process that accepts every export: the request path's cost (two spans built and queued)
    // plus the exporter thread's share of the CPU.
    httplib::Server collector;
    collector.Post("/v1/traces", [](const httplib::Request&, httplib::Response& res) { res.set_content("", "application/x-protobuf"); });
    const int collector_port = collector.bind_to_any_port("127.0.0.1");
    std::thread collector_thread{[&] { collector.listen_after_bind(); }};
    chatkit::otlp_exporter_options exporter_options;
    exporter_options.endpoint = "http://127.0.0.1:" + std::to_string(collector_port) + "/v1/traces";
    exporter_options.max_queue = 65536; // a burst of a few thousand requests a second must not drop
    auto exporter = std::make_shared<chatkit::otlp_exporter>(exporter_options);
    chatkit::service<chatkit::echo_provider, chatkit::no_store, chatkit::lru_cache_mt, chatkit::request_id, chatkit::rate_limiter_mt,
                     chatkit::otel_tracing>
        traced_service{chatkit::echo_provider{},
                       chatkit::no_store{},
                       chatkit::lru_cache_mt{},
                       chatkit::request_id{},
                       chatkit::rate_limiter_mt{chatkit::rate_limit{1'000'000'000, std::chrono::seconds{1}}},
                       chatkit::otel_tracing{exporter}};
    chatkit::service<chatkit::echo_provider, chatkit::sqlite_store, chatkit::lru_cache_mt, chatkit::request_id> full_service{
        chatkit::echo_provider{}, chatkit::sqlite_store{chatkit::sqlite_options{.path = db.string()}}, chatkit::lru_cache_mt{},
        chatkit::request_id{}};

    for (int threads : {1, 2}) {
        const auto baseline = measure(null_service, threads, false);
        bench::print_header(("POST /chat through service::handle, " + std::to_string(threads) + " thread(s)").c_str(),
                            "no_provider, no_store, no_cache");
        bench::print_row("baseline: null models", baseline, baseline);
        bench::print_row("echo + request_id + rate_limiter, cache miss", measure(memory_service, threads, false), baseline);
        bench::print_row("the same + prometheus_metrics, cache miss", measure(metered_service, threads, false), baseline);
        bench::print_row("the same without metrics, again", measure(memory_service, threads, false), baseline);
        bench::print_row("the same + otel_tracing (all sampled), cache miss", measure(traced_service, threads, false), baseline);
        bench::print_row("echo + request_id + rate_limiter, cache hit", measure(memory_service, threads, true), baseline);
        bench::print_row("echo + sqlite (durable) + lru, cache miss", measure(full_service, threads, false), baseline);
    }
    {
        const auto baseline = measure_surface(memory_service, surfaces[0]);
        bench::print_header("The same chat on each surface, echo + request_id + rate_limiter, cache miss, 1 thread", "POST /chat");
        for (const auto& on : surfaces)
            bench::print_row(on.name, on.path == surfaces[0].path ? baseline : measure_surface(memory_service, on), baseline);
    }
    (void)exporter->flush(std::chrono::seconds{10});
    const auto traced = exporter->stats();
    std::printf("traces: %llu spans exported, %llu dropped, %llu failed\n", static_cast<unsigned long long>(traced.exported),
                static_cast<unsigned long long>(traced.dropped), static_cast<unsigned long long>(traced.failed));
    collector.stop();
    collector_thread.join();
    std::filesystem::remove(db);
    std::filesystem::remove(db.string() + "-wal");
    std::filesystem::remove(db.string() + "-shm");
}
