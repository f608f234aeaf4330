//! `vallignus sessions verify`: check a session's hash chain and its seal,
//! and say exactly what was altered.
//!
//! Checks, in order: `events.jsonl` line by line (every line parses, `seq`
//! counts 0, 1, 2, ... without gaps, each `prev` is the hash of the line
//! before, the first one the hash of the session id, every `session_id` is
//! this session's); then the seal (`seal.json` parses, its signature is
//! valid for the public key named by its kid, it names this session); then
//! the seal against the files (event count and last event hash, the hashes
//! of `stdout.log`, `stderr.log` and `session.json`). A seal whose signature
//! does not verify is reported as forged or altered and nothing it states
//! is used: its count or hashes would blame the files for the seal's edit.
//!
//! Invariants: memory stays bounded whatever the files hold (lines are
//! hashed as they stream by and at most [`MAX_PARSED_LINE`] bytes of one are
//! kept for parsing; logs are hashed in chunks); nothing is written; only
//! public keys are needed; every problem found is reported (a finding names
//! the file, and the line where there is one), not just the first.

use std::io::{self, BufRead, BufReader};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::hex;
use super::seal::{self, Seal, SealError, SEALED_FILES, SEAL_FILE};

/// The longest line that is parsed. Event lines are far shorter (an output
/// line event holds at most 64 KiB of output, escaped or base64-encoded);
/// a longer line is still hashed, so the chain check goes on past it.
pub const MAX_PARSED_LINE: usize = 16 << 20;

const EVENTS: &str = "events.jsonl";

/// What kind of problem a finding is (stable names for `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// No seal and no hash chain: a vallignus 0.4.2 session.
    NotVerifiable,
    NoSeal,
    SealInvalid,
    SealSessionMismatch,
    UnknownKey,
    KeyUnreadable,
    BadSignature,
    FileMissing,
    FileUnreadable,
    FileHashMismatch,
    LineUnparseable,
    LineTooLong,
    NoHashChain,
    SeqMissing,
    SeqMismatch,
    PrevMissing,
    PrevMismatch,
    SessionIdMismatch,
    NoFinalNewline,
    EventCountMismatch,
    LastEventMismatch,
}

/// One problem: which file, which line (1-based) if any, and what it means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The full sentence, starting with the file (and line).
    pub message: String,
}

impl Finding {
    fn file(kind: FindingKind, file: &str, what: impl std::fmt::Display) -> Self {
        Self {
            kind,
            file: file.into(),
            line: None,
            message: format!("{file}: {what}"),
        }
    }

    fn line(kind: FindingKind, line: u64, what: impl std::fmt::Display) -> Self {
        Self {
            kind,
            file: EVENTS.into(),
            line: Some(line),
            message: format!("{EVENTS} line {line}: {what}"),
        }
    }
}

/// The outcome of verifying one session.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub session_id: String,
    pub intact: bool,
    /// Whether a readable `seal.json` exists (its signature may still be bad).
    pub sealed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<String>,
    /// Lines in `events.jsonl`.
    pub event_count: u64,
    pub findings: Vec<Finding>,
}

/// The fields of an event line that the chain check reads (the rest is
/// parsed, so syntax is checked, and skipped).
#[derive(Deserialize)]
struct ChainFields {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

/// One line as it streamed by.
struct Scanned {
    hash: [u8; 32],
    newline: bool,
    too_long: bool,
}

/// Read the next line into `buf` (at most [`MAX_PARSED_LINE`] bytes of it),
/// hashing all of it (without the newline). `None` at the end of the file.
fn next_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<Scanned>> {
    let mut hasher = Sha256::new();
    let end =
        super::reader::read_line_bounded(reader, buf, MAX_PARSED_LINE, |part| hasher.update(part))?;
    Ok(end.map(|end| Scanned {
        hash: hasher.finalize().into(),
        newline: end.newline,
        too_long: end.too_long,
    }))
}

/// What walking `events.jsonl` found.
#[derive(Default)]
struct Walk {
    lines: u64,
    /// Hex hash of the last line (of the session id for an empty file).
    last_hash: String,
    /// The last line was reported as unreadable (so the seal comparison
    /// need not repeat it).
    last_line_reported: bool,
    /// `seq` of the last line equals its position: no gap anywhere.
    seq_in_step: bool,
    /// Line 1 has neither `seq` nor `prev` (vallignus 0.4.2).
    legacy: bool,
    findings: Vec<Finding>,
}

fn walk_events(path: &Path, session_id: &str) -> Result<Walk, io::Error> {
    let file = super::store::open_session_file(path)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut buf = Vec::new();
    let mut walk = Walk {
        seq_in_step: true,
        ..Walk::default()
    };
    let mut expected_prev = super::event::sha256_hex(session_id.as_bytes());
    let mut last_seq: Option<u64> = None;
    let mut previous_unparseable = false;
    while let Some(scanned) = next_line(&mut reader, &mut buf)? {
        walk.lines += 1;
        let n = walk.lines;
        let this_hash = hex(&scanned.hash);
        let mut reported = false;
        let parsed = if scanned.too_long {
            walk.findings.push(Finding::line(
                FindingKind::LineTooLong,
                n,
                format!("longer than {MAX_PARSED_LINE} bytes: not an event (the line was changed or inserted)"),
            ));
            None
        } else {
            match serde_json::from_slice::<ChainFields>(&buf) {
                Ok(f) => Some(f),
                Err(e) => {
                    let cut = if scanned.newline {
                        ""
                    } else {
                        " (the file ends in the middle of it: cut short)"
                    };
                    walk.findings.push(Finding::line(
                        FindingKind::LineUnparseable,
                        n,
                        format!("not a valid event: {e}{cut}"),
                    ));
                    None
                }
            }
        };
        let unparseable = parsed.is_none();
        match parsed {
            None => {
                // The line most likely replaced an event: it takes a seq.
                reported = true;
                walk.seq_in_step = false;
                last_seq = Some(last_seq.map_or(0, |s| s.saturating_add(1)));
            }
            Some(fields) => {
                if n == 1 && fields.seq.is_none() && fields.prev.is_none() {
                    walk.legacy = true;
                }
                if !walk.legacy {
                    reported |= check_seq(&mut walk, n, fields.seq, &mut last_seq);
                    reported |= check_prev(
                        &mut walk,
                        n,
                        fields.prev.as_deref(),
                        &expected_prev,
                        previous_unparseable,
                    );
                }
                if let Some(sid) = fields.session_id.as_deref() {
                    if sid != session_id {
                        reported = true;
                        walk.findings.push(Finding::line(
                            FindingKind::SessionIdMismatch,
                            n,
                            format!("session_id is {sid:?}, not this session's (the event was copied from another session)"),
                        ));
                    }
                }
                if !scanned.newline {
                    walk.findings.push(Finding::file(
                        FindingKind::NoFinalNewline,
                        EVENTS,
                        format!("no newline after line {n} (the file was cut short)"),
                    ));
                }
            }
        }
        previous_unparseable = unparseable;
        walk.last_line_reported = reported;
        expected_prev = this_hash;
    }
    walk.last_hash = expected_prev;
    if walk.lines > 0 && last_seq.map(|s| s + 1) != Some(walk.lines) {
        walk.seq_in_step = false;
    }
    Ok(walk)
}

/// `seq` of line `n` must follow the previous line's. Returns whether
/// something was reported.
fn check_seq(walk: &mut Walk, n: u64, seq: Option<u64>, last_seq: &mut Option<u64>) -> bool {
    let Some(seq) = seq else {
        walk.findings.push(Finding::line(
            FindingKind::SeqMissing,
            n,
            "no seq (the event was changed or inserted)",
        ));
        return true;
    };
    let expected = last_seq.map_or(0, |s| s.saturating_add(1));
    *last_seq = Some(seq);
    if seq == expected {
        return false;
    }
    let why = if seq > expected && expected == 0 {
        format!("{seq} event(s) missing at the start")
    } else if seq > expected {
        format!("{} event(s) missing before it", seq - expected)
    } else {
        "an event was duplicated, reordered or inserted".to_string()
    };
    let what = format!("seq is {seq}, expected {expected} ({why})");
    walk.findings
        .push(Finding::line(FindingKind::SeqMismatch, n, what));
    true
}

/// `prev` of line `n` must be the hash of the line before it.
fn check_prev(
    walk: &mut Walk,
    n: u64,
    prev: Option<&str>,
    expected: &str,
    previous_unparseable: bool,
) -> bool {
    match prev {
        None => {
            walk.findings.push(Finding::line(
                FindingKind::PrevMissing,
                n,
                "no prev (the hash chain is broken here: the event was changed or inserted)",
            ));
            true
        }
        Some(p) if p == expected => false,
        // The line before is already reported as changed; its hash is
        // bound to differ.
        Some(_) if previous_unparseable => false,
        Some(_) if n == 1 => {
            walk.findings.push(Finding::line(
                FindingKind::PrevMismatch,
                1,
                "prev is not the hash of the session id (events were removed or inserted at the start, or the file belongs to another session)",
            ));
            true
        }
        Some(_) => {
            walk.findings.push(Finding::line(
                FindingKind::PrevMismatch,
                n,
                format!(
                    "prev does not match line {} (an event was changed, removed or inserted before it)",
                    n - 1
                ),
            ));
            true
        }
    }
}

/// Verify the session in `dir`. `public_key` looks up a public key by its
/// (already validated) kid: `Ok(None)` if it is unknown.
pub fn verify<K>(dir: &Path, session_id: &str, public_key: K) -> Verification
where
    K: FnOnce(&str) -> Result<Option<VerifyingKey>, String>,
{
    let mut findings = Vec::new();

    let walk = match walk_events(&dir.join(EVENTS), session_id) {
        Ok(w) => Some(w),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            findings.push(Finding::file(
                FindingKind::FileMissing,
                EVENTS,
                "missing (deleted)",
            ));
            None
        }
        Err(e) => {
            findings.push(Finding::file(
                FindingKind::FileUnreadable,
                EVENTS,
                format!("cannot read: {e}"),
            ));
            None
        }
    };
    let event_count = walk.as_ref().map_or(0, |w| w.lines);

    let seal = match Seal::load(dir) {
        Ok(s) => s,
        Err(e) => {
            let what = match e {
                SealError::Invalid { reason, .. } => format!("not a valid seal: {reason}"),
                other => format!("cannot read: {other}"),
            };
            findings.push(Finding::file(FindingKind::SealInvalid, SEAL_FILE, what));
            if let Some(w) = &walk {
                findings.extend(w.findings.iter().cloned());
            }
            return finish(session_id, None, event_count, findings);
        }
    };
    let Some(seal) = seal else {
        match &walk {
            Some(w) if w.legacy => findings.push(Finding::file(
                FindingKind::NotVerifiable,
                EVENTS,
                "not sealed / no hash chain: the session was recorded by vallignus 0.4.2 or earlier and cannot be verified",
            )),
            _ => findings.push(Finding::file(
                FindingKind::NoSeal,
                SEAL_FILE,
                "no seal (the run was interrupted, is still running, or predates sealing); only the event chain was checked",
            )),
        }
        if let Some(w) = walk.as_ref().filter(|w| !w.legacy) {
            findings.extend(w.findings.iter().cloned());
        }
        return finish(session_id, None, event_count, findings);
    };

    let key = public_key(&seal.kid);
    // A seal that does not verify, or whose signature cannot be checked
    // (anyone can name a key this store lacks), says nothing: comparing its
    // count or hashes with the files would report alterations of the
    // session that are really alterations of the seal.
    let untrusted = match &key {
        Ok(Some(key)) if seal.signature_valid(key) => None,
        Ok(Some(_)) => Some(Finding::file(
            FindingKind::BadSignature,
            SEAL_FILE,
            format!(
                "bad signature: the seal was forged or altered after signing, or was not signed by key {}; nothing it states was compared with the session",
                seal.kid
            ),
        )),
        Ok(None) => Some(Finding::file(
            FindingKind::UnknownKey,
            SEAL_FILE,
            format!(
                "signed with key {}, which this auth store does not have: the signature cannot be checked, so nothing the seal states was compared with the session",
                seal.kid
            ),
        )),
        Err(e) => Some(Finding::file(
            FindingKind::KeyUnreadable,
            SEAL_FILE,
            format!(
                "cannot load public key {}: {e}; nothing the seal states was compared with the session",
                seal.kid
            ),
        )),
    };
    if let Some(finding) = untrusted {
        findings.push(finding);
        if let Some(w) = &walk {
            findings.extend(w.findings.iter().cloned());
        }
        let mut v = finish(session_id, Some(&seal), event_count, findings);
        v.sealed_at = None;
        return v;
    }

    if seal.session_id != session_id {
        findings.push(Finding::file(
            FindingKind::SealSessionMismatch,
            SEAL_FILE,
            format!(
                "seals session {}, not {session_id} (copied from another session)",
                seal.session_id
            ),
        ));
    }
    if let Some(w) = &walk {
        if w.legacy {
            findings.push(Finding::line(
                FindingKind::NoHashChain,
                1,
                "no seq and no prev: the events have no hash chain",
            ));
        }
        findings.extend(w.findings.iter().cloned());
        compare_events(w, &seal, &mut findings);
    }
    compare_files(dir, &seal, &mut findings);
    finish(session_id, Some(&seal), event_count, findings)
}

/// The event count and the last event's hash against the seal.
fn compare_events(w: &Walk, seal: &Seal, findings: &mut Vec<Finding>) {
    let sealed = seal.event_count;
    if w.lines != sealed {
        let (diff, verb) = if w.lines < sealed {
            (sealed - w.lines, "removed")
        } else {
            (w.lines - sealed, "added")
        };
        let place = if w.seq_in_step { " at the end" } else { "" };
        findings.push(Finding::file(
            FindingKind::EventCountMismatch,
            EVENTS,
            format!(
                "{} events, the seal says {sealed} ({diff} event(s) {verb}{place})",
                w.lines
            ),
        ));
    } else if w.last_hash != seal.last_event_hash && !w.last_line_reported {
        let what = if w.lines == 0 {
            "the seal does not match an empty event stream".to_string()
        } else {
            format!(
                "the last event (line {}) differs from the seal (it was changed, or the chain was rewritten after sealing)",
                w.lines
            )
        };
        findings.push(Finding::file(FindingKind::LastEventMismatch, EVENTS, what));
    }
}

/// The sealed files' hashes against the seal.
fn compare_files(dir: &Path, seal: &Seal, findings: &mut Vec<Finding>) {
    let mut changed = Vec::new();
    let mut meta_intact = false;
    for name in SEALED_FILES {
        let Some(expected) = seal.files.get(name) else {
            findings.push(Finding::file(
                FindingKind::SealInvalid,
                SEAL_FILE,
                format!("has no hash for {name}"),
            ));
            continue;
        };
        match seal::hash_file(&dir.join(name), seal.file_hash()) {
            Ok(h) if &h == expected => meta_intact |= name == "session.json",
            Ok(_) => changed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => findings.push(Finding::file(
                FindingKind::FileMissing,
                name,
                "missing (deleted after sealing)",
            )),
            Err(e) => findings.push(Finding::file(
                FindingKind::FileUnreadable,
                name,
                format!("cannot read: {e}"),
            )),
        }
    }
    // A session.json that matches its seal says how many bytes each log
    // had: a shorter log was cut (or its end never reached the disk before
    // a crash: the logs are not flushed at the end of a run), a longer one
    // was appended to.
    let meta: Option<serde_json::Value> = (meta_intact && !changed.is_empty())
        .then(|| std::fs::read(dir.join("session.json")).ok())
        .flatten()
        .and_then(|text| serde_json::from_slice(&text).ok());
    let recorded = |name: &str| -> Option<u64> {
        let key = match name {
            "stdout.log" => "stdout_bytes",
            "stderr.log" => "stderr_bytes",
            _ => return None,
        };
        meta.as_ref()?.get(key)?.as_u64()
    };
    for name in changed {
        let size = std::fs::metadata(dir.join(name)).map(|m| m.len()).ok();
        let what = match (recorded(name), size) {
            (Some(want), Some(have)) if have < want => format!(
                "hash differs from the seal: it holds {have} of the {want} bytes recorded (cut \
                 short after sealing, or its end never reached the disk before a crash)"
            ),
            (Some(want), Some(have)) if have > want => format!(
                "hash differs from the seal: it holds {have} bytes, {} more than recorded \
                 (appended to after sealing)",
                have - want
            ),
            _ => "hash differs from the seal (the file was changed after sealing)".to_string(),
        };
        findings.push(Finding::file(FindingKind::FileHashMismatch, name, what));
    }
}

fn finish(
    session_id: &str,
    seal: Option<&Seal>,
    event_count: u64,
    findings: Vec<Finding>,
) -> Verification {
    Verification {
        session_id: session_id.into(),
        intact: findings.is_empty(),
        sealed: seal.is_some(),
        kid: seal.map(|s| s.kid.clone()),
        sealed_at: seal.map(|s| s.sealed_at.clone()),
        event_count,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::event::{sha256_hex, Event, Stream};
    use crate::session::EventWriter;
    use ed25519_dalek::SigningKey;
    use std::time::{Instant, SystemTime};

    const SID: &str = "20260101-120000-abc123";

    struct Fixture {
        dir: tempfile::TempDir,
        key: SigningKey,
        kid: String,
    }

    impl Fixture {
        /// A sealed session with `lines` stdout lines (events: run_started,
        /// the lines, run_finished).
        fn new(lines: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let file = std::fs::File::create(dir.path().join(EVENTS)).unwrap();
            let mut w = EventWriter::new(file, SID, Instant::now());
            w.emit(&Event::RunStarted {
                command: vec!["echo".into()],
                cwd: "/".into(),
            })
            .unwrap();
            for i in 0..lines {
                w.emit_line(Stream::Stdout, format!("line {i}").as_bytes(), false)
                    .unwrap();
            }
            w.emit(&Event::RunFinished { duration_ms: 5 }).unwrap();
            let count = w.count();
            let last = w.finish().unwrap().last_hash;
            std::fs::write(dir.path().join("stdout.log"), b"out\n").unwrap();
            std::fs::write(dir.path().join("stderr.log"), b"err\n").unwrap();
            std::fs::write(
                dir.path().join("session.json"),
                b"{\"a\": 1, \"stdout_bytes\": 4, \"stderr_bytes\": 4}\n",
            )
            .unwrap();
            let key = SigningKey::from_bytes(&[9u8; 32]);
            let kid = crate::auth::ids::kid_for_public_key(&key.verifying_key().to_bytes());
            seal::seal(dir.path(), SID, &last, count, &kid, &key, SystemTime::now()).unwrap();
            Self { dir, key, kid }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn verify(&self) -> Verification {
            let kid = self.kid.clone();
            let vk = self.key.verifying_key();
            verify(self.dir.path(), SID, move |k| Ok((k == kid).then_some(vk)))
        }

        fn messages(&self) -> Vec<String> {
            self.verify()
                .findings
                .into_iter()
                .map(|f| f.message)
                .collect()
        }

        fn lines(&self) -> Vec<Vec<u8>> {
            let raw = std::fs::read(self.path(EVENTS)).unwrap();
            raw.split_inclusive(|&b| b == b'\n')
                .map(<[u8]>::to_vec)
                .collect()
        }

        fn write_lines(&self, lines: &[Vec<u8>]) {
            std::fs::write(self.path(EVENTS), lines.concat()).unwrap();
        }
    }

    fn flip_byte(path: &std::path::Path, at: usize) {
        let mut b = std::fs::read(path).unwrap();
        b[at] ^= 0x01;
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn intact_session_verifies() {
        let f = Fixture::new(5);
        let v = f.verify();
        assert!(v.intact, "{:?}", v.findings);
        assert!(v.sealed);
        assert_eq!(v.event_count, 7);
        assert_eq!(v.kid.as_deref(), Some(f.kid.as_str()));
    }

    /// Seals of earlier builds (version 1: SHA-256 file hashes) still
    /// verify, and a change to a file they cover is still found.
    #[test]
    fn a_version_1_seal_is_checked_with_sha256() {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let f = Fixture::new(3);
        let mut old = Seal::load(f.dir.path()).unwrap().unwrap();
        assert_eq!(old.version, seal::SEAL_VERSION);
        old.version = 1;
        for name in SEALED_FILES {
            let bytes = std::fs::read(f.path(name)).unwrap();
            old.files
                .insert(name.into(), super::super::event::sha256_hex(&bytes));
        }
        old.signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(f.key.sign(&old.signed_message()).to_bytes());
        std::fs::write(f.path(SEAL_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        let v = f.verify();
        assert!(v.intact, "{:?}", v.findings);
        assert!(v.sealed);
        flip_byte(&f.path("stderr.log"), 1);
        let messages = f.messages();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].starts_with("stderr.log: hash differs from the seal"),
            "{messages:?}"
        );
    }

    #[test]
    fn a_cut_or_grown_log_says_so() {
        let f = Fixture::new(2);
        std::fs::write(f.path("stdout.log"), b"ou").unwrap();
        std::fs::write(f.path("stderr.log"), b"err\nmore").unwrap();
        assert_eq!(
            f.messages(),
            vec![
                "stdout.log: hash differs from the seal: it holds 2 of the 4 bytes recorded (cut \
                 short after sealing, or its end never reached the disk before a crash)"
                    .to_string(),
                "stderr.log: hash differs from the seal: it holds 8 bytes, 4 more than recorded \
                 (appended to after sealing)"
                    .to_string(),
            ]
        );
        // With session.json changed too, its counts are not trusted.
        flip_byte(&f.path("session.json"), 1);
        let m = f.messages();
        assert!(
            m.contains(
                &"stdout.log: hash differs from the seal (the file was changed after sealing)"
                    .to_string()
            ),
            "{m:?}"
        );
    }

    #[test]
    fn each_file_edit_is_named() {
        for name in SEALED_FILES {
            let f = Fixture::new(2);
            flip_byte(&f.path(name), 1);
            assert_eq!(
                f.messages(),
                vec![format!(
                    "{name}: hash differs from the seal (the file was changed after sealing)"
                )]
            );
            let v = f.verify();
            assert_eq!(v.findings[0].kind, FindingKind::FileHashMismatch);
            assert_eq!(v.findings[0].file, name);
        }
        let f = Fixture::new(2);
        std::fs::remove_file(f.path("stderr.log")).unwrap();
        assert_eq!(
            f.messages(),
            vec!["stderr.log: missing (deleted after sealing)".to_string()]
        );
    }

    #[test]
    fn changed_event_breaks_the_next_prev() {
        let f = Fixture::new(5);
        let mut lines = f.lines();
        // Line 3 is "line 1": change its text.
        let text = String::from_utf8(lines[2].clone()).unwrap();
        lines[2] = text.replace("line 1", "line X").into_bytes();
        f.write_lines(&lines);
        assert_eq!(
            f.messages(),
            vec!["events.jsonl line 4: prev does not match line 3 (an event was changed, removed or inserted before it)".to_string()]
        );
    }

    #[test]
    fn removed_event_in_the_middle() {
        let f = Fixture::new(5);
        let mut lines = f.lines();
        lines.remove(3);
        f.write_lines(&lines);
        assert_eq!(
            f.messages(),
            vec![
                "events.jsonl line 4: seq is 4, expected 3 (1 event(s) missing before it)"
                    .to_string(),
                "events.jsonl line 4: prev does not match line 3 (an event was changed, removed or inserted before it)".to_string(),
                "events.jsonl: 6 events, the seal says 7 (1 event(s) removed)".to_string(),
            ]
        );
    }

    #[test]
    fn removed_and_cut_events_at_the_end() {
        let f = Fixture::new(3);
        let mut lines = f.lines();
        lines.pop();
        f.write_lines(&lines);
        assert_eq!(
            f.messages(),
            vec![
                "events.jsonl: 4 events, the seal says 5 (1 event(s) removed at the end)"
                    .to_string()
            ]
        );

        // The last line cut in the middle.
        let f = Fixture::new(3);
        let mut lines = f.lines();
        let last = lines.len() - 1;
        let keep = lines[last].len() / 2;
        lines[last].truncate(keep);
        f.write_lines(&lines);
        let v = f.verify();
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert_eq!(v.findings[0].kind, FindingKind::LineUnparseable);
        assert_eq!(v.findings[0].line, Some(5));
        assert!(
            v.findings[0].message.contains("cut short"),
            "{:?}",
            v.findings
        );

        // Only the final newline removed.
        let f = Fixture::new(3);
        let mut raw = std::fs::read(f.path(EVENTS)).unwrap();
        raw.pop();
        std::fs::write(f.path(EVENTS), raw).unwrap();
        assert_eq!(
            f.messages(),
            vec!["events.jsonl: no newline after line 5 (the file was cut short)".to_string()]
        );
    }

    #[test]
    fn changed_last_event_and_rewritten_chain() {
        let f = Fixture::new(2);
        let mut lines = f.lines();
        let last = lines.len() - 1;
        let text = String::from_utf8(lines[last].clone()).unwrap();
        lines[last] = text
            .replace("\"duration_ms\":5", "\"duration_ms\":6")
            .into_bytes();
        f.write_lines(&lines);
        assert_eq!(
            f.messages(),
            vec!["events.jsonl: the last event (line 4) differs from the seal (it was changed, or the chain was rewritten after sealing)".to_string()]
        );
    }

    #[test]
    fn inserted_and_foreign_events() {
        let f = Fixture::new(2);
        let mut lines = f.lines();
        let copy = lines[1].clone();
        lines.insert(2, copy);
        f.write_lines(&lines);
        let kinds: Vec<FindingKind> = f.verify().findings.iter().map(|x| x.kind).collect();
        assert_eq!(
            kinds,
            vec![
                FindingKind::SeqMismatch,
                FindingKind::PrevMismatch,
                FindingKind::EventCountMismatch
            ]
        );

        let f = Fixture::new(2);
        let mut lines = f.lines();
        lines[0] = String::from_utf8(lines[0].clone())
            .unwrap()
            .replace(SID, "20260101-120000-other1")
            .into_bytes();
        f.write_lines(&lines);
        let m = f.messages();
        assert!(
            m[0].starts_with("events.jsonl line 1: session_id is"),
            "{m:?}"
        );
        assert!(
            m[1].starts_with("events.jsonl line 2: prev does not match line 1"),
            "{m:?}"
        );
    }

    #[test]
    fn garbage_line_is_reported_once() {
        let f = Fixture::new(3);
        let mut lines = f.lines();
        lines[2] = b"{not json\n".to_vec();
        f.write_lines(&lines);
        let v = f.verify();
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert_eq!(v.findings[0].kind, FindingKind::LineUnparseable);
        assert_eq!(v.findings[0].line, Some(3));
    }

    #[test]
    fn seal_problems() {
        // Any edit of the seal itself: bad signature.
        let f = Fixture::new(1);
        let p = f.path(SEAL_FILE);
        let text = std::fs::read_to_string(&p).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["event_count"] = 99.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let m = f.messages();
        assert!(m[0].starts_with("seal.json: bad signature"), "{m:?}");
        // Nothing is derived from a seal that does not verify: no claim
        // that events were added or removed.
        assert_eq!(m.len(), 1, "{m:?}");
        let v = f.verify();
        assert!(v.sealed && v.sealed_at.is_none());

        // A forged seal does not hide what the chain shows by itself.
        let f = Fixture::new(3);
        let p = f.path(SEAL_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["event_count"] = 4.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let mut lines = f.lines();
        lines.remove(2);
        f.write_lines(&lines);
        let kinds: Vec<FindingKind> = f.verify().findings.iter().map(|x| x.kind).collect();
        assert_eq!(
            kinds,
            [
                FindingKind::BadSignature,
                FindingKind::SeqMismatch,
                FindingKind::PrevMismatch
            ],
            "{:?}",
            f.messages()
        );

        // Unknown key: said so, and nothing the seal states is compared
        // (its count claims an event that is not there: no finding for it).
        let f = Fixture::new(1);
        let p = f.path(SEAL_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["event_count"] = 9.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let v = verify(f.dir.path(), SID, |_| Ok(None));
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert_eq!(v.findings[0].kind, FindingKind::UnknownKey);
        assert!(v.sealed_at.is_none());

        // Another key: bad signature.
        let f = Fixture::new(1);
        let other = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
        let v = verify(f.dir.path(), SID, move |_| Ok(Some(other)));
        assert_eq!(v.findings[0].kind, FindingKind::BadSignature);

        // A seal copied from another session.
        let f = Fixture::new(1);
        let key = f.key.verifying_key();
        let v = verify(f.dir.path(), "20260101-120000-zzzzzz", move |_| {
            Ok(Some(key))
        });
        let kinds: Vec<FindingKind> = v.findings.iter().map(|x| x.kind).collect();
        assert!(
            kinds.contains(&FindingKind::SealSessionMismatch),
            "{kinds:?}"
        );

        // Not JSON.
        let f = Fixture::new(1);
        std::fs::write(f.path(SEAL_FILE), b"{").unwrap();
        let v = f.verify();
        assert_eq!(v.findings[0].kind, FindingKind::SealInvalid);
        assert!(!v.sealed);
    }

    #[test]
    fn unsealed_and_legacy_sessions() {
        let f = Fixture::new(2);
        std::fs::remove_file(f.path(SEAL_FILE)).unwrap();
        let v = f.verify();
        assert!(!v.intact);
        assert_eq!(v.findings.len(), 1);
        assert_eq!(v.findings[0].kind, FindingKind::NoSeal);
        assert!(v.findings[0]
            .message
            .starts_with("seal.json: no seal (the run was interrupted"));

        // A 0.4.2 session: no seq, no prev, no seal.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(EVENTS),
            format!("{{\"ts_ms\":1,\"session_id\":\"{SID}\",\"type\":\"run_started\"}}\n{{\"ts_ms\":2,\"session_id\":\"{SID}\",\"type\":\"run_finished\"}}\n"),
        )
        .unwrap();
        let v = verify(d.path(), SID, |_| Ok(None));
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert_eq!(v.findings[0].kind, FindingKind::NotVerifiable);
        assert!(v.findings[0].message.contains("not sealed / no hash chain"));
    }

    #[test]
    fn empty_event_stream_seals_the_session_id() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(EVENTS), b"").unwrap();
        for f in SEALED_FILES {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let kid = crate::auth::ids::kid_for_public_key(&key.verifying_key().to_bytes());
        seal::seal(
            d.path(),
            SID,
            &sha256_hex(SID.as_bytes()),
            0,
            &kid,
            &key,
            SystemTime::now(),
        )
        .unwrap();
        let vk = key.verifying_key();
        let v = verify(d.path(), SID, move |_| Ok(Some(vk)));
        assert!(v.intact, "{:?}", v.findings);
    }

    #[test]
    fn long_lines_are_hashed_but_not_kept() {
        let data: Vec<u8> = std::iter::repeat_n(b'x', MAX_PARSED_LINE + 10)
            .chain(*b"\nabc")
            .collect();
        let mut r = std::io::BufReader::with_capacity(4096, &data[..]);
        let mut buf = Vec::new();
        let first = next_line(&mut r, &mut buf).unwrap().unwrap();
        assert!(first.too_long && first.newline);
        assert_eq!(buf.len(), MAX_PARSED_LINE);
        assert_eq!(hex(&first.hash), sha256_hex(&data[..MAX_PARSED_LINE + 10]));
        let second = next_line(&mut r, &mut buf).unwrap().unwrap();
        assert!(!second.newline && !second.too_long);
        assert_eq!(buf, b"abc");
        assert!(next_line(&mut r, &mut buf).unwrap().is_none());
    }
}
