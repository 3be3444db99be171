// chatkit::dynamodb_key_directory: API keys and teams in a DynamoDB table, for deployments whose
// history is in DynamoDB (Lambda). A chatkit::key_directory for the authenticating middleware, plus
// the same administration as chatkit::sqlite_key_directory: create a team or a key, read a team,
// revoke a key.
//
// Table design: one table for teams and keys, a single string partition key and no sort key, so
// that one Scan reads every key and every team's limits (the join is done in memory):
//   pk            (S, partition key)  "team#<team id>" or "key#<key id>"
//   id            (S)  the team's or the key's id, as given
//   name          (S)  may be empty
//   created_at    (N)  unix ms
//   rpm, tpm      (N)  requests and tokens per minute; absent: no limit
//   budget_usd    (N), budget_period (S, "day" or "month"); absent: no budget
// and on a key only:
//   team_id       (S), prefix (S) the key's first characters
//   digest        (B)  SHA-256 of the whole key, 32 bytes: never the key itself
//   expires_at, revoked_at (N, unix ms; absent: never, not revoked)
//   models        (L of S; absent: any model)
// Every item is written with attribute_not_exists(pk), so no id is ever overwritten; a revocation
// is one conditional UpdateItem that keeps an earlier revocation's time. The table's name: the
// `keys_table` of the database URL, by default "<history table>-keys" (parse_dynamodb_url).
#pragma once

#include "chatkit/aws/json_client.hpp"
#include "chatkit/clock.hpp"
#include "chatkit/dynamodb_store.hpp"
#include "chatkit/error.hpp"
#include "chatkit/key_directory.hpp"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chatkit {

struct dynamodb_key_directory_options {
    std::string table;
    // Items per Scan page (Scan's Limit); 0: DynamoDB's own pages of up to 1 MB. Only tests need a
    // smaller one, to cross page boundaries with a few keys.
    std::size_t scan_page_size = 0;
    // Strongly consistent Scans, so that a key revoked just before a refresh is not read as active.
    // They cost twice the read units of eventually consistent ones.
    bool consistent_reads = true;
    aws::json_client_options client{}; // region, endpoint (AWS_ENDPOINT_URL_DYNAMODB), timeouts, retries

    // The key directory of the database a URL names: its keys_table, in the history's region and
    // through the same endpoint settings.
    static dynamodb_key_directory_options of(const dynamodb_options& database) {
        dynamodb_key_directory_options o;
        o.table = database.keys_table.empty() ? database.table + "-keys" : database.keys_table;
        o.client = database.client;
        return o;
    }
};

class dynamodb_key_directory {
public:
    // Throws std::invalid_argument when no region can be found or the endpoint is unusable. The
    // table must exist (see create_table_input()); nothing is called until the first read.
    explicit dynamodb_key_directory(dynamodb_key_directory_options options, aws::environment env = aws::process_environment())
        : options_(std::move(options)), client_(dynamodb_store::service(), options_.client, std::move(env)) {}

    // A CreateTable input for this design (on-demand billing), e.g. for a local emulator; the
    // deployment template creates the same table with backups turned on.
    static nlohmann::json create_table_input(const std::string& table) {
        return {{"TableName", table},
                {"AttributeDefinitions", {{{"AttributeName", "pk"}, {"AttributeType", "S"}}}},
                {"KeySchema", {{{"AttributeName", "pk"}, {"KeyType", "HASH"}}}},
                {"BillingMode", "PAY_PER_REQUEST"}};
    }

    // Every key, revoked and expired ones included, oldest first, each with its team's limits.
    // The only call a server makes (Scan), so the only permission its role needs on the table.
    result<std::vector<key_record>> keys() {
        nlohmann::json input = {{"TableName", options_.table}, {"ConsistentRead", options_.consistent_reads}};
        if (options_.scan_page_size > 0) input["Limit"] = options_.scan_page_size;
        std::vector<key_record> out;
        std::map<std::string, usage_limits, std::less<>> team_limits;
        for (;;) {
            auto page = client_.call("Scan", input);
            if (!page) return unavailable("read the API keys", std::move(page).error());
            const auto items = page->find("Items");
            if (items == page->end() || !items->is_array()) return malformed("Scan answered without Items");
            for (const auto& item : *items) {
                const auto pk = string_attr(item, "pk").value_or("");
                if (pk.starts_with(team_prefix)) {
                    auto limits = read_limits(item);
                    if (!limits) return malformed("the team item '" + pk + "' has unreadable limits");
                    team_limits[pk.substr(team_prefix.size())] = std::move(*limits);
                } else if (pk.starts_with(key_prefix)) {
                    auto k = read_key(item);
                    if (!k) return malformed("the key item '" + pk + "' is not a chatkit API key");
                    out.push_back(std::move(*k));
                }
                // Anything else is not ours to read: a later kind of item may share the table.
            }
            // Scan pages end at Limit items or 1 MB; LastEvaluatedKey says where the next begins.
            const auto last = page->find("LastEvaluatedKey");
            if (last == page->end() || !last->is_object() || last->empty()) break;
            input["ExclusiveStartKey"] = *last;
        }
        for (auto& k : out)
            if (const auto t = team_limits.find(k.team_id); t != team_limits.end()) k.team_limits = t->second;
        // Scan order is the hash order of the keys: sort as sqlite_key_directory lists them.
        std::sort(out.begin(), out.end(), [](const key_record& a, const key_record& b) {
            return a.created_at != b.created_at ? a.created_at < b.created_at : a.id < b.id;
        });
        return out;
    }

    // Fails with conflict ("team_exists") when the id is taken.
    result<void> create_team(const team_record& t) {
        if (t.id.empty()) return error{error_kind::invalid_request, "a team id must be non-empty", "invalid_value", "id"};
        nlohmann::json item = {{"pk", {{"S", std::string{team_prefix} + t.id}}},
                               {"id", {{"S", t.id}}},
                               {"name", {{"S", t.name}}},
                               {"created_at", number(t.created_at)}};
        write_limits(item, t.limits);
        auto put = client_.call(
            "PutItem", {{"TableName", options_.table}, {"Item", std::move(item)}, {"ConditionExpression", "attribute_not_exists(pk)"}});
        if (!put && put.error().code == "ConditionalCheckFailedException")
            return error{error_kind::conflict, "team '" + t.id + "' already exists", "team_exists"};
        if (!put) return unavailable("create the team", std::move(put).error());
        return {};
    }

    result<std::optional<team_record>> team(std::string_view id) {
        auto got = client_.call("GetItem", {{"TableName", options_.table},
                                            {"Key", {{"pk", {{"S", std::string{team_prefix} + std::string{id}}}}}},
                                            {"ConsistentRead", true}});
        if (!got) return unavailable("read the team", std::move(got).error());
        const auto item = got->find("Item");
        if (item == got->end()) return std::optional<team_record>{};
        auto limits = read_limits(*item);
        auto created = number_attr(*item, "created_at");
        if (!limits || !created || !*created) return malformed("the team item '" + std::string{id} + "' is not a chatkit team");
        return std::optional<team_record>{team_record{string_attr(*item, "id").value_or(std::string{id}),
                                                      string_attr(*item, "name").value_or(""), std::move(*limits), **created}};
    }

    // Stores a key record (its digest, never the key). Fails with invalid_request
    // ("team_not_found") when its team does not exist, and with conflict ("key_exists") when the id is taken.
    result<void> create_key(const key_record& k) {
        if (auto invalid = invalid_key_record(k)) return *invalid;
        {
            // Teams are never deleted, so a team read here still exists when the key is written.
            auto t = team(k.team_id);
            if (!t) return t.error();
            if (!*t) return error{error_kind::invalid_request, "no team '" + k.team_id + "'", "team_not_found", "team"};
        }
        nlohmann::json item = {{"pk", {{"S", std::string{key_prefix} + k.id}}},
                               {"id", {{"S", k.id}}},
                               {"team_id", {{"S", k.team_id}}},
                               {"name", {{"S", k.name}}},
                               {"prefix", {{"S", k.prefix}}},
                               {"digest", {{"B", base64(k.digest)}}},
                               {"created_at", number(k.created_at)}};
        if (k.expires_at) item["expires_at"] = number(*k.expires_at);
        if (k.revoked_at) item["revoked_at"] = number(*k.revoked_at);
        write_limits(item, k.limits);
        if (!k.models.empty()) {
            nlohmann::json models = nlohmann::json::array();
            for (const auto& m : k.models) models.push_back({{"S", m}});
            item["models"] = {{"L", std::move(models)}};
        }
        auto put = client_.call(
            "PutItem", {{"TableName", options_.table}, {"Item", std::move(item)}, {"ConditionExpression", "attribute_not_exists(pk)"}});
        if (!put && put.error().code == "ConditionalCheckFailedException")
            return error{error_kind::conflict, "key '" + k.id + "' already exists", "key_exists", "id"};
        if (!put) return unavailable("create the key", std::move(put).error());
        return {};
    }

    // Marks the key revoked at `at` and returns when it is revoked (an earlier revocation stands).
    // Fails with not_found ("key_not_found") for an unknown id.
    result<unix_ms> revoke_key(std::string_view id, unix_ms at) {
        // One call: if_not_exists keeps a first revocation's time, and the condition refuses to
        // create an item for an unknown id (an UpdateItem would otherwise make one).
        auto updated = client_.call("UpdateItem", {{"TableName", options_.table},
                                                   {"Key", {{"pk", {{"S", std::string{key_prefix} + std::string{id}}}}}},
                                                   {"UpdateExpression", "SET revoked_at = if_not_exists(revoked_at, :at)"},
                                                   {"ConditionExpression", "attribute_exists(pk)"},
                                                   {"ExpressionAttributeValues", {{":at", number(at)}}},
                                                   {"ReturnValues", "ALL_NEW"}});
        if (!updated && updated.error().code == "ConditionalCheckFailedException")
            return error{error_kind::not_found, "no key '" + std::string{id} + "'", "key_not_found"};
        if (!updated) return unavailable("revoke the key", std::move(updated).error());
        const auto attributes = updated->find("Attributes");
        if (attributes == updated->end()) return malformed("UpdateItem answered without Attributes");
        const auto revoked = number_attr(*attributes, "revoked_at");
        if (!revoked || !*revoked) return malformed("the revoked key '" + std::string{id} + "' has no revoked_at");
        return **revoked;
    }

    [[nodiscard]] const dynamodb_key_directory_options& options() const noexcept { return options_; }
    [[nodiscard]] aws::json_client& client() noexcept { return client_; }

private:
    static constexpr std::string_view team_prefix = "team#";
    static constexpr std::string_view key_prefix = "key#";

    static nlohmann::json number(std::int64_t n) { return {{"N", std::to_string(n)}}; }

    static std::optional<std::string> string_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end() || !it->is_object()) return std::nullopt;
        const auto s = it->find("S");
        if (s == it->end() || !s->is_string()) return std::nullopt;
        return s->get<std::string>();
    }
    // Absent: an empty optional inside; present but not a whole number: nullopt (unreadable).
    static std::optional<std::optional<std::int64_t>> number_attr(const nlohmann::json& item, const char* name) {
        const auto it = item.find(name);
        if (it == item.end()) return std::optional<std::int64_t>{};
        if (!it->is_object() || !it->contains("N") || !(*it)["N"].is_string()) return std::nullopt;
        const auto& text = (*it)["N"].get_ref<const std::string&>();
        std::int64_t n = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
        if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
        return std::optional<std::int64_t>{n};
    }

    // rpm, tpm, budget_usd and budget_period; nullopt when one is there but unreadable.
    static std::optional<usage_limits> read_limits(const nlohmann::json& item) {
        usage_limits l;
        const auto rpm = number_attr(item, "rpm");
        const auto tpm = number_attr(item, "tpm");
        if (!rpm || !tpm) return std::nullopt;
        l.requests_per_minute = *rpm;
        l.tokens_per_minute = *tpm;
        if (const auto b = item.find("budget_usd"); b != item.end()) {
            if (!b->is_object() || !b->contains("N") || !(*b)["N"].is_string()) return std::nullopt;
            const auto& text = (*b)["N"].get_ref<const std::string&>();
            double usd = 0;
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), usd);
            if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
            l.budget_usd = usd;
        }
        l.budget_period = string_attr(item, "budget_period").value_or("");
        return l;
    }
    static void write_limits(nlohmann::json& item, const usage_limits& l) {
        if (l.requests_per_minute) item["rpm"] = number(*l.requests_per_minute);
        if (l.tokens_per_minute) item["tpm"] = number(*l.tokens_per_minute);
        // nlohmann writes the shortest text that reads back as the same double, as DynamoDB's N wants.
        if (l.budget_usd) item["budget_usd"] = {{"N", nlohmann::json(*l.budget_usd).dump()}};
        if (!l.budget_period.empty()) item["budget_period"] = {{"S", l.budget_period}};
    }

    static std::optional<key_record> read_key(const nlohmann::json& item) {
        key_record k;
        auto id = string_attr(item, "id");
        auto team = string_attr(item, "team_id");
        auto digest = item.contains("digest") && item["digest"].is_object() && item["digest"].contains("B") &&
                              item["digest"]["B"].is_string()
                          ? unbase64(item["digest"]["B"].get_ref<const std::string&>())
                          : std::nullopt;
        const auto created = number_attr(item, "created_at");
        const auto expires = number_attr(item, "expires_at");
        const auto revoked = number_attr(item, "revoked_at");
        auto limits = read_limits(item);
        if (!id || !team || !digest || !created || !*created || !expires || !revoked || !limits) return std::nullopt;
        k.id = std::move(*id);
        k.team_id = std::move(*team);
        k.name = string_attr(item, "name").value_or("");
        k.prefix = string_attr(item, "prefix").value_or("");
        k.digest = std::move(*digest);
        k.created_at = **created;
        k.expires_at = *expires;
        k.revoked_at = *revoked;
        k.limits = std::move(*limits);
        if (const auto m = item.find("models"); m != item.end()) {
            if (!m->is_object() || !m->contains("L") || !(*m)["L"].is_array()) return std::nullopt;
            for (const auto& model : (*m)["L"]) {
                if (!model.is_object() || !model.contains("S") || !model["S"].is_string()) return std::nullopt;
                k.models.push_back(model["S"].get<std::string>());
            }
        }
        return k;
    }

    // DynamoDB's JSON protocol carries binary attributes as standard base64 (RFC 4648 §4, padded).
    static std::string base64(std::string_view bytes) {
        std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0'); // EVP_EncodeBlock writes a final NUL
        const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(bytes.data()),
                                      static_cast<int>(bytes.size()));
        out.resize(static_cast<std::size_t>(n));
        return out;
    }
    static std::optional<std::string> unbase64(std::string_view text) {
        if (text.size() % 4 != 0) return std::nullopt;
        std::string out(text.size() / 4 * 3, '\0');
        const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(text.data()),
                                      static_cast<int>(text.size()));
        if (n < 0) return std::nullopt;
        // EVP_DecodeBlock counts the bytes the '=' padding stands for; drop them.
        const auto padding = text.empty() ? 0 : text.size() - text.find_last_not_of('=') - 1;
        out.resize(static_cast<std::size_t>(n) - std::min<std::size_t>(padding, 2));
        return out;
    }

    // A directory that cannot be read or written is unavailable, whatever DynamoDB said: the
    // middleware keeps its last snapshot, and a command reports it (exit code 1).
    error unavailable(std::string_view action, error e) const {
        e.kind = error_kind::unavailable;
        e.message = "key directory (DynamoDB table " + options_.table + ") could not " + std::string{action} + ": " + e.message;
        return e;
    }
    error malformed(std::string what) const {
        return {error_kind::unavailable, "key directory (DynamoDB table " + options_.table + "): " + std::move(what), "store_malformed"};
    }

    dynamodb_key_directory_options options_;
    aws::json_client client_;
};
static_assert(key_directory<dynamodb_key_directory>);

} // namespace chatkit
