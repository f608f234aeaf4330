//! vallignus run by an unprivileged user: without a delegated cgroup it
//! fails closed and says what is missing; with --best-effort it isolates
//! the agent with a user namespace and records what it could not enforce.
//! Needs root to switch to `nobody` (setpriv); skipped with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    home: std::path::PathBuf,
    cwd: std::path::PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    if !is_root() {
        skip(test, "needs root to switch to nobody");
        return None;
    }
    if !Path::new("/usr/bin/setpriv").exists() {
        skip(test, "setpriv is not installed");
        return None;
    }
    let max: u64 = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if max == 0 {
        skip(test, "user namespaces are disabled");
        return None;
    }
    // Everything nobody needs, outside /tmp (the agent's /tmp is private)
    // and readable by nobody: the binary, a home, a working directory.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("vallignus");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let cwd = dir.path().join("work");
    for d in [&home, &cwd] {
        std::fs::create_dir(d).unwrap();
        nix::unistd::chown(
            d.as_path(),
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    Some(Setup {
        _dir: dir,
        bin,
        home,
        cwd,
    })
}

fn as_nobody(s: &Setup, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&s.bin)
        .args(args)
        .current_dir(&s.cwd)
        .env("VALLIGNUS_HOME", &s.home)
        .env("HOME", &s.home)
        .env_remove("VALLIGNUS_CGROUP_ROOT")
        .stdin(std::process::Stdio::null());
    output_with_timeout(&mut cmd, std::time::Duration::from_secs(60))
}

#[test]
fn unprivileged_without_cgroup_fails_closed() {
    let Some(s) = setup("unprivileged_without_cgroup_fails_closed") else {
        return;
    };
    let o = as_nobody(&s, &["run", "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("VALLIGNUS_CGROUP_ROOT"),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("ran"));
}

#[test]
fn unprivileged_best_effort_uses_a_user_namespace() {
    let Some(s) = setup("unprivileged_best_effort_uses_a_user_namespace") else {
        return;
    };
    let o = as_nobody(
        &s,
        &[
            "run",
            "-q",
            "--best-effort",
            "--isolation",
            "standard",
            "--",
            "sh",
            "-c",
            "echo pid=$$; ls /proc | grep -c '^[0-9]'",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("pid=2\n"), "{out}");
    let listing = as_nobody(&s, &["sessions", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let e = &v[0]["enforcement"];
    assert_eq!(e["cgroup"]["enforced"], false);
    assert!(e["namespaces"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("user,pid"));
    assert_eq!(e["landlock"]["enforced"], true);
    // --user needs root: a clear error, not a silent downgrade.
    let o = as_nobody(
        &s,
        &["run", "--best-effort", "--user", "nobody", "--", "true"],
    );
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("--user needs root"), "{}", stderr(&o));
}
