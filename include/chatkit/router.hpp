// A provider made of providers: each request goes, by the model it names, to one of several
// named providers, falling back to the next when one fails before the client saw a byte.
#pragma once

#include "chatkit/provider.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

// One deployment a model may be served by: a provider of the router, the model id it is asked
// for, and its share of the first picks among the deployments of its group.
struct route_target {
    std::string provider{};
    std::string model{}; // sent upstream; empty: the name the client asked for
    unsigned weight = 1;
};

// How one model name is served: its groups are tried in order (fallbacks); the deployments of a
// group serve the same model and share its traffic by weight, each tried before the next group.
struct model_route {
    std::string name{}; // what clients ask for; "*" serves any name no other route has
    std::vector<std::vector<route_target>> groups{};
};

struct router_options {
    // A provider that failed this many requests in a row (after its own retries) is skipped for
    // `cooldown`, so that requests stop paying for its timeouts: it is then tried only when every
    // other choice of the route has failed.
    int cooldown_after = 3;
    std::chrono::milliseconds cooldown{30'000};
    // Told of each fallback, before the next provider is called: for a metric and the log. Runs on
    // the request's loop or thread; keep it cheap.
    std::function<void(std::string_view from, std::string_view to, const error& why)> on_fallback{};
};

// Whether another provider may succeed where one failed: the upstream was unreachable, slow,
// overloaded, refused our credentials or failed (429, 5xx, 401/403 upstream). A request the
// upstream called invalid would be invalid elsewhere too, and a cancelled one has no client left.
[[nodiscard]] inline bool worth_falling_back(const error& e) noexcept {
    switch (e.kind) {
    case error_kind::rate_limited:
    case error_kind::upstream:
    case error_kind::unavailable:
    case error_kind::timeout: return e.code != "request_cancelled";
    default: return false;
    }
}

/// A Provider that routes by model name (chatkit/provider.hpp, asynchronous form):
///   1. `model_route`s name the models clients may ask for, each an ordered list of groups of
///      deployments; "*" catches every other name; `provider/model` names one provider's model
///      directly (`claude/claude-sonnet-4-5`) — so a name nobody configured is refused (404)
///      before any upstream is paid.
///   2. A failure worth another try (worth_falling_back) before the client received a byte moves
///      on to the next deployment — for streams too, until their first delta is written. After
///      that, a failure is the stream's end, as it would be without a router.
///   3. A provider that keeps failing (router_options) is skipped for a cool-down; a success
///      ends its count.
///   4. The answer names the member that served it (`completion::provider`), which the service
///      sends as `x-chatkit-provider` and logs; `health()` reports each member in `parts`.
/// The members are of one type `P` (a provider_variant when they differ) and are called as the
/// service would call them (blocking ones on the worker pool). Thread-safe like every provider.
template <provider P, class Clock = std::chrono::steady_clock>
class router {
public:
    struct member {
        std::string name{};
        P provider;
    };

    // Throws std::invalid_argument when a route names no deployment or an unknown provider, a
    // name repeats, or a weight is zero: a configuration error, found at start-up.
    router(std::vector<member> members, std::vector<model_route> routes, router_options options = {})
        : members_(std::move(members)), routes_(std::move(routes)), options_(std::move(options)),
          state_(std::make_unique<member_state[]>(members_.size())) {
        if (members_.empty()) throw std::invalid_argument("a router needs at least one provider");
        for (std::size_t i = 0; i < members_.size(); ++i) {
            if (members_[i].name.empty()) throw std::invalid_argument("a router's provider has no name");
            for (std::size_t j = 0; j < i; ++j)
                if (members_[j].name == members_[i].name) throw std::invalid_argument("provider '" + members_[i].name + "' is named twice");
        }
        for (std::size_t r = 0; r < routes_.size(); ++r) {
            const auto& route = routes_[r];
            if (route.name.empty()) throw std::invalid_argument("a model route has no name");
            for (std::size_t q = 0; q < r; ++q)
                if (routes_[q].name == route.name) throw std::invalid_argument("model '" + route.name + "' is routed twice");
            if (route.groups.empty()) throw std::invalid_argument("model '" + route.name + "' has an empty route");
            for (const auto& group : route.groups) {
                if (group.empty()) throw std::invalid_argument("model '" + route.name + "' has an empty group in its route");
                for (const auto& t : group) {
                    if (!index_of(t.provider))
                        throw std::invalid_argument("model '" + route.name + "' names provider '" + t.provider + "', which is not defined");
                    if (t.weight == 0)
                        throw std::invalid_argument("model '" + route.name + "' gives provider '" + t.provider + "' weight 0");
                }
            }
        }
    }

    std::string_view name() const { return "router"; }

    task<result<completion>> complete(chat_request r) { return run(std::move(r), std::nullopt); }
    task<result<completion>> stream(chat_request r, delta_writer out) { return run(std::move(r), out); }

    // Down when some configured model has no member up (a member in cool-down counts as down):
    // the gateway then cannot serve what it advertises. Each member is in `parts`.
    component_health health() {
        component_health h;
        std::vector<bool> up(members_.size());
        for (std::size_t i = 0; i < members_.size(); ++i) {
            auto part = members_[i].provider.health();
            if (part.ok && cooling(i))
                part = {false, "skipped for a cool-down after " + std::to_string(options_.cooldown_after) + " failures in a row"};
            up[i] = part.ok;
            h.parts.emplace_back(members_[i].name, std::move(part));
        }
        for (const auto& route : routes_) {
            bool served = false;
            for (const auto& group : route.groups)
                for (const auto& t : group) served = served || up[*index_of(t.provider)];
            if (!served) {
                h.ok = false;
                h.detail += (h.detail.empty() ? "no provider is up for: " : ", ") + route.name;
            }
        }
        return h;
    }

    // The configured model names, in order ("*" aside); without any, the first member's models.
    std::vector<std::string> models() const {
        std::vector<std::string> names;
        for (const auto& route : routes_)
            if (route.name != "*") names.push_back(route.name);
        if (!names.empty()) return names;
        if constexpr (requires { members_.front().provider.models(); }) return members_.front().provider.models();
        else return {std::string{members_.front().provider.name()}};
    }

    // A member by name, e.g. to reach its plugin-specific calls; null when there is none.
    P* find(std::string_view member_name) noexcept {
        const auto i = index_of(member_name);
        return i ? &members_[*i].provider : nullptr;
    }

private:
    struct member_state {
        std::atomic<int> failures_in_a_row{0};
        std::atomic<typename Clock::rep> cool_until{0}; // Clock ticks since its epoch; 0: not cooling
    };
    struct attempt {
        std::size_t member;
        std::string model;
    };

    // Notes whether a stream's deltas reached the client: up to then, a failure may fall back.
    struct first_write_watch final : delta_writer::target {
        delta_writer out;
        bool wrote = false;
        explicit first_write_watch(delta_writer w) : out(w) {}
        task<bool> write(std::string_view text) override {
            wrote = true;
            return out.write(text);
        }
        bool write_now(std::string_view text) override {
            wrote = true;
            return out.write_now(text);
        }
        task<bool> write_tool_call(const tool_call_delta& piece) override {
            wrote = true;
            return out.write_tool_call(piece);
        }
    };

    // `out` by value: the task starts after its caller returned (coroutine parameters by value).
    task<result<completion>> run(chat_request r, std::optional<delta_writer> out) {
        auto plan = plan_for(r.model);
        if (!plan) co_return std::move(plan).error();
        const std::stop_token stop = co_await current_stop_token();
        const std::string asked = r.model;
        std::string tried;
        for (std::size_t n = 0;; ++n) {
            const attempt& a = (*plan)[n];
            member& m = members_[a.member];
            r.model = a.model;
            std::optional<result<completion>> outcome;
            bool delivered = false;
            if (out) {
                first_write_watch watch{*out};
                outcome.emplace(co_await call_stream(&m.provider, &r, delta_writer{&watch}));
                delivered = watch.wrote;
            } else {
                outcome.emplace(co_await call_complete(&m.provider, &r));
            }
            if (*outcome) {
                note(a.member, false);
                completion c = std::move(*outcome).value();
                c.provider = m.name;
                co_return c;
            }
            error e = std::move(*outcome).error();
            const bool fallback = worth_falling_back(e);
            note(a.member, fallback);
            tried += (tried.empty() ? "" : ", ") + m.name;
            if (!fallback || delivered || stop.stop_requested() || n + 1 == plan->size()) {
                if (n > 0) e.message += " (" + (asked.empty() ? std::string{"the default model"} : asked) + ": tried " + tried + ")";
                e.provider = m.name;
                co_return e;
            }
            if (options_.on_fallback) options_.on_fallback(m.name, members_[(*plan)[n + 1].member].name, e);
        }
    }

    // The deployments to try for `model`, in order: by route group, weighted within a group, with
    // the members in cool-down moved to the end.
    result<std::vector<attempt>> plan_for(const std::string& model) const {
        const model_route* route = nullptr;
        for (const auto& r : routes_)
            if (model.empty() ? r.name != "*" : r.name == model) {
                route = &r;
                break;
            }
        std::vector<attempt> plan;
        if (!route) {
            if (const auto slash = model.find('/'); slash != std::string::npos) {
                if (const auto i = index_of(std::string_view{model}.substr(0, slash))) {
                    plan.push_back({*i, model.substr(slash + 1)});
                    return plan;
                }
            }
            for (const auto& r : routes_)
                if (r.name == "*") route = &r;
        }
        if (!route) {
            std::string known;
            for (const auto& r : routes_) known += (known.empty() ? "" : ", ") + r.name;
            return error{error_kind::not_found,
                         "the model '" + model + "' is not served here; ask for one of: " + known + " (or provider/model)",
                         "model_not_found", "model"};
        }
        for (const auto& group : route->groups) {
            for (const auto* t : weighted_order(group))
                plan.push_back({*index_of(t->provider), t->model.empty() ? (route->name == "*" ? model : route->name) : t->model});
        }
        std::stable_partition(plan.begin(), plan.end(), [this](const attempt& a) { return !cooling(a.member); });
        return plan;
    }

    // A group's deployments, each next one drawn by weight from those left.
    static std::vector<const route_target*> weighted_order(const std::vector<route_target>& group) {
        std::vector<const route_target*> left;
        for (const auto& t : group) left.push_back(&t);
        if (left.size() == 1) return left;
        thread_local std::mt19937 rng{std::random_device{}()};
        std::vector<const route_target*> order;
        while (!left.empty()) {
            unsigned long total = 0;
            for (const auto* t : left) total += t->weight;
            unsigned long pick = std::uniform_int_distribution<unsigned long>(0, total - 1)(rng);
            auto it = left.begin();
            while (pick >= (*it)->weight) pick -= (*it++)->weight;
            order.push_back(*it);
            left.erase(it);
        }
        return order;
    }

    [[nodiscard]] std::optional<std::size_t> index_of(std::string_view member_name) const noexcept {
        for (std::size_t i = 0; i < members_.size(); ++i)
            if (members_[i].name == member_name) return i;
        return std::nullopt;
    }

    [[nodiscard]] bool cooling(std::size_t i) const noexcept {
        const auto until = state_[i].cool_until.load(std::memory_order_relaxed);
        return until != 0 && Clock::now().time_since_epoch().count() < until;
    }

    // A success or a failure that says nothing of the provider ends its count; the count-th
    // failure in a row starts its cool-down, and each one after it (a try once the cool-down is
    // over, or a last resort) starts it again.
    void note(std::size_t i, bool failed) noexcept {
        auto& st = state_[i];
        if (!failed) {
            st.failures_in_a_row.store(0, std::memory_order_relaxed);
            st.cool_until.store(0, std::memory_order_relaxed);
            return;
        }
        if (st.failures_in_a_row.fetch_add(1, std::memory_order_relaxed) + 1 >= options_.cooldown_after) {
            const auto until = Clock::now() + std::chrono::duration_cast<typename Clock::duration>(options_.cooldown);
            st.cool_until.store(until.time_since_epoch().count(), std::memory_order_relaxed);
        }
    }

    std::vector<member> members_;
    std::vector<model_route> routes_;
    router_options options_;
    std::unique_ptr<member_state[]> state_; // a pointer: atomics do not move, the router does
};

static_assert(async_provider<router<no_provider>>);

} // namespace chatkit
