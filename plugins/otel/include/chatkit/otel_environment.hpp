// Tracing configured by OpenTelemetry's standard environment variables, so that a deployment
// configures chatkit like any other instrumented service:
//   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the traces URL as is, or
//   OTEL_EXPORTER_OTLP_ENDPOINT         a base URL, to which /v1/traces is appended;
//                                       tracing is on when either is set
//   OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL http/protobuf (default) or http/json (grpc is refused)
//   OTEL_EXPORTER_OTLP[_TRACES]_HEADERS  key=value,... (values percent-encoded)
//   OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT  milliseconds per export (default 10000)
//   OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES (key=value,...)
//   OTEL_TRACES_SAMPLER (parentbased_always_on by default, always_on, always_off,
//                        traceidratio, parentbased_always_off, parentbased_traceidratio)
//   OTEL_TRACES_SAMPLER_ARG             the ratio, 0 to 1
//   OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE
//   OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none, turn tracing off.
#pragma once

#include "chatkit/otel_tracing.hpp"
#include "chatkit/otlp_exporter.hpp"

#include <charconv>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chatkit {

struct otel_settings {
    otlp_exporter_options exporter{};
    trace_sampler sampler{};
};

namespace otel_env_detail {

inline std::string trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return std::string{s};
}

inline std::string percent_decode(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        unsigned value = 0;
        if (s[i] == '%' && i + 2 < s.size() && std::from_chars(s.data() + i + 1, s.data() + i + 3, value, 16).ptr == s.data() + i + 3) {
            out += static_cast<char>(value);
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

// "k1=v1,k2=v2": W3C Baggage's shape, which the OTEL_* lists use. A pair without '=' is an error
// that names the variable, never the value (it may hold a key).
inline std::vector<std::pair<std::string, std::string>> key_values(std::string_view text, std::string_view variable) {
    std::vector<std::pair<std::string, std::string>> out;
    while (!text.empty()) {
        const auto comma = text.find(',');
        const std::string_view item = text.substr(0, comma);
        text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
        if (trim(item).empty()) continue;
        const auto eq = item.find('=');
        if (eq == std::string_view::npos || trim(item.substr(0, eq)).empty())
            throw std::invalid_argument(std::string{variable} + ": each item must be key=value");
        out.emplace_back(trim(item.substr(0, eq)), percent_decode(trim(item.substr(eq + 1))));
    }
    return out;
}

template <class Int>
Int positive(std::string_view text, std::string_view variable) {
    Int v{};
    const auto t = trim(text);
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc{} || end != t.data() + t.size() || v <= 0)
        throw std::invalid_argument(std::string{variable} + " must be a positive whole number, not \"" + t + "\"");
    return v;
}

} // namespace otel_env_detail

/// The tracing settings the environment gives, or none when tracing is off. Throws
/// std::invalid_argument naming the variable that is wrong (never a header's value).
/// `service_name` is the default for OTEL_SERVICE_NAME, `service_version` the resource's
/// service.version.
[[nodiscard]] inline std::optional<otel_settings> otel_settings_from_environment(const std::function<const char*(const char*)>& getenv,
                                                                                 std::string_view service_name = "chatkit",
                                                                                 std::string_view service_version = {}) {
    using namespace otel_env_detail;
    const auto var = [&](const char* name) -> std::optional<std::string> {
        const char* v = getenv(name);
        if (!v || trim(v).empty()) return std::nullopt;
        return trim(v);
    };
    // The traces-specific variable wins over the general one.
    const auto either = [&](const char* specific, const char* general) -> std::optional<std::pair<std::string, const char*>> {
        if (auto v = var(specific)) return std::pair{*v, specific};
        if (auto v = var(general)) return std::pair{*v, general};
        return std::nullopt;
    };
    if (auto disabled = var("OTEL_SDK_DISABLED"); disabled && (*disabled == "true" || *disabled == "TRUE")) return std::nullopt;
    if (auto exporter = var("OTEL_TRACES_EXPORTER"); exporter && *exporter == "none") return std::nullopt;
    else if (exporter && *exporter != "otlp")
        throw std::invalid_argument("OTEL_TRACES_EXPORTER=" + *exporter + " is not supported: use otlp or none");

    otel_settings s;
    auto& e = s.exporter;
    if (auto url = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        e.endpoint = *url;
    } else if (auto base = var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        e.endpoint = *base + (base->ends_with('/') ? "v1/traces" : "/v1/traces");
    } else {
        return std::nullopt;
    }
    if (!e.endpoint.starts_with("http://") && !e.endpoint.starts_with("https://"))
        throw std::invalid_argument("the OTLP traces endpoint must be an http:// or https:// URL");

    if (auto p = either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")) {
        if (p->first == "http/protobuf") e.encoding = otlp_encoding::protobuf;
        else if (p->first == "http/json") e.encoding = otlp_encoding::json;
        else
            throw std::invalid_argument(std::string{p->second} + "=" + p->first +
                                        " is not supported: use http/protobuf or http/json (OTLP over HTTP)");
    }
    if (auto h = either("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")) e.headers = key_values(h->first, h->second);
    if (auto t = either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"))
        e.timeout = std::chrono::milliseconds{positive<long>(t->first, t->second)};
    if (auto v = var("OTEL_BSP_SCHEDULE_DELAY"))
        e.schedule_delay = std::chrono::milliseconds{positive<long>(*v, "OTEL_BSP_SCHEDULE_DELAY")};
    if (auto v = var("OTEL_BSP_MAX_QUEUE_SIZE")) e.max_queue = positive<std::size_t>(*v, "OTEL_BSP_MAX_QUEUE_SIZE");
    if (auto v = var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")) e.max_batch = positive<std::size_t>(*v, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
    e.max_batch = std::min(e.max_batch, e.max_queue);

    // Resource: OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME over its service.name.
    std::string name{service_name};
    if (auto attrs = var("OTEL_RESOURCE_ATTRIBUTES"))
        for (auto& [k, v] : key_values(*attrs, "OTEL_RESOURCE_ATTRIBUTES")) {
            if (k == "service.name") name = v;
            else e.resource.attributes.emplace_back(k, v);
        }
    if (auto n = var("OTEL_SERVICE_NAME")) name = *n;
    e.resource.attributes.insert(e.resource.attributes.begin(), {"service.name", name});
    if (!service_version.empty()) e.resource.attributes.emplace_back("service.version", std::string{service_version});
    e.resource.attributes.emplace_back("telemetry.sdk.name", "chatkit");
    e.resource.attributes.emplace_back("telemetry.sdk.language", "cpp");
    e.resource.scope_version = std::string{service_version};

    const std::string sampler = var("OTEL_TRACES_SAMPLER").value_or("parentbased_always_on");
    double ratio = 1.0;
    if (auto arg = var("OTEL_TRACES_SAMPLER_ARG"); arg && sampler.ends_with("traceidratio")) {
        const auto [end, ec] = std::from_chars(arg->data(), arg->data() + arg->size(), ratio);
        if (ec != std::errc{} || end != arg->data() + arg->size() || ratio < 0 || ratio > 1)
            throw std::invalid_argument("OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, not \"" + *arg + "\"");
    }
    if (sampler == "always_on") s.sampler = {1.0, false};
    else if (sampler == "always_off") s.sampler = {0.0, false};
    else if (sampler == "traceidratio") s.sampler = {ratio, false};
    else if (sampler == "parentbased_always_on") s.sampler = {1.0, true};
    else if (sampler == "parentbased_always_off") s.sampler = {0.0, true};
    else if (sampler == "parentbased_traceidratio") s.sampler = {ratio, true};
    else
        throw std::invalid_argument("OTEL_TRACES_SAMPLER=" + sampler +
                                    " is not supported: use always_on, always_off, traceidratio or their parentbased_ forms");
    return s;
}

} // namespace chatkit
