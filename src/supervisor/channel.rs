//! Typed messages from the forked child to the supervisor.
//!
//! The child reports a failed setup step over a close-on-exec pipe as one
//! fixed-size message (stage + errno). A successful `execve` closes the pipe,
//! so the parent reads EOF: zero bytes mean "the agent is running".

use std::fmt;

/// The step of the child's setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    ParentDeathSignal = 1,
    WaitForGo = 2,
    NewSession = 3,
    Stdio = 4,
    SignalMask = 5,
    CloseFds = 6,
    Exec = 7,
    Init = 8,
    Mounts = 9,
    Network = 10,
    Hostname = 11,
    User = 12,
    Capabilities = 13,
    NoNewPrivs = 14,
    Landlock = 15,
    Seccomp = 16,
}

impl Stage {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Stage::ParentDeathSignal,
            2 => Stage::WaitForGo,
            3 => Stage::NewSession,
            4 => Stage::Stdio,
            5 => Stage::SignalMask,
            6 => Stage::CloseFds,
            7 => Stage::Exec,
            8 => Stage::Init,
            9 => Stage::Mounts,
            10 => Stage::Network,
            11 => Stage::Hostname,
            12 => Stage::User,
            13 => Stage::Capabilities,
            14 => Stage::NoNewPrivs,
            15 => Stage::Landlock,
            16 => Stage::Seccomp,
            _ => return None,
        })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::ParentDeathSignal => "setting the parent-death signal",
            Stage::WaitForGo => "waiting for the supervisor",
            Stage::NewSession => "starting a new session (setsid)",
            Stage::Stdio => "connecting stdout/stderr",
            Stage::SignalMask => "resetting the signal mask",
            Stage::CloseFds => "closing inherited file descriptors",
            Stage::Exec => "executing the command",
            Stage::Init => "starting the PID namespace's init",
            Stage::Mounts => "mounting the private /tmp, /dev/shm, /run and /proc",
            Stage::Network => "bringing up loopback in the network namespace",
            Stage::Hostname => "setting the hostname",
            Stage::User => "switching to the target user",
            Stage::Capabilities => "dropping capabilities",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Landlock => "applying the landlock rules",
            Stage::Seccomp => "installing the seccomp filter",
        })
    }
}

/// A setup failure reported by the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildError {
    pub stage: Stage,
    pub errno: i32,
    /// Which item of the stage failed, 1-based (0: the stage as a whole);
    /// for [`Stage::Mounts`], the kept path (`PrivateDirs::keep`).
    pub detail: u16,
}

pub const MESSAGE_LEN: usize = 8;

impl ChildError {
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut out = [0u8; MESSAGE_LEN];
        let word = self.stage as u32 | u32::from(self.detail) << 16;
        out[..4].copy_from_slice(&word.to_le_bytes());
        out[4..].copy_from_slice(&self.errno.to_le_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Option<Self> {
        let word = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
        let errno = i32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
        Some(Self {
            stage: Stage::from_u32(word & 0xffff)?,
            errno,
            detail: u16::try_from(word >> 16).ok()?,
        })
    }

    /// Exit code for `vallignus run`: 127 when the command was not found,
    /// 126 when it is not executable, 125 for any other setup failure.
    pub fn exit_code(&self) -> u8 {
        match (self.stage, self.errno) {
            (Stage::Exec, libc::ENOENT) | (Stage::Exec, libc::ENOTDIR) => 127,
            (Stage::Exec, libc::EACCES)
            | (Stage::Exec, libc::ENOEXEC)
            | (Stage::Exec, libc::EISDIR)
            | (Stage::Exec, libc::EPERM) => 126,
            _ => 125,
        }
    }
}

impl fmt::Display for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = nix::errno::Errno::from_raw(self.errno);
        match (self.stage, self.errno) {
            (Stage::Exec, libc::ENOENT) => write!(f, "command not found ({errno})"),
            (Stage::Exec, libc::EACCES) => write!(f, "permission denied: not executable ({errno})"),
            _ => write!(f, "{} failed: {}", self.stage, errno.desc()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exit_codes() {
        let e = ChildError {
            stage: Stage::Exec,
            errno: libc::ENOENT,
            detail: 0,
        };
        assert_eq!(ChildError::decode(&e.encode()), Some(e));
        assert_eq!(e.exit_code(), 127);
        let e = ChildError {
            stage: Stage::Exec,
            errno: libc::EACCES,
            detail: 0,
        };
        assert_eq!(e.exit_code(), 126);
        let e = ChildError {
            stage: Stage::Stdio,
            errno: libc::EBADF,
            detail: 0,
        };
        assert_eq!(e.exit_code(), 125);
        assert!(e.to_string().contains("stdout/stderr"));
        assert_eq!(ChildError::decode(&[0; 8]), None);
        assert_eq!(ChildError::decode(&[7, 0, 0]), None);
    }
}
