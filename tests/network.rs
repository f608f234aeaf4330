//! The network path end to end: the agent's only way out is the policy
//! proxy, listening on the loopback of the agent's own network namespace. Root (tier 2); every target is on this machine: a
//! local upstream on 127.0.0.1 that the proxy reaches through `--resolve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::*;

fn network_available(test: &str) -> bool {
    if !cgroups_available(test) {
        return false;
    }
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if !nft {
        skip(test, "nft is not installed (apt-get install nftables)");
    }
    nft
}

/// A tiny HTTP upstream on 127.0.0.1 that answers every request with
/// `hello` (in a thread; it stops with the test process).
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                );
            });
        }
    });
    port
}

/// vallignus 0.4.2's `--port`: the proxy listens there (on the agent's
/// loopback), HTTP_PROXY says so, and requests go through it.
#[test]
fn port_moves_the_proxy_on_the_agent_s_loopback() {
    if !network_available("port_moves_the_proxy_on_the_agent_s_loopback") {
        return;
    }
    let port = upstream();
    let h = Home::new();
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    let script = format!(
        "echo \"$HTTP_PROXY\"; curl -s -m 5 http://api.example.test:{port}/; echo; \
         curl -s -m 3 --noproxy '*' -o /dev/null -w 'old %{{http_code}}\\n' http://127.0.0.1:61213/; exit 0"
    );
    let o = h.run(&[
        "run",
        "-q",
        "--port",
        "8080",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "http://127.0.0.1:8080\nhello\nold 000\n");
    assert!(h.session_json()["enforcement"]["network"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("proxy at 127.0.0.1:8080 in the agent's namespace"));
    let o = h.run(&[
        "run",
        "--port",
        "0",
        "--allow-domain",
        "x.test",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("--port 0"), "{}", stderr(&o));
}

#[test]
fn only_the_proxy_is_reachable_and_every_request_is_recorded() {
    if !network_available("only_the_proxy_is_reachable_and_every_request_is_recorded") {
        return;
    }
    let port = upstream();
    // Any other host service must stay out of reach.
    let other = TcpListener::bind("0.0.0.0:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let h = Home::new();
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    let script = format!(
        "curl -s -m 5 http://api.example.test:{port}/v1/x?secret=1; echo; \
         curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' http://evil.example.org:{port}/; \
         curl -s -m 3 --noproxy '*' -o /dev/null -w 'direct %{{http_code}}\\n' http://127.0.0.1:{port}/; \
         curl -s -m 3 --noproxy '*' -o /dev/null -w 'other %{{http_code}}\\n' http://127.0.0.1:{other_port}/; \
         curl -s -m 5 -o /dev/null -w 'spoof %{{http_code}}\\n' -H 'Host: evil.example.org' http://api.example.test:{port}/; \
         echo \"netns $(readlink /proc/self/ns/net)\""
    );
    let t = std::time::Instant::now();
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("hello\n403\n"), "{out}");
    assert!(
        out.contains("direct 000"),
        "a direct connection got through: {out}"
    );
    assert!(
        out.contains("other 000"),
        "a host service was reachable: {out}"
    );
    assert!(out.contains("spoof 403"), "{out}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "blocked connections must fail fast"
    );

    let s = h.session_json();
    assert_eq!(s["allowed_requests"], 1);
    assert_eq!(s["denied_requests"], 2);
    assert_eq!(s["total_requests"], 3);
    assert!(s["enforcement"]["network"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("proxy at 127.0.0.1:61213 in the agent's namespace"));
    let reqs: Vec<serde_json::Value> = h
        .events()
        .into_iter()
        .filter(|e| e["type"] == "net_request")
        .collect();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0]["decision"], "allow");
    assert_eq!(reqs[0]["host"], "api.example.test");
    assert_eq!(reqs[0]["path"], "/v1/x", "the query is not recorded");
    assert_eq!(reqs[1]["reason"], "domain_not_allowed");
    assert_eq!(reqs[2]["reason"], "host_header_mismatch");
    // Nothing of the run's network is left: no process is in its namespace
    // (the supervisor's listening socket, the only other reference, closed
    // when it exited), and the host has no object of it.
    let netns = out
        .lines()
        .find_map(|l| l.strip_prefix("netns "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(netns.starts_with("net:["), "{out}");
    assert_ne!(
        std::fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy(),
        netns
    );
    // (Only this run's processes, recognised by the upstream's port in
    // their command lines: once the namespace is gone its number may be
    // reused at once by another test's run.)
    let ours: Vec<i32> = processes_in_netns(netns)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!(":{port}/")))
        })
        .collect();
    assert_eq!(ours, Vec::<i32>::new());
}

/// A process (other than vallignus itself) whose command line contains
/// `marker`, in a network namespace other than ours: the run's agent.
fn agent_with(marker: &str) -> u32 {
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(marker)
                && std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l != ours)
        })
        .unwrap_or_else(|| panic!("no agent process with {marker} in its command line"))
}

#[test]
fn request_cap_ends_the_run() {
    if !network_available("request_cap_ends_the_run") {
        return;
    }
    let port = upstream();
    let h = Home::new();
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    let script = format!(
        "for i in 1 2 3 4; do curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' http://api.example.test:{port}/; done; sleep 5"
    );
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--max-requests",
        "2",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    // Two went through; the third was refused with 429 and ended the run
    // (curl may be killed before it prints the 429).
    assert!(stdout(&o).starts_with("200\n200\n"), "{}", stdout(&o));
    assert_eq!(stdout(&o).matches("200").count(), 2, "{}", stdout(&o));
    let refused: Vec<serde_json::Value> = h
        .events()
        .into_iter()
        .filter(|e| e["type"] == "net_request" && e["reason"] == "max_requests")
        .collect();
    // At least the third; a fourth curl may start before the teardown
    // reaches it, and is refused the same way.
    assert!(!refused.is_empty());
    assert!(refused.iter().all(|r| r["status"] == 429), "{refused:?}");
    let allowed = h
        .events()
        .into_iter()
        .filter(|e| e["type"] == "net_request" && e["decision"] == "allow")
        .count();
    assert_eq!(allowed, 2);
    let s = h.session_json();
    assert_eq!(s["termination_reason"], "max_requests");
    assert_eq!(s["termination_limit_value"], 2);
}

#[test]
fn net_none_and_host_modes() {
    if !network_available("net_none_and_host_modes") {
        return;
    }
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--net",
        "none",
        "--",
        "sh",
        "-c",
        "ip -o link | wc -l",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "1", "only loopback");
    let o = h.run(&[
        "run",
        "-q",
        "--net",
        "host",
        "--allow-domain",
        "x.test",
        "--",
        "true",
    ]);
    assert_eq!(
        code(&o),
        125,
        "rules cannot be enforced on the host network"
    );
    assert!(stderr(&o).contains("--net host"), "{}", stderr(&o));
    let o = h.run(&["run", "-q", "--allow-domain", "*.", "--", "true"]);
    assert_eq!(code(&o), 125);
}

#[test]
fn when_the_proxy_is_gone_the_agent_has_no_network() {
    if !network_available("when_the_proxy_is_gone_the_agent_has_no_network") {
        return;
    }
    let port = upstream();
    let h = Home::new();
    let id_file = h.path().join("id");
    let go = h.path().join("go");
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    // The agent: one request through the proxy, then it says where the
    // proxy is and waits until the test has killed the proxy's socket.
    let script = format!(
        "curl -s -m 5 -o /dev/null -w 'first %{{http_code}}\\n' http://api.example.test:{port}/; \
         echo \"ready $HTTP_PROXY\"; \
         i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
         curl -s -m 5 -o /dev/null -w 'second %{{http_code}}\\n' http://api.example.test:{port}/; \
         curl -s -m 5 --noproxy '*' -o /dev/null -w 'direct %{{http_code}}\\n' http://127.0.0.1:{port}/",
        go = go.display()
    );
    let child = h
        .run_sh(
            &["--allow-domain", "api.example.test", "--resolve", &resolve],
            &id_file,
            &script,
        )
        .current_dir(h.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_event(&h, &id_file, "ready http://");
    let id = std::fs::read_to_string(&id_file).unwrap();
    let events =
        std::fs::read_to_string(h.sessions_dir().join(id.trim()).join("events.jsonl")).unwrap();
    let proxy = events
        .split("ready http://")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(proxy, "127.0.0.1:61213");
    // Kill the proxy's listening socket from outside (SOCK_DESTROY, in the
    // agent's namespace, where it is), as if the proxy had died: nothing
    // listens at its address any more.
    let agent = agent_with(&go.display().to_string());
    let ss = std::process::Command::new("nsenter")
        .args(["-t", &agent.to_string(), "-n", "--"])
        .args(["ss", "-K", "-t", "state", "listening", "src", &proxy])
        .output()
        .unwrap();
    assert!(
        ss.status.success(),
        "ss -K: {}",
        String::from_utf8_lossy(&ss.stderr)
    );
    std::fs::write(&go, "").unwrap();
    let o = child.wait_with_output().unwrap();
    // The agent's status is its last curl's: 7, "failed to connect".
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("first 200"), "{out}");
    assert!(
        out.contains("second 000"),
        "the agent still had network: {out}"
    );
    assert!(out.contains("direct 000"), "{out}");
    // The supervisor saw its proxy end and recorded it.
    let events =
        std::fs::read_to_string(h.sessions_dir().join(id.trim()).join("events.jsonl")).unwrap();
    assert!(
        events.contains("\"type\":\"proxy_stopped\""),
        "no proxy_stopped event"
    );
}

#[test]
fn connect_ports_other_than_443_need_a_flag() {
    if !network_available("connect_ports_other_than_443_need_a_flag") {
        return;
    }
    let port = upstream();
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    let script =
        format!("curl -s -m 5 -o /dev/null https://api.example.test:{port}/; echo curl=$?");
    let connects = |h: &Home| -> Vec<serde_json::Value> {
        h.events()
            .into_iter()
            .filter(|e| e["type"] == "net_request" && e["method"] == "CONNECT")
            .collect()
    };
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let c = connects(&h);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["reason"], "port_not_allowed");

    let h = Home::new();
    let port_s = port.to_string();
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--connect-port",
        &port_s,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let c = connects(&h);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["decision"], "allow", "{c:?}");
    assert_eq!(c[0]["sni"], "api.example.test");
    assert!(h.session_json()["enforcement"]["network"]["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("CONNECT ports {port}")));
}

/// A token's allowed domains are a ceiling: `--allow-domain` cannot add to
/// them, only narrow (the token's list is the allow list when the run
/// names none). The policy file's `default_policy: allow` lets unnamed
/// names through, still within the token.
#[test]
fn a_token_narrows_the_domains_and_default_policy_allow_works() {
    let test = "a_token_narrows_the_domains_and_default_policy_allow_works";
    if !network_available(test) {
        return;
    }
    let port = upstream();
    let h = Home::new();
    let token = token_for_policy(
        &h,
        &["--allowed-domains", "api.example.test,docs.example.test"],
    );
    let curl = |host: &str| {
        format!("curl -s -m 5 -o /dev/null -w '{host} %{{http_code}}\\n' http://{host}:{port}/; ")
    };
    let script = ["api.example.test", "docs.example.test", "evil.example.test"]
        .map(curl)
        .concat();
    let id_file = h.path().join("id");
    let mut args: Vec<String> = ["run", "-q", "--token", &token, "--session-id-file"]
        .map(String::from)
        .to_vec();
    args.push(id_file.to_str().unwrap().into());
    for host in ["api.example.test", "docs.example.test", "evil.example.test"] {
        args.push("--resolve".into());
        args.push(format!("{host}:{port}:127.0.0.1"));
    }
    let run = |extra: &[&str]| {
        let mut a = args.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["--", "sh", "-c", &script].map(String::from));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = h.run(&a);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stdout(&o)
    };
    let reasons = || -> Vec<String> {
        let id = std::fs::read_to_string(&id_file).unwrap();
        h.events_of(id.trim())
            .into_iter()
            .filter(|e| e["type"] == "net_request")
            .map(|e| e["reason"].as_str().unwrap_or("allowed").to_string())
            .collect()
    };

    // The token alone: its two domains.
    let out = run(&[]);
    assert_eq!(
        out,
        "api.example.test 200\ndocs.example.test 200\nevil.example.test 403\n"
    );
    assert_eq!(reasons(), ["allowed", "allowed", "domain_not_allowed"]);

    // A flag narrows to one of them, and cannot add evil.example.test.
    let out = run(&[
        "--allow-domain",
        "api.example.test",
        "--allow-domain",
        "evil.example.test",
    ]);
    assert_eq!(
        out,
        "api.example.test 200\ndocs.example.test 403\nevil.example.test 403\n"
    );
    assert_eq!(
        reasons(),
        ["allowed", "domain_not_allowed", "not_allowed_by_token"]
    );

    // default_policy allow: every name, within the token.
    let file = h.path().join("open.yaml");
    std::fs::write(
        &file,
        "constraints:\n  network:\n    default_policy: allow\n",
    )
    .unwrap();
    let out = run(&["--policy", file.to_str().unwrap()]);
    assert_eq!(
        out,
        "api.example.test 200\ndocs.example.test 200\nevil.example.test 403\n"
    );
    assert_eq!(reasons(), ["allowed", "allowed", "not_allowed_by_token"]);

    // default_policy allow without a token: every name passes.
    let h2 = Home::new();
    let mut a: Vec<String> = vec![
        "run".into(),
        "-q".into(),
        "--policy".into(),
        file.to_str().unwrap().into(),
    ];
    for host in ["api.example.test", "evil.example.test"] {
        a.push("--resolve".into());
        a.push(format!("{host}:{port}:127.0.0.1"));
    }
    let script2 = ["api.example.test", "evil.example.test"].map(curl).concat();
    a.extend(["--", "sh", "-c", &script2].map(String::from));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = h2.run(&a);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "api.example.test 200\nevil.example.test 200\n");
    let rules: Vec<String> = h2
        .events()
        .into_iter()
        .filter(|e| e["type"] == "net_request")
        .map(|e| e["rule"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(rules, ["*", "*"]);
}

/// A network setup that fails after the agent was forked (here `nft`,
/// replaced in a private mount namespace by a script that refuses every
/// ruleset, or that hangs) stops the run before the agent starts: exit
/// 125, the reason in the message, the agent never ran. With a cgroup, and
/// under `--best-effort` without one, where the waiting child has no
/// process group of its own yet (the run used to wait for it forever).
#[test]
fn a_failed_network_setup_stops_the_run_before_the_agent_starts() {
    let test = "a_failed_network_setup_stops_the_run_before_the_agent_starts";
    if !network_available(test) {
        return;
    }
    let h = Home::new();
    let not_a_cgroup = h.path().join("not-a-cgroup");
    std::fs::create_dir(&not_a_cgroup).unwrap();
    let ran = h.path().join("agent-ran");
    let agent = format!("touch {}", ran.display());
    // Every nft that vallignus could pick is the fake, in this mount
    // namespace only (it goes away with the command).
    let swap = r#"for d in /usr/sbin /sbin /usr/bin /bin; do
        [ -x "$d/nft" ] && { mount --bind "$0" "$d/nft" || exit 99; }
    done
    exec "$@""#;
    let refuses = "#!/bin/sh\necho 'fake nft: ruleset refused' >&2\nexit 1\n";
    // Killed after vallignus's 10 s limit, long before its own end.
    let hangs = "#!/bin/sh\nexec sleep 120\n";
    let cases = [
        (refuses, false, "fake nft: ruleset refused"),
        (refuses, true, "fake nft: ruleset refused"),
        (hangs, false, "killed after 10 s"),
    ];
    for (n, (script, best_effort, reason)) in cases.into_iter().enumerate() {
        let fake = h.path().join(format!("fake-nft-{n}"));
        std::fs::write(&fake, script).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = std::process::Command::new("unshare");
        cmd.env("VALLIGNUS_HOME", h.path())
            .env_remove("VALLIGNUS_TOKEN")
            .env_remove("VALLIGNUS_CGROUP_ROOT")
            .stdin(std::process::Stdio::null())
            .args(["-m", "--propagation", "private", "--", "sh", "-c", swap])
            .arg(&fake)
            .args([BIN, "run", "-q", "--allow-domain", "x.test"]);
        if best_effort {
            cmd.env("VALLIGNUS_CGROUP_ROOT", &not_a_cgroup)
                .arg("--best-effort");
        }
        cmd.args(["--", "sh", "-c", &agent]);
        let start = std::time::Instant::now();
        let o = output_with_timeout(&mut cmd, std::time::Duration::from_secs(40));
        let took = start.elapsed();
        let what = format!("case {n} (best effort {best_effort}), after {took:?}");
        assert_eq!(code(&o), 125, "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(reason), "{what}: {}", stderr(&o));
        assert!(
            !ran.exists(),
            "{what}: the agent ran although its network failed"
        );
        assert!(took < std::time::Duration::from_secs(20), "{what}");
    }
}
