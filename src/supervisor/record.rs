//! The session of one run, from `session.json` with `status: running` to
//! the final, atomically written `session.json`.

use std::path::PathBuf;
use std::time::Instant;

use crate::session::direct::DirectFile;
use crate::session::meta::{env_summary, Limits, SupervisorInfo};
use crate::session::store::{create_private_file, save_meta_with, SessionError, Store};
use crate::session::{EventWriter, SessionMeta, Status};

use super::journal::Journal;

pub struct Record {
    store: Store,
    pub dir: PathBuf,
    pub meta: SessionMeta,
}

fn now_iso() -> String {
    chrono::Local::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
        .to_string()
}

impl Record {
    /// Create the session directory and files, write the initial
    /// `session.json` (status running) and the running marker.
    pub fn open(
        store: Store,
        command: &[String],
        limits: Limits,
        supervisor: SupervisorInfo,
        started: Instant,
    ) -> Result<(Self, Journal), SessionError> {
        let (session_id, dir) = store.create_session_dir()?;
        let cwd = std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = SessionMeta {
            session_id: session_id.clone(),
            started_at_iso: now_iso(),
            command: command.to_vec(),
            cwd,
            env_summary: env_summary(
                std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
            ),
            status: Some(Status::Running),
            stdout_bytes: Some(0),
            stderr_bytes: Some(0),
            limits: Some(limits),
            supervisor: Some(supervisor),
            ..Default::default()
        };
        let events = create_private_file(&dir.join("events.jsonl"))?;
        let stdout_log = create_private_file(&dir.join("stdout.log"))?;
        let stderr_log = create_private_file(&dir.join("stderr.log"))?;
        // session.json is first written once the run's enforcement is known
        // (see `save`); until then the running marker identifies the
        // supervisor, so a crash in between is still found and reaped.
        if let Some(sup) = &meta.supervisor {
            store.mark_running(&session_id, sup.pid, sup.start_time)?;
        }
        // Written in whole aligned blocks with O_DIRECT where the file
        // system takes it (see session::direct): the writer's batches are
        // gathered there, not in a BufWriter.
        let direct = |file, name: &str| DirectFile::new(file, &dir.join(name));
        let writer = EventWriter::with_logs(
            direct(events, "events.jsonl"),
            [
                direct(stdout_log, "stdout.log"),
                direct(stderr_log, "stderr.log"),
            ],
            &session_id,
            started,
        );
        let journal = Journal::new(writer);
        Ok((Self { store, dir, meta }, journal))
    }

    pub fn id(&self) -> &str {
        &self.meta.session_id
    }

    /// The vallignus home of this session (whose auth store seals it).
    pub fn home(&self) -> &std::path::Path {
        self.store.home()
    }

    /// Write `session.json` while the run is starting: not fsync'd (a few
    /// ms per run on slow disks), since `finish` rewrites it durably and a
    /// crash before that is recovered from the running marker.
    pub fn save(&self) -> Result<(), SessionError> {
        save_meta_with(&self.dir, &self.meta, false)
    }

    /// Write the final `session.json` and drop the running marker. The
    /// file is made durable (fdatasync) on a thread, so the seal can be
    /// computed and written meanwhile: two disk flushes overlap instead of
    /// adding up at the end of every run. [`FinalSync::wait`] joins it.
    pub fn finish(mut self, status: Status) -> Result<FinalSync, SessionError> {
        self.meta.status = Some(status);
        self.meta.finished_at_iso = Some(now_iso());
        // If the final session.json cannot be written (a full disk), the
        // running marker stays: the next start finds the supervisor gone
        // and marks the session interrupted, instead of it reading
        // "running" forever.
        save_meta_with(&self.dir, &self.meta, false)?;
        self.store.clear_running(&self.meta.session_id);
        let path = self.dir.join("session.json");
        let sync = {
            let path = path.clone();
            std::thread::Builder::new()
                .name("session-sync".into())
                .spawn(move || std::fs::File::open(&path).and_then(|f| f.sync_data()))
        };
        Ok(FinalSync { path, sync })
    }
}

/// The final `session.json` on its way to the disk.
pub struct FinalSync {
    path: std::path::PathBuf,
    sync: std::io::Result<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl FinalSync {
    /// Wait until the final `session.json` is on the disk.
    pub fn wait(self) -> Result<(), SessionError> {
        let io = |source| SessionError::Io {
            path: self.path.clone(),
            source,
        };
        // Without a thread (none could be started), sync here.
        let synced = match self.sync {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked"))),
            Err(_) => std::fs::File::open(&self.path).and_then(|f| f.sync_data()),
        };
        synced.map_err(io)
    }
}
