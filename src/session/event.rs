//! The event stream (`events.jsonl`): one JSON object a line.
//!
//! Every event carries vallignus 0.4.2's `ts_ms`, `session_id` and `type`,
//! plus `seq` (0, 1, 2, ...), `t_us` (monotonic microseconds since the run
//! started) and, as its last key, `prev`: the hex SHA-256 of the previous
//! line's bytes (without its newline); the first event's `prev` is the
//! SHA-256 of the session id.
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
fn push_json_escaped(out: &mut Vec<u8>, s: &str) {
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

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// The hash chain: finishes each event with its `prev` and writes it.
///
/// `prev` is the last key of every event line, so the supervisor can hash
/// everything before it (the bulk of the line) while encoding, and the
/// chain only has to absorb the 64 hex digits of the previous hash and the
/// closing `"}` — the two halves of the SHA-256 work run on two cores.
struct Chainer<W: Write> {
    sink: W,
    prev: [u8; 32],
    out: Vec<u8>,
}

impl<W: Write> Chainer<W> {
    fn new(sink: W, session_id: &str) -> Self {
        Self {
            sink,
            prev: Sha256::digest(session_id.as_bytes()).into(),
            out: Vec::new(),
        }
    }

    fn append_batch(&mut self, batch: &Batch) -> io::Result<()> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.out.clear();
        let mut pos = 0;
        for (len, state) in &batch.events {
            let head = &batch.bytes[pos..pos + *len as usize];
            pos += *len as usize;
            let mut hex = [0u8; 64];
            for (i, b) in self.prev.iter().enumerate() {
                hex[2 * i] = DIGITS[usize::from(b >> 4)];
                hex[2 * i + 1] = DIGITS[usize::from(b & 15)];
            }
            self.prev = state
                .clone()
                .chain_update(hex)
                .chain_update(EVENT_END)
                .finalize()
                .into();
            self.out.extend_from_slice(head);
            self.out.extend_from_slice(&hex);
            self.out.extend_from_slice(EVENT_END);
            self.out.push(b'\n');
        }
        self.sink.write_all(&self.out)
    }
}

/// What follows the hex digest of `prev`: the end of every event line.
const EVENT_END: &[u8] = b"\"}";

/// Encoded events waiting for the chain: each event's bytes up to and
/// including `"prev":"`, back to back, with their length and the SHA-256
/// state after absorbing them.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    events: Vec<(u32, Sha256)>,
}

impl Batch {
    fn with_capacity() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
            events: Vec::with_capacity(BATCH_BYTES / 128),
        }
    }
}

/// Hand a batch to the chain once it holds this many bytes.
/// 256 KiB: large enough to amortise the hand-over, small enough that the
/// batches in flight (at most 2 queued, 2 recycled, 1 in each thread) keep
/// the supervisor's memory to a few MiB.
const BATCH_BYTES: usize = 256 << 10;

enum ChainMsg {
    Batch(Batch),
    Flush(std::sync::mpsc::SyncSender<io::Result<()>>),
}

/// Where batches go: the chain in this thread, or a dedicated thread that
/// finishes the hashes and writes while the supervisor encodes the next
/// batch. Written batches come back through `recycle` for reuse.
enum Backend<W: Write + Send + 'static> {
    Inline(Chainer<W>),
    Thread {
        tx: std::sync::mpsc::SyncSender<ChainMsg>,
        recycle: std::sync::mpsc::Receiver<Batch>,
        handle: std::thread::JoinHandle<io::Result<Chainer<W>>>,
    },
    Done,
}

/// Writes events to a sink, maintaining `seq`, `t_us` and the hash chain.
pub struct EventWriter<W: Write + Send + 'static> {
    backend: Backend<W>,
    batch: Batch,
    session_id: String,
    seq: u64,
    start: Instant,
    /// Time of the current output chunk (see [`EventWriter::stamp`]).
    ts_ms: u64,
    t_us: u64,
    /// `{"ts_ms":..,"session_id":"..","type":"stdout_line","seq":` for each
    /// stream, rebuilt at every stamp: the constant part of a line event.
    line_prefix: [Vec<u8>; 2],
    /// Hex hash of the last line, known once the writer is finished.
    final_hash: Option<String>,
}

fn chain_error() -> io::Error {
    io::Error::other("the event writer thread stopped")
}

impl<W: Write + Send + 'static> EventWriter<W> {
    /// A writer that hashes and writes in the calling thread.
    /// `start` is the run's monotonic start, the zero of `t_us`.
    pub fn new(sink: W, session_id: &str, start: Instant) -> Self {
        Self::with_backend(
            Backend::Inline(Self::chainer(sink, session_id)),
            session_id,
            start,
        )
    }

    /// Move the hashing and writing to a thread of its own, from now on.
    /// Called by the supervisor after the fork (which needs a
    /// single-threaded process); a no-op if already threaded.
    pub fn spawn_thread(&mut self) -> io::Result<()> {
        self.send_batch()?;
        let mut chainer = match std::mem::replace(&mut self.backend, Backend::Done) {
            Backend::Inline(chainer) => chainer,
            other => {
                self.backend = other;
                return Ok(());
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<ChainMsg>(2);
        let (recycle_tx, recycle) = std::sync::mpsc::sync_channel::<Batch>(2);
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        ChainMsg::Batch(mut b) => {
                            chainer.append_batch(&b)?;
                            b.bytes.clear();
                            b.events.clear();
                            let _ = recycle_tx.try_send(b);
                        }
                        ChainMsg::Flush(reply) => {
                            let _ = reply.send(chainer.sink.flush());
                        }
                    }
                }
                chainer.sink.flush()?;
                Ok(chainer)
            });
        match spawned {
            Ok(handle) => {
                self.backend = Backend::Thread {
                    tx,
                    recycle,
                    handle,
                };
                Ok(())
            }
            // The chainer moved into the closure that failed to start: the
            // events written so far are flushed, but the stream is over.
            Err(e) => Err(e),
        }
    }

    fn chainer(sink: W, session_id: &str) -> Chainer<W> {
        Chainer::new(sink, session_id)
    }

    fn with_backend(backend: Backend<W>, session_id: &str, start: Instant) -> Self {
        let mut w = Self {
            backend,
            batch: Batch::with_capacity(),
            session_id: session_id.to_string(),
            seq: 0,
            start,
            ts_ms: 0,
            t_us: 0,
            line_prefix: [Vec::new(), Vec::new()],
            final_hash: None,
        };
        w.stamp();
        w
    }

    /// Take the current time for the events that follow. Structured events
    /// stamp themselves; output lines use the stamp of the chunk they
    /// arrived in (they did arrive at the same instant), which saves two
    /// clock reads and the header formatting per line.
    pub fn stamp(&mut self) {
        self.ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.t_us = self.start.elapsed().as_micros() as u64;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let mut p = std::mem::take(&mut self.line_prefix[stream.index()]);
            p.clear();
            self.push_prefix(&mut p, stream.line_event_type());
            self.line_prefix[stream.index()] = p;
        }
    }

    /// `{"ts_ms":N,"session_id":"ID","type":"KIND","seq":`
    fn push_prefix(&self, out: &mut Vec<u8>, kind: &str) {
        out.extend_from_slice(b"{\"ts_ms\":");
        push_u64(out, self.ts_ms);
        out.extend_from_slice(b",\"session_id\":\"");
        push_json_escaped(out, &self.session_id);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
    }

    /// Number of events written so far (the next `seq`).
    pub fn count(&self) -> u64 {
        self.seq
    }

    /// Start an event: `{"ts_ms":..,"session_id":..,"type":..,"seq":..,"t_us":..`.
    fn begin(&mut self, prefix: Option<Stream>, kind: &str) {
        let mut l = std::mem::take(&mut self.batch.bytes);
        match prefix {
            Some(stream) => l.extend_from_slice(&self.line_prefix[stream.index()]),
            None => self.push_prefix(&mut l, kind),
        }
        push_u64(&mut l, self.seq);
        l.extend_from_slice(b",\"t_us\":");
        push_u64(&mut l, self.t_us);
        self.batch.bytes = l;
    }

    /// End the event that starts at `start`: append `,"prev":"`, absorb the
    /// bytes into a SHA-256 state, and queue it for the chain.
    fn end(&mut self, start: usize) -> io::Result<()> {
        self.batch.bytes.extend_from_slice(b",\"prev\":\"");
        let bytes = &self.batch.bytes[start..];
        let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("event too large"))?;
        let state = Sha256::new().chain_update(bytes);
        self.batch.events.push((len, state));
        self.seq += 1;
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> io::Result<()> {
        if self.batch.events.is_empty() {
            return Ok(());
        }
        match &mut self.backend {
            Backend::Inline(chain) => {
                chain.append_batch(&self.batch)?;
                self.batch.bytes.clear();
                self.batch.events.clear();
                Ok(())
            }
            Backend::Thread { tx, recycle, .. } => {
                let next = recycle
                    .try_recv()
                    .unwrap_or_else(|_| Batch::with_capacity());
                let batch = std::mem::replace(&mut self.batch, next);
                tx.send(ChainMsg::Batch(batch)).map_err(|_| chain_error())
            }
            Backend::Done => Err(chain_error()),
        }
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
        self.stamp();
        let start = self.batch.bytes.len();
        self.begin(None, &kind);
        for (k, v) in &fields {
            self.batch.bytes.push(b',');
            serde_json::to_writer(&mut self.batch.bytes, k).map_err(io::Error::other)?;
            self.batch.bytes.push(b':');
            serde_json::to_writer(&mut self.batch.bytes, v).map_err(io::Error::other)?;
        }
        self.end(start)
    }

    /// Write one output line (without its newline). `partial` means the
    /// bytes were not followed by a newline (a piece of a long line, or the
    /// last bytes of a stream that did not end with one). Valid UTF-8 goes
    /// to `line`, anything else to `line_b64`.
    pub fn emit_line(&mut self, stream: Stream, bytes: &[u8], partial: bool) -> io::Result<()> {
        let start = self.batch.bytes.len();
        self.begin(Some(stream), stream.line_event_type());
        let out = &mut self.batch.bytes;
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                out.extend_from_slice(b",\"line\":\"");
                push_json_escaped(out, text);
            }
            Err(_) => {
                out.extend_from_slice(b",\"line_b64\":\"");
                let engine = &base64::engine::general_purpose::STANDARD;
                let at = out.len();
                out.resize(at + bytes.len().div_ceil(3) * 4, 0);
                let written = engine
                    .encode_slice(bytes, &mut out[at..])
                    .map_err(io::Error::other)?;
                out.truncate(at + written);
            }
        }
        out.push(b'"');
        if partial {
            out.extend_from_slice(b",\"partial\":true");
        }
        self.end(start)
    }

    /// Hand everything to the chain and flush the sink (blocks until the
    /// writer thread, if any, has written it).
    pub fn flush(&mut self) -> io::Result<()> {
        self.send_batch()?;
        match &mut self.backend {
            Backend::Inline(chain) => chain.sink.flush(),
            Backend::Thread { tx, .. } => {
                let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
                tx.send(ChainMsg::Flush(reply_tx))
                    .map_err(|_| chain_error())?;
                reply_rx.recv().map_err(|_| chain_error())?
            }
            Backend::Done => Err(chain_error()),
        }
    }

    /// Write everything, stop the writer thread, and return the sink and
    /// the hex hash of the last line (the session id's hash for none).
    pub fn finish(&mut self) -> io::Result<(W, String)> {
        self.send_batch()?;
        let chain = match std::mem::replace(&mut self.backend, Backend::Done) {
            Backend::Inline(mut chain) => {
                chain.sink.flush()?;
                chain
            }
            Backend::Thread { tx, handle, .. } => {
                drop(tx);
                handle.join().map_err(|_| chain_error())??
            }
            Backend::Done => return Err(chain_error()),
        };
        let hash = hex(&chain.prev);
        self.final_hash = Some(hash.clone());
        Ok((chain.sink, hash))
    }

    /// Hex hash of the last line, once [`EventWriter::finish`] ran.
    pub fn last_hash(&self) -> Option<&str> {
        self.final_hash.as_deref()
    }

    /// For tests: finish and return the sink.
    #[cfg(test)]
    pub fn into_inner(mut self) -> W {
        match self.finish() {
            Ok((sink, _)) => sink,
            Err(e) => panic!("event writer failed: {e}"),
        }
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
