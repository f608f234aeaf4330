//! `vallignus auth ...` end to end: the binary with a private
//! VALLIGNUS_HOME, its exit codes, what goes to stdout and stderr, and every
//! way a token must be refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use vallignus::auth::token;
use vallignus::auth::AuthStore;

/// Run `vallignus auth <args>`, asserting the exit code.
fn auth(h: &Home, args: &[&str], want: i32) -> std::process::Output {
    let mut all = vec!["auth"];
    all.extend_from_slice(args);
    let o = h.run(&all);
    assert_eq!(
        code(&o),
        want,
        "auth {args:?}\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// A home with agent `bot` (owner `ops`) and policy `pol`.
fn setup() -> Home {
    let h = Home::new();
    auth(&h, &["init"], 0);
    auth(
        &h,
        &[
            "create-agent",
            "--agent-id",
            "bot",
            "--owner",
            "ops",
            "--description",
            "a bot",
        ],
        0,
    );
    auth(
        &h,
        &[
            "create-policy",
            "--policy-id",
            "pol",
            "--allowed-domains",
            "api.example.com,*.example.org",
            "--max-spend-usd",
            "2.5",
            "--max-requests",
            "100",
            "--max-runtime",
            "5m",
            "--max-output-lines",
            "1000",
            "--max-output-bytes",
            "1MB",
        ],
        0,
    );
    h
}

fn issue(h: &Home) -> String {
    let o = auth(
        h,
        &["issue-token", "--agent-id", "bot", "--policy-id", "pol"],
        0,
    );
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "only the token on stdout: {out:?}");
    out.trim().to_string()
}

/// `verify-token --json`: (exit code, the reason code when invalid).
fn verify(h: &Home, token: &str) -> (i32, serde_json::Value) {
    let o = h.run(&["auth", "verify-token", "--json", token]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| {
        panic!("{e}: {} / {}", stdout(&o), stderr(&o));
    });
    if code(&o) != 0 {
        assert!(
            stderr(&o).starts_with("vallignus: invalid token: "),
            "{}",
            stderr(&o)
        );
    }
    (code(&o), v)
}

fn assert_rejected(h: &Home, token: &str, reason: &str) {
    let (rc, v) = verify(h, token);
    assert_eq!(rc, 1, "{v}");
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], reason, "{v}");
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(String::from).collect()
}

#[test]
fn full_flow_and_outputs() {
    let h = setup();
    let t = issue(&h);
    assert!(t.starts_with("vl1."));
    assert_eq!(t.split('.').count(), 4);

    let (rc, v) = verify(&h, &t);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["token"]["agent_id"], "bot");
    assert_eq!(v["token"]["owner"], "ops");
    assert_eq!(v["token"]["policy"]["version"], 1);
    assert_eq!(v["token"]["policy"]["max_runtime_secs"], 300);
    assert_eq!(v["token"]["policy"]["max_output_bytes"], 1 << 20);
    assert_eq!(v["token"]["policy"]["max_spend_usd"], 2.5);

    // Text mode says valid on stdout.
    let o = auth(&h, &["verify-token", &t], 0);
    assert!(stdout(&o).starts_with("valid\n"), "{}", stdout(&o));

    // From the environment and from stdin.
    let o = h
        .cmd()
        .args(["auth", "verify-token"])
        .env("VALLIGNUS_TOKEN", &t)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut child = h
        .cmd()
        .args(["auth", "verify-token", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{t}").unwrap();
    assert_eq!(code(&child.wait_with_output().unwrap()), 0);

    // inspect-token decodes without verifying, and says so.
    let o = auth(&h, &["inspect-token", "--json", &t], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["header"]["alg"], "EdDSA");
    assert_eq!(v["payload"]["agent_id"], "bot");
    assert!(stderr(&o).contains("NOT VERIFIED"), "{}", stderr(&o));
    let o = auth(&h, &["inspect-token", &t], 0);
    assert!(stdout(&o).contains("NOT VERIFIED"));
    // It decodes a forged token too: it checks nothing.
    let mut p = parts(&t);
    p[3] = B64.encode([0u8; 64]);
    auth(&h, &["inspect-token", &p.join(".")], 0);
    auth(&h, &["inspect-token", "garbage"], 1);

    // Listings.
    let o = auth(&h, &["list-agents", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["agent_id"], "bot");
    assert_eq!(v[0]["description"], "a bot");
    assert_eq!(v[0]["revoked"], false);
    let o = auth(&h, &["list-policies", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["latest"]["policy_id"], "pol");
    assert_eq!(
        v[0]["latest"]["allowed_domains"],
        serde_json::json!(["api.example.com", "*.example.org"])
    );
    let o = auth(&h, &["list-tokens", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(!stdout(&o).contains(&t), "the log must not hold the token");
    for verb in ["list-agents", "list-policies", "list-tokens"] {
        let o = auth(&h, &[verb], 0);
        assert!(!stdout(&o).is_empty(), "{verb}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let h = setup();
    for args in [
        vec!["create-agent", "--agent-id", "../evil", "--owner", "x"],
        vec!["create-agent", "--agent-id", ".hidden", "--owner", "x"],
        vec![
            "create-policy",
            "--policy-id",
            "p2",
            "--allowed-domains",
            "a..b",
        ],
        vec!["create-policy", "--policy-id", "p2"],
        vec![
            "create-policy",
            "--policy-id",
            "p2",
            "--allowed-domains",
            "a.com",
            "--max-runtime",
            "soon",
        ],
        vec![
            "create-policy",
            "--policy-id",
            "p2",
            "--allowed-domains",
            "a.com",
            "--max-output-bytes",
            "12Q",
        ],
        vec![
            "create-policy",
            "--policy-id",
            "p2",
            "--allowed-domains",
            "a.com",
            "--max-spend-usd",
            "-1",
        ],
        vec!["update-policy", "--policy-id", "pol"],
        vec![
            "update-policy",
            "--policy-id",
            "pol",
            "--max-requests",
            "100",
        ],
        vec![
            "issue-token",
            "--agent-id",
            "bot",
            "--policy-id",
            "pol",
            "--ttl-seconds",
            "0",
        ],
        vec!["revoke-token", "--jti", "../../x"],
        vec!["issue-token", "--agent-id", "bot"],
    ] {
        let o = auth(&h, &args, 2);
        assert!(stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
    // What was asked for does not exist: 1.
    auth(
        &h,
        &["issue-token", "--agent-id", "ghost", "--policy-id", "pol"],
        1,
    );
    auth(
        &h,
        &["issue-token", "--agent-id", "bot", "--policy-id", "nope"],
        1,
    );
    auth(
        &h,
        &[
            "update-policy",
            "--policy-id",
            "nope",
            "--max-requests",
            "1",
        ],
        1,
    );
    let o = auth(
        &h,
        &["create-agent", "--agent-id", "bot", "--owner", "x"],
        1,
    );
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn update_policy_makes_a_new_version_and_old_tokens_keep_theirs() {
    let h = setup();
    let old = issue(&h);
    auth(
        &h,
        &["update-policy", "--policy-id", "pol", "--max-requests", "5"],
        0,
    );
    let new = issue(&h);
    assert_eq!(verify(&h, &old).1["token"]["policy"]["max_requests"], 100);
    let v = verify(&h, &new).1;
    assert_eq!(v["token"]["policy"]["version"], 2);
    assert_eq!(v["token"]["policy"]["max_requests"], 5);
    assert_eq!(v["token"]["policy"]["max_spend_usd"], 2.5);
    let dir = h.path().join("auth/policies/pol");
    assert!(dir.join("v0001.json").exists() && dir.join("v0002.json").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("latest")).unwrap().trim(),
        "v0002"
    );
}

#[test]
fn policies_carry_run_limits_deny_domains_and_a_minimum_level() {
    let h = setup();
    let before = issue(&h);
    let hash_v1 = verify(&h, &before).1["token"]["policy_hash"].clone();
    auth(
        &h,
        &[
            "create-policy",
            "--policy-id",
            "tight",
            "--allowed-domains",
            "api.example.com",
            "--memory-max",
            "64M",
            "--pids-max",
            "5",
            "--cpu-max",
            "0.25",
            "--deny-domains",
            "Evil.Example.com.,*.bad.example",
            "--isolation",
            "strict",
        ],
        0,
    );
    let o = auth(
        &h,
        &["issue-token", "--agent-id", "bot", "--policy-id", "tight"],
        0,
    );
    let t = stdout(&o).trim().to_string();
    let expect = |p: &serde_json::Value| {
        assert_eq!(p["memory_max"], 64u64 << 20, "{p}");
        assert_eq!(p["pids_max"], 5, "{p}");
        assert_eq!(p["cpu_max"], 0.25, "{p}");
        assert_eq!(
            p["deny_domains"],
            serde_json::json!(["evil.example.com", "*.bad.example"]),
            "{p}"
        );
        assert_eq!(p["isolation"], "strict", "{p}");
    };
    let (rc, v) = verify(&h, &t);
    assert_eq!(rc, 0, "{v}");
    expect(&v["token"]["policy"]);
    // The latest version of `tight`, as list-policies --json shows it.
    let listed = || {
        let o = auth(&h, &["list-policies", "--json"], 0);
        let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["latest"]["policy_id"] == "tight")
            .unwrap()["latest"]
            .clone()
    };
    expect(&listed());
    let o = auth(&h, &["inspect-token", "--json", &t], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    expect(&v["policy"]);
    let o = auth(&h, &["list-policies"], 0);
    assert!(
        stdout(&o).contains("pids<=5") && stdout(&o).contains("isolation>=strict"),
        "{}",
        stdout(&o)
    );
    let o = auth(&h, &["verify-token", &t], 0);
    assert!(
        stdout(&o).contains("denied:   evil.example.com,*.bad.example"),
        "{}",
        stdout(&o)
    );

    // update-policy: 0 / none / "" take a limit away; the rest is kept.
    auth(
        &h,
        &[
            "update-policy",
            "--policy-id",
            "tight",
            "--pids-max",
            "0",
            "--isolation",
            "none",
            "--deny-domains",
            "",
        ],
        0,
    );
    let latest = listed();
    assert_eq!(latest["version"], 2);
    for gone in ["pids_max", "isolation", "deny_domains"] {
        assert!(latest.get(gone).is_none(), "{gone}: {latest}");
    }
    assert_eq!(latest["memory_max"], 64u64 << 20);
    // The old token keeps its version's limits.
    expect(&verify(&h, &t).1["token"]["policy"]);
    // A policy without the new fields kept its hash and its token.
    assert_eq!(verify(&h, &before).1["token"]["policy_hash"], hash_v1);

    for (flag, value) in [
        ("--memory-max", "512"),
        ("--memory-max", "lots"),
        ("--pids-max", "-1"),
        ("--cpu-max", "0.001"),
        ("--cpu-max", "fast"),
        ("--deny-domains", "a..b"),
        ("--isolation", "paranoid"),
    ] {
        let o = auth(
            &h,
            &[
                "create-policy",
                "--policy-id",
                "bad",
                "--allowed-domains",
                "a.com",
                flag,
                value,
            ],
            2,
        );
        assert!(
            stderr(&o).contains(flag) || stderr(&o).contains(value),
            "{flag} {value}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn forged_payload_is_rejected() {
    let h = setup();
    let t = issue(&h);
    let mut p = parts(&t);
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(&p[2]).unwrap()).unwrap();
    claims["exp"] = (claims["exp"].as_u64().unwrap() + 86400 * 365).into();
    p[2] = B64.encode(serde_json::to_vec(&claims).unwrap());
    assert_rejected(&h, &p.join("."), "bad_signature");
}

#[test]
fn truncated_token_is_rejected() {
    let h = setup();
    let t = issue(&h);
    assert_rejected(&h, &t[..t.len() - 10], "malformed");
    assert_rejected(&h, &t[..t.rfind('.').unwrap()], "malformed");
    assert_rejected(&h, "vl1.", "malformed");
}

#[test]
fn token_resigned_with_another_key_is_rejected() {
    let h = setup();
    let t = issue(&h);
    let d = token::decode(&t).unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    assert_rejected(
        &h,
        &token::encode(&d.claims, &d.header.kid, &other),
        "bad_signature",
    );
    // A valid token from another store: its key is unknown here.
    let h2 = setup();
    assert_rejected(&h, &issue(&h2), "unknown_kid");
}

#[test]
fn alg_swapped_token_is_rejected() {
    let h = setup();
    let t = issue(&h);
    let d = token::decode(&t).unwrap();
    let p = parts(&t);
    for (alg, sig) in [("none", String::new()), ("HS256", p[3].clone())] {
        let header = serde_json::json!({"alg": alg, "kid": d.header.kid, "typ": token::TYP});
        let forged = format!(
            "{}.{}.{}.{}",
            p[0],
            B64.encode(serde_json::to_vec(&header).unwrap()),
            p[2],
            sig
        );
        assert_rejected(&h, &forged, "unsupported_alg");
    }
}

#[test]
fn kid_path_traversal_is_rejected() {
    let h = setup();
    let t = issue(&h);
    let d = token::decode(&t).unwrap();
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
    // A key file the attacker could plant outside keys/.
    std::fs::write(h.path().join("x.pub"), "{}").unwrap();
    for kid in ["../../x", "../x", "k-../../x"] {
        let forged = token::encode(&d.claims, kid, &attacker);
        let (rc, v) = verify(&h, &forged);
        assert_eq!(
            (rc, v["reason"].as_str()),
            (1, Some("invalid_kid")),
            "{kid}: {v}"
        );
        assert!(
            v["error"].as_str().unwrap().contains("invalid key id"),
            "{v}"
        );
    }
}

#[test]
fn unknown_kid_is_rejected() {
    let h = setup();
    let t = issue(&h);
    let d = token::decode(&t).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    assert_rejected(
        &h,
        &token::encode(&d.claims, "k-0123456789abcdef", &key),
        "unknown_kid",
    );
}

#[test]
fn expired_token_is_rejected() {
    let h = setup();
    // Issue through the library with a clock two hours back.
    let store = AuthStore::new(h.path());
    let past = SystemTime::now() - Duration::from_secs(7200);
    let t = store.issue_token("bot", "pol", 60, past).unwrap().token;
    assert_rejected(&h, &t, "expired");
    let o = h.run(&["auth", "verify-token", &t]);
    assert!(stderr(&o).contains("expired at"), "{}", stderr(&o));
}

#[test]
fn revoked_token_is_rejected_and_others_are_not() {
    let h = setup();
    let t = issue(&h);
    let other = issue(&h);
    let jti = token::decode(&t).unwrap().claims.jti;
    auth(&h, &["revoke-token", "--jti", &jti], 0);
    let o = auth(&h, &["revoke-token", "--jti", &jti], 0);
    assert!(stderr(&o).contains("already revoked"));
    assert_rejected(&h, &t, "revoked");
    assert_eq!(verify(&h, &other).0, 0);
    let o = auth(&h, &["list-tokens", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let revoked: Vec<bool> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revoked"].as_bool().unwrap())
        .collect();
    assert_eq!(revoked, [true, false]);
}

#[test]
fn revoked_agent_is_rejected() {
    let h = setup();
    let t = issue(&h);
    auth(&h, &["revoke-agent", "--agent-id", "bot"], 0);
    assert_rejected(&h, &t, "agent_revoked");
    auth(
        &h,
        &["issue-token", "--agent-id", "bot", "--policy-id", "pol"],
        1,
    );
    auth(&h, &["revoke-agent", "--agent-id", "ghost"], 1);
}

#[test]
fn deleted_agent_is_rejected() {
    let h = setup();
    let t = issue(&h);
    std::fs::remove_file(h.path().join("auth/agents/bot.json")).unwrap();
    assert_rejected(&h, &t, "agent_not_found");
}

#[test]
fn deleted_policy_version_is_rejected() {
    let h = setup();
    let t = issue(&h);
    std::fs::remove_file(h.path().join("auth/policies/pol/v0001.json")).unwrap();
    assert_rejected(&h, &t, "policy_version_not_found");
}

#[test]
fn tampered_policy_file_is_rejected() {
    let h = setup();
    let t = issue(&h);
    let path = h.path().join("auth/policies/pol/v0001.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let widened = text.replace("\"max_requests\": 100", "\"max_requests\": 100000");
    assert_ne!(text, widened);
    std::fs::write(&path, widened).unwrap();
    assert_rejected(&h, &t, "policy_hash_mismatch");
    let o = auth(&h, &["list-policies"], 0);
    assert!(stderr(&o).contains("edited"), "{}", stderr(&o));
}

#[test]
fn list_policies_checks_every_version() {
    let h = setup();
    auth(
        &h,
        &["update-policy", "--policy-id", "pol", "--max-requests", "5"],
        0,
    );
    let o = auth(&h, &["list-policies"], 0);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    // v1 (not the latest) widened by hand: its tokens would fail.
    let path = h.path().join("auth/policies/pol/v0001.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"max_requests\": 100", "\"max_requests\": 100000"),
    )
    .unwrap();
    let o = auth(&h, &["list-policies"], 0);
    assert_eq!(
        stderr(&o).trim(),
        "vallignus: warning: policy pol version 1 was edited after it was written (its tokens will fail verification)"
    );
    let o = auth(&h, &["list-policies", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["latest"]["version"], 2);
    assert_eq!(v[0]["intact"], false);
    assert_eq!(v[0]["altered"][0]["version"], 1);
}

#[test]
fn rotate_key_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    let h = setup();
    let old = issue(&h);
    let old_kid = token::decode(&old).unwrap().header.kid;
    let o = auth(&h, &["rotate-key"], 0);
    let new_kid = stdout(&o).trim().to_string();
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        verify(&h, &old).0,
        0,
        "old token still valid after rotation"
    );
    let new = issue(&h);
    assert_eq!(token::decode(&new).unwrap().header.kid, new_kid);
    let (rc, v) = verify(&h, &new);
    assert_eq!(
        (rc, v["token"]["kid"].as_str()),
        (0, Some(new_kid.as_str()))
    );
    let keys = h.path().join("auth/keys");
    assert!(keys.join(format!("{old_kid}.pub")).exists());
    assert!(
        !keys.join(format!("{old_kid}.key")).exists(),
        "old private key removed"
    );
    assert!(keys.join(format!("{new_kid}.key")).exists());
}

#[test]
fn concurrent_issue_token_processes_leave_a_consistent_store() {
    // No `init`: the racing issuers must agree on one first key.
    let h = Home::new();
    auth(
        &h,
        &["create-agent", "--agent-id", "bot", "--owner", "ops"],
        0,
    );
    auth(
        &h,
        &[
            "create-policy",
            "--policy-id",
            "pol",
            "--allowed-domains",
            "",
        ],
        0,
    );
    let children: Vec<_> = (0..8)
        .map(|_| {
            h.cmd()
                .args([
                    "auth",
                    "issue-token",
                    "--agent-id",
                    "bot",
                    "--policy-id",
                    "pol",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let tokens: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            stdout(&o).trim().to_string()
        })
        .collect();
    let kids: std::collections::BTreeSet<String> = tokens
        .iter()
        .map(|t| token::decode(t).unwrap().header.kid)
        .collect();
    assert_eq!(kids.len(), 1, "one signing key: {kids:?}");
    for t in &tokens {
        assert_eq!(verify(&h, t).0, 0);
    }
    let o = auth(&h, &["list-tokens", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 8, "every issuance logged");
}

#[test]
fn store_files_are_private() {
    let h = setup();
    let t = issue(&h);
    auth(
        &h,
        &[
            "revoke-token",
            "--jti",
            &token::decode(&t).unwrap().claims.jti,
        ],
        0,
    );
    auth(&h, &["rotate-key"], 0);
    let mut stack = vec![h.path().join("auth")];
    while let Some(dir) = stack.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", e.path().display());
            }
        }
    }
}
