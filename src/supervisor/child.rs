//! What the forked child does before it becomes the agent, in order.
//!
//! Runs in the child right after `clone3` (already inside the requested
//! namespaces), in a copy of the single-threaded supervisor. It never
//! returns: it either `execve`s the agent or reports the failed step over
//! the error pipe and `_exit`s. Each step is one block of this linear
//! function, in the order of DESIGN.md's pipeline step 6; seccomp is last
//! before exec so that nothing after it needs a denied system call.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};

use super::channel::{ChildError, Stage};
use super::init;
use crate::isolation::namespaces::Namespaces;
use crate::isolation::user::RunAs;
use crate::sys::{self, Forked};

/// Everything the child needs, prepared in the supervisor before the fork
/// (so the child does no lookups and little allocation).
pub struct ChildPlan {
    pub argv: Vec<CString>,
    pub namespaces: Namespaces,
    pub run_as: Option<RunAs>,
    /// Drop every capability and set `no_new_privs` (any isolation level,
    /// or `--user`).
    pub lock_down: bool,
    /// The private `/tmp`, `/dev/shm` and `/run` (mount namespace; see
    /// `super::private_dirs`).
    pub private_dirs: super::private_dirs::PrivateDirs,
    /// The landlock ruleset, built in the supervisor; applied last but seccomp.
    pub landlock: Option<crate::isolation::landlock::Prepared>,
    /// The agent's environment, exactly (see [`super::environment`]).
    pub env: Vec<CString>,
    /// How the agent reaches the network (`None`: the network is left alone).
    pub network_mode: Option<crate::policy::NetMode>,
    /// The seccomp filters, compiled in the supervisor; installed last.
    pub seccomp: Option<crate::isolation::seccomp::CompiledProfile>,
}

/// The fds the child works with (its copies of the supervisor's fds).
pub struct ChildFds {
    pub parent_pid: i32,
    pub go: OwnedFd,
    pub errors: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Write end of the agent-status pipe (PID namespace: written by init).
    pub status: Option<OwnedFd>,
    /// The supervisor's ends of the pipes: closed first thing, so that the
    /// child never keeps its own "go" pipe or the output pipes alive.
    pub parent_ends: Vec<OwnedFd>,
}

/// Report `stage` failed with `errno` to the supervisor and exit.
fn fail(errors: &OwnedFd, stage: Stage, errno: Errno) -> ! {
    fail_at(errors, stage, 0, errno)
}

/// [`fail`] naming which item of the stage failed (see `ChildError::detail`).
fn fail_at(errors: &OwnedFd, stage: Stage, detail: u16, errno: Errno) -> ! {
    let report = ChildError {
        stage,
        errno: errno as i32,
        detail,
    };
    // If the supervisor is gone there is nobody to tell: ignore the result.
    let _ = nix::unistd::write(errors, &report.encode());
    sys::exit_now(i32::from(report.exit_code()))
}

pub(super) fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EINVAL, Errno::from_raw)
}

pub fn run(plan: &mut ChildPlan, fds: ChildFds) -> ! {
    let ChildFds {
        parent_pid,
        go,
        errors,
        stdout,
        stderr,
        status,
        parent_ends,
    } = fds;
    let ns = plan.namespaces;

    // 1. Drop the supervisor's pipe ends held by this copy of the process.
    drop(parent_ends);

    // 2. Die with the supervisor; if it is already gone, stop here.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&errors, Stage::ParentDeathSignal, e);
    }
    if !ns.pid && nix::unistd::getppid().as_raw() != parent_pid {
        sys::exit_now(125);
    }

    // 3. Wait for "go": the supervisor finishes its side of the setup first
    //    (uid/gid maps of the user namespace, the network and its proxy),
    //    and sends the environment additions that setup produced.
    let extra_env = match read_go(&go) {
        Ok(Some(env)) => env,
        Ok(None) => sys::exit_now(125),
        Err(e) => fail(&errors, Stage::WaitForGo, e),
    };
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

    // 6. PID namespace: this process is pid 1. It stays as the agent's
    //    init; the agent is its child (pid 2) and goes on with the setup.
    if ns.pid {
        if let Err(e) = init::signal_mask().thread_block() {
            fail(&errors, Stage::SignalMask, e);
        }
        match sys::fork_into_cgroup(None, 0) {
            Ok(Forked::Parent { pid, pidfd }) => {
                drop(pidfd);
                // The agent reports its own setup errors; EOF must come
                // when it execs, so init lets go of the error pipe.
                drop(errors);
                match status {
                    Some(status) => init::run(pid, status),
                    None => sys::exit_now(125),
                }
            }
            Ok(Forked::Child) => {
                drop(status);
                if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
                    fail(&errors, Stage::ParentDeathSignal, e);
                }
            }
            Err(e) => fail(&errors, Stage::Init, io_errno(&e)),
        }
    }

    // 7. Mount namespace: nothing propagates back to the host; private,
    //    size-limited /tmp and /dev/shm and an empty /run, with what the
    //    run needs bound back (see private_dirs); the PID namespace's own
    //    /proc.
    if ns.mount {
        if let Err((detail, e)) = private_mounts(plan) {
            fail_at(&errors, Stage::Mounts, detail, e);
        }
        // A landlock rule does not reach a filesystem mounted over its
        // path afterwards: add the rules on the new mounts again.
        if let Some(ll) = plan.landlock.as_mut() {
            let mounts = [
                std::path::Path::new("/tmp"),
                std::path::Path::new("/dev/shm"),
                std::path::Path::new("/proc"),
            ];
            if ll.reapply_after_mounts(&mounts).is_err() {
                fail(&errors, Stage::Landlock, Errno::EINVAL);
            }
        }
    }

    // 8. Network namespace: only loopback, and it must be up.
    if ns.net {
        if let Err(e) = sys::loopback_up() {
            fail(&errors, Stage::Network, io_errno(&e));
        }
    }

    // 9. UTS namespace: a hostname that reveals nothing of the host.
    if ns.uts {
        if let Err(e) = nix::unistd::sethostname("vallignus") {
            fail(&errors, Stage::Hostname, e);
        }
    }

    // 10. Signals as a fresh process expects them: nothing blocked (the
    //     supervisor blocks the ones it reads through a signalfd), every
    //     disposition default (SIG_IGN would survive exec).
    sys::reset_signal_dispositions();
    if let Err(e) =
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
    {
        fail(&errors, Stage::SignalMask, e);
    }

    // 11. The user: supplementary groups, gid, then uid. The capability
    //     bounding set is emptied first (that needs CAP_SETPCAP, which goes
    //     with the uid), so nothing can be regained later.
    if plan.lock_down {
        if let Err(e) = drop_bounding_set() {
            fail(&errors, Stage::Capabilities, e);
        }
    }
    if let Some(user) = plan.run_as {
        if let Err(e) = nix::unistd::setgroups(&[]) {
            fail(&errors, Stage::User, e);
        }
        let gid = Gid::from_raw(user.gid);
        if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
            fail(&errors, Stage::User, e);
        }
        let uid = Uid::from_raw(user.uid);
        if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
            fail(&errors, Stage::User, e);
        }
    }

    // 12. No capabilities left in any set, and no way to gain privileges
    //     through exec (setuid binaries, file capabilities).
    if plan.lock_down {
        if let Err(e) = clear_capabilities() {
            fail(&errors, Stage::Capabilities, e);
        }
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            fail(&errors, Stage::NoNewPrivs, e);
        }
    }

    // 13. Landlock: the file rules (needs no_new_privs, set above).
    if let Some(ll) = plan.landlock.take() {
        if crate::isolation::landlock::restrict_self(ll).is_err() {
            fail(&errors, Stage::Landlock, Errno::EPERM);
        }
    }

    // 14. Nothing else the supervisor had open survives exec (the error
    //     pipe is close-on-exec already: exec success shows up as EOF).
    if let Err(e) = sys::cloexec_from(3) {
        fail(&errors, Stage::CloseFds, io_errno(&e));
    }

    // 15. Seccomp, last: nothing after it but execve (and, on failure, the
    //     write of the error report and _exit, which every profile allows).
    if let Some(filters) = &plan.seccomp {
        if crate::isolation::seccomp::install(filters).is_err() {
            fail(&errors, Stage::Seccomp, Errno::EPERM);
        }
    }

    // 16. Become the agent.
    let Some(program) = plan.argv.first() else {
        fail(&errors, Stage::Exec, Errno::ENOENT);
    };
    let env = with_extra(&plan.env, &extra_env);
    let result = nix::unistd::execvpe(program, &plan.argv, &env);
    let err = match result {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(&errors, Stage::Exec, err)
}

/// Read the "go" message: `None` when the supervisor went away first.
fn read_go(go: &OwnedFd) -> Result<Option<Vec<CString>>, Errno> {
    let mut len = [0u8; 4];
    if !read_exact(go, &mut len)? {
        return Ok(None);
    }
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    if !read_exact(go, &mut payload)? {
        return Ok(None);
    }
    Ok(Some(
        payload
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .filter_map(|e| CString::new(e).ok())
            .collect(),
    ))
}

/// Fill `buf`; false on EOF first.
fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> Result<bool, Errno> {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `env` with `extra` (`KEY=VALUE`) added, replacing variables of the
/// same name.
fn with_extra(env: &[CString], extra: &[CString]) -> Vec<CString> {
    let key = |entry: &CString| {
        let b = entry.as_bytes();
        b[..b.iter().position(|&c| c == b'=').unwrap_or(b.len())].to_vec()
    };
    let replaced: Vec<Vec<u8>> = extra.iter().map(key).collect();
    let mut out: Vec<CString> = env
        .iter()
        .filter(|e| !replaced.contains(&key(e)))
        .cloned()
        .collect();
    out.extend(extra.iter().cloned());
    out
}

/// The mounts of the agent's mount namespace. An error carries which kept
/// path failed (1-based; 0: none in particular), see `private_dirs`.
fn private_mounts(plan: &ChildPlan) -> Result<(), (u16, Errno)> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(|e| (0, e))?;
    // Before /proc is replaced: kept paths are bound from /proc/self/fd.
    plan.private_dirs.apply()?;
    if plan.namespaces.pid {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("proc"), "/proc", Some("proc"), flags, none).map_err(|e| (0, e))?;
    }
    Ok(())
}

fn caps_errno(_e: caps::errors::CapsError) -> Errno {
    Errno::EPERM
}

fn drop_bounding_set() -> Result<(), Errno> {
    // Without CAP_SETPCAP (not root) the bounding set cannot be changed;
    // an unprivileged process has nothing in its permitted set to regain
    // through it once no_new_privs is set, so that is not an error.
    if !caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
    {
        return Ok(());
    }
    caps::clear(None, caps::CapSet::Bounding).map_err(caps_errno)
}

fn clear_capabilities() -> Result<(), Errno> {
    // Ambient first (it may not hold what is not permitted+inheritable).
    caps::clear(None, caps::CapSet::Ambient).map_err(caps_errno)?;
    for set in [
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(caps_errno)?;
    }
    Ok(())
}
