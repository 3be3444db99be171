#include "chatkit/sqlite_store.hpp"

#include "chatkit/random_id.hpp"
#include <chatkit/testing/conversation_store.hpp>
#include <chatkit/testing/store.hpp>

#include "../support/temp_db.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <list>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using chatkit::sqlite_options;
using chatkit::sqlite_store;
using chatkit::testing::make_exchange;
namespace fs = std::filesystem;

using test_support::temp_db;

// A plain connection to the same file, to look at it the way another process would.
struct raw_db {
    explicit raw_db(const std::string& path) {
        REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) == SQLITE_OK);
    }
    raw_db(const raw_db&) = delete;
    raw_db& operator=(const raw_db&) = delete;
    ~raw_db() { sqlite3_close_v2(db); }

    std::string text(const char* sql) const {
        sqlite3_stmt* s = nullptr;
        REQUIRE(sqlite3_prepare_v2(db, sql, -1, &s, nullptr) == SQLITE_OK);
        const std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> owned(s, sqlite3_finalize);
        REQUIRE(sqlite3_step(s) == SQLITE_ROW);
        return reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    }
    long number(const char* sql) const { return std::stol(text(sql)); }
    void exec(const char* sql) const { REQUIRE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK); }

    sqlite3* db = nullptr;
};

std::size_t history_size(sqlite_store& store, const std::string& user_id) {
    auto page = store.history({user_id, 1000, {}});
    REQUIRE(page.has_value());
    return page->messages.size();
}

} // namespace

TEST_CASE("sqlite_store passes the store conformance checks") {
    std::list<temp_db> files; // outlives every store made below
    chatkit::testing::check_store_conformance<sqlite_store>(
        [&] { return sqlite_store(sqlite_options{.path = files.emplace_back().path()}); });
}

TEST_CASE("sqlite_store passes the conversation store conformance checks") {
    std::list<temp_db> files;
    chatkit::testing::check_conversation_store_conformance<sqlite_store>(
        [&] { return sqlite_store(sqlite_options{.path = files.emplace_back().path(), .durable = false}); });
}

TEST_CASE("sqlite_store: a file of the schema before conversations is migrated with its history, keys and usage intact") {
    temp_db file;
    {
        raw_db old(file.path());
        for (std::size_t v = 0; v < 3; ++v) old.exec(std::string(chatkit::sqlite_detail::migrations[v]).c_str());
        old.exec("PRAGMA user_version = 3");
        old.exec("INSERT INTO messages (user_id, role, content, model, created_at, request_id) "
                 "VALUES ('alice', 'user', 'kept question', 'm', 1, 'r1'), ('alice', 'assistant', 'kept answer', 'm', 1, 'r1')");
        old.exec("INSERT INTO teams (id, created_at) VALUES ('t1', 1)");
        old.exec("INSERT INTO usage (time, request_id, team_id, key_id, model, provider, status, prompt_tokens, completion_tokens, "
                 "cached_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, cached, streamed, cancelled, estimated) "
                 "VALUES (1, 'r1', 't1', 'k1', 'm', 'echo', 200, 1, 2, 0, 0, NULL, 1, 1, 0, 0, 0, 0)");
    }
    sqlite_store store({.path = file.path()});
    CHECK(raw_db(file.path()).number("PRAGMA user_version") == static_cast<long>(std::size(chatkit::sqlite_detail::migrations)));
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 2);
    CHECK(page->messages[0].content == "kept question");
    CHECK(page->messages[1].content == "kept answer");
    CHECK(raw_db(file.path()).number("SELECT COUNT(*) FROM teams") == 1);
    CHECK(raw_db(file.path()).number("SELECT COUNT(*) FROM usage") == 1);
    auto c = chatkit::testing::make_conversation("", "alice", 5);
    REQUIRE(store.create_conversation(c).has_value());
    REQUIRE(store.append_to_conversation(chatkit::testing::make_turn(c, "1", 6)).has_value());
    CHECK(history_size(store, "alice") == 2); // a conversation's turns are not the flat history's
}

TEST_CASE("sqlite_store: conversations, messages and feedback survive closing and reopening the file") {
    temp_db file;
    auto c = chatkit::testing::make_conversation("team:a", "ada", 1, "Kept");
    const auto turn = chatkit::testing::make_turn(c, "1", 2);
    {
        sqlite_store store({.path = file.path()});
        REQUIRE(store.create_conversation(c).has_value());
        REQUIRE(store.append_to_conversation(turn).has_value());
        REQUIRE(store.add_feedback({c.owner, {chatkit::conversations_api::make_uuid(), c.id, turn.messages[1].id, "thumbs_up", 5, {}, 3}})
                    .has_value());
    }
    sqlite_store reopened({.path = file.path()});
    auto found = reopened.find_conversation({c.owner, c.id});
    REQUIRE(found.has_value());
    CHECK(found->title == std::optional<std::string>{"Kept"});
    CHECK(found->totals.message_count == 2);
    CHECK(chatkit::testing::all_messages(reopened, {c.owner, c.id}, 10).size() == 2);
    auto feedback = reopened.conversation_feedback({c.owner, c.id});
    REQUIRE(feedback.has_value());
    CHECK(feedback->size() == 1);
}

TEST_CASE("sqlite_store: history survives closing and reopening the file") {
    temp_db file;
    {
        sqlite_store store({.path = file.path(), .durable = false});
        REQUIRE(store.append(make_exchange("alice", "1")).has_value());
        REQUIRE(store.append(make_exchange("alice", "2")).has_value());
    }
    sqlite_store reopened({.path = file.path()});
    auto page = reopened.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 4);
    CHECK(page->messages.front().content == "question 1");
    CHECK(page->messages.back().content == "answer 2");
    CHECK(page->messages.back().request_id == "req-2");
}

TEST_CASE("sqlite_store: append has committed its rows when it returns") {
    temp_db file;
    sqlite_store store({.path = file.path()});
    REQUIRE(store.append(make_exchange("alice", "1")).has_value());
    // Another connection sees only committed rows.
    CHECK(raw_db(file.path()).number("SELECT count(*) FROM messages WHERE user_id = 'alice'") == 2);
}

TEST_CASE("sqlite_store: under concurrent appends, each caller's rows are readable as soon as append returns") {
    temp_db file;
    sqlite_store store({.path = file.path()});
    constexpr int threads = 8, per_thread = 50;
    std::atomic<int> failures{0}, unseen{0}; // Catch2 assertions are not thread-safe: count
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t)
        writers.emplace_back([&, t] {
            const std::string user = "user-" + std::to_string(t);
            for (int i = 0; i < per_thread; ++i) {
                const std::string tag = std::to_string(i);
                if (!store.append(make_exchange(user, tag))) {
                    ++failures;
                    continue;
                }
                auto page = store.history({user, 1, {}});
                if (!page || page->messages.size() != 1 || page->messages[0].content != "answer " + tag) ++unseen;
            }
        });
    for (auto& w : writers) w.join();
    CHECK(failures == 0);
    CHECK(unseen == 0);
    CHECK(raw_db(file.path()).number("SELECT count(*) FROM messages") == threads * per_thread * 2);
}

TEST_CASE("sqlite_store: on_commit hears of every group commit, and its batches add up to the appends") {
    temp_db file;
    std::atomic<long> commits{0}, appends{0}, empty_batches{0}, negative_times{0};
    sqlite_options o{.path = file.path(), .durable = false};
    o.on_commit = [&](std::size_t batch, std::chrono::duration<double> took) {
        ++commits;
        appends += static_cast<long>(batch);
        if (batch == 0) ++empty_batches;
        if (took.count() < 0) ++negative_times;
    };
    sqlite_store store(std::move(o));
    REQUIRE(store.append(make_exchange("alice", "alone")).has_value());
    CHECK(commits == 1);
    CHECK(appends == 1);
    CHECK(store.append(chatkit::exchange{}).has_value()); // nothing to write: no commit
    CHECK(commits == 1);

    constexpr int threads = 8, per_thread = 25;
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
    CHECK(commits >= 2);
    CHECK(commits <= appends);
    CHECK(empty_batches == 0);
    CHECK(negative_times == 0);
}

TEST_CASE("sqlite_store: a commit that failed is not reported to on_commit") {
    temp_db file;
    std::atomic<int> commits{0};
    sqlite_options o{.path = file.path(), .busy_timeout = std::chrono::milliseconds{20}};
    o.on_commit = [&](std::size_t, std::chrono::duration<double>) { ++commits; };
    sqlite_store store(std::move(o));
    raw_db other(file.path());
    other.exec("BEGIN IMMEDIATE");
    REQUIRE_FALSE(store.append(make_exchange("alice", "locked")).has_value());
    CHECK(commits == 0);
    other.exec("COMMIT");
    REQUIRE(store.append(make_exchange("alice", "after")).has_value());
    CHECK(commits == 1);
}

TEST_CASE("sqlite_store: open sets the schema version, and reopening keeps it and the data") {
    temp_db file;
    long version = 0;
    {
        sqlite_store store({.path = file.path()});
        REQUIRE(store.append(make_exchange("alice", "1")).has_value());
        version = raw_db(file.path()).number("PRAGMA user_version");
        CHECK(version >= 1);
    }
    for (int reopen = 0; reopen < 2; ++reopen) {
        sqlite_store store({.path = file.path()}); // re-running a migration would throw or drop rows
        CHECK(raw_db(file.path()).number("PRAGMA user_version") == version);
        CHECK(history_size(store, "alice") == 2);
    }
    CHECK(raw_db(file.path()).text("PRAGMA journal_mode") == "wal");
}

TEST_CASE("sqlite_store: a file from a newer schema version is refused, not modified") {
    temp_db file;
    { sqlite_store store({.path = file.path()}); }
    raw_db(file.path()).exec("PRAGMA user_version = 9999");
    CHECK_THROWS_WITH(sqlite_store({.path = file.path()}), Catch::Contains(file.path()) && Catch::Contains("9999"));
    CHECK(raw_db(file.path()).number("PRAGMA user_version") == 9999);
}

TEST_CASE("sqlite_store: a path that cannot be created throws at construction, naming the path") {
    const std::string path = (fs::temp_directory_path() / ("no-such-dir-" + chatkit::random_id({}, 16)) / "chat.db").string();
    CHECK_THROWS_AS(sqlite_store({.path = path}), std::runtime_error);
    CHECK_THROWS_WITH(sqlite_store({.path = path}), Catch::Contains(path));
    CHECK_FALSE(fs::exists(fs::path(path).parent_path()));
}

TEST_CASE("sqlite_store: in-memory databases are refused") {
    CHECK_THROWS_AS(sqlite_store({.path = ":memory:"}), std::runtime_error);
    CHECK_THROWS_AS(sqlite_store({.path = "file::memory:"}), std::runtime_error);
    CHECK_THROWS_AS(sqlite_store({.path = ""}), std::runtime_error);
}

TEST_CASE("sqlite_store: cursors are positive decimal message ids, anything else is an invalid request") {
    temp_db file;
    sqlite_store store({.path = file.path()});
    for (const char* tag : {"1", "2", "3"}) REQUIRE(store.append(make_exchange("alice", tag)).has_value());

    auto page = store.history({"alice", 2, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->next_cursor.has_value());
    CHECK(*page->next_cursor == page->messages.front().id);
    CHECK(std::stoll(page->messages.back().id) == std::stoll(page->messages.front().id) + 1);

    auto huge = store.history({"alice", 10, "9223372036854775807"}); // above every id: the newest page
    REQUIRE(huge.has_value());
    CHECK(huge->messages.size() == 6);

    for (const char* bad : {"0", "-1", "+1", " 1", "1 ", "1x", "0x10", "1.5", "99999999999999999999", "abc"}) {
        INFO("before = '" << bad << "'");
        auto r = store.history({"alice", 10, bad});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == chatkit::error_kind::invalid_request);
        CHECK(r.error().message == "'before' is not a valid cursor");
        CHECK(r.error().code == "invalid_cursor");
        CHECK(r.error().param == "before");
    }
}

TEST_CASE("sqlite_store: while another process holds the write lock, appends fail as unavailable and reads go on") {
    temp_db file;
    sqlite_store store({.path = file.path(), .busy_timeout = std::chrono::milliseconds{20}});
    REQUIRE(store.append(make_exchange("alice", "before")).has_value());

    raw_db other(file.path());
    other.exec("BEGIN IMMEDIATE");
    auto secret = make_exchange("alice", "locked");
    secret.messages[0].content = "my secret question";
    auto failed = store.append(secret);
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().kind == chatkit::error_kind::unavailable);
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

    CHECK(history_size(store, "alice") == 2); // WAL: the read does not wait for the writer
    CHECK(store.health().ok);

    other.exec("COMMIT");
    REQUIRE(store.append(make_exchange("alice", "after")).has_value());
    auto page = store.history({"alice", 10, {}});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 4); // the failed exchanges were rolled back, not half-written
    CHECK(page->messages[0].content == "question before");
    CHECK(page->messages[2].content == "question after");
}

TEST_CASE("sqlite_store: a moved-to store keeps working") {
    temp_db file;
    sqlite_store first({.path = file.path()});
    REQUIRE(first.append(make_exchange("alice", "1")).has_value());
    sqlite_store second = std::move(first);
    REQUIRE(second.append(make_exchange("alice", "2")).has_value());
    temp_db other_file;
    sqlite_store third({.path = other_file.path()});
    third = std::move(second);
    CHECK(history_size(third, "alice") == 4);
    CHECK(third.health().ok);
}
