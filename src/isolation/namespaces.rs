//! Which namespaces the agent gets, and the isolation levels that name
//! common sets of them.
//!
//! Levels (`--isolation`, or `security_context.level` in a policy file):
//! - `none`: no namespaces (the agent sees the host like any process; the
//!   cgroup, caps and recording still apply).
//! - `standard`: PID, mount, IPC and UTS namespaces: the agent sees only its
//!   own processes (a `/proc` of its PID namespace), gets a private `/tmp`
//!   and `/dev/shm`, its own SysV IPC and hostname.
//! - `strict`: `standard` plus a network namespace with only loopback (no
//!   network until the policy proxy provides one).
//!
//! Both levels include a user namespace: the agent's capabilities, whatever
//! it gains, are only ever over its own namespaces. Its map holds one uid
//! and one gid: the invoking user (run without root), the `--user` ids
//! mapped to themselves, or root to root (root without `--user`).
//!
//! `--unshare LIST` names namespaces explicitly (`user,pid,mount,net,ipc,uts`)
//! and adds to the level.

use std::fmt;

/// `CLONE_NEW*` flags, from `<linux/sched.h>`.
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub user: bool,
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// Ordered from the least to the most isolated (a token raises a run's
/// level with `max`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    #[default]
    None,
    Standard,
    Strict,
}

impl Level {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Level::None),
            "standard" => Ok(Level::Standard),
            "strict" => Ok(Level::Strict),
            _ => Err(format!(
                "invalid isolation level {s:?}: expected none, standard or strict"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Standard => "standard",
            Level::Strict => "strict",
        }
    }

    /// The namespaces of this level.
    pub fn namespaces(self) -> Namespaces {
        match self {
            Level::None => Namespaces::default(),
            Level::Standard => Namespaces {
                user: true,
                pid: true,
                mount: true,
                ipc: true,
                uts: true,
                net: false,
            },
            Level::Strict => Namespaces {
                user: true,
                pid: true,
                mount: true,
                ipc: true,
                uts: true,
                net: true,
            },
        }
    }
}

/// `user.max_user_namespaces`: 0 stops everyone, root included, from
/// making a user namespace. `None` when it cannot be read.
pub fn max_user_namespaces() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

impl Namespaces {
    /// Parse `user,pid,mount,net,ipc,uts` (any subset; `all` for every one).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut ns = Namespaces::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "user" => ns.user = true,
                "pid" => ns.pid = true,
                "mount" | "mnt" => ns.mount = true,
                "net" | "network" => ns.net = true,
                "ipc" => ns.ipc = true,
                "uts" => ns.uts = true,
                "all" => {
                    ns = Namespaces {
                        user: true,
                        pid: true,
                        mount: true,
                        net: true,
                        ipc: true,
                        uts: true,
                    }
                }
                other => {
                    return Err(format!(
                    "unknown namespace {other:?}: expected user, pid, mount, net, ipc, uts or all"
                ))
                }
            }
        }
        Ok(ns)
    }

    pub fn union(self, o: Namespaces) -> Namespaces {
        Namespaces {
            user: self.user || o.user,
            pid: self.pid || o.pid,
            mount: self.mount || o.mount,
            net: self.net || o.net,
            ipc: self.ipc || o.ipc,
            uts: self.uts || o.uts,
        }
    }

    pub fn any(self) -> bool {
        self != Namespaces::default()
    }

    /// The `clone3` flags. A PID namespace without a mount namespace would
    /// leave the host's `/proc` (with host pids) in view, so `pid` implies
    /// `mount` (see [`Namespaces::normalized`]).
    pub fn clone_flags(self) -> u64 {
        let mut f = 0;
        for (on, flag) in [
            (self.user, CLONE_NEWUSER),
            (self.pid, CLONE_NEWPID),
            (self.mount, CLONE_NEWNS),
            (self.net, CLONE_NEWNET),
            (self.ipc, CLONE_NEWIPC),
            (self.uts, CLONE_NEWUTS),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }

    /// Add the namespaces the requested ones need to work.
    pub fn normalized(mut self) -> Self {
        if self.pid {
            self.mount = true;
        }
        self
    }
}

impl fmt::Display for Namespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.user, "user"),
            (self.pid, "pid"),
            (self.mount, "mount"),
            (self.net, "net"),
            (self.ipc, "ipc"),
            (self.uts, "uts"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_flags() {
        let ns = Namespaces::parse("pid, net").unwrap();
        assert!(ns.pid && ns.net && !ns.mount);
        assert_eq!(ns.normalized().to_string(), "pid,mount,net");
        assert_eq!(ns.clone_flags(), CLONE_NEWPID | CLONE_NEWNET);
        assert_eq!(
            Namespaces::parse("all").unwrap().to_string(),
            "user,pid,mount,net,ipc,uts"
        );
        assert!(Namespaces::parse("pid,cgroup").is_err());
        assert!(!Namespaces::parse("").unwrap().any());
    }

    #[test]
    fn levels() {
        assert!(!Level::None.namespaces().any());
        let std = Level::Standard.namespaces();
        assert!(std.user && std.pid && std.mount && std.ipc && std.uts && !std.net);
        let strict = Level::Strict.namespaces();
        assert!(strict.user && strict.net);
        assert_eq!(strict.to_string(), "user,pid,mount,net,ipc,uts");
        assert_eq!(Level::parse("strict"), Ok(Level::Strict));
        assert!(Level::parse("max").is_err());
    }
}
