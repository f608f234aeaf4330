//! The seccomp layer: the agent's system calls are filtered by a profile
//! (`--seccomp default|strict|none|FILE`), kept as JSON in seccompiler's
//! format under `seccomp-profiles/` (see its README for what each profile
//! denies and why).
//!
//! Invariants:
//! - Compiling (JSON to BPF, [`compile`]) happens in the supervisor before the
//!   fork; the child only installs ([`install`]), as the very last step before
//!   `execve`, and that step does not allocate.
//! - Filters are per architecture: a filter named `NAME.ARCH` (ARCH one of
//!   `x86_64`, `aarch64`, `riscv64`) applies only on that architecture, any
//!   other name applies everywhere. A profile with no filter for the host is
//!   an error (fail closed), never "no filtering".
//! - Every compiled profile carries, besides its own filters, a guard filter
//!   built here: system call numbers above the last one the compiler knows
//!   ([`LAST_KNOWN_SYSCALL`]) fail with `ENOSYS`. That keeps calls newer than
//!   the reviewed profiles (and, on x86_64, every x32-ABI call, whose numbers
//!   have bit 30 set) out of a deny list that cannot name them; C libraries
//!   treat `ENOSYS` as "old kernel" and fall back.
//! - A system call made for another architecture (i386 `int 0x80` on x86_64)
//!   kills the process: seccompiler's architecture check, in every filter.
//! - The kernel runs every installed filter and keeps the strictest verdict,
//!   so the order of installation never weakens a filter.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use seccompiler::{sock_filter, BpfProgram, TargetArch};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// The shipped `default` profile.
const DEFAULT_JSON: &str = include_str!("../../seccomp-profiles/default.json");
/// The shipped `strict` profile.
const STRICT_JSON: &str = include_str!("../../seccomp-profiles/strict.json");

/// Highest system call number in seccompiler's tables (`mseal`, the same on
/// x86_64 and aarch64). Higher numbers get `ENOSYS` from the guard filter.
pub const LAST_KNOWN_SYSCALL: u32 = 462;

/// Errors of the seccomp layer; each names the profile, file or system call
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `--seccomp` named neither a shipped profile nor a JSON file.
    #[error(
        "unknown seccomp profile {name:?}: expected default, strict, none, or the path of a \
         JSON profile (containing a '/' or ending in .json)"
    )]
    UnknownProfile { name: String },
    /// The host's architecture has no seccomp support here.
    #[error("seccomp filters are not supported on {arch} (only x86_64 and aarch64)")]
    UnsupportedArch { arch: &'static str },
    /// A custom profile file could not be read.
    #[error("cannot read seccomp profile {}: {source}", path.display())]
    ReadProfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A profile is not a JSON object of named filters.
    #[error("seccomp profile {profile}: not a JSON object of named filters")]
    ParseProfile {
        profile: String,
        #[source]
        source: serde_json::Error,
    },
    /// Two filters of a profile have the same name.
    #[error("seccomp profile {profile}: filter {name:?} is defined twice")]
    DuplicateFilter { profile: String, name: String },
    /// A filter name has a `.SUFFIX` that is not an architecture.
    #[error(
        "seccomp profile {profile}: filter {name:?} ends in an unknown architecture \
         (expected .x86_64, .aarch64 or .riscv64, or no dot)"
    )]
    UnknownFilterArch { profile: String, name: String },
    /// No filter of a profile applies to the architecture.
    #[error("seccomp profile {profile}: no filter applies to {arch}")]
    NoFilterForArch { profile: String, arch: Arch },
    /// seccompiler rejected a filter (unknown syscall name, bad condition,
    /// identical actions, too long).
    #[error("seccomp profile {profile}: cannot compile filter {filter:?} for {arch}")]
    Compile {
        profile: String,
        filter: String,
        arch: Arch,
        #[source]
        source: seccompiler::Error,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed in the child.
    #[error("prctl(PR_SET_NO_NEW_PRIVS) failed")]
    NoNewPrivs {
        #[source]
        source: nix::errno::Errno,
    },
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed in the child for the filter
    /// at `index` (see [`CompiledProfile::filter_names`]).
    #[error("seccomp(SECCOMP_SET_MODE_FILTER) failed for filter #{index}")]
    Install {
        index: usize,
        #[source]
        source: seccompiler::Error,
    },
}

/// An architecture that seccomp profiles are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this binary runs on, if supported.
    pub fn host() -> Result<Arch, SeccompError> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            arch => Err(SeccompError::UnsupportedArch { arch }),
        }
    }

    /// The name used in filter names (`deny.x86_64`) and by the kernel.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn target(self) -> TargetArch {
        match self {
            Arch::X86_64 => TargetArch::x86_64,
            Arch::Aarch64 => TargetArch::aarch64,
        }
    }

    /// `AUDIT_ARCH_*`, what the kernel puts in `seccomp_data.arch`.
    fn audit(self) -> u32 {
        match self {
            Arch::X86_64 => 0xC000_003E,
            Arch::Aarch64 => 0xC000_00B7,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Architecture suffixes a filter name may carry (riscv64 is accepted so a
/// profile can carry filters for it, though vallignus does not run there).
const ARCH_SUFFIXES: [&str; 3] = ["x86_64", "aarch64", "riscv64"];

/// Which filter the agent runs under (`--seccomp`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Profile {
    /// Deny what lets an agent escape, reach other processes or attack the
    /// kernel; allow everything else. Denied calls fail with `EPERM`.
    #[default]
    Default,
    /// `Default` plus what agents do not need (exotic socket families,
    /// chroot, device nodes, ...).
    Strict,
    /// No filter at all.
    None,
    /// A profile in seccompiler's JSON format, read at compile time.
    Custom(PathBuf),
}

impl Profile {
    /// The shipped profiles, by name.
    pub const SHIPPED: [(&'static str, Profile); 3] = [
        ("default", Profile::Default),
        ("strict", Profile::Strict),
        ("none", Profile::None),
    ];
}

impl FromStr for Profile {
    type Err = SeccompError;

    /// `default`, `strict`, `none`, or a path: anything with a `/` or ending
    /// in `.json` (so a file called `default` is given as `./default`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Profile::Default),
            "strict" => Ok(Profile::Strict),
            "none" => Ok(Profile::None),
            _ if s.contains('/') || s.ends_with(".json") => Ok(Profile::Custom(PathBuf::from(s))),
            _ => Err(SeccompError::UnknownProfile { name: s.to_owned() }),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Default => f.write_str("default"),
            Profile::Strict => f.write_str("strict"),
            Profile::None => f.write_str("none"),
            Profile::Custom(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One compiled filter.
#[derive(Debug, Clone)]
struct Filter {
    name: String,
    program: BpfProgram,
}

/// A profile compiled for one architecture: the BPF programs to install, in
/// order (the guard first, then the profile's filters by name).
#[derive(Debug, Clone)]
pub struct CompiledProfile {
    profile: String,
    arch: Arch,
    filters: Vec<Filter>,
}

impl CompiledProfile {
    /// The profile's name (`default`, `strict`) or file path.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// The architecture it was compiled for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Names of the filters in installation order; the index of a name is the
    /// `index` of [`SeccompError::Install`].
    pub fn filter_names(&self) -> impl Iterator<Item = &str> {
        self.filters.iter().map(|f| f.name.as_str())
    }

    /// Total number of BPF instructions, over all filters.
    pub fn instructions(&self) -> usize {
        self.filters.iter().map(|f| f.program.len()).sum()
    }
}

/// Compile `profile` for the host architecture. `Ok(None)` for
/// [`Profile::None`]. Run in the supervisor, before the fork.
pub fn compile(profile: &Profile) -> Result<Option<CompiledProfile>, SeccompError> {
    compile_for(profile, Arch::host()?)
}

/// Compile `profile` for `arch` (the host's or another: the tests check
/// that the shipped profiles compile for every supported architecture).
pub fn compile_for(profile: &Profile, arch: Arch) -> Result<Option<CompiledProfile>, SeccompError> {
    let label = profile.to_string();
    match profile {
        Profile::None => Ok(None),
        Profile::Default => compile_json(&label, DEFAULT_JSON, arch).map(Some),
        Profile::Strict => compile_json(&label, STRICT_JSON, arch).map(Some),
        Profile::Custom(path) => {
            let json = read_profile(path)?;
            compile_json(&label, &json, arch).map(Some)
        }
    }
}

fn read_profile(path: &Path) -> Result<String, SeccompError> {
    std::fs::read_to_string(path).map_err(|source| SeccompError::ReadProfile {
        path: path.to_owned(),
        source,
    })
}

/// Compile the JSON text of a profile (named `profile` in errors) for `arch`.
pub fn compile_json(
    profile: &str,
    json: &str,
    arch: Arch,
) -> Result<CompiledProfile, SeccompError> {
    let entries: FilterEntries =
        serde_json::from_str(json).map_err(|source| SeccompError::ParseProfile {
            profile: profile.to_owned(),
            source,
        })?;
    let mut seen = std::collections::BTreeSet::new();
    let mut filters = Vec::new();
    for (name, body) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(SeccompError::DuplicateFilter {
                profile: profile.to_owned(),
                name,
            });
        }
        if let Some((_, suffix)) = name.rsplit_once('.') {
            if !ARCH_SUFFIXES.contains(&suffix) {
                return Err(SeccompError::UnknownFilterArch {
                    profile: profile.to_owned(),
                    name,
                });
            }
            if suffix != arch.name() {
                continue;
            }
        }
        let program =
            compile_filter(&name, body, arch).map_err(|source| SeccompError::Compile {
                profile: profile.to_owned(),
                filter: name.clone(),
                arch,
                source,
            })?;
        filters.push(Filter { name, program });
    }
    if filters.is_empty() {
        return Err(SeccompError::NoFilterForArch {
            profile: profile.to_owned(),
            arch,
        });
    }
    filters.sort_by(|a, b| a.name.cmp(&b.name));
    filters.insert(
        0,
        Filter {
            name: "(guard: unknown syscall numbers)".to_owned(),
            program: unknown_syscall_guard(arch),
        },
    );
    Ok(CompiledProfile {
        profile: profile.to_owned(),
        arch,
        filters,
    })
}

/// Compile one filter through seccompiler, as a one-filter JSON map made
/// from the filter's own text (no parse and re-serialise: compiling is on
/// the start-up path of every run with seccomp).
fn compile_filter(
    name: &str,
    body: &serde_json::value::RawValue,
    arch: Arch,
) -> Result<BpfProgram, seccompiler::Error> {
    // A String always serializes.
    let key = serde_json::to_string(name).unwrap_or_default();
    let text = format!("{{{key}:{}}}", body.get());
    let mut compiled = seccompiler::compile_from_json(text.as_bytes(), arch.target())?;
    Ok(compiled.remove(name).unwrap_or_default())
}

/// The filter every profile carries: check the architecture like
/// seccompiler does (kill on mismatch), then `ENOSYS` for any number above
/// [`LAST_KNOWN_SYSCALL`] (unsigned: x32 numbers and -1 included).
fn unknown_syscall_guard(arch: Arch) -> BpfProgram {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    /// Offsets in `struct seccomp_data`.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(LD_W_ABS, 0, 0, ARCH),
        insn(JEQ_K, 1, 0, arch.audit()),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, NR),
        insn(JGT_K, 1, 0, LAST_KNOWN_SYSCALL),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        insn(
            RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
        ),
    ]
}

/// Install a compiled profile on the calling thread, for good: set
/// `no_new_privs` (which seccomp requires of unprivileged callers), then
/// attach every filter. Call it in the child right before `execve`; the
/// filters survive `execve` and are inherited by every child of the agent.
///
/// Does not allocate (two `prctl`/`seccomp` system calls per filter), so it
/// is fine in a forked child. On an error some filters may already be
/// attached: the child must then report it and exit, never exec.
pub fn install(compiled: &CompiledProfile) -> Result<(), SeccompError> {
    nix::sys::prctl::set_no_new_privs().map_err(|source| SeccompError::NoNewPrivs { source })?;
    for (index, filter) in compiled.filters.iter().enumerate() {
        seccompiler::apply_filter(&filter.program)
            .map_err(|source| SeccompError::Install { index, source })?;
    }
    Ok(())
}

/// The top-level object of a profile as (name, filter text) pairs in file
/// order, duplicates kept so they can be reported (serde_json's map drops
/// them).
struct FilterEntries<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de> Deserialize<'de> for FilterEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = FilterEntries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping filter names to filters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) =
                    map.next_entry::<String, &'de serde_json::value::RawValue>()?
                {
                    entries.push(entry);
                }
                Ok(FilterEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests;
