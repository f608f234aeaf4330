//! The policy proxy's decisions, as pure functions (no I/O, no clock, no DNS).
//!
//! Invariants:
//! - Default deny: a host is allowed only when an allow pattern matches it
//!   and no deny pattern does (deny wins). An IP literal is allowed only by
//!   an exact IP pattern (`*.x` and names never match an address).
//! - An address is dialled only after [`vet_address`] passed it: non-public
//!   addresses (loopback, private, link-local, CGNAT, multicast, unspecified,
//!   documentation, benchmarking, reserved, and IPv6 forms embedding such an
//!   IPv4 address) are refused unless the address is *named*: given by an
//!   exact IP rule for an IP literal host, or by a `--resolve` entry.
//! - `--resolve HOST:PORT:ADDR` only says where a name lives; it never allows
//!   the name (the domain rules still decide).
//! - CONNECT is allowed only to [`Policy::connect_ports`] (default 443).
//!   Unless the port is in [`Policy::raw_tunnel_ports`] (default none), the
//!   tunnel must start with a TLS ClientHello whose SNI names the CONNECT
//!   host ([`scan_client_hello`], [`check_sni`]).
//! - Every refusal carries a [`Reason`] whose `snake_case` name is what the
//!   proxy writes into records and JSON error bodies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Serialize;

use crate::policy::domain::{parse_host, DomainError, DomainPattern, Host};

/// The CONNECT port allowed when none is configured.
pub const DEFAULT_CONNECT_PORT: u16 = 443;

/// Errors in the proxy's configuration (the `--resolve` syntax).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("--resolve {entry:?}: expected HOST:PORT:ADDR[,ADDR...] (curl's syntax), e.g. api.example.com:443:127.0.0.1")]
    ResolveSyntax { entry: String },
    #[error("--resolve {entry:?}: {host:?} is not a host name: {source}")]
    ResolveHost {
        entry: String,
        host: String,
        source: DomainError,
    },
    #[error("--resolve {entry:?}: {host} is already an IP address; only names can be mapped")]
    ResolveIpHost { entry: String, host: String },
    #[error("--resolve {entry:?}: {port:?} is not a port number (1-65535)")]
    ResolvePort { entry: String, port: String },
    #[error("--resolve {entry:?}: {addr:?} is not an IP address")]
    ResolveAddr { entry: String, addr: String },
    #[error("port 0 cannot be an allowed CONNECT port")]
    ConnectPortZero,
}

/// Whether the policy let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Why a request was refused, or why an allowed one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No allow pattern matches the host (default deny).
    DomainNotAllowed,
    /// A deny pattern matches the host (deny wins).
    DomainDenied,
    /// The run's rules allow the host, but the token's policy does not
    /// (a token only narrows).
    NotAllowedByToken,
    /// An IP literal host without an exact IP rule.
    IpLiteralNotAllowed,
    /// CONNECT to a port that is not allowed.
    PortNotAllowed,
    /// The host resolved only to non-public addresses that no rule names.
    NonPublicAddress,
    /// The request cap (`--max-requests`) is used up.
    MaxRequests,
    /// The Host header names another host or port than the absolute URI.
    HostHeaderMismatch,
    /// The ClientHello's SNI is not the CONNECT host.
    SniMismatch,
    /// The ClientHello has no SNI but the CONNECT host is a name.
    SniMissing,
    /// The tunnel did not start with a TLS ClientHello.
    NotTls,
    /// Not a proxy request (origin-form, missing/duplicate Host, bad authority).
    BadRequest,
    /// An absolute URI whose scheme is not `http` (use CONNECT for https).
    UnsupportedScheme,
    /// Allowed, but the name did not resolve.
    ResolveFailed,
    /// Allowed, but no vetted address accepted the connection.
    UpstreamUnreachable,
    /// Allowed, but the upstream did not answer in time.
    UpstreamTimeout,
    /// Allowed, but the upstream broke the HTTP exchange.
    UpstreamError,
    /// The client did not send its ClientHello in time.
    ClientTimeout,
    /// Inside an intercepted tunnel: the Host header (or absolute URI)
    /// names another host than the tunnel (domain fronting).
    DomainFronting,
    /// Inside an intercepted tunnel: the domain's method or path rules do
    /// not allow this request.
    RequestNotAllowed,
    /// The agent's TLS handshake with the proxy failed (it does not trust
    /// the run's CA, or spoke something else than TLS 1.2/1.3).
    ClientTls,
    /// Allowed, but the upstream's TLS certificate did not verify.
    UpstreamTls,
    /// A metered request would take the spend over `--max-spend-usd`.
    BudgetExceeded,
    /// A metered request names a model the price table does not know.
    UnknownModel,
    /// A metered request whose body cannot be priced (not JSON, no model,
    /// too large).
    UnpricedRequest,
    /// A request to another host carries a credential's placeholder.
    CredentialExfiltration,
    /// Under a spend budget: a request to a billable API the proxy cannot
    /// price (batches, embeddings, images, audio, realtime, background
    /// responses, an ambiguous path).
    UnmeteredEndpoint,
    /// Allowed, but cut off before it completed (the run ended, or the
    /// client went away while it waited for the upstream).
    Cancelled,
}

impl Reason {
    /// The `snake_case` name used in records and JSON bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DomainNotAllowed => "domain_not_allowed",
            Reason::DomainDenied => "domain_denied",
            Reason::NotAllowedByToken => "not_allowed_by_token",
            Reason::IpLiteralNotAllowed => "ip_literal_not_allowed",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::NonPublicAddress => "non_public_address",
            Reason::MaxRequests => "max_requests",
            Reason::HostHeaderMismatch => "host_header_mismatch",
            Reason::SniMismatch => "sni_mismatch",
            Reason::SniMissing => "sni_missing",
            Reason::NotTls => "not_tls",
            Reason::BadRequest => "bad_request",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::ResolveFailed => "resolve_failed",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::ClientTimeout => "client_timeout",
            Reason::DomainFronting => "domain_fronting",
            Reason::RequestNotAllowed => "request_not_allowed",
            Reason::ClientTls => "client_tls",
            Reason::UpstreamTls => "upstream_tls",
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::UnknownModel => "unknown_model",
            Reason::UnpricedRequest => "unpriced_request",
            Reason::CredentialExfiltration => "credential_exfiltration",
            Reason::UnmeteredEndpoint => "unmetered_endpoint",
            Reason::Cancelled => "cancelled",
        }
    }

    /// Whether this is a policy refusal (counted as denied) rather than a
    /// failure of an allowed request.
    pub fn decision(self) -> Decision {
        match self {
            Reason::ResolveFailed
            | Reason::UpstreamUnreachable
            | Reason::UpstreamTimeout
            | Reason::UpstreamError
            | Reason::UpstreamTls
            | Reason::Cancelled => Decision::Allow,
            _ => Decision::Deny,
        }
    }

    /// The HTTP status the proxy answers with.
    pub fn status(self) -> u16 {
        match self {
            Reason::MaxRequests => 429,
            Reason::BadRequest | Reason::UnsupportedScheme => 400,
            Reason::BudgetExceeded => 402,
            Reason::UnpricedRequest => 400,
            Reason::ResolveFailed
            | Reason::UpstreamUnreachable
            | Reason::UpstreamError
            | Reason::UpstreamTls => 502,
            Reason::UpstreamTimeout => 504,
            Reason::ClientTimeout => 408,
            _ => 403,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Allow and deny patterns, the default for names neither list matches,
/// and the token's allow list as a ceiling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub allow: Vec<DomainPattern>,
    pub deny: Vec<DomainPattern>,
    /// `default_policy: allow`: a host name no pattern matches is allowed
    /// (IP literals still need an exact rule).
    pub default_allow: bool,
    /// A token's allowed domains: nothing outside them is allowed, whatever
    /// the other rules say.
    pub ceiling: Option<Vec<DomainPattern>>,
}

/// What the rules say about one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDecision<'r> {
    Allowed(&'r DomainPattern),
    Denied {
        reason: Reason,
        rule: Option<&'r DomainPattern>,
    },
}

/// The rule recorded for a host allowed by `default_policy: allow`.
static DEFAULT_ALLOW: DomainPattern = DomainPattern::AnyName;

impl Rules {
    pub fn new(allow: Vec<DomainPattern>, deny: Vec<DomainPattern>) -> Self {
        Self {
            allow,
            deny,
            ..Self::default()
        }
    }

    /// Parse patterns as written in a policy or on the command line.
    pub fn parse<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<Self, DomainError> {
        Ok(Self::new(parse_patterns(allow)?, parse_patterns(deny)?))
    }

    /// Allow host names that no pattern matches (`default_policy: allow`).
    pub fn with_default_allow(mut self, yes: bool) -> Self {
        self.default_allow = yes;
        self
    }

    /// Bound everything by a token's allowed domains. When the run itself
    /// names no allowed domain (and allows nothing by default), the token's
    /// list is simply the allow list: the token alone says where the agent
    /// may go.
    pub fn with_ceiling(mut self, token: Vec<DomainPattern>) -> Self {
        if self.allow.is_empty() && !self.default_allow {
            self.allow = token;
        } else {
            self.ceiling = Some(token);
        }
        self
    }

    /// The allow patterns in effect: without a ceiling the allow list (or
    /// every name by default); with one, exactly the hosts both allow (each
    /// side's patterns that lie within the other side).
    pub fn effective_allow(&self) -> Vec<DomainPattern> {
        // Default allow adds every name; the explicit rules still count
        // (an IP literal is only ever allowed by one).
        let mut own = self.allow.clone();
        if self.default_allow {
            own.push(DomainPattern::AnyName);
        }
        let Some(ceiling) = &self.ceiling else {
            return own;
        };
        let mut out: Vec<DomainPattern> = Vec::new();
        for (side, other) in [(&own, ceiling), (ceiling, &own)] {
            for p in side {
                if other.iter().any(|o| p.within(o)) && !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// Deny wins; then the token's ceiling; then allow, else the default.
    pub fn check(&self, host: &Host) -> HostDecision<'_> {
        if let Some(rule) = self.deny.iter().find(|p| p.matches(host)) {
            return HostDecision::Denied {
                reason: Reason::DomainDenied,
                rule: Some(rule),
            };
        }
        if let Some(ceiling) = &self.ceiling {
            if !ceiling.iter().any(|p| p.matches(host)) {
                return HostDecision::Denied {
                    reason: Reason::NotAllowedByToken,
                    rule: None,
                };
            }
        }
        if let Some(rule) = self.allow.iter().find(|p| p.matches(host)) {
            return HostDecision::Allowed(rule);
        }
        match host {
            Host::Name(_) if self.default_allow => HostDecision::Allowed(&DEFAULT_ALLOW),
            Host::Ip(_) => HostDecision::Denied {
                reason: Reason::IpLiteralNotAllowed,
                rule: None,
            },
            Host::Name(_) => HostDecision::Denied {
                reason: Reason::DomainNotAllowed,
                rule: None,
            },
        }
    }
}

/// Parse a list of patterns as written in a policy or on the command line.
pub fn parse_patterns<S: AsRef<str>>(list: &[S]) -> Result<Vec<DomainPattern>, DomainError> {
    list.iter()
        .map(|s| DomainPattern::parse(s.as_ref()))
        .collect()
}

/// One `--resolve HOST:PORT:ADDR[,ADDR...]` entry (curl's syntax; IPv6
/// addresses may be bracketed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Normalised host name (never an IP literal).
    pub host: String,
    pub port: u16,
    /// At least one address, in the order given.
    pub addrs: Vec<IpAddr>,
}

impl FromStr for ResolveOverride {
    type Err = DecideError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let syntax = || DecideError::ResolveSyntax {
            entry: entry.to_string(),
        };
        let mut parts = entry.splitn(3, ':');
        let (Some(host), Some(port), Some(addrs)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax());
        };
        if host.is_empty() || host.starts_with(['+', '-', '*']) || addrs.is_empty() {
            return Err(syntax());
        }
        let host = match parse_host(host) {
            Ok(Host::Name(name)) => name,
            Ok(Host::Ip(_)) => {
                return Err(DecideError::ResolveIpHost {
                    entry: entry.to_string(),
                    host: host.to_string(),
                })
            }
            Err(source) => {
                return Err(DecideError::ResolveHost {
                    entry: entry.to_string(),
                    host: host.to_string(),
                    source,
                })
            }
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                return Err(DecideError::ResolvePort {
                    entry: entry.to_string(),
                    port: port.to_string(),
                })
            }
        };
        let addrs = addrs
            .split(',')
            .map(|a| {
                let bare = a
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(a);
                bare.parse::<IpAddr>()
                    .map_err(|_| DecideError::ResolveAddr {
                        entry: entry.to_string(),
                        addr: a.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { host, port, addrs })
    }
}

/// Where an allowed host is to be dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses<'p> {
    /// From `--resolve`: named, not vetted, no DNS.
    Named(&'p [IpAddr]),
    /// An IP literal allowed by an exact IP rule: named.
    Literal(IpAddr),
    /// A name without `--resolve`: resolve it, then vet every address.
    Lookup,
}

/// The verdict on a request target before any address is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'p> {
    Allow {
        rule: &'p DomainPattern,
        addrs: Addresses<'p>,
    },
    Deny {
        reason: Reason,
        rule: Option<&'p DomainPattern>,
    },
}

/// A plain HTTP request (absolute URI) or a CONNECT tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Connect,
}

/// Which requests a domain allows inside an intercepted tunnel (policy
/// file: `methods` and `paths` of an `allow_domains` entry). Empty lists
/// allow any method or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRule {
    pub domain: DomainPattern,
    /// Upper-case method names.
    pub methods: Vec<String>,
    /// Path prefixes, each starting with `/`.
    pub paths: Vec<String>,
}

impl RequestRule {
    /// Whether `method` and `path` are allowed. A path with dot segments
    /// or encoded dots/slashes is refused when path rules exist: the
    /// upstream may normalise `/v1/../admin` to `/admin`.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        let method_ok =
            self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
        let path_ok = self.paths.is_empty()
            || (!ambiguous_path(path) && self.paths.iter().any(|p| path.starts_with(p.as_str())));
        method_ok && path_ok
    }
}

/// A path that an upstream could read differently than a prefix check.
fn ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.split('/').any(|seg| seg == "." || seg == "..")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.contains('\\')
}

/// Everything the proxy decides with, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: Rules,
    resolve: Vec<ResolveOverride>,
    connect_ports: Vec<u16>,
    raw_tunnel_ports: Vec<u16>,
    request_rules: Vec<RequestRule>,
    passthrough: Vec<DomainPattern>,
}

impl Policy {
    /// `connect_ports` empty means the default (443 only). For duplicate
    /// `--resolve` entries (same host and port) the later one wins, so flags
    /// given after a policy file override it.
    pub fn new(
        rules: Rules,
        resolve: Vec<ResolveOverride>,
        connect_ports: Vec<u16>,
        raw_tunnel_ports: Vec<u16>,
    ) -> Result<Self, DecideError> {
        if connect_ports.contains(&0) {
            return Err(DecideError::ConnectPortZero);
        }
        let mut merged: Vec<ResolveOverride> = Vec::with_capacity(resolve.len());
        for entry in resolve {
            merged.retain(|e| !(e.host == entry.host && e.port == entry.port));
            merged.push(entry);
        }
        let connect_ports = if connect_ports.is_empty() {
            vec![DEFAULT_CONNECT_PORT]
        } else {
            connect_ports
        };
        Ok(Self {
            rules,
            resolve: merged,
            connect_ports,
            raw_tunnel_ports,
            request_rules: Vec::new(),
            passthrough: Vec::new(),
        })
    }

    /// Method and path rules for requests inside intercepted tunnels; the
    /// first rule whose domain matches a host applies.
    pub fn with_request_rules(mut self, rules: Vec<RequestRule>) -> Self {
        self.request_rules = rules;
        self
    }

    /// Hosts whose tunnels are spliced, not intercepted (`tls: passthrough`).
    pub fn with_passthrough(mut self, hosts: Vec<DomainPattern>) -> Self {
        self.passthrough = hosts;
        self
    }

    /// Whether tunnels to `host` are spliced even when interception is on.
    pub fn passthrough(&self, host: &Host) -> bool {
        self.passthrough.iter().any(|p| p.matches(host))
    }

    /// Why a request inside an intercepted tunnel is refused by its
    /// domain's method/path rule, if it is.
    pub fn request_rule(&self, host: &Host, method: &str, path: &str) -> Option<Reason> {
        let rule = self.request_rules.iter().find(|r| r.domain.matches(host))?;
        (!rule.allows(method, path)).then_some(Reason::RequestNotAllowed)
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn connect_ports(&self) -> &[u16] {
        &self.connect_ports
    }

    pub fn raw_tunnel_ports(&self) -> &[u16] {
        &self.raw_tunnel_ports
    }

    /// The `--resolve` addresses for `host:port`, if any (`host` normalised).
    pub fn resolve_override(&self, host: &str, port: u16) -> Option<&[IpAddr]> {
        self.resolve
            .iter()
            .find(|e| e.port == port && e.host == host)
            .map(|e| e.addrs.as_slice())
    }

    /// Decide on a target: port (for CONNECT), then the domain rules, then
    /// where the allowed host is to be dialled.
    pub fn decide(&self, kind: Kind, host: &Host, port: u16) -> Verdict<'_> {
        if port == 0 {
            return Verdict::Deny {
                reason: Reason::BadRequest,
                rule: None,
            };
        }
        if kind == Kind::Connect && !self.connect_ports.contains(&port) {
            return Verdict::Deny {
                reason: Reason::PortNotAllowed,
                rule: None,
            };
        }
        let rule = match self.rules.check(host) {
            HostDecision::Allowed(rule) => rule,
            HostDecision::Denied { reason, rule } => return Verdict::Deny { reason, rule },
        };
        let addrs = match host {
            Host::Ip(ip) => Addresses::Literal(*ip),
            Host::Name(name) => match self.resolve_override(name, port) {
                Some(addrs) => Addresses::Named(addrs),
                None => Addresses::Lookup,
            },
        };
        Verdict::Allow { rule, addrs }
    }

    /// Whether a tunnel to `port` must start with a TLS ClientHello.
    pub fn requires_tls(&self, port: u16) -> bool {
        !self.raw_tunnel_ports.contains(&port)
    }
}

/// Take one slot of the request cap: the new count of granted requests, or
/// `None` when `granted` already reached `max`.
pub fn take_request_slot(granted: u64, max: Option<u64>) -> Option<u64> {
    match max {
        Some(max) if granted >= max => None,
        _ => Some(granted.saturating_add(1)),
    }
}

/// What kind of address this is, for vetting and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Unspecified,
    Loopback,
    /// RFC 1918 and IPv6 unique local (fc00::/7).
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10 (carrier-grade NAT).
    SharedCgnat,
    Multicast,
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15.
    Benchmarking,
    /// Everything else that is not globally routable unicast (0/8, 192.0.0/24,
    /// 240/4, 6to4 relays, IETF protocol assignments, discard, deprecated
    /// site-local and IPv4-compatible IPv6, outside 2000::/3, ...).
    Reserved,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::SharedCgnat => "shared (CGNAT)",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Reserved => "reserved",
        }
    }
}

/// Classify an address. IPv6 forms that embed an IPv4 address (mapped,
/// NAT64 well-known prefix, 6to4) take the class of the embedded address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (0, _, _) => AddressClass::Reserved,
        (10, _, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (127, _, _) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 0, 0) => AddressClass::Reserved,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (192, 88, 99) => AddressClass::Reserved,
        (192, 168, _) => AddressClass::Private,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let embedded_low32 = || Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32);
    match seg[0] {
        // NAT64 well-known prefix 64:ff9b::/96 carries a public IPv4 address.
        0x0064 if seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] => classify_v4(embedded_low32()),
        // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
        0x2002 => classify_v4(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32)),
        0x2001 if seg[1] == 0x0db8 => AddressClass::Documentation,
        // 2001::/23: IETF protocol assignments (Teredo, ORCHID, benchmarking...).
        0x2001 if seg[1] < 0x0200 => AddressClass::Reserved,
        0x3fff if seg[1] < 0x1000 => AddressClass::Documentation,
        s if s & 0xff00 == 0xff00 => AddressClass::Multicast,
        s if s & 0xfe00 == 0xfc00 => AddressClass::Private,
        s if s & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        // Global unicast is 2000::/3; all else (site-local, IPv4-compatible,
        // discard 100::/64, NAT64 local-use, ...) is not for us to dial.
        s if s & 0xe000 == 0x2000 => AddressClass::Public,
        _ => AddressClass::Reserved,
    }
}

/// Whether the proxy may dial `ip`: public addresses always, any other only
/// when `named` (an exact IP rule or a `--resolve` entry gave it).
pub fn vet_address(ip: IpAddr, named: bool) -> Result<(), Reason> {
    if named || classify(ip) == AddressClass::Public {
        Ok(())
    } else {
        Err(Reason::NonPublicAddress)
    }
}

/// Split an authority (`host`, `host:port`, `[v6]:port`) and normalise the
/// host. An empty port (`host:`) means the default. `None` when malformed.
pub fn parse_authority(authority: &str, default_port: u16) -> Option<(Host, u16)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    let bracketed = host.starts_with('[');
    if bracketed != host.ends_with(']') {
        return None;
    }
    let host = parse_host(host).ok()?;
    // An IPv6 literal in an authority must be bracketed.
    if !bracketed && matches!(host, Host::Ip(IpAddr::V6(_))) {
        return None;
    }
    Some((host, port))
}

/// Whether an authority (a Host header, or an absolute URI's authority)
/// names `host:port`, where an authority without a port means
/// `default_port` (80 for http, 443 inside an intercepted tunnel).
pub fn authority_agrees(host: &Host, port: u16, authority: &str, default_port: u16) -> bool {
    match parse_authority(authority, default_port) {
        Some((h, p)) => &h == host && p == port,
        None => false,
    }
}

/// Check a ClientHello's SNI against the CONNECT host: a name must be sent
/// as SNI exactly (after normalisation); an IP literal host must come
/// without SNI (clients never send SNI for addresses).
pub fn check_sni(connect_host: &Host, sni: Option<&[u8]>) -> Result<(), Reason> {
    match (connect_host, sni) {
        (Host::Ip(_), None) => Ok(()),
        (Host::Ip(_), Some(_)) => Err(Reason::SniMismatch),
        (Host::Name(_), None) => Err(Reason::SniMissing),
        (Host::Name(name), Some(raw)) => {
            let agrees = std::str::from_utf8(raw)
                .ok()
                .and_then(|s| parse_host(s).ok())
                .is_some_and(|h| matches!(h, Host::Name(ref n) if n == name));
            if agrees {
                Ok(())
            } else {
                Err(Reason::SniMismatch)
            }
        }
    }
}

/// The result of looking at the first bytes of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloScan<'a> {
    /// Could still become a ClientHello: read more.
    Incomplete,
    /// Not a TLS ClientHello: other bytes, a malformed hello, or a hello
    /// split over several records (no real client does that; refused).
    NotTls,
    /// A complete ClientHello; `sni` is its `host_name`, if any.
    ClientHello { sni: Option<&'a [u8]> },
}

const TLS_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
/// The largest TLS plaintext record fragment (2^14).
const MAX_RECORD: usize = 16384;

/// The most bytes [`scan_client_hello`] can need: one record header plus
/// the largest record.
pub const MAX_CLIENT_HELLO: usize = 5 + MAX_RECORD;

/// Scan the bytes a client sent into a tunnel for a TLS ClientHello, which
/// must come whole in the first record. Returns [`HelloScan::Incomplete`]
/// only while `buf` is shorter than that record (at most
/// [`MAX_CLIENT_HELLO`] bytes).
pub fn scan_client_hello(buf: &[u8]) -> HelloScan<'_> {
    match buf.first() {
        None => return HelloScan::Incomplete,
        Some(&TLS_HANDSHAKE) => {}
        Some(_) => return HelloScan::NotTls,
    }
    match buf.get(1) {
        None => return HelloScan::Incomplete,
        Some(3) => {}
        Some(_) => return HelloScan::NotTls,
    }
    let Some(header) = buf.get(..5) else {
        return HelloScan::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if !(4..=MAX_RECORD).contains(&len) {
        return HelloScan::NotTls;
    }
    let Some(fragment) = buf.get(5..5 + len) else {
        return HelloScan::Incomplete;
    };
    if fragment[0] != HANDSHAKE_CLIENT_HELLO {
        return HelloScan::NotTls;
    }
    let body_len = (usize::from(fragment[1]) << 16)
        | (usize::from(fragment[2]) << 8)
        | usize::from(fragment[3]);
    match fragment.get(4..4 + body_len).map(hello_sni) {
        Some(Ok(sni)) => HelloScan::ClientHello { sni },
        _ => HelloScan::NotTls,
    }
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ()> {
        if self.0.len() < n {
            return Err(());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ()> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ()> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The SNI `host_name` of a complete ClientHello body (after the 4-byte
/// handshake header). `Err` when malformed.
fn hello_sni(body: &[u8]) -> Result<Option<&[u8]>, ()> {
    let mut c = Cursor(body);
    let version = c.take(2)?;
    if version[0] != 3 {
        return Err(());
    }
    c.take(32)?; // random
    let session_id = c.vec8()?;
    if session_id.len() > 32 {
        return Err(());
    }
    let suites = c.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(());
    }
    if c.vec8()?.is_empty() {
        return Err(()); // compression methods
    }
    if c.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut exts = Cursor(c.vec16()?);
    if !c.0.is_empty() {
        return Err(());
    }
    let mut sni = None;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if sni.is_some() {
            return Err(()); // duplicate extension
        }
        let mut list = Cursor(data);
        let mut names = Cursor(list.vec16()?);
        if !list.0.is_empty() {
            return Err(());
        }
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                if sni.is_some() || name.is_empty() {
                    return Err(()); // at most one host_name (RFC 6066)
                }
                sni = Some(name);
            }
        }
    }
    Ok(sni)
}

/// A TLS fatal alert record (plaintext, as allowed before the handshake):
/// `access_denied` (49), sent when a tunnel's ClientHello is refused.
pub const TLS_ALERT_ACCESS_DENIED: [u8; 7] = [21, 3, 3, 0, 2, 2, 49];

/// A TLS fatal `internal_error` (80) alert, sent when the upstream of an
/// accepted tunnel cannot be reached.
pub const TLS_ALERT_INTERNAL_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

/// Build a minimal TLS 1.2-style ClientHello record carrying `sni` (if any).
/// For tests and diagnostics: it is a syntactically valid ClientHello, not
/// one a server could finish a handshake with usefully.
pub fn build_client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let entry_len = 3 + name.len();
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
        exts.extend_from_slice(name);
    }
    let mut body = Vec::new();
    body.extend_from_slice(&[3, 3]);
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![TLS_HANDSHAKE, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        parse_host(s).unwrap()
    }

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        Rules::parse(allow, deny).unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str], resolve: &[&str]) -> Policy {
        Policy::new(
            rules(allow, deny),
            resolve.iter().map(|r| r.parse().unwrap()).collect(),
            vec![],
            vec![],
        )
        .unwrap()
    }

    fn reason(v: Verdict<'_>) -> Option<Reason> {
        match v {
            Verdict::Deny { reason, .. } => Some(reason),
            Verdict::Allow { .. } => None,
        }
    }

    fn check(r: &Rules, h: &str) -> Result<String, Reason> {
        match r.check(&host(h)) {
            HostDecision::Allowed(rule) => Ok(rule.to_string()),
            HostDecision::Denied { reason, .. } => Err(reason),
        }
    }

    #[test]
    fn a_token_is_a_ceiling_and_alone_the_allow_list() {
        let token = || parse_patterns(&["api.test", "*.docs.test"]).unwrap();
        // Alone: the token's list is the allow list.
        let alone = Rules::default().with_ceiling(token());
        assert_eq!(check(&alone, "api.test"), Ok("api.test".into()));
        assert_eq!(check(&alone, "evil.test"), Err(Reason::DomainNotAllowed));
        // With the run's own list: the intersection.
        let both = rules(&["api.test", "evil.test"], &[]).with_ceiling(token());
        assert_eq!(check(&both, "api.test"), Ok("api.test".into()));
        assert_eq!(check(&both, "evil.test"), Err(Reason::NotAllowedByToken));
        assert_eq!(check(&both, "a.docs.test"), Err(Reason::DomainNotAllowed));
        // Deny still wins inside the token's list.
        let deny = rules(&[], &["api.test"]).with_ceiling(token());
        assert_eq!(check(&deny, "api.test"), Err(Reason::DomainDenied));
    }

    #[test]
    fn effective_allow_is_the_intersection() {
        let show = |r: &Rules| -> Vec<String> {
            r.effective_allow()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let token = || parse_patterns(&["api.test", "*.docs.test"]).unwrap();
        let r = rules(&["api.test", "evil.test", "*.docs.test"], &[]).with_ceiling(token());
        assert_eq!(show(&r), ["api.test", "*.docs.test"]);
        // *.test covers both of the token's: both stay, nothing else.
        let r = rules(&["*.test"], &[]).with_ceiling(token());
        assert_eq!(show(&r), ["api.test", "*.docs.test"]);
        let r = rules(&["*.other"], &[]).with_ceiling(token());
        assert!(show(&r).is_empty());
        let r = rules(&["a.docs.test", "*.b.docs.test"], &[]).with_ceiling(token());
        assert_eq!(show(&r), ["a.docs.test", "*.b.docs.test"]);
        let r = rules(&[], &[])
            .with_default_allow(true)
            .with_ceiling(token());
        assert_eq!(show(&r), ["api.test", "*.docs.test"]);
        assert_eq!(show(&rules(&[], &[]).with_default_allow(true)), ["*"]);
        // Default allow keeps the IP rules it does not cover.
        let r = rules(&["10.0.0.1"], &[]).with_default_allow(true);
        assert_eq!(show(&r), ["10.0.0.1", "*"]);
        let r = rules(&["10.0.0.1"], &[])
            .with_default_allow(true)
            .with_ceiling(parse_patterns(&["api.test", "10.0.0.1"]).unwrap());
        assert_eq!(show(&r), ["10.0.0.1", "api.test"]);
    }

    #[test]
    fn default_allow_passes_names_but_not_ip_literals() {
        let open = rules(&[], &["bad.test"]).with_default_allow(true);
        assert_eq!(check(&open, "any.test"), Ok("*".into()));
        assert_eq!(check(&open, "bad.test"), Err(Reason::DomainDenied));
        assert_eq!(check(&open, "10.0.0.1"), Err(Reason::IpLiteralNotAllowed));
        let within = rules(&[], &[])
            .with_default_allow(true)
            .with_ceiling(parse_patterns(&["api.test"]).unwrap());
        assert_eq!(check(&within, "api.test"), Ok("*".into()));
        assert_eq!(check(&within, "x.test"), Err(Reason::NotAllowedByToken));
    }

    #[test]
    fn exact_and_subdomain_semantics() {
        let p = policy(&["example.com", "*.api.test"], &[], &[]);
        assert_eq!(reason(p.decide(Kind::Http, &host("example.com"), 80)), None);
        assert_eq!(
            reason(p.decide(Kind::Http, &host("EXAMPLE.com."), 80)),
            None
        );
        assert_eq!(
            reason(p.decide(Kind::Http, &host("www.example.com"), 80)),
            Some(Reason::DomainNotAllowed)
        );
        assert_eq!(reason(p.decide(Kind::Http, &host("v1.api.test"), 80)), None);
        assert_eq!(
            reason(p.decide(Kind::Http, &host("api.test"), 80)),
            Some(Reason::DomainNotAllowed),
            "*.x is subdomains only"
        );
        assert_eq!(
            reason(p.decide(Kind::Http, &host("evilapi.test"), 80)),
            Some(Reason::DomainNotAllowed)
        );
    }

    #[test]
    fn deny_wins_and_default_deny() {
        let p = policy(&["*.example.com"], &["secret.example.com"], &[]);
        match p.decide(Kind::Http, &host("secret.example.com"), 80) {
            Verdict::Deny {
                reason: Reason::DomainDenied,
                rule: Some(rule),
            } => assert_eq!(rule.to_string(), "secret.example.com"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reason(p.decide(Kind::Http, &host("a.example.com"), 80)),
            None
        );
        let empty = policy(&[], &[], &[]);
        assert_eq!(
            reason(empty.decide(Kind::Http, &host("a.example.com"), 80)),
            Some(Reason::DomainNotAllowed)
        );
    }

    #[test]
    fn ip_literals_only_by_exact_rule() {
        let p = policy(&["*.example.com", "10.1.2.3", "::1"], &[], &[]);
        assert_eq!(
            reason(p.decide(Kind::Http, &host("10.1.2.4"), 80)),
            Some(Reason::IpLiteralNotAllowed)
        );
        match p.decide(Kind::Http, &host("10.1.2.3"), 80) {
            Verdict::Allow {
                addrs: Addresses::Literal(ip),
                ..
            } => assert_eq!(ip.to_string(), "10.1.2.3"),
            other => panic!("{other:?}"),
        }
        assert_eq!(reason(p.decide(Kind::Http, &host("[::1]"), 80)), None);
    }

    #[test]
    fn connect_ports() {
        let p = policy(&["example.com"], &[], &[]);
        assert_eq!(
            reason(p.decide(Kind::Connect, &host("example.com"), 443)),
            None
        );
        assert_eq!(
            reason(p.decide(Kind::Connect, &host("example.com"), 22)),
            Some(Reason::PortNotAllowed)
        );
        assert_eq!(
            reason(p.decide(Kind::Http, &host("example.com"), 8080)),
            None
        );
        assert_eq!(
            reason(p.decide(Kind::Http, &host("example.com"), 0)),
            Some(Reason::BadRequest)
        );
        let custom =
            Policy::new(rules(&["example.com"], &[]), vec![], vec![8443], vec![8443]).unwrap();
        assert_eq!(
            reason(custom.decide(Kind::Connect, &host("example.com"), 443)),
            Some(Reason::PortNotAllowed)
        );
        assert!(!custom.requires_tls(8443));
        assert!(p.requires_tls(443));
        assert_eq!(
            Policy::new(Rules::default(), vec![], vec![0], vec![]),
            Err(DecideError::ConnectPortZero)
        );
    }

    #[test]
    fn resolve_overrides() {
        let r: ResolveOverride = "API.Example.com:8080:127.0.0.1,[::1]".parse().unwrap();
        assert_eq!(r.host, "api.example.com");
        assert_eq!(r.port, 8080);
        assert_eq!(
            r.addrs,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        let v6: ResolveOverride = "a.test:443:::1".parse().unwrap();
        assert_eq!(v6.addrs, vec!["::1".parse::<IpAddr>().unwrap()]);
        for bad in [
            "a.test",
            "a.test:443",
            "a.test:443:",
            ":443:1.2.3.4",
            "+a.test:443:1.2.3.4",
        ] {
            assert!(
                matches!(
                    bad.parse::<ResolveOverride>(),
                    Err(DecideError::ResolveSyntax { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            "a.test:0:1.2.3.4".parse::<ResolveOverride>(),
            Err(DecideError::ResolvePort { .. })
        ));
        assert!(matches!(
            "a.test:+1:1.2.3.4".parse::<ResolveOverride>(),
            Err(DecideError::ResolvePort { .. })
        ));
        assert!(matches!(
            "a.test:80:nope".parse::<ResolveOverride>(),
            Err(DecideError::ResolveAddr { .. })
        ));
        assert!(matches!(
            "1.2.3.4:80:5.6.7.8".parse::<ResolveOverride>(),
            Err(DecideError::ResolveIpHost { .. })
        ));
        assert!(matches!(
            "a b:80:5.6.7.8".parse::<ResolveOverride>(),
            Err(DecideError::ResolveHost { .. })
        ));

        let p = policy(
            &["api.example.com"],
            &[],
            &[
                "api.example.com:80:10.0.0.1",
                "api.example.com:80:127.0.0.1",
                "other.test:80:127.0.0.2",
            ],
        );
        match p.decide(Kind::Http, &host("api.example.com"), 80) {
            Verdict::Allow {
                addrs: Addresses::Named(a),
                ..
            } => assert_eq!(
                a,
                &["127.0.0.1".parse::<IpAddr>().unwrap()],
                "later entry wins"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.decide(Kind::Http, &host("api.example.com"), 8080),
            Verdict::Allow {
                addrs: Addresses::Lookup,
                ..
            }
        ));
        assert_eq!(
            reason(p.decide(Kind::Http, &host("other.test"), 80)),
            Some(Reason::DomainNotAllowed),
            "--resolve does not allow a name"
        );
    }

    #[test]
    fn address_classes() {
        let class = |s: &str| classify(s.parse().unwrap());
        for (addr, want) in [
            ("8.8.8.8", AddressClass::Public),
            ("1.1.1.1", AddressClass::Public),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Reserved),
            ("10.0.0.1", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("172.32.0.1", AddressClass::Public),
            ("192.168.1.1", AddressClass::Private),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::SharedCgnat),
            ("100.127.255.255", AddressClass::SharedCgnat),
            ("100.128.0.1", AddressClass::Public),
            ("224.0.0.1", AddressClass::Multicast),
            ("239.255.255.250", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.2.1", AddressClass::Documentation),
            ("198.51.100.7", AddressClass::Documentation),
            ("203.0.113.9", AddressClass::Documentation),
            ("198.18.0.1", AddressClass::Benchmarking),
            ("192.0.0.8", AddressClass::Reserved),
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::ffff:8.8.8.8", AddressClass::Public),
            ("::127.0.0.1", AddressClass::Reserved),
            ("64:ff9b::10.0.0.1", AddressClass::Private),
            ("64:ff9b::8.8.8.8", AddressClass::Public),
            ("64:ff9b:1::1", AddressClass::Reserved),
            ("2002:7f00:1::1", AddressClass::Loopback),
            ("2002:0808:0808::1", AddressClass::Public),
            ("2001::1", AddressClass::Reserved),
            ("2001:db8::1", AddressClass::Documentation),
            ("3fff::1", AddressClass::Documentation),
            ("fc00::1", AddressClass::Private),
            ("fd12:3456::1", AddressClass::Private),
            ("fe80::1", AddressClass::LinkLocal),
            ("fec0::1", AddressClass::Reserved),
            ("ff02::1", AddressClass::Multicast),
            ("100::1", AddressClass::Reserved),
            ("2606:4700::1111", AddressClass::Public),
            ("2a00:1450:4001::1", AddressClass::Public),
        ] {
            assert_eq!(class(addr), want, "{addr}");
        }
        assert_eq!(
            vet_address("127.0.0.1".parse().unwrap(), false),
            Err(Reason::NonPublicAddress)
        );
        assert_eq!(vet_address("127.0.0.1".parse().unwrap(), true), Ok(()));
        assert_eq!(vet_address("8.8.8.8".parse().unwrap(), false), Ok(()));
    }

    #[test]
    fn request_cap() {
        assert_eq!(take_request_slot(0, None), Some(1));
        assert_eq!(take_request_slot(0, Some(2)), Some(1));
        assert_eq!(take_request_slot(1, Some(2)), Some(2));
        assert_eq!(take_request_slot(2, Some(2)), None);
        assert_eq!(take_request_slot(0, Some(0)), None);
    }

    #[test]
    fn host_header() {
        let h = host("api.example.com");
        assert!(authority_agrees(&h, 80, "api.example.com", 80));
        assert!(authority_agrees(&h, 80, "API.example.com.", 80));
        assert!(authority_agrees(&h, 80, "api.example.com:80", 80));
        assert!(authority_agrees(&h, 80, "api.example.com:", 80));
        assert!(!authority_agrees(&h, 80, "api.example.com:8080", 80));
        assert!(!authority_agrees(&h, 8080, "api.example.com", 80));
        assert!(authority_agrees(&h, 8080, "api.example.com:8080", 80));
        assert!(!authority_agrees(&h, 80, "evil.com", 80));
        assert!(!authority_agrees(&h, 80, "api.example.com:80:80", 80));
        assert!(authority_agrees(&h, 443, "api.example.com", 443));
        let rule = RequestRule {
            domain: DomainPattern::parse("api.example.com").unwrap(),
            methods: vec!["POST".into()],
            paths: vec!["/v1/".into()],
        };
        assert!(rule.allows("post", "/v1/chat/completions"));
        assert!(!rule.allows("GET", "/v1/models"));
        assert!(!rule.allows("POST", "/admin"));
        assert!(!rule.allows("POST", "/v1/../admin"));
        assert!(!rule.allows("POST", "/v1/%2e%2e/admin"));
        let p = Policy::new(Rules::default(), vec![], vec![], vec![])
            .unwrap()
            .with_request_rules(vec![rule])
            .with_passthrough(vec![DomainPattern::parse("*.pinned.test").unwrap()]);
        assert_eq!(
            p.request_rule(&h, "GET", "/"),
            Some(Reason::RequestNotAllowed)
        );
        assert_eq!(p.request_rule(&h, "POST", "/v1/x"), None);
        let other = parse_host("other.example.com").unwrap();
        assert_eq!(p.request_rule(&other, "DELETE", "/x"), None);
        assert!(p.passthrough(&parse_host("a.pinned.test").unwrap()));
        assert!(!p.passthrough(&h));
        assert!(authority_agrees(&h, 443, "api.example.com:443", 443));
        assert!(!authority_agrees(&h, 443, "api.example.com", 80));
        assert!(!authority_agrees(&h, 443, "other.example.com", 443));
        assert!(!authority_agrees(&h, 80, "api.example.com:x", 80));
        assert!(!authority_agrees(&h, 80, "", 80));
        let v6 = host("[::1]");
        assert!(authority_agrees(&v6, 80, "[::1]", 80));
        assert!(authority_agrees(&v6, 8080, "[::1]:8080", 80));
        assert!(!authority_agrees(&v6, 80, "::1", 80));
        assert!(!authority_agrees(&v6, 80, "[::1", 80));
        assert!(!authority_agrees(&v6, 80, "[::1]x", 80));
        assert_eq!(
            parse_authority("Example.com:443", 0),
            Some((host("example.com"), 443))
        );
        assert_eq!(parse_authority("example.com:99999", 0), None);
    }

    #[test]
    fn sni() {
        let name = host("api.example.com");
        assert_eq!(check_sni(&name, Some(b"api.example.com")), Ok(()));
        assert_eq!(check_sni(&name, Some(b"API.example.com.")), Ok(()));
        assert_eq!(
            check_sni(&name, Some(b"evil.com")),
            Err(Reason::SniMismatch)
        );
        assert_eq!(check_sni(&name, Some(b"\xff")), Err(Reason::SniMismatch));
        assert_eq!(check_sni(&name, None), Err(Reason::SniMissing));
        let ip = host("10.0.0.1");
        assert_eq!(check_sni(&ip, None), Ok(()));
        assert_eq!(check_sni(&ip, Some(b"10.0.0.1")), Err(Reason::SniMismatch));
    }

    #[test]
    fn client_hello_scan() {
        let hello = build_client_hello(Some("api.example.com"));
        assert_eq!(
            scan_client_hello(&hello),
            HelloScan::ClientHello {
                sni: Some(b"api.example.com".as_slice())
            }
        );
        for cut in 0..hello.len() {
            assert_eq!(
                scan_client_hello(&hello[..cut]),
                HelloScan::Incomplete,
                "cut {cut}"
            );
        }
        let none = build_client_hello(None);
        assert_eq!(
            scan_client_hello(&none),
            HelloScan::ClientHello { sni: None }
        );
        assert_eq!(scan_client_hello(b"GET / HTTP/1.1\r\n"), HelloScan::NotTls);
        assert_eq!(scan_client_hello(b"SSH-2.0-x"), HelloScan::NotTls);
        assert_eq!(scan_client_hello(&[22, 2]), HelloScan::NotTls);
        // A handshake record that is not a ClientHello.
        let mut server_hello = hello.clone();
        server_hello[5] = 2;
        assert_eq!(scan_client_hello(&server_hello), HelloScan::NotTls);
        // Corrupt the extensions length: malformed, refused.
        let mut bad = hello.clone();
        let n = bad.len();
        bad[n - 20] = 0xff;
        assert_eq!(scan_client_hello(&bad), HelloScan::NotTls);
        // A record longer than TLS allows is refused at once.
        assert_eq!(
            scan_client_hello(&[22, 3, 1, 0x40, 0x01]),
            HelloScan::NotTls
        );
        // Trailing bytes after the extensions are malformed.
        let mut trailing = none.clone();
        trailing[4] += 1;
        trailing[8] += 1;
        trailing.push(0);
        assert_eq!(scan_client_hello(&trailing), HelloScan::NotTls);
    }

    #[test]
    fn client_hello_split_over_records() {
        let whole = build_client_hello(Some("a.test"));
        let hs = &whole[5..];
        let (first, second) = hs.split_at(60);
        let mut split = vec![22, 3, 1];
        split.extend_from_slice(&(first.len() as u16).to_be_bytes());
        split.extend_from_slice(first);
        split.extend_from_slice(&[22, 3, 1]);
        split.extend_from_slice(&(second.len() as u16).to_be_bytes());
        split.extend_from_slice(second);
        // Refused as soon as the first record shows the split, never read
        // as "no SNI".
        assert_eq!(scan_client_hello(&split), HelloScan::NotTls);
        assert_eq!(scan_client_hello(&split[..70]), HelloScan::NotTls);
    }

    #[test]
    fn reasons() {
        assert_eq!(Reason::MaxRequests.status(), 429);
        assert_eq!(Reason::DomainDenied.status(), 403);
        assert_eq!(Reason::UpstreamTimeout.status(), 504);
        assert_eq!(Reason::UpstreamUnreachable.decision(), Decision::Allow);
        assert_eq!(Reason::SniMismatch.decision(), Decision::Deny);
        assert_eq!(
            serde_json::to_string(&Reason::IpLiteralNotAllowed).unwrap(),
            "\"ip_literal_not_allowed\""
        );
        assert_eq!(
            Reason::HostHeaderMismatch.to_string(),
            "host_header_mismatch"
        );
    }
}
