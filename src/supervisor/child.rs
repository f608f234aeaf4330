//! What the forked child does before it becomes the agent, in order.
//!
//! Runs in the child right after `clone3`, in a copy of the single-threaded
//! supervisor. It never returns: it either `execve`s the agent or reports the
//! failed step over the error pipe and `_exit`s. Each step is one block of
//! this linear function; later isolation layers slot in before `exec`.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::channel::{ChildError, Stage};
use crate::sys;

/// The fds the child works with (its copies of the supervisor's fds).
pub struct ChildFds {
    pub parent_pid: i32,
    pub go: OwnedFd,
    pub errors: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The supervisor's ends of the pipes: closed first thing, so that the
    /// child never keeps its own "go" pipe or the output pipes alive.
    pub parent_ends: [OwnedFd; 4],
}

/// Report `stage` failed with `errno` to the supervisor and exit.
fn fail(errors: &OwnedFd, stage: Stage, errno: Errno) -> ! {
    let report = ChildError {
        stage,
        errno: errno as i32,
    };
    // If the supervisor is gone there is nobody to tell: ignore the result.
    let _ = nix::unistd::write(errors, &report.encode());
    sys::exit_now(i32::from(report.exit_code()))
}

pub fn run(argv: &[CString], fds: ChildFds) -> ! {
    let ChildFds {
        parent_pid,
        go,
        errors,
        stdout,
        stderr,
        parent_ends,
    } = fds;

    // 1. Drop the supervisor's pipe ends held by this copy of the process.
    drop(parent_ends);

    // 2. Die with the supervisor; if it is already gone, stop here.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&errors, Stage::ParentDeathSignal, e);
    }
    if nix::unistd::getppid().as_raw() != parent_pid {
        sys::exit_now(125);
    }

    // 3. Wait for "go": the supervisor finishes its side of the setup first.
    let mut byte = [0u8; 1];
    match nix::unistd::read(&go, &mut byte) {
        Ok(1) => {}
        Ok(_) => sys::exit_now(125),
        Err(e) => fail(&errors, Stage::WaitForGo, e),
    }
    drop(go);

    // 4. A new session: no controlling terminal (no TIOCSTI into the
    //    user's shell), and its own process group for best-effort teardown.
    if let Err(e) = nix::unistd::setsid() {
        fail(&errors, Stage::NewSession, e);
    }

    // 5. stdout and stderr to the supervisor's pipes; stdin is inherited.
    if let Err(e) = nix::unistd::dup2_stdout(&stdout) {
        fail(&errors, Stage::Stdio, e);
    }
    if let Err(e) = nix::unistd::dup2_stderr(&stderr) {
        fail(&errors, Stage::Stdio, e);
    }
    drop((stdout, stderr));

    // 6. Signals as a fresh process expects them: nothing blocked (the
    //    supervisor blocks the ones it reads through a signalfd), every
    //    disposition default (SIG_IGN would survive exec).
    sys::reset_signal_dispositions();
    if let Err(e) =
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
    {
        fail(&errors, Stage::SignalMask, e);
    }

    // 7. Nothing else the supervisor had open survives exec (the error pipe
    //    is close-on-exec already: exec success shows up as EOF).
    if let Err(e) = sys::cloexec_from(3) {
        let errno = e.raw_os_error().map_or(Errno::EINVAL, Errno::from_raw);
        fail(&errors, Stage::CloseFds, errno);
    }

    // 8. Become the agent.
    let Some(program) = argv.first() else {
        fail(&errors, Stage::Exec, Errno::ENOENT);
    };
    let err = match nix::unistd::execvp(program, argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(&errors, Stage::Exec, err)
}
