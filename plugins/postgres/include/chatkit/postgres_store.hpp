// chatkit::postgres_store: conversation history and conversations (chatkit/conversation_store.hpp)
// in PostgreSQL, the Store that several replicas share. History writes use group commit as
// sqlite_store's do: concurrent append() calls share one transaction, and each returns only after
// its COMMIT succeeded. Conversation writes are a transaction each. Blocking: it runs on the
// worker pool.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/chat_body.hpp"
#include "chatkit/conversation_store.hpp"
#include "chatkit/conversations_api.hpp"
#include "chatkit/error.hpp"
#include "chatkit/health.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/postgres_connection_pool.hpp"
#include "chatkit/store.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct postgres_store_options {
    postgres_options connection{};
    // Told of each group commit that succeeded: how many append() calls it answered and how long
    // its transaction took (BEGIN to COMMIT), as sqlite_options::on_commit. Called by the caller
    // that wrote the batch, after the batch's other callers are woken; cheap and thread-safe.
    std::function<void(std::size_t batch, std::chrono::duration<double> seconds)> on_commit{};
};

namespace postgres_store_detail {

// Migration n takes the schema from version n-1 to n (chatkit_schema_version holds one row per
// migration run). Append new ones; never edit a shipped one, since databases in the field have
// already run it.
inline constexpr std::string_view migrations[] = {
    // The identity never reuses a value, so ids order a user's history by time and stay valid as
    // cursors. The strings are bytea, not text: content must round-trip byte for byte (a NUL, or
    // bytes that are not UTF-8, which a text column refuses), and one bad value must not fail the
    // other exchanges of its batch.
    R"sql(
    CREATE TABLE chatkit_messages (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id    bytea  NOT NULL,
        role       text   NOT NULL,
        content    bytea  NOT NULL,
        model      bytea  NOT NULL,
        created_at bigint NOT NULL, -- unix ms
        request_id bytea  NOT NULL
    );
    CREATE INDEX chatkit_messages_by_user ON chatkit_messages (user_id, id);
    )sql",
    // Conversations (chatkit/conversation_store.hpp). Ids are the service's UUIDs; `seq` keeps
    // insertion order (a tie-break between equal times, and the messages' cursor). `owner` is ''
    // without authentication. Times are unix ms, as chatkit_messages'. Content is bytea for the
    // reason chatkit_messages' is (a stored answer must not fail on its bytes); the other strings
    // are text, so the tables read well in SQL. Token counts and costs are NULL on a user's
    // message. Deleting a conversation deletes its messages and feedback (ON DELETE CASCADE).
    R"sql(
    CREATE TABLE chatkit_conversations (
        id         uuid   PRIMARY KEY,
        seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        owner      text   NOT NULL,
        user_id    text   NOT NULL,
        title      text,
        metadata   jsonb  NOT NULL,
        created_at bigint NOT NULL, -- unix ms
        updated_at bigint NOT NULL, -- unix ms
        -- Running totals, added to by each append in its transaction: read in O(1) however long
        -- the conversation is (a sum over its messages would grow with every turn).
        message_count  bigint NOT NULL DEFAULT 0,
        total_tokens   bigint NOT NULL DEFAULT 0,
        total_cost_usd float8 NOT NULL DEFAULT 0
    );
    CREATE INDEX chatkit_conversations_by_user
        ON chatkit_conversations (owner, user_id, created_at DESC, seq DESC);
    CREATE TABLE chatkit_conversation_messages (
        seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id                uuid   NOT NULL UNIQUE,
        conversation_id   uuid   NOT NULL REFERENCES chatkit_conversations (id) ON DELETE CASCADE,
        role              text   NOT NULL,
        content           bytea  NOT NULL,
        provider          text   NOT NULL,
        model             text   NOT NULL,
        prompt_tokens     integer,
        completion_tokens integer,
        cost_usd          double precision,
        latency_ms        double precision,
        ttft_ms           double precision,
        request_id        text   NOT NULL,
        created_at        bigint NOT NULL -- unix ms
    );
    CREATE INDEX chatkit_conversation_messages_by_conversation ON chatkit_conversation_messages (conversation_id, seq);
    CREATE TABLE chatkit_feedback (
        seq             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id              uuid    NOT NULL UNIQUE,
        conversation_id uuid    NOT NULL REFERENCES chatkit_conversations (id) ON DELETE CASCADE,
        message_id      uuid    NOT NULL REFERENCES chatkit_conversation_messages (id) ON DELETE CASCADE,
        feedback_type   text    NOT NULL CHECK (feedback_type IN ('thumbs_up', 'thumbs_down', 'flag')),
        rating          integer CHECK (rating BETWEEN 1 AND 5),
        comment         text,
        created_at      bigint  NOT NULL -- unix ms
    );
    CREATE INDEX chatkit_feedback_by_conversation ON chatkit_feedback (conversation_id, seq);
    -- The cascade from a deleted message looks its feedback up by message.
    CREATE INDEX chatkit_feedback_by_message ON chatkit_feedback (message_id);
    )sql",
    // API keys and teams (chatkit::postgres_key_directory) and usage records
    // (chatkit::postgres_usage_store). A key is stored by its SHA-256 digest, never the key. A
    // usage record's strings are bytea for the reason messages' content is: they come from
    // requests, and one value a text column refuses (a NUL in a model name) must not fail the
    // other records of its batch. Flags are booleans; times unix ms; a NULL cost is unpriced.
    R"sql(
    CREATE TABLE chatkit_teams (
        id            text   PRIMARY KEY,
        name          text   NOT NULL,
        rpm           bigint,
        tpm           bigint,
        budget_usd    double precision,
        budget_period text,
        created_at    bigint NOT NULL -- unix ms
    );
    CREATE TABLE chatkit_api_keys (
        id            text   PRIMARY KEY,
        team_id       text   NOT NULL REFERENCES chatkit_teams (id),
        name          text   NOT NULL,
        prefix        text   NOT NULL,
        digest        bytea  NOT NULL,
        created_at    bigint NOT NULL, -- unix ms
        expires_at    bigint,
        revoked_at    bigint,
        rpm           bigint,
        tpm           bigint,
        budget_usd    double precision,
        budget_period text,
        models        jsonb -- a JSON array of model names; NULL: any model
    );
    CREATE TABLE chatkit_usage (
        seq               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time              bigint  NOT NULL, -- unix ms
        request_id        bytea   NOT NULL,
        team_id           bytea   NOT NULL,
        key_id            bytea   NOT NULL,
        model             bytea   NOT NULL,
        provider          bytea   NOT NULL,
        status            integer NOT NULL,
        prompt_tokens     integer NOT NULL,
        completion_tokens integer NOT NULL,
        cached_tokens     integer NOT NULL,
        reasoning_tokens  integer NOT NULL,
        cost_usd          double precision,
        latency_ms        double precision NOT NULL,
        ttft_ms           double precision NOT NULL,
        cached            boolean NOT NULL,
        streamed          boolean NOT NULL,
        cancelled         boolean NOT NULL,
        estimated         boolean NOT NULL
    );
    CREATE INDEX chatkit_usage_by_team ON chatkit_usage (team_id, time);
    CREATE INDEX chatkit_usage_by_key ON chatkit_usage (key_id, time);
    )sql",
};

// Advisory lock keys ("chatkit" and a number), held until the end of their transaction.
// Migrating: two replicas starting at once take turns, the second finding the work done.
inline constexpr std::int64_t migration_lock = 0x636861746b697401;
// Writing: one batch at a time across every replica, so ids are handed out in commit order. A
// reader paging back with a cursor then never misses a row that an older transaction committed
// after the reader had passed its id, and an exchange's messages have consecutive ids.
inline constexpr std::int64_t write_lock = 0x636861746b697402;

inline const postgres_statement lock_writes{"chatkit_lock_writes", "SELECT pg_advisory_xact_lock(7163082359978947586)"};
static_assert(write_lock == 7163082359978947586);
inline const postgres_statement commit{"chatkit_commit", "COMMIT"};
inline const postgres_statement insert_message{
    "chatkit_insert_message",
    "INSERT INTO chatkit_messages (user_id, role, content, model, created_at, request_id) VALUES ($1, $2, $3, $4, $5, $6)",
    {17, 25, 17, 17, 20, 17}};
inline const postgres_statement select_page{"chatkit_select_page",
                                            "SELECT id, role, content, model, created_at, request_id FROM chatkit_messages "
                                            "WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                                            {17, 20, 20}};

// Conversations. Ids are sent as text and cast, so that one parse (PostgreSQL's) reads them; the
// store checks them first (conversations_api::is_uuid), since a malformed one would fail the
// statement. Columns of a conversation, in conversation_row's order: id, owner, user_id, title,
// metadata, created_at, updated_at, seq.
inline const postgres_statement begin_transaction{"chatkit_begin", "BEGIN"};
inline const postgres_statement insert_conversation{
    "chatkit_insert_conversation",
    "INSERT INTO chatkit_conversations (id, owner, user_id, title, metadata, created_at, updated_at) "
    "VALUES ($1::uuid, $2, $3, $4, $5::jsonb, $6, $7) ON CONFLICT (id) DO NOTHING",
    {25, 25, 25, 25, 25, 20, 20}};
inline const postgres_statement select_conversation{
    "chatkit_select_conversation",
    "SELECT id::text, owner, user_id, title, metadata::text, created_at, updated_at, seq, "
    "message_count, total_tokens, total_cost_usd FROM chatkit_conversations WHERE id = $1::uuid AND owner = $2",
    {25, 25}};
inline const postgres_statement conversation_exists{
    "chatkit_conversation_exists", "SELECT 1 FROM chatkit_conversations WHERE id = $1::uuid AND owner = $2", {25, 25}};
// Newest first; the cursor is the last row's (created_at, seq).
inline const postgres_statement select_conversations{
    "chatkit_select_conversations",
    "SELECT id::text, owner, user_id, title, metadata::text, created_at, updated_at, seq FROM chatkit_conversations "
    "WHERE owner = $1 AND user_id = $2 AND (created_at, seq) < ($3, $4) ORDER BY created_at DESC, seq DESC LIMIT $5",
    {25, 25, 20, 20, 20}};
// $3 and $5 (0 or 1) say whether the title and the metadata are replaced.
inline const postgres_statement change_conversation{
    "chatkit_update_conversation",
    "UPDATE chatkit_conversations SET title = CASE WHEN $3 = 1 THEN $4 ELSE title END, "
    "metadata = CASE WHEN $5 = 1 THEN $6::jsonb ELSE metadata END, updated_at = $7 "
    "WHERE id = $1::uuid AND owner = $2 "
    "RETURNING id::text, owner, user_id, title, metadata::text, created_at, updated_at, seq",
    {25, 25, 20, 25, 20, 25, 20}};
inline const postgres_statement remove_conversation{
    "chatkit_delete_conversation", "DELETE FROM chatkit_conversations WHERE id = $1::uuid AND owner = $2", {25, 25}};
// An append's first statement: its row lock makes appends to one conversation take turns until
// COMMIT, so their messages' seq follow commit order (a cursor never skips one) and an
// exchange's messages stay next to each other. Appends to other conversations do not wait.
inline const postgres_statement touch_conversation{
    "chatkit_touch_conversation",
    "UPDATE chatkit_conversations SET updated_at = $3, message_count = message_count + $4, total_tokens = total_tokens + $5, "
    "total_cost_usd = total_cost_usd + $6 WHERE id = $1::uuid AND owner = $2",
    {25, 25, 20, 20, 20, 701}};
inline const postgres_statement insert_conversation_message{
    "chatkit_insert_conversation_message",
    "INSERT INTO chatkit_conversation_messages (id, conversation_id, role, content, provider, model, prompt_tokens, "
    "completion_tokens, cost_usd, latency_ms, ttft_ms, request_id, created_at) "
    "VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    {25, 25, 25, 17, 25, 25, 20, 20, 701, 701, 701, 25, 20}};
// Message reads return one row with NULL columns for an owned conversation without (more)
// messages, and none when the conversation is not the owner's: one statement, one snapshot.
// Columns, in message_row's order: seq, id, conversation_id, role, content, provider, model,
// prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, request_id, created_at.
inline const postgres_statement select_messages_after{
    "chatkit_select_messages_after",
    "SELECT m.seq, m.id::text, m.conversation_id::text, m.role, m.content, m.provider, m.model, m.prompt_tokens::int8, "
    "m.completion_tokens::int8, m.cost_usd, m.latency_ms, m.ttft_ms, m.request_id, m.created_at "
    "FROM chatkit_conversations c LEFT JOIN LATERAL (SELECT * FROM chatkit_conversation_messages "
    "WHERE conversation_id = c.id AND seq > $3 ORDER BY seq LIMIT $4) m ON true "
    "WHERE c.id = $1::uuid AND c.owner = $2 ORDER BY m.seq",
    {25, 25, 20, 20}};
inline const postgres_statement select_messages_newest{
    "chatkit_select_messages_newest",
    "SELECT m.seq, m.id::text, m.conversation_id::text, m.role, m.content, m.provider, m.model, m.prompt_tokens::int8, "
    "m.completion_tokens::int8, m.cost_usd, m.latency_ms, m.ttft_ms, m.request_id, m.created_at "
    "FROM chatkit_conversations c LEFT JOIN LATERAL (SELECT * FROM chatkit_conversation_messages "
    "WHERE conversation_id = c.id ORDER BY seq DESC LIMIT $3) m ON true "
    "WHERE c.id = $1::uuid AND c.owner = $2 ORDER BY m.seq",
    {25, 25, 20}};
// Inserts the feedback when the conversation is the owner's and the message one of its own, and
// says which was missing: (conversations found, feedback inserted). FOR KEY SHARE holds both rows
// against a concurrent delete, which otherwise would fail the insert's foreign-key check.
inline const postgres_statement insert_feedback{
    "chatkit_insert_feedback",
    "WITH conversation AS (SELECT id FROM chatkit_conversations WHERE id = $2::uuid AND owner = $8 FOR KEY SHARE), "
    "message AS (SELECT id FROM chatkit_conversation_messages "
    "WHERE id = $3::uuid AND conversation_id IN (SELECT id FROM conversation) FOR KEY SHARE), "
    "added AS (INSERT INTO chatkit_feedback (id, conversation_id, message_id, feedback_type, rating, comment, created_at) "
    "SELECT $1::uuid, conversation.id, message.id, $4, $5, $6, $7 FROM conversation, message RETURNING 1) "
    "SELECT (SELECT count(*) FROM conversation), (SELECT count(*) FROM added)",
    {25, 25, 25, 25, 20, 25, 20, 25}};
inline const postgres_statement select_feedback{
    "chatkit_select_feedback",
    "SELECT f.id::text, f.conversation_id::text, f.message_id::text, f.feedback_type, f.rating::int8, f.comment, "
    "f.created_at FROM chatkit_conversations c LEFT JOIN chatkit_feedback f ON f.conversation_id = c.id "
    "WHERE c.id = $1::uuid AND c.owner = $2 ORDER BY f.seq",
    {25, 25}};

// What a text column takes in a UTF8 database: valid UTF-8 without NUL. Anything else would fail
// its statement, so the store answers for it first (refused on writes, matched by nothing on reads).
inline bool storable_text(std::string_view s) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const auto* end = p + s.size();
    while (p < end) {
        const unsigned c = *p;
        if (c == 0) return false;
        if (c < 0x80) {
            ++p;
            continue;
        }
        // Continuation bytes, and the range of the first one: no overlong form, no surrogate,
        // nothing above U+10FFFF.
        std::ptrdiff_t n = 3;
        unsigned low = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        unsigned high = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c >= 0xE0 && c <= 0xEF) n = 2;
        else if (c < 0xF0 || c > 0xF4) return false;
        if (end - p <= n || p[1] < low || p[1] > high) return false;
        for (std::ptrdiff_t i = 2; i <= n; ++i)
            if (p[i] < 0x80 || p[i] > 0xBF) return false;
        p += n + 1;
    }
    return true;
}

// jsonb refuses U+0000 in a string or key (its text cannot hold it). In dump_json's text it can
// only be an escape: "u0000" after an odd number of backslashes.
inline bool jsonb_storable(std::string_view json) noexcept {
    for (auto at = json.find("u0000"); at != std::string_view::npos; at = json.find("u0000", at + 1)) {
        std::size_t slashes = 0;
        while (slashes < at && json[at - 1 - slashes] == '\\') ++slashes;
        if (slashes % 2 == 1) return false;
    }
    return true;
}

inline postgres_param nullable(const std::optional<std::string>& text) {
    return text ? postgres_param{std::string_view{*text}} : postgres_param::null();
}
inline postgres_param nullable(std::optional<double> value) { return value ? postgres_param::float8(*value) : postgres_param::null(); }

// Rows a command changed (UPDATE, DELETE, INSERT).
inline std::int64_t affected(const postgres_result& r) noexcept {
    const std::string_view text = PQcmdTuples(r.get());
    std::int64_t n = 0;
    (void)std::from_chars(text.data(), text.data() + text.size(), n);
    return n;
}

// Start-up failures throw: a service without its store must not start.
[[noreturn]] inline void fail(std::string_view what, const std::string& why) {
    throw std::runtime_error("chatkit::postgres_store: " + std::string(what) + ": " + why);
}

// Applies the migrations the database has not run yet, in one transaction: a failure leaves the
// old version, never half of a new one. `up_to` stops earlier: for tests of a database that an
// older chatkit made.
inline void migrate(postgres_connection_pool& pool, long up_to = static_cast<long>(std::size(migrations))) {
    constexpr auto latest = static_cast<long>(std::size(migrations));
    auto lease = pool.acquire();
    if (!lease) fail("cannot migrate the schema", lease.error().message);
    auto run = [&](const std::string& sql) {
        auto r = lease->exec(sql.c_str());
        if (!r) {
            if (!lease->broken()) (void)lease->exec("ROLLBACK");
            fail("cannot migrate the schema", r.error().message);
        }
        return std::move(*r);
    };
    run("BEGIN");
    run("SELECT pg_advisory_xact_lock(" + std::to_string(migration_lock) + ")");
    run("CREATE TABLE IF NOT EXISTS chatkit_schema_version (version integer PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())");
    const auto current = run("SELECT coalesce(max(version), 0) FROM chatkit_schema_version");
    const long version = std::stol(PQgetvalue(current.get(), 0, 0));
    if (version > latest) {
        run("ROLLBACK");
        fail("cannot use " + pool.described(),
             "schema version " + std::to_string(version) + " is newer than this chatkit's (" + std::to_string(latest) + ")");
    }
    for (long v = version; v < std::min(up_to, latest); ++v) {
        run(std::string(migrations[v]));
        run("INSERT INTO chatkit_schema_version (version) VALUES (" + std::to_string(v + 1) + ")");
    }
    run("COMMIT");
}

} // namespace postgres_store_detail

class postgres_store {
public:
    // Connects, and migrates the schema; throws (std::runtime_error, or std::invalid_argument for
    // a URL libpq cannot read) naming the server but never the password.
    explicit postgres_store(postgres_store_options options)
        : state_(std::make_unique<state>(postgres_connection_pool{std::move(options.connection)})) {
        state_->on_commit = std::move(options.on_commit);
        postgres_store_detail::migrate(state_->pool);
    }

    postgres_store(postgres_store&&) noexcept = default;
    postgres_store& operator=(postgres_store&&) noexcept = default;

    // Returns once the exchange is committed. Callers that arrive while a batch is being written
    // queue up; the first to find the writer free writes the whole queue in one transaction.
    result<void> append(const exchange& e) {
        if (e.messages.empty()) return {};
        auto& s = *state_;
        pending self{&e};
        std::unique_lock lock(s.queue_mutex);
        s.queue.push_back(&self);
        s.queue_changed.wait(lock, [&] { return self.done || !s.writing; });
        if (!self.done) write_queue(lock); // our exchange is in it
        if (self.failure) return *self.failure;
        return {};
    }

    result<history_page> history(const history_query& q) {
        using namespace postgres_store_detail;
        std::int64_t before = std::numeric_limits<std::int64_t>::max();
        if (!q.before.empty() && !parse_cursor(q.before, before))
            return error{error_kind::invalid_request, "'before' is not a valid cursor", "invalid_cursor", "before"};
        history_page page;
        if (q.limit == 0) return page;
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);
        // One more than asked for: are there older ones?
        const std::vector<postgres_param> params{std::string_view{q.user_id}, before, static_cast<std::int64_t>(limit) + 1};
        auto rows = with_retry([&](postgres_connection_pool::lease& c) { return c.prepared(select_page, params); });
        if (!rows) return unavailable("read history", rows.error());
        const PGresult* r = rows->get();
        for (int i = 0; i < PQntuples(r); ++i) {
            if (page.messages.size() == limit) {
                page.next_cursor = page.messages.back().id; // the smallest id in the page
                break;
            }
            const auto role = parse_role(postgres_bytes(r, i, 1));
            if (!role) return error{error_kind::internal, "stored message has an unknown role", "store_corrupt"};
            page.messages.push_back({std::to_string(postgres_int8(r, i, 0)), *role, postgres_bytes(r, i, 2), postgres_bytes(r, i, 3),
                                     postgres_int8(r, i, 4), postgres_bytes(r, i, 5)});
        }
        std::reverse(page.messages.begin(), page.messages.end()); // oldest first
        return page;
    }

    component_health health() {
        auto r = with_retry([](postgres_connection_pool::lease& c) { return c.exec("SELECT 1"); });
        if (!r) return {.ok = false, .detail = r.error().message}; // names the server, never the password
        return {};
    }

    // ConversationStore (chatkit/conversation_store.hpp). A ref whose id is no UUID, or whose
    // owner no row could hold, names no conversation: not found, without a query.

    result<void> create_conversation(const conversation& c) {
        using namespace postgres_store_detail;
        if (!conversations_api::is_uuid(c.id))
            return error{error_kind::invalid_request, "a conversation's id must be a UUID", "invalid_id", "id"};
        if (auto bad = unstorable({{c.owner, "owner"}, {c.user_id, "user_id"}, {c.title.value_or(""), "title"}})) return *bad;
        auto metadata = metadata_text(c.metadata);
        if (!metadata) return std::move(metadata).error();
        const std::vector<postgres_param> params{std::string_view{c.id},
                                                 std::string_view{c.owner},
                                                 std::string_view{c.user_id},
                                                 nullable(c.title),
                                                 std::string_view{*metadata},
                                                 c.created_at,
                                                 c.updated_at};
        return transact("create the conversation", {{&insert_conversation, params}}, [](results done) -> result<calls> {
            // The service's ids are random UUIDs: this is a retried create, or a bug, never a race to win.
            if (affected(done[0]) == 0)
                return error{error_kind::conflict, "a conversation with this id exists already", "conversation_exists", "id"};
            return calls{};
        });
    }

    result<conversation_page> conversations(const conversation_query& q) {
        using namespace postgres_store_detail;
        std::int64_t before_at = std::numeric_limits<std::int64_t>::max(), before_seq = before_at;
        if (!q.cursor.empty() && !parse_conversation_cursor(q.cursor, before_at, before_seq))
            return error{error_kind::invalid_request, "'cursor' is not a valid cursor", "invalid_cursor", "cursor"};
        conversation_page page;
        if (q.limit == 0 || !storable_text(q.owner) || !storable_text(q.user_id)) return page;
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);
        // One more than asked for: are there older ones?
        auto rows = read(
            "read conversations", select_conversations,
            {std::string_view{q.owner}, std::string_view{q.user_id}, before_at, before_seq, static_cast<std::int64_t>(limit) + 1});
        if (!rows) return std::move(rows).error();
        const PGresult* r = rows->get();
        for (int i = 0; i < PQntuples(r); ++i) {
            if (page.conversations.size() == limit) {
                page.next_cursor = std::to_string(page.conversations.back().created_at) + "_" + std::to_string(postgres_int8(r, i - 1, 7));
                break;
            }
            auto c = conversation_row(r, i);
            if (!c) return std::move(c).error();
            page.conversations.push_back(std::move(*c));
        }
        return page;
    }

    result<conversation> find_conversation(const conversation_ref& ref) {
        using namespace postgres_store_detail;
        if (!names_conversation(ref)) return detail::conversation_not_found();
        auto rows = read("read the conversation", select_conversation, {std::string_view{ref.id}, std::string_view{ref.owner}});
        if (!rows) return std::move(rows).error();
        const PGresult* r = rows->get();
        if (PQntuples(r) == 0) return detail::conversation_not_found();
        auto c = conversation_row(r, 0);
        if (!c) return c;
        c->totals = {postgres_int8(r, 0, 8), postgres_int8(r, 0, 9), postgres_float8(r, 0, 10)};
        return c;
    }

    result<conversation> update_conversation(const conversation_update& u) {
        using namespace postgres_store_detail;
        const auto& ref = u.conversation;
        if (!names_conversation(ref)) return detail::conversation_not_found();
        const std::optional<std::string> no_title;
        const auto& title = u.title ? *u.title : no_title;
        if (auto bad = unstorable({{title.value_or(""), "title"}})) return *bad;
        std::string metadata;
        if (u.metadata) {
            auto text = metadata_text(*u.metadata);
            if (!text) return std::move(text).error();
            metadata = std::move(*text);
        }
        const std::vector<postgres_param> params{std::string_view{ref.id},
                                                 std::string_view{ref.owner},
                                                 std::int64_t{u.title.has_value()},
                                                 nullable(title),
                                                 std::int64_t{u.metadata.has_value()},
                                                 u.metadata ? postgres_param{std::string_view{metadata}} : postgres_param::null(),
                                                 u.at};
        std::optional<conversation> updated;
        auto done = transact("update the conversation", {{&change_conversation, params}}, [&](results r) -> result<calls> {
            if (PQntuples(r[0].get()) == 0) return detail::conversation_not_found();
            auto c = conversation_row(r[0].get(), 0);
            if (!c) return std::move(c).error();
            updated = std::move(*c);
            return calls{};
        });
        if (!done) return std::move(done).error();
        return std::move(*updated);
    }

    result<void> delete_conversation(const conversation_ref& ref) {
        using namespace postgres_store_detail;
        if (!names_conversation(ref)) return detail::conversation_not_found();
        return transact("delete the conversation", {{&remove_conversation, {std::string_view{ref.id}, std::string_view{ref.owner}}}},
                        [](results r) -> result<calls> {
                            if (affected(r[0]) == 0) return detail::conversation_not_found();
                            return calls{}; // its messages and feedback go with it (ON DELETE CASCADE)
                        });
    }

    // All or none, in one transaction that begins with touch_conversation (see there); returns
    // after its COMMIT.
    result<void> append_to_conversation(const conversation_append& a) {
        using namespace postgres_store_detail;
        const auto& ref = a.conversation;
        if (!names_conversation(ref)) return detail::conversation_not_found();
        calls inserts;
        for (const conversation_message& m : a.messages) {
            if (!conversations_api::is_uuid(m.id))
                return error{error_kind::invalid_request, "a message's id must be a UUID", "invalid_id", "id"};
            if (auto bad = unstorable({{m.provider, "provider"}, {m.model, "model"}, {m.request_id, "request_id"}})) return *bad;
            const auto tokens = [&](int token_usage::*count) {
                return m.usage ? postgres_param{std::int64_t{(*m.usage).*count}} : postgres_param::null();
            };
            inserts.emplace_back(&insert_conversation_message,
                                 std::vector<postgres_param>{
                                     std::string_view{m.id}, std::string_view{ref.id}, to_string(m.role), std::string_view{m.content},
                                     std::string_view{m.provider}, std::string_view{m.model}, tokens(&token_usage::prompt_tokens),
                                     tokens(&token_usage::completion_tokens), nullable(m.cost_usd), nullable(m.latency_ms),
                                     nullable(m.time_to_first_token_ms), std::string_view{m.request_id}, m.created_at});
        }
        std::int64_t total_tokens = 0;
        double total_cost = 0;
        for (const auto& m : a.messages) {
            if (m.usage) total_tokens += m.usage->total_tokens();
            if (m.cost_usd) total_cost += *m.cost_usd;
        }
        return transact("save the conversation's messages",
                        {{&touch_conversation,
                          {std::string_view{ref.id}, std::string_view{ref.owner}, a.at, static_cast<std::int64_t>(a.messages.size()),
                           total_tokens, postgres_param::float8(total_cost)}}},
                        [&](results r) -> result<calls> {
                            if (affected(r[0]) == 0) return detail::conversation_not_found(); // nothing is written
                            return std::move(inserts);
                        });
    }

    result<conversation_message_page> conversation_messages(const conversation_message_query& q) {
        using namespace postgres_store_detail;
        std::int64_t after = 0;
        if (!q.newest && !q.after.empty() && !parse_cursor(q.after, after))
            return error{error_kind::invalid_request, "'cursor' is not a valid cursor", "invalid_cursor", "cursor"};
        const auto& ref = q.conversation;
        if (!names_conversation(ref)) return detail::conversation_not_found();
        const auto limit = std::min<std::uint64_t>(q.limit, std::numeric_limits<std::int64_t>::max() - 1);
        // Paging forward, one more than asked for: are there newer ones? (None at all for a limit
        // of 0, which still says whether the conversation exists.)
        const auto fetch = static_cast<std::int64_t>(limit == 0 || q.newest ? limit : limit + 1);
        auto rows = q.newest ? read("read the conversation's messages", select_messages_newest,
                                    {std::string_view{ref.id}, std::string_view{ref.owner}, fetch})
                             : read("read the conversation's messages", select_messages_after,
                                    {std::string_view{ref.id}, std::string_view{ref.owner}, after, fetch});
        if (!rows) return std::move(rows).error();
        const PGresult* r = rows->get();
        if (PQntuples(r) == 0) return detail::conversation_not_found();
        conversation_message_page page;
        for (int i = 0; i < PQntuples(r) && !PQgetisnull(r, i, 0); ++i) {
            if (page.messages.size() == limit) {
                page.next_cursor = std::to_string(postgres_int8(r, i - 1, 0));
                break;
            }
            auto m = message_row(r, i);
            if (!m) return std::move(m).error();
            page.messages.push_back(std::move(*m));
        }
        return page;
    }

    result<void> add_feedback(const feedback_submission& submission) {
        using namespace postgres_store_detail;
        const auto& f = submission.feedback;
        const conversation_ref ref{submission.owner, f.conversation_id};
        if (!names_conversation(ref)) return detail::conversation_not_found();
        if (!conversations_api::is_uuid(f.id))
            return error{error_kind::invalid_request, "a feedback's id must be a UUID", "invalid_id", "id"};
        if (f.feedback_type != "thumbs_up" && f.feedback_type != "thumbs_down" && f.feedback_type != "flag")
            return detail::invalid("'feedback_type' must be one of thumbs_up, thumbs_down, flag", "feedback_type");
        if (f.rating && (*f.rating < 1 || *f.rating > 5)) return detail::invalid("'rating' must be from 1 to 5", "rating");
        if (auto bad = unstorable({{f.comment.value_or(""), "comment"}})) return *bad;
        if (!conversations_api::is_uuid(f.message_id)) { // no message's id: which not-found is it?
            auto rows = read("read the conversation", conversation_exists, {std::string_view{ref.id}, std::string_view{ref.owner}});
            if (!rows) return std::move(rows).error();
            return PQntuples(rows->get()) == 0 ? detail::conversation_not_found() : detail::message_not_found();
        }
        const std::vector<postgres_param> params{std::string_view{f.id},
                                                 std::string_view{f.conversation_id},
                                                 std::string_view{f.message_id},
                                                 std::string_view{f.feedback_type},
                                                 f.rating ? postgres_param{std::int64_t{*f.rating}} : postgres_param::null(),
                                                 nullable(f.comment),
                                                 f.created_at,
                                                 std::string_view{submission.owner}};
        return transact("save the feedback", {{&insert_feedback, params}}, [](results r) -> result<calls> {
            const PGresult* counts = r[0].get();
            if (postgres_int8(counts, 0, 0) == 0) return detail::conversation_not_found();
            if (postgres_int8(counts, 0, 1) == 0) return detail::message_not_found();
            return calls{};
        });
    }

    result<std::vector<feedback>> conversation_feedback(const conversation_ref& ref) {
        using namespace postgres_store_detail;
        if (!names_conversation(ref)) return detail::conversation_not_found();
        auto rows = read("read the conversation's feedback", select_feedback, {std::string_view{ref.id}, std::string_view{ref.owner}});
        if (!rows) return std::move(rows).error();
        const PGresult* r = rows->get();
        if (PQntuples(r) == 0) return detail::conversation_not_found();
        std::vector<feedback> all;
        for (int i = 0; i < PQntuples(r) && !PQgetisnull(r, i, 0); ++i) {
            feedback f{postgres_bytes(r, i, 0), postgres_bytes(r, i, 1), postgres_bytes(r, i, 2), postgres_bytes(r, i, 3)};
            if (!PQgetisnull(r, i, 4)) f.rating = static_cast<int>(postgres_int8(r, i, 4));
            if (!PQgetisnull(r, i, 5)) f.comment = postgres_bytes(r, i, 5);
            f.created_at = postgres_int8(r, i, 6);
            all.push_back(std::move(f));
        }
        return all;
    }

private:
    using calls = postgres_connection_pool::lease::calls;
    using results = std::span<const postgres_result>;

    struct pending {
        const exchange* entry;
        std::optional<error> failure{};
        bool done = false;
    };

    struct state {
        explicit state(postgres_connection_pool p) : pool(std::move(p)) {}
        postgres_connection_pool pool;
        std::mutex queue_mutex;
        std::condition_variable queue_changed;
        std::vector<pending*> queue; // each entry lives on its caller's stack until `done`
        bool writing = false;
        std::function<void(std::size_t, std::chrono::duration<double>)> on_commit;
    };

    static error unavailable(std::string_view action, const error& why) {
        // The pool's messages name the server and quote PostgreSQL's, which never quote a bound
        // parameter's value, so no content leaks (and the password was scrubbed).
        return error{error_kind::unavailable, "history store could not " + std::string(action) + ": " + why.message, "store_unavailable"};
    }

    // A cursor is a row id: a positive decimal integer.
    static bool parse_cursor(std::string_view text, std::int64_t& id) noexcept {
        if (text.empty() || text.front() < '0' || text.front() > '9') return false;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
        return ec == std::errc{} && end == text.data() + text.size() && id > 0;
    }

    static error conversation_unavailable(std::string_view action, const error& why) {
        return error{error_kind::unavailable, "conversation store could not " + std::string(action) + ": " + why.message,
                     "store_unavailable"};
    }

    // A value a text column would refuse, as the client's error (its field named, never quoted).
    static std::optional<error> unstorable(std::initializer_list<std::pair<std::string_view, const char*>> fields) {
        for (const auto& [value, name] : fields)
            if (!postgres_store_detail::storable_text(value))
                return detail::invalid("'" + std::string{name} + "' must be UTF-8 text without NUL characters", name, "invalid_text");
        return std::nullopt;
    }

    static result<std::string> metadata_text(const nlohmann::json& metadata) {
        if (!metadata.is_object()) return detail::invalid("'metadata' must be a JSON object", "metadata", "invalid_type");
        std::string text = dump_json(metadata);
        if (!postgres_store_detail::jsonb_storable(text))
            return detail::invalid("'metadata' must not contain NUL characters (\\u0000)", "metadata", "invalid_text");
        return text;
    }

    static bool names_conversation(const conversation_ref& ref) noexcept {
        return conversations_api::is_uuid(ref.id) && postgres_store_detail::storable_text(ref.owner);
    }

    // A conversations cursor: "<created_at>_<seq>" of the last conversation of the page before.
    static bool parse_conversation_cursor(std::string_view text, std::int64_t& created_at, std::int64_t& seq) noexcept {
        const auto split = text.find('_');
        if (split == std::string_view::npos) return false;
        const std::string_view at = text.substr(0, split);
        const auto [end, ec] = std::from_chars(at.data(), at.data() + at.size(), created_at);
        return !at.empty() && ec == std::errc{} && end == at.data() + at.size() && parse_cursor(text.substr(split + 1), seq);
    }

    // Columns: id, owner, user_id, title, metadata, created_at, updated_at (see the statements).
    static result<conversation> conversation_row(const PGresult* r, int row) {
        conversation c;
        c.id = postgres_bytes(r, row, 0);
        c.owner = postgres_bytes(r, row, 1);
        c.user_id = postgres_bytes(r, row, 2);
        if (!PQgetisnull(r, row, 3)) c.title = postgres_bytes(r, row, 3);
        c.metadata = nlohmann::json::parse(postgres_bytes(r, row, 4), nullptr, false);
        if (!c.metadata.is_object()) return error{error_kind::internal, "stored conversation has malformed metadata", "store_corrupt"};
        c.created_at = postgres_int8(r, row, 5);
        c.updated_at = postgres_int8(r, row, 6);
        return c;
    }

    // Columns: seq, id, conversation_id, role, content, provider, model, prompt_tokens,
    // completion_tokens, cost_usd, latency_ms, ttft_ms, request_id, created_at.
    static result<conversation_message> message_row(const PGresult* r, int row) {
        const auto optional_float8 = [&](int column) {
            return PQgetisnull(r, row, column) ? std::optional<double>{} : postgres_float8(r, row, column);
        };
        conversation_message m;
        m.id = postgres_bytes(r, row, 1);
        m.conversation_id = postgres_bytes(r, row, 2);
        const auto role = parse_role(postgres_bytes(r, row, 3));
        if (!role) return error{error_kind::internal, "stored message has an unknown role", "store_corrupt"};
        m.role = *role;
        m.content = postgres_bytes(r, row, 4);
        m.provider = postgres_bytes(r, row, 5);
        m.model = postgres_bytes(r, row, 6);
        if (!PQgetisnull(r, row, 7))
            m.usage = token_usage{static_cast<int>(postgres_int8(r, row, 7)),
                                  PQgetisnull(r, row, 8) ? 0 : static_cast<int>(postgres_int8(r, row, 8))};
        m.cost_usd = optional_float8(9);
        m.latency_ms = optional_float8(10);
        m.time_to_first_token_ms = optional_float8(11);
        m.request_id = postgres_bytes(r, row, 12);
        m.created_at = postgres_int8(r, row, 13);
        return m;
    }

    // One statement on a pooled connection (retried as with_retry says: it changes nothing).
    result<postgres_result> read(std::string_view action, const postgres_statement& st, const std::vector<postgres_param>& params) {
        auto rows = with_retry([&](postgres_connection_pool::lease& c) { return c.prepared(st, params); });
        if (!rows) return conversation_unavailable(action, rows.error());
        return rows;
    }

    // A conversation write, in two round trips: BEGIN and `first` together; then what `then`
    // makes of their results (`first`'s, in order) sent with the COMMIT, or `then`'s error
    // (not found), which rolls the transaction back. Returns after the COMMIT. The first trip is
    // retried on a connection found stale, as the history's BEGIN is: nothing was committed.
    // A failure after it is not, since the COMMIT may have been applied unseen.
    template <class Then>
    result<void> transact(std::string_view action, const calls& first, Then then) {
        using namespace postgres_store_detail;
        auto& pool = state_->pool;
        calls opening{{&begin_transaction, {}}};
        opening.insert(opening.end(), first.begin(), first.end());
        std::vector<postgres_result> opened;
        std::optional<postgres_connection_pool::lease> held;
        auto begun = with_retry([&](postgres_connection_pool::lease& c) -> result<void> {
            auto r = c.pipeline_all(opening);
            if (!r) {
                if (!c.broken()) (void)c.exec("ROLLBACK"); // its failure only closes the connection
                return std::move(r).error();
            }
            opened = std::move(*r);
            held.emplace(std::move(c)); // keeps the connection for the rest of the transaction
            return {};
        });
        if (!begun) return conversation_unavailable(action, begun.error());
        auto& c = *held;
        auto rest = then(results{opened}.subspan(1));
        if (!rest) {
            (void)c.exec("ROLLBACK");
            return std::move(rest).error();
        }
        rest->emplace_back(&commit, std::vector<postgres_param>{});
        auto done = c.pipeline(*rest);
        // COMMIT of a transaction that failed answers ROLLBACK, not an error.
        if (done && std::string_view{PQcmdStatus(done->get())} == "COMMIT") return {};
        const error why = done ? error{error_kind::unavailable, "PostgreSQL " + pool.described() + ": the transaction was rolled back",
                                       "store_unavailable"}
                               : std::move(done).error();
        if (c.broken()) pool.close_idle();
        else (void)c.exec("ROLLBACK");
        return conversation_unavailable(action, why);
    }

    // Retries once on a fresh connection (postgres_connection_pool::with_connection says when).
    template <class F>
    auto with_retry(F&& f) -> decltype(f(std::declval<postgres_connection_pool::lease&>())) {
        return state_->pool.with_connection(std::forward<F>(f));
    }

    // Called as leader with the lock held; takes the queue, writes it unlocked, reports to all.
    // Returns with the lock released (on_commit runs unlocked, so it delays no other caller).
    void write_queue(std::unique_lock<std::mutex>& lock) {
        auto& s = *state_;
        s.writing = true;
        std::vector<pending*> batch;
        batch.swap(s.queue);
        lock.unlock();
        const auto started = std::chrono::steady_clock::now();
        std::optional<error> failure;
        try {
            failure = write(batch);
        } catch (...) {
            // The batch holds other callers' exchanges: they must be answered, not left waiting.
            // (The lease's connection, left inside its transaction, is closed, not lent again.)
            failure = error{error_kind::internal, "history store failed while saving"};
        }
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
        lock.lock();
        for (pending* p : batch) {
            p->failure = failure;
            p->done = true;
        }
        s.writing = false;
        s.queue_changed.notify_all(); // wakes this batch's callers, and one queued caller to lead
        const std::size_t size = batch.size();
        lock.unlock();
        if (!failure && s.on_commit) s.on_commit(size, took);
    }

    // One transaction for the batch. A failure after BEGIN is not retried: the caller does not
    // know whether the server committed it before the connection broke, so it is not acknowledged
    // (the client may retry), and nothing acknowledged can be lost.
    std::optional<error> write(const std::vector<pending*>& batch) {
        using namespace postgres_store_detail;
        auto& pool = state_->pool;
        std::optional<postgres_connection_pool::lease> held;
        auto begun = with_retry([&](postgres_connection_pool::lease& c) {
            auto r = c.exec("BEGIN");
            if (r) held.emplace(std::move(c)); // keeps the connection for the rest of the transaction
            return r;
        });
        if (!begun) return unavailable("save the exchange", begun.error());
        auto& c = *held;
        auto step = [&]() -> result<void> {
            // The rest of the transaction in one round trip: the lock, every insert, the COMMIT.
            std::vector<std::pair<const postgres_statement*, std::vector<postgres_param>>> calls;
            calls.emplace_back(&lock_writes, std::vector<postgres_param>{});
            for (const pending* p : batch) {
                const exchange& e = *p->entry;
                for (const message& m : e.messages)
                    calls.emplace_back(&insert_message,
                                       std::vector<postgres_param>{std::string_view{e.user_id}, to_string(m.role),
                                                                   std::string_view{m.content}, std::string_view{e.model},
                                                                   std::int64_t{e.created_at}, std::string_view{e.request_id}});
            }
            calls.emplace_back(&commit, std::vector<postgres_param>{});
            auto r = c.pipeline(calls);
            if (!r) return std::move(r).error();
            // COMMIT of a transaction that failed answers ROLLBACK, not an error.
            if (std::string_view{PQcmdStatus(r->get())} != "COMMIT")
                return error{error_kind::unavailable, "PostgreSQL " + pool.described() + ": the transaction was rolled back",
                             "store_unavailable"};
            return {};
        };
        auto done = step();
        if (done) return std::nullopt;
        if (c.broken()) pool.close_idle(); // the server went away: the idle connections are as stale
        else (void)c.exec("ROLLBACK");     // its failure only closes the connection (see lease)
        return unavailable("save the exchange", done.error());
    }

    std::unique_ptr<state> state_;
};

static_assert(store<postgres_store>);
static_assert(conversation_store<postgres_store>);

} // namespace chatkit
