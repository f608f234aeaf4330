//! Starting the agent: pipes, fork straight into the run's cgroup (clone3
//! with `CLONE_INTO_CGROUP` and a pidfd), then the go/exec handshake.
//!
//! The child is created blocked on a pipe; the parent does its side of the
//! setup and then says "go". The child reports a failing step over a
//! close-on-exec error pipe (see [`super::channel`]); EOF on that pipe means
//! `execve` succeeded.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

use super::channel::{ChildError, MESSAGE_LEN};
use super::child::{self, ChildFds, ChildPlan};
use crate::isolation::user::RunAs;
use crate::sys::{self, Forked};

/// Bigger pipes mean fewer wake-ups per megabyte of output.
const PIPE_SIZE: i32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("invalid command: {0}")]
    BadCommand(String),
    #[error("cannot create a pipe: {0}")]
    Pipe(#[source] io::Error),
    #[error("cannot fork the agent: {0}")]
    Fork(#[source] io::Error),
    #[error("cannot start the agent: {0}")]
    Handshake(#[source] io::Error),
    #[error("{0}")]
    Child(ChildError),
}

impl SpawnError {
    /// Exit code of `vallignus run` for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            SpawnError::Child(e) => e.exit_code(),
            _ => 125,
        }
    }
}

/// A forked child waiting for "go".
pub struct Pending {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// PID namespace: init's report of the agent's exact wait status.
    pub status: Option<File>,
    go: File,
    errors: File,
}

/// A child that has exec'd the agent.
pub struct Running {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub status: Option<File>,
}

pub fn to_cstrings(argv: &[String]) -> Result<Vec<CString>, SpawnError> {
    if argv.is_empty() {
        return Err(SpawnError::BadCommand("no command given".into()));
    }
    argv.iter()
        .map(|a| {
            CString::new(a.as_bytes())
                .map_err(|_| SpawnError::BadCommand(format!("argument {a:?} contains a NUL byte")))
        })
        .collect()
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Pipe(e.into()))
}

/// Fork the child into `cgroup` (or plain, for best-effort runs), inside
/// the namespaces of `plan`. The process must be single-threaded (checked
/// by [`sys::fork_into_cgroup`]).
pub fn fork(plan: &mut ChildPlan, cgroup: Option<BorrowedFd<'_>>) -> Result<Pending, SpawnError> {
    if plan.argv.is_empty() {
        return Err(SpawnError::BadCommand("no command given".into()));
    }
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let (go_r, go_w) = pipe_pair()?;
    let (msg_r, msg_w) = pipe_pair()?;
    let status = if plan.namespaces.pid {
        Some(pipe_pair()?)
    } else {
        None
    };
    for fd in [&out_r, &err_r] {
        // Larger pipes are an optimisation only; keep the default on failure.
        let _ = fcntl(fd.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    let parent_pid = nix::unistd::getpid().as_raw();
    let ns_flags = plan.namespaces.clone_flags();

    match sys::fork_into_cgroup(cgroup, ns_flags).map_err(SpawnError::Fork)? {
        Forked::Child => {
            let (status_r, status_w) = match status {
                Some((r, w)) => (Some(r), Some(w)),
                None => (None, None),
            };
            let mut parent_ends = vec![out_r, err_r, go_w, msg_r];
            parent_ends.extend(status_r);
            child::run(
                plan,
                ChildFds {
                    parent_pid,
                    go: go_r,
                    errors: msg_w,
                    stdout: out_w,
                    stderr: err_w,
                    status: status_w,
                    parent_ends,
                },
            )
        }
        Forked::Parent { pid, pidfd } => {
            // The child's ends are closed here when they drop, so EOF on
            // stdout/stderr means every process that inherited them is gone.
            drop((out_w, err_w, go_r, msg_w));
            let status = status.map(|(r, w)| {
                drop(w);
                File::from(r)
            });
            for fd in [&out_r, &err_r] {
                let flags =
                    fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| SpawnError::Pipe(e.into()))?;
                let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
                fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags))
                    .map_err(|e| SpawnError::Pipe(e.into()))?;
            }
            Ok(Pending {
                pid,
                pidfd,
                stdout: out_r,
                stderr: err_r,
                status,
                go: File::from(go_w),
                errors: File::from(msg_r),
            })
        }
    }
}

/// The one uid and one gid of the agent's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// uid and gid inside the namespace.
    pub inside: (u32, u32),
    /// The ids they are outside.
    pub outside: (u32, u32),
    /// Whether `setgroups(2)` stays allowed inside: only when the map was
    /// written with privilege (root), so that the child can clear its
    /// supplementary groups before it becomes `--user`.
    pub setgroups: bool,
}

impl IdMap {
    /// The map of a run by the current user: without root, root inside is
    /// this user outside (`setgroups` denied, as the kernel requires of an
    /// unprivileged writer); as root, the `--user` ids mapped to themselves
    /// (so files and logs show the real owner), or root to root.
    pub fn for_run(run_as: Option<RunAs>) -> IdMap {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        match run_as {
            Some(u) if uid == 0 => IdMap {
                inside: (u.uid, u.gid),
                outside: (u.uid, u.gid),
                setgroups: true,
            },
            _ => IdMap {
                inside: (0, 0),
                outside: (uid, gid),
                setgroups: uid == 0,
            },
        }
    }

    /// The three files, in the order the kernel needs them written.
    pub fn files(&self) -> [(&'static str, String); 3] {
        [
            (
                "setgroups",
                if self.setgroups { "allow" } else { "deny" }.to_string(),
            ),
            (
                "uid_map",
                format!("{} {} 1\n", self.inside.0, self.outside.0),
            ),
            (
                "gid_map",
                format!("{} {} 1\n", self.inside.1, self.outside.1),
            ),
        ]
    }
}

/// Write the user namespace maps of `pid` (see [`IdMap`]).
pub fn write_id_maps(pid: i32, map: IdMap) -> Result<(), SpawnError> {
    for (file, content) in map.files() {
        std::fs::write(format!("/proc/{pid}/{file}"), content).map_err(|e| {
            SpawnError::Handshake(io::Error::new(
                e.kind(),
                format!("cannot write /proc/{pid}/{file} (user namespace map): {e}"),
            ))
        })?;
    }
    Ok(())
}

impl Pending {
    /// Let the child continue, and wait until it has exec'd the agent or
    /// reported why it could not. On error the caller still owns the child
    /// (to reap it and clean up).
    ///
    /// `env` is added to the agent's environment (replacing variables of
    /// the same name): what the parent only learns during its side of the
    /// setup, such as the proxy's address. The "go" message is a 4-byte
    /// little-endian length and that many bytes of `KEY=VALUE\0` entries.
    pub fn go(&self, env: &[(String, String)]) -> Result<(), SpawnError> {
        let mut payload = Vec::new();
        for (k, v) in env {
            payload.extend_from_slice(k.as_bytes());
            payload.push(b'=');
            payload.extend_from_slice(v.as_bytes());
            payload.push(0);
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| SpawnError::BadCommand("environment too large".into()))?;
        let mut msg = len.to_le_bytes().to_vec();
        msg.extend_from_slice(&payload);
        (&self.go).write_all(&msg).map_err(SpawnError::Handshake)?;
        let mut buf = [0u8; MESSAGE_LEN];
        let mut got = 0;
        while got < MESSAGE_LEN {
            match (&self.errors).read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SpawnError::Handshake(e)),
            }
        }
        match got {
            0 => Ok(()),
            MESSAGE_LEN => Err(ChildError::decode(&buf)
                .map(SpawnError::Child)
                .unwrap_or_else(|| {
                    SpawnError::Handshake(io::Error::other("malformed message from the child"))
                })),
            _ => Err(SpawnError::Handshake(io::Error::other(
                "truncated message from the child",
            ))),
        }
    }

    pub fn into_running(self) -> Running {
        Running {
            pid: self.pid,
            pidfd: self.pidfd,
            stdout: self.stdout,
            stderr: self.stderr,
            status: self.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_files() {
        let nobody = IdMap {
            inside: (65534, 65534),
            outside: (65534, 65534),
            setgroups: true,
        };
        let files = nobody.files();
        assert_eq!(files[0], ("setgroups", "allow".to_string()));
        assert_eq!(files[1], ("uid_map", "65534 65534 1\n".to_string()));
        assert_eq!(files[2], ("gid_map", "65534 65534 1\n".to_string()));
        let user = IdMap {
            inside: (0, 0),
            outside: (1000, 100),
            setgroups: false,
        };
        let files = user.files();
        assert_eq!(files[0].1, "deny");
        assert_eq!(files[1].1, "0 1000 1\n");
        assert_eq!(files[2].1, "0 100 1\n");
    }
}
