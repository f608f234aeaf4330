//! Tier 2 (root): the agent's network namespace as `vallignus::net::netns`
//! sets it up, against a real child in its own network namespace
//! (`unshare -n sleep`): only loopback, the nft table, and the proxy's
//! listening socket on the agent's 127.0.0.1. The targets are loopback,
//! the host's own addresses, a private address (10.0.0.1) and a
//! documentation one (2001:db8::1); the namespace has no route to any of them, so
//! nothing is ever sent anywhere. Every
//! test kills its children (child guard) and drops its listeners, which
//! removes their namespaces, even when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vallignus::net::netns::{self, NetError, NsTarget, PROXY_ADDR};

/// Anything slower than this is a timeout, not a REJECT.
const FAST: Duration = Duration::from_secs(1);

fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn available(test: &str) -> bool {
    if !common::is_root() {
        common::skip(
            test,
            "needs root to enter network namespaces and apply nft rules",
        );
        return false;
    }
    for tool in ["unshare", "nsenter", "ip", "nft"] {
        if which(tool).is_none() {
            common::skip(test, &format!("`{tool}` is not installed"));
            return false;
        }
    }
    true
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// A process in its own network namespace; killed and reaped on drop
/// (the namespace goes once the listener made in it is closed too).
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

/// The listener answers a connection made from inside `child`'s namespace
/// (from its loopback), and only that connection.
fn assert_proxy_reachable(child: &NsChild, listener: &TcpListener) {
    let addr = SocketAddr::V4(PROXY_ADDR);
    let client = std::thread::scope(|s| {
        let c = s.spawn(|| {
            child.inside(|| {
                let (r, took) = connect(addr);
                let mut stream = r.unwrap_or_else(|e| panic!("proxy {addr} unreachable: {e}"));
                assert!(took < FAST, "connecting to the proxy took {took:?}");
                stream.write_all(b"ping").unwrap();
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf).unwrap();
                buf
            })
        });
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong").unwrap();
        c.join().unwrap()
    });
    assert_eq!(&client, b"pong");
}

/// Nothing is waiting in the listener's accept queue.
fn assert_nothing_queued(listener: &TcpListener) {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the listener got a connection from {peer}"),
        Err(e) => panic!("accept: {e}"),
    }
    listener.set_nonblocking(false).unwrap();
}

#[test]
fn the_agent_has_only_loopback_and_the_proxy() {
    let test = "the_agent_has_only_loopback_and_the_proxy";
    if !available(test) {
        return;
    }
    // A host service on every address, which the agent must not reach.
    let host_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let service_port = host_service.local_addr().unwrap().port();
    let child = NsChild::spawn();
    let listener = netns::setup(NsTarget::Pid(child.pid()), PROXY_ADDR).unwrap();
    assert_eq!(listener.local_addr().unwrap(), SocketAddr::V4(PROXY_ADDR));

    // Loopback only, up, and no route anywhere.
    let links = child.exec(&["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:") && links.contains(",UP"), "{links}");
    let routes = child.exec(&["ip", "route"]) + &child.exec(&["ip", "-6", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    // The rules are in the agent's namespace, as generated.
    let table = child.exec(&["nft", "list", "table", "inet", netns::AGENT_TABLE]);
    assert!(table.contains("oifname \"lo\" accept"), "{table}");
    assert!(table.contains("policy drop"), "{table}");

    // The proxy is on the agent's loopback...
    assert_proxy_reachable(&child, &listener);
    // ...and not on the host's: a host connection to 127.0.0.1:61213 never
    // reaches it (whether something else of the host listens there or not).
    let _ = TcpStream::connect_timeout(&SocketAddr::V4(PROXY_ADDR), Duration::from_millis(200));
    assert_nothing_queued(&listener);

    // Everything else fails fast: the host service by every host address
    // and by loopback (which is the agent's own), other loopback ports, and
    // IPv6.
    let mut targets: Vec<SocketAddr> = host_ipv4_addresses()
        .into_iter()
        .map(|a| SocketAddr::V4(SocketAddrV4::new(a, service_port)))
        .collect();
    targets.push(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::LOCALHOST,
        service_port,
    )));
    targets.push(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, 1),
        80,
    )));
    targets.push(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        service_port,
    ));
    targets.push(SocketAddr::new(
        IpAddr::V6("2001:db8::1".parse().unwrap()),
        443,
    ));
    for addr in &targets {
        assert_refused_fast(&child, *addr);
    }
    note(&format!("{test}: {} targets refused fast", targets.len()));
    // DNS over UDP, to loopback and to the host, fails fast too.
    assert_udp_refused_fast(&child, "127.0.0.1:53".parse().unwrap());
    for a in host_ipv4_addresses() {
        assert_udp_refused_fast(&child, SocketAddr::V4(SocketAddrV4::new(a, 53)));
    }
    // The host service saw none of it.
    assert_nothing_queued(&host_service);
    // Nothing of the run is in the host's namespace.
    let host = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&host.stdout).contains("table inet vallignus\n"),
        "the agent's table is in the host's namespace"
    );
}

#[test]
fn concurrent_agents_share_the_port_in_their_own_namespaces() {
    let test = "concurrent_agents_share_the_port_in_their_own_namespaces";
    if !available(test) {
        return;
    }
    let (a, b) = (NsChild::spawn(), NsChild::spawn());
    // One by pid, one by pidfd (the supervisor's way), set up at once.
    let pidfd = vallignus::sys::pidfd::pidfd_open(b.pid()).unwrap();
    let (la, lb) = std::thread::scope(|s| {
        let ta = s.spawn(|| netns::setup(NsTarget::Pid(a.pid()), PROXY_ADDR).unwrap());
        let tb = s.spawn(|| {
            netns::setup(
                NsTarget::Pidfd {
                    pidfd: pidfd.as_fd(),
                    pid: b.pid(),
                },
                PROXY_ADDR,
            )
            .unwrap()
        });
        (ta.join().unwrap(), tb.join().unwrap())
    });
    // Each agent's connection lands on its own listener only.
    assert_proxy_reachable(&a, &la);
    assert_nothing_queued(&lb);
    assert_proxy_reachable(&b, &lb);
    assert_nothing_queued(&la);
    // An agent that dies leaves the other's network as it was.
    drop(a);
    drop(la);
    assert_proxy_reachable(&b, &lb);
}

#[test]
fn the_callers_own_namespace_is_refused() {
    if !available("the_callers_own_namespace_is_refused") {
        return;
    }
    let me = std::process::id() as i32;
    match netns::setup(NsTarget::Pid(me), PROXY_ADDR) {
        Err(e @ NetError::SameNamespace { .. }) => {
            assert!(e.to_string().contains("own network namespace"), "{e}");
        }
        other => panic!("expected SameNamespace, got {other:?}"),
    }
    // A process that is gone: a clear error, not a panic.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id() as i32;
    gone.wait().unwrap();
    match netns::setup(NsTarget::Pid(pid), PROXY_ADDR) {
        Err(e @ NetError::OpenNamespace { .. }) => {
            assert!(
                e.to_string().contains(&format!("the agent (pid {pid})")),
                "{e}"
            );
        }
        other => panic!("expected OpenNamespace, got {other:?}"),
    }
}

#[test]
fn the_probe_builds_the_path_in_a_throwaway_namespace() {
    if !available("the_probe_builds_the_path_in_a_throwaway_namespace") {
        return;
    }
    netns::probe().unwrap();
    // It changed nothing here: the calling thread's namespace is the host's
    // and no table of it was added to the host.
    let host = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains("table inet vallignus\n"));
}

/// What the agent does to its own namespace changes nothing: with its
/// rules flushed, a veth pair of its own (both ends in its namespace) up
/// with an address and a default route through it, the host's addresses
/// and services stay out of reach (no link leads to the host: packets go
/// nowhere).
#[test]
fn the_agent_cannot_make_a_way_out_of_its_namespace() {
    let test = "the_agent_cannot_make_a_way_out_of_its_namespace";
    if !available(test) {
        return;
    }
    let host_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let service_port = host_service.local_addr().unwrap().port();
    let child = NsChild::spawn();
    let _listener = netns::setup(NsTarget::Pid(child.pid()), PROXY_ADDR).unwrap();
    child.exec(&["nft", "flush", "ruleset"]);
    let added = Command::new("nsenter")
        .args(["-t", &child.pid().to_string(), "-n", "--", "sh", "-c"])
        .arg(
            "ip link add vlgx0 type veth peer name vlgx1 && ip addr add 10.213.255.1/24 dev vlgx0 \
             && ip link set vlgx0 up && ip link set vlgx1 up && ip route add default dev vlgx0",
        )
        .status()
        .unwrap();
    if !added.success() {
        return common::skip(test, "cannot make a veth pair in the namespace");
    }
    for a in host_ipv4_addresses() {
        let addr = SocketAddr::V4(SocketAddrV4::new(a, service_port));
        let r = child.inside(|| TcpStream::connect_timeout(&addr, Duration::from_millis(500)));
        assert!(r.is_err(), "{addr} reached from the agent's namespace");
    }
    assert_nothing_queued(&host_service);
}
