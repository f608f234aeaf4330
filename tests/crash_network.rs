//! A supervisor of a proxied run killed with SIGKILL: what is left of the
//! run has no network at all (the proxy's socket died with the supervisor,
//! and nothing of the run exists outside its namespace), and the next start
//! kills what is left, so the namespace goes too. In its own test binary so
//! that no concurrent vallignus start reaps the orphan first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::clients::network_available;
use common::*;

#[test]
fn a_proxied_run_whose_supervisor_died_has_no_network_and_is_reaped() {
    let test = "a_proxied_run_whose_supervisor_died_has_no_network_and_is_reaped";
    if !network_available(test) {
        return;
    }
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    let id_file = h.path().join("id");
    let script = format!("sleep {m} & sleep {m}");
    let mut child = h
        .run_sh(&["--allow-domain", "api.example.test"], &id_file, &script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_event(&h, &id_file, "process_started");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Both sleeps are in the run's namespace.
    let sleeps = || sleeps_with(&m);
    let leftover = loop {
        if let Some(&pid) = sleeps().first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the sleeps never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Held open to the end: it keeps the namespace (and so its number)
    // from being reused by another namespace while the test looks for it.
    let _pinned = std::fs::File::open(format!("/proc/{leftover}/ns/net")).unwrap();
    let netns = std::fs::read_link(format!("/proc/{leftover}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        ours.to_string_lossy(),
        netns,
        "the agent has its own namespace"
    );

    // While the supervisor lives, the proxy listens in the agent's namespace.
    let probe = |pid: i32| {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsFd;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let addr: SocketAddr = "127.0.0.1:61213".parse().unwrap();
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop)
            })
            .join()
            .unwrap()
        })
    };
    probe(leftover).expect("the proxy listens while the supervisor lives");

    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let left = sleeps();
    assert!(
        !left.is_empty(),
        "expected the background sleep to be left over"
    );
    // The proxy's socket went with the supervisor: nothing listens.
    let gone = probe(left[0]).expect_err("the proxy outlived its supervisor");
    assert_eq!(gone.kind(), std::io::ErrorKind::ConnectionRefused, "{gone}");

    // The next start kills the leftovers; no process is left in the
    // namespace, which the kernel then removes.
    let o = h.run(&["sessions", "list"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("marked interrupted"), "{}", stderr(&o));
    assert_none_left(&m);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_in_netns(&netns).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left in the run's namespace: {:?}",
            processes_in_netns(&netns)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
