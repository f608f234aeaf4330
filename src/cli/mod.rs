//! Command-line interface: clap definitions (raw strings), validation into
//! typed values, dispatch to the verbs. One file per verb.
//!
//! Exit codes: `run` follows DESIGN.md (child's code, 128+N, 124, 125,
//! 126/127); a bad flag to `run` is 125 like any other setup failure. The
//! other verbs exit 0 on success, 1 when what was asked for is missing or
//! unreadable, 2 on a usage error.

mod auth;
mod doctor;
mod policy;
mod replay;
mod run;
mod sessions;
mod trailing;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vallignus",
    version,
    about = "Run untrusted AI agents under kernel-enforced caps, and record everything they do",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command under supervision: caps, teardown of every process, a session record.
    Run(Box<run::RunArgs>),
    /// List and inspect recorded sessions.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
    /// Replay a session's output in the order it was produced.
    Replay(replay::ReplayArgs),
    /// What this host can enforce, and whether a run with a given policy would start.
    Doctor(Box<doctor::DoctorArgs>),
    /// Agents, versioned policies, signing keys and signed tokens.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Validate a policy file; show the effective policy of a run.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Print an error with its chain of causes, once, prefixed `vallignus:`.
pub(crate) fn print_error(err: &dyn std::error::Error) {
    eprintln!("vallignus: error: {}", with_causes(err));
}

/// An error's message followed by those of its sources (each once).
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(": ");
            msg.push_str(&s_text);
        }
        source = s.source();
    }
    msg
}

/// Where the `run` verb is, if the arguments select it (the first argument
/// that is not a flag).
fn run_index(args: &[std::ffi::OsString]) -> Option<usize> {
    let (i, verb) = args
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, a)| !a.to_string_lossy().starts_with('-'))?;
    (verb == "run").then_some(i)
}

/// `run`'s long and short flags, and whether each takes a value.
fn run_flags() -> Vec<trailing::Flag> {
    let cli = <Cli as clap::CommandFactory>::command();
    let Some(run) = cli.find_subcommand("run") else {
        return Vec::new();
    };
    run.get_arguments()
        .flat_map(|a| {
            let takes_value = a.get_action().takes_values();
            let long = a.get_long().map(|l| format!("--{l}"));
            let short = a.get_short().map(|s| format!("-{s}"));
            long.into_iter()
                .chain(short)
                .map(move |name| trailing::Flag { name, takes_value })
        })
        .collect()
}

pub fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut moved = Vec::new();
    let run_at = run_index(&args);
    if let Some(run_at) = run_at {
        match trailing::place(&args, run_at, &run_flags()) {
            Ok(placed) => {
                args = placed.args;
                moved = placed.moved;
            }
            Err(msg) => {
                eprintln!("vallignus: error: {msg}");
                return ExitCode::from(125);
            }
        }
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::from(2),
                _ if run_at.is_some() => ExitCode::from(125),
                _ => ExitCode::from(2),
            };
        }
    };
    ExitCode::from(match cli.command {
        Command::Run(a) => run::execute(*a, &moved),
        Command::Sessions(c) => sessions::execute(c),
        Command::Replay(a) => replay::execute(a),
        Command::Doctor(a) => doctor::execute(*a),
        Command::Auth(c) => auth::execute(c),
        Command::Policy(c) => policy::execute(c),
    })
}
