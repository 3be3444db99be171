// chatkit::dynamodb_counter_store: the counters of chatkit::shared_key_limits in a DynamoDB table,
// so every Lambda instance (or replica) of a deployment enforces one limit. A chatkit::counter_store.
//
// Table design: one item per counter.
//   counter     (S, partition key)  the counter's name, its window included
//               ("key#k_1#rpm#29512345", "team#t#day#1767225600000")
//   n           (N)  its value: requests, tokens, or micro-USD
//   expires_at  (N, epoch seconds)  the table's TTL attribute: after the counter's window
//
// take() is one UpdateItem per counter, `ADD n :amount` under the condition
// `attribute_not_exists(n) OR n <= :room` (room = limit - amount), in order; when one is refused,
// the ones already added are taken back with an unconditional ADD of the opposite amount. Why not
// TransactWriteItems, which would add all of them in one atomic call: a transaction fails with
// TransactionConflict whenever another one touches the same item, and a busy key's counter is
// touched by every request at once, so transactions would refuse (or retry) most of a burst that
// conditional ADDs, serialized by DynamoDB on the item, simply count. The cost of one by one: a
// refused request holds its key's units for the few milliseconds until they are taken back (the
// counter store concept's requirement 1 allows it; no counter ever passes its limit). The table's
// name: the `limits_table` of the database URL, by default "<history table>-limits".
#pragma once

#include "chatkit/aws/json_client.hpp"
#include "chatkit/counter_store.hpp"
#include "chatkit/dynamodb_store.hpp"
#include "chatkit/error.hpp"

#include <nlohmann/json.hpp>

#include <charconv>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct dynamodb_counter_store_options {
    std::string table;
    aws::json_client_options client{}; // region, endpoint (AWS_ENDPOINT_URL_DYNAMODB), timeouts, retries

    // The limits table of the database a URL names, in the history's region and through the same
    // endpoint settings.
    static dynamodb_counter_store_options of(const dynamodb_options& database) {
        dynamodb_counter_store_options o;
        o.table = database.limits_table.empty() ? database.table + "-limits" : database.limits_table;
        o.client = database.client;
        return o;
    }
};

class dynamodb_counter_store {
public:
    // Throws std::invalid_argument when no region can be found or the endpoint is unusable. The
    // table must exist (see create_table_input()); nothing is called until the first take.
    explicit dynamodb_counter_store(dynamodb_counter_store_options options, aws::environment env = aws::process_environment())
        : options_(std::move(options)), client_(dynamodb_store::service(), options_.client, std::move(env)) {}

    // A CreateTable input for this design (on-demand billing), e.g. for a local emulator; the
    // deployment template creates the same table with TTL on expires_at.
    static nlohmann::json create_table_input(const std::string& table) {
        return {{"TableName", table},
                {"AttributeDefinitions", {{{"AttributeName", "counter"}, {"AttributeType", "S"}}}},
                {"KeySchema", {{{"AttributeName", "counter"}, {"KeyType", "HASH"}}}},
                {"BillingMode", "PAY_PER_REQUEST"}};
    }

    result<counters_taken> take(std::span<const counter_add> adds) {
        counters_taken t;
        t.values.assign(adds.size(), 0);
        for (std::size_t i = 0; i < adds.size(); ++i) {
            const counter_add& a = adds[i];
            nlohmann::json input = update(a, a.amount);
            if (a.amount > 0) {
                input["ConditionExpression"] = "attribute_not_exists(n) OR n <= :room";
                input["ExpressionAttributeValues"][":room"] = number(a.limit - a.amount);
            }
            auto added = a.amount > 0 && a.amount > a.limit ? refused_without_call() : client_.call("UpdateItem", input);
            if (added) {
                auto value = new_value(*added);
                if (!value) {
                    give_back(adds.first(i + 1));
                    return std::move(value).error();
                }
                t.values[i] = *value;
                continue;
            }
            give_back(adds.first(i));
            if (added.error().code != "ConditionalCheckFailedException") return unavailable("add to a counter", std::move(added).error());
            auto now = value_of(a.name);
            if (!now) return std::move(now).error();
            t.values.assign(adds.size(), 0);
            t.refused = i;
            t.values[i] = *now;
            return t;
        }
        t.taken = true;
        return t;
    }

    result<void> add(std::span<const counter_add> adds) {
        for (const auto& a : adds) {
            if (a.amount == 0) continue;
            if (auto added = client_.call("UpdateItem", update(a, a.amount)); !added)
                return unavailable("settle a counter", std::move(added).error());
        }
        return {};
    }

    // A counter's value now (0 when it does not exist), read strongly consistent.
    result<std::int64_t> value_of(const std::string& name) {
        auto got = client_.call("GetItem", {{"TableName", options_.table},
                                            {"Key", {{"counter", {{"S", name}}}}},
                                            {"ConsistentRead", true},
                                            {"ProjectionExpression", "n"}});
        if (!got) return unavailable("read a counter", std::move(got).error());
        const auto item = got->find("Item");
        if (item == got->end()) return std::int64_t{0};
        return number_of(*item);
    }

    [[nodiscard]] aws::json_client& client() noexcept { return client_; }

private:
    nlohmann::json update(const counter_add& a, std::int64_t amount) const {
        return {{"TableName", options_.table},
                {"Key", {{"counter", {{"S", a.name}}}}},
                {"UpdateExpression", "ADD n :amount SET expires_at = :expires"},
                {"ExpressionAttributeValues", {{":amount", number(amount)}, {":expires", number(a.expires_at / 1000)}}},
                {"ReturnValues", "UPDATED_NEW"}};
    }

    // Best effort, as the concept's requirement 1 says: a give-back that fails leaves the units
    // counted until the window ends (refusing too much, never too little).
    void give_back(std::span<const counter_add> taken) {
        for (const auto& a : taken)
            if (a.amount != 0) (void)client_.call("UpdateItem", update(a, -a.amount));
    }

    // An amount larger than the limit itself never fits: refused without a write.
    static result<nlohmann::json> refused_without_call() {
        return error{error_kind::invalid_request, "larger than the limit", "ConditionalCheckFailedException"};
    }

    static result<std::int64_t> new_value(const nlohmann::json& answer) {
        const auto attributes = answer.find("Attributes");
        if (attributes == answer.end()) return malformed("UpdateItem answered without Attributes");
        return number_of(*attributes);
    }
    static result<std::int64_t> number_of(const nlohmann::json& item) {
        const auto n = item.find("n");
        if (n == item.end()) return std::int64_t{0};
        const auto text = n->find("N");
        std::int64_t value = 0;
        if (text == n->end() || !text->is_string()) return malformed("a counter's n is not a number");
        const std::string& s = text->get_ref<const std::string&>();
        if (std::from_chars(s.data(), s.data() + s.size(), value).ec != std::errc{}) return malformed("a counter's n is not an integer");
        return value;
    }
    static nlohmann::json number(std::int64_t n) { return {{"N", std::to_string(n)}}; }

    error unavailable(std::string_view what, error cause) const {
        return error{error_kind::unavailable,
                     "cannot " + std::string{what} + " in the DynamoDB table " + options_.table + ": " + cause.message,
                     "counters_unavailable"};
    }
    static error malformed(std::string why) {
        return error{error_kind::unavailable, "DynamoDB's answer about a counter is malformed: " + std::move(why), "counters_unavailable"};
    }

    dynamodb_counter_store_options options_;
    aws::json_client client_;
};
static_assert(counter_store<dynamodb_counter_store>);

} // namespace chatkit
