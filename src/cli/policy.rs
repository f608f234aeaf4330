//! `vallignus policy check FILE` and `vallignus policy show`.
//!
//! Both print an effective policy on stdout, in the policy file's own shape
//! (YAML, or JSON with `--json`; either reads back as a policy file):
//! durations in seconds, sizes in bytes, `null` for "no cap". Which policy
//! file was used goes to stderr, prefixed `vallignus:`.
//!
//! Exit codes: 0 valid, 1 invalid or unreadable policy (the error names the
//! file, line and key), 2 usage error.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::policy::file::EffectivePolicy;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print its effective policy (built-in defaults < file).
    Check(CheckArgs),
    /// Print what a run would enforce: built-in defaults < policy file < flags.
    ///
    /// The policy file is --policy FILE, else /etc/vallignus/policy.yaml when it
    /// exists ($VALLIGNUS_SYSTEM_POLICY overrides that path).
    Show(Box<ShowArgs>),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (vallignus.policy.yaml).
    file: PathBuf,
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,

    /// The run to show: every `run` flag (--policy, --token, caps, --isolation, --user,
    /// --memory-max, --allow-domain, ...), resolved exactly as `run` does.
    #[command(flatten)]
    run: super::run::RunFlags,
}

#[derive(Debug, thiserror::Error)]
enum PolicyCliError {
    /// What `run` would refuse (its message names the flag, file or token).
    #[error("{0}")]
    Run(String),
    #[error("cannot print the policy as {format}: {message}")]
    Print {
        format: &'static str,
        message: String,
    },
}

pub fn execute(cmd: PolicyCommand) -> u8 {
    let result = match cmd {
        PolicyCommand::Check(a) => check(&a),
        PolicyCommand::Show(a) => show(&a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            super::print_error(&e);
            1
        }
    }
}

fn check(args: &CheckArgs) -> Result<(), PolicyCliError> {
    // What a run with only this file would do: the same resolution, so a
    // value `run` refuses (an https webhook, an unknown user) fails here.
    let flags = super::run::RunFlags::with_policy(&args.file).map_err(PolicyCliError::Run)?;
    let (run, effective) = super::run::resolve_with_file(&flags).map_err(PolicyCliError::Run)?;
    // The files and secrets the proxy would read when the run starts.
    if let Some(net) = run
        .network
        .as_ref()
        .filter(|n| n.mode == crate::policy::NetMode::Proxy)
    {
        crate::supervisor::interception::Interception::check(net)
            .map_err(|e| PolicyCliError::Run(format!("{}: {}", args.file.display(), e)))?;
    }
    eprintln!("vallignus: {}: valid", args.file.display());
    print(&effective, &run, args.json)
}

fn show(args: &ShowArgs) -> Result<(), PolicyCliError> {
    let (run, effective) = super::run::resolve_with_file(&args.run).map_err(PolicyCliError::Run)?;
    match &effective.policy_file {
        Some(p) => eprintln!("vallignus: policy file: {}", p.display()),
        None => eprintln!("vallignus: no policy file: built-in defaults and flags only"),
    }
    if let Some(t) = &run.token_identity {
        eprintln!(
            "vallignus: token: agent {} ({}), policy {} v{}",
            t.agent_id, t.owner, t.policy_id, t.policy_version
        );
    }
    print(&effective, &run, args.json)
}

/// The policy file's shape, with what the run resolution decided written
/// over it: the level, user, limits, network rules (the allow list is what
/// is in effect, a token's included) and the webhook a run would use.
fn overlay(doc: &mut serde_json::Value, run: &crate::policy::RunPolicy) {
    use serde_json::json;
    // Whole seconds as integers, as the policy file's own printer does.
    let secs = |d: Option<std::time::Duration>| match d {
        Some(d) if d.subsec_nanos() == 0 => json!(d.as_secs()),
        Some(d) => json!(d.as_secs_f64()),
        None => serde_json::Value::Null,
    };
    doc["security_context"]["level"] = json!(run.isolation.level.as_str());
    // The user as the file names it when that is who runs, else uid:gid.
    let named = &doc["security_context"]["user"];
    let as_named = match named {
        serde_json::Value::String(n) => crate::isolation::user::resolve(n).ok(),
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|id| crate::isolation::user::resolve(&id.to_string()).ok()),
        _ => None,
    };
    if as_named != run.isolation.run_as {
        doc["security_context"]["user"] = match run.isolation.run_as {
            Some(u) => json!(format!("{}:{}", u.uid, u.gid)),
            None => serde_json::Value::Null,
        };
    }
    let c = &mut doc["constraints"];
    c["max_runtime"] = secs(run.max_runtime);
    c["max_output_lines"] = json!(run.max_output_lines);
    c["max_output_bytes"] = json!(run.max_output_bytes);
    c["memory"] = json!(run.cgroup.memory_max);
    c["pids"] = json!(run.cgroup.pids_max);
    c["end_on_pids_max"] = json!(run.end_on_pids_max);
    c["cpu"] = json!(run
        .cgroup
        .cpu_max
        .map(|(quota, period)| quota as f64 / period as f64));
    let n = &mut c["network"];
    n["max_requests"] = json!(run.max_requests);
    if let Some(net) = &run.network {
        if let Ok(rules) = net.rules() {
            use crate::policy::domain::DomainPattern;
            // Every name (default allow) is the file's default_policy, not
            // an entry of its list.
            let (any, named): (Vec<DomainPattern>, Vec<DomainPattern>) = rules
                .effective_allow()
                .into_iter()
                .partition(|p| *p == DomainPattern::AnyName);
            let open = !any.is_empty();
            let allow: Vec<String> = named.iter().map(ToString::to_string).collect();
            n["allow_domains"] = json!(allow);
            n["default_policy"] = json!(if open { "allow" } else { "deny" });
        }
        n["deny_domains"] = json!(net.deny_domains);
        n["max_spend_usd"] = json!(net.max_spend_usd);
    }
    doc["violation_protocol"]["alert_webhook"] = json!(run.alert_webhook);
}

fn print(
    policy: &EffectivePolicy,
    run: &crate::policy::RunPolicy,
    json: bool,
) -> Result<(), PolicyCliError> {
    let printing =
        |format: &'static str, message: String| PolicyCliError::Print { format, message };
    let mut doc =
        serde_json::to_value(policy.document()).map_err(|e| printing("JSON", e.to_string()))?;
    overlay(&mut doc, run);
    let text = if json {
        serde_json::to_string_pretty(&doc)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| printing("JSON", e.to_string()))?
    } else {
        serde_saphyr::to_string(&doc).map_err(|e| printing("YAML", e.to_string()))?
    };
    print!("{text}");
    Ok(())
}
