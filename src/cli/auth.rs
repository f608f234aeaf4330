//! `vallignus auth ...`: the auth store's verbs (vallignus 0.4.2's, plus
//! `revoke-agent` and `list-tokens`).
//!
//! Data goes to stdout (a bare token for `issue-token`, so
//! `T=$(vallignus auth issue-token ...)` works); messages go to stderr,
//! prefixed `vallignus:`. Exit codes: 0 success (for `verify-token`: the
//! token is valid), 1 failure (for `verify-token`: the token is invalid, the
//! reason on stderr), 2 a usage error (bad id, bad value, nothing to change).

use std::io::{self, Read, Write};
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crate::auth::policy::{self, PolicyEdit};
use crate::auth::{iso_utc, token, unix_secs, AuthError, AuthStore, TokenError};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create the auth store and its first signing key (does nothing if it exists).
    Init,
    /// Register an agent that tokens can be issued to.
    CreateAgent(CreateAgentArgs),
    /// List the registered agents.
    ListAgents(JsonArgs),
    /// Revoke an agent: its tokens stop verifying and no new ones are issued.
    RevokeAgent(AgentIdArgs),
    /// Create a policy (version 1).
    CreatePolicy(Box<PolicyArgs>),
    /// Create a new version of a policy; old versions (and their tokens) stay valid.
    UpdatePolicy(Box<PolicyArgs>),
    /// List the policies with their latest version.
    ListPolicies(JsonArgs),
    /// Issue a signed token for an agent under a policy's latest version; prints only the token.
    IssueToken(IssueTokenArgs),
    /// Check a token: exit 0 if valid, 1 with the reason if not.
    VerifyToken(TokenArgs),
    /// Show a token's contents WITHOUT verifying it.
    InspectToken(TokenArgs),
    /// Revoke a token by its id (jti).
    RevokeToken(RevokeTokenArgs),
    /// Make a new signing key active; tokens signed with the old one stay valid until they expire.
    RotateKey,
    /// List issued tokens that have not expired (ids and claims, not the tokens).
    ListTokens(JsonArgs),
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CreateAgentArgs {
    #[arg(long, value_name = "ID")]
    agent_id: String,
    #[arg(long)]
    owner: String,
    #[arg(long, default_value = "")]
    description: String,
}

#[derive(Debug, Args)]
pub struct AgentIdArgs {
    #[arg(long, value_name = "ID")]
    agent_id: String,
}

/// Fields of a policy. For `create-policy`, `--allowed-domains` is required
/// and absent limits mean "no cap"; for `update-policy`, absent fields keep
/// their value. A limit of 0 means "no cap".
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[arg(long, value_name = "ID")]
    policy_id: String,
    /// Comma-separated domains: `api.openai.com,*.example.com` ("" = no network).
    #[arg(long, value_name = "CSV")]
    allowed_domains: Option<String>,
    /// A credential the agent's runs get, as `run --credential` (repeatable; for
    /// update-policy, the list given replaces the old one).
    #[arg(long, value_name = "NAME=ENV_VAR@HOST[,HOST...]")]
    credential: Vec<crate::net::credentials::CredentialSpec>,
    /// update-policy: remove every credential.
    #[arg(long, conflicts_with = "credential")]
    no_credentials: bool,
    /// Spending cap in US dollars.
    #[arg(long, value_name = "USD")]
    max_spend_usd: Option<String>,
    /// Cap on HTTP requests.
    #[arg(long, value_name = "N")]
    max_requests: Option<String>,
    /// Wall-clock cap: `300`, `30s`, `5m`, `1h` (whole seconds).
    #[arg(long, value_name = "DURATION")]
    max_runtime: Option<String>,
    /// Cap on stdout+stderr lines.
    #[arg(long, value_name = "N")]
    max_output_lines: Option<String>,
    /// Cap on stdout+stderr bytes: `1048576`, `512K`, `50MB`.
    #[arg(long, value_name = "SIZE")]
    max_output_bytes: Option<String>,
    /// Memory cap of each run (cgroup memory.max): `512M`, `2G` (at least 1M).
    #[arg(long, value_name = "SIZE")]
    memory_max: Option<String>,
    /// Cap on each run's processes and threads (cgroup pids.max).
    #[arg(long, value_name = "N")]
    pids_max: Option<String>,
    /// CPU cap of each run in CPUs, e.g. `0.5` or `2` (cgroup cpu.max).
    #[arg(long, value_name = "CPUS")]
    cpu_max: Option<String>,
    /// Comma-separated domains every run denies, on top of its own deny list ("" = none).
    #[arg(long, value_name = "CSV")]
    deny_domains: Option<String>,
    /// The lowest isolation level of a run: standard or strict (none = no minimum; a token
    /// run is at least standard anyway).
    #[arg(long, value_name = "LEVEL")]
    isolation: Option<String>,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub struct IssueTokenArgs {
    #[arg(long, value_name = "ID")]
    agent_id: String,
    #[arg(long, value_name = "ID")]
    policy_id: String,
    /// Lifetime of the token in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::auth::DEFAULT_TTL_SECS)]
    ttl_seconds: u64,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token (`-` reads it from stdin; default: $VALLIGNUS_TOKEN).
    #[arg(env = "VALLIGNUS_TOKEN", hide_env_values = true)]
    token: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RevokeTokenArgs {
    #[arg(long)]
    jti: String,
}

/// Errors of this verb: the store's, and reading a token from stdin.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("cannot read the token from stdin: {0}")]
    Stdin(io::Error),
    /// Already reported; exit with this code.
    #[error("")]
    Reported(u8),
}

fn exit_code_for(e: &CliError) -> u8 {
    match e {
        CliError::Policy(_)
        | CliError::Auth(
            AuthError::InvalidId(_)
            | AuthError::InvalidPolicy(_)
            | AuthError::InvalidValue { .. }
            | AuthError::Ttl(_)
            | AuthError::EmptyUpdate
            | AuthError::NoChange { .. },
        ) => 2,
        CliError::Reported(code) => *code,
        _ => 1,
    }
}

pub fn execute(cmd: AuthCommand) -> u8 {
    let result = AuthStore::open_default()
        .map_err(CliError::from)
        .and_then(|store| dispatch(&store, cmd, SystemTime::now()));
    match result {
        Ok(()) => 0,
        Err(e @ CliError::Reported(_)) => exit_code_for(&e),
        Err(e) => {
            super::print_error(&e);
            exit_code_for(&e)
        }
    }
}

/// Write to stdout, ignoring a closed pipe (`| head`).
fn out(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.write_all(b"\n");
}

fn out_json(value: &impl serde::Serialize) {
    out(&serde_json::to_string_pretty(value).unwrap_or_default());
}

fn dispatch(store: &AuthStore, cmd: AuthCommand, now: SystemTime) -> Result<(), CliError> {
    match cmd {
        AuthCommand::Init => init(store, now),
        AuthCommand::CreateAgent(a) => {
            let agent = store.create_agent(&a.agent_id, &a.owner, &a.description, now)?;
            eprintln!(
                "vallignus: created agent {} (owner {})",
                agent.agent_id, agent.owner
            );
            Ok(())
        }
        AuthCommand::ListAgents(a) => list_agents(store, a.json),
        AuthCommand::RevokeAgent(a) => {
            if store.revoke_agent(&a.agent_id, now)? {
                eprintln!(
                    "vallignus: revoked agent {}: its tokens no longer verify",
                    a.agent_id
                );
            } else {
                eprintln!("vallignus: agent {} was already revoked", a.agent_id);
            }
            Ok(())
        }
        AuthCommand::CreatePolicy(a) => {
            let edit = policy_edit(&a)?;
            let p = store.create_policy(&a.policy_id, &edit, now)?;
            eprintln!(
                "vallignus: created policy {} version {} (hash {})",
                p.policy_id,
                p.version,
                p.hash()
            );
            Ok(())
        }
        AuthCommand::UpdatePolicy(a) => {
            let edit = policy_edit(&a)?;
            let p = store.update_policy(&a.policy_id, &edit, now)?;
            eprintln!(
                "vallignus: policy {} is now at version {} (hash {}); tokens for older versions stay valid",
                p.policy_id,
                p.version,
                p.hash()
            );
            Ok(())
        }
        AuthCommand::ListPolicies(a) => list_policies(store, a.json),
        AuthCommand::IssueToken(a) => {
            let issued = store.issue_token(&a.agent_id, &a.policy_id, a.ttl_seconds, now)?;
            out(&issued.token);
            eprintln!(
                "vallignus: issued token {} for agent {} under policy {} v{}, key {}, expires {}",
                issued.claims.jti,
                issued.claims.agent_id,
                issued.claims.policy_id,
                issued.claims.policy_version,
                issued.kid,
                iso_utc(issued.claims.exp)
            );
            Ok(())
        }
        AuthCommand::VerifyToken(a) => verify(store, &a, now),
        AuthCommand::InspectToken(a) => inspect(store, &a, now),
        AuthCommand::RevokeToken(a) => {
            let known = store.issued_tokens(now)?.iter().any(|t| t.jti == a.jti);
            if store.revoke_token(&a.jti, now)? {
                eprintln!("vallignus: revoked token {}", a.jti);
                if !known {
                    eprintln!(
                        "vallignus: note: {} is not among the unexpired tokens this store issued",
                        a.jti
                    );
                }
            } else {
                eprintln!("vallignus: token {} was already revoked", a.jti);
            }
            Ok(())
        }
        AuthCommand::RotateKey => {
            let r = store.rotate_key(now)?;
            match r.previous {
                Some(old) => eprintln!(
                    "vallignus: new signing key {}; tokens signed with {old} stay valid until they expire",
                    r.active
                ),
                None => eprintln!("vallignus: new signing key {}", r.active),
            }
            out(&r.active);
            Ok(())
        }
        AuthCommand::ListTokens(a) => list_tokens(store, a.json, now),
    }
}

fn init(store: &AuthStore, now: SystemTime) -> Result<(), CliError> {
    let (kid, created) = store.init(now)?;
    if created {
        eprintln!(
            "vallignus: initialized the auth store at {} (signing key {kid})",
            store.root().display()
        );
    } else {
        eprintln!(
            "vallignus: the auth store at {} is already initialized (signing key {kid})",
            store.root().display()
        );
    }
    Ok(())
}

fn policy_edit(a: &PolicyArgs) -> Result<PolicyEdit, CliError> {
    use policy::PolicyError;
    /// Parse `raw` if given; a unit error names `flag`.
    fn opt<T>(
        flag: &'static str,
        raw: &Option<String>,
        parse: impl Fn(&str) -> Result<T, PolicyError>,
    ) -> Result<Option<T>, PolicyError> {
        raw.as_deref().map(parse).transpose().map_err(|e| match e {
            PolicyError::Unit(source) => PolicyError::FlagUnit { flag, source },
            other => other,
        })
    }
    Ok(PolicyEdit {
        allowed_domains: opt(
            "--allowed-domains",
            &a.allowed_domains,
            policy::parse_domains_csv,
        )?,
        credentials: if a.no_credentials {
            Some(Vec::new())
        } else if a.credential.is_empty() {
            None
        } else {
            Some(a.credential.iter().map(ToString::to_string).collect())
        },
        max_spend_usd: opt("--max-spend-usd", &a.max_spend_usd, policy::parse_spend)?,
        max_requests: opt("--max-requests", &a.max_requests, policy::parse_count)?,
        max_runtime_secs: opt("--max-runtime", &a.max_runtime, policy::parse_runtime)?,
        max_output_lines: opt(
            "--max-output-lines",
            &a.max_output_lines,
            policy::parse_count,
        )?,
        max_output_bytes: opt(
            "--max-output-bytes",
            &a.max_output_bytes,
            policy::parse_size,
        )?,
        memory_max: opt("--memory-max", &a.memory_max, policy::parse_memory)?,
        pids_max: opt("--pids-max", &a.pids_max, policy::parse_count)?,
        cpu_max: opt("--cpu-max", &a.cpu_max, policy::parse_cpu)?,
        deny_domains: opt(
            "--deny-domains",
            &a.deny_domains,
            policy::parse_deny_domains_csv,
        )?,
        isolation: opt("--isolation", &a.isolation, policy::parse_isolation)?,
        description: opt("--description", &a.description, policy::parse_description)?,
    })
}

fn list_agents(store: &AuthStore, json: bool) -> Result<(), CliError> {
    let agents = store.list_agents()?;
    let revoked = store.revocations()?.agents;
    if json {
        let arr: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap_or_default();
                v["revoked"] = revoked.contains_key(&a.agent_id).into();
                v
            })
            .collect();
        out_json(&arr);
    } else if agents.is_empty() {
        eprintln!("vallignus: no agents in {}", store.agents_dir().display());
    } else {
        out(&format!(
            "{:<24} {:<24} {:<21} {:<8} DESCRIPTION",
            "AGENT", "OWNER", "CREATED", "STATUS"
        ));
        for a in &agents {
            let status = if revoked.contains_key(&a.agent_id) {
                "revoked"
            } else {
                "active"
            };
            out(&format!(
                "{:<24} {:<24} {:<21} {:<8} {}",
                a.agent_id, a.owner, a.created_at, status, a.description
            ));
        }
    }
    Ok(())
}

fn list_policies(store: &AuthStore, json: bool) -> Result<(), CliError> {
    let (policies, unreadable) = store.policy_listing()?;
    for (id, e) in &unreadable {
        eprintln!("vallignus: warning: policy {id} cannot be read: {e}");
    }
    if json {
        out_json(&policies);
        return Ok(());
    }
    if policies.is_empty() {
        eprintln!("vallignus: no policies in {}", store.root().display());
        return Ok(());
    }
    out(&format!(
        "{:<20} {:>7} {:<16} {:<36} DOMAINS",
        "POLICY", "VERSION", "HASH", "LIMITS"
    ));
    for p in &policies {
        let domains = if p.latest.allowed_domains.is_empty() {
            "(none)".to_string()
        } else {
            p.latest.allowed_domains.join(",")
        };
        out(&format!(
            "{:<20} {:>7} {:<16} {:<36} {}",
            p.latest.policy_id,
            p.latest.version,
            &p.policy_hash[..16],
            p.latest.limits_summary(),
            domains
        ));
        for a in &p.altered {
            eprintln!(
                "vallignus: warning: policy {} version {} {}",
                p.latest.policy_id, a.version, a.reason
            );
        }
    }
    Ok(())
}

fn list_tokens(store: &AuthStore, json: bool, now: SystemTime) -> Result<(), CliError> {
    let tokens = store.issued_tokens(now)?;
    let revoked = store.revocations()?;
    let is_revoked = |t: &crate::auth::issue::IssuedToken| {
        revoked.tokens.contains_key(&t.jti) || revoked.agents.contains_key(&t.agent_id)
    };
    if json {
        let arr: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["revoked"] = is_revoked(t).into();
                v
            })
            .collect();
        out_json(&arr);
        return Ok(());
    }
    if tokens.is_empty() {
        eprintln!("vallignus: no unexpired tokens");
        return Ok(());
    }
    out(&format!(
        "{:<32} {:<20} {:<24} {:<18} {:<20} STATUS",
        "JTI", "AGENT", "POLICY", "KEY", "EXPIRES"
    ));
    for t in &tokens {
        out(&format!(
            "{:<32} {:<20} {:<24} {:<18} {:<20} {}",
            t.jti,
            t.agent_id,
            format!("{} v{}", t.policy_id, t.policy_version),
            t.kid,
            iso_utc(t.exp),
            if is_revoked(t) { "revoked" } else { "valid" }
        ));
    }
    Ok(())
}

/// The token argument, or stdin for `-`.
fn token_text(arg: &str) -> Result<String, CliError> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut s = String::new();
    io::stdin()
        .take(token::MAX_TOKEN_LEN as u64 + 2)
        .read_to_string(&mut s)
        .map_err(CliError::Stdin)?;
    Ok(s.trim().to_string())
}

fn verify(store: &AuthStore, a: &TokenArgs, now: SystemTime) -> Result<(), CliError> {
    let text = token_text(&a.token)?;
    match store.verify_token(&text, now) {
        Ok(v) => {
            if a.json {
                out_json(&serde_json::json!({"valid": true, "token": v}));
            } else {
                out("valid");
                out(&format!("agent:    {} (owner {})", v.agent_id, v.owner));
                out(&format!(
                    "policy:   {} version {} (sha256 {})",
                    v.policy.policy_id, v.policy.version, v.policy_hash
                ));
                out(&format!("domains:  {}", v.policy.allowed_domains.join(",")));
                if !v.policy.deny_domains.is_empty() {
                    out(&format!("denied:   {}", v.policy.deny_domains.join(",")));
                }
                if !v.policy.credentials.is_empty() {
                    out(&format!("credentials: {}", v.policy.credentials.join("; ")));
                }
                out(&format!("limits:   {}", v.policy.limits_summary()));
                out(&format!("jti:      {}", v.jti));
                out(&format!("key:      {}", v.kid));
                out(&format!("issued:   {}", iso_utc(v.issued_at)));
                out(&format!("expires:  {}", iso_utc(v.expires_at)));
            }
            Ok(())
        }
        Err(e) => {
            if a.json {
                out_json(&serde_json::json!({
                    "valid": false,
                    "reason": e.code(),
                    "error": error_chain(&e),
                }));
            }
            eprintln!("vallignus: invalid token: {}", error_chain(&e));
            Err(CliError::Reported(1))
        }
    }
}

/// The message of `e` and its causes, once each.
fn error_chain(e: &TokenError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// The policy version a token's payload names, as this store holds it
/// (`None` if the payload names none that the store has).
fn named_policy(store: &AuthStore, payload: &serde_json::Value) -> Option<policy::PolicyVersion> {
    let id = payload.get("policy_id")?.as_str()?;
    let version = u32::try_from(payload.get("policy_version")?.as_u64()?).ok()?;
    store.load_policy_version(id, version).ok().flatten()
}

fn inspect(store: &AuthStore, a: &TokenArgs, now: SystemTime) -> Result<(), CliError> {
    const WARNING: &str = "NOT VERIFIED: decoded without checking the signature, expiry or revocation; anyone can write these fields (use `vallignus auth verify-token`)";
    let text = token_text(&a.token)?;
    let (header, payload) = match token::decode_unverified_json(&text) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("vallignus: cannot decode the token: {e}");
            return Err(CliError::Reported(1));
        }
    };
    eprintln!("vallignus: {WARNING}");
    // What the run would get if the token verified: the named policy
    // version's limits, from this store.
    let named = named_policy(store, &payload);
    if a.json {
        out_json(&serde_json::json!({
            "verified": false,
            "header": header,
            "payload": payload,
            "policy": named,
        }));
        return Ok(());
    }
    out(WARNING);
    out(&format!(
        "header:  {}",
        serde_json::to_string(&header).unwrap_or_default()
    ));
    out(&format!(
        "payload: {}",
        serde_json::to_string_pretty(&payload).unwrap_or_default()
    ));
    match &named {
        Some(p) => out(&format!(
            "policy:  {} v{} in this store: domains {}; limits {}",
            p.policy_id,
            p.version,
            if p.allowed_domains.is_empty() {
                "(none)".to_string()
            } else {
                p.allowed_domains.join(",")
            },
            p.limits_summary()
        )),
        None => out("policy:  not in this store"),
    }
    let stamp = |key: &str| payload.get(key).and_then(serde_json::Value::as_u64);
    if let Some(iat) = stamp("iat") {
        out(&format!("issued:  {}", iso_utc(iat)));
    }
    if let Some(exp) = stamp("exp") {
        let state = if exp <= unix_secs(now) {
            " (expired)"
        } else {
            ""
        };
        out(&format!("expires: {}{state}", iso_utc(exp)));
    }
    Ok(())
}
