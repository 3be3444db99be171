// chatkit::dynamodb_store: conversation history in an Amazon DynamoDB table, for deployments with
// no disk to keep (Lambda). Talks DynamoDB's JSON protocol through chatkit::aws::json_client
// (SigV4, pooled connections, retries on throttling).
//
// Table design: one item per exchange, so an exchange is written whole or not at all by a single
// PutItem (no transaction needed, one write unit for a typical exchange):
//   user_id      (S, partition key)
//   exchange_key (S, sort key)  "<created_at ms, 13 digits>-<16 hex: per-process counter><8 hex: writer>"
//   messages     (L of M{role: S, content: S}), model (S), request_id (S), created_at (N, ms)
//   expires_at   (N, epoch seconds; only with a ttl) — name it as the table's TTL attribute
// The sort key orders a user's exchanges by time, then by append order within one process; the
// writer part keeps concurrent Lambda instances apart. A message's id is "<exchange_key>.<index>".
// The item is written with attribute_not_exists, so an exchange never overwrites another.
#pragma once

#include "chatkit/aws/json_client.hpp"
#include "chatkit/store.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

struct dynamodb_options {
    std::string table;
    std::chrono::seconds ttl{0}; // items expire this long after created_at (the table's TTL on
                                 // `expires_at` deletes them); 0: kept forever
    bool consistent_reads = true; // history shows an exchange as soon as its reply was acknowledged
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
};

// DynamoDB's own rule for table names: 3-255 characters of A-Z a-z 0-9 _ - .
inline bool valid_dynamodb_table_name(std::string_view name) {
    return name.size() >= 3 && name.size() <= 255 && std::all_of(name.begin(), name.end(), [](char c) {
               return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
           });
}

// "dynamodb://TABLE?region=REGION&ttl_days=N&keys_table=KEYS&usage_table=USAGE&limits_table=LIMITS"
// (every parameter optional) →
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
        } else return bad("unknown parameter '" + std::string{key} + "' (known: region, ttl_days, keys_table, usage_table, limits_table)");
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
        return {{"TableName", table},
                {"AttributeDefinitions", {{{"AttributeName", "user_id"}, {"AttributeType", "S"}},
                                          {{"AttributeName", "exchange_key"}, {"AttributeType", "S"}}}},
                {"KeySchema", {{{"AttributeName", "user_id"}, {"KeyType", "HASH"}},
                               {{"AttributeName", "exchange_key"}, {"KeyType", "RANGE"}}}},
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
        if (options_.ttl.count() > 0)
            item["expires_at"] = {{"N", std::to_string(e.created_at / 1000 + options_.ttl.count())}};

        // The client retries a PutItem whose answer was lost; if the first try had landed, the
        // retry fails its condition. Keys are unique to this process (counter + writer), so a
        // failed condition means our own item is there: the exchange is stored. A fresh key is
        // only needed if another writer drew the same 32-bit writer id and counter value.
        for (int collisions = 0;; ++collisions) {
            item["exchange_key"] = {{"S", next_exchange_key(e.created_at)}};
            auto put = client_.call("PutItem", {{"TableName", options_.table},
                                                {"Item", item},
                                                {"ConditionExpression", "attribute_not_exists(exchange_key)"}});
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

    static std::string next_exchange_key(unix_ms created_at) {
        // A hybrid clock: microseconds of wall time, but never the same value twice in a process.
        static std::atomic<std::uint64_t> last{0};
        static const std::uint32_t writer = std::random_device{}();
        const auto now = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
        std::uint64_t prev = last.load(), next = 0;
        do next = std::max(prev + 1, now);
        while (!last.compare_exchange_weak(prev, next));
        char key[64];
        std::snprintf(key, sizeof key, "%013lld-%016llx%08x", static_cast<long long>(std::max<unix_ms>(created_at, 0)),
                      static_cast<unsigned long long>(next), static_cast<unsigned>(writer));
        return key;
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

} // namespace chatkit
