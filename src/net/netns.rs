//! The network plumbing of one run: a veth pair from the host namespace into
//! the agent's network namespace, its addresses, and the nf_tables rules on
//! both sides, so that the agent's only reachable destination is the policy
//! proxy at [`NetPlan::proxy_addr`].
//!
//! # Address plan
//!
//! vallignus reserves [`RANGE`] (10.213.0.0/16) and cuts it into 16,384
//! slots of one /30 each: slot `s` is `10.213.0.0 + 4s`; `.1` is the host
//! end (where the proxy listens, port [`DEFAULT_PROXY_PORT`]), `.2` the agent
//! end, `.3` the broadcast address. The host-side veth of slot `s` is named
//! `vlg<s as 4 hex>h` and the agent side `vlg<s as 4 hex>a`. Both ends
//! have loopback's MTU (`rtnl::VETH_MTU`, 65535): the pair carries only local
//! traffic, and larger packets cut the per-byte cost of a tunnel.
//!
//! [`plan`] is pure: slot = (first 32 bits of SHA-256(run id) + index) mod
//! 16,384. [`setup_run`] probes index 0, 1, 2, … until a slot is free. A slot
//! is *claimed* by creating its host-side veth with `NLM_F_EXCL`: the kernel
//! refuses a second link with the same name, so two concurrent supervisors
//! can never both own a slot, with no lock file and nothing to clean up but
//! the link itself. Before the claim, slots whose /30 overlaps any IPv4
//! address already configured on the host (someone else's use of 10.213/16)
//! are skipped.
//!
//! # Rules
//!
//! nf_tables rules are generated as text and piped to `nft -f -` (see the
//! `nft` submodule). A generated ruleset is short, readable in the session's
//! terms, can be printed and audited as is ([`NetPlan::host_ruleset`],
//! [`NetPlan::agent_ruleset`]), and is applied atomically by the kernel; the
//! netlink alternative (building nftnl expressions by hand) is much larger
//! and harder to review. The price is one `nft` process per side; a missing
//! `nft` fails the setup before anything is changed. Listing and deleting
//! tables (reaping, teardown) need no ruleset, so they go straight over
//! netlink (the `nfnl` submodule) and cost no process.
//!
//! - In the agent's namespace (table `inet vallignus`): output allows
//!   loopback and TCP to the proxy's address and port only, plus
//!   established/related traffic; every other packet, IPv4 or IPv6, TCP,
//!   UDP (DNS included) or anything else, is rejected (TCP reset, ICMP port
//!   unreachable), so a forbidden connection fails at once instead of timing
//!   out. Input accepts loopback and established/related only. There is no
//!   default route, only the connected /30, and the veth has no IPv6 address
//!   (`addrgenmode none`).
//! - In the host namespace (table `inet vallignus_<slot>_<pid>_<start>_<run>`),
//!   at prerouting, before any routing decision: a packet arriving on the
//!   run's veth is dropped unless it is IPv4 from the agent's address; TCP
//!   to the proxy's address and port passes; everything else is rejected
//!   there (TCP reset, ICMP port unreachable), whatever its destination (the
//!   veth's address, 127.0.0.1, another address of the host, another run's
//!   proxy, anything to be forwarded). Nothing is forwarded from or to the
//!   veth. These rules hold even if the agent (root in its own user
//!   namespace) flushed the rules of its namespace and added routes, and
//!   they fail fast because the reject happens before routing (a packet to
//!   a non-local address would otherwise be dropped with rate-limited ICMP).
//!
//! # Invariants
//!
//! - Setup never configures the supervisor's own namespace as the agent's:
//!   a target whose network namespace is the caller's is refused.
//! - Both rulesets are in place before the agent's end of the veth is up
//!   (the pair carries nothing while one end is down), and [`setup`]
//!   returns only when both ends are operationally up, so the agent's first
//!   packet is not lost to a link that is still coming up.
//! - A failed setup removes what it created (through [`NetHandle`]'s drop).
//! - Teardown deletes only the link it created (same index *and* name; a
//!   veth whose agent namespace died disappears by itself, and its slot may
//!   already belong to another run) and the run's own table; it is
//!   idempotent.
//! - Every host-side object names its owner: the veth's alias is
//!   `vallignus run=<run id> owner=<pid>:<start time>`, the table name ends
//!   in `_<pid>_<start time>_<run hash>`, so [`reap_orphans`] removes the
//!   objects of dead supervisors and nothing else.

pub mod nfnl;
mod nft;
mod rtnl;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::supervisor::reap::{proc_start_time, supervisor_alive};
use rtnl::Rtnl;

/// The private range reserved for vallignus runs: network address.
pub const RANGE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// Prefix length of [`RANGE`].
pub const RANGE_PREFIX: u8 = 16;
/// Prefix length of one run's subnet.
pub const SUBNET_PREFIX: u8 = 30;
/// Number of /30 slots in [`RANGE`].
pub const SLOTS: u32 = 1 << (SUBNET_PREFIX - RANGE_PREFIX);
/// Port the proxy listens on at the host end of the veth. Above the
/// default ephemeral range (32768–60999), so no outgoing connection of the
/// host holds it; the address is per run, so concurrent runs share it.
pub const DEFAULT_PROXY_PORT: u16 = 61_213;
/// How many slots [`setup_run`] tries before giving up.
pub const MAX_PROBES: u32 = 64;
/// Prefix of every veth name vallignus creates.
pub const IF_PREFIX: &str = "vlg";
/// Prefix of every host-side nft table vallignus creates.
pub const HOST_TABLE_PREFIX: &str = "vallignus_";
/// The nft table in the agent's namespace (family `inet`).
pub const AGENT_TABLE: &str = "vallignus";
/// Start of every veth alias vallignus sets.
const LABEL_PREFIX: &str = "vallignus run=";

/// Everything that can go wrong while plumbing a run's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("slot {slot} ({subnet}/{SUBNET_PREFIX}, {interface}) is taken: {reason}")]
    SlotTaken {
        slot: u16,
        subnet: Ipv4Addr,
        interface: String,
        reason: String,
    },
    #[error(
        "no free /{SUBNET_PREFIX} in {RANGE}/{RANGE_PREFIX} for run {run_id} after {probes} tries"
    )]
    NoFreeSlot { run_id: String, probes: u32 },
    #[error("cannot read the start time of supervisor pid {pid}")]
    OwnerUnknown { pid: i32 },
    #[error("cannot open the network namespace of {target}: {source}")]
    OpenNamespace { target: String, source: io::Error },
    #[error("cannot enter the network namespace of {target}: {source}")]
    EnterNamespace { target: String, source: nix::Error },
    #[error("{target} is in the supervisor's own network namespace; refusing to configure it as the agent's")]
    SameNamespace { target: String },
    #[error("helper thread in the network namespace of {target} panicked")]
    HelperPanicked { target: String },
    #[error("cannot open a netlink socket ({namespace} namespace): {source}")]
    NetlinkSocket {
        namespace: &'static str,
        source: io::Error,
    },
    #[error("netlink: cannot {op} {interface}: {source}")]
    Link {
        op: &'static str,
        interface: String,
        source: io::Error,
    },
    #[error("netlink: cannot add address {address}/{prefix_len} to {interface}: {source}")]
    Address {
        address: Ipv4Addr,
        prefix_len: u8,
        interface: String,
        source: io::Error,
    },
    #[error("netlink: cannot list {what}: {source}")]
    Dump {
        what: &'static str,
        source: io::Error,
    },
    #[error("`{tool}` not found (searched {searched}); install the `{package}` package")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        searched: String,
    },
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

/// The supervisor that owns a run's host-side objects: pid and start time
/// (clock ticks since boot, field 22 of `/proc/<pid>/stat`), which together
/// identify a process even after its pid is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub start_time: u64,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Result<Self, NetError> {
        let pid = std::process::id() as i32;
        let start_time = proc_start_time(pid).ok_or(NetError::OwnerUnknown { pid })?;
        Ok(Self { pid, start_time })
    }

    /// Whether this supervisor still runs.
    pub fn alive(&self) -> bool {
        supervisor_alive(self.pid, self.start_time)
    }
}

/// Names and addresses of one run's network (pure data, see [`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The run (session) id, as given.
    pub run_id: String,
    /// Index of the /30 in [`RANGE`].
    pub slot: u16,
    /// Host-side veth name (`vlg<slot>h`).
    pub host_if: String,
    /// Agent-side veth name (`vlg<slot>a`), inside the agent's namespace.
    pub agent_if: String,
    /// Network address of the run's /30.
    pub subnet: Ipv4Addr,
    /// Host end: where the proxy listens.
    pub host_addr: Ipv4Addr,
    /// Agent end.
    pub agent_addr: Ipv4Addr,
    /// Broadcast address of the /30.
    pub broadcast: Ipv4Addr,
    /// TCP port of the proxy on `host_addr`.
    pub proxy_port: u16,
}

/// The network plan of run `run_id` at probe `index` (0 first; a caller
/// whose slot is taken tries the next index). Pure and deterministic.
/// The tools the network path runs (for `doctor`): `nft`. (The veth pair
/// is made over rtnetlink, which every kernel with veth offers.)
pub fn check_tools() -> Result<(), NetError> {
    nft::locate().map(|_| ())
}

pub fn plan(run_id: &str, index: u32) -> NetPlan {
    let slot = ((run_hash(run_id) as u64 + index as u64) % SLOTS as u64) as u16;
    plan_slot(run_id, slot)
}

/// The plan of a given slot (`slot` is taken modulo [`SLOTS`]).
pub fn plan_slot(run_id: &str, slot: u16) -> NetPlan {
    let slot = (slot as u32 % SLOTS) as u16;
    let base = u32::from(RANGE) + 4 * slot as u32;
    NetPlan {
        run_id: run_id.to_owned(),
        slot,
        host_if: format!("{IF_PREFIX}{slot:04x}h"),
        agent_if: format!("{IF_PREFIX}{slot:04x}a"),
        subnet: Ipv4Addr::from(base),
        host_addr: Ipv4Addr::from(base + 1),
        agent_addr: Ipv4Addr::from(base + 2),
        broadcast: Ipv4Addr::from(base + 3),
        proxy_port: DEFAULT_PROXY_PORT,
    }
}

/// First 32 bits of SHA-256(run id).
fn run_hash(run_id: &str) -> u32 {
    let digest = Sha256::digest(run_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Whether `a/pa` and `b/pb` share any address.
pub fn prefixes_overlap(a: Ipv4Addr, pa: u8, b: Ipv4Addr, pb: u8) -> bool {
    let bits = pa.min(pb).min(32);
    if bits == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - bits as u32);
    u32::from(a) & mask == u32::from(b) & mask
}

/// `s` reduced to characters that are safe inside an nft string and a link
/// alias (`[A-Za-z0-9._:-]`, others become `_`), at most 64 of them.
pub fn sanitize_label(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The owner label of a run's host-side objects (veth alias, table comment).
pub fn owner_label(run_id: &str, owner: Owner) -> String {
    format!(
        "{LABEL_PREFIX}{} owner={}:{}",
        sanitize_label(run_id),
        owner.pid,
        owner.start_time
    )
}

/// The owner named by a label made by [`owner_label`].
pub fn parse_owner_label(label: &str) -> Option<Owner> {
    let rest = label.strip_prefix(LABEL_PREFIX)?;
    let owner = rest.rsplit_once(" owner=")?.1;
    let (pid, start) = owner.split_once(':')?;
    Some(Owner {
        pid: pid.parse().ok()?,
        start_time: start.parse().ok()?,
    })
}

/// Name of the host-side table of run `run_id` in `slot`, owned by `owner`.
pub fn host_table_name(slot: u16, owner: Owner, run_id: &str) -> String {
    format!(
        "{HOST_TABLE_PREFIX}{slot:04x}_{}_{}_{:08x}",
        owner.pid,
        owner.start_time,
        run_hash(run_id)
    )
}

/// Slot and owner encoded in a host table name made by [`host_table_name`].
pub fn parse_host_table_name(name: &str) -> Option<(u16, Owner)> {
    let rest = name.strip_prefix(HOST_TABLE_PREFIX)?;
    let mut parts = rest.split('_');
    let slot = parts.next()?;
    let pid = parts.next()?;
    let start = parts.next()?;
    let hash = parts.next()?;
    if parts.next().is_some() || slot.len() != 4 || hash.len() != 8 {
        return None;
    }
    u32::from_str_radix(hash, 16).ok()?;
    Some((
        u16::from_str_radix(slot, 16).ok()?,
        Owner {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
        },
    ))
}

/// Whether `name` is a host-side veth name of vallignus (`vlg<4 hex>h`).
pub fn is_host_if_name(name: &str) -> bool {
    name.strip_prefix(IF_PREFIX)
        .and_then(|r| r.strip_suffix('h'))
        .is_some_and(|hex| hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl NetPlan {
    /// Where the proxy must listen (and the only destination of the agent).
    pub fn proxy_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.host_addr, self.proxy_port)
    }

    /// The proxy URL for the agent's `HTTP_PROXY` and friends.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr())
    }

    /// The host-side ruleset (table `inet <host_table_name>`). Applied in
    /// one transaction; `add` + `flush` first make it replace the rules of a
    /// leftover table of the same name instead of adding to them (cheaper
    /// than deleting the table, which waits for an RCU grace period).
    pub fn host_ruleset(&self, owner: Owner) -> String {
        let table = host_table_name(self.slot, owner, &self.run_id);
        let label = owner_label(&self.run_id, owner);
        let veth = &self.host_if;
        let agent = self.agent_addr;
        let host = self.host_addr;
        let port = self.proxy_port;
        format!(
            "add table inet {table}
flush table inet {table}
table inet {table} {{
	comment \"{label}\"
	chain prerouting {{
		type filter hook prerouting priority raw; policy accept;
		iifname \"{veth}\" meta nfproto != ipv4 drop
		iifname \"{veth}\" ip saddr != {agent} drop
		iifname \"{veth}\" ip daddr {host} tcp dport {port} accept
		iifname \"{veth}\" meta l4proto tcp reject with tcp reset
		iifname \"{veth}\" reject with icmpx port-unreachable
	}}
	chain forward {{
		type filter hook forward priority filter - 1; policy accept;
		iifname \"{veth}\" drop
		oifname \"{veth}\" reject with icmpx admin-prohibited
	}}
}}
"
        )
    }

    /// The ruleset of the agent's namespace (table `inet vallignus`), in the
    /// same replace-in-one-transaction form as [`NetPlan::host_ruleset`].
    pub fn agent_ruleset(&self) -> String {
        let table = AGENT_TABLE;
        let veth = &self.agent_if;
        let host = self.host_addr;
        let port = self.proxy_port;
        format!(
            "add table inet {table}
flush table inet {table}
table inet {table} {{
	chain output {{
		type filter hook output priority filter; policy drop;
		oifname \"lo\" accept
		oifname \"{veth}\" ip daddr {host} tcp dport {port} accept
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
}

/// The agent process whose network namespace is configured.
#[derive(Debug, Clone, Copy)]
pub enum NsTarget<'a> {
    /// A pidfd (preferred: immune to pid reuse).
    Pidfd(BorrowedFd<'a>),
    /// A pid; safe for an unreaped child of the caller.
    Pid(i32),
}

impl std::fmt::Display for NsTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        match self {
            NsTarget::Pidfd(fd) => write!(f, "pidfd {}", fd.as_raw_fd()),
            NsTarget::Pid(pid) => write!(f, "pid {pid}"),
        }
    }
}

/// Run `f` on a short-lived thread that has joined the network namespace
/// `ns` (an nsfs fd or a pidfd). Only that thread changes namespace; sockets
/// it opens and processes it spawns stay in `ns`.
fn in_netns<T: Send>(
    ns: BorrowedFd<'_>,
    target: &str,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("vallignus-netns".into())
            .spawn_scoped(scope, move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetError::EnterNamespace {
                        target: target.to_owned(),
                        source,
                    }
                })?;
                f()
            })
            .map_err(|source| NetError::Spawn {
                command: "thread vallignus-netns".into(),
                what: format!("entering the network namespace of {target}"),
                source,
            })?;
        worker.join().map_err(|_| NetError::HelperPanicked {
            target: target.to_owned(),
        })?
    })
}

/// An nsfs fd for the target's network namespace, checked to differ from
/// the caller's.
fn open_target_netns(target: NsTarget<'_>) -> Result<OwnedFd, NetError> {
    let name = target.to_string();
    let open_err = |source| NetError::OpenNamespace {
        target: name.clone(),
        source,
    };
    let ns: OwnedFd = match target {
        NsTarget::Pid(pid) => std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(open_err)?
            .into(),
        NsTarget::Pidfd(pidfd) => in_netns(pidfd, &name, || {
            std::fs::File::open("/proc/thread-self/ns/net")
                .map(OwnedFd::from)
                .map_err(open_err)
        })?,
    };
    let theirs = std::fs::File::from(ns.try_clone().map_err(open_err)?)
        .metadata()
        .map_err(open_err)?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net").map_err(open_err)?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(NetError::SameNamespace { target: name });
    }
    Ok(ns)
}

/// A run's network, set up. Dropping it tears it down (best effort);
/// [`NetHandle::teardown`] does the same and reports errors.
#[derive(Debug)]
pub struct NetHandle {
    plan: NetPlan,
    owner: Owner,
    table: String,
    host_index: u32,
    nft: PathBuf,
    live: bool,
}

impl NetHandle {
    /// The plan this network was built from.
    pub fn plan(&self) -> &NetPlan {
        &self.plan
    }

    /// The supervisor recorded as owner.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Name of the host-side nft table (family `inet`).
    pub fn host_table(&self) -> &str {
        &self.table
    }

    /// Where the proxy must listen.
    pub fn proxy_addr(&self) -> SocketAddrV4 {
        self.plan.proxy_addr()
    }

    /// Delete the veth (if it is still ours) and the host table.
    pub fn teardown(mut self) -> Result<(), NetError> {
        self.live = false;
        remove(&self.plan, self.host_index, &self.table)
    }
}

impl Drop for NetHandle {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            let _ = remove(&self.plan, self.host_index, &self.table);
        }
    }
}

/// Tear down a run's network; idempotent (see [`NetHandle::teardown`]).
pub fn teardown(handle: NetHandle) -> Result<(), NetError> {
    handle.teardown()
}

/// Delete link `index` if it still is `plan.host_if`, and the table, at the
/// same time (the link's removal waits for RCU grace periods in the
/// kernel). Both are attempted; the first error is returned.
fn remove(plan: &NetPlan, index: u32, table: &str) -> Result<(), NetError> {
    std::thread::scope(|s| {
        let deleting = s.spawn(|| delete_host_table(table));
        let link = delete_own_link(plan, index);
        let table = deleting.join().unwrap_or_else(|_| {
            Err(NetError::Nft {
                what: format!("delete table inet {table}"),
                status: "thread panicked".into(),
                stderr: String::new(),
            })
        });
        link.and(table.map(|_| ()))
    })
}

/// Delete `inet` table `name` of the calling thread's namespace (over
/// netlink: no `nft` process). `Ok(false)`: there was none.
fn delete_host_table(name: &str) -> Result<bool, NetError> {
    let err = |source: io::Error| NetError::Nft {
        what: format!("delete table inet {name}"),
        status: "netlink".into(),
        stderr: source.to_string(),
    };
    nfnl::Nfnl::open()
        .and_then(|mut nl| nl.delete_table(nfnl::FAMILY_INET, name))
        .map_err(err)
}

fn delete_own_link(plan: &NetPlan, index: u32) -> Result<(), NetError> {
    let link_err = |op, source| NetError::Link {
        op,
        interface: plan.host_if.clone(),
        source,
    };
    let mut rtnl = Rtnl::open().map_err(|source| NetError::NetlinkSocket {
        namespace: "host",
        source,
    })?;
    match rtnl.link_by_index(index) {
        Ok(Some(link)) if link.name == plan.host_if => {
            rtnl.delete_link(index).map_err(|e| link_err("delete", e))?;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(link_err("look up", e)),
    }
}

/// Set up the network of `plan` for the agent `target`, owned by the
/// calling process. See the module documentation for what is built.
pub fn setup(plan: &NetPlan, target: NsTarget<'_>) -> Result<NetHandle, NetError> {
    setup_as(plan, target, Owner::current()?)
}

/// [`setup`] over probes 0..[`MAX_PROBES`] of `run_id` until a slot is
/// free. The returned handle's [`NetHandle::plan`] says which one.
pub fn setup_run(run_id: &str, target: NsTarget<'_>) -> Result<NetHandle, NetError> {
    let owner = Owner::current()?;
    for index in 0..MAX_PROBES {
        match setup_as(&plan(run_id, index), target, owner) {
            Err(NetError::SlotTaken { .. }) => continue,
            other => return other,
        }
    }
    Err(NetError::NoFreeSlot {
        run_id: run_id.to_owned(),
        probes: MAX_PROBES,
    })
}

/// [`setup`] with an explicit owner (recorded for [`reap_orphans`]).
pub fn setup_as(plan: &NetPlan, target: NsTarget<'_>, owner: Owner) -> Result<NetHandle, NetError> {
    // Fail closed before any change: the tool, the target, the slot.
    let nft_bin = nft::locate()?;
    let ns = open_target_netns(target)?;
    let target_name = target.to_string();
    let mut rtnl = Rtnl::open().map_err(|source| NetError::NetlinkSocket {
        namespace: "host",
        source,
    })?;
    let host_err = |op, source| NetError::Link {
        op,
        interface: plan.host_if.clone(),
        source,
    };
    let taken = |reason: String| NetError::SlotTaken {
        slot: plan.slot,
        subnet: plan.subnet,
        interface: plan.host_if.clone(),
        reason,
    };

    let addrs = rtnl.ipv4_addresses().map_err(|source| NetError::Dump {
        what: "host IPv4 addresses",
        source,
    })?;
    if let Some(a) = addrs
        .iter()
        .find(|a| prefixes_overlap(a.addr, a.prefix_len, plan.subnet, SUBNET_PREFIX))
    {
        return Err(taken(format!(
            "host address {}/{} overlaps it",
            a.addr, a.prefix_len
        )));
    }

    // The claim: creating the host-side name is atomic (EEXIST for a loser).
    match rtnl.create_veth(&plan.host_if, &plan.agent_if, ns.as_fd()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(taken(format!("link {} exists", plan.host_if)))
        }
        Err(e) => return Err(host_err("create veth", e)),
    }
    let host_index = match rtnl.link_index(&plan.host_if) {
        Ok(Some(index)) => index,
        Ok(None) => {
            return Err(host_err(
                "find the new veth",
                io::Error::from_raw_os_error(libc::ENODEV),
            ))
        }
        Err(e) => return Err(host_err("find the new veth", e)),
    };
    // From here on, an early return drops `handle`, which removes the veth
    // and the table.
    let handle = NetHandle {
        plan: plan.clone(),
        owner,
        table: host_table_name(plan.slot, owner, &plan.run_id),
        host_index,
        nft: nft_bin,
        live: true,
    };
    rtnl.set_alias(host_index, &owner_label(&plan.run_id, owner))
        .map_err(|e| host_err("set the alias of", e))?;
    rtnl.disable_ipv6_autoconf(host_index)
        .map_err(|e| host_err("disable IPv6 autoconfiguration on", e))?;
    rtnl.add_ipv4(host_index, plan.host_addr, SUBNET_PREFIX, plan.broadcast)
        .map_err(|source| NetError::Address {
            address: plan.host_addr,
            prefix_len: SUBNET_PREFIX,
            interface: plan.host_if.clone(),
            source,
        })?;
    // The host table and the agent side are configured at the same time
    // (each costs an nft process); both must be in place before the agent
    // end goes up, and until then no packet can cross the pair (a veth has
    // no carrier while either end is down).
    let host_rules = nft::start(&handle.nft, &plan.host_ruleset(owner), "host table")?;
    let inside = in_netns(ns.as_fd(), &target_name, || {
        configure_agent_side(plan, &handle.nft)
    });
    let host = host_rules.wait();
    let agent_index = inside?;
    host?;

    rtnl.set_up(host_index)
        .map_err(|e| host_err("bring up", e))?;
    in_netns(ns.as_fd(), &target_name, || {
        agent_side_up(plan, agent_index)
    })?;
    rtnl.wait_oper_up(host_index, CARRIER_WAIT)
        .map_err(|e| host_err("wait for the carrier of", e))?;
    Ok(handle)
}

/// How long setup waits for the kernel to report a veth end operationally
/// up. Packets sent before that are dropped (the first SYN of the agent
/// would then be retransmitted a second later), so setup returns only once
/// both ends carry traffic.
const CARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn agent_rtnl() -> Result<Rtnl, NetError> {
    Rtnl::open().map_err(|source| NetError::NetlinkSocket {
        namespace: "agent",
        source,
    })
}

/// Inside the agent's namespace (called on a helper thread): the rules
/// first, then the address. Returns the index of the agent's end, still down.
fn configure_agent_side(plan: &NetPlan, nft_bin: &Path) -> Result<u32, NetError> {
    let agent_err = |op, source| NetError::Link {
        op,
        interface: plan.agent_if.clone(),
        source,
    };
    let mut rtnl = agent_rtnl()?;
    nft::apply(nft_bin, &plan.agent_ruleset(), "agent namespace table")?;
    let index = match rtnl.link_index(&plan.agent_if) {
        Ok(Some(index)) => index,
        Ok(None) => {
            return Err(agent_err(
                "find",
                io::Error::from_raw_os_error(libc::ENODEV),
            ))
        }
        Err(e) => return Err(agent_err("find", e)),
    };
    rtnl.disable_ipv6_autoconf(index)
        .map_err(|e| agent_err("disable IPv6 autoconfiguration on", e))?;
    rtnl.add_ipv4(index, plan.agent_addr, SUBNET_PREFIX, plan.broadcast)
        .map_err(|source| NetError::Address {
            address: plan.agent_addr,
            prefix_len: SUBNET_PREFIX,
            interface: plan.agent_if.clone(),
            source,
        })?;
    Ok(index)
}

/// Inside the agent's namespace: loopback and the agent's end up, and wait
/// until the end carries traffic.
fn agent_side_up(plan: &NetPlan, index: u32) -> Result<(), NetError> {
    let agent_err = |op, source| NetError::Link {
        op,
        interface: plan.agent_if.clone(),
        source,
    };
    let lo_err = |op, source| NetError::Link {
        op,
        interface: "lo".into(),
        source,
    };
    let mut rtnl = agent_rtnl()?;
    match rtnl.link_index("lo") {
        Ok(Some(lo)) => rtnl.set_up(lo).map_err(|e| lo_err("bring up", e))?,
        Ok(None) => {}
        Err(e) => return Err(lo_err("find", e)),
    }
    rtnl.set_up(index).map_err(|e| agent_err("bring up", e))?;
    rtnl.wait_oper_up(index, CARRIER_WAIT)
        .map_err(|e| agent_err("wait for the carrier of", e))
}

/// Remove the host-side veths and tables of supervisors that are gone
/// (pid + start time no longer match). Returns one line per removed object.
/// Tables are listed and deleted over netlink; a kernel without nf_tables
/// has none to reap.
pub fn reap_orphans() -> Result<Vec<String>, NetError> {
    let mut removed = Vec::new();
    let mut rtnl = Rtnl::open().map_err(|source| NetError::NetlinkSocket {
        namespace: "host",
        source,
    })?;
    let links = rtnl.links().map_err(|source| NetError::Dump {
        what: "host links",
        source,
    })?;
    for link in links {
        if !link.is_veth || !is_host_if_name(&link.name) {
            continue;
        }
        let Some(owner) = link.alias.as_deref().and_then(parse_owner_label) else {
            continue;
        };
        if owner.alive() {
            continue;
        }
        let deleted = rtnl
            .delete_link(link.index)
            .map_err(|source| NetError::Link {
                op: "delete",
                interface: link.name.clone(),
                source,
            })?;
        if deleted {
            removed.push(format!(
                "veth {} of dead supervisor {}",
                link.name, owner.pid
            ));
        }
    }
    let tables = match nfnl::Nfnl::open().and_then(|mut nl| nl.tables()) {
        Ok(tables) => tables,
        // No nf_tables in this kernel: no table can exist.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::ENOENT)
            ) =>
        {
            Vec::new()
        }
        Err(source) => {
            return Err(NetError::Dump {
                what: "nf_tables tables",
                source,
            })
        }
    };
    for (family, name) in tables {
        if family != nfnl::FAMILY_INET {
            continue;
        }
        let Some((_, owner)) = parse_host_table_name(&name) else {
            continue;
        };
        if owner.alive() {
            continue;
        }
        if delete_host_table(&name)? {
            removed.push(format!(
                "nft table inet {name} of dead supervisor {}",
                owner.pid
            ));
        }
    }
    Ok(removed)
}
