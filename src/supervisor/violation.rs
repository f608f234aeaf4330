//! Why vallignus ended a run: the `termination_reason` values and the
//! limit/observed pair recorded with each (see DESIGN.md).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    MaxRuntime {
        limit: Duration,
        observed: Duration,
    },
    MaxOutputLines {
        limit: u64,
        observed: u64,
    },
    MaxOutputBytes {
        limit: u64,
        observed: u64,
    },
    /// The kernel OOM-killed a process of the run (memory.max reached);
    /// `observed` is the number of OOM kills (`oom_kill` in memory.events).
    MemoryOom {
        limit: u64,
        observed: u64,
    },
    /// The run reached `pids.max` and the policy ends it for that
    /// (`--end-on-pids-max`); `observed` is the `max` count of pids.events.
    PidsMax {
        limit: u64,
        observed: u64,
    },
    /// The proxy refused a request over `--max-requests`.
    MaxRequests {
        limit: u64,
        observed: u64,
    },
    /// LLM spend reached `--max-spend-usd` (or a request was refused for
    /// it); amounts in pico-dollars.
    BudgetExceeded {
        limit: crate::net::spend::PicoUsd,
        observed: crate::net::spend::PicoUsd,
    },
    /// vallignus itself got SIGINT/SIGTERM/SIGHUP/SIGQUIT.
    Signal(i32),
    /// The session could not be written (disk full...): stop the agent
    /// rather than let it run unrecorded.
    RecordingFailed(String),
}

/// Seconds as a JSON number: whole seconds stay integers (as 0.4.2 wrote
/// them), fractions keep millisecond precision.
fn secs(d: Duration) -> serde_json::Number {
    if d.subsec_nanos() == 0 {
        d.as_secs().into()
    } else {
        let ms = d.as_millis() as f64 / 1000.0;
        serde_json::Number::from_f64(ms).unwrap_or_else(|| d.as_secs().into())
    }
}

/// Dollars as a JSON number.
fn usd(p: crate::net::spend::PicoUsd) -> serde_json::Number {
    serde_json::Number::from_f64(p.to_usd_f64()).unwrap_or_else(|| 0.into())
}

impl Violation {
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::MaxRuntime { .. } => "max_runtime",
            Violation::MaxOutputLines { .. } => "max_output_lines",
            Violation::MaxOutputBytes { .. } => "max_output_bytes",
            Violation::MemoryOom { .. } => "memory_oom",
            Violation::PidsMax { .. } => "pids_max",
            Violation::MaxRequests { .. } => "max_requests",
            Violation::BudgetExceeded { .. } => "budget_exceeded",
            Violation::Signal(_) => "signal",
            Violation::RecordingFailed(_) => "recording_failed",
        }
    }

    pub fn limit_value(&self) -> serde_json::Number {
        match self {
            Violation::MaxRuntime { limit, .. } => secs(*limit),
            Violation::MaxOutputLines { limit, .. }
            | Violation::MaxOutputBytes { limit, .. }
            | Violation::MemoryOom { limit, .. }
            | Violation::PidsMax { limit, .. }
            | Violation::MaxRequests { limit, .. } => (*limit).into(),
            Violation::BudgetExceeded { limit, .. } => usd(*limit),
            Violation::Signal(n) => (*n).into(),
            Violation::RecordingFailed(_) => 0.into(),
        }
    }

    /// The observed value in 0.4.2's terms: for a runtime cap of whole
    /// seconds (all 0.4.2 could set), whole seconds elapsed, an integer as
    /// 0.4.2 wrote it (`int(elapsed)`); the exact figure is
    /// [`Violation::observed_ms`].
    pub fn observed_value(&self) -> serde_json::Number {
        match self {
            Violation::MaxRuntime { limit, observed } if limit.subsec_nanos() == 0 => {
                observed.as_secs().into()
            }
            Violation::MaxRuntime { observed, .. } => secs(*observed),
            Violation::MaxOutputLines { observed, .. }
            | Violation::MaxOutputBytes { observed, .. }
            | Violation::MemoryOom { observed, .. }
            | Violation::PidsMax { observed, .. }
            | Violation::MaxRequests { observed, .. } => (*observed).into(),
            Violation::BudgetExceeded { observed, .. } => usd(*observed),
            Violation::Signal(n) => (*n).into(),
            Violation::RecordingFailed(_) => 0.into(),
        }
    }

    /// For a runtime cap: the milliseconds elapsed when it was hit.
    pub fn observed_ms(&self) -> Option<u64> {
        match self {
            Violation::MaxRuntime { observed, .. } => {
                Some(u64::try_from(observed.as_millis()).unwrap_or(u64::MAX))
            }
            _ => None,
        }
    }

    /// Exit code of `vallignus run` when this violation ended the run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Violation::Signal(n) => 128u8.saturating_add(*n as u8),
            Violation::RecordingFailed(_) => 125,
            _ => 124,
        }
    }

    /// One line for stderr.
    pub fn describe(&self) -> String {
        match self {
            Violation::Signal(n) => format!(
                "received {}, ending the run",
                nix::sys::signal::Signal::try_from(*n).map_or("a signal", |s| s.as_str())
            ),
            Violation::RecordingFailed(e) => {
                format!("cannot record the session ({e}), ending the run")
            }
            Violation::MaxRuntime { limit, observed } => format!(
                "max_runtime: limit {}, observed {}, ending the run",
                secs(*limit),
                secs(*observed)
            ),
            v => format!(
                "{}: limit {}, observed {}, ending the run",
                v.reason(),
                v.limit_value(),
                v.observed_value()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_codes() {
        let v = Violation::MaxRuntime {
            limit: Duration::from_secs(2),
            observed: Duration::from_millis(2003),
        };
        assert_eq!(v.limit_value().to_string(), "2");
        // An integer, as 0.4.2 wrote it; the exact time beside it.
        assert_eq!(v.observed_value().to_string(), "2");
        assert_eq!(v.observed_ms(), Some(2003));
        let v = Violation::MaxRuntime {
            limit: Duration::from_millis(1500),
            observed: Duration::from_millis(1503),
        };
        assert_eq!(v.limit_value().to_string(), "1.5");
        assert_eq!(v.observed_value().to_string(), "1.503");
        assert_eq!(v.exit_code(), 124);
        assert_eq!(Violation::Signal(15).exit_code(), 143);
        assert!(Violation::Signal(2).describe().contains("SIGINT"));
        let v = Violation::MaxOutputLines {
            limit: 10,
            observed: 11,
        };
        assert_eq!(
            v.describe(),
            "max_output_lines: limit 10, observed 11, ending the run"
        );
    }
}
