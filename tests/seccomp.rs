//! The seccomp profiles, installed for real.
//!
//! How: each test re-runs this test binary with only `probe_child` selected
//! and `VALLIGNUS_SECCOMP_PROBE=<profile>` set. In that fresh process
//! `probe_child` compiles the profile and installs it with
//! `isolation::seccomp::install` (what the supervisor's child does before
//! `execve`), then tries the denied calls and runs ordinary programs, and
//! prints one `PROBE name=outcome` line per probe; the parent test asserts
//! on those lines. Re-executing the test binary needs no `unsafe` (a
//! `pre_exec` hook or a fork would, and only src/sys may have it), no extra
//! binary shipped in the crate (a `src/bin/` helper would be) and no guessing
//! of an example's path (`CARGO_BIN_EXE_*` exists only for `[[bin]]`s).
//!
//! Seccomp without TSYNC filters only the calling thread: the probe installs
//! on its own test thread and makes every call, thread and program from
//! there, so all of them are filtered (children inherit the filter);
//! libtest's other threads stay unfiltered and do not matter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
use vallignus::isolation::seccomp::{self, Profile};
use vallignus::sys::probe;

const PROBE_ENV: &str = "VALLIGNUS_SECCOMP_PROBE";

// ---------------------------------------------------------------- child side

/// The probe. A no-op in a normal test run (the variable is not set).
#[test]
fn probe_child() {
    let Ok(name) = std::env::var(PROBE_ENV) else {
        return;
    };
    let profile: Profile = name.parse().unwrap();
    let compiled = seccomp::compile(&profile).unwrap();
    if let Some(compiled) = &compiled {
        seccomp::install(compiled).unwrap();
    }
    let report = |probe: &str, outcome: String| println!("PROBE {probe}={outcome}");
    report("installed", compiled.is_some().to_string());

    let port = serve_hello();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let tmp = tempfile::tempdir().unwrap();

    report(
        "mount",
        errno(nix::mount::mount(
            Some("none"),
            "/nonexistent-vallignus-probe",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )),
    );
    report(
        "umount2",
        errno(nix::mount::umount2(
            "/nonexistent-vallignus-probe",
            nix::mount::MntFlags::empty(),
        )),
    );
    report(
        "unshare_newuser",
        errno(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)),
    );
    report(
        "unshare_newns",
        errno(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)),
    );
    report(
        "clone_newuser",
        errno(probe::clone_and_exit(libc::CLONE_NEWUSER as u64)),
    );
    report(
        "clone_newnet",
        errno(probe::clone_and_exit(libc::CLONE_NEWNET as u64)),
    );
    report("clone_plain", errno(probe::clone_and_exit(0)));
    report("clone3", errno(probe::clone3_empty()));
    let uts = std::fs::File::open("/proc/self/ns/uts").unwrap();
    report(
        "setns",
        errno(nix::sched::setns(
            uts.as_fd(),
            nix::sched::CloneFlags::CLONE_NEWUTS,
        )),
    );
    report("io_uring_setup", errno(probe::io_uring_setup()));
    report("bpf", errno(probe::bpf()));
    report("tiocsti", errno(probe::tiocsti(devnull.as_fd(), 0)));
    report(
        "tiocsti_high_bits",
        errno(probe::tiocsti(devnull.as_fd(), 1)),
    );
    report("tioclinux", errno(probe::tioclinux(devnull.as_fd())));
    report("setxattrat", errno(probe::setxattrat_invalid()));
    #[cfg(target_arch = "x86_64")]
    report("x32_getpid", errno(probe::x32_getpid()));
    report("personality_query", errno(nix::sys::personality::get()));
    report(
        "personality_no_aslr",
        errno(nix::sys::personality::set(
            nix::sys::personality::Persona::ADDR_NO_RANDOMIZE,
        )),
    );
    report(
        "chroot",
        errno(nix::unistd::chroot("/nonexistent-vallignus-probe")),
    );
    report(
        "mknod_chr",
        errno(nix::sys::stat::mknod(
            &tmp.path().join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        )),
    );
    report(
        "mknod_fifo",
        errno(nix::sys::stat::mknod(
            &tmp.path().join("fifo"),
            nix::sys::stat::SFlag::S_IFIFO,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )),
    );

    let sock = |family, ty, proto: Option<SockProtocol>| {
        errno(socket(family, ty, SockFlag::SOCK_CLOEXEC, proto))
    };
    report(
        "socket_packet",
        sock(AddressFamily::Packet, SockType::Raw, None),
    );
    report(
        "socket_inet_raw",
        sock(AddressFamily::Inet, SockType::Raw, Some(SockProtocol::Icmp)),
    );
    report(
        "socket_inet6_raw",
        sock(
            AddressFamily::Inet6,
            SockType::Raw,
            Some(SockProtocol::IcmpV6),
        ),
    );
    report(
        "socket_netlink_route",
        sock(
            AddressFamily::Netlink,
            SockType::Raw,
            Some(SockProtocol::NetlinkRoute),
        ),
    );
    report(
        "socket_netlink_sock_diag",
        sock(
            AddressFamily::Netlink,
            SockType::Raw,
            Some(SockProtocol::NetlinkSockDiag),
        ),
    );
    report(
        "socket_netlink_audit",
        sock(
            AddressFamily::Netlink,
            SockType::Raw,
            Some(SockProtocol::NetlinkAudit),
        ),
    );
    report(
        "socket_alg",
        sock(AddressFamily::Alg, SockType::SeqPacket, None),
    );
    report(
        "socket_inet_stream",
        sock(AddressFamily::Inet, SockType::Stream, None),
    );
    report(
        "socket_inet_dgram",
        sock(AddressFamily::Inet, SockType::Datagram, None),
    );
    report(
        "socket_unix",
        sock(AddressFamily::Unix, SockType::Stream, None),
    );

    // A thread (clone without namespace flags, after clone3 gets ENOSYS) is
    // created and inherits the filter.
    let in_thread = std::thread::spawn(|| {
        errno(nix::mount::mount(
            Some("none"),
            "/nonexistent-vallignus-probe",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ))
    })
    .join();
    report(
        "thread_mount",
        in_thread.unwrap_or_else(|_| "thread panicked".into()),
    );
    report("tcp_connect", tcp_get(port));

    let port_arg = port.to_string();
    report(
        "sh",
        program(
            "sh",
            &["-c", "echo ok; (echo sub); echo pipe | cat"],
            "ok\nsub\npipe\n",
        ),
    );
    report(
        "python_print",
        program("python3", &["-c", "print(1)"], "1\n"),
    );
    report(
        "python_agent",
        program("python3", &["-c", PYTHON_AGENT, &port_arg], "ok\n"),
    );
    report("curl_version", program("curl", &["--version"], ""));
    let url = format!("http://127.0.0.1:{port}/");
    report(
        "curl_get",
        program(
            "curl",
            &["-sS", "--noproxy", "*", "--max-time", "10", &url],
            "hello",
        ),
    );
    report(
        "node_agent",
        program("node", &["-e", NODE_AGENT, &port_arg], "ok\n"),
    );
    report(
        "node_interfaces",
        program("node", &["-e", NODE_INTERFACES], "ok\n"),
    );

    report("ptrace_traceme", errno(probe::ptrace_traceme_in_child()));
    report("done", "true".into());
}

/// What an agent process typically does: fork, threads, subprocesses, name
/// resolution (glibc's getaddrinfo asks netlink, and copes without it), HTTP.
const PYTHON_AGENT: &str = r#"
import os, socket, subprocess, sys, threading, urllib.request
pid = os.fork()
if pid == 0:
    os._exit(7)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
t = threading.Thread(target=lambda: None); t.start(); t.join()
assert subprocess.run(["true"]).returncode == 0
assert socket.getaddrinfo("localhost", 80)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
body = opener.open("http://127.0.0.1:%s/" % sys.argv[1], timeout=10).read()
assert body == b"hello", body
print("ok")
"#;

/// Node: its thread pool and a worker thread (clone3, then clone), a child
/// process, and an HTTP request.
const NODE_AGENT: &str = r#"
const http = require('http'), cp = require('child_process');
const { Worker } = require('worker_threads');
cp.execSync('true');
new Worker('1', { eval: true }).on('exit', () => {
  http.get('http://127.0.0.1:' + process.argv[1] + '/', (r) => {
    let b = ''; r.on('data', (d) => b += d);
    r.on('end', () => console.log(b === 'hello' ? 'ok' : 'bad body ' + b));
  }).on('error', (e) => console.log('error ' + e));
});
"#;

/// `os.networkInterfaces()` reads NETLINK_ROUTE (getifaddrs).
const NODE_INTERFACES: &str = r#"
const n = Object.keys(require('os').networkInterfaces()).length;
console.log(n > 0 ? 'ok' : 'none');
"#;

fn errno<T, E: std::fmt::Debug>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Run a program from the filtered thread: `ok` when it exits 0 and its
/// stdout starts with `expect`, `missing` when it is not installed, else
/// what went wrong (on one line).
fn program(name: &str, args: &[&str], expect: &str) -> String {
    if Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null")])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return "missing".into();
    }
    let out = common::output_with_timeout(
        Command::new(name).args(args).stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.starts_with(expect) {
        "ok".into()
    } else {
        format!(
            "failed ({}) stdout {:?} stderr {:?}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
        .replace('\n', "\\n")
    }
}

/// A tiny HTTP server on 127.0.0.1 answering `hello` to everything.
fn serve_hello() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
        }
    });
    port
}

fn tcp_get(port: u16) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    match attempt() {
        Ok(body) if body.ends_with("hello") => "ok".into(),
        Ok(body) => format!("bad response {body:?}"),
        Err(e) => e.to_string(),
    }
}

// --------------------------------------------------------------- parent side

/// Run the probe under `profile`; `None` (with a printed reason) where this
/// kernel has no seccomp filtering.
fn probe(test: &str, profile: &str) -> Option<BTreeMap<String, String>> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        common::skip(
            test,
            "the kernel has no seccomp (no Seccomp: in /proc/self/status)",
        );
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let out = common::output_with_timeout(
        Command::new(exe)
            .args(["--exact", "probe_child", "--nocapture", "--test-threads=1"])
            .env(PROBE_ENV, profile)
            .stdin(Stdio::null()),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe under {profile} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: BTreeMap<String, String> = stdout
        .lines()
        // The first line follows libtest's "test probe_child ... ".
        .filter_map(|l| l.split_once("PROBE ").map(|(_, probe)| probe))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(
        results.contains_key("done"),
        "probe did not finish:\n{stdout}"
    );
    Some(results)
}

fn expect(results: &BTreeMap<String, String>, profile: &str, wanted: &[(&str, &str)]) {
    let mut wrong = Vec::new();
    for (probe, outcome) in wanted {
        let got = results
            .get(*probe)
            .map(String::as_str)
            .unwrap_or("(not run)");
        if got != *outcome {
            wrong.push(format!("{probe}: expected {outcome}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "under {profile}:\n{}", wrong.join("\n"));
}

/// Programs must work (`ok`); one that is not installed is skipped, loudly.
fn expect_programs(test: &str, results: &BTreeMap<String, String>, profile: &str, names: &[&str]) {
    let mut wanted = Vec::new();
    for name in names {
        match results.get(*name).map(String::as_str) {
            Some("missing") => common::skip(test, &format!("{name}: program not installed")),
            _ => wanted.push((*name, "ok")),
        }
    }
    expect(results, profile, &wanted);
}

/// Denied by both shipped profiles, with EPERM (ENOSYS for clone3).
const DENIED_BY_DEFAULT: &[(&str, &str)] = &[
    ("installed", "true"),
    ("ptrace_traceme", "EPERM"),
    ("mount", "EPERM"),
    ("umount2", "EPERM"),
    ("unshare_newuser", "EPERM"),
    ("unshare_newns", "EPERM"),
    ("clone_newuser", "EPERM"),
    ("clone_newnet", "EPERM"),
    ("clone3", "ENOSYS"),
    ("setns", "EPERM"),
    ("io_uring_setup", "EPERM"),
    ("bpf", "EPERM"),
    ("tiocsti", "EPERM"),
    ("tiocsti_high_bits", "EPERM"),
    ("tioclinux", "EPERM"),
    ("setxattrat", "ENOSYS"),
    ("personality_no_aslr", "EPERM"),
    ("socket_packet", "EPERM"),
    ("socket_inet_raw", "EPERM"),
    ("socket_inet6_raw", "EPERM"),
    ("socket_netlink_sock_diag", "EPERM"),
    ("socket_netlink_audit", "EPERM"),
    ("thread_mount", "EPERM"),
];

/// Allowed by both shipped profiles.
const ALLOWED: &[(&str, &str)] = &[
    ("clone_plain", "ok"),
    ("personality_query", "ok"),
    ("mknod_fifo", "ok"),
    ("socket_inet_stream", "ok"),
    ("socket_inet_dgram", "ok"),
    ("socket_unix", "ok"),
    ("tcp_connect", "ok"),
];

const PROGRAMS: &[&str] = &[
    "sh",
    "python_print",
    "python_agent",
    "curl_version",
    "curl_get",
    "node_agent",
];

#[test]
fn default_profile_denies_escapes_and_keeps_agents_working() {
    let test = "default_profile_denies_escapes_and_keeps_agents_working";
    let Some(r) = probe(test, "default") else {
        return;
    };
    expect(&r, "default", DENIED_BY_DEFAULT);
    expect(&r, "default", ALLOWED);
    // NETLINK_ROUTE stays (getifaddrs); AF_ALG is only denied by strict
    // (here the kernel answers, with a socket or EAFNOSUPPORT).
    expect(&r, "default", &[("socket_netlink_route", "ok")]);
    assert_ne!(r.get("socket_alg").map(String::as_str), Some("EPERM"));
    expect_programs(test, &r, "default", PROGRAMS);
    expect_programs(test, &r, "default", &["node_interfaces"]);
    x32_is_denied(test, &r);
}

#[test]
fn strict_profile_also_denies_netlink_devices_and_chroot() {
    let test = "strict_profile_also_denies_netlink_devices_and_chroot";
    let Some(r) = probe(test, "strict") else {
        return;
    };
    expect(&r, "strict", DENIED_BY_DEFAULT);
    expect(&r, "strict", ALLOWED);
    expect(
        &r,
        "strict",
        &[
            ("socket_netlink_route", "EPERM"),
            ("socket_alg", "EPERM"),
            ("chroot", "EPERM"),
            ("mknod_chr", "EPERM"),
        ],
    );
    // glibc's getaddrinfo (python_agent) copes without netlink; Node's
    // os.networkInterfaces() does not (documented in seccomp-profiles/).
    expect_programs(test, &r, "strict", PROGRAMS);
    if r.get("node_interfaces").map(String::as_str) == Some("ok") {
        panic!("node's os.networkInterfaces() worked without netlink: update the README");
    }
    x32_is_denied(test, &r);
}

/// Without a filter the same probes fail differently (or succeed): the
/// EPERMs above come from the filter, not from the kernel or missing rights.
#[test]
fn none_profile_installs_nothing() {
    let test = "none_profile_installs_nothing";
    let Some(r) = probe(test, "none") else { return };
    expect(
        &r,
        "none",
        &[
            ("installed", "false"),
            ("tiocsti", "ENOTTY"),
            ("tiocsti_high_bits", "ENOTTY"),
            ("tioclinux", "ENOTTY"),
            ("clone3", "EINVAL"),
            ("personality_no_aslr", "ok"),
            ("ptrace_traceme", "ok"),
            ("socket_netlink_route", "ok"),
            (
                "thread_mount",
                r.get("mount").map(String::as_str).unwrap_or("?"),
            ),
        ],
    );
    expect(&r, "none", ALLOWED);
    if nix::unistd::geteuid().is_root() {
        expect(
            &r,
            "none",
            &[
                ("mount", "ENOENT"),
                ("socket_packet", "ok"),
                ("socket_inet_raw", "ok"),
                ("clone_newuser", "ok"),
                ("chroot", "ENOENT"),
            ],
        );
    }
    expect_programs(test, &r, "none", PROGRAMS);
}

/// The guard's ENOSYS for x32 numbers is only observable where the kernel
/// runs x32 calls at all.
fn x32_is_denied(test: &str, r: &BTreeMap<String, String>) {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    match probe::x32_getpid() {
        Ok(_) => expect(r, test, &[("x32_getpid", "ENOSYS")]),
        Err(_) => common::skip(
            test,
            "x32 check: this kernel has no x32 ABI (CONFIG_X86_X32_ABI)",
        ),
    }
}
