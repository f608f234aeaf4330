//! Controller limits (memory, pids, cpu, io): these need a cgroup v2 hierarchy
//! with the controllers enabled, which this hybrid host does not have, so
//! they run in the VM tier (scripts/vm/test) and skip elsewhere with the
//! reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the cgroup2 root offers `controllers` to vallignus's subtree.
fn controllers_available(test: &str, controllers: &[&str]) -> bool {
    if !cgroups_available(test) {
        return false;
    }
    let Some(mount) = cgroup2_mount() else {
        return false;
    };
    let offered = offered_controllers();
    let missing: Vec<&&str> = controllers
        .iter()
        .filter(|c| !offered.iter().any(|o| o == **c))
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

/// Tests that measure time or load (the fork bomb, the I/O cap) run one at
/// a time: the VM has two slow TCG vCPUs, and either test next to the other
/// would skew both.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Print a measurement where the VM tier's log shows it (libtest captures
/// only the print macros).
fn report(test: &str, what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "MEASURED {test}: {what}");
}

/// Processes and threads of the whole machine (the guest in the VM tier),
/// kernel threads included: the numeric entries of /proc.
fn task_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

/// A `vallignus run` started in the background. Dropping it (a failed
/// assertion included) ends the run and everything in it: SIGKILL to
/// vallignus, then `cgroup.kill` on the run's cgroup if it is still there
/// (a SIGKILLed supervisor leaves it behind), then the cgroup is removed.
struct BackgroundRun {
    child: Option<std::process::Child>,
    cgroup: Option<PathBuf>,
}

impl Drop for BackgroundRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(cgroup) = self.cgroup.take() {
            if cgroup.exists() {
                let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
                // rmdir fails (EBUSY) until the killed processes are gone.
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::fs::remove_dir(&cgroup).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

#[test]
fn fork_bomb_is_contained_by_pids_max() {
    const TEST: &str = "fork_bomb_is_contained_by_pids_max";
    const PIDS_MAX: u64 = 50;
    const RUNTIME_MS: u64 = 6000;
    if !controllers_available(TEST, &["pids"]) {
        return;
    }
    let _serial = serial();
    let m = marker();
    let _leftovers = KillOnDrop(m.clone());
    let h = Home::new();
    let id_file = h.path().join("id");
    // The classic bomb: every call of `b` starts two more in the background,
    // so the processes double until forks fail, and the survivors go on
    // forking as soon as a slot frees up. Each of them is a forked `sh` whose
    // command line (the script) carries the marker; the first shell becomes
    // `sleep <marker>`, so the run lasts until its runtime cap. stderr goes
    // to /dev/null: every failed fork prints an error.
    let script = format!("b() {{ b | b & }}; b 2>/dev/null; exec sleep {m}");
    let baseline = task_count();
    let (pids_max, runtime) = (PIDS_MAX.to_string(), format!("{RUNTIME_MS}ms"));
    let child = h
        .run_sh(
            &["--pids-max", &pids_max, "--max-runtime", &runtime],
            &id_file,
            &script,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = BackgroundRun {
        child: Some(child),
        cgroup: None,
    };
    wait_for_event(&h, &id_file, "process_started");
    let cgroup = PathBuf::from(
        h.session_json()["supervisor"]["cgroup"]
            .as_str()
            .expect("session.json names the run's cgroup"),
    );
    run.cgroup = Some(cgroup.clone());
    // The bomb is at full strength once a fork has failed at the cap.
    wait_for_event(&h, &id_file, "\"limit_event\"");

    // While it runs: the machine must keep starting new processes outside
    // the run, and its process count must stay bounded.
    let mut probes_during_bomb = 0;
    let mut slowest = Duration::ZERO;
    let mut most_tasks = 0;
    let mut most_bomb = 0;
    let mut most_in_cgroup = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = run.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end within 120 s of its {RUNTIME_MS} ms runtime cap"
        );
        let bomb = pids_with(&m).len();
        let in_cgroup = std::fs::read_to_string(cgroup.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let tasks = task_count();
        let started = Instant::now();
        let probe = output_with_timeout(
            Command::new("sh").args(["-c", "true"]),
            Duration::from_secs(60),
        );
        let took = started.elapsed();
        assert!(
            probe.status.success(),
            "`sh -c true` failed while the fork bomb ran: {probe:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "`sh -c true` took {took:?} while the fork bomb ran: the machine is not responsive"
        );
        if bomb >= 10 {
            probes_during_bomb += 1;
        }
        slowest = slowest.max(took);
        most_tasks = most_tasks.max(tasks);
        most_bomb = most_bomb.max(bomb);
        most_in_cgroup = most_in_cgroup.max(in_cgroup);
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = run.child.take().unwrap().wait_with_output().unwrap();
    report(
        TEST,
        &format!(
            "{probes_during_bomb} probes during the bomb, slowest `sh -c true` {slowest:?}; \
             tasks: {baseline} before, at most {most_tasks} during; \
             bomb processes seen: at most {most_bomb}; pids.current at most {most_in_cgroup}"
        ),
    );

    assert_eq!(
        status.code(),
        Some(124),
        "the run should end at its runtime cap (exit 124): {}",
        stderr(&out)
    );
    let s = h.session_json();
    assert_eq!(s["status"], "terminated", "{s}");
    // pids.max contains the bomb; it is the runtime cap that ends the run.
    assert_eq!(s["termination_reason"], "max_runtime", "{s}");
    let duration = s["duration_ms"].as_u64().unwrap();
    assert!(
        duration >= RUNTIME_MS,
        "the run ended after {duration} ms, before its {RUNTIME_MS} ms cap"
    );
    let peak = s["stats"]["pids_peak"].as_u64().unwrap();
    assert!(
        (PIDS_MAX - 10..=PIDS_MAX).contains(&peak),
        "pids.peak {peak}: a bomb that hit the cap should have peaked at about {PIDS_MAX}, never above"
    );
    let limit = h
        .events()
        .into_iter()
        .find(|e| e["type"] == "limit_event" && e["kind"] == "pids_max")
        .expect("no pids_max limit_event in events.jsonl");
    assert!(limit["count"].as_u64().unwrap() >= 1, "{limit}");
    assert!(limit["counters"]["max"].as_u64().unwrap() >= 1, "{limit}");
    assert!(
        !cgroup.exists(),
        "the run's cgroup {} is still there after the run",
        cgroup.display()
    );
    assert_none_left(&m);

    assert!(
        probes_during_bomb >= 3,
        "only {probes_during_bomb} responsiveness probes overlapped the running bomb"
    );
    assert!(
        most_in_cgroup <= PIDS_MAX,
        "the run's cgroup held {most_in_cgroup} tasks, over pids.max {PIDS_MAX}"
    );
    // The bomb adds at most PIDS_MAX tasks; the slack covers the other tests
    // of this binary, the probes, and processes that start or end during a
    // scan of /proc.
    let bound = baseline + PIDS_MAX as usize + 40;
    assert!(
        most_tasks <= bound,
        "the machine had {most_tasks} tasks during the bomb ({baseline} before): more than {bound}"
    );
}

/// A loop device over a file in a temporary directory (the guest's tmpfs
/// in the VM tier), detached when dropped, a failed assertion included.
struct LoopDevice {
    path: String,
    /// `MAJ:MIN`, the name io.max and io.stat give the device.
    devno: String,
    _backing: tempfile::TempDir,
}

impl LoopDevice {
    /// A loop device of `size` bytes, or `None` (with a printed skip) when
    /// this kernel or machine cannot make one.
    fn create(test: &str, size: usize) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        std::fs::write(&file, vec![0x5a; size]).unwrap();
        // loop is a module on Debian kernels, and nothing in the VM loads it
        // on demand (no udev).
        let _ = Command::new("modprobe")
            .arg("loop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let o = match Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                skip(test, &format!("cannot run losetup: {e}"));
                return None;
            }
        };
        if !o.status.success() {
            skip(
                test,
                &format!("cannot create a loop device: {}", stderr(&o).trim()),
            );
            return None;
        }
        let mut dev = LoopDevice {
            path: stdout(&o).trim().to_string(),
            devno: String::new(),
            _backing: dir,
        };
        let name = dev.path.trim_start_matches("/dev/").to_string();
        dev.devno = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .unwrap_or_else(|e| panic!("no device number for {}: {e}", dev.path))
            .trim()
            .to_string();
        Some(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        use std::io::Write;
        let result = Command::new("losetup")
            .arg("--detach")
            .arg(&self.path)
            .stdin(Stdio::null())
            .output();
        let failure = match result {
            Ok(o) if o.status.success() => return,
            Ok(o) => stderr(&o),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "warning: cannot detach {}: {}",
            self.path,
            failure.trim()
        );
    }
}

/// What one capped direct read saw.
struct DirectRead {
    /// dd's own elapsed time: vallignus's start-up is not in it.
    secs: f64,
    /// What the run cgroup's io.stat charged to it for the device.
    rbytes: u64,
    /// The run cgroup's io.max line for the device ("" when unlimited).
    io_max: String,
}

/// `vallignus run --io-max "<dev> <limit>"` of a `dd iflag=direct` that
/// reads `bytes` from `dev`: O_DIRECT bypasses the page cache, so each byte
/// is block I/O that the io controller sees. The agent then prints its own
/// cgroup's io.stat and io.max lines for the device.
fn read_direct(dev: &LoopDevice, limit: &str, bytes: usize) -> DirectRead {
    const BLOCK: usize = 256 << 10;
    let mount = cgroup2_mount().unwrap();
    let rule = format!("{} {limit}", dev.devno);
    let script = format!(
        "LC_ALL=C dd if={path} of=/dev/null bs={BLOCK} count={count} iflag=direct 2>&1 || exit 1
         cg={mount}$(sed -n 's/^0:://p' /proc/self/cgroup)
         echo \"io.stat: $(grep '^{devno} ' \"$cg/io.stat\")\"
         echo \"io.max: $(grep '^{devno} ' \"$cg/io.max\")\"",
        path = dev.path,
        count = bytes / BLOCK,
        mount = mount.display(),
        devno = dev.devno,
    );
    let h = Home::new();
    let o = h.run(&["run", "-q", "--io-max", &rule, "--", "sh", "-c", &script]);
    let out = stdout(&o);
    assert_eq!(
        code(&o),
        0,
        "reading {} under --io-max {rule:?} failed: {out}{}",
        dev.path,
        stderr(&o)
    );
    let s = h.session_json();
    assert_eq!(s["enforcement"]["io.max"]["enforced"], true, "{s}");
    assert_eq!(s["enforcement"]["io.max"]["detail"], rule.as_str(), "{s}");
    let secs = out
        .lines()
        .find_map(|l| {
            l.split_once(" copied, ")?
                .1
                .split_once(" s")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no dd summary in the output: {out:?}"));
    let rbytes = out
        .lines()
        .find_map(|l| l.strip_prefix("io.stat: "))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("rbytes="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rbytes for {} in io.stat: {out:?}", dev.devno));
    let io_max = out
        .lines()
        .find_map(|l| l.strip_prefix("io.max:"))
        .unwrap_or_else(|| panic!("no io.max line in the output: {out:?}"))
        .trim()
        .to_string();
    DirectRead {
        secs,
        rbytes,
        io_max,
    }
}

#[test]
fn io_max_throttles_direct_reads() {
    const TEST: &str = "io_max_throttles_direct_reads";
    const CAP: usize = 1 << 20; // rbps: 1 MiB/s
    const READ: usize = 4 << 20; // 4 s at the cap
    const MIB: f64 = (1 << 20) as f64;
    if !controllers_available(TEST, &["io"]) {
        return;
    }
    let _serial = serial();
    let Some(dev) = LoopDevice::create(TEST, 2 * READ) else {
        return;
    };
    // The same read twice, in one test: with no limit (rbps=max still puts
    // the run under the io controller, so io.stat is there to compare), and
    // with the cap.
    let free = read_direct(&dev, "rbps=max", READ);
    let capped = read_direct(&dev, &format!("rbps={CAP}"), READ);
    let free_rate = READ as f64 / free.secs;
    let capped_rate = READ as f64 / capped.secs;
    report(
        TEST,
        &format!(
            "{} MiB from {}: {:.3} s ({:.2} MiB/s) unlimited, {:.3} s ({:.2} MiB/s) at rbps={CAP}",
            READ >> 20,
            dev.path,
            free.secs,
            free_rate / MIB,
            capped.secs,
            capped_rate / MIB
        ),
    );

    // Both reads went through the run's cgroup, as block I/O on the device.
    for (name, r) in [("unlimited", &free), ("capped", &capped)] {
        assert!(
            r.rbytes >= READ as u64,
            "the {name} run's io.stat charged {} bytes for {}, less than the {READ} read",
            r.rbytes,
            dev.devno
        );
    }
    assert_eq!(
        free.io_max, "",
        "rbps=max should leave io.max without a limit for the device"
    );
    assert_eq!(
        capped.io_max,
        format!("{} rbps={CAP} wbps=max riops=max wiops=max", dev.devno),
        "the capped run's io.max"
    );
    // The device must be well above the cap, or the comparison shows nothing.
    assert!(
        free_rate >= 3.0 * CAP as f64,
        "the unlimited read ran at {:.2} MiB/s: too slow to show a {} MiB/s cap",
        free_rate / MIB,
        CAP >> 20
    );
    // TCG only ever slows a read down, so this bound is firm; 1.5x leaves room
    // for what blk-throttle lets through in its first time slice.
    assert!(
        capped_rate <= 1.5 * CAP as f64,
        "the capped read ran at {:.2} MiB/s, over its {} MiB/s cap",
        capped_rate / MIB,
        CAP >> 20
    );
    assert!(
        capped.secs >= 3.0 * free.secs,
        "the capped read took {:.3} s, not even 3 times the unlimited read's {:.3} s",
        capped.secs,
        free.secs
    );
}
/// With `--end-on-pids-max`, the first refused fork ends the run
/// (`pids_max`, exit 124) instead of being recorded and survived.
#[test]
fn end_on_pids_max_ends_the_run() {
    let test = "end_on_pids_max_ends_the_run";
    if !controllers_available(test, &["pids"]) {
        return;
    }
    let _serial = serial();
    let h = Home::new();
    let marker = marker();
    let script = format!("for i in $(seq 40); do sleep {marker} & done; wait");
    let o = h.run(&[
        "run",
        "-q",
        "--pids-max",
        "10",
        "--end-on-pids-max",
        "--max-runtime",
        "60",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "pids_max", "{s}");
    assert_eq!(s["termination_limit_value"], 10);
    assert!(s["termination_observed_value"].as_u64().unwrap() >= 1);
    assert!(
        s["duration_ms"].as_f64().unwrap() < 30_000.0,
        "the run was not ended by pids.max: {s}"
    );
    assert_eq!(
        s["enforcement"]["pids.max"]["detail"],
        "10 (reaching it ends the run)"
    );
    assert_none_left(&marker);
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
