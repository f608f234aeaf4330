//! The event stream (`events.jsonl`): one JSON object a line.
//!
//! Every event carries vallignus 0.4.2's `ts_ms`, `session_id` and `type`,
//! plus `seq` (0, 1, 2, ...), `t_us` (monotonic microseconds since the run
//! started) and, as its last key, `prev`: the hex SHA-256 of the previous
//! line's bytes (without its newline); the first event's `prev` is the
//! SHA-256 of the session id.
//! Changing, removing or reordering any line breaks the chain.
//!
//! The writer ([`super::writer`]) encodes output lines (`stdout_line`,
//! `stderr_line`) by hand with the helpers here; every other event goes
//! through serde.

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
    /// stderr for stdout, stdout for stderr.
    pub fn other(self) -> Stream {
        match self {
            Stream::Stdout => Stream::Stderr,
            Stream::Stderr => Stream::Stdout,
        }
    }

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
        /// For `max_runtime`: the exact time elapsed (`observed_value` is
        /// whole seconds when the limit is, as in 0.4.2).
        #[serde(skip_serializing_if = "Option::is_none")]
        observed_ms: Option<u64>,
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
    /// A cgroup controller limit was hit (`oom_kill` in memory.events,
    /// `max` in pids.events), with the controller's counters.
    LimitEvent {
        kind: String,
        count: u64,
        counters: std::collections::BTreeMap<String, u64>,
    },
    /// One request or tunnel through the policy proxy, allowed or denied.
    // Boxed: a record is much larger than the other events.
    NetRequest(Box<crate::net::proxy::NetRequest>),
    /// The policy proxy stopped while the run went on: the agent has no
    /// network from then on (its only route led to the proxy).
    ProxyStopped {},
    /// A violation alert is being sent to the webhook (its outcome follows
    /// as `alert_sent` or `alert_failed`).
    AlertAttempt {
        url: String,
    },
    /// The violation alert reached the webhook (`status`: its HTTP status).
    AlertSent {
        url: String,
        status: u16,
    },
    /// The violation alert could not be delivered.
    AlertFailed {
        url: String,
        error: String,
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

/// Whether any of the 8 bytes in `w` needs escaping in a JSON string: a
/// control byte (< 0x20), `"` or `\\`. Classic SWAR tests, exact for
/// "is there any such byte" (not for which one).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) != 0
}

/// Append `s` as the contents of a JSON string (without quotes). Output
/// lines are the hot path: clean 8-byte words are skipped in one test.
pub(crate) fn push_json_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !word_needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.extend_from_slice(&bytes[start..i]);
            if esc.is_empty() {
                out.extend_from_slice(b"\\u00");
                push_hex_bytes(out, &[b]);
            } else {
                out.extend_from_slice(esc);
            }
            i += 1;
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

pub(crate) fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}
