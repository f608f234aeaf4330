//! `vallignus run`: exit codes, pass-through, exact caps, teardown of every
//! process, signals, crash recovery. Tests that need cgroups skip (with a
//! printed reason) where vallignus cannot create them; CI runs as root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

macro_rules! require_cgroups {
    ($name:expr) => {
        if !cgroups_available($name) {
            return;
        }
    };
}

#[test]
fn exit_code_of_the_child_is_passed_through() {
    require_cgroups!("exit_code_of_the_child_is_passed_through");
    let h = Home::new();
    assert_eq!(code(&h.run(&["run", "-q", "--", "sh", "-c", "exit 3"])), 3);
    assert_eq!(code(&h.run(&["run", "-q", "--", "true"])), 0);
    let o = h.run(&["run", "-q", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(code(&o), 137, "{}", stderr(&o));
}

#[test]
fn not_found_and_not_executable() {
    require_cgroups!("not_found_and_not_executable");
    let h = Home::new();
    let o = h.run(&["run", "-q", "--", "/nonexistent/agent"]);
    assert_eq!(code(&o), 127);
    assert!(
        stderr(&o).contains("/nonexistent/agent: command not found"),
        "{}",
        stderr(&o)
    );
    // A script whose #! interpreter is missing exists: said so.
    let bad = h.path().join("bad-interp.sh");
    std::fs::write(&bad, "#!/nonexistent/interp\necho hi\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = h.run(&["run", "-q", "--", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 127);
    assert!(
        stderr(&o).contains("its interpreter (the #! line)"),
        "{}",
        stderr(&o)
    );
    // ... and found on PATH.
    let path = format!("{}:{}", h.path().display(), std::env::var("PATH").unwrap());
    let o = output_with_timeout(
        h.cmd()
            .env("PATH", path)
            .args(["run", "-q", "--", "bad-interp.sh"]),
        Duration::from_secs(30),
    );
    assert_eq!(code(&o), 127);
    assert!(
        stderr(&o).contains("bad-interp.sh (found at "),
        "{}",
        stderr(&o)
    );
    let o = h.run(&["run", "-q", "--", "/tmp"]);
    assert_eq!(code(&o), 126);
    assert!(
        stderr(&o).contains("/tmp: is a directory"),
        "{}",
        stderr(&o)
    );
    let script = h.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = h.run(&["run", "-q", "--", script.to_str().unwrap()]);
    assert_eq!(code(&o), 126, "{}", stderr(&o));
    // All are recorded as sessions that failed to start.
    let listing = h.run(&["sessions", "list", "--json"]);
    let arr: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(arr.as_array().unwrap().len(), 5);
    for s in arr.as_array().unwrap() {
        assert_eq!(s["status"], "failed_to_start");
        // What 0.4.2 wrote for a run that could not start.
        assert_eq!(s["exit_code"], -1);
        assert!(s["duration_ms"].as_u64().is_some(), "{s}");
        assert!(s["error"].as_str().is_some());
    }
}

/// 0.4.2 parsed its flags anywhere on the line: its caps after the
/// command still cap the run (they used to be handed to the agent, which
/// then ran uncapped); newer flags there are refused, not guessed at.
#[test]
fn flags_after_the_command_keep_0_4_2_s_meaning() {
    require_cgroups!("flags_after_the_command_keep_0_4_2_s_meaning");
    let h = Home::new();
    let t0 = Instant::now();
    let o = h.run(&["run", "sh", "-c", "sleep 20", "--max-runtime", "1"]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&o).contains("note: --max-runtime after the command"),
        "{}",
        stderr(&o)
    );
    // Flags the command has (`-c`, `-n`) stay the command's.
    let o = h.run(&["run", "-q", "echo", "-n", "hi", "--max-output-lines=5"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "hi"), "{}", stderr(&o));
    // After `--`, nothing is taken.
    let o = h.run(&["run", "-q", "--", "echo", "--max-runtime", "1"]);
    assert_eq!(stdout(&o), "--max-runtime 1\n");
    // The command's own `--` stays the command's.
    let o = h.run(&["run", "-q", "printf", "[%s]", "--", "x"]);
    assert_eq!(stdout(&o), "[--][x]", "{}", stderr(&o));
    let o = h.run(&["run", "echo", "x", "--max-output-bytes", "5"]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("--max-output-bytes comes after the command"),
        "{}",
        stderr(&o)
    );
    // 0.4.2's firewall options are not used, and it says so.
    let o = h.run(&["run", "--port", "9999", "--", "true", "--log", "fl.json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("--port 9999 (vallignus 0.4.2) is not used: this run has no policy proxy"),
        "{}",
        stderr(&o)
    );
    let o = h.run(&["run", "true", "--log", "fl.json"]);
    assert!(
        stderr(&o).contains("--log fl.json (vallignus 0.4.2) is not written"),
        "{}",
        stderr(&o)
    );
    // A misspelt flag is an error, not a command to run.
    let o = h.run(&["run", "--max-runtim", "1", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("--max-runtim"), "{}", stderr(&o));
}

#[test]
fn bad_flags_exit_125_and_name_the_flag() {
    let h = Home::new();
    let o = h.run(&["run", "--max-runtime", "5 years", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("--max-runtime"), "{}", stderr(&o));
    let o = h.run(&["run", "--max-output-bytes", "12Q", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("12Q"), "{}", stderr(&o));
    let o = h.run(&["run", "--max-output-lines", "-1", "--", "true"]);
    assert_eq!(code(&o), 125);
    let o = h.run(&["run"]);
    assert_eq!(code(&o), 125);
    assert!(!h.sessions_dir().exists(), "no session for a bad flag");
}

#[test]
fn bad_token_fails_closed() {
    let h = Home::new();
    let o = h.run(&["run", "--token", "abc", "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("--token"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("ran"));
    let o = h
        .cmd()
        .env("VALLIGNUS_TOKEN", "vl1.x.y.z")
        .args(["run", "--", "sh", "-c", "echo ran"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("malformed"), "{}", stderr(&o));
}

#[test]
fn max_requests_alone_puts_the_agent_behind_a_default_deny_proxy() {
    require_cgroups!("max_requests_alone_puts_the_agent_behind_a_default_deny_proxy");
    // A listener on the host's loopback: the agent must not reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = Home::new();
    let probe = format!(
        "import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print('connected')\nexcept OSError as e:\n    print('refused')"
    );
    let o = h.run(&["run", "--max-requests", "5", "--", "python3", "-c", &probe]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "refused\n");
    let s = h.session_json();
    assert_eq!(s["enforcement"]["network"]["enforced"], true);
    assert!(s["enforcement"]["network"]["detail"]
        .as_str()
        .unwrap()
        .contains("max_requests 5"));
    assert_eq!(s["limits"]["max_requests"], 5);
}

#[test]
fn no_cgroup_is_an_error_unless_best_effort() {
    let h = Home::new();
    let not_a_cgroup = h.path().join("not-a-cgroup");
    std::fs::create_dir(&not_a_cgroup).unwrap();
    let o = h
        .cmd()
        .env("VALLIGNUS_CGROUP_ROOT", &not_a_cgroup)
        .args(["run", "--", "sh", "-c", "echo ran"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains(not_a_cgroup.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("ran"));

    let h = Home::new();
    let o = h
        .cmd()
        .env("VALLIGNUS_CGROUP_ROOT", &not_a_cgroup)
        .args(["run", "--best-effort", "--", "sh", "-c", "echo ran; exit 4"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert_eq!(stdout(&o), "ran\n");
    assert!(stderr(&o).contains("not enforced"), "{}", stderr(&o));
    let s = h.session_json();
    assert_eq!(s["enforcement"]["cgroup"]["enforced"], false);
    assert_eq!(s["enforcement"]["process_group"]["enforced"], true);
}

#[test]
fn output_passes_through_unchanged() {
    require_cgroups!("output_passes_through_unchanged");
    let h = Home::new();
    let script = r#"printf 'out\n'; printf 'err\r\n' >&2; printf '\377\000bin'; printf 'tail' >&2"#;
    let o = h.run(&["run", "-q", "--", "sh", "-c", script]);
    assert_eq!(code(&o), 0);
    assert_eq!(o.stdout, b"out\n\xff\x00bin");
    assert_eq!(o.stderr, b"err\r\ntail");
    let dir = h.only_session();
    assert_eq!(
        std::fs::read(dir.join("stdout.log")).unwrap(),
        b"out\n\xff\x00bin"
    );
    assert_eq!(
        std::fs::read(dir.join("stderr.log")).unwrap(),
        b"err\r\ntail"
    );
    let s = h.session_json();
    assert_eq!(s["status"], "finished");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["stdout_lines"], 2);
    assert_eq!(s["stderr_lines"], 2);
    assert_eq!(s["stdout_bytes"], 9);
    assert_eq!(s["enforcement"]["cgroup"]["enforced"], true);
    // What is off is recorded as off, not left out.
    assert_eq!(s["enforcement"]["seccomp"]["enforced"], false);
}

#[test]
fn stdin_is_passed_through() {
    require_cgroups!("stdin_is_passed_through");
    let h = Home::new();
    let mut child = h
        .cmd()
        .args(["run", "-q", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.stdout, b"hello\nworld");
}

#[test]
fn events_are_chained_and_keep_arrival_order() {
    require_cgroups!("events_are_chained_and_keep_arrival_order");
    let h = Home::new();
    let script = "echo a; sleep 0.02; echo b >&2; sleep 0.02; echo c; printf '\\377\\376'";
    let o = h.run(&["run", "-q", "--", "sh", "-c", script]);
    assert_eq!(code(&o), 0);
    let events = h.events();
    let raw = std::fs::read(h.only_session().join("events.jsonl")).unwrap();
    let lines: Vec<&[u8]> = raw
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let sid = h.session_json()["session_id"].as_str().unwrap().to_string();
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["seq"], i as u64);
        assert_eq!(ev["session_id"], sid.as_str());
        assert!(ev["ts_ms"].as_u64().unwrap() > 1_600_000_000_000);
        let expected_prev = if i == 0 {
            vallignus::session::event::sha256_hex(sid.as_bytes())
        } else {
            vallignus::session::event::sha256_hex(lines[i - 1])
        };
        assert_eq!(ev["prev"], expected_prev.as_str(), "chain broken at {i}");
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert!(kinds.contains(&"process_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "process_exited").count(), 1);
    let output: Vec<(&str, String)> = events
        .iter()
        .filter(|e| e["type"] == "stdout_line" || e["type"] == "stderr_line")
        .map(|e| {
            let text = e["line"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("b64:{}", e["line_b64"].as_str().unwrap()));
            (e["type"].as_str().unwrap(), text)
        })
        .collect();
    assert_eq!(
        output,
        [
            ("stdout_line", "a".to_string()),
            ("stderr_line", "b".to_string()),
            ("stdout_line", "c".to_string()),
            ("stdout_line", "b64://4=".to_string()),
        ]
    );
    let last_out = events
        .iter()
        .rev()
        .find(|e| e["type"] == "stdout_line")
        .unwrap();
    assert_eq!(last_out["partial"], true);
    let t: Vec<u64> = events.iter().map(|e| e["t_us"].as_u64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
}

/// A prompt without its newline, then a warning on stderr, then the
/// answer: the events (and so replay) keep the order the bytes came in.
#[test]
fn an_open_line_is_recorded_before_the_other_stream_s_output() {
    require_cgroups!("an_open_line_is_recorded_before_the_other_stream_s_output");
    let h = Home::new();
    let script = "printf 'prompt> '; sleep 0.3; echo warning >&2; sleep 0.3; echo answer";
    let o = h.run(&["run", "-q", "--", "sh", "-c", script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "prompt> answer\n");
    let lines: Vec<(String, String, bool)> = h
        .events()
        .iter()
        .filter(|e| e["type"] == "stdout_line" || e["type"] == "stderr_line")
        .map(|e| {
            let kind = e["type"].as_str().unwrap().to_string();
            let line = e["line"].as_str().unwrap().to_string();
            (kind, line, e["partial"] == true)
        })
        .collect();
    let want = [
        ("stdout_line", "prompt> ", true),
        ("stderr_line", "warning", false),
        ("stdout_line", "answer", false),
    ];
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(k, l, p)| (k.to_string(), l.to_string(), *p))
        .collect();
    assert_eq!(lines, want);
    // Still one line of stdout, one of stderr.
    let s = h.session_json();
    assert_eq!(
        (s["stdout_lines"].as_u64(), s["stderr_lines"].as_u64()),
        (Some(1), Some(1))
    );
    let id = s["session_id"].as_str().unwrap().to_string();
    let o = h.run(&["replay", &id, "--no-timestamps"]);
    assert_eq!(stdout(&o), "prompt> answer\n");
}

/// A character whose first byte came before the other stream wrote is not
/// split into two pieces (which would make both base64).
#[test]
fn an_open_line_is_not_cut_inside_a_character() {
    require_cgroups!("an_open_line_is_not_cut_inside_a_character");
    let h = Home::new();
    let script = r#"printf '\303'; sleep 0.3; echo X >&2; sleep 0.3; printf '\251b\n'"#;
    let o = h.run(&["run", "-q", "--", "sh", "-c", script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "éb\n");
    let out: Vec<serde_json::Value> = h
        .events()
        .into_iter()
        .filter(|e| e["type"] == "stdout_line")
        .collect();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["line"], "éb");
}

#[test]
fn line_cap_is_exact() {
    require_cgroups!("line_cap_is_exact");
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--max-output-lines",
        "1000",
        "--",
        "seq",
        "1",
        "100000",
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let expected: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(stdout(&o), expected);
    let s = h.session_json();
    assert_eq!(s["status"], "terminated");
    assert_eq!(s["termination_reason"], "max_output_lines");
    assert_eq!(s["termination_limit_value"], 1000);
    assert_eq!(s["termination_observed_value"], 1001);
    assert_eq!(s["stdout_lines"], 1000);
    assert_eq!(
        std::fs::read_to_string(h.only_session().join("stdout.log")).unwrap(),
        expected
    );
    let n = h
        .events()
        .iter()
        .filter(|e| e["type"] == "stdout_line")
        .count();
    assert_eq!(n, 1000);
}

#[test]
fn line_cap_counts_both_streams_and_allows_exactly_n() {
    require_cgroups!("line_cap_counts_both_streams_and_allows_exactly_n");
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--max-output-lines",
        "4",
        "--",
        "sh",
        "-c",
        "echo 1; echo 2 >&2; echo 3; echo 4 >&2",
    ]);
    assert_eq!(code(&o), 0, "exactly the cap is allowed: {}", stderr(&o));
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--max-output-lines",
        "3",
        "--",
        "sh",
        "-c",
        "echo 1; echo 2 >&2; echo 3; echo 4 >&2; sleep 5",
    ]);
    assert_eq!(code(&o), 124);
    assert_eq!(stdout(&o), "1\n3\n");
    assert_eq!(stderr(&o), "2\n");
}

#[test]
fn byte_cap_is_exact() {
    require_cgroups!("byte_cap_is_exact");
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--max-output-bytes",
        "10000",
        "--",
        "yes",
        "abc",
    ]);
    assert_eq!(code(&o), 124);
    assert_eq!(o.stdout.len(), 10000);
    assert!(o.stdout.starts_with(b"abc\nabc\n"));
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "max_output_bytes");
    assert_eq!(s["termination_limit_value"], 10000);
    assert!(s["termination_observed_value"].as_u64().unwrap() > 10000);
    assert_eq!(s["stdout_bytes"], 10000);
    assert_eq!(
        std::fs::metadata(h.only_session().join("stdout.log"))
            .unwrap()
            .len(),
        10000
    );
}

#[test]
fn runtime_cap_kills_background_children() {
    require_cgroups!("runtime_cap_kills_background_children");
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    let t = Instant::now();
    let script = format!("sleep {m} & sleep {m}");
    let o = h.run(&[
        "run",
        "-q",
        "--max-runtime",
        "0.5",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 124);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_none_left(&m);
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "max_runtime");
    assert_eq!(s["termination_limit_value"], 0.5);
}

#[test]
fn setsid_daemon_dies_with_the_run() {
    require_cgroups!("setsid_daemon_dies_with_the_run");
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    // The agent double-forks a daemon into its own session and exits 0.
    let script = format!("(setsid sh -c 'sleep {m}' &) ; sleep 0.2; exit 0");
    let o = h.run(&["run", "-q", "--", "sh", "-c", &script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_none_left(&m);
}

#[test]
fn sigterm_ignorer_is_killed_after_the_grace_period() {
    require_cgroups!("sigterm_ignorer_is_killed_after_the_grace_period");
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    // The cap is crossed only after the trap is set and the sleep started
    // (a time cap could fire before that on a slow machine).
    let script = format!("trap '' TERM; sleep {m} & echo 1; echo 2; sleep {m}");
    let t = Instant::now();
    let o = h.run(&[
        "run",
        "-q",
        "--max-output-lines",
        "1",
        "--kill-grace",
        "0.4",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let took = t.elapsed();
    assert_eq!(code(&o), 124);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_none_left(&m);
    let kinds: Vec<String> = h
        .events()
        .iter()
        .filter(|e| e["type"] == "teardown")
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["sigterm", "kill"]);
}

#[test]
fn fork_loop_is_contained() {
    require_cgroups!("fork_loop_is_contained");
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    let script = format!("while :; do sleep {m} & done");
    let o = h.run(&[
        "run",
        "-q",
        "--max-runtime",
        "0.5",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 124);
    assert_none_left(&m);
}

#[test]
fn sigint_to_vallignus_ends_the_run() {
    require_cgroups!("sigint_to_vallignus_ends_the_run");
    let m = marker();
    let _guard = KillOnDrop(m.clone());
    let h = Home::new();
    let id_file = h.path().join("id");
    let script = format!("sleep {m} & sleep {m}");
    let child = h
        .run_sh(&[], &id_file, &script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_event(&h, &id_file, "process_started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 130, "{}", stderr(&o));
    assert_none_left(&m);
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "signal");
    assert_eq!(s["status"], "terminated");
    assert_eq!(
        std::fs::read_to_string(&id_file).unwrap().trim(),
        s["session_id"].as_str().unwrap()
    );
}

#[test]
fn no_session_still_enforces_caps() {
    require_cgroups!("no_session_still_enforces_caps");
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--no-session",
        "--max-output-lines",
        "5",
        "--",
        "seq",
        "1",
        "100",
    ]);
    assert_eq!(code(&o), 124);
    assert_eq!(stdout(&o), "1\n2\n3\n4\n5\n");
    assert!(
        !h.sessions_dir().exists() || std::fs::read_dir(h.sessions_dir()).unwrap().count() == 0
    );
}

#[test]
fn env_summary_has_no_secrets() {
    require_cgroups!("env_summary_has_no_secrets");
    let h = Home::new();
    let o = h
        .cmd()
        .env("NPM_TOKEN", "npm-secret-value")
        .env("PATH_SECRET", "x")
        .args(["run", "-q", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    let raw = std::fs::read_to_string(h.only_session().join("session.json")).unwrap();
    assert!(!raw.contains("npm-secret-value"));
    let s = h.session_json();
    assert!(s["env_summary"].get("NPM_TOKEN").is_none());
    assert!(s["env_summary"].get("PATH").is_some());
}
