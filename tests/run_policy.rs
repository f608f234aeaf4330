//! `run` with a policy file and a token: precedence (defaults < file <
//! flags), narrowing by the token, what the session records, and that the
//! agent cannot read the auth store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn policy_file(h: &Home, yaml: &str) -> String {
    let p = h.path().join("vallignus.policy.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn policy_file_caps_and_flags_override_them() {
    if !cgroups_available("policy_file_caps_and_flags_override_them") {
        return;
    }
    let h = Home::new();
    let pf = policy_file(&h, "constraints:\n  max_output_lines: 3\n");
    let o = h.run(&["run", "-q", "--policy", &pf, "--", "seq", "1", "10"]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n2\n3\n");
    let o = h.run(&[
        "run",
        "-q",
        "--policy",
        &pf,
        "--max-output-lines",
        "5",
        "--",
        "seq",
        "1",
        "10",
    ]);
    assert_eq!(code(&o), 124);
    assert_eq!(stdout(&o).lines().count(), 5);
    let o = h.run(&[
        "run",
        "-q",
        "--policy",
        &pf,
        "--max-output-lines",
        "0",
        "--",
        "seq",
        "1",
        "10",
    ]);
    assert_eq!(code(&o), 0, "a flag of 0 turns the file's cap off");
    assert_eq!(stdout(&o).lines().count(), 10);
}

#[test]
fn policy_file_level_and_errors() {
    if !cgroups_available("policy_file_level_and_errors") {
        return;
    }
    let h = Home::new();
    let pf = policy_file(&h, "security_context:\n  level: standard\n");
    let o = h.run(&["run", "-q", "--policy", &pf, "--", "sh", "-c", "echo $$"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "2\n",
        "standard level: the agent is pid 2 under init"
    );
    let s = h.session_json();
    assert_eq!(s["policy_file"], pf.as_str());
    assert!(s["enforcement"]["namespaces"]["enforced"] == true);

    let bad = policy_file(&h, "constraints:\n  max_output_lines: lots\n");
    let o = h.run(&["run", "--policy", &bad, "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("ran"));
    let o = h.run(&["run", "--policy", "/nonexistent/policy.yaml", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("/nonexistent/policy.yaml"),
        "{}",
        stderr(&o)
    );
}

fn issue_token(h: &Home, max_runtime: &str) -> String {
    token_for_policy(
        h,
        &[
            "--allowed-domains",
            "api.example.com",
            "--max-runtime",
            max_runtime,
            "--max-output-lines",
            "100",
        ],
    )
}

#[test]
fn token_narrows_and_is_recorded() {
    if !cgroups_available("token_narrows_and_is_recorded") {
        return;
    }
    let h = Home::new();
    let token = issue_token(&h, "1");
    // The flag asks for 10 s; the token's policy allows 1 s: 1 s wins.
    let o = h.run(&[
        "run",
        "-q",
        "--token",
        &token,
        "--max-runtime",
        "10",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let listing: serde_json::Value =
        serde_json::from_slice(&h.run(&["sessions", "list", "--json"]).stdout).unwrap();
    let s = &listing[0];
    assert_eq!(s["termination_reason"], "max_runtime");
    assert_eq!(s["termination_limit_value"], 1);
    assert_eq!(s["agent_id"], "bot");
    assert_eq!(s["owner"], "alice");
    assert_eq!(s["policy_id"], "p1");
    assert_eq!(s["policy_version"], 1);
    assert!(s["token_jti"].as_str().is_some());
    assert!(s["enforcement"]["network"]["detail"]
        .as_str()
        .unwrap()
        .contains("api.example.com"));

    // A tighter flag stays tighter.
    let o = h.run(&[
        "run",
        "-q",
        "--token",
        &token,
        "--max-runtime",
        "0.3",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(code(&o), 124);

    // Revoked: refused before anything runs.
    let jti = s["token_jti"].as_str().unwrap().to_string();
    assert_eq!(code(&h.run(&["auth", "revoke-token", "--jti", &jti])), 0);
    let o = h.run(&["run", "--token", &token, "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("ran"));
}

#[test]
fn agent_cannot_read_the_auth_store() {
    if !cgroups_available("agent_cannot_read_the_auth_store") {
        return;
    }
    let h = Home::new();
    let _ = issue_token(&h, "60");
    let keys = h.path().join("auth").join("keys");
    let script = format!("ls {0} 2>&1; cat {0}/*.key 2>&1; echo done", keys.display());
    let o = h.run(&["run", "-q", "--user", "nobody", "--", "sh", "-c", &script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    // No key material leaked: every key file's content is absent.
    for e in std::fs::read_dir(&keys).unwrap() {
        let content = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        if content.len() > 16 {
            assert!(!out.contains(content.trim()), "key content leaked");
        }
    }
}

/// A token run without any isolation flag: raised to the standard level,
/// so even as root the agent cannot read the signing key; and the token
/// itself (given in VALLIGNUS_TOKEN) is not in the agent's environment.
#[test]
fn a_token_run_hides_the_store_and_the_token() {
    let test = "a_token_run_hides_the_store_and_the_token";
    if !cgroups_available(test) || !landlock_available(test) {
        return;
    }
    // Outside /tmp: the private /tmp of the standard level would hide a
    // home under /tmp by accident.
    let h = Home::outside_tmp();
    let token = issue_token(&h, "60");
    let keys = h.path().join("auth").join("keys");
    let key = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "key"))
        .unwrap();
    let script = format!(
        "cat {} 2>&1; env | grep -c VALLIGNUS_TOKEN; echo done",
        key.display()
    );
    let o = h
        .cmd()
        .env("VALLIGNUS_TOKEN", &token)
        .args(["run", "-q", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Permission denied"), "{out}");
    assert!(
        out.ends_with("0\ndone\n"),
        "the token reached the agent: {out}"
    );
    assert!(!out.contains(&token));
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(!out.contains(secret.trim()), "key content leaked: {out}");
    let s = h.session_json();
    assert!(s["token_jti"].as_str().is_some());
    assert_eq!(s["enforcement"]["landlock"]["enforced"], true);
}

/// A token's run must be enforced as the token says, or not start:
/// --best-effort is refused with it. --end-on-pids-max needs a pids limit.
#[test]
fn refused_flag_combinations() {
    let h = Home::new();
    let token = issue_token(&h, "60");
    for (args, needle) in [
        (
            vec![
                "run",
                "--token",
                token.as_str(),
                "--best-effort",
                "--",
                "true",
            ],
            "--best-effort cannot be used with --token",
        ),
        (
            vec!["run", "--end-on-pids-max", "--", "true"],
            "--end-on-pids-max",
        ),
    ] {
        let o = h.run(&args);
        assert_eq!(code(&o), 125, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

/// A one-shot HTTP server on 127.0.0.1 that records the request it got.
fn webhook_server() -> (u16, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then the body by Content-Length.
        loop {
            let n = c.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if req.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        String::from_utf8_lossy(&req).into_owned()
    });
    (port, handle)
}

#[test]
fn violation_alert_is_posted_by_the_supervisor() {
    if !cgroups_available("violation_alert_is_posted_by_the_supervisor") {
        return;
    }
    let (port, server) = webhook_server();
    let h = Home::new();
    let pf = policy_file(
        &h,
        &format!("violation_protocol:\n  alert_webhook: http://127.0.0.1:{port}/hook\n"),
    );
    let o = h.run(&[
        "run",
        "-q",
        "--policy",
        &pf,
        "--max-output-lines",
        "1",
        "--",
        "seq",
        "1",
        "10",
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let req = server.join().unwrap();
    assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
    let body: serde_json::Value =
        serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let sid = h.session_json()["session_id"].as_str().unwrap().to_string();
    assert_eq!(body["session_id"], sid.as_str());
    assert_eq!(body["reason"], "max_output_lines");
    assert_eq!(body["limit_value"], 1);
    assert_eq!(body["observed_value"], 2);
    // The attempt is an event of its own, after the violation and before
    // its outcome; both name the URL.
    let events = h.events();
    let at = |t: &str| events.iter().position(|e| e["type"] == t).unwrap();
    let (terminated, attempt, sent) = (at("run_terminated"), at("alert_attempt"), at("alert_sent"));
    assert!(terminated < attempt && attempt < sent, "{events:?}");
    let url = format!("http://127.0.0.1:{port}/hook");
    assert_eq!(events[attempt]["url"], url.as_str());
    assert_eq!(events[sent]["url"], url.as_str());
    assert_eq!(events[sent]["status"], 200);
}

/// A run whose alert to `url` cannot be delivered: it ends in time, and
/// the attempt and its failure are events naming the URL. Returns the error.
fn undeliverable_alert(h: &Home, url: &str) -> String {
    let t = std::time::Instant::now();
    let o = h.run(&[
        "run",
        "-q",
        "--alert-webhook",
        url,
        "--max-runtime",
        "0.3",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    // The run's 0.3 s, the alert's 2 s at most, and slack for a busy host.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        t.elapsed()
    );
    let events = h.events();
    let at = |t: &str| events.iter().position(|e| e["type"] == t).unwrap();
    let (attempt, failed) = (at("alert_attempt"), at("alert_failed"));
    assert!(attempt < failed, "{events:?}");
    assert_eq!(events[attempt]["url"], url);
    assert_eq!(events[failed]["url"], url);
    events[failed]["error"].as_str().unwrap().to_string()
}

#[test]
fn an_unreachable_webhook_does_not_hold_up_teardown() {
    if !cgroups_available("an_unreachable_webhook_does_not_hold_up_teardown") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let error = undeliverable_alert(&Home::new(), &format!("http://127.0.0.1:{port}/hook"));
    assert!(error.contains("connect"), "{error}");

    // A server that takes the connection and never answers: the alert
    // gives up at its deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let error = undeliverable_alert(&Home::new(), &format!("http://127.0.0.1:{port}/hook"));
    assert!(error.contains("within 2 s"), "{error}");
    drop(silent);

    let h = Home::new();
    let o = h.run(&[
        "run",
        "--alert-webhook",
        "https://127.0.0.1/hook",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("https"), "{}", stderr(&o));
}

#[test]
fn policy_show_applies_the_token() {
    let h = Home::new();
    let token = issue_token(&h, "7");
    let o = h.run(&[
        "policy",
        "show",
        "--json",
        "--max-runtime",
        "60",
        "--token",
        &token,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["constraints"]["max_runtime"], 7, "{v}");
    assert_eq!(
        v["constraints"]["network"]["allow_domains"][0],
        "api.example.com"
    );
    // Every run flag is taken, and the token stays the ceiling: a flag's
    // extra domain is not in effect.
    let o = h.run(&[
        "policy",
        "show",
        "--json",
        "--token",
        &token,
        "--allow-domain",
        "api.example.com",
        "--allow-domain",
        "evil.example.net",
        "--memory-max",
        "64M",
        "--user",
        "nobody",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["constraints"]["network"]["allow_domains"],
        serde_json::json!(["api.example.com"]),
        "{v}"
    );
    assert_eq!(v["constraints"]["memory"], 64u64 << 20);
    // A token raises the level to standard (the store must stay hidden).
    assert_eq!(v["security_context"]["level"], "standard");
    assert_eq!(v["security_context"]["user"], "65534:65534");
    let o = h.run(&["policy", "show", "--token", "vl1.bad"]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("--token"), "{}", stderr(&o));
}

#[test]
fn token_run_limits_deny_domains_and_level_only_narrow() {
    let h = Home::new();
    let token = token_for_policy(
        &h,
        &[
            "--allowed-domains",
            "api.example.com",
            "--pids-max",
            "5",
            "--memory-max",
            "64M",
            "--cpu-max",
            "0.25",
            "--deny-domains",
            "evil.example.com",
            "--isolation",
            "strict",
        ],
    );
    // `policy show` resolves the flags as `run` does.
    let show = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["policy", "show", "--json", "--token", &token];
        all.extend_from_slice(args);
        let o = h.run(&all);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // Looser flags: the token's values win, its deny list is added, and
    // the level is raised to its minimum.
    let v = show(&[
        "--pids-max",
        "100",
        "--memory-max",
        "1G",
        "--cpu-max",
        "2",
        "--isolation",
        "standard",
        "--deny-domain",
        "other.example.org",
    ]);
    let c = &v["constraints"];
    assert_eq!(c["pids"], 5, "{v}");
    assert_eq!(c["memory"], 64u64 << 20, "{v}");
    assert_eq!(c["cpu"], 0.25, "{v}");
    let deny = c["network"]["deny_domains"].as_array().unwrap();
    for d in ["evil.example.com", "other.example.org"] {
        assert!(deny.iter().any(|x| x == d), "{d}: {v}");
    }
    assert_eq!(v["security_context"]["level"], "strict", "{v}");
    // Tighter flags stay tighter.
    let v = show(&["--pids-max", "3", "--memory-max", "32M", "--cpu-max", "0.1"]);
    let c = &v["constraints"];
    assert_eq!(c["pids"], 3, "{v}");
    assert_eq!(c["memory"], 32u64 << 20, "{v}");
    assert_eq!(c["cpu"], 0.1, "{v}");
    // No flags: the token's.
    let v = show(&[]);
    assert_eq!(v["constraints"]["pids"], 5, "{v}");
    assert_eq!(v["security_context"]["level"], "strict", "{v}");

    // A run enforces the narrowed limits, or does not start (a token run
    // takes no --best-effort): where the controllers are missing (this
    // hybrid host) it fails naming one; in the VM tier it records them.
    if !cgroups_available("token_run_limits_deny_domains_and_level_only_narrow") {
        return;
    }
    let o = h.run(&[
        "run",
        "-q",
        "--token",
        &token,
        "--pids-max",
        "100",
        "--",
        "true",
    ]);
    let offered = offered_controllers();
    let all = ["pids", "memory", "cpu"]
        .iter()
        .all(|c| offered.iter().any(|x| x == *c));
    if all {
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let e = &h.session_json()["enforcement"];
        assert_eq!(e["pids.max"]["detail"], "5", "{e}");
        assert_eq!(e["memory.max"]["detail"], (64u64 << 20).to_string(), "{e}");
    } else {
        assert_eq!(code(&o), 125, "{}", stderr(&o));
        assert!(stderr(&o).contains("controller"), "{}", stderr(&o));
    }
}

#[test]
fn policy_file_environment_policy() {
    if !cgroups_available("policy_file_environment_policy") {
        return;
    }
    let h = Home::new();
    let pf = policy_file(
        &h,
        "security_context:\n  clear_env: true\n  env: [KEEP_ME, MODE=file, OTHER=file]\n",
    );
    let o = h
        .cmd()
        .env("OPENAI_API_KEY", "sk-policy-secret")
        .env("KEEP_ME", "kept")
        .args([
            "run",
            "-q",
            "--policy",
            &pf,
            "--env",
            "MODE=flag",
            "--",
            "sh",
            "-c",
            "env | sort",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains("sk-policy-secret"), "{out}");
    assert!(out.contains("KEEP_ME=kept\n"), "{out}");
    assert!(
        out.contains("MODE=flag\n"),
        "the flag wins over the file: {out}"
    );
    assert!(out.contains("OTHER=file\n"), "{out}");

    let bad = h.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "security_context:\n  env:\n    - GOOD\n    - 1BAD=x\n",
    )
    .unwrap();
    let o = h.run(&["run", "--policy", bad.to_str().unwrap(), "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("line 4"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("security_context.env[1]"),
        "{}",
        stderr(&o)
    );
    let o = h.run(&["policy", "check", &pf]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("clear_env: true"), "{}", stdout(&o));
}
