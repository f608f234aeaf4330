//! Writing a running session's files: `events.jsonl` with its hash chain
//! and, for the supervisor, the raw `stdout.log` and `stderr.log`.
//!
//! Output lines are the hot path (millions per run), so the work is split
//! over three threads (the machine may have two cores; they share them):
//! - the caller (the supervisor's loop) encodes each event into a batch up
//!   to and including `"prev":"`, and absorbs those bytes into a SHA-256
//!   state; raw output goes into a batch of its own;
//! - the `events` thread completes every event in place (the 64 hex digits
//!   of the previous line's hash, then `"}`) and writes the batch with one
//!   write;
//! - the `logs` thread writes the raw output and keeps a running hash of
//!   each log for the seal (BLAKE3, the seal's file hash; so a log of
//!   gigabytes is not read back and hashed after the agent has exited).
//!
//! The supervisor's sinks are `session::direct::DirectFile`s, which write
//! whole blocks with `O_DIRECT` from a thread of their own; a flush (here:
//! an empty item handed to a writer thread) makes them write the partial
//! last block too, so a running session can be read as it grows.
//!
//! The threads start with the first full batch after
//! [`EventWriter::allow_threads`] (the supervisor forks first); before that,
//! and for a run with little output, the same work is done in the calling
//! thread at each flush.
//!
//! Flushing never waits for the writer threads: it hands over what is
//! batched and returns. A supervisor killed with SIGKILL loses at most the
//! batches in flight (a few hundred KiB of its last busy stretch).

use std::io::{self, Write};
use std::time::Instant;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::event::{hex, push_json_escaped, push_u64, Event, Stream};
use super::midstate::Midstate;
use super::seal::{FileHasher, SEAL_FILE_HASH};

/// What follows the hex digest of `prev`: the end of every event line.
const EVENT_END: &[u8] = b"\"}\n";
/// Length of the hex digest that the writer fills in.
const HEX_LEN: usize = 64;

/// The two lowercase hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    table
};

/// Hand a batch to the writer once it holds this many bytes (events and raw
/// output together). 256 KiB: large enough to amortise the hand-over, small
/// enough that the batches in flight (at most 2 queued, 2 recycled, 1 in
/// each thread) keep the supervisor's memory to a few MiB.
const BATCH_BYTES: usize = 256 << 10;

/// Encoded events waiting for the chain.
///
/// `bytes` holds complete event lines back to back, each with a 64-byte
/// hole where its `prev` goes; `events` has, per line, the length up to the
/// hole and the SHA-256 state after the whole blocks before it.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    events: Vec<(u32, Midstate)>,
    /// Whether [`Batch::absorb`] was done.
    absorbed: bool,
}

impl Batch {
    /// Absorb every event's whole blocks before its hole: the part of the
    /// hashing that does not depend on the chain. Done by the supervisor
    /// when the events thread is behind, else by that thread; once.
    fn absorb(&mut self) {
        if std::mem::replace(&mut self.absorbed, true) {
            return;
        }
        let mut start = 0;
        for (head, state) in &mut self.events {
            let done = state.absorbed() as usize;
            state.absorb_blocks(&self.bytes[start + done..start + *head as usize]);
            start += *head as usize + HEX_LEN + EVENT_END.len();
        }
    }

    fn with_capacity() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
            events: Vec::with_capacity(BATCH_BYTES / 128),
            absorbed: false,
        }
    }
}

/// Raw output waiting for its log: `[stdout, stderr]`.
type RawBatch = [Vec<u8>; 2];

/// The end of the chain: completes each event and writes `events.jsonl`.
struct EventSink<W> {
    events: W,
    /// SHA-256 of the last event line written (of the session id at first).
    prev: [u8; 32],
}

impl<W: Write> EventSink<W> {
    /// Fill in every event's `prev`, write the batch, and leave it empty.
    /// An empty batch asks for a flush (see [`EventWriter::flush`]).
    fn write(&mut self, batch: &mut Batch) -> io::Result<()> {
        if batch.bytes.is_empty() {
            return self.flush();
        }
        batch.absorb();
        let mut pos = 0;
        for (head, state) in batch.events.drain(..) {
            let hole = pos + head as usize;
            let hex = &mut batch.bytes[hole..hole + HEX_LEN];
            for (pair, b) in hex.chunks_exact_mut(2).zip(self.prev) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
            }
            // The line's bytes are everything up to its newline; the state
            // has absorbed its first `absorbed` bytes.
            let line_end = hole + HEX_LEN + EVENT_END.len() - 1;
            self.prev = state.finish(&batch.bytes[pos + state.absorbed() as usize..line_end]);
            pos = line_end + 1;
        }
        self.events
            .write_all(&batch.bytes)
            .map_err(|e| in_file("events.jsonl", e))?;
        batch.bytes.clear();
        batch.absorbed = false;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.events.flush().map_err(|e| in_file("events.jsonl", e))
    }
}

/// The raw logs, in [`Stream::index`] order.
const LOG_NAMES: [&str; 2] = ["stdout.log", "stderr.log"];

/// `e`, saying which session file it happened to.
fn in_file(name: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{name}: {e}"))
}

/// The raw output logs and the running hashes of what was written to them.
struct RawLogs<W> {
    files: [W; 2],
    hashes: [FileHasher; 2],
}

impl<W: Write> RawLogs<W> {
    /// Write both streams' output; an empty batch asks for a flush.
    fn write(&mut self, raw: &mut RawBatch) -> io::Result<()> {
        if raw.iter().all(Vec::is_empty) {
            return self.flush();
        }
        for (i, bytes) in raw.iter_mut().enumerate() {
            if !bytes.is_empty() {
                self.files[i]
                    .write_all(bytes)
                    .map_err(|e| in_file(LOG_NAMES[i], e))?;
                self.hashes[i].update(&*bytes);
                bytes.clear();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        for (f, name) in self.files.iter_mut().zip(LOG_NAMES) {
            f.flush().map_err(|e| in_file(name, e))?;
        }
        Ok(())
    }
}

/// A thread that owns `S` and hands every item sent to it to `step`; used
/// items come back through `recycle` for reuse. At the end (the sender
/// dropped) it calls `end` and returns `S`. A failed step stops the thread;
/// the next `send` returns that step's error.
struct Worker<T, S> {
    tx: std::sync::mpsc::SyncSender<T>,
    recycle: std::sync::mpsc::Receiver<T>,
    /// `None` once joined after a failure.
    handle: Option<std::thread::JoinHandle<io::Result<S>>>,
}

impl<T: Send + 'static, S: Send + 'static> Worker<T, S> {
    fn spawn(
        name: &str,
        mut state: S,
        step: fn(&mut S, &mut T) -> io::Result<()>,
        end: fn(&mut S) -> io::Result<()>,
    ) -> io::Result<Self> {
        // At most 2 items queued and 2 waiting for reuse.
        let (tx, rx) = std::sync::mpsc::sync_channel::<T>(2);
        let (recycle_tx, recycle) = std::sync::mpsc::sync_channel::<T>(2);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for mut item in rx {
                    step(&mut state, &mut item)?;
                    let _ = recycle_tx.try_send(item);
                }
                end(&mut state)?;
                Ok(state)
            })?;
        Ok(Self {
            tx,
            recycle,
            handle: Some(handle),
        })
    }

    /// Hand `item` over; returns an item to fill next (a used one, or `fresh`).
    fn send(&mut self, item: T, fresh: impl FnOnce() -> T) -> io::Result<T> {
        self.send_or(item, fresh, |_| ())
    }

    /// [`Worker::send`], but if the thread is behind (its queue is full),
    /// first do `meanwhile` to the item: work the thread would do, done by
    /// the caller instead of waiting.
    fn send_or(
        &mut self,
        item: T,
        fresh: impl FnOnce() -> T,
        meanwhile: impl FnOnce(&mut T),
    ) -> io::Result<T> {
        let next = self.recycle.try_recv().unwrap_or_else(|_| fresh());
        let sent = match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(mut item)) => {
                meanwhile(&mut item);
                self.tx.send(item).map_err(|_| ())
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            // The thread stopped: say why (once), then just that it did.
            return Err(
                match self.handle.take().map(std::thread::JoinHandle::join) {
                    Some(Ok(Err(e))) => e,
                    _ => writer_error(),
                },
            );
        }
        Ok(next)
    }

    fn finish(self) -> io::Result<S> {
        drop(self.tx);
        match self.handle {
            Some(handle) => handle.join().map_err(|_| writer_error())?,
            None => Err(writer_error()),
        }
    }
}

/// Where batches go: written in this thread, or handed to the writer
/// threads (`events` completes and writes the chain, `logs` writes and
/// hashes the raw logs: on two cores, the three threads share the work).
enum Backend<W: Write + Send + 'static> {
    Inline {
        events: EventSink<W>,
        logs: Option<RawLogs<W>>,
    },
    Thread {
        events: Worker<Batch, EventSink<W>>,
        logs: Option<Worker<RawBatch, RawLogs<W>>>,
    },
    Done,
}

/// What a finished writer leaves: its files and the hashes the seal needs.
pub struct Finished<W> {
    pub events: W,
    /// Hex SHA-256 of the last event line (of the session id if none).
    pub last_hash: String,
    /// Hex hash ([`SEAL_FILE_HASH`]) of everything written to `stdout.log`
    /// and `stderr.log`, if this writer wrote them.
    pub log_hashes: Option<[String; 2]>,
}

/// Writes events to a sink, maintaining `seq`, `t_us` and the hash chain;
/// optionally writes the raw output logs too.
pub struct EventWriter<W: Write + Send + 'static> {
    backend: Backend<W>,
    batch: Batch,
    raw: RawBatch,
    session_id: String,
    seq: u64,
    start: Instant,
    /// Time of the current output chunk (see [`EventWriter::stamp`]).
    ts_ms: u64,
    t_us: u64,
    /// `{"ts_ms":..,"session_id":"..","type":"stdout_line","seq":` for each
    /// stream, rebuilt at every stamp: the constant part of a line event.
    line_prefix: [Vec<u8>; 2],
    /// For each stream, the SHA-256 state after the whole 64-byte blocks of
    /// its line prefix: every line event of a chunk starts with the same
    /// bytes, so their first block is compressed once per chunk, not once
    /// per line (a fifth of the hashing of a 100-byte line).
    prefix_state: [Midstate; 2],
    /// Whether raw output is kept (made with [`EventWriter::with_logs`]).
    has_logs: bool,
    /// See [`EventWriter::allow_threads`].
    threads_allowed: bool,
    /// Batches whose blocks before the holes this thread hashed because
    /// the events thread was behind (see [`Worker::send_or`]).
    helped: u64,
}

fn writer_error() -> io::Error {
    io::Error::other("the event writer thread stopped")
}

impl<W: Write + Send + 'static> EventWriter<W> {
    /// A writer of events only. `start` is the run's monotonic start, the
    /// zero of `t_us`.
    pub fn new(events: W, session_id: &str, start: Instant) -> Self {
        Self::with_files(events, None, session_id, start)
    }

    /// A writer of events and of the raw logs (`[stdout, stderr]`), which
    /// [`EventWriter::raw`] appends to.
    pub fn with_logs(events: W, logs: [W; 2], session_id: &str, start: Instant) -> Self {
        Self::with_files(events, Some(logs), session_id, start)
    }

    fn with_files(events: W, logs: Option<[W; 2]>, session_id: &str, start: Instant) -> Self {
        let mut w = Self {
            has_logs: logs.is_some(),
            threads_allowed: false,
            helped: 0,
            backend: Backend::Inline {
                events: EventSink {
                    events,
                    prev: Sha256::digest(session_id.as_bytes()).into(),
                },
                logs: logs.map(|files| RawLogs {
                    files,
                    hashes: [SEAL_FILE_HASH.hasher(), SEAL_FILE_HASH.hasher()],
                }),
            },
            batch: Batch::with_capacity(),
            raw: [Vec::new(), Vec::new()],
            session_id: session_id.to_string(),
            seq: 0,
            start,
            ts_ms: 0,
            t_us: 0,
            line_prefix: [Vec::new(), Vec::new()],
            prefix_state: [Midstate::new(); 2],
        };
        w.stamp();
        w
    }

    /// Let the writer move its hashing and writing to threads of their own
    /// from now on, once there is enough of it (the first full batch): a
    /// run with little output never starts them. Called by the supervisor
    /// after the fork (which needs a single-threaded process).
    pub fn allow_threads(&mut self) {
        self.threads_allowed = true;
    }

    /// Whether the writer threads are running (for tests).
    #[cfg(test)]
    fn threaded(&self) -> bool {
        matches!(self.backend, Backend::Thread { .. })
    }

    /// Move the hashing and writing to threads of their own; a no-op if
    /// already threaded.
    fn start_threads(&mut self) -> io::Result<()> {
        let (events, logs) = match std::mem::replace(&mut self.backend, Backend::Done) {
            Backend::Inline { events, logs } => (events, logs),
            other => {
                self.backend = other;
                return Ok(());
            }
        };
        // If a thread cannot start, its files went with it: the records
        // written so far are on disk, but the stream is over (Done).
        let events = Worker::spawn("events", events, EventSink::write, EventSink::flush)?;
        let logs = match logs {
            Some(logs) => Some(Worker::spawn("logs", logs, RawLogs::write, RawLogs::flush)?),
            None => None,
        };
        self.backend = Backend::Thread { events, logs };
        Ok(())
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
            let mut state = Midstate::new();
            state.absorb_blocks(&p);
            self.prefix_state[stream.index()] = state;
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

    /// End the event that starts at `start` (with the line prefix of
    /// `line`, if a line event): append `,"prev":"`, absorb the line so far
    /// into a SHA-256 state, leave the hole for the digest and close the
    /// line; hand the batch over once it is full.
    fn end(&mut self, start: usize, line: Option<Stream>) -> io::Result<()> {
        let bytes = &mut self.batch.bytes;
        bytes.extend_from_slice(b",\"prev\":\"");
        let head = &bytes[start..];
        let len = u32::try_from(head.len()).map_err(|_| io::Error::other("event too large"))?;
        // The whole blocks before the hole are hashed later, in
        // `Batch::absorb`, by whichever thread has time.
        let state = match line {
            Some(stream) => self.prefix_state[stream.index()],
            None => Midstate::new(),
        };
        bytes.extend_from_slice(&[b'0'; HEX_LEN]);
        bytes.extend_from_slice(EVENT_END);
        self.batch.events.push((len, state));
        self.seq += 1;
        self.send_if_full()
    }

    fn send_if_full(&mut self) -> io::Result<()> {
        let len = self.batch.bytes.len() + self.raw[0].len() + self.raw[1].len();
        if len >= BATCH_BYTES {
            if self.threads_allowed && matches!(self.backend, Backend::Inline { .. }) {
                self.start_threads()?;
            }
            self.send_batch()?;
        }
        Ok(())
    }

    /// Hand the events and the raw output batched so far to their files.
    fn send_batch(&mut self) -> io::Result<()> {
        let has_events = !self.batch.bytes.is_empty();
        let has_raw = !(self.raw[0].is_empty() && self.raw[1].is_empty());
        match &mut self.backend {
            Backend::Inline { events, logs } => {
                if let Some(logs) = logs {
                    logs.write(&mut self.raw)?;
                }
                events.write(&mut self.batch)
            }
            Backend::Thread { events, logs } => {
                if has_raw {
                    if let Some(logs) = logs {
                        let raw = std::mem::take(&mut self.raw);
                        self.raw = logs.send(raw, Default::default)?;
                    }
                }
                if has_events {
                    let batch = std::mem::take(&mut self.batch);
                    // The events thread behind: hash the batch's blocks
                    // before the holes here rather than wait for it.
                    let mut helped = false;
                    self.batch = events.send_or(batch, Batch::with_capacity, |b| {
                        b.absorb();
                        helped = true;
                    })?;
                    self.helped += u64::from(helped);
                }
                Ok(())
            }
            Backend::Done => Err(writer_error()),
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
        self.end(start, None)
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
        self.end(start, Some(stream))
    }

    /// Append raw output to its log (a writer made with
    /// [`EventWriter::with_logs`]; without logs this is a no-op).
    pub fn raw(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        if self.has_logs && !bytes.is_empty() {
            self.raw[stream.index()].extend_from_slice(bytes);
            self.send_if_full()?;
        }
        Ok(())
    }

    /// Hand everything batched so far on to the files. Inline, it is
    /// written (and the sink flushed) before this returns; threaded, the
    /// writer threads write and flush it next (an empty item after the
    /// batch asks them to), without this waiting for them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.send_batch()?;
        match &mut self.backend {
            Backend::Inline { events, logs } => {
                if let Some(logs) = logs {
                    logs.flush()?;
                }
                events.flush()
            }
            Backend::Thread { events, logs } => {
                if let Some(logs) = logs {
                    let _ = logs.send(RawBatch::default(), Default::default)?;
                }
                let _ = events.send(Batch::default(), Batch::with_capacity)?;
                Ok(())
            }
            Backend::Done => Err(writer_error()),
        }
    }

    /// Write everything, stop the writer thread, and return the files and
    /// the hashes: of the last event line and of the raw logs.
    pub fn finish(&mut self) -> io::Result<Finished<W>> {
        self.send_batch()?;
        let (mut events, mut logs) = match std::mem::replace(&mut self.backend, Backend::Done) {
            Backend::Inline { events, logs } => (events, logs),
            Backend::Thread { events, logs } => {
                // Both threads are stopped, whatever either one returns.
                let logs = logs.map(Worker::finish).transpose();
                (events.finish()?, logs?)
            }
            Backend::Done => return Err(writer_error()),
        };
        if let Some(logs) = &mut logs {
            logs.flush()?;
        }
        events.flush()?;
        Ok(Finished {
            events: events.events,
            last_hash: hex(&events.prev),
            log_hashes: logs.map(|logs| logs.hashes.map(|h| h.hex())),
        })
    }

    /// For tests: finish and return the sink.
    #[cfg(test)]
    pub fn into_inner(mut self) -> W {
        match self.finish() {
            Ok(finished) => finished.events,
            Err(e) => panic!("event writer failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::event::sha256_hex;

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

    /// A writer with logs, threaded as in the supervisor: the three files
    /// get every byte in order, the chain is intact across batches, and the
    /// log hashes are those of the bytes written.
    #[test]
    fn threaded_writer_with_logs_hashes_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let logs = [file("stdout.log"), file("stderr.log")];
        let mut w = EventWriter::with_logs(file("events.jsonl"), logs, "sid-2", Instant::now());
        w.emit(&Event::RunStarted {
            command: vec!["x".into()],
            cwd: "/".into(),
        })
        .unwrap();
        w.allow_threads();
        assert!(!w.threaded(), "threads start only once a batch fills");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // Enough to fill several batches, with flushes in between.
        for i in 0..20_000u32 {
            let line = format!("line {i} {}", "y".repeat((i % 97) as usize));
            let (stream, log) = if i % 5 == 0 {
                (Stream::Stderr, &mut err)
            } else {
                (Stream::Stdout, &mut out)
            };
            w.raw(stream, line.as_bytes()).unwrap();
            w.raw(stream, b"\n").unwrap();
            log.extend_from_slice(line.as_bytes());
            log.push(b'\n');
            w.emit_line(stream, line.as_bytes(), false).unwrap();
            if i % 1000 == 0 {
                w.flush().unwrap();
            }
            if i % 777 == 0 {
                // A new chunk: new time stamps, so new line prefixes.
                std::thread::sleep(std::time::Duration::from_millis(2));
                w.stamp();
            }
        }
        assert!(w.threaded());
        let count = w.count();
        let finished = w.finish().unwrap();
        drop(finished.events);
        let events = std::fs::read(dir.path().join("events.jsonl")).unwrap();
        let raw: Vec<&[u8]> = events
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(raw.len() as u64, count);
        let mut prev = sha256_hex(b"sid-2");
        for (i, line) in raw.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["seq"], i as u64);
            assert_eq!(v["prev"], prev.as_str(), "event {i}");
            prev = sha256_hex(line);
        }
        assert_eq!(finished.last_hash, prev);
        assert_eq!(std::fs::read(dir.path().join("stdout.log")).unwrap(), out);
        assert_eq!(std::fs::read(dir.path().join("stderr.log")).unwrap(), err);
        let hashes = finished.log_hashes.unwrap();
        let blake3_hex = |b: &[u8]| blake3::hash(b).to_hex().to_string();
        assert_eq!(hashes, [blake3_hex(&out), blake3_hex(&err)]);
    }

    /// A writer whose sink is slow (the events thread behind): the caller
    /// hashes batches itself, and the chain is the same.
    #[test]
    fn batches_hashed_by_the_caller_chain_the_same() {
        struct Slow(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Slow {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                std::thread::sleep(std::time::Duration::from_millis(3));
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w = EventWriter::new(Slow(sink.clone()), "sid-3", Instant::now());
        w.allow_threads();
        for i in 0..30_000u32 {
            let line = format!("{i} {}", "z".repeat((i % 131) as usize));
            w.emit_line(Stream::Stdout, line.as_bytes(), false).unwrap();
        }
        assert!(w.helped > 0, "the events thread was never behind");
        let finished = w.finish().unwrap();
        let events = sink.lock().unwrap().clone();
        let mut prev = sha256_hex(b"sid-3");
        let mut n = 0;
        for (i, line) in events
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["prev"], prev.as_str(), "event {i}");
            prev = sha256_hex(line);
            n += 1;
        }
        assert_eq!(n, 30_000);
        assert_eq!(finished.last_hash, prev);
    }

    #[test]
    fn a_writer_without_logs_ignores_raw_output() {
        let mut w = EventWriter::new(Vec::new(), "s", Instant::now());
        w.raw(Stream::Stdout, b"not kept").unwrap();
        w.emit_line(Stream::Stdout, b"kept", false).unwrap();
        let finished = w.finish().unwrap();
        assert!(finished.log_hashes.is_none());
        assert_eq!(lines(&finished.events).len(), 1);
    }
}
