#include "chatkit/postgres_store.hpp"

#include <chatkit/testing/conversation_store.hpp>
#include <chatkit/testing/store.hpp>

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
using chatkit::testing::make_exchange;
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
    chatkit::testing::check_store_conformance<postgres_store>(
        [&] { return postgres_store(options_for(server.url(server.create_database()))); });
}

TEST_CASE("postgres_store passes the conversation store conformance checks") {
    auto& server = shared_server();
    chatkit::testing::check_conversation_store_conformance<postgres_store>(
        [&] { return postgres_store(options_for(server.url(server.create_database()))); });
}

TEST_CASE("postgres_store: a database an older chatkit made keeps its history through the later migrations") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    const long latest = static_cast<long>(std::size(chatkit::postgres_store_detail::migrations));
    {
        // The schema as the release before conversations (and keys, and usage) left it, with history in it.
        chatkit::postgres_connection_pool pool{options_for(server.url(db)).connection};
        chatkit::postgres_store_detail::migrate(pool, 1);
    }
    CHECK(server.number("SELECT max(version) FROM chatkit_schema_version", db) == 1);
    CHECK(server.query("SELECT to_regclass('chatkit_conversations')", db).empty());
    server.query("INSERT INTO chatkit_messages (user_id, role, content, model, created_at, request_id) VALUES "
                 "('alice'::bytea, 'user', 'question old'::bytea, 'm'::bytea, 1, 'req-old'::bytea), "
                 "('alice'::bytea, 'assistant', 'answer old'::bytea, 'm'::bytea, 1, 'req-old'::bytea)",
                 db);

    postgres_store store(options_for(server.url(db)));
    CHECK(server.number("SELECT max(version) FROM chatkit_schema_version", db) == latest);
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 2);
    CHECK(page->messages[0].content == "question old");
    CHECK(page->messages[1].content == "answer old");
    // New history continues after the old ids, and conversations work beside it.
    REQUIRE(store.append(make_exchange("alice", "new")).has_value());
    CHECK(history_size(store, "alice") == 4);
    auto c = chatkit::testing::make_conversation("", "alice", 1'700'000'000'000);
    REQUIRE(store.create_conversation(c).has_value());
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 1'700'000'000'001)).has_value());
    CHECK(server.number("SELECT count(*) FROM chatkit_conversation_messages", db) == 2);
    CHECK(history_size(store, "alice") == 4); // a conversation's turns are not the user's history
}

TEST_CASE("postgres_store: deleting a conversation cascades to its rows, and to no other's") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    postgres_store store(options_for(server.url(db)));
    auto doomed = chatkit::testing::make_conversation("team:a", "ada", 1);
    auto kept = chatkit::testing::make_conversation("team:a", "ada", 2);
    for (const auto* c : {&doomed, &kept}) {
        REQUIRE(store.create_conversation(*c).has_value());
        const auto turn = chatkit::testing::make_turn(*c, "1", 3);
        REQUIRE(store.append_to_conversation(turn).has_value());
        REQUIRE(store.add_feedback({c->owner, {chatkit::conversations_api::make_uuid(), c->id, turn.messages[1].id, "flag", {}, {}, 4}})
                    .has_value());
    }
    REQUIRE(store.delete_conversation({"team:a", doomed.id}).has_value());
    const auto rows = [&](const std::string& table, const std::string& id) {
        return server.number("SELECT count(*) FROM " + table + " WHERE conversation_id = '" + id + "'", db);
    };
    CHECK(rows("chatkit_conversation_messages", doomed.id) == 0);
    CHECK(rows("chatkit_feedback", doomed.id) == 0);
    CHECK(rows("chatkit_conversation_messages", kept.id) == 2);
    CHECK(rows("chatkit_feedback", kept.id) == 1);
}

TEST_CASE("postgres_store: conversation values PostgreSQL's text cannot hold are refused or match nothing, never a 503") {
    auto& server = shared_server();
    postgres_store store(options_for(server.url(server.create_database())));
    const std::string nul(1, '\0'), bad_utf8 = "\xC3\x28";
    auto c = chatkit::testing::make_conversation("", "ada", 1);
    for (const auto& title : {nul, bad_utf8}) {
        auto titled = c;
        titled.title = "t" + title;
        auto r = store.create_conversation(titled);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == chatkit::error_kind::invalid_request);
        CHECK(r.error().param == "title");
    }
    auto nul_metadata = c;
    nul_metadata.metadata = {{"k", "a" + nul}};
    auto refused = store.create_conversation(nul_metadata);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().param == "metadata");
    c.metadata = {{"k", "a backslash and u0000: \\u0000"}, {"emoji", "\xF0\x9F\x98\x80"}}; // no NUL: stored as is
    REQUIRE(store.create_conversation(c).has_value());
    auto found = store.find_conversation({"", c.id});
    REQUIRE(found.has_value());
    CHECK(found->metadata == c.metadata);

    // A message's content is bytes: any round-trips.
    auto turn = chatkit::testing::make_turn(c, "1", 2);
    turn.messages[1].content = "half a char \xE2\x82 and a NUL" + nul;
    REQUIRE(store.append_to_conversation(turn).has_value());
    auto messages = store.conversation_messages({{"", c.id}, 10, {}, false});
    REQUIRE(messages.has_value());
    REQUIRE(messages->messages.size() == 2);
    CHECK(messages->messages[1].content == turn.messages[1].content);

    auto listed = store.conversations({nul, "ada", 10, {}});
    REQUIRE(listed.has_value());
    CHECK(listed->conversations.empty());
    auto by_user = store.conversations({"", bad_utf8, 10, {}});
    REQUIRE(by_user.has_value());
    CHECK(by_user->conversations.empty());
    for (const auto& id : {std::string{"not-a-uuid"}, c.id + nul}) {
        auto r = store.find_conversation({"", id});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == chatkit::error_kind::not_found);
    }
    auto wrong_owner = store.find_conversation({bad_utf8, c.id});
    REQUIRE_FALSE(wrong_owner.has_value());
    CHECK(wrong_owner.error().kind == chatkit::error_kind::not_found);
    auto feedback = store.add_feedback({"", {chatkit::conversations_api::make_uuid(), c.id, "not-a-uuid", "flag", {}, {}, 3}});
    REQUIRE_FALSE(feedback.has_value());
    CHECK(feedback.error().code == "message_not_found");
    for (const char* cursor : {"1", "_1", "1_", "1_0", "x_1", "1_1_1", "+1_1"}) {
        INFO(cursor);
        auto r = store.conversations({"", "ada", 10, cursor});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == "invalid_cursor");
    }
    CHECK(store.conversations({"", "ada", 10, "-5_1"}).has_value()); // a well-formed cursor, before any row
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
    {
        auto c = chatkit::testing::make_conversation("", "alice", 1);
        auto expect_unavailable = [](const auto& r) {
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().kind == chatkit::error_kind::unavailable);
            CHECK(r.error().code == "store_unavailable");
            CHECK_FALSE(mentions_password(r.error().message));
        };
        expect_unavailable(store.create_conversation(c));
        expect_unavailable(store.find_conversation({"", c.id}));
        expect_unavailable(store.conversations({"", "alice", 10, {}}));
        expect_unavailable(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 2)));
        expect_unavailable(store.conversation_messages({{"", c.id}, 10, {}, true}));
        expect_unavailable(store.conversation_feedback({"", c.id}));
    }

    server.start();
    REQUIRE(store.append(make_exchange("alice", "after")).has_value());
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 4);
    CHECK(page->messages[0].content == "question before");
    CHECK(page->messages[2].content == "question after");
    CHECK(store.health().ok);
    auto c = chatkit::testing::make_conversation("", "alice", 1);
    REQUIRE(store.create_conversation(c).has_value());
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 2)).has_value());
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
        auto all = chatkit::testing::read_all(store, "user-" + std::to_string(t), 1000);
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

TEST_CASE("postgres_store: while another session locks a conversation, its writes time out as unavailable and write nothing") {
    auto& server = shared_server();
    const std::string db = server.create_database();
    auto o = options_for(server.url(db));
    o.connection.statement_timeout = std::chrono::milliseconds{200};
    postgres_store store(std::move(o));
    auto c = chatkit::testing::make_conversation("", "ada", 1);
    auto other = chatkit::testing::make_conversation("", "ada", 2);
    REQUIRE(store.create_conversation(c).has_value());
    REQUIRE(store.create_conversation(other).has_value());
    const auto first = chatkit::testing::make_turn(c, "1", 3);
    REQUIRE(store.append_to_conversation(first).has_value());

    // Another session inside its transaction, holding the conversation's row.
    const std::unique_ptr<PGconn, void (*)(PGconn*)> locker{PQconnectdb(server.url(db).c_str()), PQfinish};
    REQUIRE(PQstatus(locker.get()) == CONNECTION_OK);
    const auto run = [&](const std::string& sql) {
        const std::unique_ptr<PGresult, void (*)(PGresult*)> r{PQexec(locker.get(), sql.c_str()), PQclear};
        const auto status = PQresultStatus(r.get());
        REQUIRE((status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK));
    };
    run("BEGIN");
    run("SELECT 1 FROM chatkit_conversations WHERE id = '" + c.id + "' FOR UPDATE");

    auto secret = chatkit::testing::make_turn(c, "locked", 4);
    secret.messages[0].content = "my secret question";
    for (const auto& r :
         {store.append_to_conversation(secret),
          store.add_feedback({"", {chatkit::conversations_api::make_uuid(), c.id, first.messages[1].id, "flag", {}, {}, 5}}),
          store.delete_conversation({"", c.id})}) {
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == chatkit::error_kind::unavailable);
        CHECK_THAT(r.error().message, Catch::Contains("statement timeout"));
        CHECK(r.error().message.find("secret") == std::string::npos);
    }
    // Reads take no row lock, and other conversations do not wait.
    auto found = store.find_conversation({"", c.id});
    REQUIRE(found.has_value());
    CHECK(found->totals.message_count == 2);
    CHECK(store.append_to_conversation(chatkit::testing::make_turn(other, "1", 6)).has_value());

    run("ROLLBACK");
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(c, "2", 7)).has_value());
    auto messages = store.conversation_messages({{"", c.id}, 10, {}, false});
    REQUIRE(messages.has_value());
    REQUIRE(messages->messages.size() == 4); // the timed-out append left nothing behind
    CHECK(messages->messages[2].content == "question 2");
    auto feedback = store.conversation_feedback({"", c.id});
    REQUIRE(feedback.has_value());
    CHECK(feedback->empty());
}

TEST_CASE("postgres_connection_pool: a server error's message quotes no row values") {
    auto& server = shared_server();
    chatkit::postgres_connection_pool pool{options_for(server.url(server.create_database())).connection};
    auto lease = pool.acquire();
    REQUIRE(lease.has_value());
    REQUIRE(lease->exec("CREATE TEMP TABLE t (x text CHECK (x <> 'secret-row-value'))").has_value());
    // PostgreSQL's DETAIL would say "Failing row contains (secret-row-value)".
    auto r = lease->exec("INSERT INTO t VALUES ('secret-row-value')");
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message, Catch::Contains("violates check constraint"));
    CHECK(r.error().message.find("secret-row-value") == std::string::npos);
}
