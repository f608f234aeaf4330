//! The network of a run behind the policy proxy: the agent's own network
//! namespace with nothing in it but loopback, nf_tables rules in it, and
//! the proxy's listening socket made *inside* it, at [`PROXY_ADDR`]
//! (127.0.0.1:61213 of the agent's loopback, not the host's).
//!
//! # How the proxy is reached without a link
//!
//! A socket belongs to the network namespace it was created in, whichever
//! process holds it afterwards. [`setup`] joins the agent's namespace on a
//! short-lived helper thread (`setns(2)` changes the namespace of that
//! thread only), brings `lo` up, applies the rules and creates the
//! listening socket there; the proxy then accepts on it from the
//! supervisor's own threads, which dial upstreams from the host's
//! namespace. The proxy's code is the only thing that joins the two sides:
//!
//! - No interface of the agent's namespace leads anywhere (there is only
//!   `lo`), so there is no route out, whatever the agent does to its own
//!   rules or routes: a process that is root in its user namespace can add
//!   interfaces only to namespaces that user namespace owns, never to the
//!   host's. A connection to any other address fails at once (no route;
//!   the rules reject it too). (Unix sockets are files, not network: the
//!   host's are kept from the agent by its private `/run`, see
//!   `supervisor::private_dirs`.)
//! - No host-side object exists: no veth, no address to choose or to
//!   collide with the host's, no host nft table. Nothing must be removed
//!   at teardown or reaped after a crash: the namespace (and the rules in
//!   it) go away with its last process and the supervisor's socket, which
//!   the kernel closes even when the supervisor is SIGKILLed.
//! - Every run has its own namespace, so concurrent runs share the port.
//!
//! An earlier design (DESIGN.md's "veth pair") connected the namespace to
//! a per-run /30 on the host. It needed host rules to keep the agent away
//! from every other host service, a slot allocator, a reaper for the links
//! and tables of dead supervisors, and at every run's end the kernel spent
//! ~30 ms unregistering the pair (RCU grace periods): a proxied
//! `run -- true` took 38 ms, most of it teardown. It also made the agent's
//! first packets wait for the link's carrier.
//!
//! # Rules
//!
//! nf_tables rules are generated as text and piped to `nft -f -` (the
//! `nft` submodule) from the helper thread, so `nft` runs in the agent's
//! namespace. The table `inet vallignus` ([`agent_ruleset`]): output
//! accepts loopback (the proxy, and the agent's own local services) and
//! established/related traffic; every other packet, IPv4 or IPv6, TCP, UDP
//! (DNS included) or anything else, is rejected (TCP reset, ICMP port
//! unreachable). Input accepts loopback and established/related only. With
//! only `lo` nothing could leave anyway; the rules keep that true should
//! the agent add a (dummy) interface and routes, and say so in one place
//! an operator can read ([`agent_ruleset`] is what is applied).
//!
//! # Invariants
//!
//! - Setup never configures the supervisor's own namespace as the agent's:
//!   a target whose network namespace is the caller's is refused.
//! - The rules are in place and the proxy's socket is listening before
//!   [`setup`] returns, which is before the agent is started; a missing
//!   `nft` fails the setup before anything is changed (fail closed).
//! - The listening socket has a deep accept queue (4096, see [`listen`]).

mod nft;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// Port of the proxy on the agent's loopback. Every run has its own
/// namespace, so every run can use the same one.
pub const PROXY_PORT: u16 = 61_213;
/// Where the proxy listens, inside the agent's namespace.
pub const PROXY_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PROXY_PORT);
/// The nft table in the agent's namespace (family `inet`).
pub const AGENT_TABLE: &str = "vallignus";
/// Backlog of the proxy's listening socket: std's 128 overflows when an
/// agent opens hundreds of connections at once (a dropped SYN is retried
/// only after a second).
const BACKLOG: i32 = 4096;

/// Everything that can go wrong while setting up a run's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open the network namespace of {target}: {source}")]
    OpenNamespace { target: String, source: io::Error },
    #[error("cannot enter the network namespace of {target}: {source}")]
    EnterNamespace { target: String, source: nix::Error },
    #[error("{target} is in the supervisor's own network namespace; refusing to configure it as the agent's")]
    SameNamespace { target: String },
    #[error("helper thread in the network namespace of {target} panicked")]
    HelperPanicked { target: String },
    #[error("cannot bring up loopback in the network namespace of {target}: {source}")]
    Loopback { target: String, source: io::Error },
    #[error("the proxy cannot listen on {addr} in the network namespace of {target}: {source}")]
    Listen {
        addr: SocketAddrV4,
        target: String,
        source: io::Error,
    },
    #[error("`{tool}` not found (searched {searched}); install the `{package}` package")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        searched: String,
    },
    #[error("cannot start a thread to enter {target}: {source}")]
    Thread { target: String, source: io::Error },
    #[error("cannot run `{command}` ({what}): {source}")]
    Spawn {
        command: String,
        what: String,
        source: io::Error,
    },
    #[error("nft failed ({what}, {status}): {stderr}")]
    Nft {
        what: String,
        status: String,
        stderr: String,
    },
}

/// The tools the network path runs (for `doctor` and `run`'s checks): `nft`.
pub fn check_tools() -> Result<(), NetError> {
    nft::locate().map(|_| ())
}

/// The ruleset of the agent's namespace (table `inet vallignus`). `add` +
/// `flush` first make it replace the rules of a table of the same name
/// instead of adding to them; the kernel applies it in one transaction.
pub fn agent_ruleset() -> String {
    let table = AGENT_TABLE;
    format!(
        "add table inet {table}
flush table inet {table}
table inet {table} {{
	chain output {{
		type filter hook output priority filter; policy drop;
		oifname \"lo\" accept
		ct state established,related accept
		meta l4proto tcp reject with tcp reset
		reject with icmpx port-unreachable
	}}
	chain input {{
		type filter hook input priority filter; policy drop;
		iifname \"lo\" accept
		ct state established,related accept
		meta l4proto tcp reject with tcp reset
		reject with icmpx port-unreachable
	}}
}}
"
    )
}

/// The agent process whose network namespace is configured.
#[derive(Debug, Clone, Copy)]
pub enum NsTarget<'a> {
    /// A pidfd (preferred: immune to pid reuse), and the pid it refers to
    /// (for messages).
    Pidfd { pidfd: BorrowedFd<'a>, pid: i32 },
    /// A pid; safe for an unreaped child of the caller.
    Pid(i32),
}

impl std::fmt::Display for NsTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NsTarget::Pidfd { pid, .. } | NsTarget::Pid(pid) => write!(f, "the agent (pid {pid})"),
        }
    }
}

/// Set up the network namespace of the agent `target` (see the module
/// documentation): loopback up, the rules applied, and the proxy's
/// listening socket at `addr` ([`PROXY_ADDR`] unless `--port` says
/// otherwise) in it, which is returned.
pub fn setup(target: NsTarget<'_>, addr: SocketAddrV4) -> Result<TcpListener, NetError> {
    // Fail closed before any change: the tool, the target, and (on the
    // helper thread, once it has joined the target's namespace) that it is
    // not our own.
    let nft_bin = nft::locate()?;
    let name = target.to_string();
    let open_err = |source| NetError::OpenNamespace {
        target: name.clone(),
        source,
    };
    let ours = namespace_id().map_err(open_err)?;
    let opened: OwnedFd;
    let ns = match target {
        // setns(2) takes a pidfd directly (Linux 5.8).
        NsTarget::Pidfd { pidfd, .. } => pidfd,
        NsTarget::Pid(pid) => {
            opened = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .map_err(open_err)?
                .into();
            opened.as_fd()
        }
    };
    in_netns(ns, &name, || {
        if namespace_id().map_err(open_err)? == ours {
            return Err(NetError::SameNamespace {
                target: name.clone(),
            });
        }
        build(&nft_bin, &name, addr)
    })
}

/// Device and inode of the calling thread's network namespace.
fn namespace_id() -> io::Result<(u64, u64)> {
    std::fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino()))
}

/// What [`setup`] does, in a throwaway namespace of a helper thread (for
/// `doctor`): loopback up, the rules applied, the proxy's socket listening.
/// The namespace goes away with the thread. Needs root.
pub fn probe() -> Result<(), NetError> {
    let nft_bin = nft::locate()?;
    let name = "a throwaway namespace";
    on_helper_thread(name, || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetError::EnterNamespace {
                target: name.into(),
                source,
            }
        })?;
        build(&nft_bin, name, PROXY_ADDR).map(drop)
    })
}

/// In the calling thread's namespace (the agent's): loopback up, the
/// rules, the proxy's listening socket. `target` names it in errors.
fn build(
    nft_bin: &std::path::Path,
    target: &str,
    addr: SocketAddrV4,
) -> Result<TcpListener, NetError> {
    crate::sys::loopback_up().map_err(|source| NetError::Loopback {
        target: target.to_owned(),
        source,
    })?;
    nft::apply(nft_bin, &agent_ruleset(), "agent namespace table")?;
    listen(addr).map_err(|source| NetError::Listen {
        addr,
        target: target.to_owned(),
        source,
    })
}

/// A listening TCP socket on `addr` in the calling thread's namespace,
/// with a backlog of [`BACKLOG`].
fn listen(addr: SocketAddrV4) -> io::Result<TcpListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(addr),
    )?;
    socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

/// Run `f` on a short-lived thread that has joined the network namespace
/// `ns` (an nsfs fd or a pidfd). Only that thread changes namespace; sockets
/// it opens and processes it spawns stay in `ns`.
fn in_netns<T: Send>(
    ns: BorrowedFd<'_>,
    target: &str,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    on_helper_thread(target, || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetError::EnterNamespace {
                target: target.to_owned(),
                source,
            }
        })?;
        f()
    })
}

/// Run `f` on a short-lived thread of its own (which may then change its
/// network namespace without affecting any other thread) and wait for it.
fn on_helper_thread<T: Send>(
    target: &str,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("vallignus-netns".into())
            .spawn_scoped(scope, f)
            .map_err(|source| NetError::Thread {
                target: target.to_owned(),
                source,
            })?;
        worker.join().map_err(|_| NetError::HelperPanicked {
            target: target.to_owned(),
        })?
    })
}
