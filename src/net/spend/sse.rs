//! Streaming responses: an incremental server-sent-events parser and the
//! per-API accumulators that find a stream's final usage.
//!
//! Invariants:
//! - Bounded memory: the parser holds at most one line and one event's data,
//!   each capped at [`MAX_EVENT_BYTES`]; an event past the cap is dropped
//!   (counted in [`StreamUsage::lost_events`]) and, if it carried the usage,
//!   the stream ends without usage and is charged its reservation. Events
//!   that cannot carry usage (text deltas) are not buffered at all once their
//!   `event:` name is known.
//! - Chunk boundaries do not matter: feeding a body in any split (even byte
//!   by byte, even between `\r` and `\n`) gives the same events.
//! - Per the SSE format, an event is dispatched only at its terminating blank
//!   line: a stream cut mid-event never yields that event.
//! - [`StreamUsage::finish`] returns usage only when the stream reached the
//!   point where the API reports its final usage; otherwise `None`, and the
//!   caller charges the reservation.
//! - Pure: no I/O.

use memchr::{memchr2, memmem};
use serde::Deserialize;

use super::usage::{
    AnthropicUsage, Endpoint, Metered, OpenAiChatUsage, OpenAiResponsesUsage, Usage,
};

/// The largest SSE line or event data buffered.
pub const MAX_EVENT_BYTES: usize = 4 << 20;
/// Event names longer than this are kept truncated (none that matter is).
const MAX_EVENT_NAME: usize = 64;

/// An incremental SSE parser (the WHATWG event-stream format: `\n`, `\r\n`
/// or `\r` line ends, `data:` lines joined with `\n`, `:` comments).
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// Drop the rest of the current line: it passed the cap, or it is data
    /// of an unwanted event.
    line_mode: LineMode,
    /// The previous chunk ended with `\r` (a following `\n` belongs to it).
    after_cr: bool,
    /// The current event's data (each line + `\n`).
    data: Vec<u8>,
    has_data: bool,
    /// The current event's `event:` name.
    name: Option<String>,
    /// The current event lost data to the cap.
    oversized: bool,
    /// Events to buffer, by name (`None`: unnamed, i.e. `message`).
    wants: fn(Option<&str>) -> bool,
    lost: u64,
    cap: usize,
}

impl SseParser {
    /// A parser that buffers only events for which `wants` is true (it is
    /// asked again at dispatch, when a late `event:` line may have come).
    pub fn new(wants: fn(Option<&str>) -> bool) -> SseParser {
        Self::with_cap(wants, MAX_EVENT_BYTES)
    }

    fn with_cap(wants: fn(Option<&str>) -> bool, cap: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            line_mode: LineMode::Keep,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            name: None,
            oversized: false,
            wants,
            lost: 0,
            cap,
        }
    }

    /// Wanted events dropped because they passed the cap.
    pub fn lost_events(&self) -> u64 {
        self.lost
    }

    /// Feed the next chunk; `on_event(name, data)` is called for every
    /// complete wanted event, in order.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(Option<&str>, &[u8])) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match memchr2(b'\n', b'\r', chunk) {
                None => {
                    self.push_line_bytes(chunk);
                    return;
                }
                Some(i) => {
                    self.push_line_bytes(&chunk[..i]);
                    let mut next = i + 1;
                    if chunk[i] == b'\r' {
                        match chunk.get(next) {
                            Some(b'\n') => next += 1,
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    self.end_line(on_event);
                    chunk = &chunk[next..];
                }
            }
        }
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.line_mode != LineMode::Keep {
            return;
        }
        if self.line.len() + bytes.len() > self.cap {
            self.line_mode = LineMode::Overflow;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
        let unwanted = self.name.as_deref().is_some_and(|n| !(self.wants)(Some(n)));
        if unwanted && self.line.starts_with(b"data:") {
            self.line_mode = LineMode::SkipData;
            self.line.clear();
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Option<&str>, &[u8])) {
        match std::mem::replace(&mut self.line_mode, LineMode::Keep) {
            LineMode::Keep => {}
            LineMode::SkipData => {
                self.has_data = true;
                return;
            }
            LineMode::Overflow => {
                // Most likely a giant data line: the event is incomplete.
                self.has_data = true;
                self.oversized = true;
                return;
            }
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(on_event);
        } else if line[0] != b':' {
            let (field, value) = match memchr::memchr(b':', &line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"data" => self.push_data(value),
                b"event" => {
                    let end = value.len().min(MAX_EVENT_NAME);
                    self.name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
                }
                _ => {}
            }
            // Reuse the allocation for the next line.
            self.line = line;
            self.line.clear();
        }
    }

    fn push_data(&mut self, value: &[u8]) {
        self.has_data = true;
        if self.oversized || (self.name.is_some() && !(self.wants)(self.name.as_deref())) {
            return;
        }
        if self.data.len() + value.len() + 1 > self.cap {
            self.oversized = true;
            self.data = Vec::new();
        } else {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Option<&str>, &[u8])) {
        let name = self.name.take();
        let wanted = (self.wants)(name.as_deref());
        if self.has_data && wanted {
            if self.oversized {
                self.lost += 1;
            } else {
                let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
                on_event(name.as_deref(), data);
            }
        }
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineMode {
    Keep,
    Overflow,
    SkipData,
}

// ---------------------------------------------------------------------------
// Usage in streams

#[derive(Debug)]
enum Progress {
    /// Chat completions: the chunk with a non-null `usage` (sent last when
    /// `stream_options.include_usage` is set).
    OpenAiChat { usage: Option<Usage> },
    /// Responses: `response.usage` of the terminal event.
    OpenAiResponses { usage: Option<Usage> },
    /// Messages: `message_start`'s usage updated by the cumulative usage of
    /// each `message_delta`; final once a `message_delta` came.
    Anthropic {
        usage: Option<AnthropicUsage>,
        delta_seen: bool,
    },
}

/// The usage of one streaming response, fed as its body arrives.
#[derive(Debug)]
pub struct StreamUsage {
    parser: SseParser,
    progress: Progress,
    model: Option<String>,
    malformed: u64,
}

const RESPONSES_TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

fn wants_responses(name: Option<&str>) -> bool {
    name.is_none_or(|n| RESPONSES_TERMINAL.contains(&n) || n == "error")
}

fn wants_anthropic(name: Option<&str>) -> bool {
    name.is_none_or(|n| matches!(n, "message_start" | "message_delta" | "error"))
}

fn wants_all(_: Option<&str>) -> bool {
    true
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<OpenAiChatUsage>,
}

#[derive(Deserialize)]
struct ResponsesEvent {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    response: Option<ResponsesObject>,
}

#[derive(Deserialize)]
struct ResponsesObject {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<OpenAiResponsesUsage>,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<AnthropicMessage>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

impl StreamUsage {
    pub fn new(endpoint: Endpoint) -> StreamUsage {
        Self::with_parser(endpoint, |wants| SseParser::new(wants))
    }

    fn with_parser(
        endpoint: Endpoint,
        parser: impl FnOnce(fn(Option<&str>) -> bool) -> SseParser,
    ) -> StreamUsage {
        let (wants, progress): (fn(Option<&str>) -> bool, _) = match endpoint {
            Endpoint::OpenAiChat => (wants_all, Progress::OpenAiChat { usage: None }),
            Endpoint::OpenAiResponses => {
                (wants_responses, Progress::OpenAiResponses { usage: None })
            }
            Endpoint::AnthropicMessages => (
                wants_anthropic,
                Progress::Anthropic {
                    usage: None,
                    delta_seen: false,
                },
            ),
        };
        StreamUsage {
            parser: parser(wants),
            progress,
            model: None,
            malformed: 0,
        }
    }

    /// Feed the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let Self {
            parser,
            progress,
            model,
            malformed,
        } = self;
        parser.feed(chunk, &mut |name, data| {
            if !Self::on_event(progress, model, name, data) {
                *malformed += 1;
            }
        });
    }

    /// Wanted events lost to the size cap.
    pub fn lost_events(&self) -> u64 {
        self.parser.lost_events()
    }

    /// Wanted events whose data was not the JSON expected.
    pub fn malformed_events(&self) -> u64 {
        self.malformed
    }

    /// The final usage, or `None` when the stream ended before reporting it
    /// (dropped, cut, an error event, or no `include_usage`).
    pub fn finish(self) -> Option<Metered> {
        let usage = match self.progress {
            Progress::OpenAiChat { usage } | Progress::OpenAiResponses { usage } => usage,
            Progress::Anthropic {
                usage: Some(u),
                delta_seen: true,
            } => Some(u.normalise()),
            Progress::Anthropic { .. } => None,
        }?;
        Some(Metered {
            usage,
            model: self.model,
        })
    }

    /// Apply one event; false when its data is not the expected JSON.
    fn on_event(
        progress: &mut Progress,
        model: &mut Option<String>,
        name: Option<&str>,
        data: &[u8],
    ) -> bool {
        match progress {
            Progress::OpenAiChat { usage } => {
                if data == b"[DONE]" {
                    return true;
                }
                if memmem::find(data, b"\"usage\"").is_none() {
                    return true;
                }
                let Ok(chunk) = serde_json::from_slice::<ChatChunk>(data) else {
                    return false;
                };
                if let Some(u) = chunk.usage {
                    *usage = Some(u.normalise());
                    *model = chunk.model.or(model.take());
                }
                true
            }
            Progress::OpenAiResponses { usage } => {
                let Ok(event) = serde_json::from_slice::<ResponsesEvent>(data) else {
                    return false;
                };
                let kind = event.kind.as_deref().or(name);
                if kind.is_some_and(|k| RESPONSES_TERMINAL.contains(&k)) {
                    if let Some(r) = event.response {
                        if let Some(u) = r.usage {
                            *usage = Some(u.normalise());
                        }
                        *model = r.model.or(model.take());
                    }
                }
                true
            }
            Progress::Anthropic { usage, delta_seen } => {
                let Ok(event) = serde_json::from_slice::<AnthropicEvent>(data) else {
                    return false;
                };
                match event.kind.as_deref().or(name) {
                    Some("message_start") => {
                        if let Some(m) = event.message {
                            *usage = m.usage.or(*usage);
                            *model = m.model.or(model.take());
                        }
                    }
                    Some("message_delta") => {
                        if let Some(later) = event.usage {
                            // Deltas without a start cannot be priced.
                            if let Some(u) = usage {
                                *u = u.merged(&later);
                                *delta_seen = true;
                            }
                        }
                    }
                    _ => {}
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests;
