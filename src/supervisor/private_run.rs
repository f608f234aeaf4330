//! The agent's private `/run` (with a mount namespace): an empty tmpfs
//! over `/run`, and over `/var/run` when that is a directory of its own
//! rather than the usual link to `/run`, with only what the run needs
//! bound back at its path.
//!
//! Why: `/run` is where the host's daemons listen on Unix sockets
//! (Docker's, containerd's, systemd's, D-Bus). A socket is reached by its
//! path, not through the network namespace, and below landlock ABI 9
//! neither landlock nor dropped capabilities stop a `connect()` that the
//! socket's owner and mode allow: an agent that is root in its user
//! namespace passes the check of a root-owned socket as the host's root.
//!
//! What is kept ([`plan`], in the supervisor, before the fork):
//! - the run's CA bundle (TLS interception), read-only;
//! - with the host's network, the file `/etc/resolv.conf` points to when
//!   that is under `/run`, read-only (if it can be opened);
//! - what `--ro` and `--rw` grant under those directories, as granted
//!   (a grant of `/run` itself is refused: it would give back every
//!   socket). A kept directory keeps the sockets inside it;
//! - the working directory when it is under them (read-write, as landlock
//!   grants it), and the child changes into it again after the mounts, so
//!   `..` walks the private `/run` and not the host's.
//!
//! Each kept path is resolved and opened (`O_PATH`) in the supervisor,
//! which notes its device and inode. The child opens it again (a bind
//! source must be a mount of the caller's own mount namespace, and the
//! supervisor's handle points into the host's), refuses it unless device
//! and inode are the ones the supervisor saw (a path swapped in between
//! fails the run), and binds it from `/proc/self/fd`. A path that cannot
//! be opened is an error naming the flag, except the resolver file.
//!
//! In the child ([`PrivateRun::apply`]): the tmpfs mounts, placeholders for
//! the kept paths (shallow first, so a kept directory never hides a deeper
//! kept file), then the binds: read-only ones without their submounts and
//! remounted read-only, read-write ones with their submounts.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One file or directory of the host's `/run` bound into the private one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    pub path: PathBuf,
    /// Read-write (`--rw`, the working directory); otherwise read-only.
    pub writable: bool,
    is_dir: bool,
    /// Device and inode when the supervisor opened it.
    id: (u64, u64),
}

impl Keep {
    /// Open `path` (canonical, so without links) as an `O_PATH` handle,
    /// close-on-exec; with the device, inode and kind of what it names.
    fn open_path(path: &Path) -> Result<(OwnedFd, bool, (u64, u64)), Errno> {
        use nix::fcntl::{open, OFlag};
        let fd = open(
            path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        Ok((fd, is_dir, (st.st_dev, st.st_ino)))
    }

    /// What `path` is now, to be kept (see [`Keep::open_path`]).
    fn open(path: PathBuf, writable: bool) -> Result<Self, Errno> {
        let (_, is_dir, id) = Self::open_path(&path)?;
        Ok(Self {
            path,
            writable,
            is_dir,
            id,
        })
    }
}

/// What the child does to `/run` (see the module documentation).
#[derive(Debug, Default)]
pub struct PrivateRun {
    /// The directories covered by a tmpfs.
    pub dirs: Vec<PathBuf>,
    /// Bound back, shallowest first.
    pub keep: Vec<Keep>,
    /// The working directory to change into again after the mounts.
    pub chdir: Option<PathBuf>,
}

/// What the plan is built from.
pub struct Inputs<'a> {
    pub ca_bundle: Option<&'a Path>,
    /// The agent uses the host's network (no network namespace).
    pub host_network: bool,
    pub ro: &'a [PathBuf],
    pub rw: &'a [PathBuf],
    pub cwd: Option<PathBuf>,
}

/// The directories to hide: `/run`, and `/var/run` when it is a directory
/// of its own (usually it is a link to `/run`).
fn hidden_dirs() -> Vec<PathBuf> {
    ["/run", "/var/run"]
        .iter()
        .map(PathBuf::from)
        .filter(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
        .collect()
}

/// Plan the private `/run` of a run; an error names the flag and path at
/// fault.
pub fn plan(inputs: &Inputs<'_>) -> Result<PrivateRun, String> {
    let dirs = hidden_dirs();
    let hidden = |p: &Path| {
        std::fs::canonicalize(p)
            .ok()
            .filter(|c| dirs.iter().any(|d| c.starts_with(d)))
    };
    let mut keep = Vec::new();
    if let Some(bundle) = inputs.ca_bundle.and_then(&hidden) {
        keep.push(
            Keep::open(bundle.clone(), false)
                .map_err(|e| format!("cannot open the CA bundle {}: {e}", bundle.display()))?,
        );
    }
    if inputs.host_network {
        if let Some(resolv) = hidden(Path::new("/etc/resolv.conf")) {
            // Without it the agent only loses name resolution.
            if let Ok(k) = Keep::open(resolv, false) {
                keep.push(k);
            }
        }
    }
    for (flag, paths, writable) in [("--ro", inputs.ro, false), ("--rw", inputs.rw, true)] {
        for p in paths {
            let Some(c) = hidden(p) else { continue };
            if dirs.contains(&c) {
                return Err(format!(
                    "{flag} {}: that is {} itself, where the host's daemons listen (Docker, \
                     systemd, D-Bus); grant the paths under it that the agent needs",
                    p.display(),
                    c.display()
                ));
            }
            keep.push(Keep::open(c.clone(), writable).map_err(|e| {
                format!("{flag} {}: cannot open {}: {e}", p.display(), c.display())
            })?);
        }
    }
    let mut chdir = None;
    if let Some(cwd) = inputs.cwd.as_deref().and_then(&hidden) {
        if dirs.contains(&cwd) {
            return Err(format!(
                "the working directory is {}, which the agent's private /run hides: start the \
                 run from another directory",
                cwd.display()
            ));
        }
        if !keep.iter().any(|k| k.is_dir && cwd.starts_with(&k.path)) {
            keep.push(Keep::open(cwd.clone(), true).map_err(|e| {
                format!("cannot open the working directory {}: {e}", cwd.display())
            })?);
        }
        chdir = Some(cwd);
    }
    keep.sort_by_key(|k| k.path.components().count());
    Ok(PrivateRun { dirs, keep, chdir })
}

impl PrivateRun {
    /// For `enforcement.private_run`. `pid_namespace`: whether the agent
    /// gets its own `/proc` (without one, `/proc/<pid>/root` of a process
    /// of the same user still leads to the host's `/run`).
    pub fn describe(&self, pid_namespace: bool) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        let mut text = if self.keep.is_empty() {
            format!("an empty tmpfs on {}", dirs.join(" and "))
        } else {
            let kept: Vec<String> = self
                .keep
                .iter()
                .map(|k| {
                    format!(
                        "{} ({})",
                        k.path.display(),
                        if k.writable {
                            "read-write"
                        } else {
                            "read-only"
                        }
                    )
                })
                .collect();
            format!(
                "a tmpfs on {} with only {}",
                dirs.join(" and "),
                kept.join(", ")
            )
        };
        text.push_str(
            ": the host's daemon sockets there (Docker's, systemd's, D-Bus) are out of reach",
        );
        if self.keep.iter().any(|k| k.is_dir) {
            text.push_str(", except any inside a kept directory");
        }
        if !pid_namespace {
            text.push_str(
                "; without a PID namespace the host's /proc stays, and /proc/<pid>/root of a \
                 process of the same user leads to the host's /run",
            );
        }
        text
    }

    /// In the child, in its mount namespace (after `/` was made private,
    /// before `/proc` is replaced: the binds come from `/proc/self/fd`).
    /// `run_as`: the `--user` ids, which are then the only ones the user
    /// namespace maps; what the child creates must be owned by them (a
    /// file cannot be created under an unmapped id: EOVERFLOW), so the
    /// filesystem ids are switched to them here. They are not switched
    /// back: the uid drop that follows sets them for good.
    pub fn apply(&self, run_as: Option<(u32, u32)>) -> Result<(), Errno> {
        let none: Option<&str> = None;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        // What is kept, opened before the tmpfs hides it, and checked to be
        // what the supervisor vetted (not replaced in between).
        let sources = self
            .keep
            .iter()
            .map(|k| {
                let (fd, _, id) = Keep::open_path(&k.path)?;
                if id == k.id {
                    Ok(fd)
                } else {
                    Err(Errno::ESTALE)
                }
            })
            .collect::<Result<Vec<OwnedFd>, Errno>>()?;
        let (uid, gid) = run_as.unwrap_or((0, 0));
        let opts = format!("size=1M,mode=755,uid={uid},gid={gid}");
        for dir in &self.dirs {
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                flags,
                Some(opts.as_str()),
            )?;
        }
        if let Some((uid, gid)) = run_as.filter(|_| !self.keep.is_empty()) {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        }
        for k in &self.keep {
            let made = if k.is_dir {
                std::fs::create_dir_all(&k.path)
            } else {
                k.path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::File::create(&k.path).map(drop))
            };
            made.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        }
        for (k, fd) in self.keep.iter().zip(&sources) {
            let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let bind = if k.writable {
                MsFlags::MS_BIND | MsFlags::MS_REC
            } else {
                MsFlags::MS_BIND
            };
            mount(Some(source.as_str()), k.path.as_path(), none, bind, none)?;
            if !k.writable {
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags;
                mount(none, k.path.as_path(), none, ro, none)?;
            }
        }
        if let Some(dir) = &self.chdir {
            nix::unistd::chdir(dir.as_path())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn inputs<'a>(ro: &'a [PathBuf], rw: &'a [PathBuf]) -> Inputs<'a> {
        Inputs {
            ca_bundle: None,
            host_network: false,
            ro,
            rw,
            cwd: None,
        }
    }

    #[test]
    fn granting_run_itself_is_refused() {
        if !Path::new("/run").is_dir() {
            return;
        }
        let ro = [PathBuf::from("/run")];
        let err = plan(&inputs(&ro, &[])).unwrap_err();
        assert!(err.starts_with("--ro /run: that is /run itself"), "{err}");
        let rw = [PathBuf::from("/run/")];
        let err = plan(&inputs(&[], &rw)).unwrap_err();
        assert!(err.starts_with("--rw /run/: that is /run itself"), "{err}");
    }

    #[test]
    fn paths_elsewhere_are_not_kept_and_an_empty_plan_says_so() {
        let ro = [PathBuf::from("/usr")];
        let p = plan(&inputs(&ro, &[])).unwrap();
        assert!(p.keep.is_empty());
        assert!(p.chdir.is_none());
        let text = p.describe(true);
        assert!(text.starts_with("an empty tmpfs on"), "{text}");
        assert!(!text.contains("PID namespace"), "{text}");
        assert!(p.describe(false).contains("without a PID namespace"));
    }

    #[test]
    fn a_missing_path_under_run_is_not_kept() {
        if !Path::new("/run").is_dir() {
            return;
        }
        // A path under /run that does not exist: canonicalize fails, so it
        // is not under /run as far as the plan can tell, and not kept
        // (landlock reports a missing --ro path itself).
        let ro = [PathBuf::from("/run/vallignus-no-such-path-for-a-test")];
        assert!(plan(&inputs(&ro, &[])).unwrap().keep.is_empty());
    }
}
