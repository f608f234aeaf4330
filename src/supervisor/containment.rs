//! What holds every process of a run, so teardown reaches all of them.
//!
//! - `Cgroup`: the run's own cgroup v2; the kernel keeps every descendant in
//!   it (no escape by double fork or setsid), `cgroup.kill` ends them all.
//! - `ProcessGroup` (`--best-effort` without a usable cgroup): the agent's
//!   process group. A process that calls `setsid` escapes it; the session
//!   records `enforcement.cgroup: not enforced` so nobody is misled.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::cgroup::Cgroup;

pub enum Containment {
    Cgroup(Cgroup),
    ProcessGroup { pgid: i32 },
}

impl Containment {
    /// Send `signal` to every process; returns how many were signalled (or
    /// 1 for a process group that exists).
    pub fn signal_all(&self, signal: Signal) -> io::Result<usize> {
        match self {
            Containment::Cgroup(cg) => cg.signal_all(signal).map_err(io::Error::other),
            Containment::ProcessGroup { pgid } => match killpg(Pid::from_raw(*pgid), signal) {
                Ok(()) => Ok(1),
                Err(Errno::ESRCH) => Ok(0),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// SIGKILL everything, at once.
    pub fn kill_all(&self) -> io::Result<()> {
        match self {
            Containment::Cgroup(cg) => cg.kill().map_err(io::Error::other),
            Containment::ProcessGroup { .. } => self.signal_all(Signal::SIGKILL).map(drop),
        }
    }

    /// Whether no process is left.
    pub fn is_empty(&self) -> io::Result<bool> {
        match self {
            Containment::Cgroup(cg) => cg.populated().map(|p| !p).map_err(io::Error::other),
            Containment::ProcessGroup { pgid } => match killpg(Pid::from_raw(*pgid), None) {
                Ok(()) => Ok(false),
                Err(Errno::ESRCH) => Ok(true),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The cgroup directory fd for `CLONE_INTO_CGROUP`.
    pub fn cgroup_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Containment::Cgroup(cg) => Some(cg.dir_fd()),
            Containment::ProcessGroup { .. } => None,
        }
    }

    /// A file whose POLLPRI says "something changed" (cgroup.events); the
    /// process group has none and is polled on a short timer instead.
    pub fn events_file(&self) -> Option<std::fs::File> {
        match self {
            Containment::Cgroup(cg) => std::fs::File::open(cg.path().join("cgroup.events")).ok(),
            Containment::ProcessGroup { .. } => None,
        }
    }

    /// After the run: wait (bounded) until empty, killing what is left.
    pub fn ensure_empty(&self, timeout: Duration) -> io::Result<bool> {
        if self.is_empty()? {
            return Ok(true);
        }
        self.kill_all()?;
        match self {
            Containment::Cgroup(cg) => cg.wait_empty(timeout).map_err(io::Error::other),
            Containment::ProcessGroup { .. } => {
                let deadline = std::time::Instant::now() + timeout;
                while std::time::Instant::now() < deadline {
                    if self.is_empty()? {
                        return Ok(true);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                self.is_empty()
            }
        }
    }
}
