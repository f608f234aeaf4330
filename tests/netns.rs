//! Tier 2 (root): the per-run veth, addresses and nft rules of
//! `vallignus::net::netns`, against a real child in its own network
//! namespace (`unshare -n sleep`). The only targets are addresses of this
//! machine: the run's /30, loopback, the host's own addresses, and unowned
//! addresses of vallignus's reserved range that the namespace has no route
//! to (so nothing is ever sent anywhere). Every test removes its namespaces
//! (child guard), veths and tables (NetHandle's drop) even when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vallignus::net::netns::{self, NetError, NetHandle, NsTarget, Owner};

/// Anything slower than this is a timeout, not a REJECT.
const FAST: Duration = Duration::from_secs(1);

fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn available(test: &str) -> bool {
    if !common::is_root() {
        common::skip(test, "needs root to create veths and nft tables");
        return false;
    }
    for tool in ["unshare", "nsenter", "ip"] {
        if which(tool).is_none() {
            common::skip(test, &format!("`{tool}` is not installed"));
            return false;
        }
    }
    if which("nft").is_none() {
        common::skip(test, "`nft` is not installed (apt-get install nftables)");
        return false;
    }
    true
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn run_id(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{}-{}-{}",
        test,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A process in its own network namespace; killed and reaped on drop
/// (which destroys the namespace, and the agent end of any veth with it).
struct NsChild {
    child: Child,
}

impl NsChild {
    fn spawn() -> Self {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let me = Self { child };
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let start = Instant::now();
        loop {
            if let Ok(theirs) = std::fs::read_link(format!("/proc/{}/ns/net", me.pid())) {
                if theirs != ours {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "unshare -n did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        me
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `nsenter -t PID -n -- args...`, asserting success; returns stdout.
    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `f` on a thread inside this child's network namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid())).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connect with a timeout; returns the result and how long it took.
fn connect(addr: SocketAddr) -> (std::io::Result<TcpStream>, Duration) {
    let start = Instant::now();
    let r = TcpStream::connect_timeout(&addr, Duration::from_secs(3));
    (r, start.elapsed())
}

/// The connection must fail, fast (REJECT or no route), not time out.
fn assert_refused_fast(child: &NsChild, addr: SocketAddr) {
    let (r, took) = child.inside(|| connect(addr));
    match r {
        Ok(_) => panic!("{addr} is reachable from the agent's namespace"),
        Err(e) => {
            assert_ne!(
                e.kind(),
                ErrorKind::TimedOut,
                "{addr}: timed out ({took:?})"
            );
            assert!(took < FAST, "{addr}: took {took:?} to fail ({e})");
        }
    }
}

/// A UDP DNS query must fail fast (ICMP port unreachable or EPERM).
fn assert_udp_refused_fast(child: &NsChild, addr: SocketAddr) {
    let (result, took) = child.inside(|| {
        let start = Instant::now();
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
        let r = sock.connect(addr).and_then(|()| sock.send(query)).and_then(|_| {
            let mut buf = [0u8; 512];
            sock.recv(&mut buf)
        });
        (r, start.elapsed())
    });
    match result {
        Ok(n) => panic!("UDP {addr} answered {n} bytes"),
        Err(e) => {
            assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "UDP {addr}: timed out ({took:?})"
            );
            assert!(took < FAST, "UDP {addr}: took {took:?} ({e})");
        }
    }
}

/// The proxy listener is reachable from inside, and sees the agent's address.
fn assert_proxy_reachable(child: &NsChild, handle: &NetHandle, listener: &TcpListener) {
    let addr = SocketAddr::V4(handle.proxy_addr());
    let client = std::thread::scope(|s| {
        let c = s.spawn(|| {
            child.inside(|| {
                let (r, took) = connect(addr);
                let mut stream = r.unwrap_or_else(|e| panic!("proxy {addr} unreachable: {e}"));
                // A lost first SYN (link not yet carrying) costs a 1 s retry.
                assert!(took < FAST, "connecting to the proxy took {took:?}");
                stream.write_all(b"ping").unwrap();
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf).unwrap();
                buf
            })
        });
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(handle.plan().agent_addr));
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong").unwrap();
        c.join().unwrap()
    });
    assert_eq!(&client, b"pong");
}

/// IPv4 addresses of the host namespace, except loopback.
fn host_ipv4_addresses() -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet")?;
            w.next()?.split('/').next()?.parse::<Ipv4Addr>().ok()
        })
        .filter(|a| !a.is_loopback())
        .collect()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn host_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn timed_setup(child: &NsChild, test: &str) -> NetHandle {
    let start = Instant::now();
    let handle = netns::setup_run(&run_id(test), NsTarget::Pid(child.pid())).unwrap();
    note(&format!(
        "{test}: setup {:.1} ms (slot {}, {})",
        start.elapsed().as_secs_f64() * 1e3,
        handle.plan().slot,
        handle.plan().host_if
    ));
    handle
}

#[test]
fn only_the_proxy_is_reachable_and_teardown_removes_everything() {
    let test = "only_the_proxy_is_reachable";
    if !available(test) {
        return;
    }
    let child = NsChild::spawn();
    let handle = timed_setup(&child, test);
    let plan = handle.plan().clone();
    let proxy = TcpListener::bind(handle.proxy_addr()).unwrap();
    let other = TcpListener::bind("0.0.0.0:0").unwrap();
    let other_port = other.local_addr().unwrap().port();

    assert_proxy_reachable(&child, &handle, &proxy);

    // A host service on 0.0.0.0, by every address.
    let v4 = |ip: Ipv4Addr, port| SocketAddr::V4(SocketAddrV4::new(ip, port));
    assert_refused_fast(&child, v4(plan.host_addr, other_port));
    assert_refused_fast(&child, v4(Ipv4Addr::LOCALHOST, other_port));
    assert_refused_fast(
        &child,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), other_port),
    );
    let host_addrs = host_ipv4_addresses();
    assert!(host_addrs.contains(&plan.host_addr));
    for a in &host_addrs {
        assert_refused_fast(&child, v4(*a, other_port));
        if *a != plan.host_addr {
            // Another address of the host (or another run's proxy).
            assert_refused_fast(&child, v4(*a, plan.proxy_port));
        }
    }
    // The proxy's port on the agent's own address is not the proxy.
    assert_refused_fast(&child, v4(plan.agent_addr, plan.proxy_port));
    // DNS over UDP to the host end.
    assert_udp_refused_fast(&child, v4(plan.host_addr, 53));
    // "Outside" addresses that nobody owns: the /30's network address (on
    // link, rejected by the namespace's rules) and another slot of the
    // reserved range (no route at all).
    assert_refused_fast(&child, v4(plan.subnet, 80));
    let elsewhere = netns::plan_slot("x", plan.slot ^ 0x2000).subnet;
    assert_refused_fast(&child, v4(elsewhere, 443));
    assert_udp_refused_fast(&child, v4(elsewhere, 53));

    // No default route, only the connected /30; no IPv6 on either end.
    let routes = child.exec(&["ip", "-4", "route", "show"]);
    assert!(!routes.contains("default"), "{routes}");
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(routes.contains(&format!("{}/30", plan.subnet)), "{routes}");
    let routes6 = child.exec(&["ip", "-6", "route", "show"]);
    assert!(!routes6.contains("default"), "{routes6}");
    let v6 = child.exec(&["ip", "-6", "addr", "show", "dev", &plan.agent_if]);
    assert!(v6.trim().is_empty(), "agent end has IPv6: {v6}");
    let out = Command::new("ip")
        .args(["-6", "addr", "show", "dev", &plan.host_if])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "host end has IPv6");
    let alias = Command::new("ip")
        .args(["link", "show", "dev", &plan.host_if])
        .output()
        .unwrap();
    let me = Owner::current().unwrap();
    let host_link = String::from_utf8_lossy(&alias.stdout).into_owned();
    assert!(host_link.contains(&format!("owner={}:{}", me.pid, me.start_time)));
    // Both ends have loopback's packet size (the pair is local traffic only).
    assert!(host_link.contains("mtu 65535"), "{host_link}");
    let agent_link = child.exec(&["ip", "link", "show", "dev", &plan.agent_if]);
    assert!(agent_link.contains("mtu 65535"), "{agent_link}");
    assert!(host_tables().contains(handle.host_table()));

    let table = handle.host_table().to_owned();
    let start = Instant::now();
    netns::teardown(handle).unwrap();
    note(&format!(
        "{test}: teardown {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    ));
    assert!(!link_exists(&plan.host_if), "veth left behind");
    assert!(!host_tables().contains(&table), "table left behind");
    let links = child.exec(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains(&plan.agent_if),
        "agent end left behind: {links}"
    );
}

#[test]
fn host_rules_hold_when_the_agent_flushes_its_own() {
    let test = "host_rules_hold";
    if !available(test) {
        return;
    }
    let child = NsChild::spawn();
    let handle = timed_setup(&child, test);
    let plan = handle.plan().clone();
    let proxy = TcpListener::bind(handle.proxy_addr()).unwrap();
    let other = TcpListener::bind("0.0.0.0:0").unwrap();
    let other_port = other.local_addr().unwrap().port();

    // What root inside the agent's namespace could do.
    child.exec(&["nft", "delete", "table", "inet", "vallignus"]);
    child.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &plan.host_addr.to_string(),
    ]);

    assert_proxy_reachable(&child, &handle, &proxy);
    let v4 = |ip: Ipv4Addr, port| SocketAddr::V4(SocketAddrV4::new(ip, port));
    for a in host_ipv4_addresses() {
        assert_refused_fast(&child, v4(a, other_port));
        if a != plan.host_addr {
            assert_refused_fast(&child, v4(a, plan.proxy_port));
        }
    }
    assert_udp_refused_fast(&child, v4(plan.host_addr, 53));
    netns::teardown(handle).unwrap();
}

#[test]
fn concurrent_runs_get_distinct_slots_and_cannot_see_each_other() {
    let test = "concurrent_runs";
    if !available(test) {
        return;
    }
    let a = NsChild::spawn();
    let b = NsChild::spawn();
    // Same run id on purpose: the second must probe past the first's slot.
    let id = run_id(test);
    let (ha, hb) = std::thread::scope(|s| {
        let ta = s.spawn(|| netns::setup_run(&id, NsTarget::Pid(a.pid())).unwrap());
        let tb = s.spawn(|| netns::setup_run(&id, NsTarget::Pid(b.pid())).unwrap());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let (pa, pb) = (ha.plan().clone(), hb.plan().clone());
    assert_ne!(pa.slot, pb.slot);
    assert_ne!(pa.host_if, pb.host_if);
    assert_ne!(pa.host_addr, pb.host_addr);
    assert_ne!(ha.host_table(), hb.host_table());

    // A third setup on a slot in use is refused, and changes nothing.
    let c = NsChild::spawn();
    match netns::setup(&pa, NsTarget::Pid(c.pid())) {
        Err(NetError::SlotTaken { .. }) => {}
        other => panic!("expected SlotTaken, got {other:?}"),
    }
    assert!(link_exists(&pa.host_if));

    let la = TcpListener::bind(ha.proxy_addr()).unwrap();
    let lb = TcpListener::bind(hb.proxy_addr()).unwrap();
    assert_proxy_reachable(&a, &ha, &la);
    assert_proxy_reachable(&b, &hb, &lb);
    assert_refused_fast(&a, SocketAddr::V4(hb.proxy_addr()));
    assert_refused_fast(&b, SocketAddr::V4(ha.proxy_addr()));

    netns::teardown(ha).unwrap();
    // B is unaffected by A's teardown.
    assert_proxy_reachable(&b, &hb, &lb);
    netns::teardown(hb).unwrap();
    assert!(!link_exists(&pa.host_if) && !link_exists(&pb.host_if));
}

#[test]
fn pidfd_target_works_and_own_namespace_is_refused() {
    let test = "pidfd_target";
    if !available(test) {
        return;
    }
    let child = NsChild::spawn();
    let pidfd = vallignus::sys::pidfd::pidfd_open(child.pid()).unwrap();
    let handle = netns::setup_run(&run_id(test), NsTarget::Pidfd(pidfd.as_fd())).unwrap();
    let listener = TcpListener::bind(handle.proxy_addr()).unwrap();
    assert_proxy_reachable(&child, &handle, &listener);
    netns::teardown(handle).unwrap();

    let me = std::process::id() as i32;
    let p = netns::plan(&run_id(test), 0);
    match netns::setup(&p, NsTarget::Pid(me)) {
        Err(NetError::SameNamespace { .. }) => {}
        other => panic!("expected SameNamespace, got {other:?}"),
    }
    assert!(!link_exists(&p.host_if));
}

#[test]
fn teardown_after_the_agent_died_and_reaping_of_dead_owners() {
    let test = "teardown_and_reap";
    if !available(test) {
        return;
    }
    // The agent dies first: its namespace takes the veth pair along, and
    // teardown still succeeds and removes the table.
    let mut child = NsChild::spawn();
    let handle = timed_setup(&child, test);
    let host_if = handle.plan().host_if.clone();
    let table = handle.host_table().to_owned();
    let _ = child.child.kill();
    let _ = child.child.wait();
    let start = Instant::now();
    while link_exists(&host_if) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    netns::teardown(handle).unwrap();
    assert!(!link_exists(&host_if));
    assert!(!host_tables().contains(&table));

    // A run of a "dead" supervisor (our pid with another start time) is
    // reaped; a live one is not.
    let me = Owner::current().unwrap();
    let ghost = Owner {
        pid: me.pid,
        start_time: me.start_time + 1,
    };
    let dead_child = NsChild::spawn();
    let live_child = NsChild::spawn();
    let mut dead = None;
    for index in 0..netns::MAX_PROBES {
        match netns::setup_as(
            &netns::plan(&run_id(test), index),
            NsTarget::Pid(dead_child.pid()),
            ghost,
        ) {
            Err(NetError::SlotTaken { .. }) => continue,
            other => {
                dead = Some(other.unwrap());
                break;
            }
        }
    }
    let dead = dead.unwrap();
    let live = timed_setup(&live_child, test);
    let (dead_if, dead_table) = (dead.plan().host_if.clone(), dead.host_table().to_owned());
    let removed = netns::reap_orphans().unwrap();
    note(&format!("{test}: reaped {removed:?}"));
    assert!(removed.iter().any(|r| r.contains(&dead_if)), "{removed:?}");
    assert!(
        removed.iter().any(|r| r.contains(&dead_table)),
        "{removed:?}"
    );
    assert!(!link_exists(&dead_if));
    assert!(!host_tables().contains(&dead_table));
    assert!(link_exists(&live.plan().host_if));
    assert!(host_tables().contains(live.host_table()));
    // Tearing down what was reaped is fine (idempotent).
    netns::teardown(dead).unwrap();
    netns::teardown(live).unwrap();
}

#[test]
fn the_first_connection_after_setup_is_immediate() {
    let test = "first_connection";
    if !available(test) {
        return;
    }
    // Setup returns only once both veth ends carry traffic; a first SYN
    // sent too early would be dropped and retried after a second.
    for _ in 0..10 {
        let child = NsChild::spawn();
        let handle = netns::setup_run(&run_id(test), NsTarget::Pid(child.pid())).unwrap();
        let _listener = TcpListener::bind(handle.proxy_addr()).unwrap();
        let addr = SocketAddr::V4(handle.proxy_addr());
        let (r, took) = child.inside(|| connect(addr));
        r.unwrap();
        assert!(
            took < Duration::from_millis(500),
            "first connect took {took:?}"
        );
        netns::teardown(handle).unwrap();
    }
}

/// The netlink nf_tables client that lists and deletes tables (reaping and
/// teardown) agrees with `nft`, inside a throwaway namespace.
#[test]
fn nf_tables_netlink_lists_and_deletes_tables() {
    if !available("nf_tables_netlink_lists_and_deletes_tables") {
        return;
    }
    use netns::nfnl::{Nfnl, FAMILY_INET};
    let ns = NsChild::spawn();
    ns.exec(&["nft", "add", "table", "inet", "vlg_nfnl_test"]);
    ns.exec(&["nft", "add", "table", "ip", "vlg_nfnl_other"]);
    ns.inside(|| {
        let mut nl = Nfnl::open().unwrap();
        let tables = nl.tables().unwrap();
        assert!(
            tables.contains(&(FAMILY_INET, "vlg_nfnl_test".to_string())),
            "{tables:?}"
        );
        assert!(
            tables.contains(&(2, "vlg_nfnl_other".to_string())),
            "{tables:?}"
        );
        assert!(nl.delete_table(FAMILY_INET, "vlg_nfnl_test").unwrap());
        assert!(!nl.delete_table(FAMILY_INET, "vlg_nfnl_test").unwrap());
        let left = nl.tables().unwrap();
        assert!(!left.iter().any(|(_, n)| n == "vlg_nfnl_test"), "{left:?}");
    });
    let listed = ns.exec(&["nft", "list", "tables"]);
    assert!(!listed.contains("vlg_nfnl_test"), "{listed}");
    assert!(listed.contains("table ip vlg_nfnl_other"), "{listed}");
}
