//! The seal of a finished session: `seal.json`, an Ed25519 signature over
//! the end of the event chain and the hashes of the other session files.
//!
//! ```json
//! {
//!   "version": 2,
//!   "session_id": "20260101-120000-a1b2c3",
//!   "kid": "k-0123456789abcdef",
//!   "alg": "EdDSA",
//!   "last_event_hash": "<hex SHA-256 of the last events.jsonl line>",
//!   "event_count": 42,
//!   "files": {"session.json": "<hex>", "stderr.log": "<hex>", "stdout.log": "<hex>"},
//!   "sealed_at": "2026-01-01T12:00:03Z",
//!   "signature": "<base64url, no padding, of the 64-byte Ed25519 signature>"
//! }
//! ```
//!
//! `files` holds hex BLAKE3 hashes (version 2) or hex SHA-256 hashes
//! (version 1, the seals of earlier builds, still verified). BLAKE3
//! because the logs are hashed as they are written, and a log can be
//! gigabytes: on these machines it hashes ~4.7 GB/s against SHA-256's
//! ~1.2 GB/s (with SHA-NI), which was a tenth of the recording's CPU.
//!
//! The signed message is [`SIGNING_CONTEXT`] followed by the compact JSON of
//! every field but `signature`, keys in lexicographic order (nested ones
//! too), no whitespace. Every value is checked before it is signed or
//! verified (ASCII ids, lowercase hex hashes, the three known file names), so
//! this serialization is unambiguous and its escaping is trivial.
//!
//! Invariants: the supervisor writes the seal last, after the final
//! `session.json`, atomically and 0600; files are hashed by streaming them
//! (a log can be gigabytes) and opened without following symlinks; the seal
//! names its key by a validated kid, and checking it needs only that key's
//! public half (`<home>/auth/keys/<kid>.pub`). A key id from a seal file
//! never becomes a path unvalidated.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::hex;
use super::id;
use super::store::{open_session_file, write_atomic, SessionError};
use crate::auth::{ids, AuthError, AuthStore};

/// Name of the seal in the session directory.
pub const SEAL_FILE: &str = "seal.json";
/// The seal format this build writes (see [`FileHash`] for what changed).
pub const SEAL_VERSION: u32 = 2;
/// How this build hashes the sealed files (the hash of [`SEAL_VERSION`]).
pub const SEAL_FILE_HASH: FileHash = FileHash::Blake3;
/// The signature algorithm, as in the auth store's tokens.
pub const SEAL_ALG: &str = "EdDSA";
/// Prefix of the signed message: a seal signature can never be mistaken
/// for a token signature made with the same key, or the other way round.
pub const SIGNING_CONTEXT: &[u8] = b"vallignus-seal-v1\n";
/// The session files a seal covers besides `events.jsonl` (which the seal
/// covers through `last_event_hash` and `event_count`).
pub const SEALED_FILES: [&str; 3] = ["stdout.log", "stderr.log", "session.json"];
/// A seal is a few hundred bytes; refuse to read more than this.
const MAX_SEAL_BYTES: u64 = 64 * 1024;
/// Read buffer for hashing files.
const HASH_CHUNK: usize = 256 * 1024;

/// How a seal's `files` are hashed: set by its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileHash {
    /// Version 1.
    Sha256,
    /// Version 2.
    Blake3,
}

impl FileHash {
    /// The hash of a seal of `version`; `None` for a version this build
    /// does not know.
    pub fn of_version(version: u32) -> Option<Self> {
        match version {
            1 => Some(Self::Sha256),
            2 => Some(Self::Blake3),
            _ => None,
        }
    }

    /// A running hash of this kind.
    pub fn hasher(self) -> FileHasher {
        match self {
            Self::Sha256 => FileHasher::Sha256(Box::default()),
            Self::Blake3 => FileHasher::Blake3(Box::default()),
        }
    }
}

/// A running [`FileHash`].
#[derive(Clone)]
pub enum FileHasher {
    Sha256(Box<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl FileHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest, in lowercase hex.
    pub fn hex(&self) -> String {
        match self {
            Self::Sha256(h) => hex(&(**h).clone().finalize()),
            Self::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

/// Why a session could not be sealed, or its seal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid seal: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the event chain was not completed, so there is nothing to seal")]
    NoChain,
    #[error("cannot load the signing key: {0}")]
    Key(#[from] AuthError),
    #[error(transparent)]
    Write(#[from] SessionError),
}

/// The content of `seal.json`, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub version: u32,
    pub session_id: String,
    pub kid: String,
    pub alg: String,
    pub last_event_hash: String,
    pub event_count: u64,
    pub files: BTreeMap<String, String>,
    pub sealed_at: String,
    pub signature: String,
}

/// Every field but the signature, in lexicographic key order: the
/// canonical form that is signed.
#[derive(Serialize)]
struct Signed<'a> {
    alg: &'a str,
    event_count: u64,
    files: &'a BTreeMap<String, String>,
    kid: &'a str,
    last_event_hash: &'a str,
    sealed_at: &'a str,
    session_id: &'a str,
    version: u32,
}

pub(crate) fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Seal {
    /// Check the shape of every field (not the signature): what makes the
    /// signed serialization canonical.
    pub fn check_fields(&self) -> Result<(), String> {
        if FileHash::of_version(self.version).is_none() {
            return Err(format!(
                "version {} (this vallignus knows versions 1 to {SEAL_VERSION})",
                self.version
            ));
        }
        id::validate(&self.session_id).map_err(|e| e.to_string())?;
        ids::kid(&self.kid).map_err(|e| e.to_string())?;
        if self.alg != SEAL_ALG {
            return Err(format!("alg {:?}, expected {SEAL_ALG:?}", self.alg));
        }
        if !is_hex_sha256(&self.last_event_hash) {
            return Err("last_event_hash is not 64 lowercase hex digits".into());
        }
        for (name, hash) in &self.files {
            if !SEALED_FILES.contains(&name.as_str()) {
                return Err(format!("files names an unknown file {name:?}"));
            }
            if !is_hex_sha256(hash) {
                return Err(format!("files.{name:?} is not 64 lowercase hex digits"));
            }
        }
        if self.sealed_at.is_empty()
            || self.sealed_at.len() > 64
            || !self.sealed_at.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err("sealed_at is not a timestamp".into());
        }
        Ok(())
    }

    /// How this seal's `files` are hashed.
    pub fn file_hash(&self) -> FileHash {
        FileHash::of_version(self.version).unwrap_or(FileHash::Blake3)
    }

    /// The exact bytes the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut msg = SIGNING_CONTEXT.to_vec();
        let body = Signed {
            alg: &self.alg,
            event_count: self.event_count,
            files: &self.files,
            kid: &self.kid,
            last_event_hash: &self.last_event_hash,
            sealed_at: &self.sealed_at,
            session_id: &self.session_id,
            version: self.version,
        };
        // Serializing plain strings, integers and a string map into a Vec
        // cannot fail; an empty body would only make the signature invalid.
        let _ = serde_json::to_writer(&mut msg, &body);
        msg
    }

    /// Whether `key` signed this seal (strict Ed25519 verification).
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = B64.decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify_strict(&self.signed_message(), &sig).is_ok()
    }

    /// Read `<dir>/seal.json`; `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<Seal>, SealError> {
        let path = dir.join(SEAL_FILE);
        let io_err = |source| SealError::Io {
            path: path.clone(),
            source,
        };
        let file = match open_session_file(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let bytes = match crate::textfile::read_bounded(file, MAX_SEAL_BYTES) {
            Ok(b) => b,
            Err(crate::textfile::ReadError::Io(e)) => return Err(io_err(e)),
            Err(crate::textfile::ReadError::TooLarge) => {
                return Err(SealError::Invalid {
                    path,
                    reason: format!("larger than {MAX_SEAL_BYTES} bytes"),
                })
            }
        };
        let seal: Seal = serde_json::from_slice(&bytes).map_err(|e| SealError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        seal.check_fields()
            .map_err(|reason| SealError::Invalid { path, reason })?;
        Ok(Some(seal))
    }
}

/// Hex hash of a file's contents, read in chunks (bounded memory).
pub fn hash_file(path: &Path, kind: FileHash) -> io::Result<String> {
    let mut file = open_session_file(path)?;
    let mut hasher = kind.hasher();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.hex())
}

fn now_utc(now: SystemTime) -> String {
    crate::auth::iso_utc(crate::auth::unix_secs(now))
}

/// Seal the session in `dir`: hash its files, sign, and write `seal.json`
/// (atomically, 0600). `last_event_hash` and `event_count` come from the
/// event writer that just finished `events.jsonl`.
pub fn seal(
    dir: &Path,
    session_id: &str,
    last_event_hash: &str,
    event_count: u64,
    kid: &str,
    key: &SigningKey,
    now: SystemTime,
) -> Result<Seal, SealError> {
    let end = ChainEnd {
        last_event_hash,
        event_count,
        log_hashes: None,
    };
    prepare(dir, session_id, &end, kid, key, now)?.write()
}

/// The end of a session's event chain, and what its writer knows of the
/// raw logs.
pub struct ChainEnd<'a> {
    pub last_event_hash: &'a str,
    pub event_count: u64,
    /// Hex BLAKE3 of `stdout.log` and `stderr.log` (the [`FileHash`] of
    /// [`SEAL_VERSION`]), taken from the bytes as they were written;
    /// `None`: hash the files on disk.
    pub log_hashes: Option<&'a [String; 2]>,
}

/// A signed seal, not written yet: the supervisor signs while the final
/// `session.json` is being flushed, and writes the seal only once the files
/// it vouches for are on the disk.
pub struct PreparedSeal {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    seal: Seal,
}

impl PreparedSeal {
    /// Write `seal.json` (atomically, 0600, flushed).
    pub fn write(self) -> Result<Seal, SealError> {
        write_atomic(&self.path, &self.bytes)?;
        Ok(self.seal)
    }
}

/// [`seal`] without the write.
pub fn prepare(
    dir: &Path,
    session_id: &str,
    end: &ChainEnd,
    kid: &str,
    key: &SigningKey,
    now: SystemTime,
) -> Result<PreparedSeal, SealError> {
    let mut files = BTreeMap::new();
    for name in SEALED_FILES {
        let known = match (name, end.log_hashes) {
            ("stdout.log", Some([out, _])) => Some(out.clone()),
            ("stderr.log", Some([_, err])) => Some(err.clone()),
            _ => None,
        };
        let hash = match known {
            Some(hash) => hash,
            None => {
                let path = dir.join(name);
                hash_file(&path, SEAL_FILE_HASH).map_err(|source| SealError::Io { path, source })?
            }
        };
        files.insert(name.to_string(), hash);
    }
    let mut seal = Seal {
        version: SEAL_VERSION,
        session_id: session_id.to_string(),
        kid: kid.to_string(),
        alg: SEAL_ALG.into(),
        last_event_hash: end.last_event_hash.to_string(),
        event_count: end.event_count,
        files,
        sealed_at: now_utc(now),
        signature: String::new(),
    };
    let path = dir.join(SEAL_FILE);
    seal.check_fields().map_err(|reason| SealError::Invalid {
        path: path.clone(),
        reason,
    })?;
    seal.signature = B64.encode(key.sign(&seal.signed_message()).to_bytes());
    let mut bytes = serde_json::to_vec_pretty(&seal).map_err(|e| SealError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    Ok(PreparedSeal { path, bytes, seal })
}

/// Seal with the active key of `<home>/auth`, creating the store and its
/// first key if there is none (as `vallignus auth init` would). What the
/// supervisor calls last, after the final `session.json`.
pub fn seal_with_active_key(
    home: &Path,
    dir: &Path,
    session_id: &str,
    last_event_hash: &str,
    event_count: u64,
    now: SystemTime,
) -> Result<Seal, SealError> {
    let end = ChainEnd {
        last_event_hash,
        event_count,
        log_hashes: None,
    };
    prepare_with_active_key(home, dir, session_id, &end, now)?.write()
}

/// [`seal_with_active_key`] without the write.
pub fn prepare_with_active_key(
    home: &Path,
    dir: &Path,
    session_id: &str,
    end: &ChainEnd,
    now: SystemTime,
) -> Result<PreparedSeal, SealError> {
    let (kid, key) = AuthStore::new(home).active_signing_key(now)?;
    prepare(dir, session_id, end, &kid, &key, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SID: &str = "20260101-120000-abc123";

    fn session(dir: &Path) {
        std::fs::write(dir.join("stdout.log"), b"out\n").unwrap();
        std::fs::write(dir.join("stderr.log"), b"").unwrap();
        std::fs::write(dir.join("session.json"), b"{}\n").unwrap();
    }

    fn key() -> (String, SigningKey) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let kid = ids::kid_for_public_key(&key.verifying_key().to_bytes());
        (kid, key)
    }

    #[test]
    fn seal_round_trips_and_signs_every_field() {
        let d = tempfile::tempdir().unwrap();
        session(d.path());
        let (kid, key) = key();
        let h = "ab".repeat(32);
        let sealed = seal(d.path(), SID, &h, 3, &kid, &key, SystemTime::now()).unwrap();
        let path = d.path().join(SEAL_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Seal::load(d.path()).unwrap().unwrap();
        assert_eq!(loaded, sealed);
        assert_eq!(loaded.version, 2);
        assert_eq!(
            loaded.files["stdout.log"],
            blake3::hash(b"out\n").to_hex().as_str()
        );
        assert_eq!(loaded.file_hash(), FileHash::Blake3);
        assert_eq!(loaded.files.len(), 3);
        let vk = key.verifying_key();
        assert!(loaded.signature_valid(&vk));

        // Any field changed: the signature no longer matches.
        let mut changed = Vec::new();
        let mut s = loaded.clone();
        s.event_count = 4;
        changed.push(s);
        let mut s = loaded.clone();
        s.last_event_hash = "cd".repeat(32);
        changed.push(s);
        let mut s = loaded.clone();
        s.files.insert("stderr.log".into(), "00".repeat(32));
        changed.push(s);
        let mut s = loaded.clone();
        s.session_id = "20260101-120000-zzzzzz".into();
        changed.push(s);
        let mut s = loaded.clone();
        s.sealed_at = "2030-01-01T00:00:00Z".into();
        changed.push(s);
        for s in &changed {
            assert!(!s.signature_valid(&vk), "{s:?}");
        }
        // Another key's signature is refused.
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(!loaded.signature_valid(&other));
        let mut s = loaded.clone();
        s.signature = "not base64!".into();
        assert!(!s.signature_valid(&vk));
    }

    #[test]
    fn signed_message_is_canonical() {
        let (kid, _) = key();
        let seal = Seal {
            version: 1,
            session_id: SID.into(),
            kid: kid.clone(),
            alg: SEAL_ALG.into(),
            last_event_hash: "a".repeat(64),
            event_count: 2,
            files: SEALED_FILES
                .iter()
                .map(|f| (f.to_string(), "b".repeat(64)))
                .collect(),
            sealed_at: "2026-01-01T12:00:03Z".into(),
            signature: "ignored".into(),
        };
        let b = "b".repeat(64);
        let expected = format!(
            "vallignus-seal-v1\n{{\"alg\":\"EdDSA\",\"event_count\":2,\"files\":{{\"session.json\":\"{b}\",\"stderr.log\":\"{b}\",\"stdout.log\":\"{b}\"}},\"kid\":\"{kid}\",\"last_event_hash\":\"{}\",\"sealed_at\":\"2026-01-01T12:00:03Z\",\"session_id\":\"{SID}\",\"version\":1}}",
            "a".repeat(64)
        );
        assert_eq!(String::from_utf8(seal.signed_message()).unwrap(), expected);
    }

    #[test]
    fn load_refuses_malformed_seals() {
        let d = tempfile::tempdir().unwrap();
        assert!(Seal::load(d.path()).unwrap().is_none());
        session(d.path());
        let (kid, key) = key();
        seal(
            d.path(),
            SID,
            &"ab".repeat(32),
            1,
            &kid,
            &key,
            SystemTime::now(),
        )
        .unwrap();
        let path = d.path().join(SEAL_FILE);
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("extra", serde_json::json!(1)),
            ("kid", serde_json::json!("../../etc/passwd")),
            ("alg", serde_json::json!("none")),
            ("version", serde_json::json!(3)),
            ("version", serde_json::json!(0)),
            ("last_event_hash", serde_json::json!("XYZ")),
            ("files", serde_json::json!({"../x": "a".repeat(64)})),
            ("session_id", serde_json::json!("../x")),
        ];
        for (field, value) in cases {
            let mut v = good.clone();
            v[field] = value;
            std::fs::write(&path, v.to_string()).unwrap();
            assert!(
                matches!(Seal::load(d.path()), Err(SealError::Invalid { .. })),
                "{field}"
            );
        }
        std::fs::write(&path, vec![b' '; 70_000]).unwrap();
        assert!(matches!(
            Seal::load(d.path()),
            Err(SealError::Invalid { .. })
        ));
        // A symlink in place of the seal is not followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(d.path().join("session.json"), &path).unwrap();
        assert!(matches!(Seal::load(d.path()), Err(SealError::Io { .. })));
    }

    #[test]
    fn sealing_with_the_active_key_creates_the_first_key() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("s");
        std::fs::create_dir(&dir).unwrap();
        session(&dir);
        let now = SystemTime::now();
        let s1 = seal_with_active_key(home.path(), &dir, SID, &"ab".repeat(32), 1, now).unwrap();
        let store = AuthStore::new(home.path());
        assert_eq!(
            store.active_kid().unwrap().as_deref(),
            Some(s1.kid.as_str())
        );
        let vk = store.verifying_key(&s1.kid).unwrap().unwrap();
        assert!(s1.signature_valid(&vk));
        // The second seal uses the same key.
        let s2 = seal_with_active_key(home.path(), &dir, SID, &"ab".repeat(32), 1, now).unwrap();
        assert_eq!(s1.kid, s2.kid);
    }

    #[test]
    fn hash_file_streams_large_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        let data: Vec<u8> = (0..(HASH_CHUNK * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        assert_eq!(
            hash_file(&p, FileHash::Sha256).unwrap(),
            super::super::event::sha256_hex(&data)
        );
        assert_eq!(
            hash_file(&p, FileHash::Blake3).unwrap(),
            blake3::hash(&data).to_hex().as_str()
        );
    }

    #[test]
    fn versions_name_their_file_hash() {
        assert_eq!(FileHash::of_version(SEAL_VERSION), Some(SEAL_FILE_HASH));
        assert_eq!(FileHash::of_version(1), Some(FileHash::Sha256));
        assert_eq!(FileHash::of_version(0), None);
        assert_eq!(FileHash::of_version(SEAL_VERSION + 1), None);
        // A running hash fed in pieces equals the one-shot digest.
        for kind in [FileHash::Sha256, FileHash::Blake3] {
            let mut h = kind.hasher();
            h.update(b"ab");
            h.update(b"");
            h.update(b"c");
            let mut one = kind.hasher();
            one.update(b"abc");
            assert_eq!(h.hex(), one.hex());
            assert_eq!(h.hex().len(), 64);
        }
    }
}
