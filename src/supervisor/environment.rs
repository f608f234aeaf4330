//! The agent's environment (`--env KEY`, `--env KEY=VALUE`, `--clear-env`;
//! the strict isolation level clears it): built in the supervisor before
//! the fork, as the exact list the child passes to `execve`.
//!
//! Invariants: values are never recorded anywhere (session.json lists the
//! names the agent received); with `--clear-env` the agent starts from
//! PATH, HOME, LANG and TERM only (from vallignus's own environment), plus
//! what `--env` names and what vallignus itself sets (the proxy
//! variables), so API keys in the operator's shell do not leak in.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Never taken from vallignus's environment into the agent's (not even by
/// `--env KEY`): the token is a bearer credential for `vallignus run`.
pub const WITHHELD: [&str; 1] = ["VALLIGNUS_TOKEN"];

/// Variables kept by `--clear-env`.
pub const MINIMAL: [&str; 4] = ["PATH", "HOME", "LANG", "TERM"];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPolicy {
    /// Start from [`MINIMAL`] instead of vallignus's whole environment.
    pub clear: bool,
    /// `--env KEY`: pass this variable through from vallignus's environment.
    pub pass: Vec<String>,
    /// `--env KEY=VALUE`: set it.
    pub set: Vec<(String, String)>,
}

/// Parse one `--env` value: `KEY` or `KEY=VALUE`.
pub fn parse_env_flag(s: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (s, None),
    };
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!(
            "invalid --env {s:?}: expected KEY or KEY=VALUE with KEY of letters, digits and _"
        ));
    }
    if value.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err(format!(
            "invalid --env {s:?}: the value contains a NUL byte"
        ));
    }
    Ok((key.to_string(), value))
}

/// The agent's environment, in order, from `base` (vallignus's own).
pub fn build(base: &[(OsString, OsString)], policy: &EnvPolicy) -> Vec<(OsString, OsString)> {
    let base: Vec<(OsString, OsString)> = base
        .iter()
        .filter(|(k, _)| !WITHHELD.iter().any(|w| k == w))
        .cloned()
        .collect();
    let base = base.as_slice();
    let lookup = |k: &str| base.iter().find(|(bk, _)| bk == k).map(|(_, v)| v.clone());
    let mut env: Vec<(OsString, OsString)> = if policy.clear {
        MINIMAL
            .iter()
            .filter_map(|k| {
                let v = lookup(k).or_else(|| (*k == "PATH").then(|| DEFAULT_PATH.into()))?;
                Some((OsString::from(k), v))
            })
            .collect()
    } else {
        base.to_vec()
    };
    for k in &policy.pass {
        if let Some(v) = lookup(k) {
            set(&mut env, OsString::from(k), v);
        }
    }
    for (k, v) in &policy.set {
        set(&mut env, OsString::from(k), OsString::from(v));
    }
    env
}

/// Set `key` (replacing an existing value in place).
pub fn set(env: &mut Vec<(OsString, OsString)>, key: OsString, value: OsString) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

/// `KEY=VALUE` C strings for execve (entries with NUL bytes cannot be
/// passed and are dropped; keys were validated, values came from the OS).
pub fn to_cstrings(env: &[(OsString, OsString)]) -> Vec<CString> {
    env.iter()
        .filter_map(|(k, v)| {
            let mut entry = k.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            CString::new(entry).ok()
        })
        .collect()
}

/// The names, sorted, for session.json.
pub fn names(env: &[(OsString, OsString)]) -> Vec<String> {
    let mut n: Vec<String> = env
        .iter()
        .map(|(k, _)| OsStr::to_string_lossy(k).into_owned())
        .collect();
    n.sort();
    n.dedup();
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(OsString, OsString)> {
        [
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("OPENAI_API_KEY", "sk-secret"),
            ("LANG", "C"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
    }

    #[test]
    fn clear_keeps_only_the_minimal_set_and_named_variables() {
        let p = EnvPolicy {
            clear: true,
            pass: vec!["LANG".into(), "NOT_SET".into()],
            set: vec![("MODE".into(), "test".into())],
        };
        let env = build(&base(), &p);
        assert_eq!(names(&env), ["HOME", "LANG", "MODE", "PATH"]);
        assert!(!to_cstrings(&env)
            .iter()
            .any(|c| c.to_bytes().starts_with(b"OPENAI")));
    }

    #[test]
    fn without_clear_everything_is_inherited_and_set_overrides() {
        let p = EnvPolicy {
            set: vec![("PATH".into(), "/opt/bin".into())],
            ..EnvPolicy::default()
        };
        let env = build(&base(), &p);
        assert_eq!(env[0], (OsString::from("PATH"), OsString::from("/opt/bin")));
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn the_token_is_never_inherited() {
        let mut b = base();
        b.push(("VALLIGNUS_TOKEN".into(), "vl1.secret".into()));
        for p in [
            EnvPolicy::default(),
            EnvPolicy {
                pass: vec!["VALLIGNUS_TOKEN".into()],
                ..EnvPolicy::default()
            },
        ] {
            let env = build(&b, &p);
            assert!(!names(&env).contains(&"VALLIGNUS_TOKEN".to_string()));
        }
    }

    #[test]
    fn clear_without_path_gets_a_default_path() {
        let env = build(
            &[],
            &EnvPolicy {
                clear: true,
                ..EnvPolicy::default()
            },
        );
        assert_eq!(names(&env), ["PATH"]);
    }

    #[test]
    fn env_flags() {
        assert_eq!(parse_env_flag("KEY"), Ok(("KEY".into(), None)));
        assert_eq!(
            parse_env_flag("K_1=a=b"),
            Ok(("K_1".into(), Some("a=b".into())))
        );
        for bad in ["", "=x", "1KEY", "A-B=1", "A B"] {
            assert!(parse_env_flag(bad).is_err(), "{bad}");
        }
    }
}
