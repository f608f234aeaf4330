//! `vallignus sessions list|show|verify`

use clap::{Args, Subcommand};

use crate::session::reader::{EventReader, RecordedEvent};
use crate::session::store::{SessionError, Store};
use crate::session::{SessionMeta, Status};
use crate::supervisor::reap;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List recent sessions, newest first.
    List(ListArgs),
    /// Show one session's metadata and its last events.
    Show(ShowArgs),
    /// Check a session's hash chain and seal; report exactly what was altered
    /// (exit 0 intact, 1 altered or unverifiable, 2 bad id).
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show at most N sessions (N >= 1).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Print JSON (an array of session.json objects) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The session id (as printed by `run` and `sessions list`).
    session_id: String,
    /// Show the last N events.
    #[arg(long, default_value_t = 20, value_name = "N")]
    events: usize,
    /// Print JSON: {"session": ..., "events": [...]}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The session id (as printed by `run` and `sessions list`).
    session_id: String,
    /// Print JSON: {"session_id", "intact", "sealed", "kid", "sealed_at",
    /// "event_count", "findings": [{"kind", "file", "line", "message"}]}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn exit_code_for(e: &SessionError) -> u8 {
    match e {
        SessionError::InvalidId(_) => 2,
        _ => 1,
    }
}

/// Open the store, after cleaning up what dead supervisors left behind
/// (their cgroups are killed and removed, their sessions marked interrupted).
pub(crate) fn open_store() -> Result<Store, SessionError> {
    let store = Store::open_default()?;
    let base = crate::cgroup::resolve_base().ok();
    reap::reap_leftovers(&store, base.as_deref(), |msg| eprintln!("vallignus: {msg}"));
    Ok(store)
}

pub fn execute(cmd: SessionsCommand) -> u8 {
    let result = match cmd {
        SessionsCommand::List(a) => list(&a).map(|()| 0),
        SessionsCommand::Show(a) => show(&a).map(|()| 0),
        SessionsCommand::Verify(a) => verify(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            super::print_error(&e);
            exit_code_for(&e)
        }
    }
}

/// A running session whose supervisor is gone is shown as interrupted even
/// before it is reaped.
fn status_of(m: &SessionMeta) -> Status {
    let s = m.effective_status();
    if s == Status::Running {
        if let Some(sup) = &m.supervisor {
            if !reap::supervisor_alive(sup.pid, sup.start_time) {
                return Status::Interrupted;
            }
        }
    }
    s
}

fn format_duration(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{:.1}m", ms as f64 / 60_000.0),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

fn list(args: &ListArgs) -> Result<(), SessionError> {
    let store = open_store()?;
    let listing = store.list()?;
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let shown: Vec<&SessionMeta> = listing.sessions.iter().take(limit).collect();
    if args.json {
        let arr: Vec<serde_json::Value> = shown
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
                v["status"] = status_of(m).as_str().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
    } else if shown.is_empty() {
        eprintln!(
            "vallignus: no sessions in {}",
            store.sessions_dir().display()
        );
    } else {
        println!(
            "{:<24} {:<16} {:>5} {:>9}  COMMAND",
            "SESSION ID", "STATUS", "EXIT", "DURATION"
        );
        for m in &shown {
            let exit = m.exit_code.map_or("-".to_string(), |c| c.to_string());
            println!(
                "{:<24} {:<16} {:>5} {:>9}  {}",
                m.session_id,
                status_of(m).as_str(),
                exit,
                format_duration(m.duration_ms),
                truncate(&m.command.join(" "), 60)
            );
        }
    }
    if !listing.unreadable.is_empty() {
        eprintln!(
            "vallignus: skipped {} unreadable session(s): {}",
            listing.unreadable.len(),
            listing
                .unreadable
                .iter()
                .map(|(id, why)| format!("{id} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Read the last `n` events (a ring buffer: the file can be huge).
fn last_events(dir: &std::path::Path, n: usize) -> (Vec<RecordedEvent>, u64, Vec<String>) {
    let mut ring = std::collections::VecDeque::with_capacity(n.min(4096));
    let mut total = 0;
    let mut problems = Vec::new();
    let path = dir.join("events.jsonl");
    let reader = match EventReader::open(&path) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            return (Vec::new(), 0, problems);
        }
    };
    for item in reader {
        match item {
            Ok(Ok(ev)) => {
                total += 1;
                if n > 0 {
                    if ring.len() == n {
                        ring.pop_front();
                    }
                    ring.push_back(ev);
                }
            }
            Ok(Err(bad)) => problems.push(format!(
                "events.jsonl line {}: {}{}",
                bad.line_no,
                bad.reason,
                if bad.truncated_tail {
                    " (cut short, as by a crash)"
                } else {
                    ""
                }
            )),
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                break;
            }
        }
    }
    (ring.into_iter().collect(), total, problems)
}

fn describe(ev: &RecordedEvent) -> String {
    let f = |k: &str| {
        ev.field(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into())
    };
    match ev.kind.as_str() {
        "stdout_line" | "stderr_line" => {
            let text = ev
                .line_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let stream = if ev.kind == "stdout_line" {
                "stdout"
            } else {
                "stderr"
            };
            let partial = if ev.partial { " (partial)" } else { "" };
            format!(
                "{stream}: {}{partial}",
                truncate(&text.escape_debug().to_string(), 200)
            )
        }
        "run_started" => format!("run_started cwd={}", f("cwd")),
        "process_started" => format!("process_started pid={}", f("pid")),
        "process_exited" => match ev.field("signal") {
            Some(sig) => format!("process_exited code={} signal={sig}", f("exit_code")),
            None => format!("process_exited code={}", f("exit_code")),
        },
        "run_finished" => format!("run_finished duration={}ms", f("duration_ms")),
        "run_terminated" => format!(
            "run_terminated reason={} limit={} observed={}",
            ev.field("reason").and_then(|v| v.as_str()).unwrap_or("?"),
            f("limit_value"),
            f("observed_value")
        ),
        "net_request" => format!(
            "net_request {} {}:{} {} {}{}",
            ev.field("method").and_then(|v| v.as_str()).unwrap_or("?"),
            ev.field("host").and_then(|v| v.as_str()).unwrap_or("?"),
            f("port"),
            ev.field("decision").and_then(|v| v.as_str()).unwrap_or("?"),
            f("status"),
            ev.field("reason")
                .and_then(|v| v.as_str())
                .map_or(String::new(), |r| format!(" ({r})"))
        ),
        "teardown" => format!(
            "teardown {}",
            ev.field("action").and_then(|v| v.as_str()).unwrap_or("?")
        ),
        "supervisor_signal" => format!(
            "supervisor_signal {}",
            ev.field("name").and_then(|v| v.as_str()).unwrap_or("?")
        ),
        other => other.to_string(),
    }
}

fn show(args: &ShowArgs) -> Result<(), SessionError> {
    let store = open_store()?;
    let meta = store.load(&args.session_id)?;
    let dir = store.session_dir(&args.session_id)?;
    let (events, total, problems) = last_events(&dir, args.events);
    if args.json {
        let mut session = serde_json::to_value(&meta).unwrap_or(serde_json::Value::Null);
        session["status"] = status_of(&meta).as_str().into();
        let evs: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                let mut obj = e.fields.clone();
                obj.insert("type".into(), e.kind.clone().into());
                for (k, v) in [
                    ("ts_ms", e.ts_ms.map(Into::into)),
                    ("seq", e.seq.map(Into::into)),
                    ("t_us", e.t_us.map(Into::into)),
                    ("prev", e.prev.clone().map(Into::into)),
                    ("line", e.line.clone().map(Into::into)),
                    ("line_b64", e.line_b64.clone().map(Into::into)),
                ] {
                    if let Some(v) = v {
                        obj.insert(k.into(), v);
                    }
                }
                if e.partial {
                    obj.insert("partial".into(), true.into());
                }
                serde_json::Value::Object(obj)
            })
            .collect();
        let out = serde_json::json!({
            "session": session,
            "events": evs,
            "event_count": total,
            "problems": problems,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        let row = |k: &str, v: String| println!("{k:<14} {v}");
        row("Session", meta.session_id.clone());
        row("Status", status_of(&meta).as_str().into());
        row("Command", meta.command.join(" "));
        row("CWD", meta.cwd.clone());
        row("Started", meta.started_at_iso.clone());
        if let Some(f) = &meta.finished_at_iso {
            row("Finished", f.clone());
        }
        row("Duration", format_duration(meta.duration_ms));
        match (meta.exit_code, meta.exit_signal) {
            (Some(c), Some(s)) => row("Exit code", format!("{c} (signal {s})")),
            (Some(c), None) => row("Exit code", c.to_string()),
            _ => row("Exit code", "-".into()),
        }
        let counts = |lines: u64, bytes: Option<u64>| match bytes {
            Some(b) => format!("{lines} lines, {b} bytes"),
            None => format!("{lines} lines (bytes not recorded)"),
        };
        row("Stdout", counts(meta.stdout_lines, meta.stdout_bytes));
        row("Stderr", counts(meta.stderr_lines, meta.stderr_bytes));
        if let Some(r) = &meta.termination_reason {
            let lim = meta
                .termination_limit_value
                .as_ref()
                .map_or("-".into(), |v| v.to_string());
            let obs = meta
                .termination_observed_value
                .as_ref()
                .map_or("-".into(), |v| v.to_string());
            row("Termination", format!("{r} (limit {lim}, observed {obs})"));
        }
        if let Some(t) = meta.total_requests {
            row(
                "Requests",
                format!(
                    "{t} total, {} allowed, {} denied",
                    meta.allowed_requests.unwrap_or(0),
                    meta.denied_requests.unwrap_or(0)
                ),
            );
        }
        if let Some(usd) = meta.spend_usd {
            row("Spend", format!("${usd}"));
        }
        for (layer, e) in &meta.enforcement {
            let state = if e.enforced {
                "enforced"
            } else {
                "NOT enforced"
            };
            row(&format!("  {layer}"), format!("{state}: {}", e.detail));
        }
        if let Some(err) = &meta.error {
            row("Error", err.clone());
        }
        if !events.is_empty() {
            println!("\nLast {} of {} events:", events.len(), total);
            let first_ts = events.first().and_then(|e| e.ts_ms);
            for e in &events {
                let t = e.rel_us(first_ts) as f64 / 1e6;
                println!("  +{t:>9.3}s  {}", describe(e));
            }
        }
    }
    for p in &problems {
        eprintln!("vallignus: warning: session {}: {p}", meta.session_id);
    }
    Ok(())
}

/// `sessions verify`: read-only (no reaping of dead supervisors' leftovers,
/// nothing written); needs only the public keys of `<home>/auth/keys/`.
fn verify(args: &VerifyArgs) -> Result<u8, SessionError> {
    let store = Store::open_default()?;
    let dir = store.session_dir(&args.session_id)?;
    let auth = crate::auth::AuthStore::new(store.home());
    let v = crate::session::verify::verify(&dir, &args.session_id, |kid| {
        auth.verifying_key(kid).map_err(|e| e.to_string())
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if v.intact {
        println!(
            "session {}: intact ({} events; chain, seal signature by {} and file hashes all match; sealed {})",
            v.session_id,
            v.event_count,
            v.kid.as_deref().unwrap_or("?"),
            v.sealed_at.as_deref().unwrap_or("?"),
        );
    } else {
        use crate::session::verify::FindingKind;
        let headline = match v.findings.first().map(|f| f.kind) {
            Some(FindingKind::NotVerifiable) => "cannot be verified",
            _ if v.findings.iter().all(|f| f.kind == FindingKind::NoSeal) => "not sealed",
            _ => "NOT intact",
        };
        println!(
            "session {}: {headline} ({} problem(s))",
            v.session_id,
            v.findings.len()
        );
        for f in &v.findings {
            println!("  {}", f.message);
        }
    }
    Ok(if v.intact { 0 } else { 1 })
}
