//! `vallignus run [OPTIONS] -- CMD...`

use std::path::PathBuf;

use clap::Args;

use crate::cgroup;
use crate::policy::units::{parse_count, parse_duration, parse_size};
use crate::policy::{nonzero, RunPolicy};
use crate::supervisor;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// End the run after this long (seconds, or 500ms, 30s, 5m, 1h; 0 = no cap).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_runtime: Option<std::time::Duration>,

    /// End the run when stdout+stderr reach this many lines (0 = no cap).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    max_output_lines: Option<u64>,

    /// End the run when stdout+stderr reach this many bytes (1048576, 512K, 50MB; 0 = no cap).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_output_bytes: Option<u64>,

    /// Memory cap of the run (cgroup memory.max): 512M, 2G, bytes. An OOM kill ends the run.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_max: Option<u64>,

    /// Swap cap of the run (cgroup memory.swap.max); 0 = no swap.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_swap_max: Option<u64>,

    /// Cap on the number of processes and threads of the run (cgroup pids.max).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pids_max: Option<u64>,

    /// CPU cap in CPUs, e.g. 0.5 or 2 (cgroup cpu.max over a 100 ms period).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    cpu_max: Option<(u64, u64)>,

    /// I/O cap for one block device, as io.max takes it: "MAJ:MIN rbps=N wbps=N riops=N wiops=N"
    /// (any subset; N or max). Repeat for more devices.
    #[arg(long, value_name = "RULE", value_parser = cgroup::parse_io_max)]
    io_max: Vec<String>,

    /// Time between SIGTERM and SIGKILL at teardown.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2")]
    kill_grace: std::time::Duration,

    /// Cap on HTTP requests through the policy proxy (0 = no cap).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    max_requests: Option<u64>,

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

    /// Write the session id to FILE (for scripts).
    #[arg(long, value_name = "FILE")]
    session_id_file: Option<PathBuf>,

    /// Run with what this host can enforce instead of failing; the session
    /// records exactly which layers were enforced.
    #[arg(long)]
    best_effort: bool,

    /// Print none of vallignus's own messages.
    #[arg(long, short)]
    quiet: bool,

    /// vallignus 0.4.2 compatibility: its proxy port (only meaningful with --token).
    #[arg(long, value_name = "PORT", hide = true)]
    port: Option<u16>,

    /// vallignus 0.4.2 compatibility: its firewall log file (only meaningful with --token).
    #[arg(long, value_name = "FILE", hide = true)]
    log: Option<PathBuf>,

    /// The command to run, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

fn parse_cpus(s: &str) -> Result<(u64, u64), String> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?}: expected a number like 0.5 or 2"))?;
    cgroup::cpu_max_from_fraction(cpus)
}

impl RunArgs {
    fn policy(&self) -> RunPolicy {
        RunPolicy {
            max_runtime: self.max_runtime.filter(|d| !d.is_zero()),
            max_output_lines: self.max_output_lines.and_then(nonzero),
            max_output_bytes: self.max_output_bytes.and_then(nonzero),
            max_requests: self.max_requests.and_then(nonzero),
            cgroup: cgroup::Limits {
                memory_max: self.memory_max.and_then(nonzero),
                // 0 is meaningful here: no swap at all.
                memory_swap_max: self.memory_swap_max,
                pids_max: self.pids_max.and_then(nonzero),
                cpu_max: self.cpu_max,
                io_max: self.io_max.clone(),
            },
            kill_grace: self.kill_grace,
            record_session: !self.no_session,
            best_effort: self.best_effort,
            quiet: self.quiet,
            session_id_file: self.session_id_file.clone(),
            token: self.token.clone().filter(|t| !t.is_empty()),
        }
    }
}

pub fn execute(args: RunArgs) -> u8 {
    let policy = args.policy();
    match supervisor::run(&args.command, &policy) {
        Ok(report) => report.exit_code,
        Err(e) => {
            super::print_error(&e);
            e.exit_code()
        }
    }
}
