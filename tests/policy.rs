//! `vallignus policy check` and `vallignus policy show`, run as a user would:
//! the real binary, a private VALLIGNUS_HOME, and a private system-policy
//! path (VALLIGNUS_SYSTEM_POLICY) so the host's /etc is never consulted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

const SEED: &str = r#"security_context: { level: strict, user: nobody }
constraints:
  max_runtime: 300s          # durations like 300s, 5m, 1.5, 250ms
  max_output_bytes: 50MB     # sizes
  max_output_lines: 10000
  memory: 512MB
  pids: 256
  cpu: 0.5                   # CPUs
  network:
    allow_domains: [api.openai.com, "*.Example.com."]
    deny_domains: []
    default_policy: deny     # deny|allow
    max_requests: 100
    max_spend_usd: 5.0
violation_protocol: { action: terminate, alert_webhook: "http://127.0.0.1:9000/hook" }
"#;

struct Env {
    home: Home,
    system_policy: PathBuf,
}

impl Env {
    fn new() -> Self {
        let home = Home::new();
        let system_policy = home.path().join("etc-policy.yaml");
        Self {
            home,
            system_policy,
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.home.cmd();
        cmd.env("VALLIGNUS_SYSTEM_POLICY", &self.system_policy)
            .args(args);
        output_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_valid_file_prints_effective_policy_yaml() {
    let env = Env::new();
    let f = env.write("vallignus.policy.yaml", SEED);
    let out = env.run(&["policy", "check", p(&f)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let yaml = stdout(&out);
    for needle in [
        "level: strict",
        "user: nobody",
        "max_runtime: 300",
        "memory: 536870912",
        "pids: 256",
        "cpu: 0.5",
        "*.example.com",
        "default_policy: deny",
        "action: terminate",
        "http://127.0.0.1:9000/hook",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
    }
    assert!(stderr(&out).starts_with("vallignus: "), "{}", stderr(&out));
    // What it prints is itself a valid policy file that means the same.
    let again = env.write("again.yaml", &yaml);
    let a = env.json(&["policy", "check", "--json", p(&f)]);
    let b = env.json(&["policy", "check", "--json", p(&again)]);
    assert_eq!(a, b);
}

#[test]
fn check_json() {
    let env = Env::new();
    let f = env.write("p.yaml", SEED);
    let v = env.json(&["policy", "check", "--json", p(&f)]);
    assert_eq!(v["security_context"]["level"], "strict");
    assert_eq!(v["constraints"]["max_runtime"], 300);
    assert_eq!(v["constraints"]["max_output_bytes"], 50u64 << 20);
    assert_eq!(v["constraints"]["max_output_lines"], 10000);
    assert_eq!(
        v["constraints"]["network"]["allow_domains"][1],
        "*.example.com"
    );
    assert_eq!(v["constraints"]["network"]["max_spend_usd"], 5.0);
    assert_eq!(v["violation_protocol"]["action"], "terminate");
}

#[test]
fn check_empty_file_is_all_defaults() {
    let env = Env::new();
    let f = env.write("empty.yaml", "");
    let v = env.json(&["policy", "check", "--json", p(&f)]);
    // What `run --policy empty.yaml` enforces: the level of `run` itself.
    assert_eq!(v["security_context"]["level"], "none");
    assert_eq!(v["security_context"]["user"], serde_json::Value::Null);
    assert_eq!(v["constraints"]["max_runtime"], serde_json::Value::Null);
    assert_eq!(v["constraints"]["network"]["default_policy"], "deny");
    assert_eq!(v["violation_protocol"]["action"], "terminate");
}

#[test]
fn check_invalid_files_exit_1_naming_file_line_and_key() {
    let env = Env::new();
    for (name, text, line, key) in [
        (
            "unknown.yaml",
            "constraints:\n  pids: 5\n  bogus: 1\n",
            3,
            "constraints.bogus",
        ),
        (
            "type.yaml",
            "constraints:\n  max_runtime: soon\n",
            2,
            "constraints.max_runtime",
        ),
        (
            "pids.yaml",
            "# limits\nconstraints:\n  pids: 0\n",
            3,
            "constraints.pids",
        ),
        (
            "cpu.yaml",
            "constraints:\n  cpu: -1\n",
            2,
            "constraints.cpu",
        ),
        (
            "size.yaml",
            "constraints:\n  max_output_bytes: -5MB\n",
            2,
            "constraints.max_output_bytes",
        ),
        (
            "domain.yaml",
            "constraints:\n  network:\n    allow_domains:\n      - ok.com\n      - \"a*b.com\"\n",
            5,
            "constraints.network.allow_domains[1]",
        ),
        (
            "url.yaml",
            "constraints:\n  network:\n    deny_domains: [\"https://evil.com/x\"]\n",
            3,
            "constraints.network.deny_domains[0]",
        ),
        (
            "hook.yaml",
            "violation_protocol:\n  alert_webhook: ftp://x/\n",
            2,
            "violation_protocol.alert_webhook",
        ),
        (
            "duplicate.yaml",
            "constraints:\n  pids: 5\n  cpu: 1\n  pids: 6\n",
            4,
            "constraints.pids: duplicate key `pids` (first at line 2)",
        ),
        (
            "shape.yaml",
            "constraints:\n  network:\n    allow_domains: api.openai.com\n",
            3,
            "constraints.network.allow_domains: expected a list",
        ),
        (
            "credential.yaml",
            "credentials:\n  - name: K\n    env: REAL_K\n    hosts:\n      - api.openai.com\n      - \"a b\"\n",
            6,
            "credentials[0].hosts[1]",
        ),
        (
            "credential-name.yaml",
            "credentials:\n  - {name: \"K-1\", env: REAL_K, hosts: [api.openai.com]}\n",
            2,
            "credentials[0].name",
        ),
    ] {
        let f = env.write(name, text);
        let out = env.run(&["policy", "check", p(&f)]);
        assert_eq!(code(&out), 1, "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{name}: nothing on stdout");
        let err = stderr(&out);
        assert!(err.starts_with("vallignus: error: "), "{name}: {err}");
        assert!(err.contains(p(&f)), "{name}: names the file: {err}");
        assert!(
            err.contains(&format!("line {line},")),
            "{name}: names the line: {err}"
        );
        assert!(err.contains(key), "{name}: names the key: {err}");
        for jargon in ["DuplicateKeyPolicy", "sequence start", "mapping start"] {
            assert!(!err.contains(jargon), "{name}: the parser's words: {err}");
        }
    }
}

#[test]
fn check_missing_file_exits_1() {
    let env = Env::new();
    let missing = env.home.path().join("nope.yaml");
    let out = env.run(&["policy", "check", p(&missing)]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("cannot read policy file"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["policy", "check"]);
    assert_eq!(code(&out), 2, "usage error");
}

#[test]
fn show_defaults_file_and_flags_in_precedence() {
    let env = Env::new();
    // No system policy, no --policy: built-in defaults, then flags.
    let v = env.json(&["policy", "show", "--json"]);
    assert_eq!(v["constraints"]["max_runtime"], serde_json::Value::Null);
    let v = env.json(&["policy", "show", "--json", "--max-runtime", "250ms"]);
    assert_eq!(v["constraints"]["max_runtime"], 0.25);

    // --policy FILE over the defaults; flags over the file, only where given.
    let f = env.write("p.yaml", SEED);
    let v = env.json(&["policy", "show", "--json", "--policy", p(&f)]);
    assert_eq!(v["constraints"]["max_runtime"], 300);
    assert_eq!(v["constraints"]["network"]["max_requests"], 100);
    let v = env.json(&[
        "policy",
        "show",
        "--json",
        "--policy",
        p(&f),
        "--max-runtime",
        "5m",
        "--max-output-lines",
        "0",
        "--max-requests",
        "3",
    ]);
    assert_eq!(v["constraints"]["max_runtime"], 300);
    assert_eq!(
        v["constraints"]["max_output_lines"],
        serde_json::Value::Null
    );
    assert_eq!(v["constraints"]["max_output_bytes"], 50u64 << 20);
    assert_eq!(v["constraints"]["network"]["max_requests"], 3);
    let v = env.json(&[
        "policy",
        "show",
        "--json",
        "--policy",
        p(&f),
        "--max-runtime",
        "10",
    ]);
    assert_eq!(v["constraints"]["max_runtime"], 10);
    assert_eq!(v["constraints"]["pids"], 256);
}

#[test]
fn show_uses_system_policy_unless_policy_given() {
    let env = Env::new();
    std::fs::write(
        &env.system_policy,
        "constraints:\n  max_runtime: 42s\n  pids: 9\n",
    )
    .unwrap();
    let out = env.run(&["policy", "show", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["constraints"]["max_runtime"], 42);
    assert_eq!(v["constraints"]["pids"], 9);
    assert!(
        stderr(&out).contains(p(&env.system_policy)),
        "{}",
        stderr(&out)
    );
    // --policy replaces the system policy (it is not layered on it).
    let f = env.write("mine.yaml", "constraints:\n  max_output_lines: 7\n");
    let v = env.json(&["policy", "show", "--json", "--policy", p(&f)]);
    assert_eq!(v["constraints"]["max_runtime"], serde_json::Value::Null);
    assert_eq!(v["constraints"]["max_output_lines"], 7);
    // YAML by default.
    let out = env.run(&["policy", "show"]);
    assert!(stdout(&out).contains("max_runtime: 42"), "{}", stdout(&out));
}

#[test]
fn show_fails_closed_on_a_bad_policy() {
    let env = Env::new();
    std::fs::write(&env.system_policy, "constraints:\n  memory: 0\n").unwrap();
    let out = env.run(&["policy", "show"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("line 2,"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("constraints.memory"),
        "{}",
        stderr(&out)
    );
    // An explicit --policy that does not exist is an error, not "no policy".
    let missing = env.home.path().join("missing.yaml");
    let out = env.run(&["policy", "show", "--policy", p(&missing)]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // A bad flag is a usage error.
    let out = env.run(&["policy", "show", "--max-runtime", "soon"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    // A system policy that is a link to nothing is broken, not absent.
    std::fs::remove_file(&env.system_policy).unwrap();
    std::os::unix::fs::symlink(env.home.path().join("gone.yaml"), &env.system_policy).unwrap();
    let out = env.run(&["policy", "show"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("etc-policy.yaml"), "{}", stderr(&out));
    let out = env.run(&["run", "-q", "--", "true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
}

/// `policy check` refuses what `run --policy FILE` would refuse, beyond
/// the file's own syntax: an https webhook, a user this host lacks.
#[test]
fn check_refuses_what_run_refuses() {
    let env = Env::new();
    for (yaml, needle) in [
        (
            "violation_protocol:\n  alert_webhook: https://alerts.example.test/x\n",
            "http://",
        ),
        (
            "security_context:\n  user: no-such-user-vallignus\n",
            "no-such-user-vallignus",
        ),
        // What the proxy reads when the run starts: named by file, not by
        // a flag nobody gave.
        (
            "constraints:\n  network:\n    allow_domains: [x.test]\n    prices: gone.yaml\n",
            "price file",
        ),
        (
            "constraints:\n  network:\n    allow_domains: [x.test]\n    upstream_ca: [gone.pem]\n",
            "upstream CA file",
        ),
        (
            "constraints:\n  network:\n    allow_domains: [x.test]\ncredentials:\n  - { name: K, env: \
             VALLIGNUS_TEST_UNSET_ENV, hosts: [x.test] }\n",
            "VALLIGNUS_TEST_UNSET_ENV",
        ),
    ] {
        let f = env.write("p.yaml", yaml);
        let out = env.run(&["policy", "check", p(&f)]);
        assert_eq!(code(&out), 1, "{yaml}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{yaml}: {}", stderr(&out));
        assert!(!stderr(&out).contains("--prices"), "{}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
}

/// `policy check FILE` checks the file alone: a token in VALLIGNUS_TOKEN
/// (here a bad one) is not applied to it.
#[test]
fn check_ignores_a_token_in_the_environment() {
    let env = Env::new();
    let f = env.write("p.yaml", "constraints:\n  max_runtime: 30s\n");
    let mut cmd = env.home.cmd();
    cmd.env("VALLIGNUS_SYSTEM_POLICY", &env.system_policy)
        .env("VALLIGNUS_TOKEN", "vl1.not-a-token")
        .args(["policy", "check", "--json", p(&f)]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["constraints"]["max_runtime"], 30);
    assert_eq!(v["security_context"]["level"], "none");
}
