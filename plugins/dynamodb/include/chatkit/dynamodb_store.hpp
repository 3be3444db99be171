// chatkit::dynamodb_store: conversation history in an Amazon DynamoDB table, for deployments with
// no disk to keep (Lambda), and, with a second table, conversations (chatkit::conversation_store).
// Talks DynamoDB's JSON protocol through chatkit::aws::json_client (SigV4, pooled connections,
// retries on throttling).
//
// History table design: one item per exchange, so an exchange is written whole or not at all by a
// single PutItem (no transaction needed, one write unit for a typical exchange):
//   user_id      (S, partition key)
//   exchange_key (S, sort key)  "<created_at ms, 13 digits>-<16 hex: per-process counter><8 hex: writer>"
//   messages     (L of M{role: S, content: S}), model (S), request_id (S), created_at (N, ms)
//   expires_at   (N, epoch seconds; only with a ttl) — name it as the table's TTL attribute
// The sort key orders a user's exchanges by time, then by append order within one process; the
// writer part keeps concurrent Lambda instances apart. A message's id is "<exchange_key>.<index>".
// The item is written with attribute_not_exists, so an exchange never overwrites another.
//
// Conversations table design (`conversations_table`; empty: no conversations are kept and every
// conversation member answers as chatkit::no_conversations). One partition per conversation, with
// generic keys pk (S, partition) and sk (S, sort), and one global index, gsi1 (projection ALL):
//   pk "CONV#<id>", sk "#META"   the conversation: id, owner, user_id, title (absent: none),
//       metadata (S, JSON text), created_at, updated_at (N, ms), the running totals message_count,
//       total_tokens, total_cost_usd (N), and its listing keys gsi1pk "<owner's length>:<owner>#<user_id>"
//       (the length keeps owner "a#b" with user "c" apart from owner "a" with user "b#c") and
//       gsi1sk "<created_at, 13 digits>-<order>"; `deleting` (BOOL) while a delete is under way
//   sk "MSG#<order>#<index, 2 digits>"   a message of an append; one <order> per append, so its
//       messages sit next to each other, in order
//   sk "MID#<message id>"   the message's id, with msg_sk naming its item: what feedback checks
//   sk "FB#<order>"         a feedback
// <order> is "<16 hex: per-process clock><8 hex: writer>", as in exchange_key: insertion order
// within a process, wall-clock order across processes. Every member reads #META first (owner and
// existence), so another owner's conversation, or one being deleted, is not found. An append is
// one TransactWriteItems: an Update of #META (conditioned on owner and existence; sets updated_at,
// adds to the totals) and a Put per message and per MID, so it is all or nothing and cannot land
// in a deleted conversation. A delete marks #META `deleting` and takes it out of the index
// (conditioned on the owner), deletes the rest of the partition (Query + BatchWriteItem), then
// #META: a delete that fails half-way leaves an invisible conversation that a retry finishes.
#pragma once

#include "chatkit/aws/json_client.hpp"
#include "chatkit/conversation_store.hpp"
#include "chatkit/json_text.hpp"
#include "chatkit/store.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace chatkit {

struct dynamodb_options {
    std::string table;
    std::chrono::seconds ttl{0};       // items expire this long after created_at (the table's TTL on
                                       // `expires_at` deletes them); 0: kept forever
    bool consistent_reads = true;      // history shows an exchange as soon as its reply was acknowledged
    aws::json_client_options client{}; // region, endpoint (AWS_ENDPOINT_URL_DYNAMODB), timeouts, retries
    // Not the store's: the table of API keys and teams of the same database
    // (chatkit::dynamodb_key_directory), so that one URL says where everything lives, as a SQLite
    // path does. parse_dynamodb_url fills in "TABLE-keys" when the URL names none.
    std::string keys_table{};
    // Likewise the table of usage records (chatkit::dynamodb_usage_store); "TABLE-usage" when the
    // URL names none.
    std::string usage_table{};
    // And the table of the limits' counters (chatkit::dynamodb_counter_store); "TABLE-limits" when
    // the URL names none.
    std::string limits_table{};
    // The store's own second table, of conversations (the design at the top of this file). Empty:
    // no conversations are kept, and the conversation members answer as chatkit::no_conversations
    // (not found), so a deployment without the table works as before. No default name, unlike the
    // tables above: a store must not start writing to a table nobody created.
    std::string conversations_table{};
};

// DynamoDB's own rule for table names: 3-255 characters of A-Z a-z 0-9 _ - .
inline bool valid_dynamodb_table_name(std::string_view name) {
    return name.size() >= 3 && name.size() <= 255 && std::all_of(name.begin(), name.end(), [](char c) {
               return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
           });
}

// "dynamodb://TABLE?region=REGION&ttl_days=N&keys_table=KEYS&usage_table=USAGE&limits_table=LIMITS
//  &conversations_table=CONVERSATIONS" (every parameter optional) →
// options, or an invalid_database_url error saying what is wrong.
inline result<dynamodb_options> parse_dynamodb_url(std::string_view url) {
    constexpr std::string_view scheme = "dynamodb://";
    const auto bad = [whole = std::string{url}](std::string why) {
        return error{error_kind::invalid_request, "'" + whole + "': " + std::move(why), "invalid_database_url"};
    };
    if (!url.starts_with(scheme)) return bad("must start with dynamodb://");
    url.remove_prefix(scheme.size());
    const auto q = url.find('?');
    dynamodb_options o;
    o.table = std::string{url.substr(0, q)};
    if (!valid_dynamodb_table_name(o.table)) return bad("the table name must be 3-255 characters of A-Z a-z 0-9 _ - .");
    httplib::Params params; // parsed and decoded as the HTTP adapter parses a query
    if (q != std::string_view::npos) httplib::detail::parse_query_text(std::string{url.substr(q + 1)}, params);
    for (const auto& [key, value] : params) {
        if (key == "region") {
            if (value.empty()) return bad("region is empty (leave it out to use AWS_REGION)");
            o.client.region = value;
        } else if (key == "ttl_days") {
            long days = -1;
            const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), days);
            if (ec != std::errc{} || end != value.data() + value.size() || days < 0 || days > 36'500)
                return bad("ttl_days must be a whole number of days from 0 to 36500");
            o.ttl = std::chrono::hours{24 * days};
        } else if (key == "keys_table") {
            if (!valid_dynamodb_table_name(value)) return bad("keys_table must be 3-255 characters of A-Z a-z 0-9 _ - .");
            o.keys_table = value;
        } else if (key == "usage_table") {
            if (!valid_dynamodb_table_name(value)) return bad("usage_table must be 3-255 characters of A-Z a-z 0-9 _ - .");
            o.usage_table = value;
        } else if (key == "limits_table") {
            if (!valid_dynamodb_table_name(value)) return bad("limits_table must be 3-255 characters of A-Z a-z 0-9 _ - .");
            o.limits_table = value;
        } else if (key == "conversations_table") {
            if (!valid_dynamodb_table_name(value)) return bad("conversations_table must be 3-255 characters of A-Z a-z 0-9 _ - .");
            o.conversations_table = value;
        } else
            return bad("unknown parameter '" + std::string{key} +
                       "' (known: region, ttl_days, keys_table, usage_table, limits_table, conversations_table)");
    }
    if (o.keys_table.empty()) {
        o.keys_table = o.table + "-keys";
        if (!valid_dynamodb_table_name(o.keys_table))
            return bad("the table name is too long to name its keys table TABLE-keys: give keys_table=NAME");
    }
    if (o.usage_table.empty()) {
        o.usage_table = o.table + "-usage";
        if (!valid_dynamodb_table_name(o.usage_table))
            return bad("the table name is too long to name its usage table TABLE-usage: give usage_table=NAME");
    }
    if (o.limits_table.empty()) {
        o.limits_table = o.table + "-limits";
        if (!valid_dynamodb_table_name(o.limits_table))
            return bad("the table name is too long to name its limits table TABLE-limits: give limits_table=NAME");
    }
    return o;
}

class dynamodb_store {
public:
    // Throws std::invalid_argument when no region can be found or the endpoint is unusable. The
    // table must exist (see create_table_input()); nothing is called until the first request.
    explicit dynamodb_store(dynamodb_options options, aws::environment env = aws::process_environment())
        : options_(std::move(options)), client_(service(), options_.client, std::move(env)) {}

    static aws::json_service service() { return {"DynamoDB", "dynamodb", "DynamoDB_20120810", "1.0", "DYNAMODB"}; }

    // A CreateTable input for this design (on-demand billing), e.g. for a local emulator; the
    // deployment template creates the same table with TTL and backups turned on.
    static nlohmann::json create_table_input(const std::string& table) {
        return {
            {"TableName", table},
            {"AttributeDefinitions",
             {{{"AttributeName", "user_id"}, {"AttributeType", "S"}}, {{"AttributeName", "exchange_key"}, {"AttributeType", "S"}}}},
            {"KeySchema", {{{"AttributeName", "user_id"}, {"KeyType", "HASH"}}, {{"AttributeName", "exchange_key"}, {"KeyType", "RANGE"}}}},
            {"BillingMode", "PAY_PER_REQUEST"}};
    }

    result<void> append(const exchange& e) {
        if (e.messages.empty()) return {};
        nlohmann::json messages = nlohmann::json::array();
        for (const auto& m : e.messages)
            messages.push_back({{"M", {{"role", {{"S", to_string(m.role)}}}, {"content", {{"S", m.content}}}}}});
        nlohmann::json item = {{"user_id", {{"S", e.user_id}}},
                               {"created_at", {{"N", std::to_string(e.created_at)}}},
                               {"messages", {{"L", std::move(messages)}}}};
        if (!e.model.empty()) item["model"] = {{"S", e.model}};
        if (!e.request_id.empty()) item["request_id"] = {{"S", e.request_id}};
        if (options_.ttl.count() > 0) item["expires_at"] = {{"N", std::to_string(e.created_at / 1000 + options_.ttl.count())}};

        // The client retries a PutItem whose answer was lost; if the first try had landed, the
        // retry fails its condition. Keys are unique to this process (counter + writer), so a
        // failed condition means our own item is there: the exchange is stored. A fresh key is
        // only needed if another writer drew the same 32-bit writer id and counter value.
        for (int collisions = 0;; ++collisions) {
            item["exchange_key"] = {{"S", next_exchange_key(e.created_at)}};
            auto put = client_.call(
                "PutItem", {{"TableName", options_.table}, {"Item", item}, {"ConditionExpression", "attribute_not_exists(exchange_key)"}});
            if (put) return {};
            if (put.error().code != "ConditionalCheckFailedException" || collisions == 2) return store_error(std::move(put).error());
            if (stored(e.user_id, item["exchange_key"]["S"], e.request_id)) return {};
        }
    }

    result<history_page> history(const history_query& q) {
        std::optional<message_id> before;
        if (!q.before.empty()) {
            before = message_id::parse(q.before);
            if (!before) return error{error_kind::invalid_request, "'before' is not a valid cursor", "invalid_cursor", "before"};
        }
        history_page page;
        if (q.limit == 0) return page;

        // Newest first, one message more than asked for: it tells whether older ones remain.
        const std::size_t wanted = q.limit + 1;
        std::vector<stored_message> newest_first;
        nlohmann::json input = {{"TableName", options_.table},
                                {"KeyConditionExpression", before ? "user_id = :u AND exchange_key <= :k" : "user_id = :u"},
                                {"ExpressionAttributeValues", {{":u", {{"S", q.user_id}}}}},
                                {"ScanIndexForward", false},
                                {"ConsistentRead", options_.consistent_reads},
                                // DynamoDB deletes expired items days late, if ever; they are not history.
                                {"FilterExpression", "attribute_not_exists(expires_at) OR expires_at > :now"}};
        const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
        input["ExpressionAttributeValues"][":now"] = {{"N", std::to_string(now.count())}};
        if (before) input["ExpressionAttributeValues"][":k"] = {{"S", before->exchange_key}};
        while (newest_first.size() < wanted) {
            // Every item holds at least one message, so this many items are enough.
            input["Limit"] = std::min<std::size_t>(wanted - newest_first.size(), 1000);
            auto answer = client_.call("Query", input);
            if (!answer) return store_error(std::move(answer).error());
            const auto items = answer->find("Items");
            if (items == answer->end() || !items->is_array()) return malformed("Query answered without Items");
            for (const auto& item : *items)
                if (!read_exchange(item, before, newest_first)) return malformed("an item of the table is not a chatkit exchange");
            const auto last = answer->find("LastEvaluatedKey");
            if (last == answer->end() || !last->is_object()) break;
            input["ExclusiveStartKey"] = *last;
        }
        if (newest_first.size() > q.limit) {
            newest_first.resize(q.limit);
            page.next_cursor = newest_first.back().id;
        }
        page.messages.assign(std::make_move_iterator(newest_first.rbegin()), std::make_move_iterator(newest_first.rend()));
        return page;
    }

    component_health health() {
        auto h = client_.health();
        if (h.ok) h.detail = "table " + options_.table + " in " + h.detail;
        return h;
    }

    // ---- Conversations (chatkit/conversation_store.hpp), in options().conversations_table ----

    // The conversations table's one index: a user's conversations, newest first.
    static constexpr std::string_view conversations_index = "gsi1";

    // A CreateTable input for the conversations table (on-demand billing), e.g. for a local
    // emulator; the deployment template creates the same table with backups turned on.
    static nlohmann::json create_conversations_table_input(const std::string& table) {
        const auto key = [](const char* name, const char* type) { return nlohmann::json{{"AttributeName", name}, {"KeyType", type}}; };
        return {{"TableName", table},
                {"AttributeDefinitions",
                 {{{"AttributeName", "pk"}, {"AttributeType", "S"}},
                  {{"AttributeName", "sk"}, {"AttributeType", "S"}},
                  {{"AttributeName", "gsi1pk"}, {"AttributeType", "S"}},
                  {{"AttributeName", "gsi1sk"}, {"AttributeType", "S"}}}},
                {"KeySchema", {key("pk", "HASH"), key("sk", "RANGE")}},
                {"GlobalSecondaryIndexes",
                 {{{"IndexName", conversations_index},
                   {"KeySchema", {key("gsi1pk", "HASH"), key("gsi1sk", "RANGE")}},
                   {"Projection", {{"ProjectionType", "ALL"}}}}}},
                {"BillingMode", "PAY_PER_REQUEST"}};
    }

    [[nodiscard]] bool keeps_conversations() const noexcept { return !options_.conversations_table.empty(); }

    result<void> create_conversation(const conversation& c) {
        if (!keeps_conversations()) return no_conversations{}.create_conversation(c);
        const std::string listed = next_exchange_key(c.created_at); // gsi1sk, unique to this process
        nlohmann::json item = {{"pk", text(conversation_pk(c.id))},
                               {"sk", text(meta_sk)},
                               {"id", text(c.id)},
                               {"owner", text(c.owner)},
                               {"user_id", text(c.user_id)},
                               {"metadata", text(dump_json(c.metadata))},
                               {"created_at", number(c.created_at)},
                               {"updated_at", number(c.updated_at)},
                               {"message_count", number(0)},
                               {"total_tokens", number(0)},
                               {"total_cost_usd", number(0)},
                               {"gsi1pk", text(user_partition(c.owner, c.user_id))},
                               {"gsi1sk", text(listed)}};
        if (c.title) item["title"] = text(*c.title);
        if (item_size(item) > max_item_bytes)
            return error{error_kind::payload_too_large, "the conversation is larger than a DynamoDB item may be (400 KB)",
                         "conversation_too_large"};
        auto put = conversations_call(
            "PutItem", {{"TableName", options_.conversations_table}, {"Item", item}, {"ConditionExpression", "attribute_not_exists(pk)"}});
        if (put) return {};
        if (put.error().code != "ConditionalCheckFailedException") return conversations_error(std::move(put).error());
        // The client retries a PutItem whose answer was lost, and the retry then fails its
        // condition: the item is ours when it has our gsi1sk. Unreadable: as the history's append.
        auto got = get_conversation_item(c.id, meta_sk);
        if (!got || (*got && string_attr(**got, "gsi1sk") == listed)) return {};
        return error{error_kind::invalid_request, "a conversation with this id already exists", "conversation_exists", "id"};
    }

    result<conversation_page> conversations(const conversation_query& q) {
        if (!keeps_conversations()) return no_conversations{}.conversations(q);
        if (!q.cursor.empty() && !is_exchange_key(q.cursor)) return invalid_cursor("cursor");
        conversation_page page;
        if (q.limit == 0) return page;
        // Newest first, one more than asked for: it tells whether more remain.
        const std::size_t wanted = q.limit + 1;
        std::vector<std::pair<conversation, std::string>> found; // with its gsi1sk, the next cursor
        nlohmann::json input = {{"TableName", options_.conversations_table},
                                {"IndexName", conversations_index},
                                {"KeyConditionExpression", q.cursor.empty() ? "gsi1pk = :u" : "gsi1pk = :u AND gsi1sk < :c"},
                                {"ExpressionAttributeValues", {{":u", text(user_partition(q.owner, q.user_id))}}},
                                {"ScanIndexForward", false}};
        if (!q.cursor.empty()) input["ExpressionAttributeValues"][":c"] = text(q.cursor);
        auto read = each_item(
            input,
            [&](const nlohmann::json& item) {
                auto c = read_conversation(item);
                const auto listed = string_attr(item, "gsi1sk");
                if (!c || !listed) return visit::malformed;
                found.emplace_back(std::move(*c), *listed);
                return found.size() < wanted ? visit::more : visit::done;
            },
            wanted);
        if (!read) return std::move(read).error();
        if (found.size() > q.limit) {
            found.resize(q.limit);
            page.next_cursor = found.back().second;
        }
        for (auto& [c, listed] : found) page.conversations.push_back(std::move(c));
        return page;
    }

    result<conversation> find_conversation(const conversation_ref& r) {
        if (!keeps_conversations()) return no_conversations{}.find_conversation(r);
        auto meta = visible_meta(r);
        if (!meta) return std::move(meta).error();
        auto c = read_conversation(*meta);
        if (!c) return conversations_malformed("the conversation's #META item is not a chatkit conversation");
        return std::move(*c);
    }

    result<conversation> update_conversation(const conversation_update& u) {
        if (!keeps_conversations()) return no_conversations{}.update_conversation(u);
        const auto& r = u.conversation;
        nlohmann::json names = {{"#owner", "owner"}, {"#deleting", "deleting"}, {"#updated", "updated_at"}};
        nlohmann::json values = {{":owner", text(r.owner)}, {":at", number(u.at)}};
        std::string set = "SET #updated = :at", remove;
        if (u.title) {
            names["#title"] = "title";
            if (*u.title) {
                set += ", #title = :title";
                values[":title"] = text(**u.title);
            } else {
                remove = " REMOVE #title";
            }
        }
        if (u.metadata) {
            names["#metadata"] = "metadata";
            set += ", #metadata = :metadata";
            values[":metadata"] = text(dump_json(*u.metadata));
        }
        auto updated = conversations_call("UpdateItem", {{"TableName", options_.conversations_table},
                                                         {"Key", conversation_key(r.id, meta_sk)},
                                                         {"UpdateExpression", set + remove},
                                                         {"ConditionExpression", visible_condition},
                                                         {"ExpressionAttributeNames", std::move(names)},
                                                         {"ExpressionAttributeValues", std::move(values)},
                                                         {"ReturnValues", "ALL_NEW"}});
        if (!updated) {
            if (updated.error().code == "ConditionalCheckFailedException") return detail::conversation_not_found();
            return conversations_error(std::move(updated).error());
        }
        const auto attributes = updated->find("Attributes");
        auto c = attributes == updated->end() ? std::nullopt : read_conversation(*attributes);
        if (!c) return conversations_malformed("UpdateItem answered without the conversation");
        return std::move(*c);
    }

    result<void> delete_conversation(const conversation_ref& r) {
        if (!keeps_conversations()) return no_conversations{}.delete_conversation(r);
        // First out of sight: `deleting` hides it from every member and stops appends and feedback
        // (their conditions), and without gsi1pk it leaves the index. The condition leaves out
        // `deleting`, so a retried delete finishes what a failed one began.
        auto marked = conversations_call("UpdateItem",
                                         {{"TableName", options_.conversations_table},
                                          {"Key", conversation_key(r.id, meta_sk)},
                                          {"UpdateExpression", "SET #deleting = :yes REMOVE gsi1pk, gsi1sk"},
                                          {"ConditionExpression", "attribute_exists(pk) AND #owner = :owner"},
                                          {"ExpressionAttributeNames", {{"#owner", "owner"}, {"#deleting", "deleting"}}},
                                          {"ExpressionAttributeValues", {{":owner", text(r.owner)}, {":yes", {{"BOOL", true}}}}}});
        if (!marked) {
            if (marked.error().code == "ConditionalCheckFailedException") return detail::conversation_not_found();
            return conversations_error(std::move(marked).error());
        }
        // Then every other item of the partition (all sort after "#META"), 25 per BatchWriteItem.
        nlohmann::json keys = nlohmann::json::array();
        const nlohmann::json input = {{"TableName", options_.conversations_table},
                                      {"KeyConditionExpression", "pk = :pk AND sk > :meta"},
                                      {"ExpressionAttributeValues", {{":pk", text(conversation_pk(r.id))}, {":meta", text(meta_sk)}}},
                                      {"ProjectionExpression", "pk, sk"},
                                      {"ConsistentRead", true}};
        std::optional<error> failed;
        auto read = each_item(input, [&](const nlohmann::json& item) {
            if (!item.contains("pk") || !item.contains("sk")) return visit::malformed;
            keys.push_back({{"DeleteRequest", {{"Key", {{"pk", item["pk"]}, {"sk", item["sk"]}}}}}});
            if (keys.size() == max_batch) {
                if (auto written = delete_batch(std::exchange(keys, nlohmann::json::array())); !written) {
                    failed = std::move(written).error();
                    return visit::done;
                }
            }
            return visit::more;
        });
        if (failed) return std::move(*failed);
        if (!read) return std::move(read).error();
        if (!keys.empty())
            if (auto written = delete_batch(std::move(keys)); !written) return written;
        // Last the conversation itself, now that nothing of it is left.
        auto deleted = conversations_call("DeleteItem",
                                          {{"TableName", options_.conversations_table}, {"Key", conversation_key(r.id, meta_sk)}});
        if (!deleted) return conversations_error(std::move(deleted).error());
        return {};
    }

    result<void> append_to_conversation(const conversation_append& a) {
        if (!keeps_conversations()) return no_conversations{}.append_to_conversation(a);
        const auto& r = a.conversation;
        // TransactWriteItems takes at most 100 items: the #META update, then two per message.
        if (a.messages.size() > max_append)
            return error{error_kind::payload_too_large,
                         "at most " + std::to_string(max_append) + " messages can be appended to a conversation at once",
                         "conversation_append_too_large"};
        std::int64_t tokens = 0;
        double cost = 0;
        for (const auto& m : a.messages) {
            if (m.usage) tokens += m.usage->total_tokens();
            if (m.cost_usd && std::isfinite(*m.cost_usd)) cost += *m.cost_usd;
        }
        nlohmann::json update = nlohmann::json::object();
        update["Update"] = {{"TableName", options_.conversations_table},
                            {"Key", conversation_key(r.id, meta_sk)},
                            {"UpdateExpression", "SET #updated = :at ADD #count :count, #tokens :tokens, #cost :cost"},
                            {"ConditionExpression", visible_condition},
                            {"ExpressionAttributeNames",
                             {{"#owner", "owner"},
                              {"#deleting", "deleting"},
                              {"#updated", "updated_at"},
                              {"#count", "message_count"},
                              {"#tokens", "total_tokens"},
                              {"#cost", "total_cost_usd"}}},
                            {"ExpressionAttributeValues",
                             {{":owner", text(r.owner)},
                              {":at", number(a.at)},
                              {":count", number(static_cast<std::int64_t>(a.messages.size()))},
                              {":tokens", number(tokens)},
                              {":cost", decimal(cost)}}}};
        // A fresh order only if another writer holds this one (see create_conversation's retry).
        for (int collisions = 0;; ++collisions) {
            const std::string order = next_order();
            nlohmann::json items = nlohmann::json::array();
            items.push_back(update);
            for (std::size_t i = 0; i < a.messages.size(); ++i) {
                const auto sk = message_sk(order, i);
                auto item = message_item(r.id, sk, a.messages[i]);
                if (item_size(item) > max_item_bytes)
                    return error{error_kind::payload_too_large, "a message is larger than a DynamoDB item may be (400 KB)",
                                 "message_too_large"};
                items.push_back(put_new(std::move(item)));
                items.push_back(put_new({{"pk", text(conversation_pk(r.id))},
                                         {"sk", text(std::string{message_id_prefix} + a.messages[i].id)},
                                         {"msg_sk", text(sk)}}));
            }
            std::vector<std::string> reasons;
            auto written = transact(std::move(items), reasons);
            if (written) return {};
            if (reason_is(reasons, 0, condition_failed)) return detail::conversation_not_found();
            if (a.messages.empty() || std::find(reasons.begin(), reasons.end(), condition_failed) == reasons.end())
                return conversations_error(std::move(written).error());
            // A Put's condition failed. A retried transaction whose first try landed fails so: the
            // first message is then ours. Unreadable: kept, as the history's append does.
            auto mine = get_conversation_item(r.id, message_sk(order, 0));
            if (!mine || (*mine && string_attr(**mine, "id") == a.messages.front().id)) return {};
            for (std::size_t i = 0; i < a.messages.size(); ++i)
                if (reason_is(reasons, 2 + 2 * i, condition_failed))
                    return error{error_kind::invalid_request, "the conversation already has a message with the id " + a.messages[i].id,
                                 "duplicate_message_id", "id"};
            if (collisions == 2) return conversations_error(std::move(written).error());
        }
    }

    result<conversation_message_page> conversation_messages(const conversation_message_query& q) {
        if (!keeps_conversations()) return no_conversations{}.conversation_messages(q);
        if (!q.newest && !q.after.empty() && !is_message_cursor(q.after)) return invalid_cursor("cursor");
        auto meta = visible_meta(q.conversation);
        if (!meta) return std::move(meta).error();
        conversation_message_page page;
        if (q.limit == 0) return page;
        const auto& id = q.conversation.id;
        nlohmann::json input = {{"TableName", options_.conversations_table},
                                {"ConsistentRead", options_.consistent_reads},
                                {"ExpressionAttributeValues", {{":pk", text(conversation_pk(id))}}}};
        std::vector<std::pair<conversation_message, std::string>> found; // with its sk
        const auto keep = [&](std::size_t wanted, const std::string& skip) {
            return [&found, &id, wanted, skip](const nlohmann::json& item) {
                const auto sk = string_attr(item, "sk");
                if (!sk) return visit::malformed;
                if (*sk == skip) return visit::more;
                auto m = read_message(item, id);
                if (!m) return visit::malformed;
                found.emplace_back(std::move(*m), *sk);
                return found.size() < wanted ? visit::more : visit::done;
            };
        };
        if (q.newest) {
            // The last `limit`: newest first, then turned around.
            input["KeyConditionExpression"] = "pk = :pk AND begins_with(sk, :msg)";
            input["ExpressionAttributeValues"][":msg"] = text(message_prefix);
            input["ScanIndexForward"] = false;
            auto read = each_item(input, keep(q.limit, {}), q.limit);
            if (!read) return std::move(read).error();
            for (auto it = found.rbegin(); it != found.rend(); ++it) page.messages.push_back(std::move(it->first));
            return page;
        }
        // Oldest first from the cursor (the sk of the last message of the previous page, which
        // BETWEEN includes: skipped), one more than asked for: it tells whether more remain.
        const std::size_t wanted = q.limit + 1;
        std::string skip;
        if (q.after.empty()) {
            input["KeyConditionExpression"] = "pk = :pk AND begins_with(sk, :msg)";
            input["ExpressionAttributeValues"][":msg"] = text(message_prefix);
        } else {
            skip = std::string{message_prefix} + q.after;
            input["KeyConditionExpression"] = "pk = :pk AND sk BETWEEN :from AND :to";
            input["ExpressionAttributeValues"][":from"] = text(skip);
            input["ExpressionAttributeValues"][":to"] = text(message_prefix_end);
        }
        auto read = each_item(input, keep(wanted, skip), wanted + (skip.empty() ? 0 : 1));
        if (!read) return std::move(read).error();
        if (found.size() > q.limit) {
            found.resize(q.limit);
            page.next_cursor = found.back().second.substr(message_prefix.size());
        }
        for (auto& [m, sk] : found) page.messages.push_back(std::move(m));
        return page;
    }

    result<void> add_feedback(const feedback_submission& f) {
        if (!keeps_conversations()) return no_conversations{}.add_feedback(f);
        const auto& fb = f.feedback;
        // One transaction: the conversation is visible to this owner, the message is one of its
        // own (its MID item), and the feedback is new. Each failed condition says which.
        for (int collisions = 0;; ++collisions) {
            const std::string sk = std::string{feedback_prefix} + next_order();
            nlohmann::json item = {{"pk", text(conversation_pk(fb.conversation_id))},
                                   {"sk", text(sk)},
                                   {"id", text(fb.id)},
                                   {"message_id", text(fb.message_id)},
                                   {"feedback_type", text(fb.feedback_type)},
                                   {"created_at", number(fb.created_at)}};
            if (fb.rating) item["rating"] = number(*fb.rating);
            if (fb.comment) item["comment"] = text(*fb.comment);
            if (item_size(item) > max_item_bytes)
                return error{error_kind::payload_too_large, "the feedback is larger than a DynamoDB item may be (400 KB)",
                             "feedback_too_large"};
            nlohmann::json conversation_visible = nlohmann::json::object();
            conversation_visible["ConditionCheck"] = {{"TableName", options_.conversations_table},
                                                      {"Key", conversation_key(fb.conversation_id, meta_sk)},
                                                      {"ConditionExpression", visible_condition},
                                                      {"ExpressionAttributeNames", {{"#owner", "owner"}, {"#deleting", "deleting"}}},
                                                      {"ExpressionAttributeValues", {{":owner", text(f.owner)}}}};
            nlohmann::json message_there = nlohmann::json::object();
            message_there["ConditionCheck"] = {
                {"TableName", options_.conversations_table},
                {"Key", conversation_key(fb.conversation_id, std::string{message_id_prefix} + fb.message_id)},
                {"ConditionExpression", "attribute_exists(pk)"}};
            nlohmann::json items = nlohmann::json::array();
            items.push_back(std::move(conversation_visible));
            items.push_back(std::move(message_there));
            items.push_back(put_new(std::move(item)));
            std::vector<std::string> reasons;
            auto written = transact(std::move(items), reasons);
            if (written) return {};
            if (reason_is(reasons, 0, condition_failed)) return detail::conversation_not_found();
            if (reason_is(reasons, 1, condition_failed)) return detail::message_not_found();
            if (!reason_is(reasons, 2, condition_failed)) return conversations_error(std::move(written).error());
            // The feedback's own Put failed: ours from a lost answer, or another writer's order.
            auto mine = get_conversation_item(fb.conversation_id, sk);
            if (!mine || (*mine && string_attr(**mine, "id") == fb.id)) return {};
            if (collisions == 2) return conversations_error(std::move(written).error());
        }
    }

    result<std::vector<feedback>> conversation_feedback(const conversation_ref& r) {
        if (!keeps_conversations()) return no_conversations{}.conversation_feedback(r);
        auto meta = visible_meta(r);
        if (!meta) return std::move(meta).error();
        std::vector<feedback> all;
        const nlohmann::json input = {{"TableName", options_.conversations_table},
                                      {"KeyConditionExpression", "pk = :pk AND begins_with(sk, :fb)"},
                                      {"ExpressionAttributeValues", {{":pk", text(conversation_pk(r.id))}, {":fb", text(feedback_prefix)}}},
                                      {"ConsistentRead", options_.consistent_reads}};
        auto read = each_item(input, [&](const nlohmann::json& item) {
            auto f = read_feedback(item, r.id);
            if (!f) return visit::malformed;
            all.push_back(std::move(*f));
            return visit::more;
        });
        if (!read) return std::move(read).error();
        return all;
    }

    [[nodiscard]] const dynamodb_options& options() const noexcept { return options_; }
    [[nodiscard]] aws::json_client& client() noexcept { return client_; }

private:
    // "<exchange_key>.<index>"
    struct message_id {
        std::string exchange_key;
        std::size_t index = 0;

        static std::optional<message_id> parse(std::string_view id) {
            constexpr std::size_t key_size = 13 + 1 + 24;
            if (id.size() < key_size + 2 || id.size() > key_size + 6 || id[13] != '-' || id[key_size] != '.') return std::nullopt;
            const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
            const auto is_hex = [&](char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); };
            if (!std::all_of(id.begin(), id.begin() + 13, is_digit) || !std::all_of(id.begin() + 14, id.begin() + key_size, is_hex))
                return std::nullopt;
            message_id m{std::string{id.substr(0, key_size)}};
            const auto digits = id.substr(key_size + 1);
            const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), m.index);
            if (ec != std::errc{} || end != digits.data() + digits.size()) return std::nullopt;
            return m;
        }
    };

    // "<16 hex><8 hex>": a hybrid clock (microseconds of wall time, but never the same value twice
    // in a process), then a random writer id drawn once per process.
    static std::string next_order() {
        static std::atomic<std::uint64_t> last{0};
        static const std::uint32_t writer = std::random_device{}();
        const auto now = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
        std::uint64_t prev = last.load(), next = 0;
        do next = std::max(prev + 1, now);
        while (!last.compare_exchange_weak(prev, next));
        char order[32];
        std::snprintf(order, sizeof order, "%016llx%08x", static_cast<unsigned long long>(next), static_cast<unsigned>(writer));
        return order;
    }
    static constexpr std::size_t order_size = 24;

    static std::string next_exchange_key(unix_ms created_at) {
        char time[32];
        std::snprintf(time, sizeof time, "%013lld-", static_cast<long long>(std::max<unix_ms>(created_at, 0)));
        return time + next_order();
    }
    static bool is_exchange_key(std::string_view key) {
        const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
        return key.size() == 14 + order_size && key[13] == '-' && std::all_of(key.begin(), key.begin() + 13, is_digit) &&
               is_order(key.substr(14));
    }
    static bool is_order(std::string_view order) {
        return order.size() == order_size &&
               std::all_of(order.begin(), order.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
    }

    // Whether the item under `key` is this exchange (after a failed condition).
    bool stored(const std::string& user_id, const std::string& key, const std::string& request_id) {
        auto got = client_.call("GetItem", {{"TableName", options_.table},
                                            {"Key", {{"user_id", {{"S", user_id}}}, {"exchange_key", {{"S", key}}}}},
                                            {"ConsistentRead", true}});
        // Unreadable: keep the write. The key is this writer's own, so the failed condition was all
        // but certainly our lost answer; writing again would store the exchange twice.
        if (!got) return true;
        if (!got->contains("Item")) return false;
        const auto& item = (*got)["Item"];
        return item.contains("request_id") ? item["request_id"].value("S", "") == request_id : request_id.empty();
    }

    static std::optional<std::string> string_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end() || !it->is_object()) return std::nullopt;
        const auto s = it->find("S");
        if (s == it->end() || !s->is_string()) return std::nullopt;
        return s->get<std::string>();
    }

    // Appends the item's messages, newest first, skipping those at or after `before`.
    static bool read_exchange(const nlohmann::json& item, const std::optional<message_id>& before,
                              std::vector<stored_message>& newest_first) {
        const auto key = string_attr(item, "exchange_key");
        const auto created = item.find("created_at");
        const auto list = item.find("messages");
        if (!key || created == item.end() || !created->is_object() || !created->contains("N") || !(*created)["N"].is_string() ||
            list == item.end() || !list->is_object() || !list->contains("L") || !(*list)["L"].is_array())
            return false;
        unix_ms created_at = 0;
        const auto& n = (*created)["N"].get_ref<const std::string&>();
        if (std::from_chars(n.data(), n.data() + n.size(), created_at).ec != std::errc{}) return false;
        const auto& messages = (*list)["L"];
        std::size_t end = messages.size();
        if (before && *key == before->exchange_key) end = std::min(end, before->index);
        else if (before && *key > before->exchange_key) return true; // cannot happen with the key condition
        const std::string model = string_attr(item, "model").value_or(""), request_id = string_attr(item, "request_id").value_or("");
        for (std::size_t i = end; i-- > 0;) {
            const auto& m = messages[i];
            if (!m.is_object() || !m.contains("M")) return false;
            const auto role_name = string_attr(m["M"], "role");
            const auto content = string_attr(m["M"], "content");
            const auto r = role_name ? parse_role(*role_name) : std::nullopt;
            if (!r || !content) return false;
            newest_first.push_back({*key + "." + std::to_string(i), *r, *content, model, created_at, request_id});
        }
        return true;
    }

    // ---- Conversations: the design at the top of this file ----

    static constexpr std::string_view meta_sk = "#META";
    static constexpr std::string_view message_prefix = "MSG#";
    static constexpr std::string_view message_prefix_end = "MSG$"; // '$' follows '#': after every "MSG#..."
    static constexpr std::string_view message_id_prefix = "MID#";
    static constexpr std::string_view feedback_prefix = "FB#";
    static constexpr std::string_view condition_failed = "ConditionalCheckFailed";
    // #META as every member but delete wants it: there, this owner's, and not being deleted.
    static constexpr const char* visible_condition = "attribute_exists(pk) AND #owner = :owner AND attribute_not_exists(#deleting)";
    static constexpr std::size_t max_item_bytes = 400 * 1024;
    static constexpr std::size_t max_append = 49; // 1 + 2 × 49 transaction items, of at most 100
    static constexpr std::size_t max_batch = 25;  // BatchWriteItem's limit
    static constexpr int max_conflict_retries = 8;
    static constexpr int max_unprocessed_retries = 6;

    static nlohmann::json text(std::string_view s) { return {{"S", s}}; }
    static nlohmann::json number(std::int64_t n) { return {{"N", std::to_string(n)}}; }
    static nlohmann::json decimal(double d) { return {{"N", nlohmann::json(std::isfinite(d) ? d : 0.0).dump()}}; }

    static std::string conversation_pk(std::string_view id) { return "CONV#" + std::string{id}; }
    static nlohmann::json conversation_key(std::string_view id, std::string_view sk) {
        return {{"pk", text(conversation_pk(id))}, {"sk", text(sk)}};
    }
    // The length prefix makes the pair unambiguous whatever characters owner and user_id hold.
    static std::string user_partition(std::string_view owner, std::string_view user_id) {
        return std::to_string(owner.size()) + ":" + std::string{owner} + "#" + std::string{user_id};
    }
    static std::string message_sk(std::string_view order, std::size_t index) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, "#%02zu", index);
        return std::string{message_prefix} + std::string{order} + suffix;
    }
    // A messages cursor is a message's sk without "MSG#": "<order>#<2 digits>".
    static bool is_message_cursor(std::string_view cursor) {
        const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
        return cursor.size() == order_size + 3 && is_order(cursor.substr(0, order_size)) && cursor[order_size] == '#' &&
               is_digit(cursor[order_size + 1]) && is_digit(cursor[order_size + 2]);
    }

    // DynamoDB's size of an item: its attribute names and values in bytes, a number counted at
    // its largest (21).
    static std::size_t item_size(const nlohmann::json& item) {
        std::size_t size = 0;
        for (const auto& [name, value] : item.items()) {
            size += name.size();
            const auto s = value.find("S");
            size += s != value.end() && s->is_string() ? s->get_ref<const std::string&>().size() : 21;
        }
        return size;
    }

    nlohmann::json put_new(nlohmann::json item) const {
        nlohmann::json put = nlohmann::json::object();
        put["Put"] = {
            {"TableName", options_.conversations_table}, {"Item", std::move(item)}, {"ConditionExpression", "attribute_not_exists(pk)"}};
        return put;
    }

    // Every call on the conversations table goes through here, its operation named in full:
    // tests/deploy/check_template.py reads them (and the transactions' Put, Update and
    // ConditionCheck items) to check that the role grants exactly those on that table.
    result<nlohmann::json> conversations_call(std::string_view operation, const nlohmann::json& input) {
        return client_.call(operation, input);
    }

    result<std::optional<nlohmann::json>> get_conversation_item(std::string_view id, std::string_view sk, bool consistent = true) {
        auto got = conversations_call(
            "GetItem", {{"TableName", options_.conversations_table}, {"Key", conversation_key(id, sk)}, {"ConsistentRead", consistent}});
        if (!got) return conversations_error(std::move(got).error());
        const auto item = got->find("Item");
        if (item == got->end() || !item->is_object()) return std::optional<nlohmann::json>{};
        return std::optional<nlohmann::json>{std::move(*item)};
    }

    // The conversation's #META item, when it exists, is the caller's and is not being deleted;
    // else not found, whichever of the three it is.
    result<nlohmann::json> visible_meta(const conversation_ref& r) {
        auto got = get_conversation_item(r.id, meta_sk, options_.consistent_reads);
        if (!got) return std::move(got).error();
        if (!*got || string_attr(**got, "owner") != r.owner || (*got)->contains("deleting")) return detail::conversation_not_found();
        return std::move(**got);
    }

    enum class visit { more, done, malformed };

    // Runs a Query page after page until its last or until `each` is done. With `wanted`, a page
    // asks for no more items (Limit) than may still be wanted.
    template <class Each>
    result<void> each_item(nlohmann::json input, Each&& each, std::size_t wanted = 0) {
        std::size_t seen = 0;
        for (;;) {
            if (wanted > 0) input["Limit"] = std::min<std::size_t>(wanted > seen ? wanted - seen : 1, 1000);
            auto page = conversations_call("Query", input);
            if (!page) return conversations_error(std::move(page).error());
            const auto items = page->find("Items");
            if (items == page->end() || !items->is_array()) return conversations_malformed("Query answered without Items");
            for (const auto& item : *items) {
                ++seen;
                switch (each(item)) {
                case visit::more: break;
                case visit::done: return {};
                case visit::malformed: return conversations_malformed("an item of the table is not a chatkit conversation's");
                }
            }
            // Pages end at Limit items or 1 MB; LastEvaluatedKey says where the next begins.
            const auto last = page->find("LastEvaluatedKey");
            if (last == page->end() || !last->is_object() || last->empty()) return {};
            input["ExclusiveStartKey"] = *last;
        }
    }

    // TransactWriteItems. A cancelled one leaves each item's reason in `reasons`, in order ("None"
    // for the items that did not cause it). A conflict with another transaction on the same item
    // (two appends to one conversation at once) is tried again after a short random wait: DynamoDB
    // cancels such a transaction rather than queue it, and the client does not retry it.
    result<void> transact(nlohmann::json items, std::vector<std::string>& reasons) {
        const nlohmann::json input = {{"TransactItems", std::move(items)}};
        thread_local std::minstd_rand jitter{std::random_device{}()};
        for (int attempt = 0;; ++attempt) {
            auto written = conversations_call("TransactWriteItems", input);
            if (written) return {};
            reasons.clear();
            if (written.error().code == "TransactionCanceledException") reasons = cancellation_reasons(written.error().message);
            if (std::find(reasons.begin(), reasons.end(), "TransactionConflict") == reasons.end()) return std::move(written).error();
            if (attempt == max_conflict_retries) {
                auto e = std::move(written).error();
                e.retry_after_seconds = 1;
                return e;
            }
            const auto spread = 20u << std::min(attempt, 5);
            std::this_thread::sleep_for(std::chrono::milliseconds{10 + jitter() % spread});
        }
    }

    // DynamoDB (and moto) end a cancelled transaction's message with its reasons, one per item:
    // "... specific reasons [None, ConditionalCheckFailed]". The reasons are also in the answer's
    // CancellationReasons, which the client does not pass on.
    static std::vector<std::string> cancellation_reasons(std::string_view message) {
        std::vector<std::string> reasons;
        const auto open = message.rfind('['), close = message.rfind(']');
        if (open == std::string_view::npos || close == std::string_view::npos || close < open) return reasons;
        auto list = message.substr(open + 1, close - open - 1);
        for (;;) {
            const auto comma = list.find(',');
            auto reason = list.substr(0, comma);
            while (!reason.empty() && reason.front() == ' ') reason.remove_prefix(1);
            while (!reason.empty() && reason.back() == ' ') reason.remove_suffix(1);
            reasons.emplace_back(reason);
            if (comma == std::string_view::npos) return reasons;
            list.remove_prefix(comma + 1);
        }
    }
    static bool reason_is(const std::vector<std::string>& reasons, std::size_t i, std::string_view what) {
        return i < reasons.size() && reasons[i] == what;
    }

    // One BatchWriteItem of at most 25 deletes, then its UnprocessedItems again (a throttled
    // partition), a bounded number of times with a growing wait.
    result<void> delete_batch(nlohmann::json requests) {
        auto wait = std::chrono::milliseconds{50};
        for (int attempt = 0;; ++attempt) {
            auto answer = conversations_call("BatchWriteItem", {{"RequestItems", {{options_.conversations_table, requests}}}});
            if (!answer) return conversations_error(std::move(answer).error());
            const auto unprocessed = answer->find("UnprocessedItems");
            if (unprocessed == answer->end() || !unprocessed->is_object() || !unprocessed->contains(options_.conversations_table) ||
                (*unprocessed)[options_.conversations_table].empty())
                return {};
            requests = (*unprocessed)[options_.conversations_table];
            if (attempt == max_unprocessed_retries)
                return error{error_kind::unavailable,
                             "conversation store (DynamoDB table " + options_.conversations_table +
                                 "): " + std::to_string(requests.size()) + " items were still unprocessed after " +
                                 std::to_string(attempt + 1) + " BatchWriteItem calls",
                             "store_unavailable"};
            std::this_thread::sleep_for(wait);
            wait = std::min<std::chrono::milliseconds>(wait * 2, std::chrono::seconds{2});
        }
    }

    static std::optional<std::int64_t> integer_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end() || !it->is_object() || !it->contains("N") || !(*it)["N"].is_string()) return std::nullopt;
        const auto& n = (*it)["N"].get_ref<const std::string&>();
        std::int64_t value = 0;
        const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), value);
        if (ec != std::errc{} || end != n.data() + n.size()) return std::nullopt;
        return value;
    }
    static std::optional<double> decimal_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end() || !it->is_object() || !it->contains("N") || !(*it)["N"].is_string()) return std::nullopt;
        const auto& n = (*it)["N"].get_ref<const std::string&>();
        double value = 0;
        const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), value);
        if (ec != std::errc{} || end != n.data() + n.size()) return std::nullopt;
        return value;
    }

    static std::optional<conversation> read_conversation(const nlohmann::json& item) {
        auto id = string_attr(item, "id"), owner = string_attr(item, "owner"), user_id = string_attr(item, "user_id"),
             metadata = string_attr(item, "metadata");
        const auto created_at = integer_attr(item, "created_at"), updated_at = integer_attr(item, "updated_at"),
                   count = integer_attr(item, "message_count"), tokens = integer_attr(item, "total_tokens");
        const auto cost = decimal_attr(item, "total_cost_usd");
        if (!id || !owner || !user_id || !metadata || !created_at || !updated_at || !count || !tokens || !cost) return std::nullopt;
        auto parsed = nlohmann::json::parse(*metadata, nullptr, false);
        if (!parsed.is_object()) return std::nullopt;
        conversation c;
        c.id = std::move(*id);
        c.owner = std::move(*owner);
        c.user_id = std::move(*user_id);
        c.title = string_attr(item, "title");
        c.metadata = std::move(parsed);
        c.created_at = *created_at;
        c.updated_at = *updated_at;
        c.totals = {*count, *tokens, *cost};
        return c;
    }

    nlohmann::json message_item(std::string_view conversation_id, const std::string& sk, const conversation_message& m) const {
        nlohmann::json item = {{"pk", text(conversation_pk(conversation_id))},
                               {"sk", text(sk)},
                               {"id", text(m.id)},
                               {"role", text(to_string(m.role))},
                               {"content", text(m.content)},
                               {"created_at", number(m.created_at)}};
        if (!m.provider.empty()) item["provider"] = text(m.provider);
        if (!m.model.empty()) item["model"] = text(m.model);
        if (!m.request_id.empty()) item["request_id"] = text(m.request_id);
        if (m.usage) {
            item["prompt_tokens"] = number(m.usage->prompt_tokens);
            item["completion_tokens"] = number(m.usage->completion_tokens);
            if (m.usage->cached_tokens != 0) item["cached_tokens"] = number(m.usage->cached_tokens);
            if (m.usage->reasoning_tokens != 0) item["reasoning_tokens"] = number(m.usage->reasoning_tokens);
        }
        const auto put_decimal = [&item](const char* name, const std::optional<double>& d) {
            if (d && std::isfinite(*d)) item[name] = decimal(*d);
        };
        put_decimal("cost_usd", m.cost_usd);
        put_decimal("latency_ms", m.latency_ms);
        put_decimal("ttft_ms", m.time_to_first_token_ms);
        return item;
    }

    static std::optional<conversation_message> read_message(const nlohmann::json& item, const std::string& conversation_id) {
        auto id = string_attr(item, "id"), role_name = string_attr(item, "role"), content = string_attr(item, "content");
        const auto created_at = integer_attr(item, "created_at");
        const auto r = role_name ? parse_role(*role_name) : std::nullopt;
        if (!id || !r || !content || !created_at) return std::nullopt;
        conversation_message m;
        m.id = std::move(*id);
        m.conversation_id = conversation_id;
        m.role = *r;
        m.content = std::move(*content);
        m.provider = string_attr(item, "provider").value_or("");
        m.model = string_attr(item, "model").value_or("");
        m.request_id = string_attr(item, "request_id").value_or("");
        if (const auto prompt = integer_attr(item, "prompt_tokens")) {
            const auto tokens = [&item](const char* name) { return static_cast<int>(integer_attr(item, name).value_or(0)); };
            m.usage = token_usage{static_cast<int>(*prompt), tokens("completion_tokens"), tokens("cached_tokens"),
                                  tokens("reasoning_tokens")};
        }
        m.cost_usd = decimal_attr(item, "cost_usd");
        m.latency_ms = decimal_attr(item, "latency_ms");
        m.time_to_first_token_ms = decimal_attr(item, "ttft_ms");
        m.created_at = *created_at;
        return m;
    }

    static std::optional<feedback> read_feedback(const nlohmann::json& item, const std::string& conversation_id) {
        auto id = string_attr(item, "id"), message_id = string_attr(item, "message_id"), type = string_attr(item, "feedback_type");
        const auto created_at = integer_attr(item, "created_at");
        if (!id || !message_id || !type || !created_at) return std::nullopt;
        feedback f;
        f.id = std::move(*id);
        f.conversation_id = conversation_id;
        f.message_id = std::move(*message_id);
        f.feedback_type = std::move(*type);
        if (const auto rating = integer_attr(item, "rating")) f.rating = static_cast<int>(*rating);
        f.comment = string_attr(item, "comment");
        f.created_at = *created_at;
        return f;
    }

    // As store_error, naming the conversations table.
    error conversations_error(error e) const {
        if (e.code == "ValidationException" && e.message.find("size") != std::string::npos)
            return {error_kind::payload_too_large, "the item is larger than a DynamoDB item may be (400 KB)", "message_too_large"};
        e.kind = error_kind::unavailable;
        e.message = "conversation store (DynamoDB table " + options_.conversations_table + "): " + e.message;
        return e;
    }
    error conversations_malformed(std::string what) const {
        return {error_kind::unavailable, "conversation store (DynamoDB table " + options_.conversations_table + "): " + std::move(what),
                "store_malformed"};
    }
    static error invalid_cursor(std::string param) {
        return error{error_kind::invalid_request, "'" + param + "' is not a valid cursor", "invalid_cursor", param};
    }

    // A store that cannot be written or read is unavailable to the client (503, with Retry-After
    // after throttling), whatever DynamoDB said: the client's request was fine.
    error store_error(error e) const {
        if (e.code == "ValidationException" && e.message.find("size") != std::string::npos)
            return {error_kind::payload_too_large, "the exchange is larger than a DynamoDB item may be (400 KB)", "history_too_large"};
        e.kind = error_kind::unavailable;
        e.message = "history store (DynamoDB table " + options_.table + "): " + e.message;
        return e;
    }
    static error malformed(std::string what) {
        return {error_kind::unavailable, "history store (DynamoDB): " + std::move(what), "store_malformed"};
    }

    dynamodb_options options_;
    aws::json_client client_;
};
static_assert(store<dynamodb_store>);
static_assert(conversation_store<dynamodb_store>);

} // namespace chatkit
