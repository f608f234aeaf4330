//! A supervisor killed with SIGKILL: the next vallignus removes its cgroup
//! (killing what was left in it) and marks its session interrupted. In its
//! own test binary so that no concurrent run of another test reaps the
//! orphan first (every vallignus start reaps dead supervisors' cgroups).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn sigkilled_supervisor_is_cleaned_up_by_the_next_start() {
    if !cgroups_available("sigkilled_supervisor_is_cleaned_up_by_the_next_start") {
        return;
    }
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    let id_file = h.path().join("id");
    let script = format!("sleep {m} & sleep {m}");
    let mut child = h
        .run_sh(&[], &id_file, &script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_event(&h, &id_file, "process_started");
    // `process_started` means `sh` was exec'd, not that it has forked the
    // background sleep yet (slow under TCG): wait for both sleeps to exist.
    let sleeps = || sleeps_with(&m).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sleeps() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two sleeps never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = h.session_json();
    let cgroup = std::path::PathBuf::from(s["supervisor"]["cgroup"].as_str().unwrap());
    assert!(cgroup.exists());
    child.kill().unwrap();
    child.wait().unwrap();
    // The direct child dies with its supervisor (PDEATHSIG); the background
    // sleep is still in the orphaned cgroup until the next vallignus runs.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !pids_with(&m).is_empty(),
        "expected the background sleep to be left over"
    );
    let o = h.run(&["sessions", "list"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("marked interrupted"), "{}", stderr(&o));
    assert!(!cgroup.exists(), "orphaned cgroup was not removed");
    assert_none_left(&m);
    let s = h.session_json();
    assert_eq!(s["status"], "interrupted");
    assert_eq!(s["termination_reason"], "supervisor_lost");
    assert!(stdout(&o).contains("interrupted"));
}
