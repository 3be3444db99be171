// The latency chatkit adds in front of an OpenAI-compatible upstream: the same requests sent
// straight to a fake upstream (the baseline) and through sample_server's /v1/chat/completions
// with the OpenAI provider, one kept-alive client, measured in the same run.
#include "../tests/support/fake_openai.hpp"
#include "../tests/support/server_process.hpp"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace {
constexpr int warmup = 200;
constexpr int requests = 3000;

struct percentiles {
    double p50, p90, p99;
};

percentiles measure(int port) {
    httplib::Client client{"127.0.0.1", port};
    client.set_keep_alive(true);
    client.set_tcp_nodelay(true);
    std::vector<double> micros;
    micros.reserve(requests);
    for (int i = 0; i < warmup + requests; ++i) {
        const auto body =
            nlohmann::json{{"model", "fake-1"}, {"messages", {{{"role", "user"}, {"content", "question " + std::to_string(i)}}}}}.dump();
        const auto start = std::chrono::steady_clock::now();
        auto r = client.Post("/v1/chat/completions", body, "application/json");
        const auto took = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
        if (!r || r->status != 200) {
            std::fprintf(stderr, "request failed: %s\n", r ? std::to_string(r->status).c_str() : httplib::to_string(r.error()).c_str());
            std::exit(1);
        }
        if (i >= warmup) micros.push_back(took);
    }
    std::sort(micros.begin(), micros.end());
    auto at = [&](double q) { return micros[static_cast<std::size_t>(q * static_cast<double>(micros.size() - 1))]; };
    return {at(0.50), at(0.90), at(0.99)};
}

void row(const char* name, percentiles p, percentiles base) {
    std::printf("| %-40s | %8.1f | %8.1f | %8.1f | %+9.1f | %+9.1f |\n", name, p.p50, p.p90, p.p99, p.p50 - base.p50, p.p99 - base.p99);
}
} // namespace

int main() {
    test_support::fake_openai fake;
    const auto direct = measure(fake.port());

    std::printf("\nPOST /v1/chat/completions, %d sequential requests on one kept-alive connection, microseconds\n", requests);
    std::printf("(added: against the direct baseline measured in the same run)\n\n");
    std::printf("| %-40s | %8s | %8s | %8s | %9s | %9s |\n", "path", "p50", "p90", "p99", "added p50", "added p99");
    std::printf("|------------------------------------------|----------|----------|----------|-----------|-----------|\n");
    row("direct: client -> fake upstream", direct, direct);
    const std::map<std::string, std::string> relay{
        {"CHAT_PROVIDER", "openai"}, {"OPENAI_API_KEY", "sk-bench"}, {"OPENAI_BASE_URL", fake.base_url()}, {"CHAT_CACHE_SIZE", "0"}};
    for (const std::string adapter : {"beast", "httplib"}) {
        {
            auto env = relay;
            env["CHAT_DATABASE_URL"] = "none";
            env["CHAT_SERVER"] = adapter;
            test_support::server_process server{env};
            row(("through sample_server[" + adapter + "], no store").c_str(), measure(server.port()), direct);
        }
        {
            auto env = relay;
            env["CHAT_SERVER"] = adapter;
            test_support::server_process server{env};
            row(("through sample_server[" + adapter + "], durable SQLite").c_str(), measure(server.port()), direct);
        }
    }
}
