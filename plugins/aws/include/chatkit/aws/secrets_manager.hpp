// A secret held in AWS Secrets Manager (an API key, say), read with GetSecretValue when first
// needed and again once `refresh` has passed, so that a rotated key is picked up and the key is
// never in the environment. Plug it into a provider as its key source:
//
//   aws::cached_secret key{{.secret_id = arn, .json_field = "api_key"}};
//   openai_options o;
//   o.api_key_source = [key]() mutable { return key.get(); };
//   o.on_key_rejected = [key](const std::string& k) mutable { key.expire(k); };
#pragma once

#include "chatkit/aws/json_client.hpp"
#include "chatkit/error.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace chatkit::aws {

inline json_service secrets_manager_service() { return {"Secrets Manager", "secretsmanager", "secretsmanager", "1.1", "SECRETS_MANAGER"}; }

struct secret_options {
    std::string secret_id;  // the secret's ARN (its region is then the region) or name
    std::string json_field; // when the SecretString is a JSON object: the field holding the value
    std::chrono::seconds refresh{300};
    // After a failed read, callers get the last value (or the error) this long before the next try.
    std::chrono::seconds retry_after_failure{10};
    // Told each failed read with the whole story: the secret's id and what Secrets Manager said
    // (which may name the secret's and the caller's ARNs). For the deployment's log: what callers
    // get, and so what may reach a client, names neither.
    std::function<void(const error&)> on_error{};
    // A short deadline: a caller waits for the first read.
    json_client_options client = [] {
        json_client_options c;
        c.deadline = std::chrono::milliseconds{5'000};
        return c;
    }();
};

// The region an ARN names: arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME.
inline std::string region_of_arn(std::string_view arn) {
    if (!arn.starts_with("arn:")) return {};
    std::size_t at = 0;
    for (int colon = 0; colon < 3; ++colon)
        if ((at = arn.find(':', at) + 1) == 0) return {};
    const auto end = arn.find(':', at);
    return end == std::string_view::npos ? std::string{} : std::string{arn.substr(at, end - at)};
}

// Copies share one cache. get() is safe from any thread; while one thread refreshes, the others
// keep getting the value it replaces. A failed refresh keeps the last value: a brief outage of
// Secrets Manager does not stop the service, and an error reaches callers only when there never
// was a value. Errors name the secret, never its value.
template <class Clock = std::chrono::steady_clock>
class cached_secret {
public:
    // Throws std::invalid_argument without a secret id or a region.
    explicit cached_secret(secret_options options, environment env = process_environment())
        : s_(std::make_shared<shared>(std::move(options), std::move(env))) {}

    result<std::string> get() {
        auto& s = *s_;
        std::unique_lock lock{s.mutex};
        const auto now = Clock::now();
        if (s.next_read && now < *s.next_read) return s.current();
        if (s.reading) {
            if (s.value) return *s.value;
            s.read_done.wait(lock, [&s] { return !s.reading; });
            return s.current();
        }
        s.reading = true;
        lock.unlock();
        auto read = s.read();
        lock.lock();
        s.reading = false;
        if (read) {
            s.value = std::move(*read);
            s.next_read = Clock::now() + s.options.refresh;
        } else {
            s.failure = std::move(read).error();
            s.next_read = Clock::now() + s.options.retry_after_failure;
        }
        s.read_done.notify_all();
        return s.current();
    }

    // The upstream refused `rejected` (an HTTP 401): if that is still the value held, the next
    // get() reads the secret again at once instead of after `refresh`, so a key rotated in
    // Secrets Manager and revoked upstream costs one failed request, not up to `refresh` of them.
    // Once per value: while a fresh read gives the same refused key, further 401s do not turn
    // every request into a call to Secrets Manager. Returns whether a read was brought forward.
    bool expire(const std::string& rejected) {
        auto& s = *s_;
        std::lock_guard lock{s.mutex};
        if (!s.value || *s.value != rejected || s.expired_value == rejected) return false;
        s.expired_value = rejected;
        s.next_read = Clock::now();
        return true;
    }

    [[nodiscard]] const std::string& secret_id() const noexcept { return s_->options.secret_id; }

private:
    struct shared {
        shared(secret_options o, environment env)
            : options(std::move(o)), client(secrets_manager_service(), with_region(options), std::move(env)) {}

        static json_client_options with_region(const secret_options& o) {
            if (o.secret_id.empty()) throw std::invalid_argument("no Secrets Manager secret id");
            auto c = o.client;
            if (c.region.empty()) c.region = region_of_arn(o.secret_id);
            return c;
        }

        result<std::string> current() const {
            if (value) return *value;
            return failure.value_or(error{error_kind::unavailable, "secret not read yet", "secret_unavailable"});
        }

        result<std::string> read() {
            auto told = read_value();
            if (!told && options.on_error) {
                error logged = told.error();
                logged.message = detail_;
                options.on_error(logged);
            }
            return told;
        }

        // A failure's message for callers says what is wrong without naming the secret; detail_
        // keeps the full one for on_error.
        result<std::string> read_value() {
            const auto what = "secret " + options.secret_id + " (Secrets Manager)";
            auto answer = client.call("GetSecretValue", {{"SecretId", options.secret_id}});
            if (!answer) {
                auto e = std::move(answer).error();
                e.kind = error_kind::unavailable;
                detail_ = "cannot read " + what + ": " + e.message;
                e.message = "cannot read the secret that holds this key in Secrets Manager (" + e.code + "); the server's log names it";
                return e;
            }
            const auto text = answer->find("SecretString");
            if (text == answer->end() || !text->is_string()) return unusable(what, " has no SecretString (a binary secret cannot be used)");
            std::string secret = text->get<std::string>();
            if (!options.json_field.empty()) {
                if (const auto j = nlohmann::json::parse(secret, nullptr, false); j.is_object()) {
                    const auto field = j.find(options.json_field);
                    if (field == j.end() || !field->is_string())
                        return unusable(what, " is a JSON object without a string \"" + options.json_field + "\"");
                    secret = field->get<std::string>();
                }
            }
            // `aws secretsmanager put-secret-value --secret-string file://key.txt` keeps the newline.
            const auto first = secret.find_first_not_of(" \t\r\n");
            secret = first == std::string::npos ? std::string{} : secret.substr(first, secret.find_last_not_of(" \t\r\n") - first + 1);
            if (secret.empty()) return unusable(what, " is empty: put the value in with aws secretsmanager put-secret-value");
            return secret;
        }

        error unusable(const std::string& what, const std::string& why) {
            detail_ = what + why;
            return {error_kind::unavailable, "the secret that holds this key in Secrets Manager" + why + " (the server's log names it)",
                    "secret_unusable"};
        }
        std::string detail_; // the last failure, whole, for on_error (under the shared state's read)

        secret_options options;
        json_client client;
        std::mutex mutex;
        std::condition_variable read_done;
        bool reading = false;
        std::optional<std::string> value;
        std::optional<std::string> expired_value; // the value expire() last brought a read forward for
        std::optional<error> failure;
        std::optional<typename Clock::time_point> next_read;
    };

    std::shared_ptr<shared> s_;
};

} // namespace chatkit::aws
