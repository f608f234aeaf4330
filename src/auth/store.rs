//! The auth store's layout, its lock, and the file helpers the other parts
//! use.
//!
//! ```text
//! <home>/auth/            0700
//!   .lock                 flock(2) target; every write holds it exclusively
//!   agents/<id>.json      one agent
//!   policies/<id>/v0001.json, v0002.json, ...   immutable versions
//!   policies/<id>/latest  "v0002": the newest version
//!   keys/<kid>.pub        public keys, kept across rotations
//!   keys/<kid>.key        the active private key (old ones are deleted on rotation)
//!   keys/active           the active kid
//!   revoked/revoked.json  revoked token ids and agents
//!   tokens/issued.json    what was issued (not the tokens themselves), unexpired only
//! ```
//!
//! Invariants: directories are 0700 and files 0600; every file is replaced
//! atomically (temp file + rename), so readers never see a half-written file
//! and need no lock; every read-modify-write (create, update, revoke, issue,
//! rotate) runs under the exclusive lock, so concurrent vallignus processes
//! (or threads) never lose an update. Paths are built only from ids that
//! passed [`super::ids`]. Files are opened with `O_NOFOLLOW`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ids::IdError;
use super::policy::PolicyError;
use crate::session::store::{self as session_store, SessionError};

/// Why an auth store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Fs(#[from] SessionError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: Errno },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is accessible by other users (mode {mode:o}); run: chmod go-rwx {path}")]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error(transparent)]
    InvalidPolicy(#[from] PolicyError),
    #[error("agent {agent_id:?} already exists ({path})")]
    AgentExists { agent_id: String, path: PathBuf },
    #[error("agent {0:?} does not exist (see `vallignus auth list-agents`)")]
    AgentNotFound(String),
    #[error("agent {0:?} has been revoked")]
    AgentRevoked(String),
    #[error("policy {policy_id:?} already exists ({path}); use update-policy for a new version")]
    PolicyExists { policy_id: String, path: PathBuf },
    #[error("policy {0:?} does not exist (see `vallignus auth list-policies`)")]
    PolicyNotFound(String),
    #[error("update-policy: nothing to change in policy {policy_id:?} (version {version} already has these values)")]
    NoChange { policy_id: String, version: u32 },
    #[error("update-policy needs at least one field to change")]
    EmptyUpdate,
    #[error("invalid {what}: {reason}")]
    InvalidValue { what: &'static str, reason: String },
    #[error("--ttl-seconds {0}: expected 1 to {max} seconds", max = super::MAX_TTL_SECS)]
    Ttl(u64),
    #[error("the auth store has no signing key yet; run `vallignus auth init`")]
    NoActiveKey,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Proof that the store's exclusive lock is held (released on drop).
pub struct Locked {
    _lock: Flock<File>,
}

/// The auth store of one vallignus home.
#[derive(Debug, Clone)]
pub struct AuthStore {
    root: PathBuf,
}

impl AuthStore {
    /// The store under `<home>/auth` (nothing is created).
    pub fn new(home: &Path) -> Self {
        Self {
            root: home.join("auth"),
        }
    }

    /// The store of the default home (`$VALLIGNUS_HOME`, ...).
    pub fn open_default() -> Result<Self, AuthError> {
        Ok(Self::new(&session_store::home_dir()?))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn agents_dir(&self) -> PathBuf {
        self.root.join("agents")
    }

    pub(crate) fn policies_dir(&self) -> PathBuf {
        self.root.join("policies")
    }

    pub(crate) fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    pub(crate) fn revoked_dir(&self) -> PathBuf {
        self.root.join("revoked")
    }

    pub(crate) fn tokens_dir(&self) -> PathBuf {
        self.root.join("tokens")
    }

    /// Create the directories (0700) and refuse a store others can read.
    pub(crate) fn ensure_layout(&self) -> Result<(), AuthError> {
        for dir in [
            self.root.clone(),
            self.agents_dir(),
            self.policies_dir(),
            self.keys_dir(),
            self.revoked_dir(),
            self.tokens_dir(),
        ] {
            session_store::create_private_dir(&dir)?;
            check_private(&dir)?;
        }
        Ok(())
    }

    /// Take the store's exclusive lock, creating the layout first. Blocks
    /// until other holders are done.
    pub fn lock(&self) -> Result<Locked, AuthError> {
        self.ensure_layout()?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(Locked { _lock: lock }),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, source)) => return Err(AuthError::Lock { path, source }),
            }
        }
    }
}

/// Refuse a file or directory that grants any access to group or others.
pub(crate) fn check_private(path: &Path) -> Result<(), AuthError> {
    let mode = fs::symlink_metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(AuthError::InsecureMode {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Read a whole file without following a symlink; `None` if it does not exist.
pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>, AuthError> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(Some(buf))
}

/// Read and parse a JSON file; `None` if it does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AuthError> {
    let Some(bytes) = read_file(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AuthError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not valid JSON of the expected shape: {e}"),
        })
}

/// [`read_json`] of a file that holds one JSON object (a struct): serde
/// would also take a struct's fields from an array (`[]` read as a
/// revocation list with nothing revoked), so anything else is corrupt.
pub(crate) fn read_json_object<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AuthError> {
    let Some(value) = read_json::<serde_json::Value>(path)? else {
        return Ok(None);
    };
    let corrupt = |why: &dyn std::fmt::Display| AuthError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not valid JSON of the expected shape: {why}"),
    };
    if !value.is_object() {
        return Err(corrupt(&"not an object"));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| corrupt(&e))
}

/// Serialize (pretty, with a final newline) and write atomically, 0600.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AuthError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| AuthError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    session_store::write_atomic(path, &bytes)?;
    Ok(())
}

/// Names of the entries of `dir` (empty if it does not exist).
pub(crate) fn dir_names(dir: &Path) -> Result<Vec<String>, AuthError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_private_and_loose_modes_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let _lock = store.lock().unwrap();
        for dir in ["", "agents", "policies", "keys", "revoked", "tokens"] {
            let mode = fs::metadata(store.root().join(dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{dir}");
        }
        let lock_mode = fs::metadata(store.root().join(".lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(lock_mode & 0o777, 0o600);
        drop(_lock);
        fs::set_permissions(store.keys_dir(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(store.lock(), Err(AuthError::InsecureMode { .. })));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target.json");
        fs::write(&target, b"{}").unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_file(&link).is_err());
        assert_eq!(read_file(&d.path().join("none")).unwrap(), None);
    }
}
