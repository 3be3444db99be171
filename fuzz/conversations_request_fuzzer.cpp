// The conversations API's own request decoding (/api/v1/conversations...), which the other
// harnesses do not reach: the path and its id, the bodies of create, update, a turn and feedback,
// a turn from a query string (what an EventSource sends) and ?limit=. The decoders are driven as
// the service's routes call them, on the same bytes as a body, a query string and a path.
// Whatever the bytes, nothing throws; what is accepted keeps every bound the API states; what is
// refused is a 400 whose envelope is valid JSON.
#include "answer_check.hpp"

#include <chatkit/conversations_api.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace {
namespace api = chatkit::conversations_api;
using fuzz::require;

const chatkit::request_limits request_limits{};
const api::limits limits{};

template <class T>
bool refused_cleanly(const chatkit::result<T>& r) {
    if (r) return false;
    require(r.error().kind == chatkit::error_kind::invalid_request);
    require(nlohmann::json::accept(chatkit::dump_json(chatkit::to_envelope(r.error()))));
    return true;
}

bool is_lowercase_uuid(std::string_view s) { return api::is_uuid(s) && api::lowercase(s) == s; }

void check_title(const std::optional<std::string>& title) { require(!title || title->size() <= limits.max_title_bytes); }
void check_metadata(const nlohmann::json& m) { require(m.is_object() && chatkit::dump_json(m).size() <= limits.max_metadata_bytes); }

void check_turn(const chatkit::result<api::turn_request>& t) {
    if (refused_cleanly(t)) return;
    require(t->message.find_first_not_of(" \t\r\n") != std::string::npos && t->message.size() <= limits.max_message_bytes);
    require(!t->temperature || (*t->temperature >= 0 && *t->temperature <= 2));
    require(!t->max_tokens || (*t->max_tokens >= 1 && *t->max_tokens <= request_limits.max_tokens));
    require(t->model.size() <= request_limits.max_model_bytes);
}

void decode_body(const nlohmann::json& body) {
    if (auto c = api::parse_create(body, request_limits, limits); !refused_cleanly(c)) {
        require(!c->user_id.empty() && c->user_id.size() <= request_limits.max_user_id_bytes &&
                !chatkit::detail::has_control_characters(c->user_id));
        check_title(c->title);
        check_metadata(c->metadata);
        require(nlohmann::json::accept(chatkit::dump_json(nlohmann::json(*c))));
    }
    if (auto u = api::parse_update(body, limits); !refused_cleanly(u)) {
        if (u->title) check_title(*u->title);
        if (u->metadata) check_metadata(*u->metadata);
    }
    check_turn(api::parse_turn(body, request_limits, limits));
    if (auto f = api::parse_feedback(body, limits); !refused_cleanly(f)) {
        require(is_lowercase_uuid(f->message_id));
        require(f->feedback_type == "thumbs_up" || f->feedback_type == "thumbs_down" || f->feedback_type == "flag");
        require(!f->rating || (*f->rating >= 1 && *f->rating <= 5));
        require(!f->comment || f->comment->size() <= limits.max_comment_bytes);
        require(nlohmann::json::accept(chatkit::dump_json(nlohmann::json(*f))));
    }
}

// name=value pairs split at '&' and the first '=', as the adapters hand over a query string once
// it is percent-decoded: so any byte may be in a name or a value.
api::query_map query_of(std::string_view text) {
    api::query_map query;
    while (!text.empty()) {
        const auto amp = text.find('&');
        const auto pair = text.substr(0, amp);
        const auto eq = pair.find('=');
        query.emplace(std::string{pair.substr(0, eq)}, eq == std::string_view::npos ? std::string{} : std::string{pair.substr(eq + 1)});
        if (amp == std::string_view::npos) break;
        text.remove_prefix(amp + 1);
    }
    return query;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes{reinterpret_cast<const char*>(data), size};

    // The service refuses a body that is not JSON before any of these decoders sees it.
    const auto body = nlohmann::json::parse(bytes, nullptr, false);
    if (!body.is_discarded()) decode_body(body);

    const auto query = query_of(bytes);
    check_turn(api::parse_turn_query(query, request_limits, limits));
    if (auto n = api::parse_limit(query, limits.default_page, limits.max_page); !refused_cleanly(n))
        require(*n >= 1 && *n <= limits.max_page);

    const std::string path = std::string{api::prefix} + std::string{bytes};
    const auto target = api::parse_path(path);
    if (target.route != api::target::kind::none && target.route != api::target::kind::collection) {
        require(!target.id.empty() && target.id.find('/') == std::string_view::npos);
        if (auto id = api::parse_id(target.id, "id"); !refused_cleanly(id)) require(is_lowercase_uuid(*id));
    }
    return 0;
}
