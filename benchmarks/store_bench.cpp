// Durable history appends per second on SQLite with 1, 8 and 64 concurrent writers: group commit
// shares one fsync among the writers of a batch. Baseline: one writer, durable.
#include "bench_clock.hpp"

#include <chatkit/sqlite_store.hpp>

#include <filesystem>

namespace {
constexpr auto duration = std::chrono::milliseconds(2000);

bench::figure appends(bool durable, int writers) {
    const auto db = std::filesystem::temp_directory_path() / "chatkit-store-bench.db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db.string() + suffix);
    chatkit::sqlite_store store{chatkit::sqlite_options{.path = db.string(), .durable = durable}};
    const auto figure = bench::run_for(duration, writers, [&](int t, long n) {
        chatkit::exchange e{"user-" + std::to_string(t),
                            "req-" + std::to_string(n),
                            "echo-1",
                            {{chatkit::role::user, "a question of typical length, a sentence or two"},
                             {chatkit::role::assistant, "an answer of typical length, a little longer than the question"}},
                            chatkit::now_unix_ms()};
        if (!store.append(e)) std::abort();
    });
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db.string() + suffix);
    return figure;
}
} // namespace

int main() {
    bench::print_header("sqlite_store::append (one exchange = 2 rows)", "1 writer, durable");
    const auto baseline = appends(true, 1);
    bench::print_row("1 writer, durable (synchronous=FULL)", baseline, baseline);
    for (int writers : {8, 64}) bench::print_row(std::to_string(writers) + " writers, durable", appends(true, writers), baseline);
    for (int writers : {1, 64})
        bench::print_row(std::to_string(writers) + " writer(s), synchronous=NORMAL", appends(false, writers), baseline);
}
