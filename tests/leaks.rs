//! A run that fails before its agent starts must not leave its cgroup
//! behind. In its own test binary: every vallignus start reaps the cgroups
//! of dead supervisors, so a concurrent test's run would hide a leak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn a_run_that_fails_to_start_leaves_no_cgroup() {
    if !cgroups_available("a_run_that_fails_to_start_leaves_no_cgroup") {
        return;
    }
    let h = Home::new();
    let id_file = h.path().join("id");
    for args in [
        vec!["--rw", "/nonexistent/path"],
        vec!["--seccomp", "/nonexistent/profile.json"],
        vec![],
    ] {
        let mut full = vec!["run", "-q", "--session-id-file", id_file.to_str().unwrap()];
        full.extend(args.iter().copied());
        full.extend(["--", "/no/such/agent"]);
        let o = h.run(&full);
        assert!(matches!(code(&o), 125 | 127), "{args:?}: {}", stderr(&o));
        let id = std::fs::read_to_string(&id_file).unwrap_or_default();
        let base = cgroup2_mount().unwrap().join("vallignus");
        let left: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !id.trim().is_empty() && n.ends_with(id.trim()))
            .collect();
        assert!(left.is_empty(), "{args:?} left cgroups behind: {left:?}");
    }
}
