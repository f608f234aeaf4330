//! `sessions list|show` and `replay`, on sessions written by this version
//! and by vallignus 0.4.2, and on broken ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;

/// A session directory exactly as vallignus 0.4.2 wrote it.
fn write_0_4_2_session(home: &Path, id: &str) {
    let dir = home.join("sessions").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("session.json"),
        format!(
            r#"{{
  "session_id": "{id}",
  "started_at_iso": "2025-01-24T15:30:45.123456",
  "command": ["python", "agent.py"],
  "cwd": "/home/u",
  "env_summary": {{"PATH": "/usr/bin"}},
  "exit_code": 0,
  "duration_ms": 1500,
  "finished_at_iso": "2025-01-24T15:30:46.623456",
  "stdout_lines": 2,
  "stderr_lines": 1
}}"#
        ),
    )
    .unwrap();
    let ev = |ts: u64, ty: &str, extra: &str| {
        format!(r#"{{"ts_ms":{ts},"session_id":"{id}","type":"{ty}"{extra}}}"#)
    };
    let events = [
        ev(
            1000,
            "run_started",
            r#","command":["python","agent.py"],"cwd":"/home/u""#,
        ),
        ev(1001, "process_started", ""),
        ev(1100, "stdout_line", r#","line":"hello""#),
        ev(1200, "stderr_line", r#","line":"warn""#),
        ev(1300, "stdout_line", r#","line":"bye""#),
        ev(1400, "process_exited", r#","exit_code":0"#),
        ev(1500, "run_finished", r#","duration_ms":1500"#),
    ];
    std::fs::write(dir.join("events.jsonl"), events.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("stdout.log"), "hello\nbye\n").unwrap();
    std::fs::write(dir.join("stderr.log"), "warn\n").unwrap();
}

#[test]
fn old_sessions_are_listed_shown_and_replayed() {
    let h = Home::new();
    write_0_4_2_session(h.path(), "20250124-153045-a1b2c3");
    let o = h.run(&["sessions", "list"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("20250124-153045-a1b2c3"));
    assert!(stdout(&o).contains("finished"));
    assert!(stdout(&o).contains("python agent.py"));

    let o = h.run(&["sessions", "show", "20250124-153045-a1b2c3", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["session"]["status"], "finished");
    assert_eq!(v["event_count"], 7);
    assert_eq!(v["events"][2]["line"], "hello");
    // 0.4.2 did not count bytes: none are made up.
    assert!(v["session"].get("stdout_bytes").is_none(), "{v}");
    let o = h.run(&["sessions", "show", "20250124-153045-a1b2c3"]);
    assert!(
        stdout(&o).contains("2 lines (bytes not recorded)"),
        "{}",
        stdout(&o)
    );

    let o = h.run(&[
        "sessions",
        "show",
        "20250124-153045-a1b2c3",
        "--events",
        "3",
    ]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("Last 3 of 7 events"), "{}", stdout(&o));

    let o = h.run(&["replay", "20250124-153045-a1b2c3", "--no-timestamps"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\nbye\n");
    assert_eq!(stderr(&o), "warn\n");

    let o = h.run(&["replay", "20250124-153045-a1b2c3"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("[  0.100s] hello"), "{}", stdout(&o));
    assert!(stdout(&o).contains("[  0.300s] bye"));
}

#[test]
fn bad_ids_and_broken_sessions_give_clear_errors() {
    let h = Home::new();
    write_0_4_2_session(h.path(), "20250124-153045-a1b2c3");
    let o = h.run(&["sessions", "show", "../../etc"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("invalid session id"), "{}", stderr(&o));
    let o = h.run(&["replay", "../x"]);
    assert_eq!(code(&o), 2);
    let o = h.run(&["sessions", "show", "20990101-000000-nosuch"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("session not found"), "{}", stderr(&o));
    let o = h.run(&["replay", "20990101-000000-nosuch"]);
    assert_eq!(code(&o), 1);

    // Broken: invalid JSON, a directory without session.json.
    let bad = h.sessions_dir().join("20250101-000000-badjsn");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("session.json"), "{\"session_id\": ").unwrap();
    std::fs::create_dir_all(h.sessions_dir().join("20250101-000000-nometa")).unwrap();
    let o = h.run(&["sessions", "list"]);
    assert_eq!(code(&o), 0, "list skips broken sessions");
    assert!(stdout(&o).contains("20250124-153045-a1b2c3"));
    assert!(
        stderr(&o).contains("skipped 2 unreadable session(s)"),
        "{}",
        stderr(&o)
    );
    let o = h.run(&["sessions", "show", "20250101-000000-badjsn"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));

    // A half-written events file: what is readable is replayed, then an error.
    let id = "20250124-153045-a1b2c3";
    let ev = h.sessions_dir().join(id).join("events.jsonl");
    let mut content = std::fs::read_to_string(&ev).unwrap();
    content.push_str("{\"ts_ms\":1600,\"session_id\":\"x\",\"type\":\"stdout_li");
    std::fs::write(&ev, &content).unwrap();
    let o = h.run(&["replay", id, "--no-timestamps"]);
    assert_eq!(code(&o), 1);
    assert_eq!(stdout(&o), "hello\nbye\n");
    assert!(stderr(&o).contains("unreadable line"), "{}", stderr(&o));

    // An output event whose bytes cannot be read is named, not skipped.
    let lines: Vec<String> = content.lines().map(String::from).collect();
    let fixed: Vec<String> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.replace("\"line\":\"bye\"", "\"line_b64\":\"not base64!\""))
        .collect();
    assert_ne!(fixed.join("\n"), lines[..lines.len() - 1].join("\n"));
    std::fs::write(&ev, fixed.join("\n") + "\n").unwrap();
    let o = h.run(&["replay", id, "--no-timestamps"]);
    assert_eq!(code(&o), 1);
    assert_eq!(stdout(&o), "hello\n");
    assert!(
        stderr(&o).contains("bytes cannot be read"),
        "{}",
        stderr(&o)
    );

    // Cut at a line boundary before the run's end: said, exit 1.
    let cut: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains("\"run_finished\""))
        .collect();
    let cut: Vec<&str> = cut[..cut.len() - 1].iter().map(|l| l.as_str()).collect();
    std::fs::write(&ev, cut.join("\n") + "\n").unwrap();
    let o = h.run(&["replay", id, "--no-timestamps"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no run_finished"), "{}", stderr(&o));

    // Files that are not regular files are refused at once, never read or
    // waited on: a FIFO as events.jsonl, a link to /dev/zero as session.json.
    std::fs::remove_file(&ev).unwrap();
    nix::unistd::mkfifo(&ev, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let t = std::time::Instant::now();
    let o = h.run(&["replay", id]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    let meta = h.sessions_dir().join(id).join("session.json");
    std::fs::remove_file(&meta).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &meta).unwrap();
    let o = h.run(&["sessions", "show", id]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn empty_home_lists_nothing() {
    let h = Home::new();
    let o = h.run(&["sessions", "list", "--json"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn replay_reproduces_a_real_run() {
    if !cgroups_available("replay_reproduces_a_real_run") {
        return;
    }
    let h = Home::new();
    let script = r#"printf 'one\r\ntwo'; printf 'E1\n' >&2; sleep 0.05; printf '\n\377x\n'; printf 'E2' >&2"#;
    let o = h.run(&["run", "-q", "--", "sh", "-c", script]);
    assert_eq!(code(&o), 0);
    let id = h.session_json()["session_id"].as_str().unwrap().to_string();
    let r = h.run(&["replay", &id, "--no-timestamps"]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    assert_eq!(r.stdout, o.stdout, "replayed stdout differs");
    assert_eq!(r.stderr, o.stderr, "replayed stderr differs");
    assert_eq!(r.stdout, b"one\r\ntwo\n\xffx\n");

    let j = h.run(&["replay", &id, "--json"]);
    assert_eq!(code(&j), 0);
    let lines: Vec<serde_json::Value> = j
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let streams: Vec<&str> = lines
        .iter()
        .map(|l| l["stream"].as_str().unwrap())
        .collect();
    // "two" was open when E1 came: it is a piece of its own before E1
    // (the order the bytes arrived in), and its newline ends it after.
    assert_eq!(
        streams,
        ["stdout", "stdout", "stderr", "stdout", "stdout", "stderr"]
    );
    assert_eq!(lines[1]["line"], "two");
    assert_eq!(lines[1]["partial"], true);
    assert_eq!(lines[3]["line"], "");

    let cast = h.path().join("run.cast");
    let c = h.run(&["replay", &id, "--asciicast", cast.to_str().unwrap()]);
    assert_eq!(code(&c), 0, "{}", stderr(&c));
    let text = std::fs::read_to_string(&cast).unwrap();
    let mut it = text.lines();
    let header: serde_json::Value = serde_json::from_str(it.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let frames: Vec<serde_json::Value> = it.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 6);
    assert_eq!(frames[0][1], "o");
    assert_eq!(frames[0][2], "one\r\r\n");

    let show = h.run(&["sessions", "show", &id]);
    assert_eq!(code(&show), 0);
    assert!(stdout(&show).contains("finished"));
    assert!(stdout(&show).contains("cgroup"));
}

#[test]
fn replay_realtime_takes_the_recorded_time() {
    let h = Home::new();
    write_0_4_2_session(h.path(), "20250124-153045-a1b2c3");
    let t = std::time::Instant::now();
    let o = h.run(&[
        "replay",
        "20250124-153045-a1b2c3",
        "--speed",
        "2",
        "--no-timestamps",
    ]);
    assert_eq!(code(&o), 0);
    // Events span 500 ms; at speed 2 the replay takes ~250 ms.
    let took = t.elapsed();
    assert!(took >= std::time::Duration::from_millis(240), "{took:?}");
    let o = h.run(&["replay", "20250124-153045-a1b2c3", "--speed", "0"]);
    assert_eq!(code(&o), 2, "speed 0 is a usage error");
}

/// Unmounts a test's tmpfs (lazily, so a failing test cannot leave it).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Tier 2 (root, for a small tmpfs): when the disk under the sessions
/// fills up, the run ends with `recording_failed` (exit 125) and the
/// message names the session file and the cause; nothing panics.
#[test]
fn a_full_disk_ends_the_run_and_names_the_file() {
    let test = "a_full_disk_ends_the_run_and_names_the_file";
    if !common::is_root() {
        common::skip(test, "needs root to mount a small tmpfs");
        return;
    }
    let h = Home::new();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(h.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs failed");
    let _guard = Mounted(h.path().to_path_buf());
    let out = h.run(&[
        "run",
        "-q",
        "--",
        "sh",
        "-c",
        "yes 0123456789012345678901234567890123456789 | head -c 8000000",
    ]);
    let err = common::stderr(&out);
    assert_eq!(common::code(&out), 125, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("stdout.log") || err.contains("events.jsonl"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
