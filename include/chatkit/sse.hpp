// Server-Sent Events, both ways: framing the events the service sends, and an incremental parser
// for the streams providers receive (WHATWG HTML §9.2.5–9.2.6; docs/protocols.md §7).
#pragma once

#include <string>
#include <string_view>

namespace chatkit {

// One event. `data` must not contain a newline: ours is always single-line JSON, which escapes them.
[[nodiscard]] inline std::string sse_event(std::string_view event, std::string_view data) {
    std::string out;
    out.reserve(event.size() + data.size() + 16);
    if (!event.empty()) out.append("event: ").append(event).append("\n");
    out.append("data: ").append(data).append("\n\n");
    return out;
}

struct sse_message {
    std::string event = "message"; // the `event:` field, "message" when absent
    std::string data;              // `data:` lines joined by "\n"
    std::string id;                // the last event id seen on the stream
};

// Feed it the bytes of a stream in chunks of any size, cut anywhere (inside a line, a CR LF pair
// or a UTF-8 sequence); it calls `on_event(const sse_message&)` for each dispatched event.
class sse_parser {
public:
    template <class OnEvent>
    void feed(std::string_view chunk, OnEvent&& on_event) {
        if (!at_start_) return consume(chunk, on_event);
        // A UTF-8 byte order mark may open the stream, and may itself arrive in pieces.
        static constexpr std::string_view bom = "\xEF\xBB\xBF";
        start_.append(chunk);
        if (start_.size() < bom.size() && bom.starts_with(start_)) return;
        at_start_ = false;
        const std::string held = std::move(start_);
        consume(std::string_view{held}.substr(std::string_view{held}.starts_with(bom) ? bom.size() : 0), on_event);
    }

    // The stream ended: an event without its closing blank line is discarded (§9.2.6).
    void reset() {
        line_.clear();
        data_.clear();
        event_.clear();
        has_data_ = false;
        skip_lf_ = false;
    }

private:
    template <class OnEvent>
    void consume(std::string_view chunk, OnEvent& on_event) {
        while (!chunk.empty()) {
            if (skip_lf_) {
                skip_lf_ = false;
                if (chunk.front() == '\n') { // the LF of a CR LF pair cut between chunks
                    chunk.remove_prefix(1);
                    continue;
                }
            }
            const auto eol = chunk.find_first_of("\r\n");
            if (eol == std::string_view::npos) {
                line_.append(chunk);
                return;
            }
            line_.append(chunk.substr(0, eol));
            skip_lf_ = chunk[eol] == '\r';
            chunk.remove_prefix(eol + 1);
            process_line(on_event);
            line_.clear();
        }
    }

    template <class OnEvent>
    void process_line(OnEvent& on_event) {
        if (line_.empty()) { // dispatch
            if (!has_data_) {
                event_.clear();
                return;
            }
            sse_message m;
            if (!event_.empty()) m.event = std::move(event_);
            m.data = std::move(data_);
            m.id = last_id_;
            data_.clear();
            event_.clear();
            has_data_ = false;
            on_event(static_cast<const sse_message&>(m));
            return;
        }
        if (line_.front() == ':') return; // a comment
        std::string_view field = line_, value;
        if (const auto colon = field.find(':'); colon != std::string_view::npos) {
            value = field.substr(colon + 1);
            field = field.substr(0, colon);
            if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        }
        if (field == "data") {
            if (has_data_) data_ += '\n';
            data_.append(value);
            has_data_ = true;
        } else if (field == "event") {
            event_ = value;
        } else if (field == "id") {
            if (value.find('\0') == std::string_view::npos) last_id_ = value;
        } // "retry" and unknown fields are ignored: the caller decides how to reconnect
    }

    std::string line_, data_, event_, last_id_, start_;
    bool has_data_ = false;
    bool skip_lf_ = false;
    bool at_start_ = true;
};

} // namespace chatkit
