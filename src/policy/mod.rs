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
    /// Reaching `pids.max` ends the run (`pids_max`) instead of only being
    /// recorded.
    pub end_on_pids_max: bool,
    /// Namespaces, user, private mounts.
    pub isolation: Isolation,
    /// Network rules asked for (--net, --allow-domain, policy file, token,
    /// --max-requests): `None` leaves the network alone (no rules at all).
    pub network: Option<NetworkRequest>,
    /// The token's identity, once verified (recorded in the session).
    pub token_identity: Option<TokenIdentity>,
    /// The policy file that was applied.
    pub policy_file: Option<PathBuf>,
    /// `violation_protocol.alert_webhook` (or `--alert-webhook`).
    pub alert_webhook: Option<String>,
    /// `--env`, `--clear-env`.
    pub env: crate::supervisor::environment::EnvPolicy,
    /// `violation_protocol.action: log`: a request over `max_requests` is
    /// refused (429) and recorded, but does not end the run. The other caps
    /// always end it.
    pub log_request_violations: bool,
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
            end_on_pids_max: false,
            isolation: Isolation::default(),
            network: None,
            token_identity: None,
            policy_file: None,
            alert_webhook: None,
            env: crate::supervisor::environment::EnvPolicy::default(),
            log_request_violations: false,
            kill_grace: Duration::from_secs(2),
            record_session: true,
            best_effort: false,
            quiet: false,
            session_id_file: None,
            token: None,
        }
    }
}

/// How the agent reaches the network (`--net`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetMode {
    /// Its own network namespace with only loopback.
    None,
    /// Its own network namespace with only loopback, where the policy
    /// proxy listens: its only way out (needs root).
    #[default]
    Proxy,
    /// The host's network, unfiltered (explicit opt-in, recorded).
    Host,
}

impl NetMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(NetMode::None),
            "proxy" => Ok(NetMode::Proxy),
            "host" => Ok(NetMode::Host),
            _ => Err(format!("invalid --net {s:?}: expected none, proxy or host")),
        }
    }
}

/// The network rules a run was asked to enforce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkRequest {
    pub mode: NetMode,
    /// `--resolve HOST:PORT:ADDR` entries (curl's syntax), validated.
    pub resolve: Vec<String>,
    /// `--connect-port`: ports CONNECT may reach (empty: 443 only).
    pub connect_ports: Vec<u16>,
    pub allow_domains: Vec<String>,
    pub deny_domains: Vec<String>,
    /// Policy file `default_policy: allow`: names no pattern matches pass.
    pub default_allow: bool,
    /// A token's allowed domains: the ceiling of every other rule (and the
    /// allow list when nothing else names one).
    pub token_domains: Option<Vec<String>>,
    pub max_requests: Option<u64>,
    pub max_spend_usd: Option<f64>,
    /// `--prices`: a price file over the shipped table.
    pub prices: Option<std::path::PathBuf>,
    /// `--upstream-ca`: extra roots for verifying intercepted upstreams.
    pub upstream_ca: Vec<std::path::PathBuf>,
    /// `--tls-passthrough`: hosts whose tunnels are spliced, not intercepted.
    pub tls_passthrough: Vec<String>,
    /// Method/path rules per domain for requests inside intercepted tunnels
    /// (policy file `allow_domains` entries with `methods`/`paths`).
    pub request_rules: Vec<crate::net::decide::RequestRule>,
    /// `--credential` and policy `credentials`: secrets the proxy puts in
    /// the headers of requests to their hosts (the agent gets placeholders).
    pub credentials: Vec<crate::net::credentials::CredentialSpec>,
    /// Where the rules came from (for messages): "policy file", "token", "--max-requests".
    pub sources: Vec<String>,
    /// `--port` (vallignus 0.4.2's): the proxy's port on the agent's
    /// loopback instead of [`crate::net::netns::PROXY_PORT`].
    pub proxy_port: Option<u16>,
}

impl NetworkRequest {
    /// The domain rules the proxy enforces: allow/deny, the default, and
    /// the token's ceiling.
    pub fn rules(&self) -> Result<crate::net::decide::Rules, crate::policy::domain::DomainError> {
        use crate::net::decide::{parse_patterns, Rules};
        let rules = Rules::parse(&self.allow_domains, &self.deny_domains)?
            .with_default_allow(self.default_allow);
        Ok(match &self.token_domains {
            Some(list) => rules.with_ceiling(parse_patterns(list)?),
            None => rules,
        })
    }

    /// The domain rules in words, for the session's enforcement map and
    /// `policy show`.
    pub fn describe_rules(&self) -> String {
        let mut out = format!(
            "allow [{}], deny [{}]",
            self.allow_domains.join(", "),
            self.deny_domains.join(", ")
        );
        if self.default_allow {
            out.push_str(", default allow");
        }
        if let Some(t) = &self.token_domains {
            out.push_str(&format!(", within the token's [{}]", t.join(", ")));
        }
        out
    }
}

/// Who a verified token says is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub agent_id: String,
    pub owner: String,
    pub policy_id: String,
    pub policy_version: u32,
    pub jti: String,
    pub kid: String,
}

/// The caps of a token's policy version, in the form [`narrow`] takes
/// (0 in the store means "no cap", as on the command line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenCaps {
    pub max_runtime: Option<Duration>,
    pub max_output_lines: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub max_requests: Option<u64>,
    pub max_spend_usd: Option<f64>,
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    /// `cpu.max` as (quota, period).
    pub cpu_max: Option<(u64, u64)>,
    /// The lowest level a token run may have: at least `standard` (whose
    /// landlock rules hide the vallignus home and its signing key).
    pub min_level: crate::isolation::namespaces::Level,
}

impl TokenCaps {
    /// Fails only for a CPU share `cpu.max` cannot express (which
    /// `create-policy` refuses, and a hand edit breaks the policy's hash).
    pub fn of(p: &crate::auth::policy::PolicyVersion) -> Result<Self, String> {
        use crate::isolation::namespaces::Level;
        Ok(Self {
            max_runtime: p
                .max_runtime_secs
                .and_then(nonzero)
                .map(Duration::from_secs),
            max_output_lines: p.max_output_lines.and_then(nonzero),
            max_output_bytes: p.max_output_bytes.and_then(nonzero),
            max_requests: p.max_requests.and_then(nonzero),
            max_spend_usd: p.max_spend_usd,
            memory_max: p.memory_max.and_then(nonzero),
            pids_max: p.pids_max.and_then(nonzero),
            cpu_max: p
                .cpu_max
                .map(crate::cgroup::cpu_max_from_fraction)
                .transpose()
                .map_err(|e| format!("cpu_max: {e}"))?,
            min_level: p
                .isolation
                .map_or(Level::Standard, |l| l.level().max(Level::Standard)),
        })
    }
}

/// The smaller of two optional caps (`None` = no cap): a token can only narrow.
pub fn narrow<T: PartialOrd + Copy>(current: Option<T>, token: Option<T>) -> Option<T> {
    match (current, token) {
        (Some(c), Some(t)) => Some(if t < c { t } else { c }),
        (c, None) => c,
        (None, t) => t,
    }
}

/// [`narrow`] for `cpu.max` (quota, period) pairs, compared by the share
/// of a CPU they allow (quota / period), not field by field.
pub fn narrow_cpu(current: Option<(u64, u64)>, token: Option<(u64, u64)>) -> Option<(u64, u64)> {
    narrow(current.map(CpuShare), token.map(CpuShare)).map(|c| c.0)
}

/// A `cpu.max` pair ordered by quota / period (cross-multiplied, exact).
#[derive(Debug, Clone, Copy)]
struct CpuShare((u64, u64));

impl CpuShare {
    fn cross(self, other: CpuShare) -> (u128, u128) {
        let ((q1, p1), (q2, p2)) = (self.0, other.0);
        (
            u128::from(q1) * u128::from(p2),
            u128::from(q2) * u128::from(p1),
        )
    }
}

impl PartialEq for CpuShare {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = self.cross(*other);
        a == b
    }
}

impl PartialOrd for CpuShare {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let (a, b) = self.cross(*other);
        Some(a.cmp(&b))
    }
}

/// What isolates the agent from the host (see [`crate::isolation`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Isolation {
    pub level: crate::isolation::namespaces::Level,
    /// Namespaces named with `--unshare`, on top of the level's.
    pub unshare: crate::isolation::namespaces::Namespaces,
    /// `--user`: the uid/gid to run the agent as.
    pub run_as: Option<crate::isolation::user::RunAs>,
    /// Size of the private /tmp and /dev/shm (mount namespace).
    pub tmp_size: u64,
    /// `--ro`, `--rw`, `--hide`: landlock rules on top of the defaults.
    pub fs: crate::isolation::landlock::FsFlags,
    /// `--seccomp`; `None`: the level's (none for `none`, `default` for
    /// `standard`, `strict` for `strict`).
    pub seccomp: Option<crate::isolation::seccomp::Profile>,
}

impl Default for Isolation {
    fn default() -> Self {
        Self {
            level: crate::isolation::namespaces::Level::None,
            unshare: crate::isolation::namespaces::Namespaces::default(),
            run_as: None,
            tmp_size: 256 << 20,
            fs: crate::isolation::landlock::FsFlags::default(),
            seccomp: None,
        }
    }
}

impl Isolation {
    /// The namespaces the agent gets (level + `--unshare`, normalized).
    pub fn namespaces(&self) -> crate::isolation::namespaces::Namespaces {
        self.level.namespaces().union(self.unshare).normalized()
    }

    /// The seccomp profile of the run.
    pub fn seccomp_profile(&self) -> crate::isolation::seccomp::Profile {
        use crate::isolation::namespaces::Level;
        use crate::isolation::seccomp::Profile;
        self.seccomp.clone().unwrap_or(match self.level {
            Level::None => Profile::None,
            Level::Standard => Profile::Default,
            Level::Strict => Profile::Strict,
        })
    }

    /// Whether landlock file rules apply: any isolation level, or a file flag.
    pub fn landlock(&self) -> bool {
        self.level != crate::isolation::namespaces::Level::None
            || !self.fs.ro.is_empty()
            || !self.fs.rw.is_empty()
            || !self.fs.hide.is_empty()
    }

    /// Whether capabilities are dropped and no_new_privs set.
    pub fn lock_down(&self) -> bool {
        self.level != crate::isolation::namespaces::Level::None
            || self.run_as.is_some()
            || self.unshare.any()
    }
}

/// Zero means "no cap", as in 0.4.2.
pub fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_never_widens() {
        assert_eq!(narrow(Some(10), Some(5)), Some(5));
        assert_eq!(narrow(Some(5), Some(10)), Some(5));
        assert_eq!(narrow(None, Some(7)), Some(7));
        assert_eq!(narrow(Some(7), None), Some(7));
        assert_eq!(narrow::<u64>(None, None), None);
    }

    #[test]
    fn cpu_narrowing_compares_shares() {
        let fifth = Some((20_000, 100_000)); // 0.2 CPU
        let half_long = Some((500_000, 1_000_000)); // 0.5 CPU
        assert_eq!(narrow_cpu(half_long, fifth), fifth);
        assert_eq!(narrow_cpu(fifth, half_long), fifth);
        // 0.15 CPU over a 1 s period: a larger quota field, a smaller
        // share; the order of the pairs as tuples would keep 0.2.
        let less_long = Some((150_000, 1_000_000));
        assert_eq!(narrow_cpu(fifth, less_long), less_long);
        assert_eq!(narrow_cpu(less_long, fifth), less_long);
        assert_eq!(narrow_cpu(None, fifth), fifth);
        assert_eq!(narrow_cpu(fifth, None), fifth);
    }
}
