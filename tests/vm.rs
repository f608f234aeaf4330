//! Controller limits (memory, pids, cpu): these need a cgroup v2 hierarchy
//! with the controllers enabled, which this hybrid host does not have, so
//! they run in the VM tier (scripts/vm/test) and skip elsewhere with the
//! reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// Whether the cgroup2 root offers `controllers` to vallignus's subtree.
fn controllers_available(test: &str, controllers: &[&str]) -> bool {
    if !cgroups_available(test) {
        return false;
    }
    let Some(mount) = cgroup2_mount() else {
        return false;
    };
    let offered = std::fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<&&str> = controllers
        .iter()
        .filter(|c| !offered.split_whitespace().any(|o| o == **c))
        .collect();
    if !missing.is_empty() {
        skip(
            test,
            &format!(
                "controllers {missing:?} are not enabled at {} (run it in the VM tier: scripts/vm/test)",
                mount.display()
            ),
        );
        return false;
    }
    true
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    if !controllers_available("memory_hog_is_oom_killed_and_reported", &["memory"]) {
        return;
    }
    let h = Home::new();
    // `tail` buffers a "line" of /dev/zero forever: an unbounded allocation.
    let o = h.run(&[
        "run",
        "-q",
        "--memory-max",
        "32M",
        "--memory-swap-max",
        "0",
        "--max-runtime",
        "60",
        "--",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "memory_oom");
    assert_eq!(s["termination_limit_value"], 32u64 << 20);
    assert!(s["termination_observed_value"].as_u64().unwrap() >= 1);
    assert!(s["stats"]["oom_kills"].as_u64().unwrap() >= 1);
    assert!(s["stats"]["memory_peak_bytes"].as_u64().unwrap() <= 33 << 20);
    assert_eq!(s["enforcement"]["memory.max"]["enforced"], true);
    assert_eq!(s["enforcement"]["memory.max"]["detail"], "33554432");
    let oom = h
        .events()
        .into_iter()
        .find(|e| e["type"] == "limit_event")
        .unwrap();
    assert_eq!(oom["kind"], "oom_kill");
    assert!(oom["counters"]["oom_kill"].as_u64().unwrap() >= 1);
}

#[test]
fn fork_bomb_is_contained_by_pids_max() {
    if !controllers_available("fork_bomb_is_contained_by_pids_max", &["pids"]) {
        return;
    }
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    // 200 forks against a cap of 50: forks fail once the cap is reached,
    // and the run ends when the shell exits (no timing involved).
    let script =
        format!("i=0; while [ $i -lt 200 ]; do sleep {m} & i=$((i+1)); done 2>/dev/null; exit 0");
    let o = h.run(&["run", "-q", "--pids-max", "50", "--", "sh", "-c", &script]);
    // dash gives up with status 2 when it cannot fork; either way it is the
    // agent's own exit, not vallignus ending the run.
    assert!(matches!(code(&o), 0 | 2), "{}: {}", code(&o), stderr(&o));
    assert_eq!(h.session_json()["status"], "finished");
    let s = h.session_json();
    // Hitting pids.max is recorded, but does not end the run by itself.
    assert!(s.get("termination_reason").is_none(), "{s}");
    assert!(s["stats"]["pids_peak"].as_u64().unwrap() <= 50);
    let ev = h
        .events()
        .into_iter()
        .find(|e| e["type"] == "limit_event")
        .unwrap();
    assert_eq!(ev["kind"], "pids_max");
    assert!(ev["count"].as_u64().unwrap() >= 1);
    assert_none_left(&m);
}

#[test]
fn cpu_max_throttles_a_busy_loop() {
    if !controllers_available("cpu_max_throttles_a_busy_loop", &["cpu"]) {
        return;
    }
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--cpu-max",
        "0.2",
        "--max-runtime",
        "2",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let s = h.session_json();
    let usage = s["stats"]["cpu_usage_usec"].as_u64().unwrap();
    let throttled = s["stats"]["cpu_throttled_usec"].as_u64().unwrap();
    // 2 s at 0.2 CPU is 0.4 s of CPU time; allow for start-up and teardown.
    assert!(usage < 900_000, "cpu usage {usage} us is not throttled");
    assert!(throttled > 0, "no throttled time recorded");
    assert_eq!(s["enforcement"]["cpu.max"]["detail"], "20000 100000");
}

#[test]
fn unavailable_controller_fails_closed_on_this_host() {
    if !cgroups_available("unavailable_controller_fails_closed_on_this_host") {
        return;
    }
    let Some(mount) = cgroup2_mount() else { return };
    let offered = std::fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap_or_default();
    if offered.split_whitespace().any(|c| c == "memory") {
        skip(
            "unavailable_controller_fails_closed_on_this_host",
            "the memory controller is available here",
        );
        return;
    }
    let h = Home::new();
    let o = h.run(&["run", "--memory-max", "64M", "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("memory"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("ran"));
    let o = h.run(&[
        "run",
        "-q",
        "--best-effort",
        "--memory-max",
        "64M",
        "--",
        "sh",
        "-c",
        "echo ran",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "ran\n");
    let listing: serde_json::Value =
        serde_json::from_slice(&h.run(&["sessions", "list", "--json"]).stdout).unwrap();
    let ran = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "finished")
        .unwrap();
    assert_eq!(ran["enforcement"]["memory.max"]["enforced"], false);
}

#[test]
fn bad_limit_values_are_rejected() {
    let h = Home::new();
    for args in [
        ["--cpu-max", "0"],
        ["--cpu-max", "abc"],
        ["--io-max", "sda rbps=1"],
        ["--memory-max", "lots"],
    ] {
        let o = h.run(&["run", args[0], args[1], "--", "true"]);
        assert_eq!(code(&o), 125, "{args:?}");
        assert!(stderr(&o).contains(args[0]), "{args:?}: {}", stderr(&o));
    }
}
