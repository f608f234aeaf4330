//! Replaying a session's output from its events, in the order it arrived
//! (`seq`), as text, JSON lines, or an asciicast v2 recording.
//!
//! The renderers write to caller-supplied sinks and take a `sleep` callback
//! so that timing (`--speed`, `--realtime`) is testable without sleeping.

use std::io::{self, Write};
use std::time::Duration;

use base64::Engine;

use super::event::Stream;
use super::reader::RecordedEvent;

/// How to pace the replay: `None` prints as fast as possible, `Some(s)`
/// waits the recorded gaps divided by `s` (1.0 = real time).
pub type Speed = Option<f64>;

/// State shared by the renderers: pacing and relative time.
struct Clock<'a> {
    speed: Speed,
    first_ts_ms: Option<i64>,
    last_us: Option<u64>,
    sleep: &'a mut dyn FnMut(Duration),
}

impl Clock<'_> {
    /// Relative time of `ev` in µs; sleeps for the gap since the previous one.
    fn tick(&mut self, ev: &RecordedEvent) -> u64 {
        if self.first_ts_ms.is_none() {
            self.first_ts_ms = ev.ts_ms;
        }
        let now = ev.rel_us(self.first_ts_ms);
        if let (Some(speed), Some(last)) = (self.speed, self.last_us) {
            if now > last && speed > 0.0 {
                let gap = (now - last) as f64 / 1e6 / speed;
                (self.sleep)(Duration::try_from_secs_f64(gap).unwrap_or(Duration::MAX));
            }
        }
        self.last_us = Some(now);
        now
    }
}

/// Counts of what a replay printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub stdout_events: u64,
    pub stderr_events: u64,
}

impl ReplayStats {
    fn count(&mut self, s: Stream) {
        match s {
            Stream::Stdout => self.stdout_events += 1,
            Stream::Stderr => self.stderr_events += 1,
        }
    }
}

/// Plain replay: stdout lines to `out`, stderr lines to `err`. Without
/// timestamps the bytes are exactly what the agent wrote (newline unless
/// the event is `partial`); with timestamps each line starts with
/// `[  1.234s] `, as in 0.4.2.
pub fn replay_text(
    events: impl Iterator<Item = RecordedEvent>,
    timestamps: bool,
    speed: Speed,
    out: &mut dyn Write,
    err: &mut dyn Write,
    sleep: &mut dyn FnMut(Duration),
) -> io::Result<ReplayStats> {
    let mut clock = Clock {
        speed,
        first_ts_ms: None,
        last_us: None,
        sleep,
    };
    let mut at_line_start = [true, true];
    let mut stats = ReplayStats::default();
    for ev in events {
        let t = clock.tick(&ev);
        let (Some(stream), Some(bytes)) = (ev.stream(), ev.line_bytes()) else {
            continue;
        };
        stats.count(stream);
        let sink: &mut dyn Write = match stream {
            Stream::Stdout => out,
            Stream::Stderr => err,
        };
        if timestamps && at_line_start[stream.index()] {
            write!(sink, "[{:>7.3}s] ", t as f64 / 1e6)?;
        }
        sink.write_all(&bytes)?;
        if !ev.partial {
            sink.write_all(b"\n")?;
        }
        at_line_start[stream.index()] = !ev.partial;
        if speed.is_some() {
            sink.flush()?;
        }
    }
    Ok(stats)
}

/// JSON lines: one object per output event, in arrival order:
/// `{"seq":..,"t_us":..,"stream":"stdout","line":"..","partial":false}`
/// (`line_b64` instead of `line` for bytes that are not UTF-8).
pub fn replay_json(
    events: impl Iterator<Item = RecordedEvent>,
    speed: Speed,
    out: &mut dyn Write,
    sleep: &mut dyn FnMut(Duration),
) -> io::Result<ReplayStats> {
    let mut clock = Clock {
        speed,
        first_ts_ms: None,
        last_us: None,
        sleep,
    };
    let mut stats = ReplayStats::default();
    for (i, ev) in events.enumerate() {
        let t = clock.tick(&ev);
        let Some(stream) = ev.stream() else { continue };
        stats.count(stream);
        let mut obj = serde_json::Map::new();
        obj.insert("seq".into(), ev.seq.unwrap_or(i as u64).into());
        obj.insert("t_us".into(), t.into());
        obj.insert(
            "stream".into(),
            match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }
            .into(),
        );
        match (&ev.line, &ev.line_b64) {
            (Some(l), _) => obj.insert("line".into(), l.clone().into()),
            (None, Some(b)) => obj.insert("line_b64".into(), b.clone().into()),
            (None, None) => obj.insert("line".into(), "".into()),
        };
        obj.insert("partial".into(), ev.partial.into());
        serde_json::to_writer(&mut *out, &obj).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    Ok(stats)
}

/// Header fields of an asciicast v2 file.
pub struct CastHeader {
    pub width: u16,
    pub height: u16,
    pub timestamp: Option<i64>,
    pub title: String,
    pub command: String,
}

/// asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>): a
/// header line, then `[seconds, "o", text]` per output event. Pipes carry
/// bare `\n`; a terminal would have turned it into `\r\n`, so we do too.
/// Bytes that are not UTF-8 are replaced (the format carries strings).
pub fn write_asciicast(
    events: impl Iterator<Item = RecordedEvent>,
    header: &CastHeader,
    out: &mut dyn Write,
) -> io::Result<ReplayStats> {
    let mut h = serde_json::json!({
        "version": 2,
        "width": header.width,
        "height": header.height,
        "title": header.title,
        "command": header.command,
    });
    if let Some(ts) = header.timestamp {
        h["timestamp"] = ts.into();
    }
    serde_json::to_writer(&mut *out, &h).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    let mut sleep = |_d: Duration| {};
    let mut clock = Clock {
        speed: None,
        first_ts_ms: None,
        last_us: None,
        sleep: &mut sleep,
    };
    let mut stats = ReplayStats::default();
    for ev in events {
        let t = clock.tick(&ev);
        let (Some(stream), Some(bytes)) = (ev.stream(), ev.line_bytes()) else {
            continue;
        };
        stats.count(stream);
        let mut text = String::from_utf8_lossy(&bytes).replace('\n', "\r\n");
        if !ev.partial {
            text.push_str("\r\n");
        }
        let frame = serde_json::json!([t as f64 / 1e6, "o", text]);
        serde_json::to_writer(&mut *out, &frame).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    Ok(stats)
}

/// Decode helper for callers that hold base64 text.
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> RecordedEvent {
        serde_json::from_str(json).unwrap()
    }

    fn sample() -> Vec<RecordedEvent> {
        vec![
            ev(r#"{"type":"run_started","seq":0,"t_us":0}"#),
            ev(r#"{"type":"stdout_line","seq":1,"t_us":1000,"line":"out1"}"#),
            ev(r#"{"type":"stderr_line","seq":2,"t_us":3000,"line":"err1"}"#),
            ev(r#"{"type":"stdout_line","seq":3,"t_us":503000,"line_b64":"/w==","partial":true}"#),
            ev(r#"{"type":"stdout_line","seq":4,"t_us":504000,"line":"tail"}"#),
            ev(
                r#"{"type":"stdout_line","seq":5,"t_us":505000,"line":"no-newline","partial":true}"#,
            ),
        ]
    }

    #[test]
    fn raw_text_is_byte_exact_per_stream() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let stats = replay_text(
            sample().into_iter(),
            false,
            None,
            &mut out,
            &mut err,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out, b"out1\n\xfftail\nno-newline");
        assert_eq!(err, b"err1\n");
        assert_eq!(stats.stdout_events, 4);
        assert_eq!(stats.stderr_events, 1);
    }

    #[test]
    fn timestamps_prefix_line_starts_only() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        replay_text(
            sample().into_iter(),
            true,
            None,
            &mut out,
            &mut err,
            &mut |_| {},
        )
        .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("[  0.001s] out1\n[  0.503s] \u{fffd}tail\n[  0.505s] no-newline"),
            "{out}"
        );
        assert_eq!(err, b"[  0.003s] err1\n");
    }

    #[test]
    fn speed_scales_sleeps() {
        let mut slept = Vec::new();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        replay_text(
            sample().into_iter(),
            false,
            Some(2.0),
            &mut out,
            &mut err,
            &mut |d| slept.push(d),
        )
        .unwrap();
        let total: Duration = slept.iter().sum();
        assert!((total.as_secs_f64() - 0.2525).abs() < 1e-6, "{total:?}");
    }

    #[test]
    fn json_lines_keep_order() {
        let mut out = Vec::new();
        replay_json(sample().into_iter(), None, &mut out, &mut |_| {}).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1]["stream"], "stderr");
        assert_eq!(lines[2]["line_b64"], "/w==");
        assert_eq!(lines[0]["seq"], 1);
    }

    #[test]
    fn asciicast_v2() {
        let mut out = Vec::new();
        let header = CastHeader {
            width: 80,
            height: 24,
            timestamp: Some(1),
            title: "t".into(),
            command: "c".into(),
        };
        write_asciicast(sample().into_iter(), &header, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[1], serde_json::json!([0.001, "o", "out1\r\n"]));
        assert_eq!(lines[5], serde_json::json!([0.505, "o", "no-newline"]));
    }
}
