//! The effective policy of a run. Issue #2 scope: the limits given by flags,
//! validated before anything touches the system. Later layers (policy file,
//! token) narrow these; they never widen them. The policy file and the
//! resolution defaults < file < flags are in [`mod@file`]; host names and domain
//! patterns for network rules in [`domain`].

pub mod domain;
pub mod file;
pub mod units;

use std::path::PathBuf;
use std::time::Duration;

/// Caps and options for one supervised run. `None` means "off" (0 on the
/// command line, as in vallignus 0.4.2).
#[derive(Debug, Clone, PartialEq)]
pub struct RunPolicy {
    pub max_runtime: Option<Duration>,
    pub max_output_lines: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub max_requests: Option<u64>,
    /// cgroup v2 controller limits (memory, swap, pids, cpu, io).
    pub cgroup: crate::cgroup::Limits,
    pub kill_grace: Duration,
    /// Record a session (`--no-session` turns it off; caps still apply).
    pub record_session: bool,
    /// Degrade to what this host can enforce instead of failing, and record it.
    pub best_effort: bool,
    pub quiet: bool,
    pub session_id_file: Option<PathBuf>,
    pub token: Option<String>,
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            max_runtime: None,
            max_output_lines: None,
            max_output_bytes: None,
            max_requests: None,
            cgroup: crate::cgroup::Limits::default(),
            kill_grace: Duration::from_secs(2),
            record_session: true,
            best_effort: false,
            quiet: false,
            session_id_file: None,
            token: None,
        }
    }
}

/// Zero means "no cap", as in 0.4.2.
pub fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}
