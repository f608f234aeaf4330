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

use crate::policy::file::{self, EffectivePolicy, FlagOverrides};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print its effective policy (built-in defaults < file).
    Check(CheckArgs),
    /// Print what a run would enforce: built-in defaults < policy file < flags.
    ///
    /// The policy file is --policy FILE, else /etc/vallignus/policy.yaml when it
    /// exists ($VALLIGNUS_SYSTEM_POLICY overrides that path).
    Show(ShowArgs),
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
    /// Policy file to apply (default: the system policy, when it exists).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// The caps, as `run` takes them (0 = no cap, even if the policy file sets one).
    #[command(flatten)]
    caps: super::run::CapFlags,

    /// Apply this token's policy on top (it can only narrow), as `run --token` does.
    #[arg(
        long,
        env = "VALLIGNUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum PolicyCliError {
    #[error(transparent)]
    File(#[from] file::PolicyFileError),
    #[error("--token: {0}")]
    Token(String),
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
    let policy = file::load(&args.file)?;
    eprintln!("vallignus: {}: valid", args.file.display());
    print(
        &file::resolve(Some(&policy), &FlagOverrides::default()),
        args.json,
    )
}

fn show(args: &ShowArgs) -> Result<(), PolicyCliError> {
    let policy = file::load_for_run(args.policy.as_deref())?;
    match &policy {
        Some(p) => eprintln!("vallignus: policy file: {}", p.source.display()),
        None => eprintln!("vallignus: no policy file: built-in defaults and flags only"),
    }
    let flags = args.caps.overrides();
    let mut effective = file::resolve(policy.as_ref(), &flags);
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        narrow_by_token(&mut effective, token)?;
    }
    print(&effective, args.json)
}

/// What `run --token` does to the limits: the token's policy can only
/// narrow them; its allowed domains become network rules.
fn narrow_by_token(p: &mut EffectivePolicy, token: &str) -> Result<(), PolicyCliError> {
    use crate::policy::narrow;
    let home =
        crate::session::store::home_dir().map_err(|e| PolicyCliError::Token(e.to_string()))?;
    let v = crate::auth::verify_for_run(&home, token, std::time::SystemTime::now())
        .map_err(|e| PolicyCliError::Token(e.to_string()))?;
    let tp = &v.policy;
    let caps = crate::policy::TokenCaps::of(tp);
    p.max_runtime = narrow(p.max_runtime, caps.max_runtime);
    p.max_output_lines = narrow(p.max_output_lines, caps.max_output_lines);
    p.max_output_bytes = narrow(p.max_output_bytes, caps.max_output_bytes);
    p.network.max_requests = narrow(p.network.max_requests, caps.max_requests);
    p.network.max_spend_usd = narrow(p.network.max_spend_usd, caps.max_spend_usd);
    for spec in &tp.credentials {
        let c: crate::net::credentials::CredentialSpec = spec
            .parse()
            .map_err(|e| PolicyCliError::Token(format!("the token's credential: {e}")))?;
        p.credentials.retain(|have| have.name != c.name);
        p.credentials.push(c);
    }
    for d in &tp.allowed_domains {
        let pattern = crate::policy::domain::DomainPattern::parse(d)
            .map_err(|e| PolicyCliError::Token(format!("the token's domain {d:?}: {e}")))?;
        p.network.allow_domains.push(pattern);
    }
    eprintln!(
        "vallignus: token: agent {} ({}), policy {} v{}",
        v.agent_id, v.owner, tp.policy_id, tp.version
    );
    Ok(())
}

fn print(policy: &EffectivePolicy, json: bool) -> Result<(), PolicyCliError> {
    let doc = policy.document();
    let text = if json {
        serde_json::to_string_pretty(&doc)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| PolicyCliError::Print {
                format: "JSON",
                message: e.to_string(),
            })?
    } else {
        serde_saphyr::to_string(&doc).map_err(|e| PolicyCliError::Print {
            format: "YAML",
            message: e.to_string(),
        })?
    };
    print!("{text}");
    Ok(())
}
