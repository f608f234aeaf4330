//! `session.json`: vallignus 0.4.2's keys plus ours. Every field has a
//! default so that 0.4.2 sessions (and sessions from newer versions with
//! keys we do not know, kept in `extra`) load without loss.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupStats;

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Finished,
    Terminated,
    Interrupted,
    FailedToStart,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Terminated => "terminated",
            Status::Interrupted => "interrupted",
            Status::FailedToStart => "failed_to_start",
        }
    }
}

/// Whether one isolation/limit layer was enforced, with the kernel detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    pub enforced: bool,
    pub detail: String,
}

/// The limits a run was started with (absent = off).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_runtime_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    pub kill_grace_secs: f64,
}

/// Who supervised the run; lets a later vallignus detect a dead supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: i32,
    /// Start time of the supervisor process in clock ticks since boot
    /// (field 22 of `/proc/<pid>/stat`): with the pid, unique across reuse.
    pub start_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionMeta {
    // --- vallignus 0.4.2 keys ---
    pub session_id: String,
    pub started_at_iso: String,
    pub command: Vec<String>,
    pub cwd: String,
    pub env_summary: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_iso: Option<String>,
    pub stdout_lines: u64,
    pub stderr_lines: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_limit_value: Option<serde_json::Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_observed_value: Option<serde_json::Number>,
    /// For `max_runtime`: the exact time elapsed, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_observed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_requests: Option<u64>,
    /// With `--max-spend-usd`: what the run's metered LLM requests cost (USD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_usd: Option<f64>,

    // --- added by this version ---
    /// Absent in 0.4.2 sessions; see [`SessionMeta::effective_status`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// The exit code `vallignus run` returned (124 for a cap, 128+N for a signal...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vallignus_exit_code: Option<i32>,
    /// Bytes of each stream recorded; absent in 0.4.2 sessions (it did not
    /// count them), never guessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub enforcement: BTreeMap<String, Enforcement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<CgroupStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<SupervisorInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the run used a token: who the agent is, and which policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_jti: Option<String>,
    /// The policy file that was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<String>,
    /// Names (never values) of the environment variables the agent got.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agent_env: Vec<String>,

    /// Keys written by other versions, kept verbatim on rewrite.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SessionMeta {
    /// The status, derived for 0.4.2 sessions that have no `status` key:
    /// a termination reason means terminated, an exit code means finished,
    /// neither means the run never finished.
    pub fn effective_status(&self) -> Status {
        if let Some(s) = self.status {
            return s;
        }
        if self.termination_reason.is_some() {
            Status::Terminated
        } else if self.exit_code.is_some() {
            Status::Finished
        } else {
            Status::Interrupted
        }
    }
}

/// Names of environment variables that may hold secrets; such variables are
/// never written to `env_summary`.
const SECRET_MARKERS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "KEY",
    "PASSWORD",
    "PASSWD",
    "PASS",
    "AUTH",
    "CREDENTIAL",
    "PRIVATE",
    "COOKIE",
    "SESSION",
];

/// 0.4.2 recorded only these (by prefix or exact name); we keep its list.
const SAFE_PREFIXES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "SHELL",
    "TERM",
    "LANG",
    "LC_",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CONDA_",
    "NODE_",
    "NPM_",
];
const SAFE_EXACT: &[&str] = &["PWD", "OLDPWD", "SHLVL", "HOSTNAME", "LOGNAME"];

/// Whether a variable name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// The environment summary stored in `session.json`: 0.4.2's allowlist,
/// minus anything whose name looks like a secret, values cut at 200 chars.
pub fn env_summary<I, K, V>(vars: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    vars.into_iter()
        .filter(|(k, _)| {
            let k = k.as_ref();
            (SAFE_EXACT.contains(&k) || SAFE_PREFIXES.iter().any(|p| k.starts_with(p)))
                && !is_secret_name(k)
        })
        .map(|(k, v)| {
            let v = v.as_ref();
            let v = match v.char_indices().nth(200) {
                Some((cut, _)) => format!("{}...", &v[..cut]),
                None => v.to_string(),
            };
            (k.as_ref().to_string(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_summary_drops_secrets() {
        let env = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("NPM_TOKEN", "npm_abc"),
            ("NODE_AUTH_TOKEN", "x"),
            ("LC_PASSWORD_HINT", "x"),
            ("PYTHONPATH", "/opt"),
            ("OPENAI_API_KEY", "sk-123"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
            ("USER_SESSION_COOKIE", "z"),
            ("RANDOM", "not in allowlist"),
        ];
        let s = env_summary(env);
        assert_eq!(
            s.keys().map(String::as_str).collect::<Vec<_>>(),
            ["HOME", "PATH", "PYTHONPATH"]
        );
    }

    #[test]
    fn env_summary_truncates() {
        let long = "é".repeat(300);
        let s = env_summary([("PATH", long.as_str())]);
        assert_eq!(s["PATH"].chars().count(), 203);
    }

    #[test]
    fn reads_0_4_2_session_json() {
        let old = r#"{
  "session_id": "20250124-153045-a1b2c3",
  "started_at_iso": "2025-01-24T15:30:45.123456",
  "command": ["python", "agent.py"],
  "cwd": "/home/u",
  "env_summary": {"PATH": "/usr/bin"},
  "exit_code": 0,
  "duration_ms": 1234,
  "finished_at_iso": "2025-01-24T15:30:46.357",
  "stdout_lines": 3,
  "stderr_lines": 1,
  "termination_reason": "max_runtime",
  "termination_limit_value": 1,
  "termination_observed_value": 1
}"#;
        let m: SessionMeta = serde_json::from_str(old).unwrap();
        assert_eq!(m.command, ["python", "agent.py"]);
        assert_eq!(m.effective_status(), Status::Terminated);
        assert_eq!(m.stdout_lines, 3);
        assert!(m.extra.is_empty());
    }

    #[test]
    fn keeps_unknown_keys() {
        let m: SessionMeta =
            serde_json::from_str(r#"{"session_id":"x","future_key":{"a":1}}"#).unwrap();
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["future_key"]["a"], 1);
    }
}
