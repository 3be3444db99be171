// The behaviour every chatkit::conversation_store model must have, as Catch2 sections. A store's
// test file calls check_conversation_store_conformance<its_store>(make) from a TEST_CASE, where
// make() returns a new, empty store; each section gets its own.
#pragma once

#include <chatkit/conversation_store.hpp>
#include <chatkit/conversations_api.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit::testing {

inline chatkit::conversation make_conversation(std::string owner, std::string user_id, chatkit::unix_ms at,
                                               std::optional<std::string> title = std::nullopt) {
    chatkit::conversation c;
    c.id = chatkit::conversations_api::make_uuid();
    c.owner = std::move(owner);
    c.user_id = std::move(user_id);
    c.title = std::move(title);
    c.metadata = {{"source", "web"}, {"n", 1}};
    c.created_at = c.updated_at = at;
    return c;
}

// A question and its priced answer, every field carrying `tag`.
inline chatkit::conversation_append make_turn(const chatkit::conversation& c, const std::string& tag, chatkit::unix_ms at) {
    using chatkit::role;
    chatkit::conversation_append a;
    a.conversation = {c.owner, c.id};
    a.at = at;
    chatkit::conversation_message q;
    q.id = chatkit::conversations_api::make_uuid();
    q.conversation_id = c.id;
    q.role = role::user;
    q.content = "question " + tag;
    q.request_id = "req-" + tag;
    q.created_at = at;
    chatkit::conversation_message r = q;
    r.id = chatkit::conversations_api::make_uuid();
    r.role = role::assistant;
    r.content = "answer " + tag;
    r.provider = "provider-" + tag;
    r.model = "model-" + tag;
    r.usage = chatkit::token_usage{10, 5};
    r.cost_usd = 0.25;
    r.latency_ms = 12.5;
    r.time_to_first_token_ms = 3.25;
    a.messages = {q, r};
    return a;
}

template <class Store>
std::vector<chatkit::conversation_message> all_messages(Store& store, const chatkit::conversation_ref& ref, std::size_t limit) {
    std::vector<chatkit::conversation_message> all;
    chatkit::conversation_message_query q{ref, limit, {}, false};
    for (;;) {
        auto page = store.conversation_messages(q);
        REQUIRE(page.has_value());
        REQUIRE(page->messages.size() <= limit);
        all.insert(all.end(), page->messages.begin(), page->messages.end());
        if (!page->next_cursor) return all;
        REQUIRE(page->messages.size() == limit);
        q.after = *page->next_cursor;
    }
}

template <class Store, class MakeStore>
void check_conversation_store_conformance(MakeStore make) {
    static_assert(chatkit::conversation_store<Store>);
    using chatkit::error_kind;
    using chatkit::role;
    constexpr chatkit::unix_ms t0 = 1'700'000'000'000;

    SECTION("a created conversation is found with every field and zero totals") {
        Store store = make();
        auto c = make_conversation("team:a", "ada", t0 + 123, "Support");
        REQUIRE(store.create_conversation(c).has_value());
        auto found = store.find_conversation({c.owner, c.id});
        REQUIRE(found.has_value());
        CHECK(found->id == c.id);
        CHECK(found->owner == c.owner);
        CHECK(found->user_id == "ada");
        CHECK(found->title == std::optional<std::string>{"Support"});
        CHECK(found->metadata == c.metadata);
        CHECK(found->created_at == t0 + 123);
        CHECK(found->updated_at == t0 + 123);
        CHECK(found->totals.message_count == 0);
        CHECK(found->totals.total_tokens == 0);
        CHECK(found->totals.total_cost_usd == 0);

        auto untitled = make_conversation("team:a", "ada", t0);
        untitled.metadata = nlohmann::json::object();
        REQUIRE(store.create_conversation(untitled).has_value());
        auto found_untitled = store.find_conversation({untitled.owner, untitled.id});
        REQUIRE(found_untitled.has_value());
        CHECK_FALSE(found_untitled->title.has_value());
        CHECK(found_untitled->metadata == nlohmann::json::object());
    }

    SECTION("another owner's conversation does not exist for every member") {
        Store store = make();
        auto c = make_conversation("team:a", "ada", t0);
        REQUIRE(store.create_conversation(c).has_value());
        REQUIRE(store.append_to_conversation(make_turn(c, "1", t0 + 1)).has_value());
        const auto answer_id = all_messages(store, {c.owner, c.id}, 10).at(1).id;
        const chatkit::conversation_ref theirs{"team:b", c.id};
        auto expect_not_found = [](const auto& r) {
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().kind == error_kind::not_found);
            CHECK(r.error().code == "conversation_not_found");
        };
        expect_not_found(store.find_conversation(theirs));
        expect_not_found(store.update_conversation({theirs, std::optional<std::string>{"stolen"}, {}, t0 + 2}));
        expect_not_found(store.conversation_messages({theirs, 10, {}, false}));
        expect_not_found(store.conversation_messages({theirs, 10, {}, true}));
        expect_not_found(store.conversation_feedback(theirs));
        auto turn = make_turn(c, "2", t0 + 3);
        turn.conversation = theirs;
        expect_not_found(store.append_to_conversation(turn));
        expect_not_found(store.add_feedback({"team:b", {chatkit::conversations_api::make_uuid(), c.id, answer_id, "flag", {}, {}, t0}}));
        expect_not_found(store.delete_conversation(theirs));
        auto listed = store.conversations({"team:b", "ada", 10, {}});
        REQUIRE(listed.has_value());
        CHECK(listed->conversations.empty());
        // ...and nothing of what they tried changed it
        auto mine = store.find_conversation({c.owner, c.id});
        REQUIRE(mine.has_value());
        CHECK_FALSE(mine->title.has_value());
        CHECK(mine->totals.message_count == 2);
        CHECK(mine->updated_at == t0 + 1);
    }

    SECTION("an unknown id is not found") {
        Store store = make();
        const chatkit::conversation_ref none{"", chatkit::conversations_api::make_uuid()};
        auto r = store.find_conversation(none);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == error_kind::not_found);
        auto d = store.delete_conversation(none);
        REQUIRE_FALSE(d.has_value());
        CHECK(d.error().kind == error_kind::not_found);
    }

    SECTION("a user's conversations come newest first, paged, apart from other users and owners") {
        Store store = make();
        std::vector<std::string> ids; // oldest first
        for (int i = 0; i < 5; ++i) {
            auto c = make_conversation("", "ada", t0 + i, "c" + std::to_string(i));
            REQUIRE(store.create_conversation(c).has_value());
            ids.push_back(c.id);
        }
        REQUIRE(store.create_conversation(make_conversation("", "bob", t0 + 9)).has_value());
        REQUIRE(store.create_conversation(make_conversation("team:x", "ada", t0 + 9)).has_value());
        std::vector<std::string> seen;
        chatkit::conversation_query q{"", "ada", 2, {}};
        for (int pages = 1;; ++pages) {
            REQUIRE(pages <= 3);
            auto page = store.conversations(q);
            REQUIRE(page.has_value());
            for (const auto& c : page->conversations) {
                CHECK(c.user_id == "ada");
                CHECK(c.owner.empty());
                seen.push_back(c.id);
            }
            if (!page->next_cursor) break;
            CHECK(page->conversations.size() == 2);
            q.cursor = *page->next_cursor;
        }
        CHECK(seen == std::vector<std::string>(ids.rbegin(), ids.rend()));

        auto bad = store.conversations({"", "ada", 2, "not a cursor"});
        REQUIRE_FALSE(bad.has_value());
        CHECK(bad.error().kind == error_kind::invalid_request);
    }

    SECTION("appended messages come back oldest first with every field, totals add up, updated_at moves") {
        Store store = make();
        auto c = make_conversation("", "ada", t0);
        REQUIRE(store.create_conversation(c).has_value());
        const auto first = make_turn(c, "1", t0 + 10);
        REQUIRE(store.append_to_conversation(first).has_value());
        REQUIRE(store.append_to_conversation(make_turn(c, "2", t0 + 20)).has_value());

        const auto all = all_messages(store, {c.owner, c.id}, 100);
        REQUIRE(all.size() == 4);
        CHECK(all[0].content == "question 1");
        CHECK(all[1].content == "answer 1");
        CHECK(all[2].content == "question 2");
        CHECK(all[3].content == "answer 2");
        const auto& q = all[0];
        CHECK(q.id == first.messages[0].id);
        CHECK(q.conversation_id == c.id);
        CHECK(q.role == role::user);
        CHECK_FALSE(q.usage.has_value());
        CHECK_FALSE(q.cost_usd.has_value());
        CHECK(q.request_id == "req-1");
        CHECK(q.created_at == t0 + 10);
        const auto& a = all[1];
        CHECK(a.id == first.messages[1].id);
        CHECK(a.role == role::assistant);
        CHECK(a.provider == "provider-1");
        CHECK(a.model == "model-1");
        REQUIRE(a.usage.has_value());
        CHECK(a.usage->prompt_tokens == 10);
        CHECK(a.usage->completion_tokens == 5);
        CHECK(a.cost_usd == std::optional<double>{0.25});
        CHECK(a.latency_ms == std::optional<double>{12.5});
        CHECK(a.time_to_first_token_ms == std::optional<double>{3.25});

        auto found = store.find_conversation({c.owner, c.id});
        REQUIRE(found.has_value());
        CHECK(found->totals.message_count == 4);
        CHECK(found->totals.total_tokens == 30);
        CHECK(found->totals.total_cost_usd == Approx(0.5));
        CHECK(found->updated_at == t0 + 20);
        CHECK(found->created_at == t0);
    }

    SECTION("messages page forward from a cursor, and `newest` gives the last ones oldest first") {
        Store store = make();
        auto c = make_conversation("", "ada", t0);
        REQUIRE(store.create_conversation(c).has_value());
        for (int i = 0; i < 5; ++i) REQUIRE(store.append_to_conversation(make_turn(c, std::to_string(i), t0 + i)).has_value());
        const auto all = all_messages(store, {c.owner, c.id}, 3); // 10 messages in pages of 3
        REQUIRE(all.size() == 10);
        for (std::size_t i = 0; i < all.size(); ++i) CHECK(all[i].content == (i % 2 ? "answer " : "question ") + std::to_string(i / 2));
        auto newest = store.conversation_messages({{c.owner, c.id}, 3, {}, true});
        REQUIRE(newest.has_value());
        REQUIRE(newest->messages.size() == 3);
        CHECK(newest->messages[0].content == "answer 3");
        CHECK(newest->messages[1].content == "question 4");
        CHECK(newest->messages[2].content == "answer 4");

        auto bad = store.conversation_messages({{c.owner, c.id}, 3, "not a cursor", false});
        REQUIRE_FALSE(bad.has_value());
        CHECK(bad.error().kind == error_kind::invalid_request);
    }

    SECTION("an append to a conversation that is gone is not found and writes nothing") {
        Store store = make();
        auto c = make_conversation("", "ada", t0);
        REQUIRE(store.create_conversation(c).has_value());
        REQUIRE(store.delete_conversation({c.owner, c.id}).has_value());
        auto r = store.append_to_conversation(make_turn(c, "1", t0 + 1));
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == error_kind::not_found);
        REQUIRE(store.create_conversation(c).has_value()); // the same id again: nothing left of the first
        CHECK(all_messages(store, {c.owner, c.id}, 10).empty());
    }

    SECTION("update replaces what it names and returns the conversation as it now is") {
        Store store = make();
        auto c = make_conversation("", "ada", t0, "Old");
        REQUIRE(store.create_conversation(c).has_value());
        auto renamed = store.update_conversation({{c.owner, c.id}, std::optional<std::string>{"New"}, {}, t0 + 5});
        REQUIRE(renamed.has_value());
        CHECK(renamed->title == std::optional<std::string>{"New"});
        CHECK(renamed->metadata == c.metadata); // untouched
        CHECK(renamed->updated_at == t0 + 5);
        CHECK(renamed->created_at == t0);
        auto cleared = store.update_conversation({{c.owner, c.id}, std::optional<std::string>{}, nlohmann::json{{"k", "v"}}, t0 + 6});
        REQUIRE(cleared.has_value());
        CHECK_FALSE(cleared->title.has_value());
        CHECK(cleared->metadata == nlohmann::json{{"k", "v"}});
        auto found = store.find_conversation({c.owner, c.id});
        REQUIRE(found.has_value());
        CHECK_FALSE(found->title.has_value());
        CHECK(found->metadata == nlohmann::json{{"k", "v"}});
        CHECK(found->updated_at == t0 + 6);
    }

    SECTION("delete removes the conversation, its messages and its feedback, and nothing else") {
        Store store = make();
        auto doomed = make_conversation("", "ada", t0);
        auto kept = make_conversation("", "ada", t0 + 1);
        REQUIRE(store.create_conversation(doomed).has_value());
        REQUIRE(store.create_conversation(kept).has_value());
        for (const auto* c : {&doomed, &kept}) {
            const auto turn = make_turn(*c, "1", t0 + 2);
            REQUIRE(store.append_to_conversation(turn).has_value());
            REQUIRE(
                store
                    .add_feedback(
                        {c->owner, {chatkit::conversations_api::make_uuid(), c->id, turn.messages[1].id, "thumbs_up", 5, "good", t0 + 3}})
                    .has_value());
        }
        REQUIRE(store.delete_conversation({doomed.owner, doomed.id}).has_value());
        CHECK_FALSE(store.find_conversation({doomed.owner, doomed.id}).has_value());
        CHECK_FALSE(store.conversation_messages({{doomed.owner, doomed.id}, 10, {}, false}).has_value());
        CHECK_FALSE(store.conversation_feedback({doomed.owner, doomed.id}).has_value());
        auto again = store.delete_conversation({doomed.owner, doomed.id});
        REQUIRE_FALSE(again.has_value());
        CHECK(again.error().kind == chatkit::error_kind::not_found);
        // recreated under the same id, it is empty: nothing of the deleted one reads back
        REQUIRE(store.create_conversation(doomed).has_value());
        CHECK(all_messages(store, {doomed.owner, doomed.id}, 10).empty());
        auto no_feedback = store.conversation_feedback({doomed.owner, doomed.id});
        REQUIRE(no_feedback.has_value());
        CHECK(no_feedback->empty());

        CHECK(all_messages(store, {kept.owner, kept.id}, 10).size() == 2);
        auto kept_feedback = store.conversation_feedback({kept.owner, kept.id});
        REQUIRE(kept_feedback.has_value());
        CHECK(kept_feedback->size() == 1);
        auto listed = store.conversations({"", "ada", 10, {}});
        REQUIRE(listed.has_value());
        CHECK(listed->conversations.size() == 2);
    }

    SECTION("feedback is stored with every field, listed oldest first, and only on the conversation's own messages") {
        Store store = make();
        auto c = make_conversation("team:a", "ada", t0);
        auto other = make_conversation("team:a", "ada", t0);
        REQUIRE(store.create_conversation(c).has_value());
        REQUIRE(store.create_conversation(other).has_value());
        const auto turn = make_turn(c, "1", t0 + 1);
        const auto other_turn = make_turn(other, "2", t0 + 1);
        REQUIRE(store.append_to_conversation(turn).has_value());
        REQUIRE(store.append_to_conversation(other_turn).has_value());
        const chatkit::feedback first{
            chatkit::conversations_api::make_uuid(), c.id, turn.messages[1].id, "thumbs_down", 2, "wrong", t0 + 5};
        const chatkit::feedback second{chatkit::conversations_api::make_uuid(), c.id, turn.messages[1].id, "flag", {}, {}, t0 + 6};
        REQUIRE(store.add_feedback({c.owner, first}).has_value());
        REQUIRE(store.add_feedback({c.owner, second}).has_value());
        auto listed = store.conversation_feedback({c.owner, c.id});
        REQUIRE(listed.has_value());
        REQUIRE(listed->size() == 2);
        const auto& f = (*listed)[0];
        CHECK(f.id == first.id);
        CHECK(f.conversation_id == c.id);
        CHECK(f.message_id == turn.messages[1].id);
        CHECK(f.feedback_type == "thumbs_down");
        CHECK(f.rating == std::optional<int>{2});
        CHECK(f.comment == std::optional<std::string>{"wrong"});
        CHECK(f.created_at == t0 + 5);
        CHECK((*listed)[1].id == second.id);
        CHECK_FALSE((*listed)[1].rating.has_value());
        CHECK_FALSE((*listed)[1].comment.has_value());

        // a message of another conversation, or none at all
        for (const auto& message_id : {other_turn.messages[1].id, chatkit::conversations_api::make_uuid()}) {
            auto r = store.add_feedback({c.owner, {chatkit::conversations_api::make_uuid(), c.id, message_id, "flag", {}, {}, t0}});
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().kind == error_kind::not_found);
            CHECK(r.error().code == "message_not_found");
        }
        auto empty = store.conversation_feedback({other.owner, other.id});
        REQUIRE(empty.has_value());
        CHECK(empty->empty());
    }

    SECTION("concurrent appends into one conversation keep each exchange whole and lose none") {
        Store store = make();
        auto c = make_conversation("", "ada", t0);
        REQUIRE(store.create_conversation(c).has_value());
        constexpr int threads = 8, per_thread = 5;
        std::vector<std::thread> writers;
        std::atomic<int> failures{0};
        for (int t = 0; t < threads; ++t)
            writers.emplace_back([&, t] {
                for (int i = 0; i < per_thread; ++i)
                    if (!store.append_to_conversation(make_turn(c, std::to_string(t) + "-" + std::to_string(i), t0 + i))) ++failures;
            });
        for (auto& w : writers) w.join();
        CHECK(failures == 0);
        const auto all = all_messages(store, {c.owner, c.id}, 7);
        REQUIRE(all.size() == 2 * threads * per_thread);
        std::set<std::string> tags;
        for (std::size_t i = 0; i < all.size(); i += 2) {
            REQUIRE(all[i].role == role::user);
            REQUIRE(all[i + 1].role == role::assistant);
            const auto tag = all[i].content.substr(std::string("question ").size());
            CHECK(all[i + 1].content == "answer " + tag); // the answer right after its question
            tags.insert(tag);
        }
        CHECK(tags.size() == threads * per_thread);
        auto found = store.find_conversation({c.owner, c.id});
        REQUIRE(found.has_value());
        CHECK(found->totals.message_count == 2 * threads * per_thread);
    }
}

} // namespace chatkit::testing
