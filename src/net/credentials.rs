//! Credential injection: secrets never enter the sandbox (pure core: no
//! network I/O; only [`Source::load`] and the loaders built on it read the
//! environment or a file).
//!
//! The agent gets a [`Placeholder`] in its environment instead of each real
//! API key. The proxy calls [`Credentials::rewrite_headers`] on every request
//! it can see: a placeholder in a header value bound for one of the
//! credential's hosts is replaced with the [`Secret`]; a placeholder bound for
//! any other host is an [`Exfiltration`] and the request must be refused.
//!
//! Invariants:
//! - A [`Secret`] is never formatted: it has no `Display`, its `Debug` prints
//!   `Secret(<redacted>)`, and no error, listing or [`Exfiltration`] holds it.
//!   It is non-empty printable ASCII (0x20..=0x7E) with no whitespace at
//!   either end, so it is valid inside any HTTP header value.
//! - A placeholder is `vallignus-ph-<name, lowercased>-<32 lowercase hex>`,
//!   the hex from the OS CSPRNG, fresh for every run. [`PLACEHOLDER_PREFIX`]
//!   occurs in a placeholder only at its start (names are `[a-z0-9_]` once
//!   lowercased and the hex has no `-`), and no placeholder of a run is a
//!   substring of another (checked when the set is built), so one scan for the
//!   prefix finds every occurrence and occurrences never overlap.
//! - [`Credentials::rewrite_headers`] is all or nothing: every occurrence in
//!   every header value is checked before anything is rewritten, so on
//!   [`Exfiltration`] the headers are untouched. Rewritten values are marked
//!   sensitive. A request without any placeholder costs one `memmem` scan per
//!   header value and no allocation.
//! - Only header values are ever substituted. A placeholder in the URL (path,
//!   query) or in the body is found by [`Credentials::find_in`] /
//!   [`Credentials::find_foreign`]: to a host that is not the credential's it
//!   is exfiltration too; to one of its hosts it is sent as is (not replaced:
//!   a secret in a URL ends up in logs, and bodies would need re-framing).
//! - Matching is literal and case-sensitive. A placeholder the agent
//!   transforms (base64 in `Authorization: Basic`, percent-encoding) is neither
//!   detected nor replaced; it reaches the upstream as the worthless string it
//!   is, since the secret never entered the sandbox.
//! - A listed host that reflects request headers back (an echo endpoint)
//!   would hand the secret to the agent: list the API's hosts only.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use memchr::memmem;
use serde::{Deserialize, Serialize};

use crate::policy::domain::{DomainError, DomainPattern, Host};

/// How every placeholder starts.
pub const PLACEHOLDER_PREFIX: &str = "vallignus-ph-";

/// The largest secret file read (a secret file holds only the secret).
pub const MAX_SECRET_FILE_BYTES: u64 = MAX_SECRET_FILE_LEN as u64;
const MAX_SECRET_FILE_LEN: usize = 64 * 1024;

/// Random bytes in a placeholder (32 hex digits).
const PLACEHOLDER_RANDOM_BYTES: usize = 16;

/// Fresh placeholders tried before giving up on a collision (which takes a
/// broken random number generator: 128 random bits).
const PLACEHOLDER_ATTEMPTS: usize = 8;

/// Errors in credential specs, entries and secrets. None contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid {at}: expected NAME=ENV_VAR@HOST[,HOST...] or NAME=@FILE@HOST[,HOST...]")]
    Syntax { at: String },
    #[error("invalid {at}: the name {name:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    Name { at: String, name: String },
    #[error("invalid {at}: the source {var:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*); give the variable that holds the secret, or @FILE")]
    EnvVar { at: String, var: String },
    #[error("invalid {at}: the file name is empty")]
    EmptyPath { at: String },
    #[error("invalid {at}: no host; give at least one, e.g. api.openai.com")]
    NoHosts { at: String },
    #[error("invalid {at}: host {host:?}: {source}")]
    Host {
        at: String,
        host: String,
        source: DomainError,
    },
    #[error("invalid {at}: give exactly one of `env` and `file`")]
    Sources { at: String },
    #[error("environment variable {var} is not set")]
    EnvUnset { var: String },
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUtf8 { var: String },
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is larger than 64 KiB; a secret file holds only the secret", path.display())]
    FileTooLarge { path: PathBuf },
    #[error("{} is not valid UTF-8", path.display())]
    FileNotUtf8 { path: PathBuf },
    #[error("{origin} is empty (or only whitespace)")]
    EmptySecret { origin: String },
    #[error("{origin} contains a control character or a character not allowed in an HTTP header value (only printable ASCII is accepted)")]
    SecretChars { origin: String },
    #[error("credential {name}: {source}")]
    Load {
        name: String,
        source: Box<CredentialError>,
    },
    #[error("credential {name} is given more than once")]
    Duplicate { name: String },
    #[error("cannot generate a credential placeholder: {reason}")]
    Random { reason: String },
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// An environment variable of vallignus itself (never the agent's).
    Env(String),
    /// A file holding only the secret (one trailing newline is fine).
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl Source {
    /// Read the secret: `env` looks up environment variables (pass
    /// `std::env::var_os` in production). Whitespace at both ends is trimmed.
    pub fn load(&self, env: impl Fn(&str) -> Option<OsString>) -> Result<Secret, CredentialError> {
        match self {
            Source::Env(var) => {
                let mut bytes = env(var)
                    .ok_or_else(|| CredentialError::EnvUnset { var: var.clone() })?
                    .into_vec();
                let result = if std::str::from_utf8(&bytes).is_err() {
                    Err(CredentialError::EnvNotUtf8 { var: var.clone() })
                } else {
                    Secret::validate(&bytes, || format!("environment variable {var}"))
                };
                wipe(&mut bytes);
                result
            }
            Source::File(path) => {
                let read_error = |source| CredentialError::ReadFile {
                    path: path.clone(),
                    source,
                };
                let file = std::fs::File::open(path).map_err(read_error)?;
                // Room for one byte past the limit, so the buffer never
                // reallocates (which would leave an unwiped copy behind).
                let mut bytes = Vec::with_capacity(MAX_SECRET_FILE_LEN + 1);
                let read = file
                    .take(MAX_SECRET_FILE_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(read_error);
                let result = match read {
                    Err(e) => Err(e),
                    Ok(n) if n as u64 > MAX_SECRET_FILE_BYTES => {
                        Err(CredentialError::FileTooLarge { path: path.clone() })
                    }
                    Ok(_) if std::str::from_utf8(&bytes).is_err() => {
                        Err(CredentialError::FileNotUtf8 { path: path.clone() })
                    }
                    Ok(_) => Secret::validate(&bytes, || format!("file {}", path.display())),
                };
                wipe(&mut bytes);
                result
            }
        }
    }
}

/// Overwrite a buffer that held a secret (best effort: copies made by the
/// OS, the environment or the HTTP stack are out of reach).
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// A real secret. Never formatted; wiped on drop (best effort).
pub struct Secret(Box<[u8]>);

impl Secret {
    /// A secret given directly (trimmed and checked like a loaded one).
    pub fn new(value: &str) -> Result<Self, CredentialError> {
        Self::validate(value.as_bytes(), || "the secret".to_string())
    }

    /// The value, for building the upstream request only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Trim ASCII whitespace at both ends, then require non-empty printable
    /// ASCII. `origin` names where the value came from, for errors.
    fn validate(raw: &[u8], origin: impl FnOnce() -> String) -> Result<Self, CredentialError> {
        let value = raw.trim_ascii();
        if value.is_empty() {
            return Err(CredentialError::EmptySecret { origin: origin() });
        }
        if !value.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(CredentialError::SecretChars { origin: origin() });
        }
        Ok(Secret(value.into()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// What the agent sees instead of a secret (not secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placeholder(String);

impl Placeholder {
    /// A fresh placeholder for credential `name` (a valid environment
    /// variable name), from the OS CSPRNG.
    pub fn generate(name: &str) -> Result<Self, CredentialError> {
        let mut random = [0u8; PLACEHOLDER_RANDOM_BYTES];
        os_random(&mut random)?;
        Ok(Self::from_random(name, &random))
    }

    fn from_random(name: &str, random: &[u8; PLACEHOLDER_RANDOM_BYTES]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(PLACEHOLDER_PREFIX.len() + name.len() + 1 + 32);
        s.push_str(PLACEHOLDER_PREFIX);
        s.push_str(&name.to_ascii_lowercase());
        s.push('-');
        for b in random {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        Placeholder(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn os_random(buf: &mut [u8; PLACEHOLDER_RANDOM_BYTES]) -> Result<(), CredentialError> {
    getrandom::fill(buf).map_err(|e| CredentialError::Random {
        reason: format!("the OS random number generator failed: {e}"),
    })
}

/// One `--credential` (or policy-file entry), before the secret is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    /// The variable the agent gets (holding the placeholder).
    pub name: String,
    pub source: Source,
    /// Where the secret may go; at least one, no duplicates.
    pub hosts: Vec<DomainPattern>,
}

impl CredentialSpec {
    /// Read this credential's secret; errors name the credential.
    pub fn load(&self, env: impl Fn(&str) -> Option<OsString>) -> Result<Secret, CredentialError> {
        self.source.load(env).map_err(|e| CredentialError::Load {
            name: self.name.clone(),
            source: Box::new(e),
        })
    }

    /// What `doctor`, `policy show` and session.json list (no value).
    pub fn info(&self) -> CredentialInfo {
        CredentialInfo {
            name: self.name.clone(),
            source: self.source.to_string(),
            hosts: self.hosts.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The `--credential` syntax: `NAME=ENV_VAR@HOST[,HOST...]` or
/// `NAME=@FILE@HOST[,HOST...]`. The last `@` separates the hosts (a host
/// never contains `@`; a file name may).
impl FromStr for CredentialSpec {
    type Err = CredentialError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let at = format!("--credential {entry:?}");
        let syntax = || CredentialError::Syntax { at: at.clone() };
        let (name, rest) = entry.split_once('=').ok_or_else(syntax)?;
        let (source, hosts) = rest.rsplit_once('@').ok_or_else(syntax)?;
        if name.is_empty() || source.is_empty() {
            return Err(syntax());
        }
        check_name(&at, name)?;
        let source = match source.strip_prefix('@') {
            Some(path) => file_source(&at, path.into())?,
            None => env_source(&at, source)?,
        };
        let hosts = parse_hosts(&at, hosts.split(','))?;
        Ok(CredentialSpec {
            name: name.to_string(),
            source,
            hosts,
        })
    }
}

/// The `--credential` form (which parses back to the same spec).
impl fmt::Display for CredentialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.name)?;
        match &self.source {
            Source::Env(var) => f.write_str(var)?,
            Source::File(path) => write!(f, "@{}", path.display())?,
        }
        for (i, host) in self.hosts.iter().enumerate() {
            f.write_str(if i == 0 { "@" } else { "," })?;
            write!(f, "{host}")?;
        }
        Ok(())
    }
}

/// Serialised as its [`CredentialInfo`].
impl Serialize for CredentialSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.info().serialize(serializer)
    }
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_name(at: &str, name: &str) -> Result<(), CredentialError> {
    if is_env_name(name) {
        Ok(())
    } else {
        Err(CredentialError::Name {
            at: at.to_string(),
            name: name.to_string(),
        })
    }
}

fn env_source(at: &str, var: &str) -> Result<Source, CredentialError> {
    if is_env_name(var) {
        Ok(Source::Env(var.to_string()))
    } else {
        Err(CredentialError::EnvVar {
            at: at.to_string(),
            var: var.to_string(),
        })
    }
}

fn file_source(at: &str, path: PathBuf) -> Result<Source, CredentialError> {
    if path.as_os_str().is_empty() {
        Err(CredentialError::EmptyPath { at: at.to_string() })
    } else {
        Ok(Source::File(path))
    }
}

fn parse_hosts<'h>(
    at: &str,
    hosts: impl Iterator<Item = &'h str>,
) -> Result<Vec<DomainPattern>, CredentialError> {
    let mut out: Vec<DomainPattern> = Vec::new();
    for host in hosts {
        let pattern = DomainPattern::parse(host).map_err(|source| CredentialError::Host {
            at: at.to_string(),
            host: host.to_string(),
            source,
        })?;
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    if out.is_empty() {
        return Err(CredentialError::NoHosts { at: at.to_string() });
    }
    Ok(out)
}

/// One entry of a policy file's `credentials` list:
///
/// ```yaml
/// credentials:
///   - name: OPENAI_API_KEY
///     env: REAL_OPENAI_KEY
///     hosts: [api.openai.com]
/// ```
///
/// `file` is taken as written (a relative path is relative to vallignus's
/// working directory unless the policy parser resolves it first).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub hosts: Vec<String>,
}

impl CredentialEntry {
    /// Check the entry: a valid name, exactly one of `env` and `file`, at
    /// least one host pattern.
    pub fn to_spec(&self) -> Result<CredentialSpec, CredentialError> {
        let at = format!("credentials entry {:?}", self.name);
        check_name(&at, &self.name)?;
        let source = match (&self.env, &self.file) {
            (Some(var), None) => env_source(&at, var)?,
            (None, Some(path)) => file_source(&at, path.clone())?,
            _ => return Err(CredentialError::Sources { at }),
        };
        let hosts = parse_hosts(&at, self.hosts.iter().map(String::as_str))?;
        Ok(CredentialSpec {
            name: self.name.clone(),
            source,
            hosts,
        })
    }
}

/// A credential as listed by `doctor`, `policy show` and session.json: never
/// the value (nor the placeholder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    pub name: String,
    /// `env VAR` or `file PATH`.
    pub source: String,
    pub hosts: Vec<String>,
}

impl fmt::Display for CredentialInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from {} for {}",
            self.name,
            self.source,
            self.hosts.join(", ")
        )
    }
}

/// The headers a secret may be put in (lowercase, as `HeaderName`s are):
/// where API clients send keys. A placeholder in any other header is
/// refused like one bound for a foreign host.
pub const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// The credentials injected into a request's headers, by name, in the
/// order they were given (what `credentials_injected` records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rewritten {
    pub injected: Vec<String>,
}

impl Rewritten {
    pub fn is_empty(&self) -> bool {
        self.injected.is_empty()
    }
}

/// A placeholder in a header of a request to a host that is not one of the
/// credential's hosts: the request must be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("the placeholder of credential {credential} is in header {header}, where it may not go (the request's host is not one of the credential's, or the header does not carry keys)")]
pub struct Exfiltration {
    pub credential: String,
    /// The header name (lowercase).
    pub header: String,
}

#[derive(Debug)]
struct Credential {
    name: String,
    source: Source,
    hosts: Vec<DomainPattern>,
    secret: Secret,
    placeholder: Placeholder,
}

impl Credential {
    fn allows(&self, host: &Host) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }
}

/// The credentials of one run, with their secrets and placeholders.
#[derive(Debug)]
pub struct Credentials {
    entries: Vec<Credential>,
    prefix: memmem::Finder<'static>,
}

impl Default for Credentials {
    fn default() -> Self {
        Self::none()
    }
}

impl Credentials {
    /// No credentials: nothing is ever rewritten or refused.
    pub fn none() -> Self {
        Credentials {
            entries: Vec::new(),
            prefix: memmem::Finder::new(PLACEHOLDER_PREFIX.as_bytes()),
        }
    }

    /// Check the names, then read every secret (`env`: see [`Source::load`])
    /// and build the set.
    pub fn load(
        specs: Vec<CredentialSpec>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self, CredentialError> {
        check_duplicates(specs.iter().map(|s| s.name.as_str()))?;
        let mut loaded = Vec::with_capacity(specs.len());
        for spec in specs {
            let secret = spec.load(&env)?;
            loaded.push((spec, secret));
        }
        Self::new(loaded)
    }

    /// Build the set from specs and their secrets, with fresh placeholders.
    /// A name given twice is an error.
    pub fn new(loaded: Vec<(CredentialSpec, Secret)>) -> Result<Self, CredentialError> {
        Self::with_random(loaded, os_random)
    }

    fn with_random(
        loaded: Vec<(CredentialSpec, Secret)>,
        mut random: impl FnMut(&mut [u8; PLACEHOLDER_RANDOM_BYTES]) -> Result<(), CredentialError>,
    ) -> Result<Self, CredentialError> {
        check_duplicates(loaded.iter().map(|(s, _)| s.name.as_str()))?;
        let mut set = Self::none();
        for (spec, secret) in loaded {
            let placeholder = set.fresh_placeholder(&spec.name, &mut random)?;
            set.entries.push(Credential {
                name: spec.name,
                source: spec.source,
                hosts: spec.hosts,
                secret,
                placeholder,
            });
        }
        Ok(set)
    }

    /// A placeholder that is neither a substring nor a superstring of any
    /// placeholder already in the set.
    fn fresh_placeholder(
        &self,
        name: &str,
        random: &mut impl FnMut(&mut [u8; PLACEHOLDER_RANDOM_BYTES]) -> Result<(), CredentialError>,
    ) -> Result<Placeholder, CredentialError> {
        for _ in 0..PLACEHOLDER_ATTEMPTS {
            let mut bytes = [0u8; PLACEHOLDER_RANDOM_BYTES];
            random(&mut bytes)?;
            let candidate = Placeholder::from_random(name, &bytes);
            let clashes = self.entries.iter().any(|c| {
                let (a, b) = (c.placeholder.as_bytes(), candidate.as_bytes());
                memmem::find(a, b).is_some() || memmem::find(b, a).is_some()
            });
            if !clashes {
                return Ok(candidate);
            }
        }
        Err(CredentialError::Random {
            reason: "placeholders kept colliding (the random number generator is broken)".into(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The agent's environment: each NAME with its placeholder.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|c| (c.name.clone(), c.placeholder.as_str().to_string()))
            .collect()
    }

    /// The environment variables the secrets were read from: the caller must
    /// keep them out of the agent's environment.
    pub fn source_env_vars(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(|c| match &c.source {
                Source::Env(var) => Some(var.as_str()),
                Source::File(_) => None,
            })
            .collect()
    }

    /// The files the secrets were read from: the caller must keep them out
    /// of the agent's reach.
    pub fn source_files(&self) -> Vec<&Path> {
        self.entries
            .iter()
            .filter_map(|c| match &c.source {
                Source::File(path) => Some(path.as_path()),
                Source::Env(_) => None,
            })
            .collect()
    }

    /// Name, source and hosts of each credential (no value, no placeholder).
    pub fn listing(&self) -> Vec<CredentialInfo> {
        self.entries
            .iter()
            .map(|c| CredentialInfo {
                name: c.name.clone(),
                source: c.source.to_string(),
                hosts: c.hosts.iter().map(ToString::to_string).collect(),
            })
            .collect()
    }

    /// The longest placeholder: when scanning a body chunk by chunk, keep
    /// the last `max_placeholder_len() - 1` bytes of a chunk in front of the
    /// next one so a placeholder split across chunks is still found.
    pub fn max_placeholder_len(&self) -> usize {
        self.entries
            .iter()
            .map(|c| c.placeholder.len())
            .max()
            .unwrap_or(0)
    }

    /// Each placeholder occurrence in `bytes`, in order: (credential index,
    /// offset). Relies on the prefix occurring only at a placeholder's start.
    fn occurrences<'s>(&'s self, bytes: &'s [u8]) -> impl Iterator<Item = (usize, usize)> + 's {
        let mut pos = if self.entries.is_empty() {
            bytes.len()
        } else {
            0
        };
        std::iter::from_fn(move || {
            while pos < bytes.len() {
                let at = pos + self.prefix.find(&bytes[pos..])?;
                let rest = &bytes[at..];
                match self
                    .entries
                    .iter()
                    .position(|c| rest.starts_with(c.placeholder.as_bytes()))
                {
                    Some(i) => {
                        pos = at + self.entries[i].placeholder.len();
                        return Some((i, at));
                    }
                    None => pos = at + PLACEHOLDER_PREFIX.len(),
                }
            }
            None
        })
    }

    /// The name of the first credential whose placeholder appears in `bytes`
    /// (a URL, a query string, a body).
    pub fn find_in(&self, bytes: &[u8]) -> Option<&str> {
        self.occurrences(bytes)
            .next()
            .map(|(i, _)| self.entries[i].name.as_str())
    }

    /// The name of the first credential whose placeholder appears in `bytes`
    /// although `host` is not one of its hosts (exfiltration by URL or body).
    /// A placeholder bound for one of its hosts is not reported, and is not
    /// replaced either: only headers are rewritten.
    pub fn find_foreign(&self, host: &Host, bytes: &[u8]) -> Option<&str> {
        self.occurrences(bytes)
            .map(|(i, _)| &self.entries[i])
            .find(|c| !c.allows(host))
            .map(|c| c.name.as_str())
    }

    /// Replace placeholders in header values with their secrets for a
    /// request to `host`. Every occurrence is checked first: one bound for a
    /// host that is not its credential's makes this an [`Exfiltration`] and
    /// leaves `headers` untouched. Rewritten values are marked sensitive.
    pub fn rewrite_headers(
        &self,
        host: &Host,
        headers: &mut HeaderMap,
    ) -> Result<Rewritten, Exfiltration> {
        let mut found = false;
        for (name, value) in headers.iter() {
            for (i, _) in self.occurrences(value.as_bytes()) {
                let credential = &self.entries[i];
                // Only the headers that carry API keys get a secret: one
                // put in `Origin`, `Sec-WebSocket-Protocol` or a version
                // header could come back to the agent in a response.
                if !credential.allows(host) || !CREDENTIAL_HEADERS.contains(&name.as_str()) {
                    return Err(Exfiltration {
                        credential: credential.name.clone(),
                        header: name.as_str().to_string(),
                    });
                }
                found = true;
            }
        }
        if !found {
            return Ok(Rewritten::default());
        }
        let mut injected = vec![false; self.entries.len()];
        for (_, value) in headers.iter_mut() {
            if let Some(new) = self.substitute(value.as_bytes(), &mut injected) {
                *value = new;
            }
        }
        Ok(Rewritten {
            injected: self
                .entries
                .iter()
                .zip(injected)
                .filter(|(_, used)| *used)
                .map(|(c, _)| c.name.clone())
                .collect(),
        })
    }

    /// `bytes` with every placeholder replaced by its secret, as a sensitive
    /// header value; `None` when there is no placeholder. Marks the
    /// credentials used in `injected`.
    fn substitute(&self, bytes: &[u8], injected: &mut [bool]) -> Option<HeaderValue> {
        let mut out: Option<Vec<u8>> = None;
        let mut used = Vec::new();
        let mut last = 0;
        for (i, at) in self.occurrences(bytes) {
            let credential = &self.entries[i];
            let buf = out.get_or_insert_with(|| Vec::with_capacity(bytes.len() + 256));
            buf.extend_from_slice(&bytes[last..at]);
            buf.extend_from_slice(credential.secret.expose());
            last = at + credential.placeholder.len();
            used.push(i);
        }
        let mut buf = out?;
        buf.extend_from_slice(&bytes[last..]);
        // Cannot fail: the secret is printable ASCII and every other byte
        // comes from a valid header value. Were it to, the placeholder would
        // stay (and reach only a listed host).
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(buf)).ok()?;
        value.set_sensitive(true);
        for i in used {
            injected[i] = true;
        }
        Some(value)
    }
}

fn check_duplicates<'n>(names: impl Iterator<Item = &'n str>) -> Result<(), CredentialError> {
    let mut seen: Vec<&str> = Vec::new();
    for name in names {
        if seen.contains(&name) {
            return Err(CredentialError::Duplicate {
                name: name.to_string(),
            });
        }
        seen.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
