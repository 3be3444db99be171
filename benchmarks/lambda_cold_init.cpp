// The Lambda package's start-up cost: from just before bootstrap is started to its first
// GET /runtime/invocation/next (init done, ready for an event), for dist/lambda.zip unpacked into
// an empty chroot (its own loader and libraries, as on Lambda) against the same bootstrap run
// straight from the build with the system's libraries (the baseline), alternately, in one run.
// Both start from a warm page cache; Lambda's download and unpacking of the zip are not included.
// Chroots, so run it as root. Usage: lambda_cold_init [RUNS] (default 20).
#include "../tests/support/fake_lambda_runtime.hpp"
#include "../tests/support/lambda_events.hpp"
#include "../tests/support/lambda_sandbox.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#ifndef LAMBDA_ZIP_PATH
#error "LAMBDA_ZIP_PATH must name the packaged zip"
#endif
#ifndef BOOTSTRAP_PATH
#error "BOOTSTRAP_PATH must name the bootstrap binary"
#endif

namespace {

using test_support::child_process;
using test_support::fake_lambda_runtime;

// One cold start: milliseconds from just before `start` to the first /next. Then one GET /health
// to be sure the process works, and it is killed.
template <class Start>
double cold_start(const Start& start) {
    fake_lambda_runtime runtime;
    const auto begin = std::chrono::steady_clock::now();
    const auto process = start(runtime);
    const auto ready = runtime.first_next();
    const auto id = runtime.push(test_support::gateway_event("GET", "/health").dump());
    const auto answer = nlohmann::json::parse(runtime.wait_for(id).body);
    if (answer.value("statusCode", 0) != 200) {
        std::fprintf(stderr, "GET /health answered %s\n%s\n", answer.dump().c_str(), process.log().c_str());
        std::exit(1);
    }
    return std::chrono::duration<double, std::milli>(ready - begin).count();
}

struct summary {
    double p50, p90, max;
};

summary summarise(std::vector<double> ms) {
    std::sort(ms.begin(), ms.end());
    const auto at = [&](double q) { return ms[static_cast<std::size_t>(q * static_cast<double>(ms.size() - 1))]; };
    return {at(0.5), at(0.9), ms.back()};
}

} // namespace

int main(int argc, char** argv) {
    const int runs = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
    const std::filesystem::path zip{LAMBDA_ZIP_PATH};
    try {
        test_support::lambda_sandbox sandbox{zip};
        const auto db = sandbox.root() / "tmp/chat.db";
        const auto packaged = [&](const fake_lambda_runtime& runtime) {
            std::filesystem::remove(db); // every start creates its SQLite file, as a fresh sandbox does
            return sandbox.start(test_support::lambda_environment(
                runtime.address(), {{"CHAT_DATABASE_URL", "sqlite:/tmp/chat.db"}, {"CHAT_PROVIDER", "echo"}}));
        };
        // The baseline keeps its SQLite file in the same directory, through the same path.
        const auto baseline = [&](const fake_lambda_runtime& runtime) {
            std::filesystem::remove(db);
            return child_process{{BOOTSTRAP_PATH},
                                 test_support::lambda_launch(
                                     test_support::lambda_environment(
                                         runtime.address(), {{"CHAT_DATABASE_URL", "sqlite:" + db.string()}, {"CHAT_PROVIDER", "echo"}}),
                                     sandbox.log_path(), {}, sandbox.task_root())};
        };

        cold_start(packaged); // warm-up: page cache, first-touch costs
        cold_start(baseline);
        std::vector<double> packaged_ms, baseline_ms;
        for (int i = 0; i < runs; ++i) { // alternated, so drift on the machine hits both alike
            packaged_ms.push_back(cold_start(packaged));
            baseline_ms.push_back(cold_start(baseline));
        }
        const auto p = summarise(packaged_ms), b = summarise(baseline_ms);
        std::printf("\nbootstrap start to first GET /next, %d starts each, milliseconds (ratio: packaged / baseline, same run)\n\n", runs);
        std::printf("| %-58s | %7s | %7s | %7s |\n", "bootstrap", "p50", "p90", "max");
        std::printf("|%s|---------|---------|---------|\n", std::string(60, '-').c_str());
        std::printf("| %-58s | %7.2f | %7.2f | %7.2f |\n", "baseline: build output, system libraries", b.p50, b.p90, b.max);
        std::printf("| %-58s | %7.2f | %7.2f | %7.2f |\n", "packaged: lambda.zip in an empty chroot, bundled libraries", p.p50, p.p90,
                    p.max);
        std::printf("| %-58s | %7.2f | %7.2f | %7.2f |\n", "ratio", p.p50 / b.p50, p.p90 / b.p90, p.max / b.max);
        std::printf("\n%s: %ju bytes\n", zip.string().c_str(), static_cast<std::uintmax_t>(std::filesystem::file_size(zip)));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "lambda_cold_init: %s\n", e.what());
        return 1;
    }
}
