//! The supervisor's loop: one poll(2) over the agent's stdout and stderr,
//! its pidfd, a signalfd and the cgroup's `cgroup.events`, with the
//! deadline (monotonic clock) as the timeout. Single-threaded by design:
//! output from both pipes is recorded in the order it is read, and nothing
//! can make the deadline late but the kernel.
//!
//! Teardown is a small state machine:
//! `Running` --(child exits | violation)--> `Stopping` (SIGTERM to every
//! process left, grace period) --(grace over)--> `Draining` (after `cgroup.kill`);
//! the loop ends when the child was reaped, no process is left and both
//! pipes reached EOF.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};

use super::console::Console;
use super::containment::Containment;
use super::journal::Journal;
use super::output::Recorder;
use super::spawn::Running;
use super::violation::Violation;
use crate::session::{Event, Stream};

const READ_CHUNK: usize = 256 * 1024;
/// After the last process is gone, how long to wait for pipe EOF (only
/// matters if the agent passed its pipe to a process outside the run).
const DRAIN_AFTER_EMPTY: Duration = Duration::from_millis(500);

pub struct WatchConfig {
    pub started: Instant,
    pub max_runtime: Option<Duration>,
    /// `memory.max`, when set: an OOM kill in the run ends it (`memory_oom`).
    pub memory_max: Option<u64>,
    /// `pids.max`, when set: hitting it is recorded as a `limit_event`,
    /// and ends the run (`pids_max`) when `end_on_pids_max`.
    pub pids_max: Option<u64>,
    pub end_on_pids_max: bool,
    /// `--max-requests`: a request refused for it ends the run (unless
    /// `log_request_violations`).
    pub max_requests: Option<u64>,
    pub log_request_violations: bool,
    /// `--max-spend-usd`: spend reaching it ends the run.
    pub max_spend: Option<crate::net::spend::PicoUsd>,
    /// Where to POST an alert on a violation, and what to say in it.
    pub alert: Option<super::alert::Webhook>,
    pub session_id: String,
    pub agent_id: Option<String>,
    pub kill_grace: Duration,
    pub quiet: bool,
}

/// How the run ended.
pub struct Outcome {
    /// The agent's (exit code in shell convention, signal), if it was reaped.
    pub agent_status: Option<(i64, Option<i32>)>,
    /// An alert in flight.
    pub alert: Option<super::alert::PendingAlert>,
    pub violation: Option<Violation>,
    pub ended: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    Stopping {
        kill_at: Instant,
    },
    /// Nothing left to signal: waiting for the last exits and pipe EOF.
    Draining,
}

struct Loop<'a> {
    cfg: &'a WatchConfig,
    containment: &'a Containment,
    journal: &'a mut Journal,
    recorder: &'a mut Recorder,
    console: &'a mut Console,
    phase: Phase,
    violation: Option<Violation>,
    status: Option<WaitStatus>,
    /// The agent's (exit code, signal): the child's own, or init's report.
    agent_status: Option<(i64, Option<i32>)>,
    recording_error: bool,
    alert: Option<super::alert::PendingAlert>,
}

fn exit_code_of(status: &WaitStatus) -> (i64, Option<i32>) {
    match status {
        WaitStatus::Exited(_, code) => (i64::from(*code), None),
        WaitStatus::Signaled(_, sig, _) => (128 + *sig as i64, Some(*sig as i32)),
        _ => (-1, None),
    }
}

impl Loop<'_> {
    fn note(&self, msg: &str) {
        if !self.cfg.quiet {
            eprintln!("vallignus: {msg}");
        }
    }

    /// Record an event; a failure to record ends the run (fail closed).
    fn emit(&mut self, event: &Event) {
        if let Err(e) = self.journal.emit(event) {
            self.recording_failed(e);
        }
    }

    fn recording_failed(&mut self, e: std::io::Error) {
        if !self.recording_error {
            self.recording_error = true;
            self.violate(Violation::RecordingFailed(e.to_string()));
        }
    }

    /// First violation wins; it starts the teardown.
    fn violate(&mut self, v: Violation) {
        if self.violation.is_some() {
            return;
        }
        if matches!(v, Violation::RecordingFailed(_)) {
            // Even with --quiet: the exit code (125) alone would not say
            // that the session is incomplete, or why.
            eprintln!("vallignus: error: {}", v.describe());
        } else {
            self.note(&v.describe());
        }
        let event = Event::RunTerminated {
            reason: v.reason().into(),
            limit_value: v.limit_value(),
            observed_value: v.observed_value(),
            observed_ms: v.observed_ms(),
        };
        // Not through self.emit: a recording failure must not recurse.
        let _ = self.journal.emit(&event);
        if let (Some(hook), true) = (&self.cfg.alert, self.alert.is_none()) {
            let body = serde_json::json!({
                "session_id": self.cfg.session_id,
                "reason": v.reason(),
                "limit_value": v.limit_value(),
                "observed_value": v.observed_value(),
                "agent_id": self.cfg.agent_id,
                "ts_ms": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            });
            // The attempt is an event of its own, before its outcome
            // (alert_sent / alert_failed, recorded at the end of the run).
            let _ = self.journal.emit(&Event::AlertAttempt {
                url: hook.url.clone(),
            });
            self.alert = Some(hook.send(body.to_string()));
        }
        self.violation = Some(v);
        if self.phase == Phase::Running {
            self.stop();
        }
    }

    /// SIGTERM to every process of the run, then the grace period.
    fn stop(&mut self) {
        if self.cfg.kill_grace.is_zero() {
            self.kill();
            return;
        }
        let n = self.containment.signal_all(Signal::SIGTERM).unwrap_or(0);
        self.emit(&Event::Teardown {
            action: "sigterm".into(),
            processes: Some(n),
        });
        self.phase = Phase::Stopping {
            kill_at: Instant::now() + self.cfg.kill_grace,
        };
    }

    /// SIGKILL to everything that is left (`cgroup.kill`).
    fn kill(&mut self) {
        if let Err(e) = self.containment.kill_all() {
            self.note(&format!("cannot kill the run's processes: {e}"));
        }
        self.emit(&Event::Teardown {
            action: "kill".into(),
            processes: None,
        });
        self.phase = Phase::Draining;
    }

    fn reap(&mut self, pidfd: &OwnedFd, status_pipe: Option<&std::fs::File>) {
        match waitid(
            Id::PIDFd(pidfd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(status) => {
                let (mut exit_code, mut signal) = exit_code_of(&status);
                // With a PID namespace the child is init: it reported the
                // agent's own status before exiting.
                if let Some(pipe) = status_pipe {
                    let mut buf = [0u8; super::init::STATUS_LEN];
                    if let Ok(super::init::STATUS_LEN) = std::io::Read::read(&mut &*pipe, &mut buf)
                    {
                        if let Some((code, sig)) = super::init::decode_status(&buf) {
                            exit_code = code;
                            signal = sig;
                        }
                    }
                }
                self.agent_status = Some((exit_code, signal));
                self.status = Some(status);
                self.emit(&Event::ProcessExited { exit_code, signal });
                if self.phase == Phase::Running {
                    // The agent is done; whatever it left behind is not.
                    if self.containment.is_empty().unwrap_or(false) {
                        self.phase = Phase::Draining;
                    } else {
                        self.stop();
                    }
                }
            }
            Err(e) => {
                self.note(&format!("cannot wait for the agent: {e}"));
                self.status = Some(WaitStatus::StillAlive);
            }
        }
    }

    /// Record what the proxy saw; a request refused for the cap ends the
    /// run, and so does spend that reached the budget (or a request
    /// refused for it).
    fn on_proxy(&mut self, proxy: &mut crate::net::proxy::ProxyHandle) {
        use crate::net::decide::Reason;
        for record in proxy.drain_records() {
            let over_cap =
                record.reason == Some(Reason::MaxRequests) && !self.cfg.log_request_violations;
            let over_budget = self.cfg.max_spend.filter(|budget| {
                !self.cfg.log_request_violations
                    && (record.reason == Some(Reason::BudgetExceeded)
                        || record.spent.is_some_and(|s| s >= *budget))
            });
            // A refusal says what admitting it would have committed.
            let spent = record.needed.or(record.spent);
            self.emit(&Event::NetRequest(Box::new(record)));
            if let Some(limit) = over_budget {
                self.violate(Violation::BudgetExceeded {
                    limit,
                    observed: spent.unwrap_or(limit),
                });
            }
            if over_cap {
                if let Some(limit) = self.cfg.max_requests {
                    self.violate(Violation::MaxRequests {
                        limit,
                        observed: limit + 1,
                    });
                }
            }
        }
    }

    /// A watched counter changed: record it; an OOM kill ends the run.
    fn on_limit(&mut self, w: &mut LimitWatch) {
        let counters = w.read();
        let count = counters.get(w.key).copied().unwrap_or(0);
        if count <= w.last {
            return;
        }
        w.last = count;
        self.emit(&Event::LimitEvent {
            kind: w.kind.into(),
            count,
            counters,
        });
        if w.kind == "oom_kill" {
            self.violate(Violation::MemoryOom {
                limit: self.cfg.memory_max.unwrap_or(0),
                observed: count,
            });
        }
        if w.kind == "pids_max" && self.cfg.end_on_pids_max {
            self.violate(Violation::PidsMax {
                limit: self.cfg.pids_max.unwrap_or(0),
                observed: count,
            });
        }
    }

    fn on_signal(&mut self, signals: &SignalFd) {
        while let Ok(Some(info)) = signals.read_signal() {
            let signo = info.ssi_signo as i32;
            let name = Signal::try_from(signo).map_or("?", |s| s.as_str());
            self.emit(&Event::SupervisorSignal {
                signal: signo,
                name: name.into(),
            });
            if self.violation.is_none() {
                self.violate(Violation::Signal(signo));
            } else if matches!(self.phase, Phase::Stopping { .. }) {
                // Asked twice: do not wait for the grace period.
                self.kill();
            }
        }
    }

    /// Read once from a pipe. Returns false on EOF (or a closed console).
    fn on_output(
        &mut self,
        stream: Stream,
        fd: &OwnedFd,
        held: &mut Option<(Stream, Vec<u8>)>,
    ) -> bool {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return true,
            Err(_) => return false,
        };
        let accepted = match self.recorder.record(self.journal, stream, &buf[..n]) {
            Ok(a) => a,
            Err(e) => {
                self.recording_failed(e);
                return true;
            }
        };
        if accepted.len > 0 {
            buf.truncate(accepted.len);
            if let Err(chunk) = self.console.try_send(stream, buf) {
                *held = Some((stream, chunk));
            }
        }
        if let Some(v) = accepted.violation {
            self.violate(v);
        }
        !self.console.is_closed(stream)
    }
}

/// A cgroup counter file watched for increases (kernfs signals changes with
/// POLLPRI): `memory.events` for `oom_kill`, `pids.events` for `max`.
struct LimitWatch {
    file: std::fs::File,
    key: &'static str,
    kind: &'static str,
    last: u64,
}

impl LimitWatch {
    fn open(
        containment: &Containment,
        file: &str,
        key: &'static str,
        kind: &'static str,
    ) -> Option<Self> {
        let Containment::Cgroup(cg) = containment else {
            return None;
        };
        let file = std::fs::File::open(cg.path().join(file)).ok()?;
        let mut w = Self {
            file,
            key,
            kind,
            last: 0,
        };
        w.last = w.read().get(key).copied().unwrap_or(0);
        Some(w)
    }

    /// All counters of the file (reading also re-arms POLLPRI).
    fn read(&mut self) -> std::collections::BTreeMap<String, u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 1024];
        let n = self.file.read_at(&mut buf, 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

/// Read `cgroup.events` through `file`: this is what re-arms its POLLPRI.
fn ack_events(file: &std::fs::File) {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 256];
    let _ = file.read_at(&mut buf, 0);
}

/// Supervise a running child until every process of the run is gone.
#[allow(clippy::too_many_arguments)]
pub fn watch(
    child: Running,
    containment: &Containment,
    journal: &mut Journal,
    recorder: &mut Recorder,
    console: &mut Console,
    signals: &SignalFd,
    mut proxy: Option<&mut crate::net::proxy::ProxyHandle>,
    cfg: &WatchConfig,
) -> Outcome {
    let Running {
        pidfd,
        stdout,
        stderr,
        status: status_file,
        ..
    } = child;
    let mut pipes: [Option<OwnedFd>; 2] = [Some(stdout), Some(stderr)];
    let events_file = containment.events_file();
    if let Some(f) = &events_file {
        ack_events(f);
    }
    let deadline = cfg.max_runtime.map(|d| cfg.started + d);
    let mut limit_watches: Vec<LimitWatch> = Vec::new();
    if cfg.memory_max.is_some() {
        limit_watches.extend(LimitWatch::open(
            containment,
            "memory.events",
            "oom_kill",
            "oom_kill",
        ));
    }
    if cfg.pids_max.is_some() {
        limit_watches.extend(LimitWatch::open(
            containment,
            "pids.events",
            "max",
            "pids_max",
        ));
    }
    let mut held: Option<(Stream, Vec<u8>)> = None;
    let mut empty_since: Option<Instant> = None;
    // Whether proxy_stopped was recorded (once, when the proxy stops
    // accepting; its thread may still finish open connections).
    let mut proxy_stopped = false;
    let mut lp = Loop {
        cfg,
        containment,
        journal,
        recorder,
        console,
        phase: Phase::Running,
        violation: None,
        status: None,
        agent_status: None,
        recording_error: false,
        alert: None,
    };

    loop {
        let now = Instant::now();

        // Deadlines first: the runtime cap, then the end of the grace period.
        if lp.phase == Phase::Running {
            if let (Some(d), Some(limit)) = (deadline, cfg.max_runtime) {
                if now >= d {
                    lp.violate(Violation::MaxRuntime {
                        limit,
                        observed: now - cfg.started,
                    });
                }
            }
        }
        if let Phase::Stopping { kill_at } = lp.phase {
            if now >= kill_at && !containment.is_empty().unwrap_or(false) {
                lp.kill();
            }
        }

        // Console backpressure: retry the held chunk before reading more.
        if let Some((stream, chunk)) = held.take() {
            if let Err(chunk) = lp.console.try_send(stream, chunk) {
                held = Some((stream, chunk));
            }
        }
        for s in [Stream::Stdout, Stream::Stderr] {
            if pipes[s.index()].is_some() && lp.console.is_closed(s) {
                pipes[s.index()] = None;
                if let Err(e) = lp.recorder.end_stream(lp.journal, s) {
                    lp.recording_failed(e);
                }
            }
        }

        // Done when the child is reaped, nothing is left, and the pipes are
        // drained (or the drain timed out).
        if lp.status.is_some() && lp.phase != Phase::Running {
            if empty_since.is_none() && containment.is_empty().unwrap_or(true) {
                empty_since = Some(now);
            }
            if let Some(t) = empty_since {
                let drained = pipes.iter().all(Option::is_none) && held.is_none();
                if drained || now.duration_since(t) > DRAIN_AFTER_EMPTY {
                    break;
                }
            }
        }

        // Build the poll set. Slots: 0 signals, 1 pidfd, 2 cgroup.events,
        // 3 stdout, 4 stderr (absent ones are polled with no events).
        let read_pipes = held.is_none();
        let none = PollFlags::empty();
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(
                pidfd.as_fd(),
                if lp.status.is_none() {
                    PollFlags::POLLIN
                } else {
                    none
                },
            ),
        ];
        // cgroup.events only matters once the run is ending.
        let events_slot = events_file
            .as_ref()
            .filter(|_| lp.phase != Phase::Running)
            .map(|f| {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLPRI));
                fds.len() - 1
            });
        let proxy_slot = proxy.as_ref().filter(|p| p.is_running()).map(|p| {
            fds.push(PollFd::new(p.notify_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let first_limit_slot = fds.len();
        for w in &limit_watches {
            fds.push(PollFd::new(w.file.as_fd(), PollFlags::POLLPRI));
        }
        let mut pipe_slots = [None, None];
        for (i, p) in pipes.iter().enumerate() {
            if let (Some(fd), true) = (p, read_pipes) {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                pipe_slots[i] = Some(fds.len() - 1);
            }
        }

        // Timeout: the nearest deadline; short ticks while something is
        // polled rather than notified (held console chunk, process group,
        // waiting for the cgroup to empty).
        let mut wait = Duration::from_secs(3600);
        if lp.phase == Phase::Running {
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
        }
        if let Phase::Stopping { kill_at } = lp.phase {
            wait = wait.min(kill_at.saturating_duration_since(now));
        }
        if held.is_some() {
            wait = wait.min(Duration::from_millis(5));
        }
        if lp.phase != Phase::Running {
            let tick = if events_slot.is_some() { 50 } else { 5 };
            wait = wait.min(Duration::from_millis(tick));
        }
        if let Some(t) = empty_since {
            wait = wait.min((t + DRAIN_AFTER_EMPTY).saturating_duration_since(now));
        }

        // Flush the session files only when there is nothing to read now.
        let ready = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => {
                if let Err(e) = lp.journal.flush() {
                    lp.recording_failed(e);
                }
                // Round up so we never wake just before a deadline and spin.
                let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                poll(
                    &mut fds,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                )
            }
            other => other,
        };
        match ready {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                lp.note(&format!("poll failed: {e}"));
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(none)).collect();
        drop(fds);

        if !revents[0].is_empty() {
            lp.on_signal(signals);
        }
        if !revents[1].is_empty() && lp.status.is_none() {
            lp.reap(&pidfd, status_file.as_ref());
        }
        // cgroup.events only wakes the loop (the check is at the top), but
        // the notification must be consumed by reading the same open file,
        // or kernfs keeps reporting it.
        if let (Some(i), Some(f)) = (events_slot, &events_file) {
            if !revents[i].is_empty() {
                ack_events(f);
            }
        }
        if let Some(p) = proxy.as_deref_mut() {
            // Checked on every pass: the proxy's thread may have ended (and
            // its slot gone) while this loop was busy with something else.
            let stopped_now = !proxy_stopped && !p.is_listening();
            if stopped_now || proxy_slot.is_some_and(|slot| !revents[slot].is_empty()) {
                lp.on_proxy(p);
            }
            if stopped_now {
                // Its only route led to the proxy: no network from now on.
                proxy_stopped = true;
                lp.emit(&Event::ProxyStopped {});
            }
        }
        for (i, w) in limit_watches.iter_mut().enumerate() {
            if !revents[first_limit_slot + i].is_empty() {
                lp.on_limit(w);
            }
        }
        for s in [Stream::Stdout, Stream::Stderr] {
            let Some(slot) = pipe_slots[s.index()] else {
                continue;
            };
            if revents[slot].is_empty() {
                continue;
            }
            let open = match &pipes[s.index()] {
                Some(fd) => lp.on_output(s, fd, &mut held),
                None => false,
            };
            if !open {
                pipes[s.index()] = None;
                if let Err(e) = lp.recorder.end_stream(lp.journal, s) {
                    lp.recording_failed(e);
                }
            }
        }
    }

    for s in [Stream::Stdout, Stream::Stderr] {
        if let Err(e) = lp.recorder.end_stream(lp.journal, s) {
            lp.recording_failed(e);
        }
    }
    // An OOM kill of the agent itself races with its exit: look once more.
    for w in &mut limit_watches {
        lp.on_limit(w);
    }
    if let Some((stream, chunk)) = held {
        // The writer thread drains the queue at finish; block for this one.
        let mut chunk = chunk;
        while let Err(c) = lp.console.try_send(stream, chunk) {
            chunk = c;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Outcome {
        agent_status: lp.agent_status,
        alert: lp.alert,
        violation: lp.violation,
        ended: Instant::now(),
    }
}
