// chatkit::store_variant: one of several blocking stores chosen at run time (e.g. from
// CHAT_DATABASE_URL), itself a Store and a ConversationStore.
#pragma once

#include "chatkit/conversation_store.hpp"
#include "chatkit/store.hpp"

#include <concepts>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace chatkit {

/// Forwards each call to the store it holds. A held store that keeps no conversations answers
/// the conversation members as chatkit::no_conversations does (not found), so one sample_server
/// binary serves the conversation routes on every store that has them.
template <blocking_store... Ss>
class store_variant {
public:
    static constexpr bool nonblocking = (declared_nonblocking<Ss> && ...);
    // Whether the store it holds declared itself nonblocking: the service then calls it inline.
    [[nodiscard]] bool holds_nonblocking() const noexcept {
        return std::visit([](const auto& x) { return declared_nonblocking<std::remove_cvref_t<decltype(x)>>; }, v_);
    }
    template <class S>
        requires(std::same_as<std::remove_cvref_t<S>, Ss> || ...)
    store_variant(S&& s) : v_(std::forward<S>(s)) {}

    result<void> append(const exchange& e) {
        return std::visit([&](auto& s) { return s.append(e); }, v_);
    }
    result<history_page> history(const history_query& q) {
        return std::visit([&](auto& s) { return s.history(q); }, v_);
    }
    component_health health() {
        return std::visit([](auto& s) { return s.health(); }, v_);
    }

    result<void> create_conversation(const conversation& c) {
        return visit_conversations([&](auto& s) { return s.create_conversation(c); });
    }
    result<conversation_page> conversations(const conversation_query& q) {
        return visit_conversations([&](auto& s) { return s.conversations(q); });
    }
    result<conversation> find_conversation(const conversation_ref& r) {
        return visit_conversations([&](auto& s) { return s.find_conversation(r); });
    }
    result<conversation> update_conversation(const conversation_update& u) {
        return visit_conversations([&](auto& s) { return s.update_conversation(u); });
    }
    result<void> delete_conversation(const conversation_ref& r) {
        return visit_conversations([&](auto& s) { return s.delete_conversation(r); });
    }
    result<void> append_to_conversation(const conversation_append& a) {
        return visit_conversations([&](auto& s) { return s.append_to_conversation(a); });
    }
    result<conversation_message_page> conversation_messages(const conversation_message_query& q) {
        return visit_conversations([&](auto& s) { return s.conversation_messages(q); });
    }
    result<void> add_feedback(const feedback_submission& f) {
        return visit_conversations([&](auto& s) { return s.add_feedback(f); });
    }
    result<std::vector<feedback>> conversation_feedback(const conversation_ref& r) {
        return visit_conversations([&](auto& s) { return s.conversation_feedback(r); });
    }

    template <class S>
    S* get_if() noexcept {
        return std::get_if<S>(&v_);
    }

private:
    template <class F>
    auto visit_conversations(F f) {
        return std::visit(
            [&](auto& s) {
                if constexpr (conversation_store<std::remove_cvref_t<decltype(s)>>) return f(s);
                else {
                    no_conversations none;
                    return f(none);
                }
            },
            v_);
    }

    std::variant<Ss...> v_;
};

} // namespace chatkit
