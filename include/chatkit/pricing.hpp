// Prices of models, and what an answer costs: the data a gateway bills with. A price table is
// plain data read from JSON (sample_server ships one, data/pricing.json, and merges
// CHAT_PRICING_FILE over it); the service prices every answer it gets from a provider with it.
//
// The JSON form, USD per one million tokens:
//   {"models": {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075}, ...}}
// `cached_input` is optional (cached prompt tokens are then billed as input). Any other top-level
// key (a "_comment", a source list) is ignored, so the file can say where its prices come from.
#pragma once

#include "chatkit/chat.hpp"
#include "chatkit/error.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace chatkit {

/// One model's prices in USD per 1,000,000 tokens.
struct model_price {
    double input = 0;
    double output = 0;
    std::optional<double> cached_input{}; // empty: cached prompt tokens cost the input price

    friend bool operator==(const model_price&, const model_price&) = default;
};

class price_table {
public:
    price_table() = default;

    /// Parses the JSON form above. Refuses a price that is not a finite number >= 0, naming the
    /// model, so a typo in a pricing file stops start-up instead of billing nonsense.
    static result<price_table> parse(std::string_view text) {
        const auto j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_discarded()) return invalid("the pricing file is not valid JSON");
        const auto models = j.is_object() ? j.find("models") : j.end();
        if (models == j.end() || !models->is_object()) return invalid("the pricing file needs a \"models\" object");
        price_table t;
        // No structured binding here: clang 14 cannot capture one in the lambda below.
        for (const auto& item : models->items()) {
            const std::string& model = item.key();
            const nlohmann::json& p = item.value();
            if (!p.is_object()) return invalid("the price of '" + model + "' must be an object");
            model_price price;
            auto number = [&](const char* field, bool required) -> result<std::optional<double>> {
                auto it = p.find(field);
                if (it == p.end() || it->is_null()) {
                    if (required) return invalid("the price of '" + model + "' needs \"" + field + "\" (USD per 1M tokens)");
                    return std::optional<double>{};
                }
                if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < 0)
                    return invalid("the price of '" + model + "': \"" + field + "\" must be a number >= 0");
                return std::optional<double>{it->get<double>()};
            };
            auto in = number("input", true);
            if (!in) return in.error();
            auto out = number("output", true);
            if (!out) return out.error();
            auto cached = number("cached_input", false);
            if (!cached) return cached.error();
            price.input = **in;
            price.output = **out;
            price.cached_input = *cached;
            t.prices_[model] = price;
        }
        return t;
    }

    /// Sets (or replaces) one model's price.
    void set(std::string model, model_price price) { prices_[std::move(model)] = price; }

    /// Every model of `overrides` takes its price from there: a deployment's own file over the
    /// shipped table.
    void merge(const price_table& overrides) {
        for (const auto& [model, price] : overrides.prices_) prices_[model] = price;
    }

    /// The price of `model`: its own entry, else the entry of the name without a trailing date
    /// (OpenAI answers "gpt-4o-mini-2024-07-18" to a request for "gpt-4o-mini"), else none.
    [[nodiscard]] const model_price* find(std::string_view model) const {
        if (auto it = prices_.find(model); it != prices_.end()) return &it->second;
        if (auto base = without_date(model); base.size() != model.size())
            if (auto it = prices_.find(base); it != prices_.end()) return &it->second;
        return nullptr;
    }

    /// What `usage` of `model` costs; empty when the model has no price. Cached prompt tokens are
    /// billed at the cached price; reasoning tokens are output tokens (they are counted in
    /// completion_tokens), so they need no term of their own.
    [[nodiscard]] std::optional<double> cost_usd(std::string_view model, const token_usage& usage) const {
        const model_price* p = find(model);
        if (!p) return std::nullopt;
        const double cached = std::min(usage.cached_tokens, usage.prompt_tokens);
        const double fresh = usage.prompt_tokens - cached;
        return (fresh * p->input + cached * p->cached_input.value_or(p->input) + usage.completion_tokens * p->output) / 1e6;
    }

    /// The most a request can cost before it is sent: every prompt token at the full input price,
    /// and `max_completion_tokens` of output. Empty when the model has no price.
    [[nodiscard]] std::optional<double> worst_case_usd(std::string_view model, std::int64_t prompt_tokens,
                                                       std::int64_t max_completion_tokens) const {
        const model_price* p = find(model);
        if (!p) return std::nullopt;
        return (static_cast<double>(prompt_tokens) * p->input + static_cast<double>(max_completion_tokens) * p->output) / 1e6;
    }

    [[nodiscard]] const std::map<std::string, model_price, std::less<>>& models() const noexcept { return prices_; }
    [[nodiscard]] bool empty() const noexcept { return prices_.empty(); }

private:
    static error invalid(std::string message) { return {error_kind::invalid_request, std::move(message), "invalid_pricing"}; }

    // "name-YYYY-MM-DD" → "name"; anything else unchanged.
    static std::string_view without_date(std::string_view model) {
        constexpr std::size_t n = 11; // "-2024-07-18"
        if (model.size() <= n) return model;
        const auto tail = model.substr(model.size() - n);
        for (std::size_t i = 0; i < n; ++i) {
            const bool dash = i == 0 || i == 5 || i == 8;
            if (dash ? tail[i] != '-' : (tail[i] < '0' || tail[i] > '9')) return model;
        }
        return model.substr(0, model.size() - n);
    }

    std::map<std::string, model_price, std::less<>> prices_;
};

/// A rough token count of text, when no tokenizer is at hand: one token per four bytes, rounded
/// up (OpenAI's rule of thumb for English). Bills a stream whose provider never reported its
/// usage, marked as estimated.
[[nodiscard]] inline std::int64_t estimate_tokens(std::size_t bytes) noexcept { return static_cast<std::int64_t>((bytes + 3) / 4); }

/// The most prompt tokens a request of `body_bytes` with `messages` messages can be: every token
/// of every tokenizer chatkit's providers use stands for at least one byte of text, and each
/// message adds a few tokens of role and framing. A bound, not an estimate (it is about four times
/// the usual count): limits and budgets reserve it so that concurrent requests can never
/// overshoot, and give the difference back when the real usage is known.
[[nodiscard]] inline std::int64_t prompt_token_bound(std::size_t body_bytes, std::size_t messages) noexcept {
    return static_cast<std::int64_t>(body_bytes + 8 * messages);
}

} // namespace chatkit
