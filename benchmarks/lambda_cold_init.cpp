// The Lambda package's start-up cost: from just before bootstrap is started to its first
// GET /runtime/invocation/next (init done, ready for an event), for dist/lambda.zip unpacked into
// a bare chroot (its own loader and libraries, OpenSSL's from the image's /usr/lib64, as on
// Lambda) and dist/lambda-self-contained.zip in an empty one, against the same bootstrap run
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

#if !defined(LAMBDA_ZIP_PATH) || !defined(SELF_CONTAINED_ZIP_PATH)
#error "LAMBDA_ZIP_PATH and SELF_CONTAINED_ZIP_PATH must name the packaged zips"
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
    const std::filesystem::path zip{LAMBDA_ZIP_PATH}, self_contained_zip{SELF_CONTAINED_ZIP_PATH};
    try {
        test_support::lambda_sandbox sandbox{zip};
        test_support::lambda_sandbox self_contained_sandbox{self_contained_zip, test_support::lambda_image::empty};
        const auto packaged_in = [](const test_support::lambda_sandbox& where) {
            return [&where](const fake_lambda_runtime& runtime) {
                std::filesystem::remove(where.root() / "tmp/chat.db"); // every start creates its SQLite file, as a fresh sandbox does
                return where.start(test_support::lambda_environment(
                    runtime.address(), {{"CHAT_DATABASE_URL", "sqlite:/tmp/chat.db"}, {"CHAT_PROVIDER", "echo"}}));
            };
        };
        const auto packaged = packaged_in(sandbox), self_contained = packaged_in(self_contained_sandbox);
        // The baseline keeps its SQLite file in the same directory, through the same path.
        const auto db = sandbox.root() / "tmp/chat.db";
        const auto baseline = [&](const fake_lambda_runtime& runtime) {
            std::filesystem::remove(db);
            return child_process{{BOOTSTRAP_PATH},
                                 test_support::lambda_launch(
                                     test_support::lambda_environment(
                                         runtime.address(), {{"CHAT_DATABASE_URL", "sqlite:" + db.string()}, {"CHAT_PROVIDER", "echo"}}),
                                     sandbox.log_path(), {}, sandbox.task_root())};
        };

        cold_start(packaged); // warm-up: page cache, first-touch costs
        cold_start(self_contained);
        cold_start(baseline);
        std::vector<double> packaged_ms, self_contained_ms, baseline_ms;
        for (int i = 0; i < runs; ++i) { // alternated, so drift on the machine hits all alike
            packaged_ms.push_back(cold_start(packaged));
            self_contained_ms.push_back(cold_start(self_contained));
            baseline_ms.push_back(cold_start(baseline));
        }
        const auto p = summarise(packaged_ms), s = summarise(self_contained_ms), b = summarise(baseline_ms);
        std::printf("\nbootstrap start to first GET /next, %d starts each, milliseconds (ratio: packaged / baseline, same run)\n\n", runs);
        std::printf("| %-62s | %7s | %7s | %7s |\n", "bootstrap", "p50", "p90", "max");
        std::printf("|%s|---------|---------|---------|\n", std::string(64, '-').c_str());
        const auto row = [](const char* what, const summary& x) {
            std::printf("| %-62s | %7.2f | %7.2f | %7.2f |\n", what, x.p50, x.p90, x.max);
        };
        row("baseline: build output, system libraries", b);
        row("lambda.zip: bundled libraries, the image's OpenSSL", p);
        row("lambda-self-contained.zip: bundled libraries, OpenSSL too", s);
        row("ratio, lambda.zip", {p.p50 / b.p50, p.p90 / b.p90, p.max / b.max});
        row("ratio, lambda-self-contained.zip", {s.p50 / b.p50, s.p90 / b.p90, s.max / b.max});
        for (const auto& z : {zip, self_contained_zip})
            std::printf("\n%s: %ju bytes", z.string().c_str(), static_cast<std::uintmax_t>(std::filesystem::file_size(z)));
        std::printf("\n");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "lambda_cold_init: %s\n", e.what());
        return 1;
    }
}
