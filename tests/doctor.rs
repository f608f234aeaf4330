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
        "proxy namespace",
    ] {
        assert!(check(&report, name)["detail"].as_str().is_some(), "{name}");
    }
    assert_eq!(rc == 0, report["run"]["would_start"] == true);
    // As root with nft, the proxy's path is built for real and must work
    // here (the network tests run on this machine).
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if is_root() && nft {
        let c = check(&report, "proxy namespace");
        assert_eq!(c["ok"], true, "{c}");
    }
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

/// For each set of run flags, doctor's verdict is run's: the flags go
/// through the same resolution and the same checks before anything starts.
#[test]
fn doctor_agrees_with_run_for_every_kind_of_flag() {
    let test = "doctor_agrees_with_run_for_every_kind_of_flag";
    if !cgroups_available(test) {
        return;
    }
    let h = Home::new();
    let cases: &[&[&str]] = &[
        &[],
        &["--isolation", "standard", "--user", "nobody"],
        &["--unshare", "user,pid", "--user", "nobody"],
        &["--isolation", "strict"],
        &["--memory-max", "64M", "--pids-max", "50"],
        &["--seccomp", "/nonexistent/profile.json"],
        &["--alert-webhook", "https://alerts.example.test/x"],
        &["--rw", "/nonexistent/dir"],
        &["--allow-domain", "api.example.test"],
        &["--allow-domain", "bad..domain"],
        &[
            "--allow-domain",
            "api.example.test",
            "--credential",
            "K=VALLIGNUS_DOCTOR_TEST_UNSET@api.example.test",
        ],
        &["--token", "vl1.garbage"],
        &[
            "--prices",
            "/nonexistent/prices.yaml",
            "--allow-domain",
            "a.test",
        ],
    ];
    for flags in cases {
        let (rc, report) = doctor(&h, flags);
        let mut args = vec!["run", "-q"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "true"]);
        let o = h.run(&args);
        assert_eq!(
            rc == 0,
            code(&o) == 0,
            "doctor and run disagree on {flags:?}: doctor {report}, run exit {} {}",
            code(&o),
            stderr(&o)
        );
        assert_eq!(report["run"]["would_start"] == true, rc == 0, "{report}");
        if rc != 0 {
            assert!(
                !report["run"]["problems"][0]
                    .as_str()
                    .unwrap_or("")
                    .is_empty(),
                "{flags:?}: no reason given: {report}"
            );
        }
    }
}
