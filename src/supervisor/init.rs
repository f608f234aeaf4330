//! The agent's init: pid 1 of its PID namespace.
//!
//! The kernel does not deliver signals to a namespace's pid 1 unless it
//! handles them, so a plain agent (a shell) as pid 1 would ignore the
//! teardown's SIGTERM, and orphans of the namespace would stay zombies.
//! This init is a fork of the supervisor's child: it forks the agent (pid
//! 2), forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to every
//! process of the namespace, reaps every child, and when the agent exits
//! reports its exact wait status to the supervisor over a pipe and exits
//! with the matching code (which ends the namespace: the kernel kills
//! whatever is left).
//!
//! Signals are blocked and read from a signalfd (blocked signals are
//! queued even for a namespace's init), so no signal handler is needed.

use std::os::fd::OwnedFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// Signals the init forwards to the namespace.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The signals init reads (forwarded ones and SIGCHLD). Must be blocked
/// before the agent is forked, so that no SIGCHLD can be missed.
pub fn signal_mask() -> SigSet {
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.add(Signal::SIGCHLD);
    mask
}

/// Wire format of the agent's status on the status pipe: kind (0 exited,
/// 1 killed by a signal) and the code or signal number.
pub const STATUS_LEN: usize = 5;

pub fn encode_status(status: &WaitStatus) -> Option<[u8; STATUS_LEN]> {
    let (kind, value): (u8, i32) = match status {
        WaitStatus::Exited(_, code) => (0, *code),
        WaitStatus::Signaled(_, sig, _) => (1, *sig as i32),
        _ => return None,
    };
    let mut out = [0u8; STATUS_LEN];
    out[0] = kind;
    out[1..].copy_from_slice(&value.to_le_bytes());
    Some(out)
}

/// Decode into (exit code, signal) in the convention of `process_exited`.
pub fn decode_status(buf: &[u8]) -> Option<(i64, Option<i32>)> {
    let value = i32::from_le_bytes(buf.get(1..5)?.try_into().ok()?);
    match buf.first()? {
        0 => Some((i64::from(value), None)),
        1 => Some((128 + i64::from(value), Some(value))),
        _ => None,
    }
}

/// Run as init until the agent (`agent`) exits. Never returns.
pub fn run(agent: i32, status_pipe: OwnedFd) -> ! {
    let mask = signal_mask();
    let Ok(signals) = SignalFd::new(&mask) else {
        sys::exit_now(125);
    };
    loop {
        let info = match signals.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => sys::exit_now(125),
        };
        let signo = info.ssi_signo as i32;
        if signo != Signal::SIGCHLD as i32 {
            if let Ok(sig) = Signal::try_from(signo) {
                // -1 from a namespace's init: every process of the
                // namespace except init itself.
                let _ = nix::sys::signal::kill(Pid::from_raw(-1), sig);
            }
            continue;
        }
        // Reap everything that exited; stop when the agent is among them.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) if status.pid() == Some(Pid::from_raw(agent)) => {
                    if let Some(msg) = encode_status(&status) {
                        let _ = nix::unistd::write(&status_pipe, &msg);
                    }
                    let code = match status {
                        WaitStatus::Exited(_, code) => code,
                        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
                        _ => 125,
                    };
                    sys::exit_now(code);
                }
                Ok(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        let pid = Pid::from_raw(2);
        let e = encode_status(&WaitStatus::Exited(pid, 3)).unwrap();
        assert_eq!(decode_status(&e), Some((3, None)));
        let s = encode_status(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)).unwrap();
        assert_eq!(decode_status(&s), Some((137, Some(9))));
        assert_eq!(decode_status(&[7, 0, 0, 0, 0]), None);
        assert_eq!(decode_status(&[0]), None);
    }
}
