#include "chatkit/postgres_store.hpp"

#include "store_conformance.hpp"

#include "../support/postgres_server.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using chatkit::postgres_store;
using chatkit::postgres_store_options;
using chatkit_test::make_exchange;
using test_support::postgres_server;

// One cluster for the tests that leave it running (initdb costs a second or two); each test takes
// a database of its own. Tests that stop the server start their own.
postgres_server& shared_server() {
    static postgres_server server;
    return server;
}

postgres_store_options options_for(const std::string& url) {
    postgres_store_options o;
    o.connection.url = url;
    o.connection.connect_timeout = std::chrono::seconds{2};
    return o;
}

std::size_t history_size(postgres_store& store, const std::string& user_id) {
    auto page = store.history({user_id, 100'000, {}});
    REQUIRE(page.has_value());
    return page->messages.size();
}

bool mentions_password(const std::string& text) { return text.find(postgres_server::password) != std::string::npos; }

} // namespace

TEST_CASE("postgres_store passes the store conformance checks") {
    auto& server = shared_server();
    chatkit_test::check_store_conformance<postgres_store>(
        [&] { return postgres_store(options_for(server.url(server.create_database()))); });
}

TEST_CASE("postgres_store: migrations run once, whether two stores start at once or one starts again") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    const std::string url = server.url(db);
    // Two replicas starting at the same moment: the advisory lock makes one wait for the other,
    // which then finds the schema current (without it, both would CREATE TABLE and one would fail).
    std::vector<std::thread> starters;
    std::atomic<int> failures{0};
    for (int i = 0; i < 4; ++i)
        starters.emplace_back([&] {
            try {
                postgres_store store(options_for(url));
                if (!store.append(make_exchange("alice", "start"))) ++failures;
            } catch (const std::exception&) {
                ++failures;
            }
        });
    for (auto& t : starters) t.join();
    CHECK(failures == 0);
    const long latest = server.number("SELECT max(version) FROM chatkit_schema_version", db);
    CHECK(latest == static_cast<long>(std::size(chatkit::postgres_store_detail::migrations)));
    CHECK(server.number("SELECT count(*) FROM chatkit_schema_version", db) == latest); // one row per migration, once
    for (int again = 0; again < 2; ++again) {
        postgres_store store(options_for(url)); // re-running a migration would throw (the table exists)
        CHECK(history_size(store, "alice") == 8);
    }
    CHECK(server.number("SELECT count(*) FROM chatkit_schema_version", db) == latest);
}

TEST_CASE("postgres_store: a database from a newer schema version is refused, not modified") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    { postgres_store store(options_for(server.url(db))); }
    server.query("INSERT INTO chatkit_schema_version (version) VALUES (9999)", db);
    CHECK_THROWS_WITH(postgres_store(options_for(server.url(db))), Catch::Contains("9999"));
    CHECK(server.number("SELECT max(version) FROM chatkit_schema_version", db) == 9999);
}

TEST_CASE("postgres_store: append has committed its rows when it returns") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    postgres_store store(options_for(server.url(db)));
    REQUIRE(store.append(make_exchange("alice", "1")).has_value());
    // Another connection sees only committed rows.
    CHECK(server.number("SELECT count(*) FROM chatkit_messages WHERE user_id = 'alice'::bytea", db) == 2);
}

TEST_CASE("postgres_store: concurrent appends are group-committed, and every acknowledged one is in the database") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    std::atomic<long> commits{0}, appends{0}, empty_batches{0};
    auto o = options_for(server.url(db));
    o.on_commit = [&](std::size_t batch, std::chrono::duration<double>) {
        ++commits;
        appends += static_cast<long>(batch);
        if (batch == 0) ++empty_batches;
    };
    postgres_store store(std::move(o));
    REQUIRE(store.append(make_exchange("alice", "alone")).has_value());
    CHECK(commits == 1);
    CHECK(store.append(chatkit::exchange{}).has_value()); // nothing to write: no commit
    CHECK(commits == 1);

    constexpr int threads = 32, per_thread = 40;
    std::atomic<int> failures{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t)
        writers.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i)
                if (!store.append(make_exchange("user-" + std::to_string(t), std::to_string(i)))) ++failures;
        });
    for (auto& w : writers) w.join();
    CHECK(failures == 0);
    CHECK(appends == 1 + threads * per_thread); // each append in exactly one reported commit
    CHECK(commits < appends);                   // batched: with 32 writers, commits were shared
    CHECK(empty_batches == 0);
    CHECK(server.number("SELECT count(*) FROM chatkit_messages", db) == 2 * (1 + threads * per_thread));
    // An exchange's two messages have consecutive ids, the question first.
    CHECK(server.number("SELECT count(*) FROM chatkit_messages q JOIN chatkit_messages a ON a.id = q.id + 1 "
                        "WHERE q.role = 'user' AND a.role = 'assistant' AND a.request_id = q.request_id "
                        "AND a.user_id = q.user_id",
                        db) == 1 + threads * per_thread);
}

TEST_CASE("postgres_store: two stores on one database see each other's history") {
    auto& server = shared_server();
    const std::string url = server.url(server.create_database());
    postgres_store a(options_for(url)), b(options_for(url));
    REQUIRE(a.append(make_exchange("alice", "via-a")).has_value());
    REQUIRE(b.append(make_exchange("alice", "via-b")).has_value());
    for (auto* store : {&a, &b}) {
        auto page = store->history({"alice", 10, {}});
        REQUIRE(page.has_value());
        REQUIRE(page->messages.size() == 4);
        CHECK(page->messages[0].content == "question via-a");
        CHECK(page->messages[3].content == "answer via-b");
    }
}

TEST_CASE("postgres_store: PostgreSQL restarted mid-run gives clean unavailable errors, then the pool reconnects") {
    postgres_server server; // its own: this test stops it
    const std::string db = server.create_database();
    postgres_store store(options_for(server.url(db)));
    REQUIRE(store.append(make_exchange("alice", "before")).has_value());
    REQUIRE(store.health().ok);

    server.stop();
    auto failed = store.append(make_exchange("alice", "while-down"));
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().kind == chatkit::error_kind::unavailable);
    CHECK(failed.error().code == "store_unavailable");
    CHECK_THAT(failed.error().message, Catch::Contains("127.0.0.1:" + std::to_string(server.port())));
    CHECK_FALSE(mentions_password(failed.error().message));
    auto read = store.history({"alice", 10, {}});
    REQUIRE_FALSE(read.has_value());
    CHECK(read.error().kind == chatkit::error_kind::unavailable);
    CHECK_FALSE(mentions_password(read.error().message));
    const auto health = store.health();
    CHECK_FALSE(health.ok);
    CHECK_FALSE(mentions_password(health.detail));

    server.start();
    REQUIRE(store.append(make_exchange("alice", "after")).has_value());
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 4);
    CHECK(page->messages[0].content == "question before");
    CHECK(page->messages[2].content == "question after");
    CHECK(store.health().ok);
}

TEST_CASE("postgres_store: writers running through a restart lose nothing they were told was saved") {
    postgres_server server;
    const std::string db = server.create_database();
    postgres_store store(options_for(server.url(db)));
    constexpr int threads = 8;
    std::atomic<bool> running{true};
    std::atomic<int> unclean{0}, refused{0};
    std::mutex acknowledged_mutex;
    std::set<std::string> acknowledged; // request ids of appends that succeeded
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t)
        writers.emplace_back([&, t] {
            for (int i = 0; running; ++i) {
                const std::string tag = std::to_string(t) + "-" + std::to_string(i);
                auto r = store.append(make_exchange("user-" + std::to_string(t), tag));
                if (r) {
                    const std::lock_guard lock(acknowledged_mutex);
                    acknowledged.insert("req-" + tag);
                } else {
                    ++refused;
                    if (r.error().kind != chatkit::error_kind::unavailable || mentions_password(r.error().message)) ++unclean;
                    std::this_thread::sleep_for(std::chrono::milliseconds{5});
                }
            }
        });
    std::this_thread::sleep_for(std::chrono::milliseconds{300});
    server.stop(true); // immediate: a crash, recovered from the WAL at start
    std::this_thread::sleep_for(std::chrono::milliseconds{300});
    server.start();
    // Back: every writer gets through again.
    const std::size_t before_restart_done = [&] {
        const std::lock_guard lock(acknowledged_mutex);
        return acknowledged.size();
    }();
    std::this_thread::sleep_for(std::chrono::milliseconds{500});
    running = false;
    for (auto& w : writers) w.join();
    CHECK(unclean == 0);
    CHECK(refused > 0); // the restart was seen
    CHECK(acknowledged.size() > before_restart_done);
    CHECK(store.append(make_exchange("alice", "last")).has_value());

    // Every acknowledged exchange is stored, whole.
    std::set<std::string> stored;
    for (int t = 0; t < threads; ++t) {
        auto all = chatkit_test::read_all(store, "user-" + std::to_string(t), 1000);
        for (std::size_t i = 0; i + 1 < all.size(); i += 2) {
            CHECK(all[i].request_id == all[i + 1].request_id);
            stored.insert(all[i].request_id);
        }
        CHECK(all.size() % 2 == 0);
    }
    std::size_t lost = 0;
    for (const auto& id : acknowledged) lost += stored.contains(id) ? 0 : 1;
    CHECK(lost == 0);
}

TEST_CASE("postgres_store: the URL's password appears in no error") {
    auto& server = shared_server();
    SECTION("nothing listening") {
        postgres_server down; // a port that was PostgreSQL's, now closed
        const std::string url = down.url();
        down.stop();
        try {
            postgres_store store(options_for(url));
            FAIL("constructed a store with no server");
        } catch (const std::runtime_error& e) {
            CHECK_FALSE(mentions_password(e.what()));
            CHECK_THAT(e.what(), Catch::Contains("127.0.0.1"));
        }
    }
    SECTION("a wrong password") {
        const std::string wrong = "wrong-secret-4711";
        std::string url = server.url();
        url.replace(url.find(postgres_server::password), std::string{postgres_server::password}.size(), wrong);
        try {
            postgres_store store(options_for(url));
            FAIL("constructed a store with a wrong password");
        } catch (const std::runtime_error& e) {
            CHECK(std::string{e.what()}.find(wrong) == std::string::npos);
            CHECK_THAT(e.what(), Catch::Contains("password authentication failed"));
        }
    }
    SECTION("a URL libpq cannot read") {
        const std::string url = "postgresql://postgres:" + std::string{postgres_server::password} + "@127.0.0.1:notaport/x?bogus=1";
        try {
            postgres_store store(options_for(url));
            FAIL("constructed a store from a bad URL");
        } catch (const std::exception& e) {
            CHECK_FALSE(mentions_password(e.what()));
        }
    }
}

TEST_CASE("postgres_store: a URL without connect_timeout gets the configured one, and postgres:// works too") {
    auto& server = shared_server();
    std::string url = server.url(server.create_database());
    url.replace(0, std::string{"postgresql://"}.size(), "postgres://");
    postgres_store store(options_for(url + "?application_name=chatkit-test"));
    REQUIRE(store.append(make_exchange("alice", "1")).has_value());
    CHECK(history_size(store, "alice") == 2);
    // A URL's own connect_timeout is accepted (libpq keeps the last value: the URL's).
    postgres_store explicit_timeout(options_for(url + "?connect_timeout=3"));
    CHECK(explicit_timeout.health().ok);
}

TEST_CASE("postgres_store: while another session holds the write lock, appends time out as unavailable, then go on") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    auto o = options_for(server.url(db));
    o.connection.statement_timeout = std::chrono::milliseconds{200};
    postgres_store store(std::move(o));
    REQUIRE(store.append(make_exchange("alice", "before")).has_value());

    // Another replica's writer, stuck inside its transaction: it holds the lock every writer takes.
    const std::unique_ptr<PGconn, void (*)(PGconn*)> other{PQconnectdb(server.url(db).c_str()), PQfinish};
    REQUIRE(PQstatus(other.get()) == CONNECTION_OK);
    const auto run = [&](const std::string& sql) {
        const std::unique_ptr<PGresult, void (*)(PGresult*)> r{PQexec(other.get(), sql.c_str()), PQclear};
        REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    };
    run("SELECT pg_advisory_lock(" + std::to_string(chatkit::postgres_store_detail::write_lock) + ")");

    auto secret = make_exchange("alice", "locked");
    secret.messages[0].content = "my secret question";
    auto failed = store.append(secret);
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().kind == chatkit::error_kind::unavailable);
    CHECK_THAT(failed.error().message, Catch::Contains("statement timeout"));
    CHECK(failed.error().message.find("secret") == std::string::npos);

    // Concurrent callers in a failing batch are all answered, none left waiting.
    std::vector<int> outcomes(4, -1); // 0: unavailable, as expected
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < outcomes.size(); ++i)
        threads.emplace_back([&, i] {
            auto r = store.append(make_exchange("alice", "locked-" + std::to_string(i)));
            outcomes[i] = r.has_value() ? 1 : r.error().kind == chatkit::error_kind::unavailable ? 0 : 2;
        });
    for (auto& t : threads) t.join();
    CHECK(outcomes == std::vector<int>(4, 0));
    CHECK(history_size(store, "alice") == 2); // reads take no lock
    CHECK(store.health().ok);

    run("SELECT pg_advisory_unlock(" + std::to_string(chatkit::postgres_store_detail::write_lock) + ")");
    REQUIRE(store.append(make_exchange("alice", "after")).has_value());
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 4); // the failed exchanges were rolled back, not half-written
    CHECK(page->messages[0].content == "question before");
    CHECK(page->messages[2].content == "question after");
}
