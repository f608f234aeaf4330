//! Policy versions: their content, validation, edits and canonical hash. Pure
//! (no file I/O); the files live in [`super::policy_store`].
//!
//! Canonical form: the compact `serde_json` serialization of
//! [`PolicyVersion`], whose fields are declared in alphabetical order, so the
//! keys come out sorted with no whitespace; absent limits are `null`, numbers
//! use serde_json's shortest round-trip form. The policy hash is the lowercase
//! hex SHA-256 of those bytes. Invariants: a validated policy has only
//! finite, non-negative spend; a limit of 0 is stored as `null` ("no cap", as
//! on the `run` command line); domains are normalized (lowercase, no trailing
//! dot, deduplicated, in the order given).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::units;

const DESCRIPTION_MAX: usize = 1024;
const DOMAINS_MAX: usize = 1000;

/// One immutable version of a policy. Field order is the canonical order
/// (alphabetical): do not reorder.
///
/// Fields added after the first format (`credentials`, `cpu_max`,
/// `deny_domains`, `isolation`, `memory_max`, `pids_max`) are left out of
/// the canonical form when unset or empty, so the hashes of policies made
/// before they existed do not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyVersion {
    pub allowed_domains: Vec<String>,
    /// `--cpu-max`: CPUs, e.g. 0.5 (`cpu.max` over a 100 ms period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<f64>,
    pub created_at: String,
    /// `--credential` specs (`NAME=ENV_VAR@HOST[,HOST...]`) the agent's
    /// runs get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// `--deny-domains`: added to every run's deny list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_domains: Vec<String>,
    pub description: String,
    /// `--isolation`: the lowest level a run may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<MinIsolation>,
    pub max_output_bytes: Option<u64>,
    pub max_output_lines: Option<u64>,
    pub max_requests: Option<u64>,
    pub max_runtime_secs: Option<u64>,
    pub max_spend_usd: Option<f64>,
    /// `--memory-max`: bytes (`memory.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `--pids-max`: processes and threads (`pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    pub policy_id: String,
    pub version: u32,
}

/// The lowest isolation level a policy allows its runs (`none` is no
/// minimum: a token run is at least `standard` anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinIsolation {
    Standard,
    Strict,
}

impl MinIsolation {
    pub fn level(self) -> crate::isolation::namespaces::Level {
        use crate::isolation::namespaces::Level;
        match self {
            Self::Standard => Level::Standard,
            Self::Strict => Level::Strict,
        }
    }
}

impl PolicyVersion {
    /// The canonical serialization (see the module docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing plain strings, integers, finite floats and options
        // cannot fail; an empty vector would only give a hash that matches
        // nothing.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Lowercase hex SHA-256 of the canonical serialization.
    pub fn hash(&self) -> String {
        super::ids::hex(&Sha256::digest(self.canonical_bytes()))
    }

    /// Whether the limits and domains (not the version, date or id) are equal.
    fn same_content(&self, other: &PolicyVersion) -> bool {
        let content = |p: &PolicyVersion| PolicyVersion {
            created_at: String::new(),
            policy_id: String::new(),
            version: 0,
            ..p.clone()
        };
        content(self) == content(other)
    }

    /// A short human summary of the limits.
    pub fn limits_summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.max_spend_usd {
            parts.push(format!("spend<=${v}"));
        }
        if let Some(v) = self.max_requests {
            parts.push(format!("requests<={v}"));
        }
        if let Some(v) = self.max_runtime_secs {
            parts.push(format!("runtime<={v}s"));
        }
        if let Some(v) = self.max_output_lines {
            parts.push(format!("lines<={v}"));
        }
        if let Some(v) = self.max_output_bytes {
            parts.push(format!("bytes<={v}"));
        }
        if let Some(v) = self.memory_max {
            parts.push(format!("memory<={v}"));
        }
        if let Some(v) = self.pids_max {
            parts.push(format!("pids<={v}"));
        }
        if let Some(v) = self.cpu_max {
            parts.push(format!("cpu<={v}"));
        }
        if let Some(v) = self.isolation {
            parts.push(format!("isolation>={}", v.level().as_str()));
        }
        if !self.deny_domains.is_empty() {
            parts.push(format!("deny={}", self.deny_domains.join(",")));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Why a policy value was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("invalid domain {domain:?} in {flag}: {reason}")]
    Domain {
        flag: &'static str,
        domain: String,
        reason: &'static str,
    },
    #[error("too many domains in {flag} ({count}; at most {DOMAINS_MAX})")]
    TooManyDomains { flag: &'static str, count: usize },
    #[error("invalid --memory-max {0:?}: at least 1MiB (give a unit, e.g. 512M; 0 = no cap)")]
    Memory(String),
    #[error("invalid --cpu-max {value:?}: {reason}")]
    Cpu { value: String, reason: String },
    #[error("invalid --isolation {0:?}: expected standard or strict (none = no minimum)")]
    Isolation(String),
    #[error("invalid --max-spend-usd {0:?}: expected a non-negative amount like 5 or 2.50")]
    Spend(String),
    #[error("invalid --max-runtime {0:?}: a policy holds whole seconds")]
    FractionalRuntime(String),
    #[error(transparent)]
    Unit(#[from] units::UnitError),
    /// A [`PolicyError::Unit`] with the flag that was given.
    #[error("invalid {flag}: {source}")]
    FlagUnit {
        flag: &'static str,
        source: units::UnitError,
    },
    #[error("invalid --description: {0}")]
    Description(&'static str),
    #[error("create-policy needs --allowed-domains (an empty string means no network)")]
    MissingDomains,
}

/// Changes asked for on the command line. `None`: keep (update) or default
/// (create). `Some(None)`: no cap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyEdit {
    pub allowed_domains: Option<Vec<String>>,
    /// Replaces the list when given.
    pub credentials: Option<Vec<String>>,
    pub max_spend_usd: Option<Option<f64>>,
    pub max_requests: Option<Option<u64>>,
    pub max_runtime_secs: Option<Option<u64>>,
    pub max_output_lines: Option<Option<u64>>,
    pub max_output_bytes: Option<Option<u64>>,
    pub memory_max: Option<Option<u64>>,
    pub pids_max: Option<Option<u64>>,
    pub cpu_max: Option<Option<f64>>,
    /// Replaces the list when given.
    pub deny_domains: Option<Vec<String>>,
    pub isolation: Option<Option<MinIsolation>>,
    pub description: Option<String>,
}

impl PolicyEdit {
    pub fn is_empty(&self) -> bool {
        *self == PolicyEdit::default()
    }

    /// Version 1 of a new policy.
    pub fn create(
        &self,
        policy_id: &str,
        created_at: String,
    ) -> Result<PolicyVersion, PolicyError> {
        let allowed_domains = self
            .allowed_domains
            .clone()
            .ok_or(PolicyError::MissingDomains)?;
        Ok(PolicyVersion {
            allowed_domains,
            cpu_max: self.cpu_max.flatten(),
            created_at,
            credentials: self.credentials.clone().unwrap_or_default(),
            deny_domains: self.deny_domains.clone().unwrap_or_default(),
            description: self.description.clone().unwrap_or_default(),
            isolation: self.isolation.flatten(),
            max_output_bytes: self.max_output_bytes.flatten(),
            max_output_lines: self.max_output_lines.flatten(),
            max_requests: self.max_requests.flatten(),
            max_runtime_secs: self.max_runtime_secs.flatten(),
            max_spend_usd: self.max_spend_usd.flatten(),
            memory_max: self.memory_max.flatten(),
            pids_max: self.pids_max.flatten(),
            policy_id: policy_id.to_string(),
            version: 1,
        })
    }

    /// The next version after `latest`, or `None` when nothing would change.
    pub fn apply(
        &self,
        latest: &PolicyVersion,
        version: u32,
        created_at: String,
    ) -> Option<PolicyVersion> {
        fn or<T: Clone>(edit: &Option<T>, old: &T) -> T {
            edit.clone().unwrap_or_else(|| old.clone())
        }
        let next = PolicyVersion {
            allowed_domains: or(&self.allowed_domains, &latest.allowed_domains),
            cpu_max: or(&self.cpu_max, &latest.cpu_max),
            created_at,
            credentials: or(&self.credentials, &latest.credentials),
            deny_domains: or(&self.deny_domains, &latest.deny_domains),
            description: or(&self.description, &latest.description),
            isolation: or(&self.isolation, &latest.isolation),
            max_output_bytes: or(&self.max_output_bytes, &latest.max_output_bytes),
            max_output_lines: or(&self.max_output_lines, &latest.max_output_lines),
            max_requests: or(&self.max_requests, &latest.max_requests),
            max_runtime_secs: or(&self.max_runtime_secs, &latest.max_runtime_secs),
            max_spend_usd: or(&self.max_spend_usd, &latest.max_spend_usd),
            memory_max: or(&self.memory_max, &latest.memory_max),
            pids_max: or(&self.pids_max, &latest.pids_max),
            policy_id: latest.policy_id.clone(),
            version,
        };
        (!next.same_content(latest)).then_some(next)
    }
}

/// One domain rule: `example.com`, `*.example.com`, or an IP literal.
/// Lowercased, trailing dot stripped.
pub fn normalize_domain(raw: &str) -> Result<String, PolicyError> {
    normalize_domain_of("--allowed-domains", raw)
}

fn normalize_domain_of(flag: &'static str, raw: &str) -> Result<String, PolicyError> {
    let err = |reason| PolicyError::Domain {
        flag,
        domain: raw.to_string(),
        reason,
    };
    let d = raw.trim().to_ascii_lowercase();
    let d = d.strip_suffix('.').unwrap_or(&d).to_string();
    if d.is_empty() {
        return Err(err("empty"));
    }
    if !d.is_ascii() {
        return Err(err("non-ASCII; use the punycode (xn--) form"));
    }
    let bare = d.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    let host = d.strip_prefix("*.").unwrap_or(&d);
    if host.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(err("empty label"));
        }
        if label.len() > 63 {
            return Err(err("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err(
                "only letters, digits, '-' and '.' are allowed (and a leading '*.')",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label must not start or end with '-'"));
        }
    }
    Ok(d)
}

/// `--allowed-domains a.com,*.b.org`: empty entries are skipped; an empty
/// string is an empty list (no network).
pub fn parse_domains_csv(csv: &str) -> Result<Vec<String>, PolicyError> {
    domains_csv("--allowed-domains", csv)
}

/// `--deny-domains`, as `--allowed-domains`; an empty string is no list.
pub fn parse_deny_domains_csv(csv: &str) -> Result<Vec<String>, PolicyError> {
    domains_csv("--deny-domains", csv)
}

fn domains_csv(flag: &'static str, csv: &str) -> Result<Vec<String>, PolicyError> {
    let mut out: Vec<String> = Vec::new();
    for part in csv.split(',').filter(|p| !p.trim().is_empty()) {
        let d = normalize_domain_of(flag, part)?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    if out.len() > DOMAINS_MAX {
        return Err(PolicyError::TooManyDomains {
            flag,
            count: out.len(),
        });
    }
    Ok(out)
}

/// `--max-spend-usd`: a finite amount >= 0; 0 means no cap.
pub fn parse_spend(raw: &str) -> Result<Option<f64>, PolicyError> {
    let v: f64 = raw
        .trim()
        .parse()
        .map_err(|_| PolicyError::Spend(raw.to_string()))?;
    if !v.is_finite() || !(0.0..=1e12).contains(&v) {
        return Err(PolicyError::Spend(raw.to_string()));
    }
    Ok((v != 0.0).then_some(v))
}

/// `--max-runtime`: a duration in whole seconds; 0 means no cap.
pub fn parse_runtime(raw: &str) -> Result<Option<u64>, PolicyError> {
    let d = units::parse_duration(raw)?;
    if d.subsec_nanos() != 0 {
        return Err(PolicyError::FractionalRuntime(raw.to_string()));
    }
    Ok(crate::policy::nonzero(d.as_secs()))
}

/// `--max-requests`, `--max-output-lines`: a count; 0 means no cap.
pub fn parse_count(raw: &str) -> Result<Option<u64>, PolicyError> {
    Ok(crate::policy::nonzero(units::parse_count(raw)?))
}

/// `--max-output-bytes`: a size; 0 means no cap.
pub fn parse_size(raw: &str) -> Result<Option<u64>, PolicyError> {
    Ok(crate::policy::nonzero(units::parse_size(raw)?))
}

/// `--memory-max`: a size of at least 1 MiB (a bare `512` is a forgotten
/// unit, as in the policy file); 0 means no cap.
pub fn parse_memory(raw: &str) -> Result<Option<u64>, PolicyError> {
    let bytes = units::parse_size(raw)?;
    if bytes != 0 && bytes < crate::policy::file::MIN_MEMORY_BYTES {
        return Err(PolicyError::Memory(raw.to_string()));
    }
    Ok(crate::policy::nonzero(bytes))
}

/// `--cpu-max`: CPUs, as `run --cpu-max` takes them; 0 means no cap.
pub fn parse_cpu(raw: &str) -> Result<Option<f64>, PolicyError> {
    let err = |reason: String| PolicyError::Cpu {
        value: raw.to_string(),
        reason,
    };
    let cpus: f64 = raw
        .trim()
        .parse()
        .map_err(|_| err("expected a number of CPUs like 0.5 or 2".into()))?;
    if cpus == 0.0 {
        return Ok(None);
    }
    crate::cgroup::cpu_max_from_fraction(cpus).map_err(err)?;
    Ok(Some(cpus))
}

/// `--isolation`: `standard` or `strict`; `none` means no minimum.
pub fn parse_isolation(raw: &str) -> Result<Option<MinIsolation>, PolicyError> {
    match raw.trim() {
        "none" => Ok(None),
        "standard" => Ok(Some(MinIsolation::Standard)),
        "strict" => Ok(Some(MinIsolation::Strict)),
        _ => Err(PolicyError::Isolation(raw.to_string())),
    }
}

/// `--description`: at most 1024 characters, no control characters.
pub fn parse_description(raw: &str) -> Result<String, PolicyError> {
    if raw.chars().count() > DESCRIPTION_MAX {
        return Err(PolicyError::Description("longer than 1024 characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err(PolicyError::Description("contains control characters"));
    }
    Ok(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PolicyVersion {
        PolicyVersion {
            allowed_domains: vec!["api.openai.com".into(), "*.example.com".into()],
            cpu_max: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            credentials: Vec::new(),
            deny_domains: Vec::new(),
            description: "test".into(),
            isolation: None,
            max_output_bytes: None,
            max_output_lines: Some(100),
            max_requests: Some(50),
            max_runtime_secs: Some(300),
            max_spend_usd: Some(2.5),
            memory_max: None,
            pids_max: None,
            policy_id: "p1".into(),
            version: 1,
        }
    }

    #[test]
    fn credentials_are_canonical_only_when_present() {
        // A policy without credentials keeps the bytes (and hash) it had
        // before the field existed.
        let plain = sample();
        let text = String::from_utf8(plain.canonical_bytes()).unwrap();
        assert!(!text.contains("credentials"), "{text}");
        let mut with = sample();
        with.credentials = vec!["K=ENV@api.example.com".into()];
        let bytes = with.canonical_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""created_at":"#) && text.contains(r#""credentials":["#));
        assert_ne!(with.hash(), plain.hash());
        let back: PolicyVersion = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, with);
        let old: PolicyVersion = serde_json::from_slice(&plain.canonical_bytes()).unwrap();
        assert!(old.credentials.is_empty());
        // An edit that changes only the credentials makes a new version.
        let edit = PolicyEdit {
            credentials: Some(vec!["K=ENV@api.example.com".into()]),
            ..PolicyEdit::default()
        };
        assert!(edit.apply(&plain, 2, "now".into()).is_some());
    }

    #[test]
    fn policies_without_the_newer_fields_keep_their_hash() {
        // The canonical form (and hash) of a policy written before
        // credentials, resource limits, deny domains and the isolation
        // minimum existed.
        let old = r#"{"allowed_domains":["api.openai.com","*.example.com"],"created_at":"2026-01-01T00:00:00Z","description":"test","max_output_bytes":null,"max_output_lines":100,"max_requests":50,"max_runtime_secs":300,"max_spend_usd":2.5,"policy_id":"p1","version":1}"#;
        assert_eq!(String::from_utf8(sample().canonical_bytes()).unwrap(), old);
        assert_eq!(
            sample().hash(),
            "4b463b477b05ed1f99dde9ca86f16dcfdfe77e1e2cd4936d462ad4f5c38dd135"
        );
        let parsed: PolicyVersion = serde_json::from_str(old).unwrap();
        assert_eq!(parsed, sample());
    }

    #[test]
    fn run_limits_are_canonical_in_order_and_make_new_versions() {
        let mut with = sample();
        with.cpu_max = Some(0.5);
        with.deny_domains = vec!["evil.example.com".into()];
        with.isolation = Some(MinIsolation::Strict);
        with.memory_max = Some(64 << 20);
        with.pids_max = Some(5);
        let bytes = with.canonical_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        for field in [
            r#""cpu_max":0.5"#,
            r#""deny_domains":["evil.example.com"]"#,
            r#""isolation":"strict""#,
            r#""memory_max":67108864"#,
            r#""pids_max":5"#,
        ] {
            assert!(text.contains(field), "{field}: {text}");
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "declared in alphabetical order");
        let back: PolicyVersion = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, with);
        assert_ne!(with.hash(), sample().hash());
        for edit in [
            PolicyEdit {
                pids_max: Some(Some(5)),
                ..PolicyEdit::default()
            },
            PolicyEdit {
                cpu_max: Some(Some(1.0)),
                ..PolicyEdit::default()
            },
            PolicyEdit {
                deny_domains: Some(vec!["x.com".into()]),
                ..PolicyEdit::default()
            },
            PolicyEdit {
                isolation: Some(Some(MinIsolation::Standard)),
                ..PolicyEdit::default()
            },
            PolicyEdit {
                memory_max: Some(Some(1 << 30)),
                ..PolicyEdit::default()
            },
        ] {
            let next = edit.apply(&sample(), 2, "t".into());
            assert!(next.is_some(), "{edit:?}");
        }
        // Taking a limit away is a change too; setting it again is not.
        let off = PolicyEdit {
            pids_max: Some(None),
            ..PolicyEdit::default()
        };
        assert!(off.apply(&with, 2, "t".into()).unwrap().pids_max.is_none());
        let same = PolicyEdit {
            pids_max: Some(Some(5)),
            isolation: Some(Some(MinIsolation::Strict)),
            ..PolicyEdit::default()
        };
        assert_eq!(same.apply(&with, 2, "t".into()), None);
    }

    #[test]
    fn run_limit_values() {
        assert_eq!(parse_memory("64M"), Ok(Some(64 << 20)));
        assert_eq!(parse_memory("0"), Ok(None));
        assert_eq!(parse_memory("512"), Err(PolicyError::Memory("512".into())));
        assert_eq!(parse_cpu("0.5"), Ok(Some(0.5)));
        assert_eq!(parse_cpu("0"), Ok(None));
        for bad in ["0.001", "-1", "x", "nan", "inf"] {
            let e = parse_cpu(bad).unwrap_err();
            assert!(e.to_string().contains("--cpu-max"), "{e}");
        }
        assert_eq!(parse_isolation("strict"), Ok(Some(MinIsolation::Strict)));
        assert_eq!(parse_isolation("none"), Ok(None));
        assert!(parse_isolation("max")
            .unwrap_err()
            .to_string()
            .contains("--isolation"));
        let e = parse_deny_domains_csv("ok.com,a..b").unwrap_err();
        assert!(e.to_string().contains("--deny-domains"), "{e}");
        assert_eq!(parse_deny_domains_csv("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn canonical_form_has_sorted_keys_and_no_whitespace() {
        let mut with_credentials = sample();
        with_credentials.credentials = vec!["K=ENV@a.com".into()];
        assert!(
            serde_json::from_slice::<serde_json::Value>(&with_credentials.canonical_bytes())
                .is_ok()
        );
        let bytes = with_credentials.canonical_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(' '));
        assert!(!text.contains('\n'));
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // Re-serializing a sorted-key map gives the same bytes.
        let map: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes).unwrap();
        assert_eq!(serde_json::to_vec(&map).unwrap(), bytes);
    }

    #[test]
    fn hash_is_stable_and_content_sensitive() {
        let a = sample();
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.hash().len(), 64);
        let mut b = a.clone();
        b.max_requests = Some(51);
        assert_ne!(a.hash(), b.hash());
        let mut c = a.clone();
        c.allowed_domains.reverse();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn domains() {
        assert_eq!(
            parse_domains_csv(" API.OpenAI.com. ,*.Example.com,,api.openai.com").unwrap(),
            vec!["api.openai.com", "*.example.com"]
        );
        assert_eq!(parse_domains_csv("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_domains_csv("10.0.0.1").unwrap(), vec!["10.0.0.1"]);
        assert_eq!(parse_domains_csv("[::1]").unwrap(), vec!["::1"]);
        for bad in ["a..b", "a/b", "*.", "*", "bücher.de", "-a.com", "a b.com"] {
            assert!(parse_domains_csv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values() {
        assert_eq!(parse_spend("2.50"), Ok(Some(2.5)));
        assert_eq!(parse_spend("0"), Ok(None));
        for bad in ["-1", "nan", "inf", "x", ""] {
            assert!(parse_spend(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_runtime("5m"), Ok(Some(300)));
        assert_eq!(parse_runtime("0"), Ok(None));
        assert!(parse_runtime("1.5").is_err());
        assert_eq!(parse_size("1K"), Ok(Some(1024)));
        assert_eq!(parse_count("7"), Ok(Some(7)));
        assert!(parse_description("a\nb").is_err());
    }

    #[test]
    fn edits() {
        let latest = sample();
        assert!(PolicyEdit::default().is_empty());
        let same = PolicyEdit {
            max_requests: Some(Some(50)),
            ..Default::default()
        };
        assert_eq!(same.apply(&latest, 2, "t".into()), None);
        let change = PolicyEdit {
            max_requests: Some(None),
            ..Default::default()
        };
        let next = change.apply(&latest, 2, "t".into()).unwrap();
        assert_eq!(next.version, 2);
        assert_eq!(next.max_requests, None);
        assert_eq!(next.allowed_domains, latest.allowed_domains);
        assert_eq!(
            PolicyEdit::default().create("p", "t".into()),
            Err(PolicyError::MissingDomains)
        );
    }
}
