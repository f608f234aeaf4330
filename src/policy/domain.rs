//! Host names and domain patterns for network rules (pure; no DNS, no I/O).
//!
//! Invariants:
//! - A normalised host is ASCII only: lowercase, punycode (`xn--`) for
//!   non-ASCII labels (IDNA/UTS #46 via the `idna` crate), at most one trailing
//!   dot stripped, labels of 1..=63 bytes of `[a-z0-9_-]` that neither start
//!   nor end with `-`, at most 253 bytes in all; or an IP literal in its
//!   canonical text form (IPv6 without brackets).
//! - A [`DomainPattern`] holds only normalised text: `example.com` matches that
//!   host exactly, `*.example.com` matches its subdomains only (never
//!   `example.com` itself), an IP pattern matches that exact address only.
//! - URLs, `host:port`, `*` alone and wildcards anywhere but a leading `*.`
//!   are errors, never silently reinterpreted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("empty host name")]
    Empty,
    #[error("{0:?} looks like a URL or host:port; give only the host name, e.g. api.openai.com")]
    NotAHost(String),
    #[error("{0:?}: a wildcard is allowed only as a leading \"*.\" followed by a domain, e.g. *.example.com")]
    Wildcard(String),
    #[error("{0:?} would match every host; use `default_policy: allow` for that")]
    MatchAll(String),
    #[error("{0:?}: a wildcard cannot be applied to an IP address")]
    WildcardIp(String),
    #[error("{input:?} is not a valid host name: {reason}")]
    Invalid { input: String, reason: &'static str },
}

const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A host, normalised: a DNS name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One entry of `allow_domains` / `deny_domains`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// `example.com`: that host only.
    Exact(String),
    /// `*.example.com`: strict subdomains of the stored base (`example.com`).
    Subdomains(String),
    /// An IP literal: that address only.
    Ip(IpAddr),
    /// Every host name (never an IP literal): the rule of a policy whose
    /// `default_policy` is `allow`. Not written by users; shown as `*`.
    AnyName,
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(h) => f.write_str(h),
            DomainPattern::Subdomains(base) => write!(f, "*.{base}"),
            DomainPattern::Ip(ip) => write!(f, "{ip}"),
            DomainPattern::AnyName => f.write_str("*"),
        }
    }
}

impl DomainPattern {
    /// Parse and normalise a pattern as written in a policy.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        reject_non_host(input)?;
        if input == "*" {
            return Err(DomainError::MatchAll(input.to_string()));
        }
        if let Some(base) = input.strip_prefix("*.") {
            if base.contains('*') {
                return Err(DomainError::Wildcard(input.to_string()));
            }
            return match parse_host(base) {
                Ok(Host::Name(n)) => Ok(DomainPattern::Subdomains(n)),
                Ok(Host::Ip(_)) => Err(DomainError::WildcardIp(input.to_string())),
                Err(DomainError::Empty) => Err(DomainError::Wildcard(input.to_string())),
                Err(e) => Err(e),
            };
        }
        if input.contains('*') {
            return Err(DomainError::Wildcard(input.to_string()));
        }
        Ok(match parse_host(input)? {
            Host::Name(n) => DomainPattern::Exact(n),
            Host::Ip(ip) => DomainPattern::Ip(ip),
        })
    }

    /// Whether a host (already normalised, see [`normalize_host`]) matches.
    /// Whether every host this pattern matches is matched by `other`.
    pub fn within(&self, other: &DomainPattern) -> bool {
        match (self, other) {
            (DomainPattern::Exact(h), o) => o.matches(&Host::Name(h.clone())),
            (DomainPattern::Ip(ip), o) => o.matches(&Host::Ip(*ip)),
            (DomainPattern::Subdomains(b), DomainPattern::Subdomains(c)) => {
                b == c || b.strip_suffix(c.as_str()).is_some_and(|p| p.ends_with('.'))
            }
            (DomainPattern::Subdomains(_) | DomainPattern::AnyName, DomainPattern::AnyName) => true,
            _ => false,
        }
    }

    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (DomainPattern::Exact(p), Host::Name(h)) => p == h,
            (DomainPattern::Subdomains(base), Host::Name(h)) => h
                .strip_suffix(base.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            (DomainPattern::Ip(p), Host::Ip(h)) => p == h,
            (DomainPattern::AnyName, Host::Name(_)) => true,
            _ => false,
        }
    }
}

/// Normalise a host name as text (see the module invariants).
pub fn normalize_host(input: &str) -> Result<String, DomainError> {
    reject_non_host(input)?;
    if input.contains('*') {
        return Err(DomainError::Invalid {
            input: input.to_string(),
            reason: "a host name cannot contain '*'",
        });
    }
    parse_host(input).map(|h| h.to_string())
}

/// URLs, `host:port`, user info, paths and whitespace are not hosts.
fn reject_non_host(input: &str) -> Result<(), DomainError> {
    if input.is_empty() {
        return Err(DomainError::Empty);
    }
    if input.chars().any(char::is_whitespace) {
        return Err(DomainError::Invalid {
            input: input.to_string(),
            reason: "it contains whitespace",
        });
    }
    if input.contains("://") || input.contains(['/', '@', '?', '#', '\\']) {
        return Err(DomainError::NotAHost(input.to_string()));
    }
    Ok(())
}

/// Parse one host (no wildcard): IP literal or DNS name.
pub fn parse_host(input: &str) -> Result<Host, DomainError> {
    if input.is_empty() {
        return Err(DomainError::Empty);
    }
    let unbracketed = input
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(input);
    if let Ok(v6) = unbracketed.parse::<Ipv6Addr>() {
        return Ok(Host::Ip(IpAddr::V6(v6)));
    }
    if input.contains([':', '[', ']']) {
        return Err(DomainError::NotAHost(input.to_string()));
    }
    let invalid = |reason| DomainError::Invalid {
        input: input.to_string(),
        reason,
    };
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(invalid("it has no labels"));
    }
    if let Ok(v4) = trimmed.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed)
            .map_err(|_| invalid("it is not a valid internationalised domain name"))?
    };
    check_labels(&ascii).map_err(invalid)?;
    Ok(Host::Name(ascii))
}

fn check_labels(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_HOST_LEN {
        return Err("it is longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err("a label has a character other than letters, digits, '-' or '_'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
        if label.starts_with("xn--") && idna::domain_to_unicode(label).1.is_err() {
            return Err("a label is invalid punycode");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("its last label is numeric but it is not an IPv4 address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalises_case_trailing_dot_and_idna() {
        assert_eq!(
            normalize_host("API.OpenAI.com"),
            Ok("api.openai.com".into())
        );
        assert_eq!(normalize_host("example.com."), Ok("example.com".into()));
        assert_eq!(
            normalize_host("bücher.example"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(
            normalize_host("BÜCHER.example."),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(
            normalize_host("xn--bcher-kva.example"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(normalize_host("10.0.0.1"), Ok("10.0.0.1".into()));
        assert_eq!(normalize_host("[::1]"), Ok("::1".into()));
        assert_eq!(normalize_host("2001:DB8::1"), Ok("2001:db8::1".into()));
        assert_eq!(
            normalize_host("under_score.example"),
            Ok("under_score.example".into())
        );
    }

    #[test]
    fn rejects_bad_hosts() {
        assert_eq!(normalize_host(""), Err(DomainError::Empty));
        for bad in [
            "example.com..",
            ".example.com",
            "a..b",
            ".",
            "-a.com",
            "a-.com",
            "a b.com",
            "a!.com",
            "1.2.3",
            "xn--zz.com",
        ] {
            assert!(
                matches!(normalize_host(bad), Err(DomainError::Invalid { .. })),
                "{bad}: {:?}",
                normalize_host(bad)
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(normalize_host(&long_label).is_err());
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(normalize_host(&long_name).is_err());
        for url in [
            "https://api.openai.com",
            "api.openai.com/v1",
            "user@host.com",
            "host.com:443",
            "host.com?x",
        ] {
            assert!(
                matches!(normalize_host(url), Err(DomainError::NotAHost(_))),
                "{url}"
            );
        }
        assert!(normalize_host("*.example.com").is_err());
    }

    #[test]
    fn patterns() {
        assert_eq!(
            pat("Example.COM."),
            DomainPattern::Exact("example.com".into())
        );
        assert_eq!(
            pat("*.Example.com"),
            DomainPattern::Subdomains("example.com".into())
        );
        assert_eq!(pat("*.Example.com").to_string(), "*.example.com");
        assert_eq!(pat("*.bücher.de").to_string(), "*.xn--bcher-kva.de");
        assert_eq!(
            pat("127.0.0.1"),
            DomainPattern::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(pat("[::1]").to_string(), "::1");
        assert_eq!(
            DomainPattern::parse("*"),
            Err(DomainError::MatchAll("*".into()))
        );
        for bad in [
            "*.",
            "a*b.com",
            "*example.com",
            "*.*.com",
            "api.*.com",
            "**.com",
        ] {
            assert!(
                matches!(DomainPattern::parse(bad), Err(DomainError::Wildcard(_))),
                "{bad}: {:?}",
                DomainPattern::parse(bad)
            );
        }
        assert!(matches!(
            DomainPattern::parse("*.10.0.0.1"),
            Err(DomainError::WildcardIp(_))
        ));
        assert!(matches!(
            DomainPattern::parse("http://*.example.com"),
            Err(DomainError::NotAHost(_))
        ));
    }

    #[test]
    fn matching() {
        let host = |s: &str| parse_host(s).unwrap();
        let exact = pat("example.com");
        assert!(exact.matches(&host("EXAMPLE.com.")));
        assert!(!exact.matches(&host("api.example.com")));
        let sub = pat("*.example.com");
        assert!(sub.matches(&host("api.example.com")));
        assert!(sub.matches(&host("a.b.example.com")));
        assert!(!sub.matches(&host("example.com")), "subdomains only");
        assert!(!sub.matches(&host("badexample.com")));
        assert!(!sub.matches(&host("example.com.evil.org")));
        let ip = pat("10.0.0.1");
        assert!(ip.matches(&host("10.0.0.1")));
        assert!(!ip.matches(&host("10.0.0.2")));
        assert!(!exact.matches(&host("10.0.0.1")));
    }
}
