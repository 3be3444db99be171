// The behaviour every chatkit::store model must have (chatkit/store.hpp), as Catch2 sections. A
// store's test file calls check_store_conformance<its_store>(make) from a TEST_CASE, where make()
// returns a new, empty store; each section gets its own. Both forms are checked: a blocking store
// directly, an asynchronous one through chatkit::sync_wait.
#pragma once

#include <chatkit/store.hpp>
#include <chatkit/task.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit::testing {

// append() and history() of either form, awaited when the store is asynchronous.
template <class Store>
result<void> store_append(Store& store, const exchange& e) {
    if constexpr (blocking_store<Store>) return store.append(e);
    else return sync_wait(store.append(e));
}
template <class Store>
result<history_page> store_history(Store& store, const history_query& q) {
    if constexpr (blocking_store<Store>) return store.history(q);
    else return sync_wait(store.history(q));
}

// An exchange whose every field carries `tag`, so a test can tell exchanges apart.
inline chatkit::exchange make_exchange(std::string user_id, const std::string& tag, chatkit::unix_ms created_at = 1'700'000'000'000) {
    return {std::move(user_id),
            "req-" + tag,
            "model-" + tag,
            {{chatkit::role::user, "question " + tag}, {chatkit::role::assistant, "answer " + tag}},
            created_at};
}

// Every message of a user, oldest first, read page by page; fails the test on an error.
template <class Store>
std::vector<chatkit::stored_message> read_all(Store& store, const std::string& user_id, std::size_t limit, std::size_t* pages = nullptr) {
    std::vector<chatkit::stored_message> all;
    chatkit::history_query query{user_id, limit, {}};
    for (std::size_t page_count = 1;; ++page_count) {
        auto page = store_history(store, query);
        REQUIRE(page.has_value());
        REQUIRE(page->messages.size() <= limit);
        all.insert(all.begin(), page->messages.begin(), page->messages.end());
        if (!page->next_cursor) {
            if (pages) *pages = page_count;
            return all;
        }
        REQUIRE(page->messages.size() == limit); // a cursor only after a full page
        query.before = *page->next_cursor;
    }
}

template <class Store, class MakeStore>
void check_store_conformance(MakeStore make) {
    static_assert(chatkit::store<Store>, "check_store_conformance: Store is not a chatkit::store (see chatkit/store.hpp)");
    using chatkit::role;

    SECTION("append then history returns the exchange's messages, oldest first, with every field") {
        Store store = make();
        REQUIRE(store_append(store, make_exchange("alice", "1", 1'700'000'000'123)).has_value());
        auto page = store_history(store, {"alice", 10, {}});
        REQUIRE(page.has_value());
        REQUIRE(page->messages.size() == 2);
        const auto& q = page->messages[0];
        const auto& a = page->messages[1];
        CHECK(q.role == role::user);
        CHECK(q.content == "question 1");
        CHECK(a.role == role::assistant);
        CHECK(a.content == "answer 1");
        for (const auto& m : page->messages) {
            CHECK(m.model == "model-1");
            CHECK(m.request_id == "req-1");
            CHECK(m.created_at == 1'700'000'000'123);
            CHECK_FALSE(m.id.empty());
        }
        CHECK(q.id != a.id);
        CHECK_FALSE(page->next_cursor.has_value());
    }

    SECTION("later exchanges come after earlier ones") {
        Store store = make();
        for (const char* tag : {"1", "2", "3"}) REQUIRE(store_append(store, make_exchange("alice", tag)).has_value());
        auto page = store_history(store, {"alice", 10, {}});
        REQUIRE(page.has_value());
        std::vector<std::string> contents;
        for (const auto& m : page->messages) contents.push_back(m.content);
        CHECK(contents == std::vector<std::string>{"question 1", "answer 1", "question 2", "answer 2", "question 3", "answer 3"});
    }

    SECTION("content round-trips byte for byte, quotes and all") {
        Store store = make();
        const std::string tricky = std::string("it's \"quoted\"; DROP TABLE messages; --\n\xF0\x9F\x98\x80 ") + std::string(1, '\0') +
                                   "after a NUL";
        chatkit::exchange e = make_exchange("o'brien", "x");
        e.messages = {{role::system, tricky}, {role::user, ""}, {role::assistant, std::string(100'000, 'z')}};
        REQUIRE(store_append(store, e).has_value());
        auto page = store_history(store, {"o'brien", 10, {}});
        REQUIRE(page.has_value());
        REQUIRE(page->messages.size() == 3);
        CHECK(page->messages[0].role == role::system);
        CHECK(page->messages[0].content == tricky);
        CHECK(page->messages[1].content.empty());
        CHECK(page->messages[2].content == std::string(100'000, 'z'));
    }

    SECTION("a user sees only their own history") {
        Store store = make();
        REQUIRE(store_append(store, make_exchange("alice", "a")).has_value());
        REQUIRE(store_append(store, make_exchange("bob", "b")).has_value());
        REQUIRE(store_append(store, make_exchange("alice", "c")).has_value());
        auto alice = store_history(store, {"alice", 10, {}});
        auto bob = store_history(store, {"bob", 10, {}});
        auto carol = store_history(store, {"carol", 10, {}});
        REQUIRE(alice.has_value());
        REQUIRE(bob.has_value());
        REQUIRE(carol.has_value());
        REQUIRE(alice->messages.size() == 4);
        CHECK(alice->messages[0].content == "question a");
        CHECK(alice->messages[3].content == "answer c");
        REQUIRE(bob->messages.size() == 2);
        CHECK(bob->messages[0].content == "question b");
        CHECK(carol->messages.empty());
        CHECK_FALSE(carol->next_cursor.has_value());
    }

    SECTION("limit returns the newest messages and a cursor when older ones remain") {
        Store store = make();
        for (const char* tag : {"1", "2", "3"}) REQUIRE(store_append(store, make_exchange("alice", tag)).has_value());
        auto page = store_history(store, {"alice", 3, {}});
        REQUIRE(page.has_value());
        REQUIRE(page->messages.size() == 3);
        CHECK(page->messages[0].content == "answer 2");
        CHECK(page->messages[2].content == "answer 3");
        CHECK(page->next_cursor.has_value());

        auto exact = store_history(store, {"alice", 6, {}});
        REQUIRE(exact.has_value());
        CHECK(exact->messages.size() == 6);
        CHECK_FALSE(exact->next_cursor.has_value()); // all fit exactly: nothing older remains
    }

    SECTION("paging back with next_cursor visits every message once, in order") {
        Store store = make();
        for (int i = 0; i < 7; ++i) REQUIRE(store_append(store, make_exchange("alice", std::to_string(i))).has_value());
        REQUIRE(store_append(store, make_exchange("bob", "noise")).has_value());
        const auto everything = read_all(store, "alice", 100);
        REQUIRE(everything.size() == 14);
        for (std::size_t limit : {3, 4, 7}) {
            INFO("limit " << limit);
            std::size_t pages = 0;
            const auto paged = read_all(store, "alice", limit, &pages);
            CHECK(pages == (14 + limit - 1) / limit);
            REQUIRE(paged.size() == everything.size());
            std::set<std::string> ids;
            for (std::size_t i = 0; i < paged.size(); ++i) {
                CHECK(paged[i].id == everything[i].id);
                CHECK(paged[i].content == everything[i].content);
                ids.insert(paged[i].id);
            }
            CHECK(ids.size() == paged.size());
        }
    }

    SECTION("a malformed cursor is an invalid request") {
        Store store = make();
        REQUIRE(store_append(store, make_exchange("alice", "1")).has_value());
        auto page = store_history(store, {"alice", 10, "not a cursor!"});
        REQUIRE_FALSE(page.has_value());
        CHECK(page.error().kind == chatkit::error_kind::invalid_request);
        CHECK(page.error().param == "before");
        CHECK(page.error().code == "invalid_cursor");
    }

    SECTION("concurrent appends all succeed and keep each exchange's messages together") {
        Store store = make();
        constexpr int threads = 8, per_thread = 200;
        std::atomic<int> failures{0}, read_failures{0};
        std::atomic<bool> writing{true};
        std::vector<std::thread> writers;
        for (int t = 0; t < threads; ++t)
            writers.emplace_back([&, t] {
                for (int i = 0; i < per_thread; ++i)
                    if (!store_append(store, make_exchange("shared", std::to_string(t) + "-" + std::to_string(i)))) ++failures;
            });
        // Reads during the writes must work too (Catch2 assertions are not thread-safe: count).
        std::thread reader([&] {
            while (writing)
                if (!store_history(store, {"shared", 20, {}})) ++read_failures;
        });
        for (auto& w : writers) w.join();
        writing = false;
        reader.join();
        CHECK(failures == 0);
        CHECK(read_failures == 0);

        const auto all = read_all(store, "shared", 100);
        REQUIRE(all.size() == std::size_t{threads} * per_thread * 2);
        std::vector<int> next(threads, 0); // each thread's appends are sequential, so in order
        for (std::size_t i = 0; i < all.size(); i += 2) {
            const auto tag = all[i].content.substr(std::string("question ").size());
            REQUIRE(all[i].role == role::user);
            REQUIRE(all[i + 1].role == role::assistant);
            REQUIRE(all[i + 1].content == "answer " + tag);
            const int t = std::stoi(tag.substr(0, tag.find('-')));
            const int n = std::stoi(tag.substr(tag.find('-') + 1));
            REQUIRE(n == next[t]);
            ++next[t];
        }
    }

    SECTION("health is ok") {
        Store store = make();
        CHECK(store.health().ok);
    }
}

} // namespace chatkit::testing
