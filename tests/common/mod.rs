//! Shared helpers for the integration tests: run the real binary with a
//! private VALLIGNUS_HOME, read back its sessions, and skip (with a printed
//! reason) the tests whose kernel features are missing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod clients;
pub mod fake_llm;

pub const BIN: &str = env!("CARGO_BIN_EXE_vallignus");

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A home outside /tmp, so that an agent with a private /tmp still
    /// sees the path (and must be refused it, not just miss it).
    pub fn outside_tmp() -> Self {
        Self {
            dir: tempfile::tempdir_in("/var/tmp").unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("VALLIGNUS_HOME", self.path())
            .env_remove("VALLIGNUS_TOKEN")
            .env_remove("VALLIGNUS_CGROUP_ROOT")
            .stdin(Stdio::null());
        c
    }

    /// `vallignus <args>` with output captured (bounded by a timeout).
    pub fn run(&self, args: &[&str]) -> Output {
        output_with_timeout(self.cmd().args(args), Duration::from_secs(60))
    }

    /// `vallignus run -q FLAGS --session-id-file ID_FILE -- sh -c SCRIPT`,
    /// for a run started in the background (the caller sets stdio and
    /// spawns; [`wait_for_event`] follows it through `id_file`).
    pub fn run_sh(&self, flags: &[&str], id_file: &Path, script: &str) -> Command {
        let mut c = self.cmd();
        c.args(["run", "-q"])
            .args(flags)
            .arg("--session-id-file")
            .arg(id_file)
            .args(["--", "sh", "-c", script]);
        c
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.path().join("sessions")
    }

    /// The only session in this home.
    pub fn only_session(&self) -> PathBuf {
        let dirs: Vec<_> = std::fs::read_dir(self.sessions_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "expected one session: {dirs:?}");
        dirs.into_iter().next().unwrap()
    }

    pub fn session_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.only_session().join("session.json")).unwrap())
            .unwrap()
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events_in(&self.only_session())
    }

    /// The events of session `id` (for homes with several sessions).
    pub fn events_of(&self, id: &str) -> Vec<serde_json::Value> {
        self.events_in(&self.sessions_dir().join(id))
    }

    fn events_in(&self, dir: &Path) -> Vec<serde_json::Value> {
        let raw = std::fs::read(dir.join("events.jsonl")).unwrap();
        raw.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }
}

pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let guard = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = guard.join();
    out
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The cgroup2 mount, if it has cgroup.kill support (Linux 5.14+).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    vallignus::cgroup::find_cgroup2_mount(&mi)
}

/// Print a skip notice that libtest does not capture (it only captures the
/// print macros), so `scripts/test` can list what was skipped and why.
/// The controllers the cgroup2 root offers its children (what the run
/// cgroups can be limited by); empty without a cgroup2 mount.
pub fn offered_controllers() -> Vec<String> {
    cgroup2_mount()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.subtree_control")).ok())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Whether vallignus can create run cgroups here (root + cgroup2 with
/// cgroup.kill). Prints why not, so a skipped test says so.
pub fn cgroups_available(test: &str) -> bool {
    if !is_root() {
        skip(test, "needs root to create cgroups");
        return false;
    }
    let Some(mount) = cgroup2_mount() else {
        skip(test, "no cgroup2 mount");
        return false;
    };
    let probe = mount.join("vallignus");
    let _ = std::fs::create_dir(&probe);
    // Unique per call: tests of one binary probe concurrently.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let test_dir = probe.join(format!("probe-{}-{n}", std::process::id()));
    if std::fs::create_dir(&test_dir).is_err() {
        skip(
            test,
            &format!("cannot create a cgroup under {}", probe.display()),
        );
        return false;
    }
    let has_kill = test_dir.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&test_dir);
    if !has_kill {
        skip(test, "the kernel has no cgroup.kill (needs Linux 5.14)");
    }
    has_kill
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Pids of processes whose command line contains `marker`.
pub fn pids_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                // Zombies have an empty cmdline, so this is a live process.
                pids.push(pid);
            }
        }
    }
    pids
}

/// Pids of the live `sleep` processes whose command line contains `marker`
/// (not the vallignus or `sh` that started them, which hold it too).
pub fn sleeps_with(marker: &str) -> Vec<i32> {
    pids_with(marker)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect()
}

/// Pids of the processes whose network namespace is `netns` (`net:[inode]`,
/// as `readlink /proc/PID/ns/net` prints it).
pub fn processes_in_netns(netns: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == netns)
        })
        .collect()
}

/// A unique `sleep` argument (a long decimal) so a test can find its own
/// processes and nobody else's.
pub fn marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "300.{}{:04}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kill leftovers a failing test would otherwise leave running.
pub struct KillOnDrop(pub String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Asserts no process with `marker` in its command line is left (after
/// giving the kernel a moment to finish releasing killed tasks).
pub fn assert_none_left(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = pids_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes survived the run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether landlock can enforce a policy here (ABI >= the required one); prints why not.
pub fn landlock_available(test: &str) -> bool {
    use vallignus::isolation::landlock::{status, REQUIRED_ABI};
    let support = status();
    if !support.meets_requirement() {
        skip(
            test,
            &format!("landlock ABI {REQUIRED_ABI}+ needed, kernel has {support:?}"),
        );
        return false;
    }
    true
}

/// Re-run this test binary with only `test` selected (`--exact`, output not captured),
/// in `cwd` and with `envs` set, so the test runs in a fresh process. Used for steps that
/// change the process for good (landlock, seccomp).
pub fn reexec_test(test: &str, cwd: &Path, envs: &[(&str, &std::ffi::OsStr)]) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .current_dir(cwd)
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    output_with_timeout(&mut cmd, Duration::from_secs(60))
}

/// `sessions verify` helpers (tests/verify.rs).
impl Home {
    /// The id of the only session in this home.
    pub fn only_session_id(&self) -> String {
        self.only_session()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// `vallignus sessions verify ID --json`: exit code and parsed report.
    pub fn verify_json(&self, id: &str) -> (i32, serde_json::Value) {
        let o = self.run(&["sessions", "verify", id, "--json"]);
        let v = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}): {}", stderr(&o)));
        (code(&o), v)
    }

    /// The findings' messages of `sessions verify ID --json`.
    pub fn verify_messages(&self, id: &str) -> (i32, Vec<String>) {
        let (code, v) = self.verify_json(id);
        let messages = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["message"].as_str().unwrap().to_string())
            .collect();
        (code, messages)
    }
}

/// Wait until the run whose id `vallignus run --session-id-file` wrote to
/// `id_file` has `needle` in its events.jsonl (e.g. `process_started`, or
/// an output line): lets a test act once the agent is where it wants it,
/// without guessing a delay.
pub fn wait_for_event(h: &Home, id_file: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(id) = std::fs::read_to_string(id_file) {
            let ev = h.sessions_dir().join(id.trim()).join("events.jsonl");
            if std::fs::read_to_string(ev).is_ok_and(|s| s.contains(needle)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the run never recorded {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `auth init`, agent `bot` of `alice`, policy `p1` made with
/// `policy_args` (`auth create-policy` flags), and a token for them.
pub fn token_for_policy(h: &Home, policy_args: &[&str]) -> String {
    let mut create = vec!["auth", "create-policy", "--policy-id", "p1"];
    create.extend_from_slice(policy_args);
    for args in [
        vec!["auth", "init"],
        vec![
            "auth",
            "create-agent",
            "--agent-id",
            "bot",
            "--owner",
            "alice",
        ],
        create,
    ] {
        let o = h.run(&args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    }
    let o = h.run(&[
        "auth",
        "issue-token",
        "--agent-id",
        "bot",
        "--policy-id",
        "p1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o).trim().to_string()
}
