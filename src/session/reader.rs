//! Reading `events.jsonl` back: streaming (a run can have millions of
//! events), tolerant of vallignus 0.4.2 files (no `seq`/`t_us`/`prev`) and of
//! a last line cut short by a supervisor crash.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::event::Stream;

/// One event as stored. Known fields are typed; the rest stays in `fields`.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedEvent {
    #[serde(default)]
    pub ts_ms: Option<i64>,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub t_us: Option<u64>,
    #[serde(default)]
    pub prev: Option<String>,
    #[serde(default)]
    pub line: Option<String>,
    #[serde(default)]
    pub line_b64: Option<String>,
    #[serde(default)]
    pub partial: bool,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl RecordedEvent {
    pub fn stream(&self) -> Option<Stream> {
        match self.kind.as_str() {
            "stdout_line" => Some(Stream::Stdout),
            "stderr_line" => Some(Stream::Stderr),
            _ => None,
        }
    }

    /// The raw bytes of an output line event (without newline).
    pub fn line_bytes(&self) -> Option<Cow<'_, [u8]>> {
        if let Some(l) = &self.line {
            return Some(Cow::Borrowed(l.as_bytes()));
        }
        let b64 = self.line_b64.as_ref()?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .map(Cow::Owned)
    }

    pub fn field(&self, key: &str) -> Option<&serde_json::Value> {
        self.fields.get(key)
    }

    /// Time since the run started in microseconds: `t_us` when present,
    /// else derived from `ts_ms` relative to `first_ts_ms` (0.4.2 files).
    pub fn rel_us(&self, first_ts_ms: Option<i64>) -> u64 {
        if let Some(t) = self.t_us {
            return t;
        }
        match (self.ts_ms, first_ts_ms) {
            (Some(t), Some(f)) if t >= f => ((t - f) as u64) * 1000,
            _ => 0,
        }
    }
}

/// A line of the file that could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in events.jsonl.
    pub line_no: u64,
    pub reason: String,
    /// The last line, without a newline: typical of a crash mid-write.
    pub truncated_tail: bool,
}

/// Iterator over the events of a file; bad lines are yielded as errors
/// so callers can count or report them and go on.
pub struct EventReader<R> {
    input: R,
    buf: Vec<u8>,
    line_no: u64,
}

impl EventReader<BufReader<File>> {
    /// Open a session's `events.jsonl` (a regular file, never through a
    /// link; see `store::open_session_file`).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self::new(BufReader::with_capacity(
            1 << 16,
            super::store::open_session_file(path)?,
        )))
    }
}

/// Longest event line parsed (as `sessions verify`): a line event holds at
/// most 64 KiB of output (~350 KiB escaped); longer lines are reported, not
/// held in memory.
pub const MAX_EVENT_LINE: usize = 16 << 20;

/// How a line read by [`read_line_bounded`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineEnd {
    /// It ended with a newline (else: at the end of the input).
    pub newline: bool,
    /// It was longer than the bytes kept.
    pub too_long: bool,
}

/// Read the next line (without its newline) into `buf`, keeping at most
/// `max` bytes; `each` sees all of it, in pieces (to hash a line that is
/// too long to keep). `None` at the end of the input.
pub(crate) fn read_line_bounded<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    mut each: impl FnMut(&[u8]),
) -> io::Result<Option<LineEnd>> {
    buf.clear();
    let mut seen = false;
    let mut too_long = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(seen.then_some(LineEnd {
                newline: false,
                too_long,
            }));
        }
        seen = true;
        let (part, used) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        each(part);
        let room = max.saturating_sub(buf.len());
        too_long |= part.len() > room;
        buf.extend_from_slice(&part[..part.len().min(room)]);
        let newline = used.is_some();
        let used = used.unwrap_or(part.len());
        input.consume(used);
        if newline {
            return Ok(Some(LineEnd {
                newline: true,
                too_long,
            }));
        }
    }
}

impl<R: BufRead> EventReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            buf: Vec::new(),
            line_no: 0,
        }
    }

    /// The line number of the last item returned (1-based).
    pub fn line_no(&self) -> u64 {
        self.line_no
    }
}

impl<R: BufRead> Iterator for EventReader<R> {
    type Item = io::Result<Result<RecordedEvent, BadLine>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let end =
                match read_line_bounded(&mut self.input, &mut self.buf, MAX_EVENT_LINE, |_| {}) {
                    Ok(None) => return None,
                    Ok(Some(end)) => end,
                    Err(e) => return Some(Err(e)),
                };
            self.line_no += 1;
            if end.too_long {
                return Some(Ok(Err(BadLine {
                    line_no: self.line_no,
                    reason: format!("longer than {MAX_EVENT_LINE} bytes (not read)"),
                    truncated_tail: false,
                })));
            }
            let complete = end.newline;
            let line = self.buf.trim_ascii();
            if line.is_empty() {
                continue;
            }
            return Some(Ok(serde_json::from_slice::<RecordedEvent>(line).map_err(
                |e| BadLine {
                    line_no: self.line_no,
                    reason: e.to_string(),
                    truncated_tail: !complete,
                },
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_flagged_and_not_kept() {
        let data = b"short\n0123456789abcdef\nnext\nlast-no-newline";
        // A reader with 3-byte chunks: lines cross buffer refills.
        let mut input = BufReader::with_capacity(3, &data[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let mut seen = 0;
            let Some(end) =
                read_line_bounded(&mut input, &mut buf, 8, |p| seen += p.len()).unwrap()
            else {
                break;
            };
            let kept = String::from_utf8(buf.clone()).unwrap();
            got.push((seen, end.newline, end.too_long, kept));
        }
        assert_eq!(
            got,
            [
                (5, true, false, "short".to_string()),
                (16, true, true, "01234567".to_string()),
                (4, true, false, "next".to_string()),
                (15, false, true, "last-no-".to_string()),
            ]
        );
    }

    #[test]
    fn reads_old_and_new_and_truncated() {
        let data = b"{\"ts_ms\":1000,\"session_id\":\"s\",\"type\":\"run_started\",\"command\":[\"x\"],\"cwd\":\"/\"}\n\
{\"ts_ms\":1005,\"session_id\":\"s\",\"type\":\"stdout_line\",\"line\":\"hello\"}\n\
\n\
{\"ts_ms\":1006,\"session_id\":\"s\",\"type\":\"stderr_line\",\"line_b64\":\"/w==\",\"partial\":true,\"seq\":2,\"t_us\":7}\n\
{\"ts_ms\":10";
        let evs: Vec<_> = EventReader::new(&data[..]).map(|r| r.unwrap()).collect();
        assert_eq!(evs.len(), 4);
        let e0 = evs[0].as_ref().unwrap();
        assert_eq!(e0.kind, "run_started");
        assert_eq!(e0.field("cwd").unwrap(), "/");
        let e1 = evs[1].as_ref().unwrap();
        assert_eq!(e1.stream(), Some(Stream::Stdout));
        assert_eq!(e1.line_bytes().unwrap().as_ref(), b"hello");
        assert_eq!(e1.rel_us(Some(1000)), 5000);
        let e2 = evs[2].as_ref().unwrap();
        assert_eq!(e2.line_bytes().unwrap().as_ref(), b"\xff");
        assert!(e2.partial);
        assert_eq!(e2.rel_us(Some(1000)), 7);
        let bad = evs[3].as_ref().unwrap_err();
        assert_eq!(bad.line_no, 5);
        assert!(bad.truncated_tail);
    }
}
