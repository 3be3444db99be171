// Spans, and their OTLP encodings (an ExportTraceServiceRequest) in both of OTLP/HTTP's
// formats: binary protobuf (`http/protobuf`, the default) and JSON (`http/json`).
//
// Written by hand rather than with libprotobuf: Debian packages no OpenTelemetry .proto files or
// generated code, and the request is five nested messages of which chatkit writes a handful of
// fields; a writer of varints and length-prefixed fields is shorter than the build step
// generated code would need, and it runs on the exporter's thread only. Field numbers are those
// of opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto (OTLP 1.x, stable).
// Tests decode both encodings with OpenTelemetry's own generated decoder.
#pragma once

#include "chatkit/json_text.hpp"
#include "chatkit/trace_context.hpp"

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace chatkit {

struct span_attribute {
    // A name with static storage (a literal, as the semantic conventions' names are): spans are
    // built per request, and an owned copy of names like "gen_ai.usage.input_tokens" would cost
    // an allocation each.
    std::string_view key;
    std::variant<std::string, std::int64_t, double, bool, std::vector<std::string>> value;
};

enum class span_kind : int { internal = 1, server = 2, client = 3 };

struct span_data {
    chatkit::trace_id trace{};
    chatkit::span_id id{};
    std::optional<chatkit::span_id> parent{};
    bool parent_is_remote = false; // the parent is another process's span (from a traceparent)
    std::string name{};
    span_kind kind = span_kind::internal;
    std::uint64_t start_unix_ns = 0;
    std::uint64_t end_unix_ns = 0;
    std::vector<span_attribute> attributes{};
    bool error = false;           // status ERROR (else UNSET, as instrumentation leaves it)
    std::string status_message{}; // with error: why
    std::uint8_t trace_flags = 1; // the W3C flags (sampled)
};

/// What every span of a process shares: its resource (service.name, ...) and the
/// instrumentation scope that made the spans.
struct trace_resource {
    std::vector<std::pair<std::string, std::string>> attributes{}; // (key, string value)
    std::string scope_name = "chatkit";
    std::string scope_version{};
};

namespace otlp_detail {

// Protobuf's wire format: a tag is (field << 3 | wire type); 0 varint, 1 fixed64, 2 length-prefixed, 5 fixed32.
class proto_writer {
public:
    std::string out;

    void varint(std::uint64_t v) {
        char bytes[10];
        out.append(bytes, encode_varint(v, bytes));
    }
    static std::size_t encode_varint(std::uint64_t v, char* bytes) {
        std::size_t n = 0;
        while (v >= 0x80) {
            bytes[n++] = static_cast<char>(v | 0x80);
            v >>= 7;
        }
        bytes[n++] = static_cast<char>(v);
        return n;
    }
    void tag(int field, int wire) { varint(static_cast<std::uint64_t>(field) << 3 | static_cast<std::uint64_t>(wire)); }
    void uint_field(int field, std::uint64_t v) {
        tag(field, 0);
        varint(v);
    }
    void fixed64_field(int field, std::uint64_t v) {
        tag(field, 1);
        char bytes[8];
        for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(v >> (8 * i)); // little-endian
        out.append(bytes, 8);
    }
    void fixed32_field(int field, std::uint32_t v) {
        tag(field, 5);
        char bytes[4];
        for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>(v >> (8 * i));
        out.append(bytes, 4);
    }
    void double_field(int field, double v) {
        std::uint64_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        fixed64_field(field, bits);
    }
    void bytes_field(int field, std::string_view v) {
        tag(field, 2);
        varint(v.size());
        out += v;
    }
    template <std::size_t N>
    void bytes_field(int field, const std::array<std::uint8_t, N>& v) {
        bytes_field(field, std::string_view{reinterpret_cast<const char*>(v.data()), N});
    }
    // A nested message: written by `fill` in place, then its length put in front of it. The
    // length is known only afterwards; moving a message's bytes along by the few bytes of its
    // length costs less than a buffer of its own per message (five levels, a few per attribute).
    template <class Fill>
    void message_field(int field, Fill&& fill) {
        tag(field, 2);
        const std::size_t start = out.size();
        fill(*this);
        char prefix[10];
        out.insert(start, prefix, encode_varint(out.size() - start, prefix));
    }
};

// AnyValue: 1 string, 2 bool, 3 int64, 4 double, 5 ArrayValue (1: repeated AnyValue).
inline void write_value(proto_writer& w, const decltype(span_attribute::value)& v) {
    if (const auto* s = std::get_if<std::string>(&v)) w.bytes_field(1, *s);
    else if (const auto* b = std::get_if<bool>(&v)) w.uint_field(2, *b ? 1 : 0);
    else if (const auto* i = std::get_if<std::int64_t>(&v)) w.uint_field(3, static_cast<std::uint64_t>(*i));
    else if (const auto* d = std::get_if<double>(&v)) w.double_field(4, *d);
    else if (const auto* a = std::get_if<std::vector<std::string>>(&v))
        w.message_field(5, [&](proto_writer& arr) {
            for (const auto& item : *a) arr.message_field(1, [&](proto_writer& any) { any.bytes_field(1, item); });
        });
}

// KeyValue: 1 key, 2 value.
inline void write_attributes(proto_writer& w, int field, const std::vector<span_attribute>& attributes) {
    for (const auto& a : attributes)
        w.message_field(field, [&](proto_writer& kv) {
            kv.bytes_field(1, a.key);
            kv.message_field(2, [&](proto_writer& any) { write_value(any, a.value); });
        });
}
inline void write_attributes(proto_writer& w, int field, const std::vector<std::pair<std::string, std::string>>& attributes) {
    // Not a structured binding: clang before 16 cannot capture one in a lambda.
    for (const auto& attribute : attributes)
        w.message_field(field, [&](proto_writer& kv) {
            kv.bytes_field(1, attribute.first);
            kv.message_field(2, [&](proto_writer& any) { any.bytes_field(1, attribute.second); });
        });
}

// Span.flags: the W3C flags in bits 0-7; bit 8 set says bit 9 is known, bit 9 that the parent is remote.
inline std::uint32_t span_flags(const span_data& s) { return s.trace_flags | 0x100u | (s.parent && s.parent_is_remote ? 0x200u : 0u); }

inline void append_json_value(std::string& out, const decltype(span_attribute::value)& v) {
    if (const auto* s = std::get_if<std::string>(&v)) {
        out += R"({"stringValue":)";
        append_json_string(out, *s);
    } else if (const auto* b = std::get_if<bool>(&v)) {
        out += *b ? R"({"boolValue":true)" : R"({"boolValue":false)";
    } else if (const auto* i = std::get_if<std::int64_t>(&v)) {
        out += R"({"intValue":")"; // int64 is a decimal string in protobuf's JSON mapping
        out += std::to_string(*i);
        out += '"';
    } else if (const auto* d = std::get_if<double>(&v)) {
        out += R"({"doubleValue":)";
        append_json(out, nlohmann::json(*d));
    } else if (const auto* a = std::get_if<std::vector<std::string>>(&v)) {
        out += R"({"arrayValue":{"values":[)";
        for (std::size_t k = 0; k < a->size(); ++k) {
            if (k) out += ',';
            out += R"({"stringValue":)";
            append_json_string(out, (*a)[k]);
            out += '}';
        }
        out += "]}";
    }
    out += '}';
}

inline void append_json_attributes(std::string& out, const std::vector<std::pair<std::string, std::string>>& attributes) {
    out += '[';
    for (std::size_t k = 0; k < attributes.size(); ++k) {
        if (k) out += ',';
        out += R"({"key":)";
        append_json_string(out, attributes[k].first);
        out += R"(,"value":{"stringValue":)";
        append_json_string(out, attributes[k].second);
        out += "}}";
    }
    out += ']';
}

inline void append_json_attributes(std::string& out, const std::vector<span_attribute>& attributes) {
    out += '[';
    for (std::size_t k = 0; k < attributes.size(); ++k) {
        if (k) out += ',';
        out += R"({"key":)";
        append_json_string(out, attributes[k].key);
        out += R"(,"value":)";
        append_json_value(out, attributes[k].value);
        out += '}';
    }
    out += ']';
}

} // namespace otlp_detail

/// An ExportTraceServiceRequest holding `spans`, in protobuf's binary form
/// (Content-Type: application/x-protobuf).
[[nodiscard]] inline std::string otlp_protobuf(const trace_resource& resource, std::span<const span_data> spans) {
    using otlp_detail::proto_writer;
    proto_writer request;
    request.out.reserve(256 + spans.size() * 512);
    // ExportTraceServiceRequest.resource_spans = 1
    request.message_field(1, [&](proto_writer& rs) {
        // ResourceSpans.resource = 1 (Resource.attributes = 1)
        rs.message_field(1, [&](proto_writer& r) { otlp_detail::write_attributes(r, 1, resource.attributes); });
        // ResourceSpans.scope_spans = 2
        rs.message_field(2, [&](proto_writer& ss) {
            // ScopeSpans.scope = 1 (InstrumentationScope: 1 name, 2 version)
            ss.message_field(1, [&](proto_writer& scope) {
                scope.bytes_field(1, resource.scope_name);
                if (!resource.scope_version.empty()) scope.bytes_field(2, resource.scope_version);
            });
            for (const auto& s : spans) {
                // ScopeSpans.spans = 2; Span: 1 trace_id, 2 span_id, 4 parent_span_id, 5 name,
                // 6 kind, 7 start (fixed64), 8 end (fixed64), 9 attributes, 15 status, 16 flags (fixed32)
                ss.message_field(2, [&](proto_writer& sp) {
                    sp.bytes_field(1, s.trace);
                    sp.bytes_field(2, s.id);
                    if (s.parent) sp.bytes_field(4, *s.parent);
                    sp.bytes_field(5, s.name);
                    sp.uint_field(6, static_cast<std::uint64_t>(s.kind));
                    sp.fixed64_field(7, s.start_unix_ns);
                    sp.fixed64_field(8, s.end_unix_ns);
                    otlp_detail::write_attributes(sp, 9, s.attributes);
                    if (s.error)
                        sp.message_field(15, [&](proto_writer& st) { // Status: 2 message, 3 code (2 = ERROR)
                            if (!s.status_message.empty()) st.bytes_field(2, s.status_message);
                            st.uint_field(3, 2);
                        });
                    sp.fixed32_field(16, otlp_detail::span_flags(s));
                });
            }
        });
    });
    return std::move(request.out);
}

/// The same request in OTLP/JSON (Content-Type: application/json): protobuf's JSON mapping with
/// OTLP's two departures, ids as lower-case hex rather than base64 and enums as integers.
[[nodiscard]] inline std::string otlp_json(const trace_resource& resource, std::span<const span_data> spans) {
    std::string out;
    out.reserve(512 + spans.size() * 768);
    out += R"({"resourceSpans":[{"resource":{"attributes":)";
    otlp_detail::append_json_attributes(out, resource.attributes);
    out += R"(},"scopeSpans":[{"scope":{"name":)";
    append_json_string(out, resource.scope_name);
    if (!resource.scope_version.empty()) {
        out += R"(,"version":)";
        append_json_string(out, resource.scope_version);
    }
    out += R"(},"spans":[)";
    for (std::size_t k = 0; k < spans.size(); ++k) {
        const auto& s = spans[k];
        if (k) out += ',';
        out += R"({"traceId":")" + to_hex(s.trace) + R"(","spanId":")" + to_hex(s.id) + '"';
        if (s.parent) out += R"(,"parentSpanId":")" + to_hex(*s.parent) + '"';
        out += R"(,"name":)";
        append_json_string(out, s.name);
        out += R"(,"kind":)" + std::to_string(static_cast<int>(s.kind));
        out += R"(,"startTimeUnixNano":")" + std::to_string(s.start_unix_ns);
        out += R"(","endTimeUnixNano":")" + std::to_string(s.end_unix_ns) + R"(","attributes":)";
        otlp_detail::append_json_attributes(out, s.attributes);
        if (s.error) {
            out += R"(,"status":{"code":2)";
            if (!s.status_message.empty()) {
                out += R"(,"message":)";
                append_json_string(out, s.status_message);
            }
            out += '}';
        }
        out += R"(,"flags":)" + std::to_string(otlp_detail::span_flags(s)) + '}';
    }
    out += "]}]}]}";
    return out;
}

} // namespace chatkit
