// Durable history appends per second on PostgreSQL with 1, 8 and 64 concurrent writers (group
// commit: the writers waiting while a batch commits share the next COMMIT), next to SQLite's 64
// durable writers in the same run. One exchange is two messages. Usage:
//   postgres_store_bench postgresql://USER@HOST:PORT/DB
// The database should be a throw-away one with fsync on (benchmarks/run.py starts one).
#include "bench_clock.hpp"

#include <chatkit/postgres_store.hpp>
#include <chatkit/sqlite_store.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {
constexpr auto duration = std::chrono::milliseconds(3000);

chatkit::exchange exchange_of(int writer, long n) {
    return {"user-" + std::to_string(writer),
            "req-" + std::to_string(n),
            "echo-1",
            {{chatkit::role::user, "a question of typical length, a sentence or two"},
             {chatkit::role::assistant, "an answer of typical length, a little longer than the question"}},
            chatkit::now_unix_ms()};
}

template <class Store>
bench::figure appends(Store& store, int writers) {
    return bench::run_for(duration, writers, [&](int t, long n) {
        if (auto r = store.append(exchange_of(t, n)); !r) {
            std::fprintf(stderr, "append failed: %s\n", r.error().message.c_str());
            std::abort();
        }
    });
}
} // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s postgresql://USER@HOST:PORT/DB\n", argv[0]);
        return 2;
    }
    bench::print_header("history appends, durable (one exchange = 2 messages; ops/s are exchanges)", "SQLite, 64 writers");
    const auto db = std::filesystem::temp_directory_path() / "chatkit-pg-bench-baseline.db";
    const auto remove_db = [&] {
        for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db.string() + suffix);
    };
    remove_db();
    bench::figure baseline{};
    {
        chatkit::sqlite_store sqlite{chatkit::sqlite_options{.path = db.string(), .durable = true}};
        baseline = appends(sqlite, 64);
    }
    remove_db();
    bench::print_row("SQLite, 64 writers (synchronous=FULL)", baseline, baseline);
    chatkit::postgres_store_options o;
    o.connection.url = argv[1];
    o.connection.max_connections = 16; // as sample_server's default with 16 threads
    chatkit::postgres_store pg{o};
    for (int writers : {1, 8, 64}) {
        const auto f = appends(pg, writers);
        bench::print_row("PostgreSQL, " + std::to_string(writers) + " writer(s)", f, baseline);
        std::printf("  (%d writers: %.0f durable messages/s)\n", writers, 2 * f.ops_per_second);
    }
}
