//! The session files a run writes while it runs: `events.jsonl` and the two
//! raw logs. With `--no-session` the journal is empty and every write is a
//! no-op, so the rest of the supervisor does not care.
//!
//! Buffers are flushed whenever the supervisor is about to wait (see
//! `watch`), so a supervisor killed with SIGKILL loses at most the output
//! that arrived in its last busy stretch.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use crate::session::{Event, EventWriter, Stream};

const LOG_BUFFER: usize = 256 * 1024;
const EVENT_BUFFER: usize = 1024 * 1024;

pub struct Journal {
    events: Option<EventWriter<BufWriter<File>>>,
    logs: Option<[BufWriter<File>; 2]>,
}

impl Journal {
    /// A journal that records nothing (`--no-session`).
    pub fn disabled() -> Self {
        Self {
            events: None,
            logs: None,
        }
    }

    pub fn new(events: EventWriter<BufWriter<File>>, stdout_log: File, stderr_log: File) -> Self {
        Self {
            events: Some(events),
            logs: Some([
                BufWriter::with_capacity(LOG_BUFFER, stdout_log),
                BufWriter::with_capacity(LOG_BUFFER, stderr_log),
            ]),
        }
    }

    pub fn event_buffer_size() -> usize {
        EVENT_BUFFER
    }

    pub fn emit(&mut self, event: &Event) -> io::Result<()> {
        match &mut self.events {
            Some(w) => w.emit(event),
            None => Ok(()),
        }
    }

    /// Take the time for the output lines that follow (one chunk's worth).
    pub fn stamp(&mut self) {
        if let Some(w) = &mut self.events {
            w.stamp();
        }
    }

    pub fn line(&mut self, stream: Stream, bytes: &[u8], partial: bool) -> io::Result<()> {
        match &mut self.events {
            Some(w) => w.emit_line(stream, bytes, partial),
            None => Ok(()),
        }
    }

    pub fn raw(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        match &mut self.logs {
            Some(logs) => logs[stream.index()].write_all(bytes),
            None => Ok(()),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(logs) = &mut self.logs {
            for l in logs {
                l.flush()?;
            }
        }
        if let Some(w) = &mut self.events {
            w.flush()?;
        }
        Ok(())
    }

    /// Hash the event chain in a thread of its own from now on (call after
    /// the fork: the supervisor must be single-threaded until then).
    pub fn spawn_thread(&mut self) -> io::Result<()> {
        match &mut self.events {
            Some(w) => w.spawn_thread(),
            None => Ok(()),
        }
    }

    /// Write out everything and stop the event thread. Returns the hex hash
    /// of the last event line (for the seal), if recording.
    pub fn finish(&mut self) -> io::Result<Option<String>> {
        self.flush()?;
        match &mut self.events {
            Some(w) => w.finish().map(|(_, hash)| Some(hash)),
            None => Ok(None),
        }
    }

    pub fn event_count(&self) -> u64 {
        self.events.as_ref().map_or(0, |w| w.count())
    }
}
