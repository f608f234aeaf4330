//! Unit tests: the shipped profiles compile for every architecture, and
//! their verdicts, evaluated by a small classic-BPF interpreter (the same
//! rules as the kernel's), are the documented ones on x86_64 and aarch64.

// `Ioctl` is c_ulong on glibc and c_int on musl: the casts are for musl.
#![allow(clippy::unnecessary_cast)]

use super::*;

/// System call numbers used below, as (name, x86_64, aarch64).
const SYSCALLS: &[(&str, u32, u32)] = &[
    ("ptrace", 101, 117),
    ("mount", 165, 40),
    ("umount2", 166, 39),
    ("unshare", 272, 97),
    ("clone", 56, 220),
    ("clone3", 435, 435),
    ("setns", 308, 268),
    ("io_uring_setup", 425, 425),
    ("bpf", 321, 280),
    ("socket", 41, 198),
    ("ioctl", 16, 29),
    ("personality", 135, 92),
    ("keyctl", 250, 219),
    ("perf_event_open", 298, 241),
    ("userfaultfd", 323, 282),
    ("kexec_load", 246, 104),
    ("init_module", 175, 105),
    ("open_by_handle_at", 304, 265),
    ("process_vm_readv", 310, 270),
    ("syslog", 103, 116),
    ("read", 0, 63),
    ("write", 1, 64),
    ("openat", 257, 56),
    ("execve", 59, 221),
    ("mknodat", 259, 33),
    ("chroot", 161, 51),
    ("getpid", 39, 172),
    ("setuid", 105, 146),
];

const ARCHES: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

fn nr(name: &str, arch: Arch) -> u32 {
    let &(_, x86, arm) = SYSCALLS
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no number for {name}"));
    match arch {
        Arch::X86_64 => x86,
        Arch::Aarch64 => arm,
    }
}

/// A verdict, decoded.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allow,
    Errno(i32),
    KillProcess,
    Other(u32),
}

fn decode(ret: u32) -> Verdict {
    match ret & libc::SECCOMP_RET_ACTION_FULL {
        libc::SECCOMP_RET_ALLOW => Verdict::Allow,
        libc::SECCOMP_RET_ERRNO => Verdict::Errno((ret & libc::SECCOMP_RET_DATA) as i32),
        libc::SECCOMP_RET_KILL_PROCESS => Verdict::KillProcess,
        other => Verdict::Other(other),
    }
}

/// `struct seccomp_data` as the filter sees it.
struct Data {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Data {
    fn word(&self, offset: u32) -> u32 {
        match offset {
            0 => self.nr,
            4 => self.arch,
            16..=63 if offset.is_multiple_of(4) => {
                let arg = self.args[((offset - 16) / 8) as usize];
                if offset.is_multiple_of(8) {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("unexpected load at offset {offset}"),
        }
    }
}

/// Run one classic-BPF program (the subset seccomp filters use).
fn run(program: &[sock_filter], data: &Data) -> u32 {
    let mut pc = 0usize;
    let mut acc = 0u32;
    loop {
        let insn = &program[pc];
        let code = u32::from(insn.code);
        pc += 1;
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = data.word(insn.k),
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= insn.k,
            c if c == libc::BPF_JMP | libc::BPF_JA => pc += insn.k as usize,
            c if c == libc::BPF_RET | libc::BPF_K => return insn.k,
            c if c & 0x07 == libc::BPF_JMP => {
                let taken = match c & 0xf0 {
                    x if x == libc::BPF_JEQ => acc == insn.k,
                    x if x == libc::BPF_JGT => acc > insn.k,
                    x if x == libc::BPF_JGE => acc >= insn.k,
                    x if x == libc::BPF_JSET => acc & insn.k != 0,
                    _ => panic!("unexpected jump {c:#x}"),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            _ => panic!("unexpected instruction {code:#x}"),
        }
    }
}

/// All filters of a compiled profile, combined like the kernel does: the
/// most recently installed filter runs first, and the verdict whose action
/// is smallest as a signed number wins (kill < trap < errno < allow).
fn verdict_raw(compiled: &CompiledProfile, arch_value: u32, nr: u32, args: [u64; 6]) -> Verdict {
    let data = Data {
        nr,
        arch: arch_value,
        args,
    };
    let mut best = libc::SECCOMP_RET_ALLOW;
    for filter in compiled.filters.iter().rev() {
        let ret = run(&filter.program, &data);
        if ((ret & libc::SECCOMP_RET_ACTION_FULL) as i32)
            < ((best & libc::SECCOMP_RET_ACTION_FULL) as i32)
        {
            best = ret;
        }
    }
    decode(best)
}

fn verdict(compiled: &CompiledProfile, name: &str, args: &[u64]) -> Verdict {
    let mut full = [0u64; 6];
    full[..args.len()].copy_from_slice(args);
    let arch = compiled.arch();
    verdict_raw(compiled, arch.audit(), nr(name, arch), full)
}

fn shipped(profile: &Profile, arch: Arch) -> CompiledProfile {
    compile_for(profile, arch)
        .unwrap_or_else(|e| panic!("{profile} for {arch}: {e}"))
        .unwrap_or_else(|| panic!("{profile} compiled to no filter"))
}

const EPERM: Verdict = Verdict::Errno(libc::EPERM);
const ENOSYS: Verdict = Verdict::Errno(libc::ENOSYS);
const AF_UNIX: u64 = libc::AF_UNIX as u64;
const AF_INET: u64 = libc::AF_INET as u64;
const AF_INET6: u64 = libc::AF_INET6 as u64;
const AF_NETLINK: u64 = libc::AF_NETLINK as u64;
const AF_PACKET: u64 = libc::AF_PACKET as u64;
const AF_ALG: u64 = libc::AF_ALG as u64;
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
const SOCK_STREAM: u64 = libc::SOCK_STREAM as u64;
const SOCK_DGRAM: u64 = libc::SOCK_DGRAM as u64;
const SOCK_RAW: u64 = libc::SOCK_RAW as u64;
const SOCK_CLOEXEC: u64 = libc::SOCK_CLOEXEC as u64;
const SOCK_NONBLOCK: u64 = libc::SOCK_NONBLOCK as u64;
const NETLINK_ROUTE: u64 = libc::NETLINK_ROUTE as u64;
const NETLINK_AUDIT: u64 = libc::NETLINK_AUDIT as u64;
const NETLINK_SOCK_DIAG: u64 = libc::NETLINK_SOCK_DIAG as u64;
const TIOCSTI: u64 = libc::TIOCSTI as u64;
const TIOCLINUX: u64 = libc::TIOCLINUX as u64;
const TIOCSETD: u64 = libc::TIOCSETD as u64;
const TCGETS: u64 = libc::TCGETS as u64;
const FIONREAD: u64 = libc::FIONREAD as u64;
const SIGCHLD: u64 = libc::SIGCHLD as u64;
/// What glibc's pthread_create passes to clone.
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;
/// What glibc's fork passes to clone.
const FORK_FLAGS: u64 = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64 | SIGCHLD;
const NS_FLAGS: [(&str, u64); 7] = [
    ("CLONE_NEWNS", libc::CLONE_NEWNS as u64),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP as u64),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS as u64),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC as u64),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER as u64),
    ("CLONE_NEWPID", libc::CLONE_NEWPID as u64),
    ("CLONE_NEWNET", libc::CLONE_NEWNET as u64),
];
const S_IFCHR: u64 = libc::S_IFCHR as u64;
const S_IFBLK: u64 = libc::S_IFBLK as u64;
const S_IFIFO: u64 = libc::S_IFIFO as u64;
const S_IFREG: u64 = libc::S_IFREG as u64;

#[test]
fn shipped_profiles_compile_for_the_host() {
    let arch = Arch::host().expect("tests run on a supported architecture");
    for (name, profile) in Profile::SHIPPED {
        let compiled = compile(&profile).unwrap_or_else(|e| panic!("{name}: {e}"));
        match profile {
            Profile::None => assert!(compiled.is_none(), "none installs nothing"),
            _ => {
                let compiled = compiled.unwrap_or_else(|| panic!("{name} has no filter"));
                assert_eq!(compiled.arch(), arch);
                assert_eq!(compiled.profile(), name);
                assert!(compiled.instructions() > 0);
            }
        }
    }
}

#[test]
fn shipped_profiles_compile_for_every_architecture() {
    for arch in ARCHES {
        for profile in [Profile::Default, Profile::Strict] {
            let compiled = shipped(&profile, arch);
            let names: Vec<&str> = compiled.filter_names().collect();
            let mut expected = vec!["(guard: unknown syscall numbers)", "clone3", "deny"];
            if arch == Arch::X86_64 {
                expected.push("deny.x86_64");
            }
            assert_eq!(names, expected, "{profile} on {arch}");
            // Each program is far below the kernel's limit of 4096.
            assert!(compiled.instructions() < 2048, "{profile} on {arch}");
        }
        assert!(compile_for(&Profile::None, arch)
            .expect("none compiles")
            .is_none());
    }
}

#[test]
fn default_denies_the_escape_and_attack_surface_calls() {
    for arch in ARCHES {
        for profile in [Profile::Default, Profile::Strict] {
            let p = shipped(&profile, arch);
            for name in [
                "ptrace",
                "process_vm_readv",
                "mount",
                "umount2",
                "setns",
                "io_uring_setup",
                "bpf",
                "perf_event_open",
                "keyctl",
                "userfaultfd",
                "kexec_load",
                "init_module",
                "open_by_handle_at",
                "syslog",
            ] {
                assert_eq!(
                    verdict(&p, name, &[]),
                    EPERM,
                    "{name} under {profile} on {arch}"
                );
            }
            for (flag, bit) in NS_FLAGS {
                assert_eq!(
                    verdict(&p, "unshare", &[bit]),
                    EPERM,
                    "unshare({flag}) under {profile} on {arch}"
                );
                assert_eq!(
                    verdict(&p, "clone", &[bit | SIGCHLD]),
                    EPERM,
                    "clone({flag}) under {profile} on {arch}"
                );
                // High bits set by a caller do not hide the flag.
                assert_eq!(
                    verdict(&p, "clone", &[bit | SIGCHLD | 0xffff_0000_0000_0000]),
                    EPERM
                );
            }
            let newtime = libc::CLONE_NEWTIME as u64;
            assert_eq!(verdict(&p, "unshare", &[newtime]), EPERM);
            assert_eq!(
                verdict(&p, "clone3", &[]),
                ENOSYS,
                "clone3 falls back to clone"
            );
            assert_eq!(verdict(&p, "socket", &[AF_PACKET, SOCK_RAW, 0]), EPERM);
            assert_eq!(verdict(&p, "socket", &[AF_PACKET, SOCK_DGRAM, 0]), EPERM);
            for family in [AF_INET, AF_INET6] {
                assert_eq!(verdict(&p, "socket", &[family, SOCK_RAW, 1]), EPERM);
                assert_eq!(
                    verdict(
                        &p,
                        "socket",
                        &[family, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 1]
                    ),
                    EPERM,
                    "the SOCK_* flags do not hide SOCK_RAW"
                );
                assert_eq!(
                    verdict(&p, "socket", &[family, SOCK_STREAM | SOCK_CLOEXEC, 0]),
                    Verdict::Allow
                );
                assert_eq!(
                    verdict(&p, "socket", &[family, SOCK_DGRAM, 0]),
                    Verdict::Allow
                );
            }
            assert_eq!(
                verdict(&p, "socket", &[AF_INET, 10 /* SOCK_PACKET */, 0]),
                EPERM
            );
            for proto in [NETLINK_AUDIT, NETLINK_SOCK_DIAG] {
                assert_eq!(verdict(&p, "socket", &[AF_NETLINK, SOCK_RAW, proto]), EPERM);
            }
            assert_eq!(
                verdict(&p, "socket", &[AF_UNIX, SOCK_STREAM, 0]),
                Verdict::Allow
            );
            for cmd in [TIOCSTI, TIOCLINUX] {
                assert_eq!(verdict(&p, "ioctl", &[0, cmd]), EPERM);
                // The kernel ignores the upper half of cmd; so does the rule.
                assert_eq!(verdict(&p, "ioctl", &[0, cmd | 0x1_0000_0000]), EPERM);
            }
            assert_eq!(verdict(&p, "ioctl", &[0, TCGETS]), Verdict::Allow);
            assert_eq!(verdict(&p, "ioctl", &[0, FIONREAD]), Verdict::Allow);
            assert_eq!(verdict(&p, "personality", &[0]), Verdict::Allow);
            assert_eq!(verdict(&p, "personality", &[0xffff_ffff]), Verdict::Allow);
            assert_eq!(
                verdict(&p, "personality", &[libc::ADDR_NO_RANDOMIZE as u64]),
                EPERM
            );
            assert_eq!(verdict(&p, "personality", &[8]), EPERM, "PER_LINUX32");
        }
    }
}

#[test]
fn ordinary_calls_are_allowed() {
    for arch in ARCHES {
        for profile in [Profile::Default, Profile::Strict] {
            let p = shipped(&profile, arch);
            for name in ["read", "write", "openat", "execve", "getpid", "setuid"] {
                assert_eq!(verdict(&p, name, &[]), Verdict::Allow, "{name}");
            }
            assert_eq!(
                verdict(&p, "clone", &[THREAD_FLAGS]),
                Verdict::Allow,
                "threads"
            );
            assert_eq!(verdict(&p, "clone", &[FORK_FLAGS]), Verdict::Allow, "fork");
            let vfork = (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | SIGCHLD;
            assert_eq!(
                verdict(&p, "clone", &[vfork]),
                Verdict::Allow,
                "posix_spawn"
            );
            let files = libc::CLONE_FILES as u64;
            assert_eq!(verdict(&p, "unshare", &[files]), Verdict::Allow);
            assert_eq!(
                verdict(&p, "mknodat", &[0, 0, S_IFIFO | 0o600, 0]),
                Verdict::Allow
            );
            assert_eq!(
                verdict(&p, "mknodat", &[0, 0, S_IFREG | 0o600, 0]),
                Verdict::Allow
            );
        }
    }
}

#[test]
fn default_keeps_netlink_route_and_strict_does_not() {
    for arch in ARCHES {
        let default = shipped(&Profile::Default, arch);
        let strict = shipped(&Profile::Strict, arch);
        let route = [AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE];
        assert_eq!(verdict(&default, "socket", &route), Verdict::Allow);
        assert_eq!(verdict(&strict, "socket", &route), EPERM);
        for family in [0, 3, 4, 9, 11, AF_ALG, AF_VSOCK, 0xffff_ffff] {
            assert_eq!(
                verdict(&strict, "socket", &[family, SOCK_STREAM, 0]),
                EPERM,
                "{family}"
            );
        }
        for family in [AF_UNIX, AF_INET, AF_INET6] {
            assert_eq!(
                verdict(&strict, "socket", &[family, SOCK_STREAM, 0]),
                Verdict::Allow
            );
        }
        assert_eq!(
            verdict(&default, "socket", &[AF_ALG, SOCK_STREAM, 0]),
            Verdict::Allow
        );
    }
}

#[test]
fn strict_denies_devices_chroot_and_line_disciplines() {
    for arch in ARCHES {
        let default = shipped(&Profile::Default, arch);
        let strict = shipped(&Profile::Strict, arch);
        for mode in [S_IFCHR | 0o600, S_IFBLK | 0o600] {
            assert_eq!(verdict(&strict, "mknodat", &[0, 0, mode, 0]), EPERM);
            assert_eq!(
                verdict(&default, "mknodat", &[0, 0, mode, 0]),
                Verdict::Allow
            );
        }
        assert_eq!(verdict(&strict, "chroot", &[]), EPERM);
        assert_eq!(verdict(&default, "chroot", &[]), Verdict::Allow);
        assert_eq!(verdict(&strict, "ioctl", &[0, TIOCSETD]), EPERM);
        assert_eq!(verdict(&default, "ioctl", &[0, TIOCSETD]), Verdict::Allow);
    }
}

#[test]
fn x86_only_calls_are_denied_on_x86_64() {
    let p = shipped(&Profile::Default, Arch::X86_64);
    // iopl, ioperm, modify_ldt, uselib
    for nr in [172, 173, 154, 134] {
        assert_eq!(
            verdict_raw(&p, Arch::X86_64.audit(), nr, [0; 6]),
            EPERM,
            "{nr}"
        );
    }
    let strict = shipped(&Profile::Strict, Arch::X86_64);
    // mknod (133) of a character device
    let chr = [0, S_IFCHR | 0o600, 0, 0, 0, 0];
    assert_eq!(verdict_raw(&strict, Arch::X86_64.audit(), 133, chr), EPERM);
}

#[test]
fn the_guard_answers_enosys_above_the_known_table_and_kills_foreign_arches() {
    for arch in ARCHES {
        let p = shipped(&Profile::Default, arch);
        let audit = arch.audit();
        assert_eq!(
            verdict_raw(&p, audit, LAST_KNOWN_SYSCALL, [0; 6]),
            Verdict::Allow
        );
        assert_eq!(
            verdict_raw(&p, audit, LAST_KNOWN_SYSCALL + 1, [0; 6]),
            ENOSYS
        );
        assert_eq!(verdict_raw(&p, audit, u32::MAX, [0; 6]), ENOSYS);
        // x32: getpid with the x32 bit.
        assert_eq!(verdict_raw(&p, audit, 0x4000_0000 | 39, [0; 6]), ENOSYS);
        // i386 (AUDIT_ARCH_I386) or arm (AUDIT_ARCH_ARM) system calls.
        for foreign in [0x4000_0003, 0x4000_0028] {
            assert_eq!(verdict_raw(&p, foreign, 20, [0; 6]), Verdict::KillProcess);
        }
    }
}

#[test]
fn profile_names_parse() {
    assert_eq!("default".parse::<Profile>().ok(), Some(Profile::Default));
    assert_eq!("strict".parse::<Profile>().ok(), Some(Profile::Strict));
    assert_eq!("none".parse::<Profile>().ok(), Some(Profile::None));
    assert_eq!(
        "./default".parse::<Profile>().ok(),
        Some(Profile::Custom(PathBuf::from("./default")))
    );
    assert_eq!(
        "mine.json".parse::<Profile>().ok(),
        Some(Profile::Custom(PathBuf::from("mine.json")))
    );
    let err = "defualt".parse::<Profile>().expect_err("typo is an error");
    assert!(matches!(err, SeccompError::UnknownProfile { .. }), "{err}");
    for (name, profile) in Profile::SHIPPED {
        assert_eq!(profile.to_string(), name);
    }
}

const EPERM_ON_GETPID: &str = r#"{"mismatch_action": "allow", "match_action": {"errno": 1}, "filter": [{"syscall": "getpid"}]}"#;

#[test]
fn filters_are_picked_by_architecture_suffix() {
    let json = format!(
        r#"{{"all": {f}, "only.x86_64": {f}, "only.aarch64": {f}, "only.riscv64": {f}}}"#,
        f = EPERM_ON_GETPID
    );
    for arch in ARCHES {
        let p = compile_json("test", &json, arch).expect("compiles");
        let names: Vec<&str> = p.filter_names().skip(1).collect();
        let own = format!("only.{arch}");
        assert_eq!(names, vec!["all", own.as_str()]);
        assert_eq!(verdict(&p, "getpid", &[]), EPERM);
        assert_eq!(verdict(&p, "read", &[]), Verdict::Allow);
    }
}

#[test]
fn bad_profiles_fail_closed_with_a_named_cause() {
    let arch = Arch::X86_64;
    let err = |json: &str| compile_json("test", json, arch).expect_err(json);

    assert!(matches!(err("{}"), SeccompError::NoFilterForArch { .. }));
    let only_arm = format!(r#"{{"x.aarch64": {EPERM_ON_GETPID}}}"#);
    assert!(matches!(
        err(&only_arm),
        SeccompError::NoFilterForArch { .. }
    ));
    assert!(matches!(err("[]"), SeccompError::ParseProfile { .. }));
    assert!(matches!(err("not json"), SeccompError::ParseProfile { .. }));
    let dup = format!(r#"{{"a": {EPERM_ON_GETPID}, "a": {EPERM_ON_GETPID}}}"#);
    assert!(matches!(err(&dup), SeccompError::DuplicateFilter { name, .. } if name == "a"));
    let typo = format!(r#"{{"a.x86-64": {EPERM_ON_GETPID}}}"#);
    assert!(matches!(err(&typo), SeccompError::UnknownFilterArch { .. }));

    let unknown_syscall = r#"{"a": {"mismatch_action": "allow", "match_action": {"errno": 1},
        "filter": [{"syscall": "no_such_call"}]}}"#;
    let e = err(unknown_syscall);
    assert!(
        matches!(&e, SeccompError::Compile { filter, .. } if filter == "a"),
        "{e}"
    );
    // A syscall that exists only on x86_64 fails on aarch64, naming the arch.
    let iopl = r#"{"a": {"mismatch_action": "allow", "match_action": {"errno": 1},
        "filter": [{"syscall": "iopl"}]}}"#;
    assert!(compile_json("test", iopl, Arch::X86_64).is_ok());
    let e = compile_json("test", iopl, Arch::Aarch64).expect_err("no iopl on aarch64");
    assert!(matches!(
        e,
        SeccompError::Compile {
            arch: Arch::Aarch64,
            ..
        }
    ));
    let same_actions = r#"{"a": {"mismatch_action": "allow", "match_action": "allow",
        "filter": []}}"#;
    assert!(matches!(err(same_actions), SeccompError::Compile { .. }));
    let unknown_field = r#"{"a": {"mismatch_action": "allow", "match_action": {"errno": 1},
        "filter": [{"syscall": "getpid", "action": "allow"}]}}"#;
    assert!(matches!(err(unknown_field), SeccompError::Compile { .. }));
}

#[test]
fn custom_profiles_are_read_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mine.json");
    std::fs::write(&path, format!(r#"{{"mine": {EPERM_ON_GETPID}}}"#)).expect("write");
    let profile = Profile::Custom(path.clone());
    let p = compile_for(&profile, Arch::X86_64)
        .expect("compiles")
        .expect("has filters");
    assert_eq!(p.profile(), path.display().to_string());
    assert_eq!(verdict(&p, "getpid", &[]), EPERM);

    let missing = Profile::Custom(dir.path().join("missing.json"));
    let e = compile_for(&missing, Arch::X86_64).expect_err("missing file");
    assert!(matches!(&e, SeccompError::ReadProfile { path, .. } if path.ends_with("missing.json")));
    assert!(e.to_string().contains("missing.json"), "{e}");
}

#[test]
fn an_allow_list_profile_works_too() {
    let json = r#"{"allow": {"mismatch_action": "kill_process", "match_action": "allow",
        "filter": [{"syscall": "read"}, {"syscall": "write"}]}}"#;
    let p = compile_json("allow", json, Arch::Aarch64).expect("compiles");
    assert_eq!(verdict(&p, "read", &[]), Verdict::Allow);
    assert_eq!(verdict(&p, "getpid", &[]), Verdict::KillProcess);
}
