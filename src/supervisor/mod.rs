//! `vallignus run`: one linear, commented setup (compare Firecracker's
//! jailer), then the watch loop, then teardown. The order matters and
//! follows DESIGN.md "The run pipeline":
//!
//! 1. validate what this build can enforce (fail closed)
//! 2. signals: block and read them from a signalfd (before any child exists)
//! 3. reap what dead supervisors left behind
//! 4. open the session
//! 5. create the run's cgroup (or, with --best-effort, a process group)
//! 6. fork the child straight into the cgroup; it waits for "go"
//! 7. go: the child sets itself up and execs the agent
//! 8. supervise until every process of the run is gone
//! 9. teardown: remove the cgroup, write the final events and session.json,
//!    then seal the session (seal.json, signed with the auth store's key)

pub mod alert;
pub mod channel;
mod child;
pub mod console;
pub mod containment;
pub mod environment;
mod init;
pub mod interception;
pub mod journal;
pub mod output;
pub mod private_dirs;
pub mod reap;
pub mod record;
pub mod spawn;
pub mod violation;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cgroup::{self, Cgroup, CgroupError};
use crate::policy::{NetMode, RunPolicy};
use crate::session::meta::{Enforcement, Limits, SupervisorInfo};
use crate::session::seal::SealError;
use crate::session::store::{SessionError, Store};
use crate::session::{id, Event, Status};
use console::Console;
use containment::Containment;
use journal::Journal;
use output::{OutputCaps, Recorder};
use record::Record;
use spawn::SpawnError;
use watch::{Outcome, WatchConfig};

/// Signals that end a run gracefully when vallignus receives them.
const HANDLED_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] nix::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot create the run's cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("{0}")]
    Spawn(#[from] SpawnError),
    #[error("cannot write the session id to {path}: {source}")]
    SessionIdFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the console writer: {0}")]
    Console(#[source] std::io::Error),
    /// The command could not be executed (127 not found, 126 not
    /// executable); the message names it.
    #[error("{message}")]
    Exec { message: String, code: u8 },
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Spawn(e) => e.exit_code(),
            RunError::Exec { code, .. } => *code,
            _ => 125,
        }
    }

    /// The child's exec of `program` failed: say which program, and what
    /// ENOENT means for a file that exists (its `#!` interpreter, or a
    /// library it needs, is missing).
    fn exec_failed(program: &str, error: &channel::ChildError) -> Self {
        let errno = nix::errno::Errno::from_raw(error.errno);
        // The file exec found: the path itself, or the first match on PATH.
        let found = if program.contains('/') {
            Some(std::path::PathBuf::from(program)).filter(|p| p.exists())
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(program))
                    .find(|p| p.is_file())
            })
        };
        let message = match (error.errno, &found) {
            (libc::ENOENT, Some(file)) => {
                let at = if program.contains('/') {
                    String::new()
                } else {
                    format!(" (found at {})", file.display())
                };
                format!(
                    "{program}{at}: cannot be run: its interpreter (the #! line) or a library \
                     it needs was not found ({errno})"
                )
            }
            (libc::EISDIR, _) => format!("{program}: is a directory ({errno})"),
            (libc::EACCES, _) if std::path::Path::new(program).is_dir() => {
                format!("{program}: is a directory, not a command ({errno})")
            }
            _ => format!("{program}: {error}"),
        };
        RunError::Exec {
            message,
            code: error.exit_code(),
        }
    }
}

/// What `vallignus run` reports back to the CLI.
#[derive(Debug)]
pub struct RunReport {
    pub exit_code: u8,
    pub session_id: Option<String>,
}

fn note(policy: &RunPolicy, msg: &str) {
    if !policy.quiet {
        eprintln!("vallignus: {msg}");
    }
}

/// Which layers a run enforces; written to `session.json`.
type EnforcementMap = BTreeMap<String, Enforcement>;

fn enforced(map: &mut EnforcementMap, layer: &str, enforced: bool, detail: impl Into<String>) {
    map.insert(
        layer.into(),
        Enforcement {
            enforced,
            detail: detail.into(),
        },
    );
}

pub fn run(command: &[String], policy: &RunPolicy) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let mut enforcement = EnforcementMap::new();

    // 1. What this build cannot enforce yet is an error, not a silent no-op.
    check_enforceable(policy, &mut enforcement)?;

    // 2. Signals. Blocked here (inherited blocked by the child, which
    //    unblocks them before exec) and read from a signalfd in the loop, so
    //    a Ctrl-C at any point is seen and ends the run cleanly. SIGPIPE is
    //    ignored: a closed stdout is an EPIPE to handle, not our death.
    let mut mask = SigSet::empty();
    for s in HANDLED_SIGNALS {
        mask.add(s);
    }
    mask.thread_block().map_err(RunError::Signals)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(RunError::Signals)?;
    crate::sys::ignore_sigpipe()
        .map_err(|e| RunError::Signals(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;

    // 3. Leftovers of supervisors that were SIGKILLed.
    let store = Store::open_default()?;
    let cgroup_base = cgroup::resolve_base();
    reap::reap_leftovers(&store, cgroup_base.as_deref().ok(), |m| note(policy, m));

    // 4. The session (or just an id for the cgroup name with --no-session).
    let me = SupervisorInfo {
        pid: std::process::id() as i32,
        start_time: reap::proc_start_time(std::process::id() as i32).unwrap_or(0),
        cgroup: None,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let limits = Limits {
        max_runtime_secs: policy.max_runtime.map(|d| d.as_secs_f64()),
        max_output_lines: policy.max_output_lines,
        max_output_bytes: policy.max_output_bytes,
        max_requests: policy.max_requests,
        kill_grace_secs: policy.kill_grace.as_secs_f64(),
    };
    let (mut record, mut journal) = if policy.record_session {
        let (mut r, j) = Record::open(store.clone(), command, limits, me.clone(), started)?;
        if let Some(t) = &policy.token_identity {
            r.meta.agent_id = Some(t.agent_id.clone());
            r.meta.owner = Some(t.owner.clone());
            r.meta.policy_id = Some(t.policy_id.clone());
            r.meta.policy_version = Some(t.policy_version);
            r.meta.token_jti = Some(t.jti.clone());
        }
        r.meta.policy_file = policy.policy_file.as_ref().map(|p| p.display().to_string());
        (Some(r), j)
    } else {
        (None, Journal::disabled())
    };
    let session_id = record
        .as_ref()
        .map_or_else(id::generate, |r| r.id().to_string());
    let result = run_session(
        command,
        policy,
        &session_id,
        &me,
        cgroup_base,
        &mut enforcement,
        &mut record,
        &mut journal,
        &signals,
        started,
    );
    match result {
        Ok(report) => Ok(report),
        Err(e) => {
            // Nothing ran (or the agent could not start): say so in the session.
            if let Some(mut r) = record {
                r.meta.error = Some(e.to_string());
                r.meta.enforcement = enforcement;
                r.meta.vallignus_exit_code = Some(i32::from(e.exit_code()));
                // As 0.4.2 wrote a run that could not start: exit code -1
                // (no process ran), its duration, and run_finished.
                let duration_ms = started.elapsed().as_millis() as u64;
                r.meta.exit_code = Some(-1);
                r.meta.duration_ms = Some(duration_ms);
                let _ = journal.emit(&Event::RunFinished { duration_ms });
                let chain = journal.finish().ok().flatten();
                let events = journal.event_count();
                let (home, dir) = (r.home().to_path_buf(), r.dir.clone());
                if let Ok(sync) = r.finish(Status::FailedToStart) {
                    seal_session(&home, &dir, &session_id, chain.as_ref(), events, sync);
                }
            }
            Err(e)
        }
    }
}

/// What `run` would enforce with `policy`, checked the way `run` checks it
/// before it starts anything (`vallignus doctor`): the token, the child's
/// plan (user, namespaces, landlock, seccomp, network mode, CA and
/// credentials), the cgroup base and its controllers, and the tools the
/// network path needs. What it leaves behind is what any run creates first
/// and keeps: vallignus's base cgroup and `/run/vallignus/tls/` (the probe
/// CA bundle in it is removed).
pub fn preflight(policy: &RunPolicy) -> Result<EnforcementMap, RunError> {
    let mut enforcement = EnforcementMap::new();
    check_enforceable(policy, &mut enforcement)?;
    let probe_id = format!("preflight-{}", std::process::id());
    let (plan, _interception) = child_plan(&["true".into()], policy, &probe_id, &mut enforcement)?;
    if plan.namespaces.user && crate::isolation::namespaces::max_user_namespaces() == Some(0) {
        return Err(RunError::Unsupported(format!(
            "cannot create the namespaces {}: user namespaces are disabled on this host \
             (user.max_user_namespaces = 0)",
            plan.namespaces
        )));
    }
    let controllers = policy.cgroup.controllers();
    match cgroup::resolve_base().and_then(|base| {
        cgroup::check_controllers(&base, &controllers)?;
        Ok(base)
    }) {
        Ok(base) => {
            enforced(&mut enforcement, "cgroup", true, base.display().to_string());
            record_limits(&mut enforcement, &policy.cgroup, policy, &[]);
        }
        Err(e) if policy.best_effort => {
            enforced(&mut enforcement, "cgroup", false, e.to_string());
        }
        Err(e) => return Err(e.into()),
    }
    if plan.network_mode == Some(NetMode::Proxy) {
        if let Err(e) = crate::net::netns::check_tools() {
            return Err(RunError::Unsupported(format!("network: {e}")));
        }
        enforced(
            &mut enforcement,
            "network",
            true,
            policy.network.as_ref().map_or_else(String::new, |n| {
                format!("policy proxy: {}", n.describe_rules())
            }),
        );
    }
    Ok(enforcement)
}

fn check_enforceable(policy: &RunPolicy, enforcement: &mut EnforcementMap) -> Result<(), RunError> {
    if let Some(t) = &policy.token_identity {
        enforced(
            enforcement,
            "token",
            true,
            format!(
                "agent {} ({}), policy {} v{}, jti {}, key {}",
                t.agent_id, t.owner, t.policy_id, t.policy_version, t.jti, t.kid
            ),
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_session(
    command: &[String],
    policy: &RunPolicy,
    session_id: &str,
    me: &SupervisorInfo,
    cgroup_base: Result<std::path::PathBuf, CgroupError>,
    enforcement: &mut EnforcementMap,
    record: &mut Option<Record>,
    journal: &mut Journal,
    signals: &SignalFd,
    started: Instant,
) -> Result<RunReport, RunError> {
    if let Some(path) = &policy.session_id_file {
        std::fs::write(path, format!("{session_id}\n")).map_err(|source| {
            RunError::SessionIdFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    let _ = journal.emit(&Event::RunStarted {
        command: command.to_vec(),
        cwd: record
            .as_ref()
            .map(|r| r.meta.cwd.clone())
            .unwrap_or_default(),
    });

    // The child's plan (user, namespaces, landlock ruleset, seccomp filters,
    // environment) is checked and built before anything is created, so a
    // bad --rw or profile leaves no cgroup behind.
    let (mut plan, interception) = child_plan(command, policy, session_id, enforcement)?;

    // 5. Containment: the run's own cgroup with its controller limits, or
    //    (best effort) a process group.
    let limits = &policy.cgroup;
    let containment = match cgroup_base.and_then(|base| {
        let limits_ok = limits_for_run(&base, limits, policy, enforcement)?;
        let cg =
            Cgroup::create(base.join(cgroup::run_cgroup_name(me.pid, me.start_time, session_id)))?;
        if limits_ok && policy.best_effort {
            // One limit the kernel refuses costs that limit, not the
            // cgroup (and with it cgroup.kill and every other limit).
            let failed = cg.apply_each(limits);
            for (file, _, e) in &failed {
                note(
                    policy,
                    &format!("not enforced (--best-effort): {file}: {e}"),
                );
            }
            record_limits(enforcement, limits, policy, &failed);
        } else if limits_ok {
            if let Err(e) = cg.apply(limits) {
                let _ = cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }) {
        Ok(cg) => {
            enforced(enforcement, "cgroup", true, cg.path().display().to_string());
            if let Some(r) = record.as_mut() {
                if let Some(s) = r.meta.supervisor.as_mut() {
                    s.cgroup = Some(cg.path().display().to_string());
                }
            }
            Some(cg)
        }
        Err(e) if policy.best_effort => {
            note(
                policy,
                &format!("not enforced (--best-effort): no cgroup: {e}; using a process group"),
            );
            enforced(enforcement, "cgroup", false, e.to_string());
            for (file, _) in limits.files() {
                enforced(enforcement, file, false, "no cgroup");
            }
            enforced(
                enforcement,
                "process_group",
                true,
                "teardown signals the agent's process group; a process that calls setsid escapes it \
                 unless the run has a PID namespace (killing its init ends every process in it)",
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(r) = record.as_mut() {
        r.meta.enforcement = enforcement.clone();
        if let Err(e) = r.save() {
            if let Some(cg) = containment {
                remove_containment(Containment::Cgroup(cg), policy);
            }
            return Err(e.into());
        }
    }

    // 6. Fork into the cgroup and the namespaces; the child waits for "go".
    if let Some(r) = record.as_mut() {
        r.meta.enforcement = enforcement.clone();
    }
    let forked = spawn::fork(&mut plan, containment.as_ref().map(Cgroup::dir_fd));
    let pending = match forked {
        Ok(p) => p,
        Err(e) => {
            // Nothing was started: the cgroup must not outlive this error.
            if let Some(cg) = containment {
                remove_containment(Containment::Cgroup(cg), policy);
            }
            return Err(match e {
                SpawnError::Fork(err) if plan.namespaces.any() => RunError::Unsupported(format!(
                    "cannot create the namespaces {} for the agent: {err}{}",
                    plan.namespaces,
                    if plan.namespaces.user {
                        " (are unprivileged user namespaces allowed? see `vallignus doctor`)"
                    } else {
                        ""
                    }
                )),
                other => other.into(),
            });
        }
    };
    let containment = match containment {
        Some(cg) => Containment::Cgroup(cg),
        None => Containment::ProcessGroup { pgid: pending.pid },
    };

    // Parent side of the setup, while the child waits: the user
    // namespace's uid/gid maps; loopback and nft rules in its network
    // namespace, and the policy proxy listening there before it starts.
    let parent_setup = if plan.namespaces.user {
        spawn::write_id_maps(pending.pid, spawn::IdMap::for_run(plan.run_as))
            .map_err(RunError::from)
    } else {
        Ok(())
    };
    let network = parent_setup.and_then(|()| match &policy.network {
        Some(req) if plan.network_mode == Some(NetMode::Proxy) => {
            start_network(&pending, req, interception, enforcement).map(Some)
        }
        _ => Ok(None),
    });
    if let Some(r) = record.as_mut() {
        r.meta.enforcement = enforcement.clone();
    }

    // 7. Go. The child reports a failed step (exit 125/126/127) or execs.
    if let Some(r) = record.as_mut() {
        let mut names: Vec<String> = plan
            .env
            .iter()
            .map(|e| {
                let b = e.as_bytes();
                String::from_utf8_lossy(&b[..b.iter().position(|&c| c == b'=').unwrap_or(b.len())])
                    .into_owned()
            })
            .collect();
        if let Ok(Some(net)) = &network {
            names.extend(net.env.iter().map(|(k, _)| k.clone()));
        }
        names.sort();
        names.dedup();
        r.meta.agent_env = names;
    }
    let started_ok = network.and_then(|net| {
        let env = net.as_ref().map(|n| n.env.clone()).unwrap_or_default();
        pending.go(&env).map(|()| net).map_err(|e| match e {
            SpawnError::Child(c) if c.stage == channel::Stage::Exec => {
                RunError::exec_failed(&command[0], &c)
            }
            SpawnError::Child(c) if c.stage == channel::Stage::Mounts => plan
                .private_dirs
                .failure(c.detail, nix::errno::Errno::from_raw(c.errno))
                .map_or(RunError::from(e), RunError::Unsupported),
            other => RunError::from(other),
        })
    });
    let mut network = match started_ok {
        Ok(net) => net,
        Err(e) => {
            // The child still waits for go. Kill it through its pidfd
            // first: with a process group (no cgroup) it has not called
            // setsid yet, so there is no group to signal, and waiting
            // for it alone would wait forever.
            let _ = crate::sys::pidfd_send_signal(
                std::os::fd::AsFd::as_fd(&pending.pidfd),
                libc::SIGKILL,
            );
            let _ = containment.ensure_empty(Duration::from_secs(2));
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pending.pid), None);
            remove_containment(containment, policy);
            return Err(e);
        }
    };
    let child = pending.into_running();
    let _ = journal.emit(&Event::ProcessStarted { pid: child.pid });

    // 8. Supervise. Threads may exist from here on: the terminal writer,
    //    and, once the output fills a batch, the session writer's (the
    //    other core records; a run with little output never starts them).
    let mut console = Console::start().map_err(RunError::Console)?;
    journal.allow_threads();
    let mut recorder = Recorder::new(OutputCaps {
        max_lines: policy.max_output_lines,
        max_bytes: policy.max_output_bytes,
    });
    let max_spend = network
        .as_ref()
        .and_then(|n| n.interception.as_ref())
        .and_then(|i| i.spend.as_ref())
        .map(|s| s.ledger.budget());
    let mut outcome = watch::watch(
        child,
        &containment,
        journal,
        &mut recorder,
        &mut console,
        signals,
        network.as_mut().map(|n| &mut n.proxy),
        &WatchConfig {
            started,
            max_requests: policy.max_requests,
            log_request_violations: policy.log_request_violations,
            max_spend,
            alert: policy
                .alert_webhook
                .as_deref()
                .and_then(|u| alert::Webhook::parse(u).ok()),
            session_id: session_id.to_string(),
            agent_id: policy.token_identity.as_ref().map(|t| t.agent_id.clone()),
            max_runtime: policy.max_runtime,
            memory_max: policy.cgroup.memory_max,
            pids_max: policy.cgroup.pids_max,
            end_on_pids_max: policy.end_on_pids_max,
            kill_grace: policy.kill_grace,
            quiet: policy.quiet,
        },
    );
    console.finish();

    // 9. Teardown: nothing may outlive the run.
    if !containment
        .ensure_empty(Duration::from_secs(5))
        .unwrap_or(false)
    {
        note(policy, "some processes of the run could not be killed");
    }
    let stats = match &containment {
        Containment::Cgroup(cg) => Some(cg.stats()),
        Containment::ProcessGroup { .. } => None,
    };
    remove_containment(containment, policy);
    if let Some(net) = network {
        stop_network(net, journal, record);
    }

    // The violation alert, if one was sent: it had the whole teardown to
    // finish, and is waited for until alert::TIMEOUT after it started at
    // most (name lookup included); record how it went.
    if let Some(pending) = outcome.alert.take() {
        let url = pending.url.clone();
        let event = match pending.wait() {
            Ok(status) => Event::AlertSent { url, status },
            Err(error) => Event::AlertFailed { url, error },
        };
        let _ = journal.emit(&event);
    }

    Ok(finish(
        policy, record, journal, &recorder, &outcome, stats, started,
    ))
}

/// The run's network while it runs: the proxy (which holds the listening
/// socket in the agent's namespace), and what the agent's environment needs
/// to find it.
struct Network {
    proxy: crate::net::proxy::ProxyHandle,
    env: Vec<(String, String)>,
    /// The CA and budget (dropping it removes the agent's CA bundle).
    interception: Option<interception::Interception>,
}

/// Build the agent's only way out (see `net::netns`): its namespace has
/// only loopback, nft rules that reject everything else, and the proxy
/// listening on that loopback. Fails closed: any error and the agent does
/// not start.
fn start_network(
    pending: &spawn::Pending,
    req: &crate::policy::NetworkRequest,
    interception: Option<interception::Interception>,
    enforcement: &mut EnforcementMap,
) -> Result<Network, RunError> {
    use crate::net::{decide, netns, proxy};
    use std::os::fd::AsFd;
    let err = |what: &str, e: &dyn std::fmt::Display| {
        RunError::Unsupported(format!("network: {what}: {e}"))
    };
    let rules = req.rules().map_err(|e| err("rules", &e))?;
    let resolve = req
        .resolve
        .iter()
        .map(|r| r.parse::<decide::ResolveOverride>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("--resolve", &e))?;
    let passthrough = req
        .tls_passthrough
        .iter()
        .map(|d| crate::policy::domain::DomainPattern::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("--tls-passthrough", &e))?;
    let decide_policy = decide::Policy::new(rules, resolve, req.connect_ports.clone(), Vec::new())
        .map_err(|e| err("rules", &e))?
        .with_passthrough(passthrough)
        .with_request_rules(req.request_rules.clone());
    let addr = match req.proxy_port {
        Some(port) => std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
        None => netns::PROXY_ADDR,
    };
    let listener = netns::setup(
        netns::NsTarget::Pidfd {
            pidfd: pending.pidfd.as_fd(),
            pid: pending.pid,
        },
        addr,
    )
    .map_err(|e| err("cannot set up the network namespace", &e))?;
    // Each proxied connection costs two fds (client and upstream): raise
    // the supervisor's soft limit (after the fork, so the agent keeps its own).
    if let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let want = hard.min(65_536);
        if soft < want {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                want,
                hard,
            );
        }
    }
    let mut cfg = proxy::ProxyConfig::new(decide_policy);
    cfg.max_requests = req.max_requests;
    if let Some(i) = &interception {
        cfg.intercept = Some(Arc::clone(&i.interceptor));
        cfg.spend = i.spend.clone();
        cfg.credentials = i.credentials.clone();
    }
    let proxy = proxy::start(listener, cfg).map_err(|e| err("the proxy cannot start", &e))?;
    let url = format!("http://{addr}");
    let mut env = Vec::new();
    for key in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        env.push((key.to_string(), url.clone()));
        env.push((key.to_ascii_lowercase(), url.clone()));
    }
    for key in ["NO_PROXY", "no_proxy"] {
        env.push((key.to_string(), "localhost,127.0.0.1,::1".to_string()));
    }
    if let Some(i) = &interception {
        env.extend(i.env());
        enforced(
            enforcement,
            "tls_interception",
            true,
            format!(
                "the run's own CA ends the agent's TLS (bundle {}); upstreams verified against the system roots{}{}",
                i.bundle.display(),
                if req.upstream_ca.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and {}",
                        req.upstream_ca
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                if req.tls_passthrough.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; passthrough (not intercepted, not metered): {}",
                        req.tls_passthrough.join(", ")
                    )
                }
            ),
        );
        if let Some(creds) = &i.credentials {
            let list: Vec<String> = creds.listing().iter().map(ToString::to_string).collect();
            enforced(
                enforcement,
                "credentials",
                true,
                format!(
                    "the agent holds placeholders; the proxy puts the secrets in request headers to their hosts only: {}",
                    list.join("; ")
                ),
            );
        }
        if let (Some(usd), Some(_)) = (req.max_spend_usd, &i.spend) {
            enforced(
                enforcement,
                "max_spend_usd",
                true,
                format!(
                    "${usd}: OpenAI chat/Responses and Anthropic messages priced by their usage ({})",
                    req.prices.as_ref().map_or_else(
                        || "shipped price table".to_string(),
                        |p| format!("shipped price table + {}", p.display())
                    )
                ),
            );
        }
    }
    enforced(
        enforcement,
        "network",
        true,
        format!(
            "proxy at {addr} in the agent's namespace, which has only loopback (no route out; nft rejects everything else); {}{}{}",
            req.describe_rules(),
            req.max_requests.map_or(String::new(), |n| format!(", max_requests {n}")),
            if req.connect_ports.is_empty() {
                String::new()
            } else {
                format!(
                    ", CONNECT ports {}",
                    req.connect_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
                )
            }
        ),
    );
    Ok(Network {
        proxy,
        env,
        interception,
    })
}

/// Stop the proxy and record its last requests and counters. Closing its
/// listening socket is the last reference to the agent's network namespace
/// once the agent is gone: the kernel removes the namespace and its rules.
fn stop_network(mut net: Network, journal: &mut Journal, record: &mut Option<Record>) {
    let _ = net.proxy.shutdown();
    for r in net.proxy.drain_records() {
        let _ = journal.emit(&Event::NetRequest(Box::new(r)));
    }
    let c = net.proxy.counters();
    let spent = net
        .interception
        .as_ref()
        .and_then(|i| i.spend.as_ref())
        .map(|s| s.spent());
    if let Some(r) = record.as_mut() {
        r.meta.allowed_requests = Some(c.allowed);
        r.meta.denied_requests = Some(c.denied);
        r.meta.total_requests = Some(c.total);
        if let Some(spent) = spent {
            r.meta.spend_usd = Some(spent.to_usd_f64());
        }
    }
    drop(net.interception.take());
}

/// Build the child's plan from the policy, check that this supervisor can
/// carry it out, and record the layers in `enforcement`.
fn child_plan(
    command: &[String],
    policy: &RunPolicy,
    session_id: &str,
    enforcement: &mut EnforcementMap,
) -> Result<(child::ChildPlan, Option<interception::Interception>), RunError> {
    let as_root = nix::unistd::geteuid().is_root();
    let iso = &policy.isolation;
    let mut namespaces = iso.namespaces();
    let network_mode = network_mode(policy, as_root, enforcement)?;
    // Behind the proxy, TLS is intercepted: the run's CA and the bundle
    // the agent reads (named in the landlock rules below) exist from here.
    let interception = match (&policy.network, network_mode) {
        (Some(req), Some(NetMode::Proxy)) => Some(
            interception::Interception::prepare(session_id, req)
                .map_err(|e| RunError::Unsupported(format!("network: {e}")))?,
        ),
        _ => None,
    };
    if matches!(network_mode, Some(NetMode::None | NetMode::Proxy)) {
        namespaces.net = true;
        // Without root, a network namespace needs a user namespace.
        namespaces.user |= !as_root;
    }
    if iso.run_as.is_some() && !as_root {
        return Err(RunError::Unsupported(
            "--user needs root (only root can switch the agent to another user)".into(),
        ));
    }
    if namespaces.any() {
        enforced(enforcement, "namespaces", true, namespaces.to_string());
    }
    let private_dirs = if namespaces.mount {
        let planned = private_dirs::plan(&private_dirs::Inputs {
            tmp_size: iso.tmp_size,
            run_as: iso.run_as.map(|u| (u.uid, u.gid)),
            ca_bundle: interception.as_ref().map(|i| i.bundle.as_path()),
            host_network: !namespaces.net,
            ro: &policy.isolation.fs.ro,
            rw: &policy.isolation.fs.rw,
            cwd: std::env::current_dir().ok(),
        })
        .map_err(RunError::Unsupported)?;
        for (key, run) in [("private_tmp", false), ("private_run", true)] {
            if let Some(text) = planned.describe(run, namespaces.pid) {
                enforced(enforcement, key, true, text);
            }
        }
        planned
    } else {
        private_dirs::PrivateDirs::default()
    };
    if let Some(u) = iso.run_as {
        enforced(
            enforcement,
            "user",
            true,
            format!("uid {} gid {}, no supplementary groups", u.uid, u.gid),
        );
    }
    if iso.lock_down() {
        enforced(
            enforcement,
            "capabilities",
            true,
            "all dropped (bounding set emptied), no_new_privs",
        );
    }
    // A secret read from a file must stay out of the agent's reach: hidden
    // by landlock (a run whose rules would grant the file fails), so a run
    // without landlock cannot take file credentials.
    let secret_files = interception
        .as_ref()
        .map(interception::Interception::secret_files)
        .unwrap_or_default();
    if !secret_files.is_empty() && !iso.landlock() {
        return Err(RunError::Unsupported(format!(
            "a credential's secret comes from {}, which an agent without landlock could read: \
             use --isolation standard (landlock hides the file), or read the secret from an \
             environment variable",
            secret_files[0].display()
        )));
    }
    let landlock = if iso.landlock() {
        let bundle = interception.as_ref().map(|i| i.bundle.as_path());
        Some(prepare_landlock(
            policy,
            namespaces,
            bundle,
            &secret_files,
            enforcement,
        )?)
    } else {
        None
    };
    let profile = iso.seccomp_profile();
    let seccomp = crate::isolation::seccomp::compile(&profile)
        .map_err(|e| RunError::Unsupported(format!("seccomp: {e}")))?;
    match &seccomp {
        Some(compiled) => enforced(
            enforcement,
            "seccomp",
            true,
            format!(
                "profile {} ({:?}): filters {}",
                compiled.profile(),
                compiled.arch(),
                compiled.filter_names().collect::<Vec<_>>().join(", ")
            ),
        ),
        None => enforced(
            enforcement,
            "seccomp",
            false,
            "profile none: no system call filter (--seccomp none, or --isolation none without \
             --seccomp)",
        ),
    }
    let env_policy = environment::EnvPolicy {
        clear: policy.env.clear || iso.level == crate::isolation::namespaces::Level::Strict,
        ..policy.env.clone()
    };
    let base: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    let mut env = environment::build(&base, &env_policy);
    if let Some(i) = &interception {
        // The real secrets stay with vallignus, even with --env KEY.
        let hidden = i.secret_sources();
        env.retain(|(k, _)| !hidden.iter().any(|h| k == h.as_str()));
    }
    if env_policy.clear {
        enforced(
            enforcement,
            "environment",
            true,
            format!(
                "cleared: the agent gets only {}",
                environment::names(&env).join(", ")
            ),
        );
    }
    let plan = child::ChildPlan {
        env: environment::to_cstrings(&env),
        network_mode,
        landlock,
        seccomp,
        argv: spawn::to_cstrings(command)?,
        namespaces,
        run_as: iso.run_as,
        lock_down: iso.lock_down() || namespaces.any(),
        private_dirs,
    };
    Ok((plan, interception))
}

/// How the agent reaches the network, checked and recorded (the proxy
/// mode is recorded once its address is known, in `start_network`).
fn network_mode(
    policy: &RunPolicy,
    as_root: bool,
    enforcement: &mut EnforcementMap,
) -> Result<Option<NetMode>, RunError> {
    let Some(net) = &policy.network else {
        return Ok(None);
    };
    let has_rules = !net.allow_domains.is_empty()
        || !net.deny_domains.is_empty()
        || net.default_allow
        || net.token_domains.is_some()
        || net.max_requests.is_some()
        || net.max_spend_usd.is_some();
    let mut mode = net.mode;
    if mode == NetMode::Host && has_rules {
        return Err(RunError::Unsupported(format!(
            "--net host cannot enforce the network rules of {}: use --net proxy (or none)",
            net.sources.join(", ")
        )));
    }
    if mode == NetMode::Proxy && !as_root {
        let why = "the policy proxy needs root (it joins the agent's network namespace to listen there and apply nft rules)";
        if !policy.best_effort {
            return Err(RunError::Unsupported(format!(
                "{why}; use --net none, or --best-effort for no network"
            )));
        }
        note(
            policy,
            &format!("not enforced (--best-effort): {why}; the agent gets no network at all"),
        );
        mode = NetMode::None;
    }
    match mode {
        NetMode::None => {
            let detail = if has_rules {
                format!(
                    "no network (loopback only): the rules of {} are enforced as no network at all",
                    net.sources.join(", ")
                )
            } else {
                "no network (loopback only)".to_string()
            };
            enforced(enforcement, "network", true, detail);
        }
        NetMode::Host => enforced(
            enforcement,
            "network",
            false,
            "the host's network, unfiltered (requested with --net host)",
        ),
        NetMode::Proxy => {}
    }
    Ok(Some(mode))
}

/// Build the landlock ruleset (before the fork) and record what it enforces.
fn prepare_landlock(
    policy: &RunPolicy,
    namespaces: crate::isolation::namespaces::Namespaces,
    ca_bundle: Option<&std::path::Path>,
    secret_files: &[std::path::PathBuf],
    enforcement: &mut EnforcementMap,
) -> Result<crate::isolation::landlock::Prepared, RunError> {
    use crate::isolation::landlock::{self, FsContext, FsPolicy, Requirement};
    let ctx = FsContext::from_env().map_err(|e| RunError::Unsupported(e.to_string()))?;
    let mut flags = policy.isolation.fs.clone();
    if let Some(bundle) = ca_bundle {
        // The run's CA bundle, read-only (under /run, hidden otherwise).
        flags.ro.push(bundle.to_path_buf());
    }
    flags.secrets.extend(secret_files.iter().cloned());
    if namespaces.mount && std::path::Path::new("/dev/shm").is_dir() {
        // The agent's /dev/shm is its own tmpfs then (python's
        // multiprocessing needs it); the host's is out of its reach.
        flags.rw.push("/dev/shm".into());
    }
    let fs =
        FsPolicy::from_flags(&flags, &ctx).map_err(|e| RunError::Unsupported(e.to_string()))?;
    let requirement = if policy.best_effort {
        Requirement::BestEffort
    } else {
        Requirement::Strict
    };
    let prepared = landlock::prepare(&fs, requirement)
        .map_err(|e| RunError::Unsupported(format!("landlock: {e}")))?;
    let r = prepared.describe();
    let rules: Vec<String> = r
        .rules
        .iter()
        .map(|rule| format!("{} {:?}", rule.path.display(), rule.access))
        .collect();
    let hidden: Vec<String> = r
        .hidden
        .iter()
        .map(|h| h.path.display().to_string())
        .collect();
    let mut detail = format!(
        "ABI {}; allowed: {}; denied: {}",
        r.abi,
        rules.join(", "),
        hidden.join(", ")
    );
    if !r.not_enforced.is_empty() {
        detail.push_str(&format!("; not enforced: {}", r.not_enforced.join("; ")));
    }
    if !r.enforced {
        note(
            policy,
            &format!("not enforced (--best-effort): landlock: {detail}"),
        );
    }
    enforced(enforcement, "landlock", r.enforced, detail);
    Ok(prepared)
}

/// Make the controllers the limits need available under `base`. Returns
/// whether the limits can be applied; with `--best-effort` a missing
/// controller is recorded as not enforced instead of failing the run.
fn limits_for_run(
    base: &std::path::Path,
    limits: &cgroup::Limits,
    policy: &RunPolicy,
    enforcement: &mut EnforcementMap,
) -> Result<bool, CgroupError> {
    match cgroup::enable_controllers(base, &limits.controllers()) {
        Ok(()) => {
            record_limits(enforcement, limits, policy, &[]);
            Ok(true)
        }
        Err(e) if policy.best_effort => {
            note(policy, &format!("not enforced (--best-effort): {e}"));
            for (file, _) in limits.files() {
                enforced(enforcement, file, false, format!("not enforced: {e}"));
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Record the limit files of `limits`, one entry per file (io.max has a
/// rule per device, listed together). A file with a value in `failed` (a
/// best-effort write the kernel refused) is not enforced, and its entry
/// gives every value with its state.
fn record_limits(
    enforcement: &mut EnforcementMap,
    limits: &cgroup::Limits,
    policy: &RunPolicy,
    failed: &[(&str, String, CgroupError)],
) {
    let mut details: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (file, value) in limits.files() {
        let refused = failed.iter().find(|(f, v, _)| *f == file && *v == value);
        let state = match refused {
            Some((_, _, e)) => format!("{value}: not enforced: {e}"),
            None => format!("{value}: enforced"),
        };
        let detail = if file == "pids.max" && policy.end_on_pids_max {
            format!("{value} (reaching it ends the run)")
        } else {
            value
        };
        let entry = details.entry(file).or_default();
        entry.0.push(detail);
        entry.1.push(state);
    }
    for (file, (values, states)) in details {
        if failed.iter().any(|(f, _, _)| *f == file) {
            enforced(enforcement, file, false, states.join("; "));
        } else {
            enforced(enforcement, file, true, values.join("; "));
        }
    }
}

fn remove_containment(containment: Containment, policy: &RunPolicy) {
    if let Containment::Cgroup(cg) = containment {
        let path = cg.path().display().to_string();
        if let Err(e) = cg.remove() {
            note(
                policy,
                &format!("cannot remove the run's cgroup {path}: {e}"),
            );
        }
    }
}

fn finish(
    policy: &RunPolicy,
    record: &mut Option<Record>,
    journal: &mut Journal,
    recorder: &Recorder,
    outcome: &Outcome,
    stats: Option<crate::cgroup::CgroupStats>,
    started: Instant,
) -> RunReport {
    use crate::session::Stream;
    let duration = outcome.ended.duration_since(started);
    let (child_code, child_signal) = match outcome.agent_status {
        Some((code, signal)) => (Some(code), signal),
        None => (None, None),
    };
    let exit_code: u8 = match (&outcome.violation, child_code) {
        (Some(v), _) => v.exit_code(),
        (None, Some(code)) => code.clamp(0, 255) as u8,
        (None, None) => 125,
    };
    let _ = journal.emit(&Event::RunFinished {
        duration_ms: duration.as_millis() as u64,
    });
    let chain = journal.finish().unwrap_or_else(|e| {
        note(policy, &format!("cannot write the last events: {e}"));
        None
    });

    let Some(mut r) = record.take() else {
        return RunReport {
            exit_code,
            session_id: None,
        };
    };
    let m = &mut r.meta;
    m.exit_code = child_code;
    m.exit_signal = child_signal;
    m.vallignus_exit_code = Some(i32::from(exit_code));
    m.duration_ms = Some(duration.as_millis() as u64);
    m.stdout_lines = recorder.lines(Stream::Stdout);
    m.stderr_lines = recorder.lines(Stream::Stderr);
    m.stdout_bytes = Some(recorder.bytes(Stream::Stdout));
    m.stderr_bytes = Some(recorder.bytes(Stream::Stderr));
    if let Some(v) = &outcome.violation {
        m.termination_reason = Some(v.reason().into());
        m.termination_limit_value = Some(v.limit_value());
        m.termination_observed_value = Some(v.observed_value());
        m.termination_observed_ms = v.observed_ms();
    }
    m.stats = stats;
    let status = if outcome.violation.is_some() {
        Status::Terminated
    } else {
        Status::Finished
    };
    let id = r.id().to_string();
    let (home, dir) = (r.home().to_path_buf(), r.dir.clone());
    match r.finish(status) {
        Ok(sync) => seal_session(
            &home,
            &dir,
            &id,
            chain.as_ref(),
            journal.event_count(),
            sync,
        ),
        Err(e) => note(policy, &format!("cannot write session.json: {e}")),
    }
    note(policy, &format!("session {id} (vallignus replay {id})"));
    RunReport {
        exit_code,
        session_id: Some(id),
    }
}

/// The last act of a recorded run, after the final session.json: sign the
/// session with the active key of `<home>/auth`, creating the first key as
/// `vallignus auth init` would if there is none. A failure is a warning
/// (printed even with --quiet: the session is then not verifiable), never
/// a different exit code; a session whose chain or session.json could not
/// be written is not sealed.
fn seal_session(
    home: &std::path::Path,
    dir: &std::path::Path,
    id: &str,
    chain: Option<&crate::session::writer::Finished<crate::session::direct::DirectFile>>,
    events: u64,
    sync: record::FinalSync,
) {
    let now = std::time::SystemTime::now();
    // Hash and sign while session.json is flushed; write the seal only
    // once the file it vouches for is on the disk, so that a crash can
    // never leave a durable seal over a session.json that is not.
    let prepared = chain.ok_or(SealError::NoChain).and_then(|chain| {
        let end = crate::session::seal::ChainEnd {
            last_event_hash: &chain.last_hash,
            event_count: events,
            log_hashes: chain.log_hashes.as_ref(),
        };
        crate::session::seal::prepare_with_active_key(home, dir, id, &end, now)
    });
    if let Err(e) = sync.wait() {
        eprintln!("vallignus: warning: session {id}: session.json may not be on the disk: {e}");
    }
    if let Err(e) = prepared.and_then(crate::session::seal::PreparedSeal::write) {
        eprintln!("vallignus: warning: session {id} is not sealed: {e}");
    }
}
