//! `vallignus replay ID [--no-timestamps] [--speed X | --realtime] [--json] [--asciicast FILE]`

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::session::reader::{BadLine, EventReader, RecordedEvent};
use crate::session::replay::{replay_json, replay_text, write_asciicast, CastHeader};
use crate::session::store::SessionError;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The session id.
    session_id: String,
    /// Print the output exactly as recorded, without `[  1.234s]` prefixes.
    #[arg(long)]
    no_timestamps: bool,
    /// Reproduce the recorded timing, N times faster (2 = twice as fast).
    #[arg(long, value_name = "X", conflicts_with = "realtime", value_parser = parse_speed)]
    speed: Option<f64>,
    /// Reproduce the recorded timing (same as --speed 1).
    #[arg(long)]
    realtime: bool,
    /// Print one JSON object per output line instead of text.
    #[arg(long, conflicts_with = "asciicast")]
    json: bool,
    /// Write an asciicast v2 recording (playable with `asciinema play`) to FILE.
    #[arg(long, value_name = "FILE")]
    asciicast: Option<PathBuf>,
}

/// Slowest and fastest replay speeds accepted.
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1_000_000.0;

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if SPEED_RANGE.contains(&v) => Ok(v),
        _ => Err(format!(
            "invalid speed {s:?}: expected a number from {} to {}",
            SPEED_RANGE.start(),
            SPEED_RANGE.end()
        )),
    }
}

#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "session {id}: events.jsonl ends before the run's end (no run_finished): the record \
         was cut, so the output above may be incomplete (vallignus sessions verify {id})"
    )]
    Cut { id: String },
    #[error("session {id}: events.jsonl has {count} unreadable line(s), first at line {first}: {reason}")]
    BadEvents {
        id: String,
        count: usize,
        first: u64,
        reason: String,
    },
}

pub fn execute(args: ReplayArgs) -> u8 {
    match replay(&args) {
        Ok(()) => 0,
        Err(e) => {
            super::print_error(&e);
            match &e {
                ReplayError::Session(s) => super::sessions::exit_code_for(s),
                _ => 1,
            }
        }
    }
}

fn replay(args: &ReplayArgs) -> Result<(), ReplayError> {
    let store = super::sessions::open_store()?;
    let meta = store.load(&args.session_id)?;
    let dir = store.session_dir(&args.session_id)?;
    let path = dir.join("events.jsonl");
    let reader = EventReader::open(&path).map_err(|source| ReplayError::Io {
        path: path.clone(),
        source,
    })?;

    // Bad lines are collected and reported after what could be replayed:
    // lines that are not events, and output events without readable bytes
    // (nothing is skipped silently).
    let mut bad: Vec<BadLine> = Vec::new();
    let mut io_error = None;
    let mut finished = false;
    let mut reader = reader;
    let events = std::iter::from_fn(|| loop {
        let item = reader.next()?;
        match item {
            Ok(Ok(ev)) if ev.stream().is_some() && ev.line_bytes().is_none() => {
                bad.push(BadLine {
                    line_no: reader.line_no(),
                    reason: "an output event whose bytes cannot be read (line_b64 is not \
                             base64, or there is no line)"
                        .into(),
                    truncated_tail: false,
                });
            }
            Ok(Ok(ev)) => {
                finished |= ev.kind == "run_finished";
                return Some(ev);
            }
            Ok(Err(b)) => bad.push(b),
            Err(e) => {
                io_error.get_or_insert(e);
                return None;
            }
        }
    });
    let events: Box<dyn Iterator<Item = RecordedEvent>> = Box::new(events);

    let speed = if args.realtime { Some(1.0) } else { args.speed };
    let mut sleep = |d: std::time::Duration| std::thread::sleep(d);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |source| ReplayError::Io {
        path: PathBuf::from("<stdout>"),
        source,
    };

    if let Some(cast) = &args.asciicast {
        let header = CastHeader {
            width: 120,
            height: 40,
            timestamp: chrono::DateTime::parse_from_rfc3339(&meta.started_at_iso)
                .ok()
                .map(|t| t.timestamp()),
            title: format!("vallignus session {}", meta.session_id),
            command: meta.command.join(" "),
        };
        let file = std::fs::File::create(cast).map_err(|source| ReplayError::Io {
            path: cast.clone(),
            source,
        })?;
        let mut w = std::io::BufWriter::new(file);
        write_asciicast(events, &header, &mut w)
            .and_then(|_| w.flush())
            .map_err(|source| ReplayError::Io {
                path: cast.clone(),
                source,
            })?;
    } else if args.json {
        replay_json(events, speed, &mut out, &mut sleep).map_err(io)?;
    } else {
        let timestamps = !args.no_timestamps;
        if timestamps {
            eprintln!(
                "vallignus: replaying session {}: {}",
                meta.session_id,
                meta.command.join(" ")
            );
        }
        let stderr = std::io::stderr();
        let mut err = stderr.lock();
        replay_text(events, timestamps, speed, &mut out, &mut err, &mut sleep).map_err(io)?;
        out.flush().map_err(io)?;
        if timestamps {
            let code = meta.exit_code.map_or("-".into(), |c| c.to_string());
            let dur = meta.duration_ms.map_or("-".into(), |d| format!("{d}ms"));
            let reason = meta
                .termination_reason
                .as_ref()
                .map_or(String::new(), |r| format!(", terminated: {r}"));
            eprintln!("vallignus: exit code {code}, duration {dur}{reason}");
        }
    }
    out.flush().map_err(io)?;
    if let Some(e) = io_error {
        return Err(ReplayError::Io { path, source: e });
    }
    use crate::session::Status;
    let ended = matches!(
        meta.effective_status(),
        Status::Finished | Status::Terminated
    );
    if bad.is_empty() && ended && !finished {
        return Err(ReplayError::Cut {
            id: meta.session_id.clone(),
        });
    }
    if let Some(first) = bad.first() {
        return Err(ReplayError::BadEvents {
            id: meta.session_id.clone(),
            count: bad.len(),
            first: first.line_no,
            reason: first.reason.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_outside_the_range_are_refused_by_name() {
        for ok in ["1", "0.5", "0.001", "1000000", "2e3"] {
            assert!(parse_speed(ok).is_ok(), "{ok}");
        }
        // 1e-300 used to reach Duration::from_secs_f64 and panic.
        for bad in ["0", "-1", "1e-300", "1e300", "NaN", "inf", "fast", ""] {
            let err = parse_speed(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
