//! Landlock enforcement on this kernel (tier 2: needs landlock ABI >= 3, skipped with a
//! printed reason otherwise).
//!
//! How: landlock restricts the calling thread and every process it starts afterwards, for
//! good. Restricting a thread of this libtest process would sandbox whatever test runs on
//! it next, so each test re-executes this binary with `--exact child_probe` and
//! `VALLIGNUS_LANDLOCK_PROBE` set. In that fresh process the `child_probe` test builds the
//! policy, runs `prepare` and `restrict_self` (as the supervisor and the child will), then
//! makes every probe from that same thread (the `execve` probes spawn from it and so
//! inherit the domain) and prints one `landlock-probe: NAME=RESULT` line each; the parent
//! test asserts on those lines. libtest's other threads in the child stay unrestricted but
//! do nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vallignus::isolation::landlock::{
    prepare, restrict_self, Defaults, FsContext, FsFlags, FsPolicy, Requirement,
};

const CHILD_ENV: &str = "VALLIGNUS_LANDLOCK_PROBE";
const EACCES: &str = "errno13";
/// Prefix of the child's result lines.
const PROBE: &str = "landlock-probe: ";

/// Runs the probes of `mode` in a restricted re-exec of this binary.
fn probe_in_child(mode: &str, cwd: &Path, envs: &[(&str, &Path)]) -> HashMap<String, String> {
    let mut all: Vec<(&str, &std::ffi::OsStr)> = vec![(CHILD_ENV, mode.as_ref())];
    all.extend(envs.iter().map(|(k, v)| (*k, v.as_os_str())));
    let out = common::reexec_test("child_probe", cwd, &all);
    let stdout = common::stdout(&out);
    assert!(
        out.status.success(),
        "probe child failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        common::stderr(&out)
    );
    let probes: HashMap<String, String> = stdout
        .lines()
        // The first probe line may follow libtest's "test child_probe ... " on one line.
        .filter_map(|l| l.find(PROBE).map(|i| &l[i + PROBE.len()..]))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(!probes.is_empty(), "no probe output:\n{stdout}");
    probes
}

fn assert_probe(probes: &HashMap<String, String>, name: &str, want: &str) {
    assert_eq!(
        probes.get(name).map(String::as_str),
        Some(want),
        "probe {name}; all: {probes:?}"
    );
}

fn copy_true(dir: &Path) -> PathBuf {
    let dst = dir.join("true-copy");
    fs::copy("/bin/true", &dst).unwrap();
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

#[test]
fn landlock_policy_is_enforced_in_a_child() {
    let test = "landlock_policy_is_enforced_in_a_child";
    if !common::landlock_available(test) {
        return;
    }
    let rw = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let vhome = tempfile::tempdir().unwrap();
    fs::write(other.path().join("secret.txt"), "secret").unwrap();
    copy_true(other.path());
    copy_true(rw.path());
    fs::create_dir(vhome.path().join("keys")).unwrap();
    fs::write(vhome.path().join("keys/signing.key"), "key").unwrap();
    let etc_probe = PathBuf::from(format!(
        "/etc/vallignus-landlock-probe-{}",
        std::process::id()
    ));

    let probes = probe_in_child(
        "basic",
        rw.path(),
        &[
            ("PROBE_OTHER", other.path()),
            ("PROBE_ETC", &etc_probe),
            // The real lookups: the vallignus home and the user's home come from here.
            ("VALLIGNUS_HOME", vhome.path()),
            ("HOME", other.path()),
        ],
    );
    let leaked = etc_probe.exists();
    let _ = fs::remove_file(&etc_probe);
    assert!(!leaked, "the child wrote {}", etc_probe.display());

    assert_probe(&probes, "restrict", "ok");
    // Another directory (here also $HOME): no read, no listing, no write, no exec.
    assert_probe(&probes, "read_other", EACCES);
    assert_probe(&probes, "list_other", EACCES);
    assert_probe(&probes, "write_other", EACCES);
    assert_probe(&probes, "truncate_other", EACCES);
    assert_probe(&probes, "exec_other", EACCES);
    // System dirs: readable and executable, not writable (root's DAC would allow it).
    assert_probe(&probes, "read_etc_hostname", "ok");
    assert_probe(&probes, "write_etc", EACCES);
    assert_probe(&probes, "exec_bin_true", "ok");
    // The working directory: read-write, executable.
    assert_probe(&probes, "write_rw", "ok");
    assert_probe(&probes, "read_rw", "ok");
    assert_probe(&probes, "mkdir_rw", "ok");
    assert_probe(&probes, "exec_rw", "ok");
    // The vallignus home: nothing.
    assert_probe(&probes, "read_vhome_key", EACCES);
    assert_probe(&probes, "list_vhome", EACCES);
    // Devices from the default set.
    assert_probe(&probes, "write_dev_null", "ok");
    assert_probe(&probes, "read_dev_urandom", "ok");
}

/// What the lead's private `/tmp` and `/proc` need: a rule made before a mount does not
/// cover the filesystem mounted over its path; `reapply_after_mounts` fixes that.
#[test]
fn landlock_rules_must_be_reapplied_over_filesystems_mounted_later() {
    let test = "landlock_rules_must_be_reapplied_over_filesystems_mounted_later";
    if !common::landlock_available(test) {
        return;
    }
    if !common::is_root() {
        common::skip(test, "needs root to mount a tmpfs in a new mount namespace");
        return;
    }
    let rw = tempfile::tempdir().unwrap();
    let rw2 = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let probes = probe_in_child(
        "mount",
        rw.path(),
        &[("PROBE_OTHER", other.path()), ("PROBE_RW2", rw2.path())],
    );
    assert_probe(&probes, "mount", "ok");
    assert_probe(&probes, "reapply", "ok");
    assert_probe(&probes, "restrict", "ok");
    // A tmpfs over the working directory, rule reapplied: writable (as /tmp will be) ...
    assert_probe(&probes, "write_rw_tmpfs", "ok");
    // ... over an --rw dir whose rule was not reapplied: the old rule does not reach it ...
    assert_probe(&probes, "write_rw2_tmpfs_not_reapplied", EACCES);
    // ... and over an unruled directory: out of reach.
    assert_probe(&probes, "write_other_tmpfs", EACCES);
    // The mounts were private to the child.
    assert!(fs::read_dir(rw.path()).unwrap().next().is_none());
}

fn result<T>(r: io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno{}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn exec(path: &Path) -> String {
    match Command::new(path).status() {
        Ok(s) if s.success() => "ok".into(),
        Ok(s) => format!("exit {s}"),
        Err(e) => result::<()>(Err(e)),
    }
}

fn probe(name: &str, value: String) {
    println!("{PROBE}{name}={value}");
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap())
}

/// The restricted half: does nothing unless re-executed by one of the tests above.
#[test]
fn child_probe() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let other = env_path("PROBE_OTHER");
    let ctx = FsContext::from_env().unwrap();
    let no_tmp = Defaults {
        tmp: false,
        ..Defaults::ALL
    };
    let mut flags = FsFlags::default();
    if mode == "mount" {
        flags.rw.push(env_path("PROBE_RW2"));
    }
    // As the supervisor will: build and prepare before the fork ...
    let policy = FsPolicy::build(&flags, no_tmp, &ctx).unwrap();
    let mut prepared = prepare(&policy, Requirement::Strict).unwrap();
    let rw = std::env::current_dir().unwrap();

    if mode == "mount" {
        let rw2 = env_path("PROBE_RW2");
        // ... and as the child will: mount, reapply, restrict.
        probe("mount", result(mount_tmpfs_over(&[&rw, &rw2, &other])));
        probe(
            "reapply",
            result(
                prepared
                    .reapply_after_mounts(&[&rw])
                    .map_err(io::Error::other),
            ),
        );
        probe(
            "restrict",
            result(restrict_self(prepared).map_err(io::Error::other)),
        );
        probe("write_rw_tmpfs", result(fs::write(rw.join("f"), "x")));
        probe(
            "write_rw2_tmpfs_not_reapplied",
            result(fs::write(rw2.join("f"), "x")),
        );
        probe("write_other_tmpfs", result(fs::write(other.join("f"), "x")));
        return;
    }

    probe(
        "restrict",
        result(restrict_self(prepared).map_err(io::Error::other)),
    );
    probe("read_other", result(fs::read(other.join("secret.txt"))));
    probe("list_other", result(fs::read_dir(&other)));
    probe("write_other", result(fs::write(other.join("new"), "x")));
    probe(
        "truncate_other",
        result(
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(other.join("secret.txt")),
        ),
    );
    probe("exec_other", exec(&other.join("true-copy")));
    probe("read_etc_hostname", result(fs::read("/etc/hostname")));
    probe("write_etc", result(fs::write(env_path("PROBE_ETC"), "x")));
    probe("exec_bin_true", exec(Path::new("/bin/true")));
    probe("write_rw", result(fs::write(rw.join("file"), "hello")));
    probe(
        "read_rw",
        match fs::read(rw.join("file")) {
            Ok(b) if b == b"hello" => "ok".into(),
            other => format!("{other:?}"),
        },
    );
    probe("mkdir_rw", result(fs::create_dir(rw.join("dir"))));
    probe("exec_rw", exec(&rw.join("true-copy")));
    let vhome = env_path("VALLIGNUS_HOME");
    probe(
        "read_vhome_key",
        result(fs::read(vhome.join("keys/signing.key"))),
    );
    probe("list_vhome", result(fs::read_dir(&vhome)));
    probe("write_dev_null", result(fs::write("/dev/null", "x")));
    probe(
        "read_dev_urandom",
        result(fs::File::open("/dev/urandom").and_then(|f| {
            use std::io::Read;
            let mut b = [0u8; 8];
            f.take(8).read_exact(&mut b)
        })),
    );
}

/// A new mount namespace for this thread, private propagation, a tmpfs over each dir.
fn mount_tmpfs_over(dirs: &[&Path]) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    for d in dirs {
        mount(
            Some("tmpfs"),
            *d,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )?;
    }
    Ok(())
}
