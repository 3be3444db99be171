// Where sample_server keeps API keys and teams: in the database of CHAT_DATABASE_URL, next to the
// history. A SQLite file or a PostgreSQL database holds them in two more tables; a DynamoDB
// database in the table its URL names with keys_table (TABLE-keys by default). Shared by CHAT_AUTH=keys and the teams/keys
// commands, so both always read the same keys.
#pragma once

#include "config.hpp"

#include <chatkit/dynamodb_key_directory.hpp>
#include <chatkit/key_directory.hpp>
#include <chatkit/sqlite_key_directory.hpp>
#ifdef SAMPLE_SERVER_POSTGRES
#include <chatkit/postgres_key_directory.hpp>
#endif

#include <stdexcept>
#include <string>
#include <string_view>

namespace sample_server {

using key_directory_type = chatkit::key_directory_variant<chatkit::sqlite_key_directory, chatkit::dynamodb_key_directory
#ifdef SAMPLE_SERVER_POSTGRES
                                                          ,
                                                          chatkit::postgres_key_directory
#endif
                                                          >;

// The key directory of CHAT_DATABASE_URL. Throws config_error naming `what` (the command or
// setting that needs keys) for `none`, which has nowhere to keep them, or for a DynamoDB database
// with no region; throws std::runtime_error when the SQLite file cannot be opened. Makes no call
// to DynamoDB.
inline key_directory_type make_key_directory(const config& c, std::string_view what) {
    if (c.database_url.starts_with("dynamodb:")) {
        auto database = chatkit::parse_dynamodb_url(c.database_url);
        if (!database) throw config_error("CHAT_DATABASE_URL: " + database.error().message);
        try {
            return chatkit::dynamodb_key_directory{chatkit::dynamodb_key_directory_options::of(*database)};
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_DATABASE_URL: "} + e.what());
        }
    }
#ifdef SAMPLE_SERVER_POSTGRES
    if (is_postgres_url(c.database_url)) {
        chatkit::postgres_options o;
        o.url = c.database_url;
        o.max_connections = 2; // a refresh every couple of seconds, and the administration
        try {
            return chatkit::postgres_key_directory{std::move(o)};
        } catch (const std::invalid_argument& e) {
            throw config_error(std::string{"CHAT_DATABASE_URL: "} + e.what());
        }
    }
#endif
    if (!c.database_url.starts_with("sqlite:"))
        throw config_error(std::string{what} + " needs CHAT_DATABASE_URL=sqlite:PATH, dynamodb://TABLE or postgresql://HOST/DB (it is '" +
                           shown_database_url(c.database_url) +
                           "'): API keys are kept in the database, and with none there is no database");
    std::string path = c.database_url.substr(std::string_view{"sqlite:"}.size());
    if (path.starts_with("//")) path.erase(0, 2); // sqlite:///abs/path.db
    return chatkit::sqlite_key_directory{chatkit::sqlite_options{.path = path}};
}

} // namespace sample_server
