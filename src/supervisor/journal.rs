//! The session files a run writes while it runs: `events.jsonl` and the two
//! raw logs, all through one [`EventWriter`] (whose threads write them).
//! With `--no-session` the journal is empty and every write is a no-op, so
//! the rest of the supervisor does not care.
//!
//! What is recorded is handed to the writer whenever the supervisor is
//! about to wait (see `watch`), so a supervisor killed with SIGKILL loses
//! at most the output that arrived in its last busy stretch.

use std::io;

use crate::session::direct::DirectFile;
use crate::session::writer::Finished;
use crate::session::{Event, EventWriter, Stream};

pub struct Journal {
    writer: Option<EventWriter<DirectFile>>,
}

impl Journal {
    /// A journal that records nothing (`--no-session`).
    pub fn disabled() -> Self {
        Self { writer: None }
    }

    pub fn new(writer: EventWriter<DirectFile>) -> Self {
        Self {
            writer: Some(writer),
        }
    }

    pub fn emit(&mut self, event: &Event) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.emit(event),
            None => Ok(()),
        }
    }

    /// Take the time for the output lines that follow (one chunk's worth).
    pub fn stamp(&mut self) {
        if let Some(w) = &mut self.writer {
            w.stamp();
        }
    }

    pub fn line(&mut self, stream: Stream, bytes: &[u8], partial: bool) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.emit_line(stream, bytes, partial),
            None => Ok(()),
        }
    }

    pub fn raw(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.raw(stream, bytes),
            None => Ok(()),
        }
    }

    /// Hand what is recorded so far to the writer (without waiting for it).
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// Let the event chain and the raw logs move to threads of their own
    /// once there is enough output (call after the fork: the supervisor
    /// must be single-threaded until then).
    pub fn allow_threads(&mut self) {
        if let Some(w) = &mut self.writer {
            w.allow_threads();
        }
    }

    /// Write out everything and stop the writer threads. Returns what the
    /// seal needs (the last event's hash, the logs' hashes), if recording.
    pub fn finish(&mut self) -> io::Result<Option<Finished<DirectFile>>> {
        match &mut self.writer {
            Some(w) => w.finish().map(Some),
            None => Ok(None),
        }
    }

    pub fn event_count(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.count())
    }
}
