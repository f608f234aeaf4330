//! `vallignus sessions verify`: a real run is sealed and verifies; then one
//! byte of each file is changed, an event line is deleted, the last line is
//! cut, the seal is edited or removed: each is detected and named. Tests
//! that run the supervisor skip (with a printed reason) where vallignus
//! cannot create cgroups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

macro_rules! require_cgroups {
    ($name:expr) => {
        if !cgroups_available($name) {
            return;
        }
    };
}

const FILES: [&str; 5] = [
    "events.jsonl",
    "stdout.log",
    "stderr.log",
    "session.json",
    "seal.json",
];

/// The files of a session as they were sealed, to restore between cases.
struct Pristine {
    dir: PathBuf,
    files: BTreeMap<&'static str, Vec<u8>>,
}

impl Pristine {
    fn take(dir: &Path) -> Self {
        let files = FILES
            .iter()
            .map(|f| (*f, std::fs::read(dir.join(f)).unwrap()))
            .collect();
        Self {
            dir: dir.to_path_buf(),
            files,
        }
    }

    fn restore(&self) {
        for (name, bytes) in &self.files {
            std::fs::write(self.dir.join(name), bytes).unwrap();
        }
    }

    fn lines(&self) -> Vec<Vec<u8>> {
        self.files["events.jsonl"]
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn write_events(&self, lines: &[Vec<u8>]) {
        std::fs::write(self.dir.join("events.jsonl"), lines.concat()).unwrap();
    }

    fn flip_byte(&self, name: &str, at: usize) {
        let mut bytes = self.files[name].clone();
        bytes[at] ^= 0x20;
        std::fs::write(self.dir.join(name), bytes).unwrap();
    }
}

fn one_finding(h: &Home, id: &str, expected: &str) {
    let (code, messages) = h.verify_messages(id);
    assert_eq!(code, 1, "{messages:?}");
    assert_eq!(messages, vec![expected.to_string()]);
}

#[test]
fn a_sealed_run_verifies_and_every_alteration_is_named() {
    require_cgroups!("a_sealed_run_verifies_and_every_alteration_is_named");
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; done",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("warning"),
        "sealing warned: {}",
        stderr(&o)
    );
    let id = h.only_session_id();
    let dir = h.only_session();

    // The seal: 0600, names the active key, which the run created.
    let seal_path = dir.join("seal.json");
    let mode = std::fs::metadata(&seal_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let seal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&seal_path).unwrap()).unwrap();
    let active = std::fs::read_to_string(h.path().join("auth/keys/active")).unwrap();
    assert_eq!(seal["kid"].as_str().unwrap(), active.trim());
    assert_eq!(seal["session_id"], id.as_str());
    assert_eq!(seal["alg"], "EdDSA");
    assert_eq!(
        seal["event_count"].as_u64().unwrap(),
        h.events().len() as u64
    );

    // Intact, in text and JSON.
    let o = h.run(&["sessions", "verify", &id]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("intact"), "{}", stdout(&o));
    let (c, v) = h.verify_json(&id);
    assert_eq!(c, 0);
    assert_eq!(v["intact"], true);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);

    // Verification needs only the public key.
    let kid = active.trim();
    std::fs::remove_file(h.path().join(format!("auth/keys/{kid}.key"))).unwrap();
    assert_eq!(h.verify_json(&id).0, 0);

    let p = Pristine::take(&dir);
    let n = p.lines().len();
    assert!(n >= 14, "expected run_started, 12 output lines, ...: {n}");

    // One byte of each file.
    for name in ["stdout.log", "stderr.log", "session.json"] {
        p.flip_byte(name, 1);
        one_finding(
            &h,
            &id,
            &format!("{name}: hash differs from the seal (the file was changed after sealing)"),
        );
        p.restore();
    }

    // One byte of an event's text: the next event's prev no longer matches.
    let k = p
        .lines()
        .iter()
        .position(|l| String::from_utf8_lossy(l).contains("\"line\":\"out3\""))
        .unwrap();
    let mut lines = p.lines();
    lines[k] = String::from_utf8(lines[k].clone())
        .unwrap()
        .replace("\"line\":\"out3\"", "\"line\":\"out4\"")
        .into_bytes();
    p.write_events(&lines);
    one_finding(
        &h,
        &id,
        &format!(
            "events.jsonl line {}: prev does not match line {} (an event was changed, removed or inserted before it)",
            k + 2,
            k + 1
        ),
    );
    p.restore();

    // One event line deleted in the middle.
    let mut lines = p.lines();
    lines.remove(k);
    p.write_events(&lines);
    let (c, messages) = h.verify_messages(&id);
    assert_eq!(c, 1);
    assert_eq!(
        messages,
        vec![
            format!(
                "events.jsonl line {}: seq is {}, expected {} (1 event(s) missing before it)",
                k + 1,
                k + 1,
                k
            ),
            format!(
                "events.jsonl line {}: prev does not match line {} (an event was changed, removed or inserted before it)",
                k + 1,
                k
            ),
            format!(
                "events.jsonl: {} events, the seal says {n} (1 event(s) removed)",
                n - 1
            ),
        ]
    );
    p.restore();

    // The last line cut short.
    let mut lines = p.lines();
    let half = lines[n - 1].len() / 2;
    lines[n - 1].truncate(half);
    p.write_events(&lines);
    let (c, v) = h.verify_json(&id);
    assert_eq!(c, 1);
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["kind"], "line_unparseable");
    assert_eq!(findings[0]["line"], n as u64);
    let msg = findings[0]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("events.jsonl line {n}: not a valid event"))
            && msg.contains("cut short"),
        "{msg}"
    );
    p.restore();

    // The last line removed entirely.
    let mut lines = p.lines();
    lines.pop();
    p.write_events(&lines);
    one_finding(
        &h,
        &id,
        &format!(
            "events.jsonl: {} events, the seal says {n} (1 event(s) removed at the end)",
            n - 1
        ),
    );
    p.restore();

    // The seal itself edited: its count lowered to hide the removal
    // above, or raised. Either way the seal no longer verifies, and nothing
    // it says is held against the (intact) events: no "event(s) removed".
    for count in [n as u64 - 1, n as u64 + 1] {
        let mut seal = seal.clone();
        seal["event_count"] = count.into();
        std::fs::write(&seal_path, seal.to_string()).unwrap();
        let (c, v) = h.verify_json(&id);
        assert_eq!(c, 1);
        let findings = v["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 1, "count {count}: {findings:?}");
        assert_eq!(findings[0]["kind"], "bad_signature");
        let msg = findings[0]["message"].as_str().unwrap();
        assert!(msg.starts_with("seal.json: bad signature"), "{msg}");
        assert!(msg.contains("forged or altered"), "{msg}");
        assert_eq!(v["intact"], false);
        assert!(v.get("sealed_at").is_none(), "{v}");
    }
    // Forged seal plus a removed event: the chain still shows the removal.
    let mut lines = p.lines();
    lines.pop();
    p.write_events(&lines);
    let (c, v) = h.verify_json(&id);
    assert_eq!(c, 1);
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["bad_signature"],
        "a cut at the end leaves the chain whole: {v}"
    );
    p.restore();

    // No seal at all.
    std::fs::remove_file(&seal_path).unwrap();
    let o = h.run(&["sessions", "verify", &id]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains(
            "seal.json: no seal (the run was interrupted, is still running, or predates sealing)"
        ),
        "{}",
        stdout(&o)
    );
    p.restore();
    assert_eq!(h.verify_json(&id).0, 0, "restored session verifies again");
}

#[test]
fn bad_and_unknown_ids() {
    let h = Home::new();
    let o = h.run(&["sessions", "verify", "../etc"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid session id"), "{}", stderr(&o));
    let o = h.run(&["sessions", "verify", "20260101-000000-nosuch"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("session not found"), "{}", stderr(&o));
}

#[test]
fn a_0_4_2_session_cannot_be_verified() {
    let h = Home::new();
    let id = "20250101-120000-old042";
    let dir = h.sessions_dir().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("session.json"),
        format!("{{\"session_id\": \"{id}\", \"exit_code\": 0}}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("events.jsonl"),
        format!(
            "{{\"ts_ms\": 1, \"session_id\": \"{id}\", \"type\": \"run_started\"}}\n\
             {{\"ts_ms\": 2, \"session_id\": \"{id}\", \"type\": \"run_finished\"}}\n"
        ),
    )
    .unwrap();
    let o = h.run(&["sessions", "verify", id]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("cannot be verified")
            && stdout(&o).contains("not sealed / no hash chain"),
        "{}",
        stdout(&o)
    );
    let (c, v) = h.verify_json(id);
    assert_eq!(c, 1);
    assert_eq!(v["findings"][0]["kind"], "not_verifiable");
    assert_eq!(v["intact"], false);
}

#[test]
fn a_sealing_failure_is_a_warning_and_keeps_the_exit_code() {
    require_cgroups!("a_sealing_failure_is_a_warning_and_keeps_the_exit_code");
    let h = Home::new();
    let o = h.run(&["auth", "init"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A key directory others can read is refused, so the run cannot seal.
    let keys = h.path().join("auth/keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = h.run(&["run", "-q", "--", "sh", "-c", "echo hi; exit 3"]);
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("vallignus: warning: session") && stderr(&o).contains("is not sealed"),
        "{}",
        stderr(&o)
    );
    let id = h.only_session_id();
    assert!(!h.only_session().join("seal.json").exists());
    let (c, v) = h.verify_json(&id);
    assert_eq!(c, 1);
    assert_eq!(v["findings"][0]["kind"], "no_seal");
    assert_eq!(
        v["findings"].as_array().unwrap().len(),
        1,
        "the chain itself is intact"
    );
}
