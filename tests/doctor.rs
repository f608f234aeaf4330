//! `vallignus doctor`: reports what the host can enforce, consistently with
//! what `run` then does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn doctor(h: &Home, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["doctor", "--json"];
    args.extend_from_slice(extra);
    let o = h.run(&args);
    (code(&o), serde_json::from_slice(&o.stdout).unwrap())
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[test]
fn doctor_reports_every_layer() {
    let h = Home::new();
    let (rc, report) = doctor(&h, &[]);
    for name in [
        "kernel",
        "cgroup2",
        "cgroup.kill",
        "controller memory",
        "controller pids",
        "user namespaces",
        "landlock",
        "seccomp",
        "nft",
        "veth",
    ] {
        assert!(check(&report, name)["detail"].as_str().is_some(), "{name}");
    }
    assert_eq!(rc == 0, report["run"]["would_start"] == true);
}

#[test]
fn doctor_agrees_with_run_about_controllers() {
    if !cgroups_available("doctor_agrees_with_run_about_controllers") {
        return;
    }
    let h = Home::new();
    let (rc, report) = doctor(&h, &["--memory-max", "64M"]);
    let memory_ok = check(&report, "controller memory")["ok"] == true;
    assert_eq!(rc == 0, memory_ok, "{report}");
    let o = h.run(&["run", "-q", "--memory-max", "64M", "--", "true"]);
    assert_eq!(
        code(&o) == 0,
        memory_ok,
        "doctor and run disagree: {}",
        stderr(&o)
    );
    if !memory_ok {
        let problems = report["run"]["problems"].to_string();
        assert!(problems.contains("memory"), "{problems}");
        let (rc, _) = doctor(&h, &["--memory-max", "64M", "--best-effort"]);
        assert_eq!(rc, 0);
    }
}

#[test]
fn doctor_checks_a_policy_file() {
    let h = Home::new();
    let bad = h.path().join("bad.yaml");
    std::fs::write(&bad, "constraints:\n  pids: 0\n").unwrap();
    let (rc, report) = doctor(&h, &["--policy", bad.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(
        report["run"]["problems"].to_string().contains("pids"),
        "{report}"
    );
}
