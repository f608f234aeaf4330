//! `vallignus doctor [--json] [--policy FILE] [run flags]`: what this host can
//! enforce, and whether a run with the given policy would start (and why
//! not). Probes only read kernel interfaces; nothing is changed except that,
//! as root, a probe cgroup is created and removed to test cgroup.kill.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::cgroup;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    /// The run to check: every `run` flag (--policy, --token, --isolation, --user,
    /// --memory-max, --allow-domain, --credential, ...), resolved exactly as `run` does.
    #[command(flatten)]
    run: super::run::RunFlags,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
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
    // The controllers vallignus's base cgroup can hand to its runs (the
    // base run uses: $VALLIGNUS_CGROUP_ROOT, or <mount>/vallignus as root).
    let base = cgroup::resolve_base().ok();
    let controllers: Vec<String> = base
        .as_ref()
        .map(|b| b.join("cgroup.controllers"))
        .or_else(|| mount.as_ref().map(|m| m.join("cgroup.subtree_control")))
        .and_then(|f| std::fs::read_to_string(f).ok())
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
                format!(
                    "enabled for vallignus's cgroups ({})",
                    base.as_ref()
                        .map_or("the cgroup2 root".into(), |b| b.display().to_string())
                )
            } else {
                format!(
                    "not offered to {} (on a v1/v2 hybrid host it is bound to cgroup v1)",
                    base.as_ref()
                        .map_or("the cgroup2 root".into(), |b| b.display().to_string())
                )
            },
        ));
    }

    let max_userns = crate::isolation::namespaces::max_user_namespaces().unwrap_or(0);
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
    // Root is exempt from the unprivileged switches, not from the count:
    // user.max_user_namespaces = 0 stops root too (and the standard and
    // strict levels always make one).
    checks.push(check(
        "user namespaces",
        if root { max_userns > 0 } else { userns },
        detail,
    ));

    let landlock = crate::isolation::landlock::status();
    checks.push(check(
        "landlock",
        landlock.meets_requirement(),
        landlock.describe(),
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
    let netns = probe_proxy_namespace();
    checks.push(check("proxy namespace", netns.0, netns.1));
    checks.push(check(
        "privileges",
        true,
        if root {
            "root"
        } else {
            "not root: --user and cgroups outside a delegated subtree are unavailable"
        },
    ));
    Host { checks }
}

/// Whether the proxy's network path works: as root, by building it in a
/// throwaway network namespace (loopback, the nft rules, the listening
/// socket); otherwise it cannot be tried.
fn probe_proxy_namespace() -> (bool, String) {
    if !nix::unistd::geteuid().is_root() {
        return (
            false,
            "not tried: the proxy needs root (it joins the agent's network namespace)".into(),
        );
    }
    match crate::net::netns::probe() {
        Ok(()) => (
            true,
            format!(
                "loopback, nft rules and a listener on {} in a throwaway namespace",
                crate::net::netns::PROXY_ADDR
            ),
        ),
        Err(e) => (false, e.to_string()),
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

/// Whether `run` with these flags would start: the flags resolved as `run`
/// resolves them, then the checks `run` makes before it starts anything.
/// The problems (empty when it would start) and what would be enforced.
fn check_run(flags: &super::run::RunFlags) -> (Vec<String>, Vec<Check>) {
    let policy = match super::run::resolve(flags) {
        Ok(p) => p,
        Err(e) => return (vec![e], Vec::new()),
    };
    match crate::supervisor::preflight(&policy) {
        Ok(map) => {
            let layers = map
                .into_iter()
                .map(|(name, e)| Check {
                    name,
                    ok: e.enforced,
                    detail: e.detail,
                })
                .collect();
            (Vec::new(), layers)
        }
        Err(e) => (vec![e.to_string()], Vec::new()),
    }
}

pub fn execute(args: DoctorArgs) -> u8 {
    let host = probe_host();
    let (problems, layers) = check_run(&args.run);
    let would_run = problems.is_empty();
    if args.json {
        let out = serde_json::json!({
            "checks": host.checks,
            "run": { "would_start": would_run, "problems": problems, "enforcement": layers },
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
            println!("run: would start, enforcing:");
            for l in &layers {
                println!(
                    "  {:<16} {:<4} {}",
                    l.name,
                    if l.ok { "yes" } else { "NO" },
                    l.detail
                );
            }
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
