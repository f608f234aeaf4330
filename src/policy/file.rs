//! The policy file (`vallignus.policy.yaml`, `--policy FILE`, or the system
//! policy `/etc/vallignus/policy.yaml`) and the resolution of a run's
//! effective policy: built-in defaults < policy file < CLI flags.
//!
//! Invariants:
//! - Parsing is two steps: raw serde structs (every mapping
//!   `deny_unknown_fields`, every leaf wrapped in `Spanned` so it keeps its
//!   line) → a validated [`PolicyFile`]. A `PolicyFile` value is always valid:
//!   domain patterns are normalised, sizes/durations are parsed, impossible
//!   values (negative sizes, zero pids, `cpu <= 0`, malformed domain patterns,
//!   a webhook that is not an http(s) URL) were rejected.
//! - Every error about the content names the file, the 1-based line and
//!   column, and the dotted key (`constraints.network.allow_domains[1]`).
//! - An empty file (or one with only comments) is valid and sets nothing.
//! - In a `PolicyFile`, `None` means "not set by the file" and never "off";
//!   for the caps that vallignus 0.4.2 turns off with 0 (`max_runtime`,
//!   `max_output_bytes`, `max_output_lines`, `max_requests`) an explicit 0 is
//!   kept as `Some(0)` and means "no cap", as on the command line. The new
//!   limits (`memory`, `pids`, `cpu`, `max_spend_usd`) reject 0: "no limit"
//!   is said by leaving the key out, never by a number that looks like a
//!   limit.
//! - Resolution is pure: [`resolve`] takes the parsed file and the flags the
//!   user actually gave ([`FlagOverrides`]); a flag overrides the file only
//!   when it was given. Nothing here touches the system except [`load`]
//!   reading the file and [`system_policy_path`] reading one env var.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::domain::DomainPattern;
use super::units::{parse_count, parse_duration, parse_size};
use super::RunPolicy;
use crate::net::credentials::{CredentialEntry, CredentialError, CredentialSpec};
use crate::net::decide::RequestRule;
#[cfg(test)]
use syntax::{key_of, strip_location};

/// The system-wide policy, used when it exists and no `--policy` is given.
pub const SYSTEM_POLICY_PATH: &str = "/etc/vallignus/policy.yaml";
/// Overrides [`SYSTEM_POLICY_PATH`] (tests, unusual installs).
pub const SYSTEM_POLICY_ENV: &str = "VALLIGNUS_SYSTEM_POLICY";
/// A policy file is a few hundred bytes; anything past this is a mistake.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The smallest memory limit accepted (below this nothing can exec; a bare
/// `memory: 512` is almost always a forgotten unit).
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// The smallest CPU share accepted: cgroup v2 `cpu.max` needs a quota of at
/// least 1 ms per 100 ms period.
pub const MIN_CPU: f64 = 0.01;
/// The largest CPU count accepted (a `cpu.max` quota of at most 10^12 µs).
pub const MAX_CPU: f64 = 1e7;

mod syntax;

// ---------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {} is larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("policy file {}, {}: {key}: {message}", path.display(), At(*line, *column))]
    UnknownKey {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
    /// Not YAML, or the wrong shape or type where serde decides (a list where
    /// a mapping belongs, a duplicate key, ...).
    #[error("policy file {}, {}: {key}: {message}", path.display(), At(*line, *column))]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
    /// A value of the wrong type or an impossible value (`value` is empty
    /// when the fault is a whole entry rather than one value).
    #[error("policy file {}, {}: {key}: {message}{}", path.display(), At(*line, *column), got(value, message))]
    InvalidValue {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        value: String,
        message: String,
    },
}

impl PolicyFileError {
    /// The 1-based line at fault, when the error is about the content.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::UnknownKey { line, .. }
            | Self::Syntax { line, .. }
            | Self::InvalidValue { line, .. } => Some(*line),
            Self::Read { .. } | Self::TooLarge { .. } => None,
        }
    }

    /// The dotted key at fault, when the error is about the content.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. }
            | Self::Syntax { key, .. }
            | Self::InvalidValue { key, .. } => Some(key),
            Self::Read { .. } | Self::TooLarge { .. } => None,
        }
    }
}

/// ` (got VALUE)`, unless there is no value or the message already quotes
/// the (string) value.
fn got(value: &str, message: &str) -> String {
    if value.is_empty() || (value.starts_with('"') && message.contains(value)) {
        String::new()
    } else {
        format!(" (got {value})")
    }
}

/// `line L, column C` (or `unknown position` when the parser gave none).
struct At(u64, u64);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (0, _) => f.write_str("unknown position"),
            (l, 0) => write!(f, "line {l}"),
            (l, c) => write!(f, "line {l}, column {c}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The validated policy file

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityLevel {
    #[default]
    Standard,
    Strict,
    /// `none`: no isolation layers beyond the cgroup caps.
    Unconfined,
}

impl SecurityLevel {
    pub const NAMES: &'static [&'static str] = &["standard", "strict", "none"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Strict => "strict",
            Self::Unconfined => "none",
        }
    }
}

/// The user the agent runs as (resolved against the host at run time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    Name(String),
    Id(u32),
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            User::Name(n) => f.write_str(n),
            User::Id(id) => write!(f, "{id}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultPolicy {
    #[default]
    Deny,
    Allow,
}

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViolationAction {
    /// End the run (the default, and 0.4.2's only behaviour).
    #[default]
    Terminate,
    /// Record the violation and let the run go on.
    Log,
}

impl ViolationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminate => "terminate",
            Self::Log => "log",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecurityContext {
    pub level: Option<SecurityLevel>,
    pub user: Option<User>,
    /// `env: [KEY, KEY=VALUE]`: as `run --env`.
    pub env: Vec<(String, Option<String>)>,
    /// `clear_env: true`: as `run --clear-env`.
    pub clear_env: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkRules {
    /// Normalised, deduplicated, in file order.
    pub allow_domains: Vec<DomainPattern>,
    pub deny_domains: Vec<DomainPattern>,
    pub default_policy: Option<DefaultPolicy>,
    /// `Some(0)`: explicitly no cap.
    pub max_requests: Option<u64>,
    /// Always > 0 when set.
    pub max_spend_usd: Option<f64>,
    /// How the proxy reaches upstreams and handles their TLS.
    pub proxy: ProxyRules,
}

/// The proxy's settings in `constraints.network`, passed on as they are
/// (no precedence to resolve: flags add to them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyRules {
    /// `resolve: ["HOST:PORT:ADDR"]`: as `run --resolve` (validated).
    pub resolve: Vec<String>,
    /// `connect_ports: [PORT]`: as `run --connect-port`.
    pub connect_ports: Vec<u16>,
    /// `upstream_ca: [FILE]`: as `run --upstream-ca` (relative to the file).
    pub upstream_ca: Vec<PathBuf>,
    /// `tls_passthrough: [DOMAIN]`: as `run --tls-passthrough`.
    pub tls_passthrough: Vec<DomainPattern>,
    /// `prices: FILE`: as `run --prices` (relative to the file).
    pub prices: Option<PathBuf>,
    /// `requests: [{domain, methods, paths}]`: what may be asked of a
    /// domain inside intercepted HTTPS.
    pub requests: Vec<RequestRule>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Constraints {
    /// `Some(ZERO)`: explicitly no cap.
    pub max_runtime: Option<Duration>,
    /// `Some(0)`: explicitly no cap.
    pub max_output_bytes: Option<u64>,
    /// `Some(0)`: explicitly no cap.
    pub max_output_lines: Option<u64>,
    /// Bytes, >= [`MIN_MEMORY_BYTES`].
    pub memory: Option<u64>,
    /// >= 1.
    pub pids: Option<u64>,
    /// `end_on_pids_max: true`: reaching `pids` ends the run (`pids_max`);
    /// otherwise it is only recorded as a `limit_event`.
    pub end_on_pids_max: Option<bool>,
    /// CPUs, in [`MIN_CPU`]..=[`MAX_CPU`].
    pub cpu: Option<f64>,
    /// `None`: the file has no `network` section.
    pub network: Option<NetworkRules>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViolationProtocol {
    pub action: Option<ViolationAction>,
    /// An absolute http(s) URL, normalised.
    pub alert_webhook: Option<String>,
}

/// A parsed and validated policy file. `None` fields were not set by it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyFile {
    /// Where it was read from (for messages and the session record).
    pub source: PathBuf,
    pub security_context: SecurityContext,
    pub constraints: Constraints,
    pub violation_protocol: ViolationProtocol,
    /// `credentials: [{name, env | file, hosts}]`: as `run --credential`.
    pub credentials: Vec<CredentialSpec>,
}

// ---------------------------------------------------------------------------
// Raw serde shape

/// Any YAML scalar; each field decides what it accepts, so that a wrong type
/// and an impossible value get the same precise, line-numbered message.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value (a number or a string)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
                i128::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

type Leaf = Option<Spanned<Scalar>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    security_context: Option<RawSecurity>,
    #[serde(default)]
    constraints: Option<RawConstraints>,
    #[serde(default)]
    violation_protocol: Option<RawViolation>,
    #[serde(default)]
    credentials: Option<Vec<Spanned<RawCredential>>>,
}

/// One `credentials` entry, checked field by field so that an error names
/// the line and the key (`credentials[1].hosts[0]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    name: Spanned<Scalar>,
    #[serde(default)]
    env: Leaf,
    #[serde(default)]
    file: Leaf,
    #[serde(default)]
    hosts: Option<Spanned<Vec<Spanned<Scalar>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    level: Leaf,
    #[serde(default)]
    user: Leaf,
    #[serde(default)]
    env: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    clear_env: Leaf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstraints {
    #[serde(default)]
    max_runtime: Leaf,
    #[serde(default)]
    max_output_bytes: Leaf,
    #[serde(default)]
    max_output_lines: Leaf,
    #[serde(default)]
    memory: Leaf,
    #[serde(default)]
    pids: Leaf,
    #[serde(default)]
    end_on_pids_max: Leaf,
    #[serde(default)]
    cpu: Leaf,
    #[serde(default)]
    network: Option<RawNetwork>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow_domains: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    deny_domains: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    default_policy: Leaf,
    #[serde(default)]
    max_requests: Leaf,
    #[serde(default)]
    max_spend_usd: Leaf,
    #[serde(default)]
    resolve: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    connect_ports: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    upstream_ca: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    tls_passthrough: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    prices: Leaf,
    #[serde(default)]
    requests: Option<Vec<RawRequestRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestRule {
    domain: Spanned<Scalar>,
    #[serde(default)]
    methods: Option<Vec<Spanned<Scalar>>>,
    #[serde(default)]
    paths: Option<Vec<Spanned<Scalar>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawViolation {
    #[serde(default)]
    action: Leaf,
    #[serde(default)]
    alert_webhook: Leaf,
}

// ---------------------------------------------------------------------------
// Loading and validation

/// Read and validate a policy file.
pub fn load(path: &Path) -> Result<PolicyFile, PolicyFileError> {
    let text = crate::textfile::read_limited(path, MAX_FILE_BYTES).map_err(|e| match e {
        crate::textfile::ReadError::Io(source) => PolicyFileError::Read {
            path: path.to_path_buf(),
            source,
        },
        crate::textfile::ReadError::TooLarge => PolicyFileError::TooLarge {
            path: path.to_path_buf(),
        },
    })?;
    parse(&text, path)
}

/// Validate policy text; `source` names it in messages.
pub fn parse(text: &str, source: &Path) -> Result<PolicyFile, PolicyFileError> {
    let raw = parse_raw(text, source)?;
    Validator { path: source }.file(raw)
}

fn parse_raw(text: &str, source: &Path) -> Result<RawFile, PolicyFileError> {
    if is_blank(text) {
        return Ok(RawFile::default());
    }
    let mut track = serde_path_to_error::Track::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        RawFile::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    result.map_err(|e| {
        let d = syntax::describe(&e, text, &track.path().to_string());
        let path = source.to_path_buf();
        if d.unknown_key {
            PolicyFileError::UnknownKey {
                path,
                line: d.line,
                column: d.column,
                key: d.key,
                message: d.message,
            }
        } else {
            PolicyFileError::Syntax {
                path,
                line: d.line,
                column: d.column,
                key: d.key,
                message: d.message,
            }
        }
    })
}

/// Only whitespace, comments and document markers: an empty policy.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(
        &self,
        key: &str,
        at: &Spanned<Scalar>,
        message: impl Into<String>,
    ) -> PolicyFileError {
        PolicyFileError::InvalidValue {
            path: self.path.to_path_buf(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            key: key.to_string(),
            value: at.value.to_string(),
            message: message.into(),
        }
    }

    /// An error about a whole entry or list at `at` (no single value to quote).
    fn invalid_at(
        &self,
        key: &str,
        at: &serde_saphyr::Location,
        message: impl Into<String>,
    ) -> PolicyFileError {
        PolicyFileError::InvalidValue {
            path: self.path.to_path_buf(),
            line: at.line(),
            column: at.column(),
            key: key.to_string(),
            value: String::new(),
            message: message.into(),
        }
    }

    fn file(&self, raw: RawFile) -> Result<PolicyFile, PolicyFileError> {
        let security = raw.security_context.unwrap_or_default();
        let cons = raw.constraints.unwrap_or_default();
        let viol = raw.violation_protocol.unwrap_or_default();
        let network = cons.network.map(|n| self.network(n)).transpose()?;
        let credentials = self.credentials(raw.credentials.unwrap_or_default())?;
        Ok(PolicyFile {
            source: self.path.to_path_buf(),
            credentials,
            security_context: SecurityContext {
                level: self.opt(security.level, "security_context.level", |v, k| {
                    self.keyword(v, k, SecurityLevel::NAMES).map(|i| match i {
                        0 => SecurityLevel::Standard,
                        1 => SecurityLevel::Strict,
                        _ => SecurityLevel::Unconfined,
                    })
                })?,
                user: self.opt(security.user, "security_context.user", |v, k| self.user(v, k))?,
                env: self.env_list(security.env, "security_context.env")?,
                clear_env: self.opt(security.clear_env, "security_context.clear_env", |v, k| {
                    match v.value {
                        Scalar::Bool(b) => Ok(b),
                        _ => Err(self.invalid(k, v, "expected true or false")),
                    }
                })?,
            },
            constraints: Constraints {
                max_runtime: self.opt(cons.max_runtime, "constraints.max_runtime", |v, k| {
                    self.duration(v, k)
                })?,
                max_output_bytes: self.opt(
                    cons.max_output_bytes,
                    "constraints.max_output_bytes",
                    |v, k| self.size(v, k),
                )?,
                max_output_lines: self.opt(
                    cons.max_output_lines,
                    "constraints.max_output_lines",
                    |v, k| self.count(v, k),
                )?,
                memory: self.opt(cons.memory, "constraints.memory", |v, k| {
                    let bytes = self.size(v, k)?;
                    if bytes < MIN_MEMORY_BYTES {
                        return Err(self.invalid(
                            k,
                            v,
                            "must be at least 1MiB (give a unit, e.g. 512MB; leave it out for no limit)",
                        ));
                    }
                    Ok(bytes)
                })?,
                pids: self.opt(cons.pids, "constraints.pids", |v, k| {
                    let n = self.count(v, k)?;
                    if n == 0 {
                        return Err(self.invalid(
                            k,
                            v,
                            "must be at least 1 (leave it out for no limit)",
                        ));
                    }
                    Ok(n)
                })?,
                end_on_pids_max: self.opt(
                    cons.end_on_pids_max,
                    "constraints.end_on_pids_max",
                    |v, k| match v.value {
                        Scalar::Bool(b) => Ok(b),
                        _ => Err(self.invalid(k, v, "expected true or false")),
                    },
                )?,
                cpu: self.opt(cons.cpu, "constraints.cpu", |v, k| self.cpu(v, k))?,
                network,
            },
            violation_protocol: ViolationProtocol {
                action: self.opt(viol.action, "violation_protocol.action", |v, k| {
                    self.keyword(v, k, &["terminate", "log"]).map(|i| match i {
                        0 => ViolationAction::Terminate,
                        _ => ViolationAction::Log,
                    })
                })?,
                alert_webhook: self.opt(
                    viol.alert_webhook,
                    "violation_protocol.alert_webhook",
                    |v, k| self.webhook(v, k),
                )?,
            },
        })
    }

    fn network(&self, raw: RawNetwork) -> Result<NetworkRules, PolicyFileError> {
        Ok(NetworkRules {
            allow_domains: self.domains(raw.allow_domains, "constraints.network.allow_domains")?,
            deny_domains: self.domains(raw.deny_domains, "constraints.network.deny_domains")?,
            default_policy: self.opt(
                raw.default_policy,
                "constraints.network.default_policy",
                |v, k| {
                    self.keyword(v, k, &["deny", "allow"]).map(|i| match i {
                        0 => DefaultPolicy::Deny,
                        _ => DefaultPolicy::Allow,
                    })
                },
            )?,
            max_requests: self.opt(
                raw.max_requests,
                "constraints.network.max_requests",
                |v, k| self.count(v, k),
            )?,
            max_spend_usd: self.opt(
                raw.max_spend_usd,
                "constraints.network.max_spend_usd",
                |v, k| self.money(v, k),
            )?,
            proxy: ProxyRules {
                resolve: self.resolve_list(raw.resolve, "constraints.network.resolve")?,
                connect_ports: self
                    .ports(raw.connect_ports, "constraints.network.connect_ports")?,
                upstream_ca: self.paths(raw.upstream_ca, "constraints.network.upstream_ca")?,
                tls_passthrough: self
                    .domains(raw.tls_passthrough, "constraints.network.tls_passthrough")?,
                prices: self.opt(raw.prices, "constraints.network.prices", |v, k| {
                    self.path_value(v, k)
                })?,
                requests: raw
                    .requests
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        self.request_rule(r, &format!("constraints.network.requests[{i}]"))
                    })
                    .collect::<Result<_, _>>()?,
            },
        })
    }

    /// `["HOST:PORT:ADDR", ...]`, each checked as `run --resolve` checks it.
    fn resolve_list(
        &self,
        list: Option<Vec<Spanned<Scalar>>>,
        key: &str,
    ) -> Result<Vec<String>, PolicyFileError> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let Scalar::Str(text) = &item.value else {
                return Err(self.invalid(&item_key, item, "expected HOST:PORT:ADDR"));
            };
            text.parse::<crate::net::decide::ResolveOverride>()
                .map_err(|e| self.invalid(&item_key, item, e.to_string()))?;
            out.push(text.clone());
        }
        Ok(out)
    }

    /// `[PORT, ...]`: TCP ports 1..=65535.
    fn ports(
        &self,
        list: Option<Vec<Spanned<Scalar>>>,
        key: &str,
    ) -> Result<Vec<u16>, PolicyFileError> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            match item.value {
                Scalar::Int(n) if (1..=65535).contains(&n) => {
                    let port = u16::try_from(n).unwrap_or(u16::MAX);
                    if !out.contains(&port) {
                        out.push(port);
                    }
                }
                _ => return Err(self.invalid(&item_key, item, "expected a port, 1 to 65535")),
            }
        }
        Ok(out)
    }

    /// A file path; a relative one is relative to the policy file.
    fn path_value(&self, v: &Spanned<Scalar>, key: &str) -> Result<PathBuf, PolicyFileError> {
        match &v.value {
            Scalar::Str(s) if !s.is_empty() => Ok(self.relative(Path::new(s))),
            _ => Err(self.invalid(key, v, "expected a file path")),
        }
    }

    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }

    fn paths(
        &self,
        list: Option<Vec<Spanned<Scalar>>>,
        key: &str,
    ) -> Result<Vec<PathBuf>, PolicyFileError> {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, item)| self.path_value(item, &format!("{key}[{i}]")))
            .collect()
    }

    fn request_rule(&self, raw: RawRequestRule, key: &str) -> Result<RequestRule, PolicyFileError> {
        let domain_key = format!("{key}.domain");
        let domain = match &raw.domain.value {
            Scalar::Str(s) => DomainPattern::parse(s)
                .map_err(|e| self.invalid(&domain_key, &raw.domain, e.to_string()))?,
            _ => {
                return Err(self.invalid(
                    &domain_key,
                    &raw.domain,
                    "expected a host name or *.domain pattern",
                ))
            }
        };
        let mut methods = Vec::new();
        for (i, m) in raw.methods.unwrap_or_default().iter().enumerate() {
            let k = format!("{key}.methods[{i}]");
            match &m.value {
                Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    methods.push(s.to_ascii_uppercase());
                }
                _ => {
                    return Err(self.invalid(&k, m, "expected an HTTP method such as GET or POST"))
                }
            }
        }
        let mut paths = Vec::new();
        for (i, p) in raw.paths.unwrap_or_default().iter().enumerate() {
            let k = format!("{key}.paths[{i}]");
            match &p.value {
                Scalar::Str(s) if s.starts_with('/') => paths.push(s.clone()),
                _ => return Err(self.invalid(&k, p, "expected a path prefix starting with /")),
            }
        }
        Ok(RequestRule {
            domain,
            methods,
            paths,
        })
    }

    /// `credentials`: each entry checked as `run --credential` checks it;
    /// a relative `file` is relative to the policy file. An error names the
    /// entry's field (and line) that `CredentialEntry::to_spec` refused.
    fn credentials(
        &self,
        entries: Vec<Spanned<RawCredential>>,
    ) -> Result<Vec<CredentialSpec>, PolicyFileError> {
        let mut out: Vec<(CredentialSpec, String)> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("credentials[{i}]");
            let raw = &entry.value;
            let spec = self.credential(raw, &key, &entry.referenced)?;
            if let Some((_, first)) = out.iter().find(|(c, _)| c.name == spec.name) {
                return Err(self.invalid(
                    &format!("{key}.name"),
                    &raw.name,
                    format!(
                        "credential {:?} is given twice (first in {first})",
                        spec.name
                    ),
                ));
            }
            out.push((spec, key));
        }
        Ok(out.into_iter().map(|(spec, _)| spec).collect())
    }

    fn credential(
        &self,
        raw: &RawCredential,
        key: &str,
        entry: &serde_saphyr::Location,
    ) -> Result<CredentialSpec, PolicyFileError> {
        let text = |v: &Spanned<Scalar>, field: &str, expected: &str| match &v.value {
            Scalar::Str(s) => Ok(s.clone()),
            _ => Err(self.invalid(&format!("{key}.{field}"), v, expected)),
        };
        let hosts = raw
            .hosts
            .as_ref()
            .map(|h| h.value.as_slice())
            .unwrap_or(&[]);
        let entry_value = CredentialEntry {
            name: text(&raw.name, "name", "expected an environment variable name")?,
            env: raw
                .env
                .as_ref()
                .map(|v| text(v, "env", "expected an environment variable name"))
                .transpose()?,
            file: raw
                .file
                .as_ref()
                .map(|v| text(v, "file", "expected a file path"))
                .transpose()?
                .map(|f| {
                    if f.is_empty() {
                        PathBuf::new()
                    } else {
                        self.relative(Path::new(&f))
                    }
                }),
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(j, h)| {
                    text(
                        h,
                        &format!("hosts[{j}]"),
                        "expected a host name or *.domain pattern",
                    )
                })
                .collect::<Result<_, _>>()?,
        };
        entry_value.to_spec().map_err(|err| {
            let message = err.to_string();
            // The messages quote what is wrong: no " (got ...)".
            let at_leaf = |field: &str, leaf: &Leaf| match leaf {
                Some(v) => {
                    self.invalid_at(&format!("{key}.{field}"), &v.referenced, message.clone())
                }
                None => self.invalid_at(key, entry, message.clone()),
            };
            match &err {
                CredentialError::Name { .. } => {
                    self.invalid_at(&format!("{key}.name"), &raw.name.referenced, message)
                }
                CredentialError::EnvVar { .. } => at_leaf("env", &raw.env),
                CredentialError::EmptyPath { .. } => at_leaf("file", &raw.file),
                // Both given: the second one is the surplus.
                CredentialError::Sources { .. } if raw.env.is_some() => at_leaf("file", &raw.file),
                CredentialError::Host { host, .. } => {
                    match hosts
                        .iter()
                        .position(|h| matches!(&h.value, Scalar::Str(s) if s == host))
                    {
                        Some(j) => self.invalid_at(
                            &format!("{key}.hosts[{j}]"),
                            &hosts[j].referenced,
                            message,
                        ),
                        None => self.invalid_at(key, entry, message),
                    }
                }
                CredentialError::NoHosts { .. } => match &raw.hosts {
                    Some(h) => self.invalid_at(&format!("{key}.hosts"), &h.referenced, message),
                    None => self.invalid_at(key, entry, message),
                },
                _ => self.invalid_at(key, entry, message),
            }
        })
    }

    fn opt<T>(
        &self,
        leaf: Leaf,
        key: &str,
        f: impl FnOnce(&Spanned<Scalar>, &str) -> Result<T, PolicyFileError>,
    ) -> Result<Option<T>, PolicyFileError> {
        leaf.map(|v| f(&v, key)).transpose()
    }

    /// `[KEY, KEY=VALUE, ...]`, each checked as `run --env` checks it.
    fn env_list(
        &self,
        list: Option<Vec<Spanned<Scalar>>>,
        key: &str,
    ) -> Result<Vec<(String, Option<String>)>, PolicyFileError> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let Scalar::Str(text) = &item.value else {
                return Err(self.invalid(&item_key, item, "expected KEY or KEY=VALUE"));
            };
            out.push(
                crate::supervisor::environment::parse_env_flag(text)
                    .map_err(|e| self.invalid(&item_key, item, e))?,
            );
        }
        Ok(out)
    }

    fn domains(
        &self,
        list: Option<Vec<Spanned<Scalar>>>,
        key: &str,
    ) -> Result<Vec<DomainPattern>, PolicyFileError> {
        let mut out: Vec<DomainPattern> = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let Scalar::Str(text) = &item.value else {
                return Err(self.invalid(
                    &item_key,
                    item,
                    "expected a host name or *.domain pattern",
                ));
            };
            let pattern = DomainPattern::parse(text)
                .map_err(|e| self.invalid(&item_key, item, e.to_string()))?;
            if !out.contains(&pattern) {
                out.push(pattern);
            }
        }
        Ok(out)
    }

    fn keyword(
        &self,
        v: &Spanned<Scalar>,
        key: &str,
        names: &[&str],
    ) -> Result<usize, PolicyFileError> {
        let expected = || format!("expected one of: {}", names.join(", "));
        match &v.value {
            Scalar::Str(s) => names
                .iter()
                .position(|n| n == s)
                .ok_or_else(|| self.invalid(key, v, expected())),
            _ => Err(self.invalid(key, v, expected())),
        }
    }

    fn user(&self, v: &Spanned<Scalar>, key: &str) -> Result<User, PolicyFileError> {
        const MSG: &str =
            "expected a user name (letters, digits, '_', '-', '.'; at most 32 characters) or a numeric uid";
        match &v.value {
            Scalar::Int(i) => u32::try_from(*i)
                .ok()
                .filter(|&id| id != u32::MAX)
                .map(User::Id)
                .ok_or_else(|| self.invalid(key, v, MSG)),
            Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u32>()
                .ok()
                .filter(|&id| id != u32::MAX)
                .map(User::Id)
                .ok_or_else(|| self.invalid(key, v, MSG)),
            Scalar::Str(s) if valid_user_name(s) => Ok(User::Name(s.clone())),
            _ => Err(self.invalid(key, v, MSG)),
        }
    }

    fn duration(&self, v: &Spanned<Scalar>, key: &str) -> Result<Duration, PolicyFileError> {
        const MSG: &str = "expected a duration like 300s, 5m, 1.5 or 250ms (0 = no cap)";
        let negative = || self.invalid(key, v, "must not be negative");
        let text = match &v.value {
            Scalar::Int(i) if *i < 0 => return Err(negative()),
            Scalar::Float(x) if *x < 0.0 => return Err(negative()),
            Scalar::Str(s) if s.trim_start().starts_with('-') => return Err(negative()),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Str(s) => s.clone(),
            Scalar::Bool(_) => return Err(self.invalid(key, v, MSG)),
        };
        parse_duration(&text).map_err(|_| self.invalid(key, v, MSG))
    }

    fn size(&self, v: &Spanned<Scalar>, key: &str) -> Result<u64, PolicyFileError> {
        const MSG: &str = "expected bytes or a size like 512K, 50MB or 2GiB";
        match &v.value {
            Scalar::Int(i) if *i < 0 => Err(self.invalid(key, v, "must not be negative")),
            Scalar::Float(x) if *x < 0.0 => Err(self.invalid(key, v, "must not be negative")),
            Scalar::Str(s) if s.trim_start().starts_with('-') => {
                Err(self.invalid(key, v, "must not be negative"))
            }
            Scalar::Int(i) => u64::try_from(*i).map_err(|_| self.invalid(key, v, MSG)),
            Scalar::Str(s) => parse_size(s).map_err(|_| self.invalid(key, v, MSG)),
            Scalar::Float(_) | Scalar::Bool(_) => Err(self.invalid(key, v, MSG)),
        }
    }

    fn count(&self, v: &Spanned<Scalar>, key: &str) -> Result<u64, PolicyFileError> {
        const MSG: &str = "expected a whole number";
        match &v.value {
            Scalar::Int(i) if *i < 0 => Err(self.invalid(key, v, "must not be negative")),
            Scalar::Str(s) if s.trim_start().starts_with('-') => {
                Err(self.invalid(key, v, "must not be negative"))
            }
            Scalar::Int(i) => u64::try_from(*i).map_err(|_| self.invalid(key, v, MSG)),
            Scalar::Str(s) => parse_count(s).map_err(|_| self.invalid(key, v, MSG)),
            Scalar::Float(_) | Scalar::Bool(_) => Err(self.invalid(key, v, MSG)),
        }
    }

    fn number(&self, v: &Spanned<Scalar>, key: &str, what: &str) -> Result<f64, PolicyFileError> {
        let x = match &v.value {
            Scalar::Int(i) => *i as f64,
            Scalar::Float(x) => *x,
            Scalar::Str(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| self.invalid(key, v, format!("expected {what}")))?,
            Scalar::Bool(_) => return Err(self.invalid(key, v, format!("expected {what}"))),
        };
        if !x.is_finite() {
            return Err(self.invalid(key, v, format!("expected {what}")));
        }
        Ok(x)
    }

    fn cpu(&self, v: &Spanned<Scalar>, key: &str) -> Result<f64, PolicyFileError> {
        let cpus = self.number(v, key, "a number of CPUs like 0.5 or 2")?;
        if cpus <= 0.0 {
            return Err(self.invalid(key, v, "must be greater than 0 (leave it out for no limit)"));
        }
        if cpus < MIN_CPU {
            return Err(self.invalid(key, v, "must be at least 0.01 (1% of one CPU)"));
        }
        if cpus > MAX_CPU {
            return Err(self.invalid(key, v, "is too large (at most 10000000 CPUs)"));
        }
        Ok(cpus)
    }

    fn money(&self, v: &Spanned<Scalar>, key: &str) -> Result<f64, PolicyFileError> {
        let usd = self.number(v, key, "an amount in US dollars like 5 or 0.25")?;
        if usd < 0.0 {
            return Err(self.invalid(key, v, "must not be negative"));
        }
        if usd == 0.0 {
            return Err(self.invalid(
                key,
                v,
                "must be greater than 0 (leave it out for no budget)",
            ));
        }
        Ok(usd)
    }

    fn webhook(&self, v: &Spanned<Scalar>, key: &str) -> Result<String, PolicyFileError> {
        let Scalar::Str(s) = &v.value else {
            return Err(self.invalid(key, v, "expected an http:// or https:// URL"));
        };
        validate_webhook(s).map_err(|m| self.invalid(key, v, m))
    }
}

/// POSIX-ish portable user names: `[A-Za-z_][A-Za-z0-9_.-]*`, optional
/// trailing `$`, at most 32 characters.
fn valid_user_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    !body.is_empty()
        && s.len() <= 32
        && body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An absolute `http://` URL with a host and no credentials, as the alert
/// sender can post to (`https://` is not supported yet); returns it
/// normalised. The one check of a webhook, for the flag and the file alike.
pub fn validate_webhook(s: &str) -> Result<String, String> {
    let lower = s.trim_start().to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(
            "https:// is not supported yet: give an http:// URL (a receiver on this host, or a \
             relay)"
                .to_string(),
        );
    }
    if !lower.starts_with("http://") {
        return Err("expected an http:// URL".to_string());
    }
    let url = url::Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
    match url.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err("the URL has no host".to_string()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".to_string());
    }
    if url.fragment().is_some() {
        return Err("the URL must not have a #fragment".to_string());
    }
    Ok(url.to_string())
}

// ---------------------------------------------------------------------------
// Resolution: defaults < file < flags

/// The run-limit flags as the user gave them: `None` = not given (the file or
/// the default decides), `Some(0)` / `Some(ZERO)` = given as 0, "no cap".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagOverrides {
    pub max_runtime: Option<Duration>,
    pub max_output_lines: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub max_requests: Option<u64>,
}

impl FlagOverrides {
    /// From a flag-built [`RunPolicy`]. Lossy: a `RunPolicy` cannot tell "not
    /// given" from "given as 0" (both are `None`), so a cap that the file sets
    /// cannot be turned off this way; build `FlagOverrides` from the raw
    /// flags where that matters.
    pub fn from_run_policy(flags: &RunPolicy) -> Self {
        Self {
            max_runtime: flags.max_runtime,
            max_output_lines: flags.max_output_lines,
            max_output_bytes: flags.max_output_bytes,
            max_requests: flags.max_requests,
        }
    }
}

/// The network part of an [`EffectivePolicy`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectiveNetwork {
    pub allow_domains: Vec<DomainPattern>,
    pub deny_domains: Vec<DomainPattern>,
    pub default_policy: DefaultPolicy,
    pub max_requests: Option<u64>,
    pub max_spend_usd: Option<f64>,
    pub proxy: ProxyRules,
}

/// Everything a run enforces, resolved. `None` = no such cap. Fields that
/// [`RunPolicy`] does not carry yet (memory, pids, cpu, user, level, network
/// rules, violation action, webhook) live here for the layers that will
/// consume them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectivePolicy {
    /// The policy file that was applied, if any.
    pub policy_file: Option<PathBuf>,
    pub level: SecurityLevel,
    /// `None`: the invoking user (no uid change).
    pub user: Option<User>,
    /// The environment policy (see `run --env`, `--clear-env`).
    pub env: Vec<(String, Option<String>)>,
    pub clear_env: bool,
    pub max_runtime: Option<Duration>,
    pub max_output_bytes: Option<u64>,
    pub max_output_lines: Option<u64>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub end_on_pids_max: bool,
    pub cpu: Option<f64>,
    /// Default deny with no rules when nothing says otherwise (DESIGN.md,
    /// "Network path"); whether a network policy is configured at all is
    /// `PolicyFile::constraints.network.is_some()`.
    pub network: EffectiveNetwork,
    pub violation_action: ViolationAction,
    pub alert_webhook: Option<String>,
    /// Names, sources and hosts (never values).
    pub credentials: Vec<CredentialSpec>,
}

/// Resolve defaults < `file` < `flags`.
pub fn resolve(file: Option<&PolicyFile>, flags: &FlagOverrides) -> EffectivePolicy {
    let empty = PolicyFile::default();
    let f = file.unwrap_or(&empty);
    let c = &f.constraints;
    let net = c.network.clone().unwrap_or_default();
    let nonzero = |v: Option<u64>| v.filter(|&n| n != 0);
    EffectivePolicy {
        policy_file: file.map(|f| f.source.clone()),
        level: f.security_context.level.unwrap_or_default(),
        user: f.security_context.user.clone(),
        env: f.security_context.env.clone(),
        clear_env: f.security_context.clear_env.unwrap_or(false),
        max_runtime: flags.max_runtime.or(c.max_runtime).filter(|d| !d.is_zero()),
        max_output_bytes: nonzero(flags.max_output_bytes.or(c.max_output_bytes)),
        max_output_lines: nonzero(flags.max_output_lines.or(c.max_output_lines)),
        memory: c.memory,
        pids: c.pids,
        end_on_pids_max: c.end_on_pids_max.unwrap_or(false),
        cpu: c.cpu,
        network: EffectiveNetwork {
            allow_domains: net.allow_domains,
            deny_domains: net.deny_domains,
            default_policy: net.default_policy.unwrap_or_default(),
            max_requests: nonzero(flags.max_requests.or(net.max_requests)),
            max_spend_usd: net.max_spend_usd,
            proxy: net.proxy,
        },
        violation_action: f.violation_protocol.action.unwrap_or_default(),
        alert_webhook: f.violation_protocol.alert_webhook.clone(),
        credentials: f.credentials.clone(),
    }
}

/// The `RunPolicy` for a run given by `flags` (built from the command line)
/// with `file` under it: flags win where they set a cap, the file fills in
/// the rest; the non-limit options (kill grace, quiet, token, ...) are the
/// flags'. See [`FlagOverrides::from_run_policy`] for the one lossy case.
pub fn apply(file: &PolicyFile, flags: &RunPolicy) -> RunPolicy {
    resolve(Some(file), &FlagOverrides::from_run_policy(flags)).run_policy(flags)
}

impl EffectivePolicy {
    /// `base` with this policy's caps (the part the supervisor enforces today).
    pub fn run_policy(&self, base: &RunPolicy) -> RunPolicy {
        RunPolicy {
            max_runtime: self.max_runtime,
            max_output_lines: self.max_output_lines,
            max_output_bytes: self.max_output_bytes,
            max_requests: self.network.max_requests,
            ..base.clone()
        }
    }

    /// The policy in the policy file's own shape (so that it can be printed
    /// and read back): durations in seconds, sizes in bytes, `null` = no cap.
    pub fn document(&self) -> PolicyDocument {
        PolicyDocument {
            security_context: DocSecurity {
                level: self.level.as_str(),
                user: self.user.as_ref().map(|u| match u {
                    User::Name(n) => DocUser::Name(n.clone()),
                    User::Id(id) => DocUser::Id(*id),
                }),
                env: self
                    .env
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .collect(),
                clear_env: self.clear_env,
            },
            constraints: DocConstraints {
                max_runtime: self.max_runtime.map(Seconds),
                max_output_bytes: self.max_output_bytes,
                max_output_lines: self.max_output_lines,
                memory: self.memory,
                pids: self.pids,
                end_on_pids_max: self.end_on_pids_max,
                cpu: self.cpu,
                network: DocNetwork {
                    allow_domains: self
                        .network
                        .allow_domains
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    deny_domains: self
                        .network
                        .deny_domains
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    default_policy: self.network.default_policy.as_str(),
                    max_requests: self.network.max_requests,
                    max_spend_usd: self.network.max_spend_usd,
                    resolve: self.network.proxy.resolve.clone(),
                    connect_ports: self.network.proxy.connect_ports.clone(),
                    upstream_ca: self
                        .network
                        .proxy
                        .upstream_ca
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect(),
                    tls_passthrough: self
                        .network
                        .proxy
                        .tls_passthrough
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    prices: self
                        .network
                        .proxy
                        .prices
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    requests: self
                        .network
                        .proxy
                        .requests
                        .iter()
                        .map(|r| DocRequestRule {
                            domain: r.domain.to_string(),
                            methods: r.methods.clone(),
                            paths: r.paths.clone(),
                        })
                        .collect(),
                },
            },
            violation_protocol: DocViolation {
                action: self.violation_action.as_str(),
                alert_webhook: self.alert_webhook.clone(),
            },
            credentials: self.credentials.iter().map(CredentialSpec::info).collect(),
        }
    }
}

/// Printable form of an [`EffectivePolicy`], in the policy file's shape.
#[derive(Debug, Serialize)]
pub struct PolicyDocument {
    security_context: DocSecurity,
    constraints: DocConstraints,
    violation_protocol: DocViolation,
    /// Name, source (`env VAR` / `file PATH`) and hosts; never a value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<crate::net::credentials::CredentialInfo>,
}

#[derive(Debug, Serialize)]
struct DocSecurity {
    level: &'static str,
    user: Option<DocUser>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    clear_env: bool,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum DocUser {
    Name(String),
    Id(u32),
}

#[derive(Debug, Serialize)]
struct DocConstraints {
    max_runtime: Option<Seconds>,
    max_output_bytes: Option<u64>,
    max_output_lines: Option<u64>,
    memory: Option<u64>,
    pids: Option<u64>,
    end_on_pids_max: bool,
    cpu: Option<f64>,
    network: DocNetwork,
}

#[derive(Debug, Serialize)]
struct DocNetwork {
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    default_policy: &'static str,
    max_requests: Option<u64>,
    max_spend_usd: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resolve: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    connect_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstream_ca: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tls_passthrough: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prices: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    requests: Vec<DocRequestRule>,
}

#[derive(Debug, Serialize)]
struct DocRequestRule {
    domain: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    paths: Vec<String>,
}

#[derive(Debug, Serialize)]
struct DocViolation {
    action: &'static str,
    alert_webhook: Option<String>,
}

/// A duration as a number of seconds (an integer when it is whole).
#[derive(Debug)]
struct Seconds(Duration);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.subsec_nanos() == 0 {
            s.serialize_u64(self.0.as_secs())
        } else {
            s.serialize_f64(self.0.as_secs_f64())
        }
    }
}

/// Where the system policy lives: `$VALLIGNUS_SYSTEM_POLICY`, else
/// [`SYSTEM_POLICY_PATH`].
pub fn system_policy_path() -> PathBuf {
    std::env::var_os(SYSTEM_POLICY_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(SYSTEM_POLICY_PATH), PathBuf::from)
}

/// The policy file a run uses: `explicit` (`--policy FILE`, must exist), else
/// the system policy when it exists, else none. A system policy whose
/// existence cannot be checked is an error (fail closed), not "absent".
pub fn load_for_run(explicit: Option<&Path>) -> Result<Option<PolicyFile>, PolicyFileError> {
    if let Some(path) = explicit {
        return load(path).map(Some);
    }
    let system = system_policy_path();
    // Absent means nothing at the path, not even a link: a link whose
    // target is gone is a broken policy (fail closed), as `load` says.
    match std::fs::symlink_metadata(&system) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Ok(_) => load(&system).map(Some),
        Err(source) => Err(PolicyFileError::Read {
            path: system,
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
