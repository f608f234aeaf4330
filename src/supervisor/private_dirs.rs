//! The agent's private directories (with a mount namespace): a tmpfs
//! over `/tmp` and `/dev/shm` (`--tmp-size` each) and an empty one over
//! `/run` (and over `/var/run` when that is a directory of its own rather
//! than the usual link to `/run`), with only what the run needs bound back
//! at its path.
//!
//! Why `/run`: it is where the host's daemons listen on Unix sockets
//! (Docker's, containerd's, systemd's, D-Bus). A socket is reached by its
//! path, not through the network namespace, and below landlock ABI 9
//! neither landlock nor dropped capabilities stop a `connect()` that the
//! socket's owner and mode allow: an agent that is root in its user
//! namespace passes the check of a root-owned socket as the host's root.
//! `/tmp` holds such sockets too (ssh-agent's, X11's), and other users'
//! files.
//!
//! What is kept ([`plan`], in the supervisor, before the fork):
//! - the run's CA bundle (TLS interception, under `/run`), read-only;
//! - with the host's network, the file `/etc/resolv.conf` points to when
//!   that is under `/run`, read-only (if it can be opened);
//! - what `--ro` and `--rw` grant under a private directory, as granted. A
//!   grant of `/run` itself is refused (it would give back every daemon
//!   socket); one of `/tmp` or `/dev/shm` itself is the agent's own tmpfs
//!   already. A kept directory keeps the sockets inside it;
//! - the working directory when it is under one of them (read-write, as
//!   landlock grants it); the child changes into it again after the
//!   mounts, so `..` walks the private directory and not the host's.
//!
//! Each kept path is resolved and opened (`O_PATH`) in the supervisor,
//! which notes its device and inode. The child opens it again (a bind
//! source must be a mount of the caller's own mount namespace, and the
//! supervisor's handle points into the host's), refuses it unless device
//! and inode are the ones the supervisor saw (a path swapped in between
//! fails the run), and binds it from `/proc/self/fd`. A path that cannot
//! be opened is an error naming the flag, except the resolver file.
//!
//! In the child ([`PrivateDirs::apply`]): the handles, the tmpfs mounts,
//! the links, placeholders for the kept paths (shallow first, so a kept
//! directory never hides a deeper kept file), then the binds, each with
//! its submounts (a directory with locked mounts cannot be bound alone);
//! read-only ones are then made read-only down the whole tree.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use super::child::io_errno;

/// One file or directory of the host's bound into a private directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    pub path: PathBuf,
    /// Why it is kept, for messages: `--ro`, `--rw`, `the CA bundle`, ….
    pub origin: &'static str,
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
    fn open(path: PathBuf, origin: &'static str, writable: bool) -> Result<Self, Errno> {
        let (_, is_dir, id) = Self::open_path(&path)?;
        Ok(Self {
            path,
            origin,
            writable,
            is_dir,
            id,
        })
    }
}

/// A tmpfs the child mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub path: PathBuf,
    /// Mount options (`size=…,mode=…`, and the owner for `/run`).
    pub options: String,
    /// The agent's scratch space (`/tmp`, `/dev/shm`: executables allowed,
    /// a grant of it is a no-op); otherwise a `/run` (no executables, a
    /// grant of it is refused).
    pub scratch: bool,
}

/// The deepest of `tmpfs` that `p` is in.
fn tmpfs_of<'t>(tmpfs: &'t [Tmpfs], p: &Path) -> Option<&'t Tmpfs> {
    tmpfs
        .iter()
        .filter(|t| p.starts_with(&t.path))
        .max_by_key(|t| t.path.components().count())
}

/// What the child does (see the module documentation).
#[derive(Debug, Default)]
pub struct PrivateDirs {
    /// The directories covered by a tmpfs, in mount order.
    pub tmpfs: Vec<Tmpfs>,
    /// Symbolic links directly in the host's `/run` that lead outside the
    /// private directories (NixOS's `/run/current-system`), made again in
    /// the private one: (link, target as written).
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Bound back, shallowest first.
    pub keep: Vec<Keep>,
    /// The working directory to change into again after the mounts.
    pub chdir: Option<PathBuf>,
    /// See [`Inputs::run_as`]: what the child creates is owned by them.
    pub run_as: Option<(u32, u32)>,
}

/// What the plan is built from.
pub struct Inputs<'a> {
    /// Size of the private `/tmp` and `/dev/shm`, bytes.
    pub tmp_size: u64,
    /// The `--user` ids (uid, gid), which are then the only ones the user
    /// namespace maps: the owner of the private `/run`.
    pub run_as: Option<(u32, u32)>,
    pub ca_bundle: Option<&'a Path>,
    /// The agent uses the host's network (no network namespace).
    pub host_network: bool,
    pub ro: &'a [PathBuf],
    pub rw: &'a [PathBuf],
    pub cwd: Option<PathBuf>,
}

/// The private directories of a run, in mount order: `/run`, and
/// `/var/run` when it is a directory of its own; then `/tmp` and
/// `/dev/shm` where they lead (either may be a link, e.g. `/dev/shm` to
/// `/run/shm`, which is then made in the private `/run` first).
fn private_tmpfs(tmp_size: u64, run_owner: (u32, u32)) -> Vec<Tmpfs> {
    let tmp = format!("size={tmp_size},mode=1777");
    let run = format!("size=1M,mode=755,uid={},gid={}", run_owner.0, run_owner.1);
    let mut out: Vec<Tmpfs> = ["/run", "/var/run"]
        .into_iter()
        .filter(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
        .map(|d| Tmpfs {
            path: PathBuf::from(d),
            options: run.clone(),
            scratch: false,
        })
        .collect();
    for d in ["/tmp", "/dev/shm"] {
        if let Ok(real) = std::fs::canonicalize(d) {
            if real.is_dir() && !out.iter().any(|t| t.path == real) {
                out.push(Tmpfs {
                    path: real,
                    options: tmp.clone(),
                    scratch: true,
                });
            }
        }
    }
    out
}

/// Links directly in `/run` whose target lies outside every private
/// directory: harmless to make again (what they lead to is reachable by
/// its own path anyway), and some systems need them (NixOS's PATH).
fn run_links(dirs: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/run") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| {
            let link = e.path();
            let target = std::fs::read_link(&link).ok()?;
            let real = std::fs::canonicalize(&link).ok()?;
            (!dirs.iter().any(|d| real.starts_with(d))).then_some((link, target))
        })
        .collect()
}

/// Plan the private directories of a run; an error names the flag and
/// path at fault.
pub fn plan(inputs: &Inputs<'_>) -> Result<PrivateDirs, String> {
    let tmpfs = private_tmpfs(inputs.tmp_size, inputs.run_as.unwrap_or((0, 0)));
    let dirs: Vec<PathBuf> = tmpfs.iter().map(|t| t.path.clone()).collect();
    let hidden = |p: &Path| {
        std::fs::canonicalize(p)
            .ok()
            .filter(|c| dirs.iter().any(|d| c.starts_with(d)))
    };
    let mut keep = Vec::new();
    if let Some(bundle) = inputs.ca_bundle.and_then(&hidden) {
        keep.push(
            Keep::open(bundle.clone(), "the CA bundle", false)
                .map_err(|e| format!("cannot open the CA bundle {}: {e}", bundle.display()))?,
        );
    }
    if inputs.host_network {
        if let Some(resolv) = hidden(Path::new("/etc/resolv.conf")) {
            // Without it the agent only loses name resolution.
            if let Ok(k) = Keep::open(resolv, "/etc/resolv.conf", false) {
                keep.push(k);
            }
        }
    }
    for (flag, paths, writable) in [("--ro", inputs.ro, false), ("--rw", inputs.rw, true)] {
        for p in paths {
            let Some(c) = hidden(p) else { continue };
            if dirs.contains(&c) {
                if tmpfs_of(&tmpfs, &c).is_some_and(|t| t.scratch) {
                    // The agent's own /tmp: read-write, whatever the flag.
                    continue;
                }
                return Err(format!(
                    "{flag} {}: that is {} itself, which the agent gets as its own empty tmpfs \
                     (the host's holds its daemons' sockets: Docker, systemd, D-Bus); grant the \
                     paths under it that the agent needs",
                    p.display(),
                    c.display()
                ));
            }
            keep.push(Keep::open(c.clone(), flag, writable).map_err(|e| {
                format!("{flag} {}: cannot open {}: {e}", p.display(), c.display())
            })?);
        }
    }
    let mut chdir = None;
    if let Some(cwd) = inputs.cwd.as_deref().and_then(&hidden) {
        // A private directory itself: the agent starts in its own (empty)
        // one. Below one: kept, read-write as landlock grants it.
        let covered =
            dirs.contains(&cwd) || keep.iter().any(|k| k.is_dir && cwd.starts_with(&k.path));
        if !covered {
            keep.push(
                Keep::open(cwd.clone(), "the working directory", true).map_err(|e| {
                    format!("cannot open the working directory {}: {e}", cwd.display())
                })?,
            );
        }
        chdir = Some(cwd);
    }
    keep.sort_by_key(|k| k.path.components().count());
    let links = run_links(&dirs);
    Ok(PrivateDirs {
        tmpfs,
        links,
        keep,
        chdir,
        run_as: inputs.run_as,
    })
}

/// `/tmp` and `/dev/shm` may hold executables (build tools run them);
/// `/run` may not.
fn flags_of(t: &Tmpfs) -> MsFlags {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if t.scratch {
        base
    } else {
        base | MsFlags::MS_NOEXEC
    }
}

impl PrivateDirs {
    /// For `enforcement.private_tmp` (`/tmp`, `/dev/shm`) or
    /// `enforcement.private_run` (`/run`, `/var/run`): the tmpfs of that
    /// kind, what is kept in them, and what stays reachable. `None` when
    /// there is none of that kind. `pid_namespace`: whether the agent gets
    /// its own `/proc` (without one, `/proc/<pid>/root` of a process of the
    /// same user still leads to the host's directories).
    pub fn describe(&self, run: bool, pid_namespace: bool) -> Option<String> {
        let tmpfs: Vec<&Tmpfs> = self.tmpfs.iter().filter(|t| t.scratch != run).collect();
        if tmpfs.is_empty() {
            return None;
        }
        let keep: Vec<&Keep> = self
            .keep
            .iter()
            .filter(|k| tmpfs_of(&self.tmpfs, &k.path).is_some_and(|t| t.scratch != run))
            .collect();
        let dirs: Vec<String> = tmpfs
            .iter()
            .map(|t| format!("{} ({})", t.path.display(), t.options))
            .collect();
        let mut text = format!("tmpfs on {}", dirs.join(", "));
        if keep.is_empty() {
            text.push_str(", empty");
        } else {
            let kept: Vec<String> = keep
                .iter()
                .map(|k| {
                    let mode = if k.writable {
                        "read-write"
                    } else {
                        "read-only"
                    };
                    format!("{} ({mode})", k.path.display())
                })
                .collect();
            text.push_str(&format!(", with only {} of the host's", kept.join(", ")));
        }
        text.push_str(if run {
            ": the host's daemon sockets there (Docker's, systemd's, D-Bus), reached by path, \
             are out of reach"
        } else {
            ": the host's files and sockets there (ssh-agent's), reached by path, are out of reach"
        });
        if keep.iter().any(|k| k.is_dir) {
            text.push_str(", except any inside a kept directory");
        }
        if !pid_namespace {
            text.push_str(
                "; without a PID namespace the host's /proc stays, and /proc/<pid>/root of a \
                 process of the same user leads to the host's",
            );
        }
        Some(text)
    }

    /// In the child, in its mount namespace (after `/` was made private,
    /// before `/proc` is replaced: the binds come from `/proc/self/fd`).
    /// With `--user`, its ids are the only ones the user namespace maps;
    /// what the child creates must be owned by them (a file cannot be
    /// created under an unmapped id: EOVERFLOW), so the filesystem ids are
    /// switched to them here. They are not switched back: the uid drop
    /// that follows sets them for good.
    /// An error carries which kept path failed (1-based, 0: none in
    /// particular; see `ChildError::detail`).
    pub fn apply(&self) -> Result<(), (u16, Errno)> {
        let none: Option<&str> = None;
        let at = |i: usize| move |e: Errno| (u16::try_from(i + 1).unwrap_or(u16::MAX), e);
        let whole = |e: Errno| (0u16, e);
        // What is kept, opened before the tmpfs hides it, and checked to be
        // what the supervisor vetted (not replaced in between).
        let mut sources = Vec::with_capacity(self.keep.len());
        for (i, k) in self.keep.iter().enumerate() {
            let (fd, _, id) = Keep::open_path(&k.path).map_err(at(i))?;
            if id != k.id {
                return Err(at(i)(Errno::ESTALE));
            }
            sources.push(fd);
        }
        for t in &self.tmpfs {
            // A link's target (/dev/shm -> /run/shm) may be inside a
            // private directory mounted just before.
            std::fs::create_dir_all(&t.path).map_err(|e| whole(io_errno(&e)))?;
            mount(
                Some("tmpfs"),
                t.path.as_path(),
                Some("tmpfs"),
                flags_of(t),
                Some(t.options.as_str()),
            )
            .map_err(whole)?;
        }
        let creates = !self.keep.is_empty() || !self.links.is_empty();
        if let Some((uid, gid)) = self.run_as.filter(|_| creates) {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        }
        for (link, target) in &self.links {
            // Best effort: a link the agent does not need is no loss.
            let _ = std::os::unix::fs::symlink(target, link);
        }
        for (i, k) in self.keep.iter().enumerate() {
            let made = if k.is_dir {
                std::fs::create_dir_all(&k.path)
            } else {
                k.path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::File::create(&k.path).map(drop))
            };
            made.map_err(|e| at(i)(io_errno(&e)))?;
        }
        for (i, (k, fd)) in self.keep.iter().zip(&sources).enumerate() {
            let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
            // With the mounts below it: a directory with locked submounts
            // (any host mount, in a user namespace) cannot be bound alone.
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(source.as_str()), k.path.as_path(), none, bind, none).map_err(at(i))?;
            if !k.writable {
                // Read-only down the whole tree; executables stay
                // executable (landlock grants --ro as read+execute).
                crate::sys::make_tree_read_only(&k.path).map_err(|e| at(i)(io_errno(&e)))?;
            }
        }
        if let Some(dir) = &self.chdir {
            nix::unistd::chdir(dir.as_path()).map_err(whole)?;
        }
        Ok(())
    }

    /// The message for a failed [`PrivateDirs::apply`] that names a kept
    /// path (`ChildError::detail`, 1-based), with why it is kept; `None`
    /// when the error names none.
    pub fn failure(&self, detail: u16, errno: Errno) -> Option<String> {
        let k = self.keep.get(usize::from(detail).checked_sub(1)?)?;
        Some(format!(
            "cannot keep {} ({}) in the agent's private directories: {}",
            k.path.display(),
            k.origin,
            errno.desc()
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn inputs<'a>(ro: &'a [PathBuf], rw: &'a [PathBuf]) -> Inputs<'a> {
        Inputs {
            tmp_size: 1 << 20,
            run_as: None,
            ca_bundle: None,
            host_network: false,
            ro,
            rw,
            cwd: None,
        }
    }

    #[test]
    fn granting_run_itself_is_refused_and_tmp_itself_is_a_no_op() {
        if !Path::new("/run").is_dir() {
            return;
        }
        let ro = [PathBuf::from("/run")];
        let err = plan(&inputs(&ro, &[])).unwrap_err();
        assert!(err.starts_with("--ro /run: that is /run itself"), "{err}");
        let rw = [PathBuf::from("/run/")];
        let err = plan(&inputs(&[], &rw)).unwrap_err();
        assert!(err.starts_with("--rw /run/: that is /run itself"), "{err}");
        // /tmp itself is the agent's own scratch space: nothing to keep.
        let rw = [PathBuf::from("/tmp")];
        assert!(plan(&inputs(&[], &rw)).unwrap().keep.is_empty());
    }

    #[test]
    fn the_private_tmpfs_are_sized_and_owned() {
        let mut i = inputs(&[], &[]);
        i.run_as = Some((65534, 65533));
        let p = plan(&i).unwrap();
        let tmp = p
            .tmpfs
            .iter()
            .find(|t| t.path == Path::new("/tmp"))
            .unwrap();
        assert_eq!(tmp.options, "size=1048576,mode=1777");
        assert_eq!(flags_of(tmp) & MsFlags::MS_NOEXEC, MsFlags::empty());
        if let Some(run) = p.tmpfs.iter().find(|t| t.path == Path::new("/run")) {
            assert_eq!(run.options, "size=1M,mode=755,uid=65534,gid=65533");
            assert!(flags_of(run).contains(MsFlags::MS_NOEXEC));
        }
    }

    #[test]
    fn paths_elsewhere_are_not_kept_and_an_empty_plan_says_so() {
        let ro = [PathBuf::from("/usr")];
        let p = plan(&inputs(&ro, &[])).unwrap();
        assert!(p.keep.is_empty());
        assert!(p.chdir.is_none());
        let text = p.describe(false, true).unwrap();
        assert!(
            text.starts_with("tmpfs on /tmp (size=1048576,mode=1777)"),
            "{text}"
        );
        assert!(text.contains(", empty: "), "{text}");
        assert!(!text.contains("PID namespace"), "{text}");
        assert!(p
            .describe(false, false)
            .unwrap()
            .contains("without a PID namespace"));
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
