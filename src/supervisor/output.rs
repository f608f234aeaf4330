//! Output accounting: the exact output caps, and cutting the byte stream
//! into line events.
//!
//! Definitions (documented in the README):
//! - A *line* starts with its first byte; a newline ends it. The last bytes
//!   of a stream without a final newline are a line too. Lines are counted
//!   across stdout and stderr together, as in vallignus 0.4.2.
//! - `--max-output-lines N`: N lines are recorded and shown; the first byte
//!   of line N+1 ends the run (`observed` = N+1, the line it started).
//! - `--max-output-bytes N`: N bytes are recorded and shown; one byte more
//!   ends the run (`observed` = all bytes read so far, including the refused
//!   rest of the chunk that crossed the cap).
//! - Line events hold at most 64 KiB; longer lines are split into pieces
//!   marked `partial`, cut on a UTF-8 character boundary where possible.
//! - A line still open on one stream when the other stream writes is
//!   written as a `partial` piece first, so the events keep the order in
//!   which the bytes arrived (`printf 'prompt> '` then a warning on
//!   stderr, then the answer: replay shows the prompt before the warning).

use std::io;

use super::journal::Journal;
use super::violation::Violation;
use crate::session::event::MAX_LINE_EVENT_BYTES;
use crate::session::Stream;

#[derive(Debug, Clone, Copy, Default)]
pub struct OutputCaps {
    pub max_lines: Option<u64>,
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct StreamState {
    lines: u64,
    bytes: u64,
    /// A line has started and its newline has not arrived yet.
    in_line: bool,
    /// Bytes of the current line not yet written as an event (< 64 KiB + 3).
    pending: Vec<u8>,
}

/// Per-run output state: counters, caps, pending partial lines.
pub struct Recorder {
    caps: OutputCaps,
    total_lines: u64,
    total_bytes: u64,
    streams: [StreamState; 2],
    /// Set once a cap was crossed: nothing more is accepted.
    closed: bool,
}

/// What `record` did with a chunk.
#[derive(Debug, PartialEq)]
pub struct Accepted {
    /// How many leading bytes of the chunk were recorded (to show them too).
    pub len: usize,
    pub violation: Option<Violation>,
}

impl Recorder {
    pub fn new(caps: OutputCaps) -> Self {
        Self {
            caps,
            total_lines: 0,
            total_bytes: 0,
            streams: Default::default(),
            closed: false,
        }
    }

    pub fn lines(&self, stream: Stream) -> u64 {
        self.streams[stream.index()].lines
    }

    pub fn bytes(&self, stream: Stream) -> u64 {
        self.streams[stream.index()].bytes
    }

    /// How much of `data` fits under the caps, and the violation if not all.
    fn admit(&self, stream: Stream, data: &[u8]) -> Accepted {
        let mut len = data.len();
        let mut violation = None;
        if let Some(max) = self.caps.max_bytes {
            let room = max.saturating_sub(self.total_bytes);
            if data.len() as u64 > room {
                len = room as usize;
                violation = Some(Violation::MaxOutputBytes {
                    limit: max,
                    observed: self.total_bytes + data.len() as u64,
                });
            }
        }
        if let Some(max) = self.caps.max_lines {
            let mut in_line = self.streams[stream.index()].in_line;
            let mut lines = self.total_lines;
            let mut pos = 0;
            while pos < len {
                if !in_line {
                    if lines == max {
                        len = pos;
                        violation = Some(Violation::MaxOutputLines {
                            limit: max,
                            observed: max + 1,
                        });
                        break;
                    }
                    lines += 1;
                    in_line = true;
                }
                match memchr::memchr(b'\n', &data[pos..len]) {
                    Some(i) => {
                        in_line = false;
                        pos += i + 1;
                    }
                    None => pos = len,
                }
            }
        }
        Accepted { len, violation }
    }

    /// Record a chunk read from `stream`: raw log, line events, counters.
    /// Returns how much was accepted; after a violation nothing more is.
    pub fn record(
        &mut self,
        journal: &mut Journal,
        stream: Stream,
        data: &[u8],
    ) -> io::Result<Accepted> {
        if self.closed {
            return Ok(Accepted {
                len: 0,
                violation: None,
            });
        }
        let accepted = self.admit(stream, data);
        let data = &data[..accepted.len];
        journal.stamp();
        if !data.is_empty() {
            self.flush_open_line(journal, stream.other())?;
        }
        journal.raw(stream, data)?;
        self.total_bytes += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let s = &mut self.streams[stream.index()];
            if !s.in_line {
                s.in_line = true;
                s.lines += 1;
                self.total_lines += 1;
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let piece = &rest[..i];
                    if s.pending.is_empty() && piece.len() <= MAX_LINE_EVENT_BYTES {
                        journal.line(stream, piece, false)?;
                    } else {
                        Self::push_pending(s, journal, stream, piece)?;
                        journal.line(stream, &s.pending, false)?;
                        s.pending.clear();
                    }
                    s.in_line = false;
                    rest = &rest[i + 1..];
                }
                None => {
                    Self::push_pending(s, journal, stream, rest)?;
                    rest = &[];
                }
            }
        }
        self.streams[stream.index()].bytes += data.len() as u64;
        if accepted.violation.is_some() {
            self.closed = true;
        }
        Ok(accepted)
    }

    /// Write what `stream` has of a line not ended yet as a `partial`
    /// piece (keeping an incomplete UTF-8 character for the next piece).
    fn flush_open_line(&mut self, journal: &mut Journal, stream: Stream) -> io::Result<()> {
        let s = &mut self.streams[stream.index()];
        // An incomplete character at the end waits for its other bytes.
        let cut = utf8_cut(&s.pending);
        if cut > 0 {
            journal.line(stream, &s.pending[..cut], true)?;
            s.pending.drain(..cut);
        }
        Ok(())
    }

    /// Append to the pending line, first writing out a full 64 KiB piece
    /// as a partial event whenever there is no room left.
    fn push_pending(
        s: &mut StreamState,
        journal: &mut Journal,
        stream: Stream,
        mut bytes: &[u8],
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            if s.pending.len() >= MAX_LINE_EVENT_BYTES {
                let cut = utf8_cut(&s.pending);
                journal.line(stream, &s.pending[..cut], true)?;
                // At most 3 bytes (an incomplete character) stay behind.
                s.pending.drain(..cut);
            }
            let take = (MAX_LINE_EVENT_BYTES - s.pending.len()).min(bytes.len());
            s.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// End of a stream (EOF, or the end of the run): a line without a final
    /// newline is written as a partial event.
    pub fn end_stream(&mut self, journal: &mut Journal, stream: Stream) -> io::Result<()> {
        let s = &mut self.streams[stream.index()];
        if !s.pending.is_empty() {
            journal.stamp();
            journal.line(stream, &s.pending, true)?;
            s.pending.clear();
        }
        s.in_line = false;
        Ok(())
    }
}

/// Where to cut a buffer: before an incomplete UTF-8 character at its end,
/// if the rest is valid UTF-8 (0 when the buffer is only such a start;
/// never for a full 64 KiB piece); else the whole buffer.
fn utf8_cut(buf: &[u8]) -> usize {
    match std::str::from_utf8(buf) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => buf.len(),
    }
}
