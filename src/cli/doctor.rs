//! `vallignus doctor [--json] [--policy FILE] [run flags]`: what this host can
//! enforce, and whether a run with the given policy would start (and why
//! not). Probes only read kernel interfaces; nothing is changed except that,
//! as root, a probe cgroup is created and removed to test cgroup.kill.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::cgroup;
use crate::isolation::namespaces::{Level, Namespaces};
use crate::isolation::user::{self, RunAs};
use crate::policy::units::{parse_count, parse_size};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Check a run with this policy file.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Check a run with this isolation level.
    #[arg(long, value_name = "LEVEL", value_parser = Level::parse)]
    isolation: Option<Level>,
    /// Check a run with these namespaces.
    #[arg(long, value_name = "LIST", value_parser = Namespaces::parse)]
    unshare: Option<Namespaces>,
    /// Check a run as this user.
    #[arg(long, value_name = "USER", value_parser = user::resolve)]
    user: Option<RunAs>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_max: Option<u64>,
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pids_max: Option<u64>,
    #[arg(long, value_name = "CPUS")]
    cpu_max: Option<f64>,
    /// As with `run`: what cannot be enforced is recorded instead of failing.
    #[arg(long)]
    best_effort: bool,
    /// Check this credential (as `run --credential`): is its secret there? Listed by name,
    /// source and hosts, never by value. Repeatable.
    #[arg(long, value_name = "NAME=ENV_VAR@HOST[,HOST...]")]
    credential: Vec<crate::net::credentials::CredentialSpec>,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let maj: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let min: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (maj, min) >= (major, minor)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// What the host offers, probed once.
struct Host {
    checks: Vec<Check>,
    cgroup_mount: Option<PathBuf>,
    controllers: Vec<String>,
    cgroup_kill: bool,
    userns: bool,
    landlock_abi: u32,
    root: bool,
}

fn probe_host() -> Host {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(check(
        "kernel",
        kernel_at_least(&release, 5, 14),
        format!("{release} (clone3 into a cgroup needs 5.7, cgroup.kill 5.14)"),
    ));

    let mountinfo = read("/proc/self/mountinfo").unwrap_or_default();
    let mount = cgroup::find_cgroup2_mount(&mountinfo);
    let controllers: Vec<String> = mount
        .as_ref()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.subtree_control")).ok())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    match &mount {
        Some(m) => checks.push(check(
            "cgroup2",
            true,
            format!("mounted at {}", m.display()),
        )),
        None => checks.push(check(
            "cgroup2",
            false,
            "no cgroup2 mount in /proc/self/mountinfo",
        )),
    }
    let cgroup_kill = mount.as_deref().is_some_and(probe_cgroup_kill);
    checks.push(check(
        "cgroup.kill",
        cgroup_kill,
        if cgroup_kill {
            "available: teardown reaches every process of a run".to_string()
        } else if !root {
            "not checked: needs root, or a delegated cgroup in VALLIGNUS_CGROUP_ROOT".to_string()
        } else {
            "missing (Linux 5.14+)".to_string()
        },
    ));
    for c in ["memory", "pids", "cpu", "io"] {
        let ok = controllers.iter().any(|x| x == c);
        checks.push(check(
            match c {
                "memory" => "controller memory",
                "pids" => "controller pids",
                "cpu" => "controller cpu",
                _ => "controller io",
            },
            ok,
            if ok {
                "enabled for vallignus's cgroups".to_string()
            } else {
                "not enabled in the cgroup2 root's subtree_control (on a v1/v2 hybrid host it is bound to cgroup v1)".to_string()
            },
        ));
    }

    let max_userns: u64 = read("/proc/sys/user/max_user_namespaces")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let debian_switch = read("/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    let mut userns = max_userns > 0;
    let mut detail = format!("max_user_namespaces {max_userns}");
    if debian_switch.as_deref() == Some("0") {
        userns = false;
        detail.push_str(", kernel.unprivileged_userns_clone=0");
    }
    if apparmor.as_deref() == Some("1") {
        userns = false;
        detail.push_str(", AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)");
    }
    checks.push(check("user namespaces", userns || root, detail));

    let landlock = crate::isolation::landlock::status();
    checks.push(check(
        "landlock",
        landlock.meets_requirement(),
        format!("{landlock:?}"),
    ));
    let seccomp = read("/proc/sys/kernel/seccomp/actions_avail");
    checks.push(check(
        "seccomp",
        seccomp.is_some(),
        seccomp.map_or("no seccomp filter support".into(), |a| {
            format!("actions: {a}")
        }),
    ));
    let nft = which("nft");
    checks.push(check(
        "nft",
        nft.is_some(),
        nft.map_or("nft not found (apt-get install nftables)".into(), |p| {
            p.display().to_string()
        }),
    ));
    let veth = Path::new("/sys/module/veth").exists()
        || Path::new(&format!(
            "/lib/modules/{release}/kernel/drivers/net/veth.ko"
        ))
        .exists()
        || Path::new(&format!(
            "/lib/modules/{release}/kernel/drivers/net/veth.ko.xz"
        ))
        .exists();
    checks.push(check(
        "veth",
        veth,
        if veth {
            "available"
        } else {
            "no veth module found (it may be built into the kernel)"
        },
    ));
    checks.push(check(
        "privileges",
        true,
        if root {
            "root"
        } else {
            "not root: --user and cgroups outside a delegated subtree are unavailable"
        },
    ));
    Host {
        checks,
        cgroup_mount: mount,
        controllers,
        cgroup_kill,
        userns,
        landlock_abi: landlock.abi(),
        root,
    }
}

/// As root: create and remove a probe cgroup to see whether cgroup.kill exists.
fn probe_cgroup_kill(mount: &Path) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let base = mount.join("vallignus");
    let _ = std::fs::create_dir(&base);
    let probe = base.join(format!("doctor-{}", std::process::id()));
    if std::fs::create_dir(&probe).is_err() {
        return false;
    }
    let ok = probe.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// Whether a run with the given options would start, with the reasons.
fn check_run(args: &DoctorArgs, host: &Host) -> (bool, Vec<String>) {
    let mut problems = Vec::new();
    let mut level = args.isolation.unwrap_or_default();
    let mut memory = args.memory_max;
    let mut pids = args.pids_max;
    let mut cpu = args.cpu_max;
    let mut run_as = args.user;
    let mut credentials = args.credential.clone();
    if let Some(path) = &args.policy {
        match crate::policy::file::load(path) {
            Ok(f) => {
                use crate::policy::file::SecurityLevel;
                if args.isolation.is_none() {
                    if let Some(l) = f.security_context.level {
                        level = match l {
                            SecurityLevel::Standard => Level::Standard,
                            SecurityLevel::Strict => Level::Strict,
                            SecurityLevel::Unconfined => Level::None,
                        };
                    }
                }
                memory = memory.or(f.constraints.memory);
                pids = pids.or(f.constraints.pids);
                cpu = cpu.or(f.constraints.cpu);
                if run_as.is_none() {
                    if let Some(u) = &f.security_context.user {
                        match user::resolve(&u.to_string()) {
                            Ok(r) => run_as = Some(r),
                            Err(e) => problems.push(e),
                        }
                    }
                }
                for c in &f.credentials {
                    if !credentials.iter().any(|have| have.name == c.name) {
                        credentials.push(c.clone());
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let no_cgroup = host.cgroup_mount.is_none()
        || (!host.cgroup_kill && std::env::var_os(cgroup::CGROUP_ROOT_ENV).is_none());
    if no_cgroup && !args.best_effort {
        problems.push("no usable cgroup: run as root on a host with cgroup2 (or set VALLIGNUS_CGROUP_ROOT), or use --best-effort".into());
    }
    for (asked, name) in [
        (memory.is_some(), "memory"),
        (pids.is_some(), "pids"),
        (cpu.is_some(), "cpu"),
    ] {
        if asked && !host.controllers.iter().any(|c| c == name) && !args.best_effort {
            problems.push(format!(
                "the {name} controller is not enabled here, so its limit cannot be enforced"
            ));
        }
    }
    let ns = level
        .namespaces()
        .union(args.unshare.unwrap_or_default())
        .normalized();
    if ns.any() && !host.root && !host.userns {
        problems.push(format!("namespaces {ns} need root or unprivileged user namespaces, which this host does not allow"));
    }
    if run_as.is_some() && !host.root {
        problems.push("--user needs root".into());
    }
    if level != Level::None && host.landlock_abi == 0 {
        problems.push("note: landlock is unavailable; file rules will not be enforced".into());
    }
    // Credentials: the secret must be readable now (its value is never
    // shown); the proxy that injects it needs root.
    for c in &credentials {
        match c.load(|k| std::env::var_os(k)) {
            Ok(_) => problems.push(format!(
                "note: credential {}: secret present; injected for {}",
                c.info().name,
                c.info().hosts.join(", ")
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !credentials.is_empty() && !nix::unistd::geteuid().is_root() {
        problems.push("credentials need the policy proxy, which needs root".into());
    }
    let ok = problems.iter().all(|p| p.starts_with("note:"));
    (ok, problems)
}

pub fn execute(args: DoctorArgs) -> u8 {
    let host = probe_host();
    let (would_run, problems) = check_run(&args, &host);
    if args.json {
        let out = serde_json::json!({
            "checks": host.checks,
            "run": { "would_start": would_run, "problems": problems },
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for c in &host.checks {
            println!(
                "{:<18} {:<4} {}",
                c.name,
                if c.ok { "ok" } else { "NO" },
                c.detail
            );
        }
        println!();
        if would_run {
            println!("run: would start");
        } else {
            println!("run: would NOT start");
        }
        for p in &problems {
            println!("  - {p}");
        }
    }
    if would_run {
        0
    } else {
        1
    }
}
