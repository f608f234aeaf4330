//! Cleaning up after supervisors that died without tearing down (SIGKILL,
//! OOM, power loss): their run cgroups are killed and removed, and their
//! sessions are marked `interrupted`. Runs at the start of every vallignus
//! invocation that touches sessions or cgroups; it only acts on runs whose
//! supervisor is provably gone (pid + start time no longer match).

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::cgroup::{parse_run_cgroup_name, Cgroup};
use crate::session::store::{load_meta, save_meta, Store};
use crate::session::{SessionMeta, Status};

/// Start time (clock ticks since boot) of `pid`, from `/proc/<pid>/stat`.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3, 4, ...; field 22 is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the supervisor identified by (pid, start time) still runs.
pub fn supervisor_alive(pid: i32, start_time: u64) -> bool {
    proc_start_time(pid) == Some(start_time)
}

/// Clean up after every dead supervisor: cgroups under `cgroup_base` (when
/// this user can manage them) and sessions in `store`. `note` gets one
/// message per thing cleaned up.
pub fn reap_leftovers(store: &Store, cgroup_base: Option<&Path>, mut note: impl FnMut(&str)) {
    if let Some(base) = cgroup_base {
        for name in reap_cgroups(base) {
            note(&format!(
                "removed the cgroup {name} of a supervisor that died"
            ));
        }
    }
    for id in reap_sessions(store) {
        note(&format!(
            "session {id} was left by a supervisor that died: marked interrupted"
        ));
    }
}

/// Kill and remove run cgroups under `base` whose supervisor is gone.
/// Returns the names removed.
pub fn reap_cgroups(base: &Path) -> Vec<String> {
    let mut reaped = Vec::new();
    let Ok(entries) = fs::read_dir(base) else {
        return reaped;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, start, id)) = parse_run_cgroup_name(&name) else {
            continue;
        };
        if supervisor_alive(pid, start) {
            continue;
        }
        super::interception::remove_bundle(id);
        if remove_cgroup_tree(&entry.path()).is_ok() {
            reaped.push(name);
        }
    }
    reaped
}

/// Kill everything in a cgroup and its descendants, then remove them all
/// (children first: rmdir only works on an empty, childless cgroup).
fn remove_cgroup_tree(path: &Path) -> std::io::Result<()> {
    let cg = Cgroup::open(path.to_path_buf()).map_err(std::io::Error::other)?;
    let _ = cg.kill();
    let _ = cg.wait_empty(Duration::from_secs(2));
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path())?;
            }
        }
    }
    cg.remove().map_err(std::io::Error::other)
}

/// Mark sessions of dead supervisors as interrupted. Returns their ids.
pub fn reap_sessions(store: &Store) -> Vec<String> {
    let mut reaped = Vec::new();
    for id in store.running_ids() {
        let dir = store.sessions_dir().join(&id);
        if !dir.exists() {
            store.clear_running(&id);
            continue;
        }
        let marker = store.running_supervisor(&id);
        let mut meta = match load_meta(&id, &dir) {
            Ok(meta) => meta,
            // An unreadable session.json is left as it is (nothing lost):
            // it is listed as unreadable, with why.
            Err(_) if fs::symlink_metadata(dir.join("session.json")).is_ok() => continue,
            // The supervisor died before its first session.json: write one
            // from what the marker says, if that supervisor is gone.
            Err(_) => match marker {
                Some((pid, start)) if !supervisor_alive(pid, start) => SessionMeta {
                    session_id: id.clone(),
                    status: Some(Status::Running),
                    ..SessionMeta::default()
                },
                _ => continue,
            },
        };
        if meta.supervisor.is_none() {
            if let Some((pid, start_time)) = marker {
                meta.supervisor = Some(crate::session::meta::SupervisorInfo {
                    pid,
                    start_time,
                    cgroup: None,
                    version: String::new(),
                });
            }
        }
        let alive = meta
            .supervisor
            .as_ref()
            .is_some_and(|s| supervisor_alive(s.pid, s.start_time));
        if alive {
            continue;
        }
        if meta.status == Some(Status::Running) {
            meta.status = Some(Status::Interrupted);
            meta.termination_reason = Some("supervisor_lost".into());
            if save_meta(&dir, &meta).is_err() {
                continue;
            }
        }
        store.clear_running(&id);
        reaped.push(id);
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat =
            "1234 (a) b) (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn session_without_metadata_of_a_dead_supervisor_is_marked_interrupted() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path().to_path_buf());
        let (dead, _) = store.create_session_dir().unwrap();
        let (alive, _) = store.create_session_dir().unwrap();
        let me = std::process::id() as i32;
        let start = proc_start_time(me).unwrap();
        // Same pid, other start time: a supervisor that is gone.
        store.mark_running(&dead, me, start + 1).unwrap();
        store.mark_running(&alive, me, start).unwrap();
        assert_eq!(reap_sessions(&store), vec![dead.clone()]);
        let meta = store.load(&dead).unwrap();
        assert_eq!(meta.status, Some(Status::Interrupted));
        assert_eq!(meta.termination_reason.as_deref(), Some("supervisor_lost"));
        assert_eq!(store.running_ids(), vec![alive]);
    }

    /// An unreadable session.json is never replaced by an empty record,
    /// and a marker that is not a small regular file (a FIFO, a link to
    /// /dev/zero) is no marker: nothing blocks or reads without end.
    #[test]
    fn unreadable_session_files_and_odd_markers_are_left_alone() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path().to_path_buf());
        let (broken, dir) = store.create_session_dir().unwrap();
        let truncated = b"{\"session_id\": \"x\", \"command\": [\"agent\"";
        fs::write(dir.join("session.json"), truncated).unwrap();
        let me = std::process::id() as i32;
        let start = proc_start_time(me).unwrap();
        store.mark_running(&broken, me, start + 1).unwrap();
        assert!(reap_sessions(&store).is_empty());
        assert_eq!(fs::read(dir.join("session.json")).unwrap(), truncated);

        let (fifo, _) = store.create_session_dir().unwrap();
        let marker = store.running_dir().join(&fifo);
        nix::unistd::mkfifo(&marker, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (zero, _) = store.create_session_dir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", store.running_dir().join(&zero)).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(store.running_supervisor(&fifo), None);
        assert_eq!(store.running_supervisor(&zero), None);
        let _ = reap_sessions(&store);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let start = proc_start_time(me).unwrap();
        assert!(supervisor_alive(me, start));
        assert!(!supervisor_alive(me, start + 1));
    }
}
