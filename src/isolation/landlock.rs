//! Landlock: the filesystem allow-list of a run.
//!
//! Three steps, split so the child has almost nothing left to do:
//! 1. [`FsPolicy::build`] (pure apart from resolving paths): the default rule set plus
//!    `--ro PATH`, `--rw PATH`, `--hide PATH`, with every conflict decided up front.
//! 2. [`prepare`] (supervisor, before the fork): probes the kernel's landlock ABI, fails
//!    closed when the policy needs a feature the kernel lacks (unless best effort was
//!    asked), creates the ruleset and adds one rule per path (each path is opened
//!    `O_PATH` and closed again once the kernel holds the rule).
//! 3. [`restrict_self`] (child, after the uid drop, before seccomp and `execve`): one
//!    `landlock_restrict_self` on the ready ruleset fd.
//!
//! Invariants:
//! - Landlock is an allow-list: a path is reachable only through a rule that covers it
//!   (the rule's directory or one of its ancestors). "Hidden" therefore means "no rule
//!   covers it", and a built policy never contains a rule that covers a hidden path.
//!   A hidden path strictly inside an allowed tree cannot be expressed; such a policy
//!   is refused with an error naming both paths (we do not expand the parent into its
//!   siblings: new entries would silently fall outside, or inside, the rule).
//! - Precedence: `--hide` wins over everything (a rule at or inside a `--hide` path is
//!   dropped). The vallignus home is never covered by a rule: a working directory or a
//!   flag that covers it is an error, a default rule that covers it is dropped. The
//!   invoking user's home (`$HOME`) is hidden unless the working directory or an explicit
//!   `--ro`/`--rw` covers it; rules inside it (a project directory) stay. `--ro`/`--rw`
//!   add rules; access is the union of every rule covering a path, so an `--ro` inside a
//!   read-write tree is refused rather than silently ignored.
//! - The policy only works on canonical paths (symlinks resolved), so `/bin` and
//!   `/usr/bin` compare equal where `/bin` is a symlink.
//! - Fail closed: without `Requirement::BestEffort`, a kernel without landlock or below
//!   [`REQUIRED_ABI`] is an error in `prepare`, and `restrict_self` errors unless the
//!   kernel reports the ruleset as fully enforced. With best effort, [`LandlockReport`]
//!   lists every feature that was not enforced.
//! - Rules are attached to inodes, and the kernel ignores a rule on a mount point that
//!   has since been covered by another mount (measured in `tests/landlock.rs`): a private
//!   `/tmp` or a new `/proc` mounted in the child is NOT covered by the rule `prepare` made
//!   for the host's `/tmp` or `/proc`. The child must call
//!   [`Prepared::reapply_after_mounts`] with its new mount points after mounting and before
//!   [`restrict_self`]; it adds the same rules again on the new mounts. A mount over a
//!   hidden path stays hidden.
//!
//! Default rule set ([`Defaults::ALL`]):
//! - read + execute: `/usr`, `/bin`, `/sbin`, `/lib`, `/lib32`, `/lib64`, `/libx32`, `/etc`,
//!   `/opt` (those that exist);
//! - read only (no execute): `/proc`, `/sys/fs/cgroup` and `/sys/devices/system/cpu` (so
//!   runtimes can size themselves to the run's cgroup limits and CPUs; the rest of `/sys`
//!   is hidden), `/dev/random`, `/dev/urandom`;
//! - read + write of the existing device (no ioctl, no creation): `/dev/null`, `/dev/zero`,
//!   `/dev/full`. `/dev/tty` is not granted (the child has no controlling terminal after
//!   `setsid`), nor `/dev/pts` (a pty of the user's terminal would allow TIOCSTI), nor
//!   `/dev/shm` (shared with the host until the run mounts a private one);
//! - read + write: the working directory and `/tmp`.
//!
//! Not covered, hence denied: everything else, in particular `/home`, `/root`, `/var`,
//! `/run`, `/srv`, `/mnt`, the vallignus home and `$HOME`. Files inside `/etc` such as
//! `/etc/shadow` are left to the uid drop (landlock cannot deny inside an allowed tree).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

use ::landlock::{
    Access as _, AccessFs, BitFlags, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd,
    PathFdError, RestrictSelf, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    RulesetError, RulesetStatus, Scope, ABI,
};
use serde::Serialize;

use crate::session::store::{home_dir, SessionError};

/// The lowest landlock ABI whose rules mean what the policy says: ABI 3 (Linux 6.2) adds
/// `truncate`, without which a read-only or hidden file can still be truncated to zero.
pub const REQUIRED_ABI: u32 = 3;

/// System directories that are readable and executable by default.
const SYSTEM_READ_EXEC: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];
/// Readable, not executable, by default.
const SYSTEM_READ: &[&str] = &[
    "/proc",
    "/sys/fs/cgroup",
    "/sys/devices/system/cpu",
    "/dev/random",
    "/dev/urandom",
];
/// Devices that can be opened for reading and writing by default.
const DEVICES_READ_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot determine the working directory: {source}")]
    CurrentDir { source: io::Error },
    #[error("cannot resolve the working directory {path}: {source}")]
    WorkingDir { path: PathBuf, source: io::Error },
    #[error("cannot locate the vallignus home: {source}")]
    Home { source: SessionError },
    #[error("{flag} {path}: {source}")]
    FlagPath {
        flag: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "cannot hide {hidden} ({why}): it is inside {allowed} ({origin}); landlock can only \
         allow whole trees, so a hole cannot be carved into one (drop the rule for {allowed}, \
         or hide all of it)"
    )]
    HiddenInsideAllowed {
        hidden: PathBuf,
        why: HideReason,
        allowed: PathBuf,
        origin: Origin,
    },
    #[error(
        "{rule} ({origin}) is inside the vallignus home {home}, which the agent must never \
         reach (run from another directory, or set VALLIGNUS_HOME elsewhere)"
    )]
    RuleInsideVallignusHome {
        rule: PathBuf,
        origin: Origin,
        home: PathBuf,
    },
    #[error(
        "--ro {ro} would have no effect: it is inside {rw} ({origin}), which is read-write, \
         and landlock grants the union of every rule covering a path"
    )]
    ReadOnlyInsideWritable {
        ro: PathBuf,
        rw: PathBuf,
        origin: Origin,
    },
    #[error(
        "landlock is not available ({reason}), so the filesystem policy cannot be enforced \
         (use --best-effort to run without it)"
    )]
    Unavailable { reason: &'static str },
    #[error(
        "the kernel's landlock ABI {have} lacks {feature} (ABI {needs}: {what}), so the \
         filesystem policy cannot be fully enforced (use --best-effort to run without it)"
    )]
    MissingFeature {
        feature: &'static str,
        what: &'static str,
        needs: u32,
        have: u32,
    },
    #[error("cannot open {path} for a landlock rule: {source}")]
    OpenRule { path: PathBuf, source: PathFdError },
    #[error("cannot stat {path} for a landlock rule: {source}")]
    StatRule {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("cannot add the landlock rule for {path}: {source}")]
    AddRule { path: PathBuf, source: RulesetError },
    #[error("cannot create the landlock ruleset: {source}")]
    CreateRuleset { source: RulesetError },
    #[error("landlock_restrict_self failed: {source}")]
    RestrictSelf { source: RulesetError },
    #[error("the kernel reports the landlock ruleset as {status}, not fully enforced")]
    NotFullyEnforced { status: &'static str },
}

/// What a rule allows beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Read files, list directories, execute: system dirs and `--ro`.
    ReadExec,
    /// Read files and list directories, no execute: `/proc`, parts of `/sys`, random devices.
    Read,
    /// Every right landlock controls: `--rw`, the working directory, `/tmp`.
    ReadWrite,
    /// Open an existing file for reading and writing (also with `O_TRUNC`), no ioctl.
    DeviceReadWrite,
}

/// Where a rule comes from; decides how a conflict with a hidden path is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The built-in default set (may be dropped to keep a home hidden).
    Default,
    /// The working directory, read-write.
    WorkingDir,
    /// `--ro PATH`.
    RoFlag,
    /// `--rw PATH`.
    RwFlag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "a default rule",
            Origin::WorkingDir => "the working directory, read-write",
            Origin::RoFlag => "--ro",
            Origin::RwFlag => "--rw",
        })
    }
}

/// Why a path is hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HideReason {
    /// `--hide PATH`.
    Flag,
    /// The vallignus home (sessions, keys, tokens).
    VallignusHome,
    /// The invoking user's `$HOME`.
    UserHome,
    /// A file a `--credential` secret is read from.
    Credential,
}

impl fmt::Display for HideReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HideReason::Flag => "--hide",
            HideReason::VallignusHome => "the vallignus home",
            HideReason::UserHome => "the invoking user's home",
            HideReason::Credential => "a credential's secret file",
        })
    }
}

/// One allow rule: `access` beneath the canonical `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub path: PathBuf,
    pub access: Access,
    pub origin: Origin,
}

/// A path no rule may cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hidden {
    pub path: PathBuf,
    pub reason: HideReason,
}

/// The filesystem flags of `vallignus run`, as given (relative paths are taken from the
/// working directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsFlags {
    pub ro: Vec<PathBuf>,
    pub rw: Vec<PathBuf>,
    pub hide: Vec<PathBuf>,
    /// Files secrets are read from (`--credential NAME=@FILE@HOST`): hidden
    /// like `--hide`, so a run whose rules would grant one fails.
    pub secrets: Vec<PathBuf>,
}

/// Which parts of the default rule set to include.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// System dirs, `/proc`, the `/sys` subset and the harmless devices.
    pub system: bool,
    /// The working directory, read-write.
    pub working_dir: bool,
    /// `/tmp`, read-write.
    pub tmp: bool,
}

impl Defaults {
    /// The documented default set.
    pub const ALL: Self = Self {
        system: true,
        working_dir: true,
        tmp: true,
    };
    /// Only the system part: nothing writable unless a flag says so.
    pub const SYSTEM_ONLY: Self = Self {
        system: true,
        working_dir: false,
        tmp: false,
    };
    /// No default rule at all.
    pub const NONE: Self = Self {
        system: false,
        working_dir: false,
        tmp: false,
    };
}

/// The process facts a policy depends on, separated so tests can supply their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsContext {
    /// The working directory of the run (absolute).
    pub cwd: PathBuf,
    /// `<home>`: `$VALLIGNUS_HOME`, `~/.vallignus` or `/var/lib/vallignus`.
    pub vallignus_home: PathBuf,
    /// The invoking user's `$HOME`, if set.
    pub user_home: Option<PathBuf>,
}

impl FsContext {
    /// From this process: its working directory, [`home_dir`] and `$HOME`.
    pub fn from_env() -> Result<Self, LandlockError> {
        let cwd = std::env::current_dir().map_err(|source| LandlockError::CurrentDir { source })?;
        let vallignus_home = home_dir().map_err(|source| LandlockError::Home { source })?;
        let user_home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            cwd,
            vallignus_home,
            user_home,
        })
    }
}

/// A validated filesystem policy: allow rules that never cover a hidden path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsPolicy {
    rules: Vec<Rule>,
    hidden: Vec<Hidden>,
    notes: Vec<String>,
}

impl FsPolicy {
    /// The documented default set plus the flags: what `vallignus run` uses.
    pub fn from_flags(flags: &FsFlags, ctx: &FsContext) -> Result<Self, LandlockError> {
        Self::build(flags, Defaults::ALL, ctx)
    }

    /// Resolve every path and decide every conflict (see the module docs for precedence).
    pub fn build(
        flags: &FsFlags,
        defaults: Defaults,
        ctx: &FsContext,
    ) -> Result<Self, LandlockError> {
        let cwd = std::fs::canonicalize(&ctx.cwd).map_err(|source| LandlockError::WorkingDir {
            path: ctx.cwd.clone(),
            source,
        })?;
        let mut notes = Vec::new();
        let mut rules = Vec::new();

        if defaults.system {
            let lists: [(&[&str], Access); 3] = [
                (SYSTEM_READ_EXEC, Access::ReadExec),
                (SYSTEM_READ, Access::Read),
                (DEVICES_READ_WRITE, Access::DeviceReadWrite),
            ];
            for (paths, access) in lists {
                for p in paths {
                    push_default(&mut rules, &mut notes, Path::new(p), access);
                }
            }
        }
        if defaults.working_dir {
            rules.push(Rule {
                path: cwd.clone(),
                access: Access::ReadWrite,
                origin: Origin::WorkingDir,
            });
        }
        if defaults.tmp {
            push_default(&mut rules, &mut notes, Path::new("/tmp"), Access::ReadWrite);
        }
        for (list, flag, access, origin) in [
            (&flags.ro, "--ro", Access::ReadExec, Origin::RoFlag),
            (&flags.rw, "--rw", Access::ReadWrite, Origin::RwFlag),
        ] {
            for p in list {
                let path = std::fs::canonicalize(absolute(p, &cwd)).map_err(|source| {
                    LandlockError::FlagPath {
                        flag,
                        path: p.clone(),
                        source,
                    }
                })?;
                rules.push(Rule {
                    path,
                    access,
                    origin,
                });
            }
        }

        let mut hidden: Vec<Hidden> = flags
            .hide
            .iter()
            .map(|p| Hidden {
                path: resolve_lenient(&absolute(p, &cwd)),
                reason: HideReason::Flag,
            })
            .chain(flags.secrets.iter().map(|p| Hidden {
                path: resolve_lenient(&absolute(p, &cwd)),
                reason: HideReason::Credential,
            }))
            .collect();
        hidden.push(Hidden {
            path: resolve_lenient(&absolute(&ctx.vallignus_home, &cwd)),
            reason: HideReason::VallignusHome,
        });
        if let Some(home) = &ctx.user_home {
            let home = resolve_lenient(&absolute(home, &cwd));
            match rules
                .iter()
                .find(|r| r.origin != Origin::Default && covers(&r.path, &home))
            {
                Some(r) => notes.push(format!(
                    "$HOME {} is reachable: {} ({}) covers it",
                    home.display(),
                    r.path.display(),
                    r.origin
                )),
                None => hidden.push(Hidden {
                    path: home,
                    reason: HideReason::UserHome,
                }),
            }
        }

        let rules = resolve_hidden(rules, &hidden, &mut notes)?;
        check_read_only_inside_writable(&rules)?;
        let rules = drop_redundant_defaults(rules);
        Ok(Self {
            rules,
            hidden,
            notes,
        })
    }

    /// The allow rules, in the order they are added to the ruleset.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The paths no rule covers on purpose.
    pub fn hidden(&self) -> &[Hidden] {
        &self.hidden
    }

    /// Decisions taken while building (dropped defaults, a reachable `$HOME`).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The rules that cover `path` (which must be canonical); empty means denied.
    pub fn rules_covering<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| covers(&r.path, path))
    }
}

/// Add a default rule for `path` if it exists (canonicalised).
fn push_default(rules: &mut Vec<Rule>, notes: &mut Vec<String>, path: &Path, access: Access) {
    match std::fs::canonicalize(path) {
        Ok(path) => rules.push(Rule {
            path,
            access,
            origin: Origin::Default,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => notes.push(format!("default rule {} left out: {e}", path.display())),
    }
}

/// Apply the precedence rules between allow rules and hidden paths.
fn resolve_hidden(
    rules: Vec<Rule>,
    hidden: &[Hidden],
    notes: &mut Vec<String>,
) -> Result<Vec<Rule>, LandlockError> {
    let mut kept = Vec::with_capacity(rules.len());
    'rules: for rule in rules {
        for h in hidden {
            if covers(&h.path, &rule.path) {
                // The rule is at or inside the hidden path.
                match (h.reason, rule.origin) {
                    // Rules inside $HOME (a project dir) are the allowed exceptions; a
                    // default rule on $HOME itself would unhide all of it.
                    (HideReason::UserHome, Origin::Default) if rule.path == h.path => {
                        notes.push(format!(
                            "default rule {} dropped: it is {}",
                            rule.path.display(),
                            h.reason
                        ));
                        continue 'rules;
                    }
                    (HideReason::UserHome, _) => {}
                    (HideReason::VallignusHome, Origin::Default)
                    | (HideReason::Flag | HideReason::Credential, _) => {
                        notes.push(format!(
                            "rule {} ({}) dropped: it is inside {} ({})",
                            rule.path.display(),
                            rule.origin,
                            h.path.display(),
                            h.reason
                        ));
                        continue 'rules;
                    }
                    (HideReason::VallignusHome, origin) => {
                        return Err(LandlockError::RuleInsideVallignusHome {
                            rule: rule.path,
                            origin,
                            home: h.path.clone(),
                        })
                    }
                }
            } else if covers(&rule.path, &h.path) {
                // The hidden path is strictly inside the rule.
                match (h.reason, rule.origin) {
                    (HideReason::VallignusHome | HideReason::UserHome, Origin::Default) => {
                        notes.push(format!(
                            "default rule {} dropped: it would cover {} ({})",
                            rule.path.display(),
                            h.path.display(),
                            h.reason
                        ));
                        continue 'rules;
                    }
                    (why, origin) => {
                        return Err(LandlockError::HiddenInsideAllowed {
                            hidden: h.path.clone(),
                            why,
                            allowed: rule.path,
                            origin,
                        })
                    }
                }
            }
        }
        kept.push(rule);
    }
    Ok(kept)
}

/// An `--ro` rule inside a read-write tree would silently grant write access.
fn check_read_only_inside_writable(rules: &[Rule]) -> Result<(), LandlockError> {
    for ro in rules.iter().filter(|r| r.origin == Origin::RoFlag) {
        if let Some(rw) = rules
            .iter()
            .find(|r| r.access == Access::ReadWrite && covers(&r.path, &ro.path))
        {
            return Err(LandlockError::ReadOnlyInsideWritable {
                ro: ro.path.clone(),
                rw: rw.path.clone(),
                origin: rw.origin,
            });
        }
    }
    Ok(())
}

/// Drop default rules that another rule already grants (`/bin` when it is `/usr/bin`,
/// `/usr` under `--rw /usr`), keeping the first of two identical ones.
fn drop_redundant_defaults(rules: Vec<Rule>) -> Vec<Rule> {
    let redundant: Vec<bool> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.origin == Origin::Default
                && rules.iter().enumerate().any(|(j, s)| {
                    j != i
                        && covers(&s.path, &r.path)
                        && includes(s.access, r.access)
                        && (s.path != r.path || s.access != r.access || j < i)
                })
        })
        .collect();
    rules
        .into_iter()
        .zip(redundant)
        .filter_map(|(r, red)| (!red).then_some(r))
        .collect()
}

/// Whether access `a` grants at least everything `b` grants.
fn includes(a: Access, b: Access) -> bool {
    let latest = ABI::V10;
    rights(a, latest) & rights(b, latest) == rights(b, latest)
}

/// Whether a rule on `outer` covers `inner` (same path or beneath it, component-wise).
fn covers(outer: &Path, inner: &Path) -> bool {
    inner.starts_with(outer)
}

fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}

/// Canonicalise an absolute path that may not exist: the longest existing ancestor is
/// canonicalised, the rest is cleaned lexically.
fn resolve_lenient(abs: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(abs) {
        return p;
    }
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    let mut suffix: Vec<OsString> = Vec::new();
    let mut cur = clean.as_path();
    loop {
        if let Ok(mut p) = std::fs::canonicalize(cur) {
            p.extend(suffix.iter().rev());
            return p;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                suffix.push(name.to_os_string());
                cur = parent;
            }
            _ => return clean,
        }
    }
}

/// The landlock rights of `access` under `abi` (directory form; files get the file subset).
fn rights(access: Access, abi: ABI) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(abi);
    let wanted = match access {
        Access::ReadExec => AccessFs::from_read(abi),
        Access::Read => AccessFs::ReadFile | AccessFs::ReadDir,
        Access::ReadWrite => all,
        Access::DeviceReadWrite => AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
    };
    wanted & all
}

/// A landlock feature the policy uses, and what is lost without it.
struct Feature {
    name: &'static str,
    abi: ABI,
    /// Required: without it the policy's rules do not mean what they say.
    required: bool,
    what: &'static str,
}

const FEATURES: &[Feature] = &[
    Feature {
        name: "filesystem",
        abi: ABI::V1,
        required: true,
        what: "any filesystem restriction",
    },
    Feature {
        name: "refer",
        abi: ABI::V2,
        required: false,
        what: "renaming or linking across directories (without it always denied)",
    },
    Feature {
        name: "truncate",
        abi: ABI::V3,
        required: true,
        what: "denying truncate(2) of read-only and hidden files",
    },
    Feature {
        name: "ioctl_dev",
        abi: ABI::V5,
        required: false,
        what: "denying ioctl(2) on device files opened by the agent",
    },
    Feature {
        name: "scope_abstract_unix_socket",
        abi: ABI::V6,
        required: false,
        what: "denying connections to abstract unix sockets outside the sandbox",
    },
    Feature {
        name: "scope_signal",
        abi: ABI::V6,
        required: false,
        what: "denying signals to processes outside the sandbox",
    },
    Feature {
        name: "resolve_unix",
        abi: ABI::V9,
        required: false,
        what: "denying connections to pathname unix sockets outside read-write rules",
    },
];

/// Whether missing landlock features are an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Fail closed: landlock with at least [`REQUIRED_ABI`] (the default).
    Strict,
    /// `--best-effort`: enforce what the kernel can and record what it could not.
    BestEffort,
}

/// Landlock support of the running kernel, for `vallignus doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Support {
    /// Landlock works; `abi` is the version vallignus uses (the kernel's, capped at the
    /// newest the landlock crate knows); `kernel_abi` is set when the kernel is newer.
    Available {
        abi: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        kernel_abi: Option<i32>,
    },
    /// Built into the kernel but not enabled at boot (not in the `lsm=` list).
    NotEnabled,
    /// The kernel has no landlock (before 5.13, or built without it).
    NotImplemented,
}

impl Support {
    /// The usable ABI version, 0 when landlock is unavailable.
    pub fn abi(&self) -> u32 {
        match self {
            Support::Available { abi, .. } => *abi,
            Support::NotEnabled | Support::NotImplemented => 0,
        }
    }

    /// Whether a policy can be enforced without `--best-effort`.
    pub fn meets_requirement(&self) -> bool {
        self.abi() >= REQUIRED_ABI
    }

    /// In words, for `vallignus doctor`.
    pub fn describe(&self) -> String {
        match self {
            Support::Available { abi, kernel_abi } => {
                let mut out = format!("ABI {abi}");
                if let Some(k) = kernel_abi {
                    out.push_str(&format!(" (the kernel has {k})"));
                }
                if *abi < REQUIRED_ABI {
                    out.push_str(&format!(
                        "; vallignus needs {REQUIRED_ABI} (standard/strict runs fail closed \
                         without --best-effort)"
                    ));
                }
                out
            }
            other => other.unavailable_reason().to_string(),
        }
    }

    fn unavailable_reason(&self) -> &'static str {
        match self {
            Support::Available { .. } => "available",
            Support::NotEnabled => "built into the kernel but not enabled at boot (lsm=)",
            Support::NotImplemented => "the kernel has no landlock (Linux 5.13+ needed)",
        }
    }
}

/// Probe the kernel's landlock support (one `landlock_create_ruleset` version query).
pub fn status() -> Support {
    let (support, _) = probe();
    support
}

/// The kernel's status, via the crate's only public probe: a `RestrictSelf` without
/// restriction flags and without `no_new_privs` performs the version query and nothing
/// else (no prctl, no `landlock_restrict_self`).
fn probe() -> (Support, ABI) {
    let landlock = RestrictSelf::default()
        .no_new_privs(false)
        .apply()
        .map(|s| s.landlock)
        .unwrap_or(LandlockStatus::NotImplemented);
    match landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => (
            Support::Available {
                abi: abi_number(effective_abi),
                kernel_abi,
            },
            effective_abi,
        ),
        LandlockStatus::NotEnabled => (Support::NotEnabled, ABI::Unsupported),
        _ => (Support::NotImplemented, ABI::Unsupported),
    }
}

fn abi_number(abi: ABI) -> u32 {
    // `ABI` prints its version number ("unsupported" for none).
    abi.to_string().parse().unwrap_or(0)
}

/// What the landlock layer enforces, for `session.json`'s `enforcement.landlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockReport {
    /// A ruleset is applied (false only with best effort on a kernel without landlock).
    pub enforced: bool,
    /// The ABI the ruleset was built for (0: none).
    pub abi: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_abi: Option<i32>,
    pub best_effort: bool,
    /// Filesystem rights the ruleset handles (denied unless a rule allows them).
    pub handled_access: Vec<&'static str>,
    /// IPC scopes (abstract unix sockets, signals) confined to the sandbox.
    pub scopes: Vec<&'static str>,
    pub rules: Vec<Rule>,
    pub hidden: Vec<Hidden>,
    /// Features this kernel lacks, as `name (ABI n): what is not enforced`.
    pub not_enforced: Vec<String>,
    pub notes: Vec<String>,
}

/// A ruleset ready for [`restrict_self`], built in the supervisor.
#[derive(Debug)]
pub struct Prepared {
    /// `None` with best effort on a kernel without landlock (then `report.enforced` is
    /// false), or after a failed [`Prepared::reapply_after_mounts`] (then `restrict_self`
    /// refuses).
    ruleset: Option<RulesetCreated>,
    abi: ABI,
    best_effort: bool,
    report: LandlockReport,
}

impl Prepared {
    /// What will be enforced once [`restrict_self`] succeeds in the child (a failure there
    /// stops the run before `execve`, so the report never overstates).
    pub fn describe(&self) -> LandlockReport {
        self.report.clone()
    }

    /// In the child, after it mounted new filesystems (a private `/tmp`, `/dev/shm`, the
    /// PID namespace's `/proc`) and before [`restrict_self`]: add every rule on one of
    /// `mountpoints` again, so it applies to the new mount (the kernel ignores a rule on a
    /// mount point hidden by a later mount). Same paths and rights as before,
    /// so [`Prepared::describe`] stays true. A no-op without landlock.
    pub fn reapply_after_mounts(&mut self, mountpoints: &[&Path]) -> Result<(), LandlockError> {
        if !self.report.enforced {
            return Ok(());
        }
        for rule in &self.report.rules {
            // Only a rule on the mount point itself: a rule below it was
            // opened before the mount and still names the directory the
            // agent can reach through an inherited working directory (the
            // same path now resolves into the new filesystem, or nowhere).
            if !mountpoints.contains(&rule.path.as_path()) {
                continue;
            }
            // Taken out so that an error leaves no ruleset: restrict_self then refuses.
            let Some(created) = self.ruleset.take() else {
                return Err(LandlockError::Unavailable {
                    reason: "the ruleset was lost by an earlier error",
                });
            };
            self.ruleset = Some(match rule_for(rule, self.abi)? {
                Some(beneath) => {
                    created
                        .add_rule(beneath)
                        .map_err(|source| LandlockError::AddRule {
                            path: rule.path.clone(),
                            source,
                        })?
                }
                None => created,
            });
        }
        Ok(())
    }
}

/// The kernel rule for `rule` under `abi`: its path opened `O_PATH`, its rights reduced to
/// what a non-directory takes when it is a file. `None` for a default path that no longer
/// exists or rights that are empty under this ABI.
fn rule_for(rule: &Rule, abi: ABI) -> Result<Option<PathBeneath<PathFd>>, LandlockError> {
    let fd = match PathFd::new(&rule.path) {
        Ok(fd) => fd,
        Err(_) if rule.origin == Origin::Default && !rule.path.exists() => return Ok(None),
        Err(source) => {
            return Err(LandlockError::OpenRule {
                path: rule.path.clone(),
                source,
            })
        }
    };
    let stat = nix::sys::stat::fstat(&fd).map_err(|source| LandlockError::StatRule {
        path: rule.path.clone(),
        source,
    })?;
    let mut access = rights(rule.access, abi);
    if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
        access &= AccessFs::from_file(abi);
    }
    Ok((!access.is_empty()).then(|| PathBeneath::new(fd, access)))
}

/// Check the kernel's ABI against the requirement; returns the missing features.
fn check_features(
    support: Support,
    abi: ABI,
    requirement: Requirement,
) -> Result<Vec<String>, LandlockError> {
    if requirement == Requirement::Strict {
        if abi == ABI::Unsupported {
            return Err(LandlockError::Unavailable {
                reason: support.unavailable_reason(),
            });
        }
        if let Some(f) = FEATURES.iter().find(|f| f.required && abi < f.abi) {
            return Err(LandlockError::MissingFeature {
                feature: f.name,
                what: f.what,
                needs: abi_number(f.abi),
                have: abi_number(abi),
            });
        }
    }
    Ok(FEATURES
        .iter()
        .filter(|f| abi < f.abi)
        .map(|f| format!("{} (ABI {}): {}", f.name, abi_number(f.abi), f.what))
        .collect())
}

/// In the supervisor, before the fork: create the ruleset for `policy` on this kernel.
pub fn prepare(policy: &FsPolicy, requirement: Requirement) -> Result<Prepared, LandlockError> {
    let (support, abi) = probe();
    let not_enforced = check_features(support, abi, requirement)?;
    let mut report = LandlockReport {
        enforced: false,
        abi: abi_number(abi),
        kernel_abi: match support {
            Support::Available { kernel_abi, .. } => kernel_abi,
            _ => None,
        },
        best_effort: requirement == Requirement::BestEffort,
        handled_access: Vec::new(),
        scopes: Vec::new(),
        rules: Vec::new(),
        hidden: policy.hidden.clone(),
        not_enforced,
        notes: policy.notes.clone(),
    };
    if abi == ABI::Unsupported {
        // Only reachable with best effort (check_features refused it otherwise).
        report.notes.push(format!(
            "landlock not enforced: {}",
            support.unavailable_reason()
        ));
        return Ok(Prepared {
            ruleset: None,
            abi,
            best_effort: true,
            report,
        });
    }

    // Every right is computed for the detected ABI, so the crate must support all of it:
    // HardRequirement turns any mismatch into an error instead of a silent downgrade.
    let handled = AccessFs::from_all(abi);
    let scopes = Scope::from_all(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(handled)
        .map_err(|source| LandlockError::CreateRuleset { source })?;
    if !scopes.is_empty() {
        ruleset = ruleset
            .scope(scopes)
            .map_err(|source| LandlockError::CreateRuleset { source })?;
    }
    let mut created = ruleset
        .create()
        .map_err(|source| LandlockError::CreateRuleset { source })?;

    for rule in &policy.rules {
        let Some(beneath) = rule_for(rule, abi)? else {
            report.notes.push(format!(
                "rule {} left out: it no longer exists or grants nothing under ABI {}",
                rule.path.display(),
                abi_number(abi)
            ));
            continue;
        };
        created = created
            .add_rule(beneath)
            .map_err(|source| LandlockError::AddRule {
                path: rule.path.clone(),
                source,
            })?;
        report.rules.push(rule.clone());
    }

    report.enforced = true;
    report.handled_access = handled.iter().map(access_name).collect();
    report.scopes = scopes.iter().map(scope_name).collect();
    Ok(Prepared {
        ruleset: Some(created),
        abi,
        best_effort: requirement == Requirement::BestEffort,
        report,
    })
}

/// In the child, after the uid drop and before seccomp and `execve`: restrict the calling
/// thread and its future children (also sets `no_new_privs`, which landlock needs).
pub fn restrict_self(prepared: Prepared) -> Result<(), LandlockError> {
    let Some(ruleset) = prepared.ruleset else {
        return if prepared.best_effort && !prepared.report.enforced {
            Ok(())
        } else {
            Err(LandlockError::Unavailable {
                reason: "no ruleset was prepared",
            })
        };
    };
    let status = ruleset
        .restrict_self()
        .map_err(|source| LandlockError::RestrictSelf { source })?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(()),
        RulesetStatus::PartiallyEnforced => Err(LandlockError::NotFullyEnforced {
            status: "partially enforced",
        }),
        RulesetStatus::NotEnforced => Err(LandlockError::NotFullyEnforced {
            status: "not enforced",
        }),
    }
}

fn access_name(a: AccessFs) -> &'static str {
    match a {
        AccessFs::Execute => "execute",
        AccessFs::WriteFile => "write_file",
        AccessFs::ReadFile => "read_file",
        AccessFs::ReadDir => "read_dir",
        AccessFs::RemoveDir => "remove_dir",
        AccessFs::RemoveFile => "remove_file",
        AccessFs::MakeChar => "make_char",
        AccessFs::MakeDir => "make_dir",
        AccessFs::MakeReg => "make_reg",
        AccessFs::MakeSock => "make_sock",
        AccessFs::MakeFifo => "make_fifo",
        AccessFs::MakeBlock => "make_block",
        AccessFs::MakeSym => "make_sym",
        AccessFs::Refer => "refer",
        AccessFs::Truncate => "truncate",
        AccessFs::IoctlDev => "ioctl_dev",
        AccessFs::ResolveUnix => "resolve_unix",
        _ => "unknown",
    }
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::AbstractUnixSocket => "abstract_unix_socket",
        Scope::Signal => "signal",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn canon(p: impl AsRef<Path>) -> PathBuf {
        std::fs::canonicalize(p).unwrap()
    }

    fn ctx(cwd: &Path) -> FsContext {
        FsContext {
            cwd: cwd.to_path_buf(),
            vallignus_home: PathBuf::from("/nonexistent-vallignus-test/home"),
            user_home: Some(PathBuf::from("/nonexistent-user-home/u")),
        }
    }

    fn access_at(p: &FsPolicy, path: &Path) -> Vec<Access> {
        p.rules_covering(path).map(|r| r.access).collect()
    }

    fn flags(ro: &[&Path], rw: &[&Path], hide: &[&Path]) -> FsFlags {
        let v = |l: &[&Path]| l.iter().map(|p| p.to_path_buf()).collect();
        FsFlags {
            ro: v(ro),
            rw: v(rw),
            hide: v(hide),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn defaults_allow_system_dirs_workdir_tmp_and_deny_the_rest() {
        let cwd = tempfile::tempdir().unwrap();
        let p = FsPolicy::from_flags(&FsFlags::default(), &ctx(cwd.path())).unwrap();
        assert_eq!(
            access_at(&p, Path::new("/usr/bin/true")),
            [Access::ReadExec]
        );
        assert_eq!(access_at(&p, &canon("/etc")), [Access::ReadExec]);
        assert_eq!(
            access_at(&p, Path::new("/proc/self/status")),
            [Access::Read]
        );
        assert_eq!(access_at(&p, Path::new("/sys/fs/cgroup/x")), [Access::Read]);
        assert!(access_at(&p, Path::new("/sys/kernel/notes")).is_empty());
        assert_eq!(
            access_at(&p, Path::new("/dev/null")),
            [Access::DeviceReadWrite]
        );
        assert!(access_at(&p, Path::new("/dev/tty")).is_empty());
        assert!(access_at(&p, Path::new("/dev/pts/0")).is_empty());
        let in_cwd = canon(cwd.path()).join("file");
        assert!(access_at(&p, &in_cwd).contains(&Access::ReadWrite));
        assert!(access_at(&p, &canon("/tmp").join("x")).contains(&Access::ReadWrite));
        for denied in ["/home/someone", "/root/.ssh", "/var/lib", "/run/user"] {
            assert!(access_at(&p, Path::new(denied)).is_empty(), "{denied}");
        }
        let hidden: Vec<_> = p
            .hidden()
            .iter()
            .map(|h| (h.path.clone(), h.reason))
            .collect();
        assert!(hidden.contains(&(
            PathBuf::from("/nonexistent-vallignus-test/home"),
            HideReason::VallignusHome
        )));
        assert!(hidden.contains(&(
            PathBuf::from("/nonexistent-user-home/u"),
            HideReason::UserHome
        )));
        // No default rule is shadowed by another one (e.g. /bin -> /usr/bin under /usr).
        for r in p.rules().iter().filter(|r| r.origin == Origin::Default) {
            let covering = p
                .rules_covering(&r.path)
                .filter(|s| includes(s.access, r.access));
            assert_eq!(covering.count(), 1, "{} is redundant", r.path.display());
        }
    }

    #[test]
    fn hide_inside_an_allowed_tree_is_refused_naming_both_paths() {
        let cwd = tempfile::tempdir().unwrap();
        let f = flags(&[], &[], &[Path::new("/etc/shadow")]);
        let err = FsPolicy::from_flags(&f, &ctx(cwd.path())).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                &err,
                LandlockError::HiddenInsideAllowed {
                    why: HideReason::Flag,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("/etc/shadow") && msg.contains("/etc "),
            "{msg}"
        );

        // Inside an --rw flag, and inside the working directory, too.
        let sub = cwd.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let f = flags(&[], &[cwd.path()], &[&sub]);
        assert!(matches!(
            FsPolicy::build(&f, Defaults::NONE, &ctx(Path::new("/"))),
            Err(LandlockError::HiddenInsideAllowed {
                origin: Origin::RwFlag,
                ..
            })
        ));
        let f = flags(&[], &[], &[&sub]);
        assert!(matches!(
            FsPolicy::from_flags(&f, &ctx(cwd.path())),
            Err(LandlockError::HiddenInsideAllowed {
                origin: Origin::WorkingDir,
                ..
            })
        ));
    }

    #[test]
    fn hide_wins_over_rules_at_or_inside_it() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let f = flags(&[&inner], &[d.path()], &[d.path()]);
        let p = FsPolicy::build(&f, Defaults::SYSTEM_ONLY, &ctx(Path::new("/"))).unwrap();
        assert!(access_at(&p, &canon(&inner)).is_empty());
        assert!(p.notes().iter().any(|n| n.contains("dropped")));

        if Path::new("/opt").exists() {
            let f = flags(&[], &[], &[Path::new("/opt")]);
            let p = FsPolicy::build(&f, Defaults::SYSTEM_ONLY, &ctx(Path::new("/"))).unwrap();
            assert!(access_at(&p, &canon("/opt")).is_empty());
            assert!(!access_at(&p, Path::new("/usr")).is_empty());
        }
    }

    #[test]
    fn vallignus_home_is_never_covered() {
        let cwd = tempfile::tempdir().unwrap();
        // Inside the working directory: refused, naming both.
        let mut c = ctx(cwd.path());
        c.vallignus_home = cwd.path().join(".vallignus");
        let err = FsPolicy::from_flags(&FsFlags::default(), &c).unwrap_err();
        assert!(matches!(
            &err,
            LandlockError::HiddenInsideAllowed {
                why: HideReason::VallignusHome,
                origin: Origin::WorkingDir,
                ..
            }
        ));
        assert!(err.to_string().contains(".vallignus"), "{err}");

        // The working directory inside it, or an --rw inside it: refused.
        let mut c = ctx(cwd.path());
        c.vallignus_home = cwd.path().to_path_buf();
        assert!(matches!(
            FsPolicy::from_flags(&FsFlags::default(), &c),
            Err(LandlockError::RuleInsideVallignusHome {
                origin: Origin::WorkingDir,
                ..
            })
        ));
        let sessions = cwd.path().join("sessions");
        std::fs::create_dir(&sessions).unwrap();
        assert!(matches!(
            FsPolicy::build(&flags(&[], &[&sessions], &[]), Defaults::SYSTEM_ONLY, &c),
            Err(LandlockError::RuleInsideVallignusHome {
                origin: Origin::RwFlag,
                ..
            })
        ));

        // Inside a default tree (/tmp, as in the tests' VALLIGNUS_HOME): that default goes.
        let mut c = ctx(Path::new("/"));
        c.vallignus_home = canon("/tmp").join("vallignus-test-nonexistent/home");
        let p = FsPolicy::build(
            &FsFlags::default(),
            Defaults {
                working_dir: false,
                ..Defaults::ALL
            },
            &c,
        )
        .unwrap();
        assert!(access_at(&p, &c.vallignus_home).is_empty());
        assert!(
            p.notes()
                .iter()
                .any(|n| n.contains("default rule /tmp dropped")),
            "{:?}",
            p.notes()
        );
    }

    #[test]
    fn user_home_is_hidden_unless_the_working_directory_covers_it() {
        let home = tempfile::tempdir().unwrap();
        let proj = home.path().join("proj");
        std::fs::create_dir(&proj).unwrap();
        let no_tmp = Defaults {
            tmp: false,
            ..Defaults::ALL
        };
        let with = |cwd: &Path, f: &FsFlags| {
            let mut c = ctx(cwd);
            c.user_home = Some(home.path().to_path_buf());
            FsPolicy::build(f, no_tmp, &c).unwrap()
        };
        let is_hidden = |p: &FsPolicy| {
            p.hidden()
                .iter()
                .any(|h| h.reason == HideReason::UserHome && h.path == canon(home.path()))
        };

        // Working directory below $HOME: $HOME hidden, the project read-write.
        let p = with(&proj, &FsFlags::default());
        assert!(is_hidden(&p));
        assert_eq!(access_at(&p, &canon(&proj).join("a")), [Access::ReadWrite]);
        assert!(access_at(&p, &canon(home.path()).join(".ssh")).is_empty());

        // Working directory = $HOME: reachable, and said so.
        let p = with(home.path(), &FsFlags::default());
        assert!(!is_hidden(&p));
        assert!(p.notes().iter().any(|n| n.contains("$HOME")));

        // $HOME = a default dir (a service user's HOME=/tmp): that default goes.
        let mut c = ctx(home.path());
        c.user_home = Some(PathBuf::from("/tmp"));
        let p = FsPolicy::build(&FsFlags::default(), Defaults::ALL, &c).unwrap();
        assert!(p.rules().iter().all(|r| r.path != canon("/tmp")), "{p:?}");

        // An explicit --ro of $HOME lifts the default denial.
        let elsewhere = tempfile::tempdir().unwrap();
        let p = with(elsewhere.path(), &flags(&[home.path()], &[], &[]));
        assert!(!is_hidden(&p));
        assert_eq!(
            access_at(&p, &canon(home.path()).join("x")),
            [Access::ReadExec]
        );
    }

    #[test]
    fn read_only_inside_a_writable_tree_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("data");
        std::fs::create_dir(&sub).unwrap();
        let err = FsPolicy::build(
            &flags(&[&sub], &[d.path()], &[]),
            Defaults::NONE,
            &ctx(Path::new("/")),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            LandlockError::ReadOnlyInsideWritable {
                origin: Origin::RwFlag,
                ..
            }
        ));
        // Inside the working directory, too.
        let err = FsPolicy::from_flags(&flags(&[&sub], &[], &[]), &ctx(d.path())).unwrap_err();
        assert!(err.to_string().contains("data"), "{err}");

        // The other way round is fine: --rw inside a read-only tree.
        let p = FsPolicy::build(
            &flags(&[d.path()], &[&sub], &[]),
            Defaults::NONE,
            &ctx(Path::new("/")),
        )
        .unwrap();
        assert!(access_at(&p, &canon(&sub)).contains(&Access::ReadWrite));
    }

    #[test]
    fn flag_paths_must_exist_and_are_relative_to_the_working_directory() {
        let d = tempfile::tempdir().unwrap();
        let err = FsPolicy::build(
            &flags(&[], &[Path::new("/nonexistent/x")], &[]),
            Defaults::NONE,
            &ctx(d.path()),
        )
        .unwrap_err();
        assert!(matches!(&err, LandlockError::FlagPath { flag: "--rw", .. }));
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");

        std::fs::create_dir(d.path().join("sub")).unwrap();
        let p = FsPolicy::build(
            &flags(&[Path::new("sub")], &[], &[]),
            Defaults::NONE,
            &ctx(d.path()),
        )
        .unwrap();
        assert_eq!(p.rules()[0].path, canon(d.path()).join("sub"));
        // A hidden path may not exist; it is still resolved against the working directory.
        let p = FsPolicy::build(
            &flags(&[], &[], &[Path::new("gone/../nothere")]),
            Defaults::NONE,
            &ctx(d.path()),
        )
        .unwrap();
        assert_eq!(p.hidden()[0].path, canon(d.path()).join("nothere"));
    }

    #[test]
    fn rights_follow_the_abi() {
        let ro = rights(Access::ReadExec, ABI::V3);
        assert!(ro.contains(AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir));
        assert!(!ro.contains(AccessFs::WriteFile) && !ro.contains(AccessFs::Truncate));
        assert!(!rights(Access::ReadWrite, ABI::V1).contains(AccessFs::Truncate));
        assert!(rights(Access::ReadWrite, ABI::V3).contains(AccessFs::Truncate));
        assert!(!rights(Access::Read, ABI::V6).contains(AccessFs::Execute));
        let dev = rights(Access::DeviceReadWrite, ABI::V6);
        assert_eq!(dev & AccessFs::from_file(ABI::V6), dev);
        assert!(!dev.contains(AccessFs::IoctlDev));
        assert!(includes(Access::ReadWrite, Access::ReadExec));
        assert!(!includes(Access::Read, Access::ReadExec));
    }

    #[test]
    fn missing_features_fail_closed_unless_best_effort() {
        let v2 = Support::Available {
            abi: 2,
            kernel_abi: None,
        };
        let err = check_features(v2, ABI::V2, Requirement::Strict).unwrap_err();
        assert!(matches!(
            err,
            LandlockError::MissingFeature {
                feature: "truncate",
                needs: 3,
                have: 2,
                ..
            }
        ));
        let missing = check_features(v2, ABI::V2, Requirement::BestEffort).unwrap();
        assert!(
            missing.iter().any(|m| m.starts_with("truncate (ABI 3)")),
            "{missing:?}"
        );
        assert!(matches!(
            check_features(
                Support::NotImplemented,
                ABI::Unsupported,
                Requirement::Strict
            ),
            Err(LandlockError::Unavailable { .. })
        ));
        let none = check_features(
            Support::NotEnabled,
            ABI::Unsupported,
            Requirement::BestEffort,
        )
        .unwrap();
        assert!(none.iter().any(|m| m.starts_with("filesystem")));
        let v6 = Support::Available {
            abi: 6,
            kernel_abi: None,
        };
        let missing = check_features(v6, ABI::V6, Requirement::Strict).unwrap();
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("resolve_unix (ABI 9)"));
    }

    #[test]
    fn prepare_on_this_kernel_reports_what_it_enforces() {
        let support = status();
        if !support.meets_requirement() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIP prepare_on_this_kernel: landlock {support:?}\n").as_bytes(),
            );
            return;
        }
        let cwd = tempfile::tempdir().unwrap();
        let p = FsPolicy::from_flags(&FsFlags::default(), &ctx(cwd.path())).unwrap();
        let prepared = prepare(&p, Requirement::Strict).unwrap();
        let report = prepared.describe();
        assert!(report.enforced);
        assert_eq!(report.abi, support.abi());
        assert!(report.handled_access.contains(&"truncate"));
        assert!(report.rules.iter().any(|r| r.path == Path::new("/usr")));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rules"][0]["access"], "read_exec");
        assert_eq!(json["hidden"][0]["reason"], "vallignus_home");
        assert_eq!(serde_json::to_value(support).unwrap()["state"], "available");
    }
}
