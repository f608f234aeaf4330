//! `vallignus run [OPTIONS] -- CMD...`

use std::path::PathBuf;

use clap::Args;

use crate::cgroup;
use crate::isolation::namespaces::{Level, Namespaces};
use crate::isolation::user::{self, RunAs};
use crate::policy::units::{parse_count, parse_duration, parse_size};
use crate::policy::{narrow, nonzero, RunPolicy};
use crate::supervisor;
use crate::supervisor::environment;

/// The caps shared by `run` and `policy show`, as given (`None`: not given,
/// so the policy file or the default decides; `Some(0)`: no cap).
#[derive(Debug, Clone, Args)]
pub struct CapFlags {
    /// End the run after this long (seconds, or 500ms, 30s, 5m, 1h; 0 = no cap).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<std::time::Duration>,

    /// End the run when stdout+stderr reach this many lines (0 = no cap).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_output_lines: Option<u64>,

    /// End the run when stdout+stderr reach this many bytes (1048576, 512K, 50MB; 0 = no cap).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output_bytes: Option<u64>,

    /// Cap on HTTP requests through the policy proxy (0 = no cap).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_requests: Option<u64>,
}

impl CapFlags {
    /// For the precedence defaults < policy file < flags.
    pub fn overrides(&self) -> crate::policy::file::FlagOverrides {
        crate::policy::file::FlagOverrides {
            max_runtime: self.max_runtime,
            max_output_lines: self.max_output_lines,
            max_output_bytes: self.max_output_bytes,
            max_requests: self.max_requests,
        }
    }
}

/// `--tmp-size`: a size above zero (a tmpfs of size=0 has no limit).
fn parse_tmp_size(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Ok(0) => Err(format!(
            "invalid size {s:?}: the private /tmp needs a size above 0 (tmpfs reads 0 as unlimited)"
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `vallignus run`: the flags, then the command.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: RunFlags,

    /// The command to run, after `--` (`cli::trailing` puts the `--` in
    /// where it is left out).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Every flag of `run`, shared with `doctor` and `policy show` (which
/// resolve them exactly as `run` does, see [`resolve`]).
#[derive(Debug, Args)]
pub struct RunFlags {
    #[command(flatten)]
    caps: CapFlags,

    /// Memory cap of the run (cgroup memory.max): 512M, 2G, bytes. An OOM kill ends the run.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_max: Option<u64>,

    /// Swap cap of the run (cgroup memory.swap.max); 0 = no swap.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_swap_max: Option<u64>,

    /// Cap on the number of processes and threads of the run (cgroup pids.max).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pids_max: Option<u64>,

    /// End the run (pids_max, exit 124) when it reaches --pids-max, instead of only recording
    /// the refused forks as a limit_event.
    #[arg(long)]
    end_on_pids_max: bool,

    /// CPU cap in CPUs, e.g. 0.5 or 2 (cgroup cpu.max over a 100 ms period).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    cpu_max: Option<(u64, u64)>,

    /// I/O cap for one block device, as io.max takes it: "MAJ:MIN rbps=N wbps=N riops=N wiops=N"
    /// (any subset; N or max). Repeat for more devices.
    #[arg(long, value_name = "RULE", value_parser = cgroup::parse_io_max)]
    io_max: Vec<String>,

    /// Isolation level: none (default), standard (PID, mount, IPC, UTS namespaces; private
    /// /tmp; no capabilities; no_new_privs) or strict (standard + no network).
    /// (Default: the policy file's security_context.level, else none.)
    #[arg(long, value_name = "LEVEL", value_parser = Level::parse)]
    isolation: Option<Level>,

    /// Namespaces to add: a comma-separated list of user, pid, mount, net, ipc, uts (or all).
    #[arg(long, value_name = "LIST", value_parser = Namespaces::parse)]
    unshare: Option<Namespaces>,

    /// Run the agent as this user: NAME, UID or UID:GID (needs root). `nobody` on servers.
    #[arg(long, value_name = "USER", value_parser = user::resolve)]
    user: Option<RunAs>,

    /// Let the agent read (and execute) PATH, on top of the default rules (landlock). Repeatable.
    #[arg(long, value_name = "PATH")]
    ro: Vec<PathBuf>,

    /// Let the agent read and write PATH (landlock). Repeatable.
    #[arg(long, value_name = "PATH")]
    rw: Vec<PathBuf>,

    /// Deny the agent PATH even where a default rule would allow it (landlock). Repeatable.
    #[arg(long, value_name = "PATH")]
    hide: Vec<PathBuf>,

    /// Seccomp profile: default, strict, none, or a JSON file (seccompiler's format). Default:
    /// none for --isolation none, default for standard, strict for strict.
    #[arg(long, value_name = "PROFILE")]
    seccomp: Option<crate::isolation::seccomp::Profile>,

    /// Size of the private /tmp and /dev/shm (with a mount namespace; not 0: tmpfs reads
    /// size=0 as unlimited).
    #[arg(long, value_name = "SIZE", value_parser = parse_tmp_size, default_value = "256M")]
    tmp_size: u64,

    /// Time between SIGTERM and SIGKILL at teardown.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2")]
    kill_grace: std::time::Duration,

    /// Policy file (default: /etc/vallignus/policy.yaml when it exists). Flags override it.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Network: none (loopback only), proxy (only the policy proxy; default when any network
    /// rule is given) or host (unfiltered, recorded).
    #[arg(long, value_name = "MODE", value_parser = crate::policy::NetMode::parse)]
    net: Option<crate::policy::NetMode>,

    /// Allow requests to this domain through the proxy (`example.com` exact,
    /// `*.example.com` subdomains only). Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    allow_domain: Vec<String>,

    /// Deny this domain (deny wins over allow). Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    deny_domain: Vec<String>,

    /// Let CONNECT tunnels reach this port (default: 443 only); the TLS SNI check still
    /// applies. Repeatable.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    connect_port: Vec<u16>,

    /// Map HOST:PORT to ADDR for the proxy, as curl's --resolve (an address given this way
    /// counts as named by a rule). Repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR", value_parser = parse_resolve)]
    resolve: Vec<String>,

    /// LLM spend budget in USD for the run (0 = no cap): metered requests inside intercepted
    /// HTTPS (OpenAI chat/Responses, Anthropic messages) are priced by their usage; a request
    /// that could pass the budget gets 402, and reaching it ends the run (budget_exceeded).
    #[arg(long, value_name = "USD", value_parser = parse_spend_flag)]
    max_spend_usd: Option<Budget>,

    /// Price file (YAML, USD per million tokens) over the shipped table; see
    /// prices/default.yaml for the format.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,

    /// Also trust the CA certificates in this PEM file when the proxy verifies an upstream's
    /// TLS (system roots are always trusted). Repeatable.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,

    /// Do not intercept TLS to this domain: its tunnels are spliced as they are (SNI-checked,
    /// counted per connection) for clients that pin certificates. Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    tls_passthrough: Vec<String>,

    /// Give the agent NAME holding a placeholder; the proxy replaces the placeholder in request
    /// headers with the real secret (from vallignus's ENV_VAR, or @FILE) only for requests to
    /// HOST (HTTPS, intercepted) and refuses requests that carry it anywhere else. Repeatable.
    #[arg(long, value_name = "NAME=ENV_VAR@HOST[,HOST...]")]
    credential: Vec<crate::net::credentials::CredentialSpec>,

    /// Give the agent this variable: KEY (from vallignus's environment) or KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY[=VALUE]", value_parser = environment::parse_env_flag)]
    env_vars: Vec<(String, Option<String>)>,

    /// Start the agent from a minimal environment (PATH, HOME, LANG, TERM) plus --env
    /// (implied by --isolation strict).
    #[arg(long)]
    clear_env: bool,

    /// POST a JSON alert here when the run is ended for a violation (http:// only).
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,

    /// Signed token that selects the agent's policy.
    #[arg(
        long,
        env = "VALLIGNUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// Do not record a session (caps are still enforced).
    #[arg(long)]
    no_session: bool,

    /// Write the session id to FILE (for scripts). Not with --no-session: there is no session.
    #[arg(long, value_name = "FILE", conflicts_with = "no_session")]
    session_id_file: Option<PathBuf>,

    /// Run with what this host can enforce instead of failing; the session
    /// records exactly which layers were enforced.
    #[arg(long)]
    best_effort: bool,

    /// Print none of vallignus's own messages.
    #[arg(long, short)]
    quiet: bool,

    /// The policy proxy's port on the agent's loopback (default 61213; vallignus 0.4.2's flag).
    #[arg(long, value_name = "PORT", hide = true)]
    port: Option<u16>,

    /// vallignus 0.4.2 compatibility: its firewall log file; accepted, not written (a warning
    /// says so: requests are net_request events of the session).
    #[arg(long, value_name = "FILE", hide = true)]
    log: Option<PathBuf>,
}

/// `--max-spend-usd` as given: `None` inside is 0, "no cap".
#[derive(Debug, Clone, Copy)]
struct Budget(Option<f64>);

fn parse_spend_flag(s: &str) -> Result<Budget, String> {
    crate::auth::policy::parse_spend(s)
        .map(Budget)
        .map_err(|e| e.to_string())
}

fn parse_resolve(s: &str) -> Result<String, String> {
    s.parse::<crate::net::decide::ResolveOverride>()
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_cpus(s: &str) -> Result<(u64, u64), String> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?}: expected a number like 0.5 or 2"))?;
    cgroup::cpu_max_from_fraction(cpus)
}

/// For building [`RunFlags`] from arguments (`policy check FILE`).
#[derive(clap::Parser)]
struct FlagsOnly {
    #[command(flatten)]
    flags: RunFlags,
}

impl RunFlags {
    /// The flags of `run --policy FILE` and nothing else.
    pub fn with_policy(file: &std::path::Path) -> Result<RunFlags, String> {
        use clap::Parser;
        let mut flags = FlagsOnly::try_parse_from([
            std::ffi::OsStr::new("run"),
            "--policy".as_ref(),
            file.as_os_str(),
        ])
        .map(|f| f.flags)
        .map_err(|e| e.to_string())?;
        // Only the file: not a token from VALLIGNUS_TOKEN.
        flags.token = None;
        Ok(flags)
    }

    fn policy(&self) -> RunPolicy {
        RunPolicy {
            max_runtime: self.caps.max_runtime.filter(|d| !d.is_zero()),
            max_output_lines: self.caps.max_output_lines.and_then(nonzero),
            max_output_bytes: self.caps.max_output_bytes.and_then(nonzero),
            max_requests: self.caps.max_requests.and_then(nonzero),
            cgroup: cgroup::Limits {
                memory_max: self.memory_max.and_then(nonzero),
                // 0 is meaningful here: no swap at all.
                memory_swap_max: self.memory_swap_max,
                pids_max: self.pids_max.and_then(nonzero),
                cpu_max: self.cpu_max,
                io_max: self.io_max.clone(),
            },
            isolation: crate::policy::Isolation {
                level: self.isolation.unwrap_or_default(),
                unshare: self.unshare.unwrap_or_default(),
                run_as: self.user,
                tmp_size: self.tmp_size,
                fs: crate::isolation::landlock::FsFlags {
                    ro: self.ro.clone(),
                    rw: self.rw.clone(),
                    hide: self.hide.clone(),
                    secrets: Vec::new(),
                },
                seccomp: self.seccomp.clone(),
            },
            end_on_pids_max: self.end_on_pids_max,
            kill_grace: self.kill_grace,
            record_session: !self.no_session,
            best_effort: self.best_effort,
            quiet: self.quiet,
            session_id_file: self.session_id_file.clone(),
            token: self.token.clone(),
            env: environment::EnvPolicy {
                clear: self.clear_env,
                pass: self
                    .env_vars
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k.clone())
                    .collect(),
                set: self
                    .env_vars
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                    .collect(),
            },
            ..RunPolicy::default()
        }
    }
}

/// Run; `moved` are 0.4.2's flags found after the command (see
/// `cli::trailing`), for a note.
pub fn execute(args: RunArgs, moved: &[String]) -> u8 {
    let RunArgs { flags, command } = args;
    if !moved.is_empty() && !flags.quiet {
        eprintln!(
            "vallignus: note: {} after the command taken as vallignus's (as vallignus 0.4.2 did); \
             to pass them to the command, start the command after --",
            moved.join(", ")
        );
    }
    let policy = match resolve(&flags) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("vallignus: error: {msg}");
            return 125;
        }
    };
    if !flags.quiet {
        // 0.4.2's firewall options: --port moves the proxy (if there is
        // one); --log has no use here. Say so, token or not.
        let proxied = policy
            .network
            .as_ref()
            .is_some_and(|n| n.mode == crate::policy::NetMode::Proxy);
        if let (Some(port), false) = (flags.port, proxied) {
            eprintln!(
                "vallignus: --port {port} (vallignus 0.4.2) is not used: this run has no policy \
                 proxy (give --token, --allow-domain or --net proxy)"
            );
        }
        if let Some(log) = &flags.log {
            eprintln!(
                "vallignus: --log {} (vallignus 0.4.2) is not written: every request is a \
                 net_request event of the session (vallignus sessions show ID --events N)",
                log.display()
            );
        }
    }
    match supervisor::run(&command, &policy) {
        Ok(report) => report.exit_code,
        Err(e) => {
            super::print_error(&e);
            e.exit_code()
        }
    }
}

/// The effective policy of the run: built-in defaults < policy file <
/// flags, then narrowed by the token. Everything is validated here, before
/// anything touches the system.
pub fn resolve(args: &RunFlags) -> Result<RunPolicy, String> {
    resolve_with_file(args).map(|(p, _)| p)
}

/// [`resolve`], with the policy file's own effective policy (defaults <
/// file < the cap flags) that it was built from, for `policy show` and
/// `policy check`, which print the file's shape.
pub fn resolve_with_file(
    args: &RunFlags,
) -> Result<(RunPolicy, crate::policy::file::EffectivePolicy), String> {
    use crate::policy::file::{self, SecurityLevel, User};
    let mut p = args.policy();

    // The policy file, under the flags.
    let pf = file::load_for_run(args.policy.as_deref()).map_err(|e| super::with_causes(&e))?;
    let eff = file::resolve(pf.as_ref(), &args.caps.overrides());
    p.max_runtime = eff.max_runtime;
    p.max_output_lines = eff.max_output_lines;
    p.max_output_bytes = eff.max_output_bytes;
    p.max_requests = eff.network.max_requests;
    p.alert_webhook = args.alert_webhook.clone().or(eff.alert_webhook.clone());
    p.log_request_violations = eff.violation_action == file::ViolationAction::Log;
    if let Some(url) = &p.alert_webhook {
        crate::supervisor::alert::Webhook::parse(url)?;
    }
    if let Some(f) = &pf {
        p.policy_file = Some(f.source.clone());
        p.cgroup.memory_max = p.cgroup.memory_max.or(eff.memory);
        p.cgroup.pids_max = p.cgroup.pids_max.or(eff.pids);
        p.end_on_pids_max |= eff.end_on_pids_max;
        if p.cgroup.cpu_max.is_none() {
            if let Some(cpus) = eff.cpu {
                p.cgroup.cpu_max = Some(cgroup::cpu_max_from_fraction(cpus)?);
            }
        }
        if args.isolation.is_none() {
            if let Some(level) = f.security_context.level {
                p.isolation.level = match level {
                    SecurityLevel::Standard => Level::Standard,
                    SecurityLevel::Strict => Level::Strict,
                    SecurityLevel::Unconfined => Level::None,
                };
            }
        }
        // The file's environment policy, under the flags (--env of the same
        // name wins because it is applied after).
        for (k, v) in &f.security_context.env {
            match v {
                Some(v) => {
                    if !p.env.set.iter().any(|(fk, _)| fk == k) {
                        p.env.set.insert(0, (k.clone(), v.clone()));
                    }
                }
                None => p.env.pass.push(k.clone()),
            }
        }
        p.env.clear |= f.security_context.clear_env.unwrap_or(false);
        if p.isolation.run_as.is_none() {
            if let Some(u) = &f.security_context.user {
                let spec = match u {
                    User::Name(n) => n.clone(),
                    User::Id(id) => id.to_string(),
                };
                p.isolation.run_as =
                    Some(user::resolve(&spec).map_err(|e| {
                        format!("{}: security_context.user: {e}", f.source.display())
                    })?);
            }
        }
        if let Some(net) = &f.constraints.network {
            let rules = p.network.get_or_insert_with(Default::default);
            rules
                .allow_domains
                .extend(net.allow_domains.iter().map(|d| d.to_string()));
            rules
                .deny_domains
                .extend(net.deny_domains.iter().map(|d| d.to_string()));
            rules.default_allow = eff.network.default_policy == file::DefaultPolicy::Allow;
            rules.max_spend_usd = eff.network.max_spend_usd;
            // The file's --resolve entries first: flags given later win.
            rules.resolve.extend(net.proxy.resolve.iter().cloned());
            rules
                .connect_ports
                .extend(net.proxy.connect_ports.iter().copied());
            rules
                .upstream_ca
                .extend(net.proxy.upstream_ca.iter().cloned());
            rules
                .tls_passthrough
                .extend(net.proxy.tls_passthrough.iter().map(|d| d.to_string()));
            rules.prices.clone_from(&net.proxy.prices);
            rules
                .request_rules
                .extend(net.proxy.requests.iter().cloned());
            rules
                .sources
                .push(format!("policy file {}", f.source.display()));
        }
        if !f.credentials.is_empty() {
            let rules = p.network.get_or_insert_with(Default::default);
            rules.credentials.extend(f.credentials.iter().cloned());
        }
    }

    // --max-spend-usd overrides the policy file (0 = no cap); a token
    // only narrows whatever results.
    if let Some(Budget(flag)) = args.max_spend_usd {
        let rules = p.network.get_or_insert_with(Default::default);
        rules.max_spend_usd = flag;
        if flag.is_some() {
            rules.sources.push("--max-spend-usd".into());
        }
    }

    // The token: verified before anything starts, and it only narrows.
    if p.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err("--token: the token is empty".into());
    }
    let mut token_credentials: Vec<String> = Vec::new();
    if let Some(token) = &p.token {
        let home = crate::session::store::home_dir().map_err(|e| e.to_string())?;
        let v = crate::auth::verify_for_run(&home, token, std::time::SystemTime::now())
            .map_err(|e| format!("--token: {e}"))?;
        let tp = &v.policy;
        let caps = crate::policy::TokenCaps::of(tp)
            .map_err(|e| format!("--token: policy {} v{}: {e}", tp.policy_id, tp.version))?;
        p.max_runtime = narrow(p.max_runtime, caps.max_runtime);
        p.max_output_lines = narrow(p.max_output_lines, caps.max_output_lines);
        p.max_output_bytes = narrow(p.max_output_bytes, caps.max_output_bytes);
        p.max_requests = narrow(p.max_requests, caps.max_requests);
        p.cgroup.memory_max = narrow(p.cgroup.memory_max, caps.memory_max);
        p.cgroup.pids_max = narrow(p.cgroup.pids_max, caps.pids_max);
        p.cgroup.cpu_max = crate::policy::narrow_cpu(p.cgroup.cpu_max, caps.cpu_max);
        let rules = p.network.get_or_insert_with(Default::default);
        // A ceiling, not more allow entries: flags and the policy file can
        // narrow what the token allows, never add to it.
        rules.token_domains = Some(tp.allowed_domains.clone());
        // Deny wins over allow: the token's deny list only takes away.
        rules.deny_domains.extend(tp.deny_domains.iter().cloned());
        rules.max_spend_usd = narrow(rules.max_spend_usd, caps.max_spend_usd);
        // The token's credentials: bound to the agent, not replaceable by
        // a flag or the policy file (see the flag merge below).
        for spec in &tp.credentials {
            let c: crate::net::credentials::CredentialSpec = spec
                .parse()
                .map_err(|e| format!("--token: the policy's credential: {e}"))?;
            rules.credentials.retain(|have| have.name != c.name);
            token_credentials.push(c.name.clone());
            rules.credentials.push(c);
        }
        rules.sources.push(format!(
            "token {} (policy {} v{})",
            v.jti, tp.policy_id, tp.version
        ));
        // An agent that could read the store's signing key could mint its
        // own token and re-seal sessions: a token run is at least at the
        // standard level, whose landlock rules hide the vallignus home (or
        // at the policy's minimum, if that is higher).
        p.isolation.level = p.isolation.level.max(caps.min_level);
        // Best effort would let a host without landlock (or a controller)
        // run the token's agent without the hidden store or its limits.
        if p.best_effort {
            return Err(
                "--best-effort cannot be used with --token: a token's limits and the \
                        hidden auth store must be enforced, or the run must not start"
                    .into(),
            );
        }
        p.token_identity = Some(crate::policy::TokenIdentity {
            agent_id: v.agent_id.clone(),
            owner: v.owner.clone(),
            policy_id: tp.policy_id.clone(),
            policy_version: tp.version,
            jti: v.jti.clone(),
            kid: v.kid.clone(),
        });
    }
    if let Some(n) = p.max_requests {
        let rules = p.network.get_or_insert_with(Default::default);
        rules.max_requests = Some(n);
        rules.sources.push("--max-requests".into());
    }
    if !args.allow_domain.is_empty()
        || !args.deny_domain.is_empty()
        || !args.resolve.is_empty()
        || !args.connect_port.is_empty()
    {
        let rules = p.network.get_or_insert_with(Default::default);
        rules
            .connect_ports
            .extend(args.connect_port.iter().copied());
        rules
            .allow_domains
            .extend(args.allow_domain.iter().cloned());
        rules.deny_domains.extend(args.deny_domain.iter().cloned());
        rules.resolve.extend(args.resolve.iter().cloned());
        rules
            .sources
            .push("--allow-domain/--deny-domain/--resolve".into());
    }
    // The mode: --net, else the proxy when there are rules, else no network
    // at the strict level, else the host's network.
    match args.net {
        Some(mode) => p.network.get_or_insert_with(Default::default).mode = mode,
        None if p.network.is_some() => {}
        None if p.isolation.level == Level::Strict => {
            p.network = Some(crate::policy::NetworkRequest {
                mode: crate::policy::NetMode::None,
                sources: vec!["--isolation strict".into()],
                ..Default::default()
            })
        }
        None => {}
    }
    // TLS settings and credentials shape the proxy; alone they do not ask
    // for one.
    let tls_flags = args.prices.is_some()
        || !args.upstream_ca.is_empty()
        || !args.tls_passthrough.is_empty()
        || !args.credential.is_empty();
    match p.network.as_mut() {
        Some(net) if net.mode == crate::policy::NetMode::Proxy => {
            if let Some(port) = args.port {
                if port == 0 {
                    return Err("--port 0: not a port (1 to 65535)".into());
                }
                net.proxy_port = Some(port);
            }
            if args.prices.is_some() {
                net.prices.clone_from(&args.prices);
            }
            net.upstream_ca.extend(args.upstream_ca.iter().cloned());
            net.tls_passthrough
                .extend(args.tls_passthrough.iter().cloned());
            // A flag replaces a policy-file credential of the same name,
            // never one of the token's (which the token binds to the agent).
            for c in &args.credential {
                if token_credentials.contains(&c.name) {
                    return Err(format!(
                        "--credential {}: the token's policy sets this credential",
                        c.name
                    ));
                }
                net.credentials.retain(|have| have.name != c.name);
                net.credentials.push(c.clone());
            }
        }
        _ if tls_flags => {
            return Err(
                "--prices, --upstream-ca, --tls-passthrough and --credential shape the policy \
                 proxy, which this run does not use (give --allow-domain, or --net proxy)"
                    .into(),
            )
        }
        _ => {}
    }
    if p.end_on_pids_max && p.cgroup.pids_max.is_none() {
        return Err(
            "--end-on-pids-max (or constraints.end_on_pids_max) needs a pids limit: give \
             --pids-max N (or constraints.pids)"
                .into(),
        );
    }
    if let Some(net) = &p.network {
        // Validate the rules now: a bad pattern is a flag error (exit 125),
        // named by its flag when it is one.
        for (flag, list) in [
            ("--allow-domain", &args.allow_domain),
            ("--deny-domain", &args.deny_domain),
        ] {
            for d in list {
                crate::policy::domain::DomainPattern::parse(d)
                    .map_err(|e| format!("{flag} {d:?}: {e}"))?;
            }
        }
        net.rules().map_err(|e| format!("network rules: {e}"))?;
        for d in &net.tls_passthrough {
            crate::policy::domain::DomainPattern::parse(d)
                .map_err(|e| format!("--tls-passthrough {d:?}: {e}"))?;
        }
    }
    Ok((p, eff))
}
