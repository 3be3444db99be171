// Runs a body repeatedly on N threads for a fixed time and reports operations per second.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace bench {

struct figure {
    double ops_per_second;
    double micros_per_op; // wall time per operation on one thread
};

template <class Body>
figure run_for(std::chrono::milliseconds duration, int threads, Body body) {
    std::atomic<bool> stop{false};
    std::atomic<long> total{0};
    std::vector<std::thread> workers;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            long n = 0;
            while (!stop.load(std::memory_order_relaxed)) {
                body(t, n);
                ++n;
            }
            total += n;
        });
    std::this_thread::sleep_for(duration);
    stop = true;
    for (auto& w : workers) w.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double ops = static_cast<double>(total.load()) / seconds;
    return {ops, 1e6 * threads / ops};
}

inline void print_row(const std::string& name, const figure& f, const figure& baseline) {
    std::printf("| %-44s | %12.0f | %10.2f | %8.3f |\n", name.c_str(), f.ops_per_second, f.micros_per_op,
                f.ops_per_second / baseline.ops_per_second);
}

inline void print_header(const char* title, const char* baseline) {
    std::printf("\n%s (ratio: against %s, same run)\n\n", title, baseline);
    std::printf("| %-44s | %12s | %10s | %8s |\n", "scenario", "ops/s", "us/op", "ratio");
    std::printf("|%s|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(14, '-').c_str(), std::string(12, '-').c_str(),
                std::string(10, '-').c_str());
}

} // namespace bench
