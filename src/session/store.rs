//! Where sessions live and how they are written and read back.
//!
//! `<home>` is `$VALLIGNUS_HOME`, else `/var/lib/vallignus` for root, else
//! `~/.vallignus`. Besides `sessions/`, the home has `running/`: one empty
//! marker file per session whose supervisor has not finished yet, so that a
//! later vallignus finds sessions left behind by a killed supervisor without
//! scanning every session.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::id;
use super::meta::SessionMeta;

pub const HOME_ENV: &str = "VALLIGNUS_HOME";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot determine the vallignus home: set {HOME_ENV} or HOME")]
    NoHome,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    InvalidId(#[from] id::InvalidId),
    #[error("session not found: {id} (looked in {dir})")]
    NotFound { id: String, dir: PathBuf },
    #[error("session {id} is corrupt: {path}: {reason}")]
    Corrupt {
        id: String,
        path: PathBuf,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The vallignus home directory (not created).
pub fn home_dir() -> Result<PathBuf, SessionError> {
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/vallignus"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".vallignus"))
        .ok_or(SessionError::NoHome)
}

/// Create `dir` and its parents with mode 0700 (existing dirs are left as they are).
pub fn create_private_dir(dir: &Path) -> Result<(), SessionError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Write `bytes` to `path` atomically: a 0600 temp file in the same
/// directory, fsync, rename over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SessionError> {
    write_atomic_with(path, bytes, true)
}

/// [`write_atomic`], with the fsync optional: without it the rename is
/// still atomic for readers, but a power loss may leave the old content
/// (or an empty file). For records that are rewritten durably later.
pub fn write_atomic_with(path: &Path, bytes: &[u8], durable: bool) -> Result<(), SessionError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// Open a new 0600 file that must not exist yet.
pub fn create_private_file(path: &Path) -> Result<File, SessionError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

/// The sessions of one vallignus home.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
}

/// Result of listing: sessions that loaded, and how many directories did not.
#[derive(Debug, Default)]
pub struct Listing {
    pub sessions: Vec<SessionMeta>,
    pub unreadable: Vec<(String, String)>,
}

impl Store {
    pub fn new(home: PathBuf) -> Self {
        Self { home }
    }

    pub fn open_default() -> Result<Self, SessionError> {
        Ok(Self::new(home_dir()?))
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.home.join("sessions")
    }

    pub fn running_dir(&self) -> PathBuf {
        self.home.join("running")
    }

    /// Directory of an existing session, after validating the id.
    pub fn session_dir(&self, session_id: &str) -> Result<PathBuf, SessionError> {
        let id = id::validate(session_id)?;
        let dir = self.sessions_dir().join(id);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(m) => Err(SessionError::Corrupt {
                id: id.into(),
                path: dir,
                reason: not_a_session_dir(&m).into(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(SessionError::NotFound {
                id: id.into(),
                dir: self.sessions_dir(),
            }),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// Create a fresh session directory with a new unique id. Uniqueness
    /// under concurrency comes from `mkdir` failing on an existing name.
    pub fn create_session_dir(&self) -> Result<(String, PathBuf), SessionError> {
        let sessions = self.sessions_dir();
        create_private_dir(&sessions)?;
        create_private_dir(&self.running_dir())?;
        loop {
            let session_id = id::generate();
            let dir = sessions.join(&session_id);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok((session_id, dir)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
    }

    /// Load `session.json` of one session.
    pub fn load(&self, session_id: &str) -> Result<SessionMeta, SessionError> {
        let dir = self.session_dir(session_id)?;
        load_meta(session_id, &dir)
    }

    /// All sessions, newest first. Unreadable ones are skipped and reported.
    pub fn list(&self) -> Result<Listing, SessionError> {
        let dir = self.sessions_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut listing = Listing::default();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match fs::symlink_metadata(entry.path()) {
                Ok(m) if m.is_dir() => {}
                // Something else under a session's name is reported; other
                // names are not sessions.
                Ok(m) if id::validate(&name).is_ok() => {
                    listing
                        .unreadable
                        .push((name, not_a_session_dir(&m).to_string()));
                    continue;
                }
                _ => continue,
            }
            match load_meta(&name, &entry.path()) {
                Ok(meta) => listing.sessions.push(meta),
                Err(e) => listing.unreadable.push((name, e.to_string())),
            }
        }
        // Newest first, by the instant each started: the ISO strings carry
        // the UTC offset of their day (DST, TZ), so they do not sort as text.
        listing.sessions.sort_by_cached_key(|m| {
            std::cmp::Reverse((started_at_ms(&m.started_at_iso), m.session_id.clone()))
        });
        Ok(listing)
    }

    /// Mark a session as having a live supervisor, identified by pid and
    /// start time (the marker's content: `<pid> <start time>`), so that a
    /// supervisor that dies before its first session.json is still found.
    pub fn mark_running(
        &self,
        session_id: &str,
        pid: i32,
        start_time: u64,
    ) -> Result<(), SessionError> {
        let path = self.running_dir().join(session_id);
        fs::write(&path, format!("{pid} {start_time}\n")).map_err(io_err(&path))
    }

    /// The supervisor (pid, start time) recorded in a running marker (a
    /// small regular file; anything else in its place is no marker).
    pub fn running_supervisor(&self, session_id: &str) -> Option<(i32, u64)> {
        let bytes = read_session_file(&self.running_dir().join(session_id), 64).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split_whitespace();
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    pub fn clear_running(&self, session_id: &str) {
        let _ = fs::remove_file(self.running_dir().join(session_id));
    }

    /// Ids with a running marker.
    pub fn running_ids(&self) -> Vec<String> {
        fs::read_dir(self.running_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| id::validate(n).is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Open a session file for reading: a regular file only, never through a
/// symlink, and without blocking on a FIFO or device in its place (a
/// session directory is data, and may have been tampered with).
pub(crate) fn open_session_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidData,
                "a symbolic link (session files are never followed)",
            ),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// A whole session file of at most `max` bytes (see [`open_session_file`]).
pub(crate) fn read_session_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    crate::textfile::read_bounded(open_session_file(path)?, max).map_err(|e| match e {
        crate::textfile::ReadError::Io(e) => e,
        crate::textfile::ReadError::TooLarge => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ),
    })
}

/// Why an entry under a session's name is not a session directory.
fn not_a_session_dir(m: &fs::Metadata) -> &'static str {
    if m.file_type().is_symlink() {
        "a symbolic link: session directories are never followed"
    } else {
        "not a directory"
    }
}

/// Largest `session.json` read (they are a few KiB).
const MAX_META_BYTES: u64 = 16 << 20;

/// Read and parse `<dir>/session.json` (a regular file, not a link, at
/// most [`MAX_META_BYTES`]), which must name the session it is in.
pub fn load_meta(session_id: &str, dir: &Path) -> Result<SessionMeta, SessionError> {
    let path = dir.join("session.json");
    let bytes = match read_session_file(&path, MAX_META_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(SessionError::Corrupt {
                id: session_id.into(),
                path,
                reason: "missing (the session was never fully created)".into(),
            })
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut meta: SessionMeta =
        serde_json::from_slice(&bytes).map_err(|e| SessionError::Corrupt {
            id: session_id.into(),
            path: path.clone(),
            reason: format!("not valid session JSON: {e}"),
        })?;
    if meta.session_id.is_empty() {
        meta.session_id = session_id.to_string();
    } else if meta.session_id != session_id {
        return Err(SessionError::Corrupt {
            id: session_id.into(),
            path,
            reason: format!(
                "names session {:?}, but it is in the directory of {session_id}",
                meta.session_id
            ),
        });
    }
    Ok(meta)
}

/// Serialize and atomically write `session.json` into `dir` (durably).
pub fn save_meta(dir: &Path, meta: &SessionMeta) -> Result<(), SessionError> {
    save_meta_with(dir, meta, true)
}

/// [`save_meta`] with the fsync optional (see [`write_atomic_with`]).
pub fn save_meta_with(dir: &Path, meta: &SessionMeta, durable: bool) -> Result<(), SessionError> {
    let path = dir.join("session.json");
    let mut bytes = serde_json::to_vec_pretty(meta).map_err(|e| SessionError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic_with(&path, &bytes, durable)
}

/// Milliseconds since the epoch of a `started_at_iso`: with its offset
/// (this version), or as local time (0.4.2 wrote none); `None` if neither
/// parses (such sessions sort last).
fn started_at_ms(iso: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(iso) {
        return Some(t.timestamp_millis());
    }
    let naive = chrono::NaiveDateTime::parse_from_str(iso, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_save_load_list() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path().join("h"));
        let (id, dir) = store.create_session_dir().unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let meta = SessionMeta {
            session_id: id.clone(),
            started_at_iso: "2026-01-01T00:00:00".into(),
            ..Default::default()
        };
        save_meta(&dir, &meta).unwrap();
        let mode = fs::metadata(dir.join("session.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load(&id).unwrap().session_id, id);

        // A corrupt and a half-created session are skipped and counted.
        fs::create_dir(store.sessions_dir().join("20260101-000000-broken")).unwrap();
        let bad = store.sessions_dir().join("20260101-000000-badjsn");
        fs::create_dir(&bad).unwrap();
        fs::write(bad.join("session.json"), b"{\"session_id\": ").unwrap();
        let listing = store.list().unwrap();
        assert_eq!(listing.sessions.len(), 1);
        assert_eq!(listing.unreadable.len(), 2);
        assert!(matches!(
            store.load("20260101-000000-badjsn"),
            Err(SessionError::Corrupt { .. })
        ));
        assert!(matches!(
            store.load("nope"),
            Err(SessionError::NotFound { .. })
        ));
        assert!(matches!(
            store.load("../x"),
            Err(SessionError::InvalidId(_))
        ));
    }

    /// A link or a file under a session's name is reported, never followed.
    #[test]
    fn links_and_files_in_place_of_sessions_are_named() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path().join("h"));
        let (id, dir) = store.create_session_dir().unwrap();
        save_meta(
            &dir,
            &SessionMeta {
                session_id: id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        let moved = home.path().join("elsewhere");
        fs::rename(&dir, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        fs::write(store.sessions_dir().join("20260101-000000-afile1"), b"x").unwrap();
        let listing = store.list().unwrap();
        assert!(listing.sessions.is_empty());
        let mut names: Vec<&str> = listing.unreadable.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["20260101-000000-afile1", id.as_str()]);
        let err = store.session_dir(&id).unwrap_err().to_string();
        assert!(err.contains("a symbolic link"), "{err}");
    }

    /// Sessions started across an offset change (DST, TZ) list newest
    /// first by instant, not by text.
    #[test]
    fn listing_is_newest_first_by_instant() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path().join("h"));
        // Started in this order: 10:00 in Tokyo, 00:30 in New York (=
        // 05:30 UTC), 06:00 UTC. As text, Tokyo's sorts last.
        let starts = [
            "2026-03-01T10:00:00.000000+09:00",
            "2026-03-01T00:30:00.000000-05:00",
            "2026-03-01T06:00:00.000000+00:00",
        ];
        let mut ids = Vec::new();
        for iso in starts {
            let (id, dir) = store.create_session_dir().unwrap();
            let meta = SessionMeta {
                session_id: id.clone(),
                started_at_iso: iso.into(),
                ..Default::default()
            };
            save_meta(&dir, &meta).unwrap();
            ids.push(id);
        }
        let listed: Vec<String> = store
            .list()
            .unwrap()
            .sessions
            .into_iter()
            .map(|m| m.session_id)
            .collect();
        ids.reverse();
        assert_eq!(listed, ids);
        assert_eq!(
            started_at_ms("2026-03-01T10:00:00.000000+09:00"),
            started_at_ms("2026-03-01T01:00:00Z")
        );
        assert!(started_at_ms("2025-01-24T15:30:45.123456").is_some());
        assert_eq!(started_at_ms("garbage"), None);
    }

    #[test]
    fn running_markers() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path().to_path_buf());
        let (id, _) = store.create_session_dir().unwrap();
        store.mark_running(&id, 42, 7).unwrap();
        assert_eq!(store.running_ids(), vec![id.clone()]);
        assert_eq!(store.running_supervisor(&id), Some((42, 7)));
        store.clear_running(&id);
        assert!(store.running_ids().is_empty());
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
