//! cgroup v2 manager: find the cgroup2 mount, create one cgroup per run,
//! signal and kill everything in it, wait until it is empty, remove it.
//!
//! Invariants:
//! - The mount is taken from `/proc/self/mountinfo`, never assumed: hybrid
//!   hosts mount cgroup2 at `/sys/fs/cgroup/unified`.
//! - A run cgroup is named `run.<supervisor pid>.<supervisor start time>.<session id>`
//!   so that a later vallignus can tell whether its supervisor is still alive
//!   (pid plus start time survives pid reuse) and reap it if not.
//! - Everything here works on a directory path, so tests use a temp dir with
//!   the same file names as a fixture; only `kill`/`freeze` need a real kernel.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

/// Environment variable that names the cgroup directory under which run
/// cgroups are created (for a delegated subtree when not root).
pub const CGROUP_ROOT_ENV: &str = "VALLIGNUS_CGROUP_ROOT";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (checked /proc/self/mountinfo)")]
    NoCgroup2Mount,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error(
        "no cgroup to create run cgroups in: not root, and {CGROUP_ROOT_ENV} does not name a \
         delegated cgroup2 directory (use --best-effort to run without a cgroup)"
    )]
    NoDelegation,
    #[error(
        "cannot enforce the {controllers} limit: the controller is not available in {path} \
         (available: {available:?}); it must be enabled in the parent's cgroup.subtree_control \
         (on a cgroup v1/v2 hybrid host it is bound to cgroup v1 and cannot be used)"
    )]
    ControllerUnavailable {
        controllers: String,
        path: PathBuf,
        available: String,
    },
    #[error("{path} is not a cgroup2 directory writable by this user: {source}")]
    NotWritable { path: PathBuf, source: io::Error },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// Find the mount point of the cgroup2 filesystem in mountinfo text.
/// Prefers the first cgroup2 mount; returns `None` when there is none.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Format: id parent major:minor root mountpoint opts [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mountpoint = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mountpoint)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory under which this vallignus creates run cgroups.
pub fn resolve_base() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CGROUP_ROOT_ENV) {
        let dir = PathBuf::from(dir);
        check_writable(&dir)?;
        return Ok(dir);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(CgroupError::NoDelegation);
    }
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo = fs::read_to_string(mountinfo_path).map_err(|source| CgroupError::Read {
        path: mountinfo_path.into(),
        source,
    })?;
    let mount = find_cgroup2_mount(&mountinfo).ok_or(CgroupError::NoCgroup2Mount)?;
    let base = mount.join("vallignus");
    match fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => return Err(CgroupError::Create { path: base, source }),
    }
    Ok(base)
}

fn check_writable(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    if !procs.exists() {
        return Err(CgroupError::NotWritable {
            path: dir.into(),
            source: io::Error::new(ErrorKind::NotFound, "no cgroup.procs in it"),
        });
    }
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).map_err(|e| CgroupError::NotWritable {
        path: dir.into(),
        source: e.into(),
    })
}

/// Controller limits for one run cgroup (absent = not limited).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `memory.swap.max` in bytes.
    pub memory_swap_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `cpu.max` as (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
    /// `io.max` lines, `MAJ:MIN key=value...`, validated by [`parse_io_max`].
    pub io_max: Vec<String>,
}

impl Limits {
    /// The controllers these limits need, in `cgroup.subtree_control` names.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.memory_max.is_some() || self.memory_swap_max.is_some() {
            c.push("memory");
        }
        if self.pids_max.is_some() {
            c.push("pids");
        }
        if self.cpu_max.is_some() {
            c.push("cpu");
        }
        if !self.io_max.is_empty() {
            c.push("io");
        }
        c
    }

    /// (file, value) pairs to write into the run cgroup.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        if let Some(v) = self.memory_max {
            f.push(("memory.max", v.to_string()));
        }
        if let Some(v) = self.memory_swap_max {
            f.push(("memory.swap.max", v.to_string()));
        }
        if let Some(v) = self.pids_max {
            f.push(("pids.max", v.to_string()));
        }
        if let Some((quota, period)) = self.cpu_max {
            f.push(("cpu.max", format!("{quota} {period}")));
        }
        for line in &self.io_max {
            f.push(("io.max", line.clone()));
        }
        f
    }
}

/// `--cpu-max FRACTION` (CPUs, e.g. 0.5 or 2) as a `cpu.max` quota over a
/// 100 ms period. The kernel's minimum quota is 1 ms.
pub fn cpu_max_from_fraction(cpus: f64) -> std::result::Result<(u64, u64), String> {
    const PERIOD: u64 = 100_000;
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(format!("invalid CPU limit {cpus}: must be greater than 0"));
    }
    let quota = (cpus * PERIOD as f64).round();
    if quota < 1000.0 {
        return Err(format!("invalid CPU limit {cpus}: at least 0.01 CPU"));
    }
    if quota > 1e12 {
        return Err(format!("invalid CPU limit {cpus}: too large"));
    }
    Ok((quota as u64, PERIOD))
}

/// Validate one `--io-max` rule: `MAJ:MIN` followed by one or more of
/// `rbps=N wbps=N riops=N wiops=N` (N a number or `max`), as `io.max` takes them.
pub fn parse_io_max(rule: &str) -> std::result::Result<String, String> {
    let err = |why: &str| {
        format!("invalid --io-max {rule:?}: {why} (expected e.g. \"8:0 rbps=1048576 wiops=100\")")
    };
    let mut parts = rule.split_whitespace();
    let dev = parts.next().ok_or_else(|| err("empty"))?;
    let (maj, min) = dev
        .split_once(':')
        .ok_or_else(|| err("no MAJ:MIN device"))?;
    if maj.parse::<u32>().is_err() || min.parse::<u32>().is_err() {
        return Err(err("device numbers must be MAJ:MIN integers"));
    }
    let mut keys = Vec::new();
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| err("settings are key=value"))?;
        if !matches!(k, "rbps" | "wbps" | "riops" | "wiops") {
            return Err(err(&format!("unknown key {k:?}")));
        }
        if v != "max" && v.parse::<u64>().map_or(true, |n| n == 0) {
            return Err(err(&format!("{k} must be a positive number or max")));
        }
        keys.push(format!("{k}={v}"));
    }
    if keys.is_empty() {
        return Err(err("no limits given"));
    }
    Ok(format!("{dev} {}", keys.join(" ")))
}

/// Make `controllers` available to the children of `base` (the vallignus
/// cgroup), by writing them to its `cgroup.subtree_control`. A controller
/// the parent does not offer is an error that names it and the path.
pub fn enable_controllers(base: &Path, controllers: &[&str]) -> Result<()> {
    check_controllers(base, controllers)?;
    if controllers.is_empty() {
        return Ok(());
    }
    let control = base.join("cgroup.subtree_control");
    let value = controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    fs::write(&control, &value).map_err(|source| CgroupError::Write {
        path: control,
        value,
        source,
    })
}

/// Whether `base` can offer `controllers` to its children (the check of
/// [`enable_controllers`], without writing anything).
pub fn check_controllers(base: &Path, controllers: &[&str]) -> Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let available_path = base.join("cgroup.controllers");
    let available = fs::read_to_string(&available_path).map_err(|source| CgroupError::Read {
        path: available_path.clone(),
        source,
    })?;
    let available: Vec<&str> = available.split_whitespace().collect();
    let missing: Vec<&str> = controllers
        .iter()
        .copied()
        .filter(|c| !available.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(CgroupError::ControllerUnavailable {
            controllers: missing.join(", "),
            path: base.to_path_buf(),
            available: available.join(" "),
        });
    }
    Ok(())
}

/// Name of a run cgroup; see the module invariants.
pub fn run_cgroup_name(supervisor_pid: i32, supervisor_start: u64, session_id: &str) -> String {
    format!("run.{supervisor_pid}.{supervisor_start}.{session_id}")
}

/// Parse a run cgroup name back into (pid, start time, session id).
pub fn parse_run_cgroup_name(name: &str) -> Option<(i32, u64, &str)> {
    let rest = name.strip_prefix("run.")?;
    let mut parts = rest.splitn(3, '.');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    Some((pid, start, id))
}

/// One cgroup, identified by its directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: OwnedFd,
}

impl Cgroup {
    /// Create a new cgroup directory (fails if it exists).
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Self::open(path)
    }

    /// Open an existing cgroup directory.
    pub fn open(path: PathBuf) -> Result<Self> {
        let dir = open(
            &path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CgroupError::Read {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Self { path, dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory fd, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.path.join(file);
        fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(|source| CgroupError::Write {
            path,
            value: value.into(),
            source,
        })
    }

    /// Pids of every process in the cgroup (not in its descendants).
    pub fn procs(&self) -> Result<Vec<i32>> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Whether any process is left in the cgroup or below (`populated` in
    /// `cgroup.events`).
    pub fn populated(&self) -> Result<bool> {
        Ok(read_key(&self.read("cgroup.events")?, "populated") == Some(1))
    }

    /// Freeze (`true`) or thaw the cgroup. Frozen processes cannot fork or
    /// exit, so a signal sweep over `cgroup.procs` cannot miss a new child or
    /// hit a recycled pid.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// Wait until `cgroup.events` says `frozen 1` (bounded).
    pub fn wait_frozen(&self, timeout: Duration) -> Result<bool> {
        self.wait_events(timeout, |events| read_key(events, "frozen") == Some(1))
    }

    /// SIGKILL every process in the cgroup and its descendants (`cgroup.kill`).
    pub fn kill(&self) -> Result<()> {
        self.write("cgroup.kill", "1")
    }

    /// Send `signal` to every process in the cgroup: freeze, read the pids,
    /// signal, thaw. Returns how many processes were signalled. Without
    /// `cgroup.freeze` (old kernels) it signals without freezing.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<usize> {
        let froze = self.set_frozen(true).is_ok();
        if froze {
            // Best effort: if the freeze does not settle in time, the sweep
            // below still signals what is there.
            let _ = self.wait_frozen(Duration::from_millis(200));
        }
        let pids = self.procs();
        let mut sent = 0;
        if let Ok(pids) = &pids {
            for &pid in pids {
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok() {
                    sent += 1;
                }
            }
        }
        if froze {
            self.set_frozen(false)?;
        }
        pids.map(|_| sent)
    }

    /// Wait until the cgroup is empty or `timeout` passes. Returns whether it
    /// is empty. Uses poll(2) on `cgroup.events`, which the kernel signals
    /// with POLLPRI on every change.
    pub fn wait_empty(&self, timeout: Duration) -> Result<bool> {
        self.wait_events(timeout, |events| read_key(events, "populated") == Some(0))
    }

    fn wait_events(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let events_path = self.path.join("cgroup.events");
        let file = fs::File::open(&events_path).map_err(|source| CgroupError::Read {
            path: events_path.clone(),
            source,
        })?;
        let mut buf = [0u8; 512];
        loop {
            // Reading through the polled file is what re-arms POLLPRI on kernfs.
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0).map_err(|source| {
                CgroupError::Read {
                    path: events_path.clone(),
                    source,
                }
            })?;
            if done(&String::from_utf8_lossy(&buf[..n])) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Cap each wait so that a missed notification costs at most 10 ms.
            let wait = (deadline - now).min(Duration::from_millis(10));
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
            let ms = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(CgroupError::Read {
                        path: events_path,
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// Remove the (empty) cgroup directory. Retries briefly on EBUSY, which
    /// the kernel returns while the last exiting task is still being released.
    pub fn remove(self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Write the controller limits (after [`enable_controllers`] on the parent).
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        for (file, value) in limits.files() {
            self.write(file, &value)?;
        }
        Ok(())
    }

    /// Write every limit, going on past failures (`--best-effort`): the
    /// files that could not be written, with why.
    pub fn apply_each(&self, limits: &Limits) -> Vec<(&'static str, String, CgroupError)> {
        limits
            .files()
            .into_iter()
            .filter_map(|(file, value)| self.write(file, &value).err().map(|e| (file, value, e)))
            .collect()
    }

    /// A counter of a flat-keyed file such as `memory.events` (`oom_kill`)
    /// or `pids.events` (`max`); `None` without the controller.
    pub fn counter(&self, file: &str, key: &str) -> Option<u64> {
        self.read(file).ok().and_then(|s| read_key(&s, key))
    }

    /// Final statistics, where the controllers provide them.
    pub fn stats(&self) -> CgroupStats {
        let mut stats = CgroupStats::default();
        if let Ok(s) = self.read("memory.peak") {
            stats.memory_peak_bytes = s.trim().parse().ok();
        }
        if let Ok(s) = self.read("cpu.stat") {
            stats.cpu_usage_usec = read_key(&s, "usage_usec");
            stats.cpu_user_usec = read_key(&s, "user_usec");
            stats.cpu_system_usec = read_key(&s, "system_usec");
            stats.cpu_throttled_usec = read_key(&s, "throttled_usec");
        }
        if let Ok(s) = self.read("memory.events") {
            stats.oom_kills = read_key(&s, "oom_kill");
        }
        if let Ok(s) = self.read("pids.peak") {
            stats.pids_peak = s.trim().parse().ok();
        }
        stats
    }
}

/// Statistics read at teardown; `None` where the controller is not enabled.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage_usec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_user_usec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_system_usec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_usec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_peak: Option<u64>,
}

/// Value of `key` in a flat-keyed cgroup file (`key value` lines).
pub fn read_key(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_hybrid_mount() {
        assert_eq!(
            find_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount_with_optional_fields() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_mount() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(find_cgroup2_mount(mi), None);
    }

    #[test]
    fn unescapes_spaces() {
        let mi = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(mi), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn run_name_round_trip() {
        let name = run_cgroup_name(42, 123456, "20261126-071900-abc123");
        assert_eq!(
            parse_run_cgroup_name(&name),
            Some((42, 123456, "20261126-071900-abc123"))
        );
        assert_eq!(parse_run_cgroup_name("vallignus"), None);
        assert_eq!(parse_run_cgroup_name("run.x.1.id"), None);
    }

    #[test]
    fn limits_files_and_controllers() {
        let l = Limits {
            memory_max: Some(32 << 20),
            pids_max: Some(50),
            cpu_max: Some(cpu_max_from_fraction(0.2).unwrap()),
            io_max: vec![parse_io_max("8:0 rbps=1048576 wiops=max").unwrap()],
            ..Limits::default()
        };
        assert_eq!(l.controllers(), ["memory", "pids", "cpu", "io"]);
        assert_eq!(
            l.files(),
            [
                ("memory.max", "33554432".to_string()),
                ("pids.max", "50".to_string()),
                ("cpu.max", "20000 100000".to_string()),
                ("io.max", "8:0 rbps=1048576 wiops=max".to_string()),
            ]
        );
        assert!(Limits::default().controllers().is_empty());
    }

    #[test]
    fn cpu_and_io_validation() {
        assert_eq!(cpu_max_from_fraction(2.0), Ok((200_000, 100_000)));
        assert!(cpu_max_from_fraction(0.0).is_err());
        assert!(cpu_max_from_fraction(0.001).is_err());
        assert!(cpu_max_from_fraction(f64::NAN).is_err());
        for bad in [
            "",
            "8:0",
            "sda rbps=1",
            "8:0 rbps=0",
            "8:0 foo=1",
            "8:0 rbps",
            "x:0 rbps=1",
        ] {
            assert!(parse_io_max(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn enabling_a_missing_controller_names_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        let err = enable_controllers(dir.path(), &["memory", "cpu"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory"), "{err}");
        assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
        enable_controllers(dir.path(), &["cpu", "io"]).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +io"
        );
    }

    #[test]
    fn reads_keys() {
        let events = "populated 1\nfrozen 0\n";
        assert_eq!(read_key(events, "populated"), Some(1));
        assert_eq!(read_key(events, "frozen"), Some(0));
        assert_eq!(read_key(events, "missing"), None);
    }

    fn fixture() -> (tempfile::TempDir, Cgroup) {
        let dir = tempfile::tempdir().unwrap();
        let cg_path = dir.path().join("run.1.2.id");
        let cg = Cgroup::create(cg_path.clone()).unwrap();
        fs::write(cg_path.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        fs::write(cg_path.join("cgroup.procs"), "").unwrap();
        (dir, cg)
    }

    #[test]
    fn fixture_empty_and_stats() {
        let (_dir, cg) = fixture();
        assert!(!cg.populated().unwrap());
        assert!(cg.wait_empty(Duration::from_millis(50)).unwrap());
        fs::write(cg.path().join("memory.peak"), "1048576\n").unwrap();
        fs::write(
            cg.path().join("cpu.stat"),
            "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
        )
        .unwrap();
        fs::write(
            cg.path().join("memory.events"),
            "low 0\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let stats = cg.stats();
        assert_eq!(stats.memory_peak_bytes, Some(1048576));
        assert_eq!(stats.cpu_usage_usec, Some(10));
        assert_eq!(stats.oom_kills, Some(1));
        assert_eq!(stats.pids_peak, None);
    }

    #[test]
    fn fixture_populated_times_out() {
        let (_dir, cg) = fixture();
        fs::write(cg.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(cg.path().join("cgroup.procs"), "12\n13\n").unwrap();
        assert!(cg.populated().unwrap());
        assert_eq!(cg.procs().unwrap(), vec![12, 13]);
        let t = Instant::now();
        assert!(!cg.wait_empty(Duration::from_millis(30)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
