//! The event stream (`events.jsonl`): one JSON object a line.
//!
//! Every event carries vallignus 0.4.2's `ts_ms`, `session_id` and `type`,
//! plus `seq` (0, 1, 2, ...), `t_us` (monotonic microseconds since the run
//! started) and `prev`: the hex SHA-256 of the previous line's bytes (without
//! its newline); the first event's `prev` is the SHA-256 of the session id.
//! Changing, removing or reordering any line breaks the chain.
//!
//! Output lines are the hot path (millions per run), so `stdout_line` and
//! `stderr_line` are encoded by hand into a reused buffer; every other event
//! goes through serde.

use std::io::{self, Write};
use std::time::Instant;

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Longest piece of a line stored in one event; longer lines are split into
/// several events, all but the last marked `partial: true`.
pub const MAX_LINE_EVENT_BYTES: usize = 64 * 1024;

/// Which output stream a chunk or line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
    pub fn line_event_type(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout_line",
            Stream::Stderr => "stderr_line",
        }
    }
}

/// Every event except output lines. Serialized with its fields after the
/// common envelope (`type` comes from the variant name).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        command: Vec<String>,
        cwd: String,
    },
    ProcessStarted {
        pid: i32,
    },
    RunTerminated {
        reason: String,
        limit_value: serde_json::Number,
        observed_value: serde_json::Number,
    },
    /// vallignus itself received a signal (the run then ends with reason `signal`).
    SupervisorSignal {
        signal: i32,
        name: String,
    },
    /// A teardown step: what was signalled or killed, and when.
    Teardown {
        action: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        processes: Option<usize>,
    },
    ProcessExited {
        exit_code: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    RunFinished {
        duration_ms: u64,
    },
}

/// Hex SHA-256, the encoding of `prev`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

fn push_hex_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// Append `s` as the contents of a JSON string (without quotes).
fn push_json_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            push_hex_bytes(out, &[b]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Writes events to a sink, maintaining `seq`, `t_us` and the hash chain.
pub struct EventWriter<W: Write> {
    sink: W,
    session_id: String,
    seq: u64,
    prev: [u8; 32],
    start: Instant,
    line: Vec<u8>,
}

impl<W: Write> EventWriter<W> {
    /// `start` is the run's monotonic start, the zero of `t_us`.
    pub fn new(sink: W, session_id: &str, start: Instant) -> Self {
        Self {
            sink,
            session_id: session_id.to_string(),
            seq: 0,
            prev: Sha256::digest(session_id.as_bytes()).into(),
            start,
            line: Vec::with_capacity(4096),
        }
    }

    /// Number of events written so far (the next `seq`).
    pub fn count(&self) -> u64 {
        self.seq
    }

    /// Hex SHA-256 of the last line written (the session id's for none).
    pub fn last_hash(&self) -> String {
        hex(&self.prev)
    }

    fn begin(&mut self, kind: &str) {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let t_us = self.start.elapsed().as_micros() as u64;
        let prev = self.prev;
        let l = &mut self.line;
        l.clear();
        l.extend_from_slice(b"{\"ts_ms\":");
        push_u64(l, ts_ms);
        l.extend_from_slice(b",\"session_id\":\"");
        push_json_escaped(l, &self.session_id);
        l.extend_from_slice(b"\",\"type\":\"");
        l.extend_from_slice(kind.as_bytes());
        l.extend_from_slice(b"\",\"seq\":");
        push_u64(l, self.seq);
        l.extend_from_slice(b",\"t_us\":");
        push_u64(l, t_us);
        l.extend_from_slice(b",\"prev\":\"");
        push_hex_bytes(l, &prev);
        l.push(b'"');
    }

    fn finish(&mut self) -> io::Result<()> {
        self.line.push(b'}');
        self.prev = Sha256::digest(&self.line).into();
        self.line.push(b'\n');
        self.sink.write_all(&self.line)?;
        self.seq += 1;
        Ok(())
    }

    /// Write one structured event.
    pub fn emit(&mut self, event: &Event) -> io::Result<()> {
        let value = serde_json::to_value(event).map_err(io::Error::other)?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(io::Error::other("event did not serialize to an object"));
        };
        let kind = match fields.remove("type") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(io::Error::other("event has no type")),
        };
        self.begin(&kind);
        for (k, v) in &fields {
            self.line.push(b',');
            serde_json::to_writer(&mut self.line, k).map_err(io::Error::other)?;
            self.line.push(b':');
            serde_json::to_writer(&mut self.line, v).map_err(io::Error::other)?;
        }
        self.finish()
    }

    /// Write one output line (without its newline). `partial` means the
    /// bytes were not followed by a newline (a piece of a long line, or the
    /// last bytes of a stream that did not end with one). Valid UTF-8 goes
    /// to `line`, anything else to `line_b64`.
    pub fn emit_line(&mut self, stream: Stream, bytes: &[u8], partial: bool) -> io::Result<()> {
        self.begin(stream.line_event_type());
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                self.line.extend_from_slice(b",\"line\":\"");
                push_json_escaped(&mut self.line, text);
            }
            Err(_) => {
                self.line.extend_from_slice(b",\"line_b64\":\"");
                let engine = &base64::engine::general_purpose::STANDARD;
                let start = self.line.len();
                self.line.resize(start + bytes.len().div_ceil(3) * 4, 0);
                let written = engine
                    .encode_slice(bytes, &mut self.line[start..])
                    .map_err(io::Error::other)?;
                self.line.truncate(start + written);
            }
        }
        self.line.push(b'"');
        if partial {
            self.line.extend_from_slice(b",\"partial\":true");
        }
        self.finish()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    pub fn into_inner(self) -> W {
        self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &[u8]) -> Vec<serde_json::Value> {
        buf.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn envelope_and_chain() {
        let mut w = EventWriter::new(Vec::new(), "sid-1", Instant::now());
        w.emit(&Event::RunStarted {
            command: vec!["echo".into(), "hi".into()],
            cwd: "/tmp".into(),
        })
        .unwrap();
        w.emit_line(Stream::Stdout, b"hi", false).unwrap();
        w.emit(&Event::ProcessExited {
            exit_code: 0,
            signal: None,
        })
        .unwrap();
        let buf = w.into_inner();
        let evs = lines(&buf);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0]["type"], "run_started");
        assert_eq!(evs[0]["command"][1], "hi");
        assert_eq!(evs[0]["session_id"], "sid-1");
        assert_eq!(evs[0]["prev"], sha256_hex(b"sid-1"));
        assert_eq!(evs[1]["type"], "stdout_line");
        assert_eq!(evs[1]["line"], "hi");
        assert!(evs[1].get("partial").is_none());
        assert!(evs[2].get("signal").is_none());
        let raw: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        for i in 1..3 {
            assert_eq!(evs[i]["seq"], i as u64);
            assert_eq!(evs[i]["prev"], sha256_hex(raw[i - 1]));
        }
    }

    #[test]
    fn escapes_and_binary() {
        let mut w = EventWriter::new(Vec::new(), "s", Instant::now());
        let tricky = "q\"b\\s\r\t\u{1}\u{7f}é\u{2028}";
        w.emit_line(Stream::Stderr, tricky.as_bytes(), true)
            .unwrap();
        w.emit_line(Stream::Stdout, b"\xff\xfeok\x00", false)
            .unwrap();
        let evs = lines(&w.into_inner());
        assert_eq!(evs[0]["line"], tricky);
        assert_eq!(evs[0]["partial"], true);
        assert_eq!(evs[0]["type"], "stderr_line");
        let b64 = evs[1]["line_b64"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, b"\xff\xfeok\x00");
        assert!(evs[1].get("line").is_none());
    }

    #[test]
    fn nul_in_valid_utf8_round_trips() {
        let mut w = EventWriter::new(Vec::new(), "s", Instant::now());
        w.emit_line(Stream::Stdout, b"a\x00b", false).unwrap();
        let evs = lines(&w.into_inner());
        assert_eq!(evs[0]["line"], "a\u{0}b");
    }
}
