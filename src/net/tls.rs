//! TLS interception: the run's own certificate authority, the leaf
//! certificates the proxy shows the agent, and the verifier for upstreams.
//!
//! - [`Interceptor::new`] generates a CA (ECDSA P-256) that exists only in
//!   this process's memory, for one run. Its certificate (never its key) is
//!   what the agent is told to trust ([`Interceptor::agent_bundle`]).
//! - Leaf certificates are issued per host on first contact and cached for
//!   the run; they all share one leaf key, so a new host costs one
//!   signature, not a key generation.
//! - Upstream certificates are verified against the system roots (loaded on
//!   first use: most runs never open an HTTPS upstream) plus the CAs given
//!   with `--upstream-ca` (read and checked when the run starts, so a bad
//!   file is an error before the agent starts).
//! - Both sides speak HTTP/1.1 only (ALPN `http/1.1`), which is what the
//!   proxy parses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::policy::domain::Host;

/// Leaf certificates kept at once (a new one costs one signature).
const MAX_CACHED_LEAVES: usize = 4096;
/// The largest `--upstream-ca` file read.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;
/// How long the CA and its leaves are valid: longer than any sane run,
/// short enough that a leaked certificate soon means nothing (its key
/// never leaves the process anyway).
const VALIDITY_DAYS: i64 = 30;
/// System CA bundles, first match wins (Debian/Ubuntu, Fedora/RHEL,
/// openSUSE, Alpine shares Debian's path).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
];

/// The variables that point common clients at the agent's CA bundle.
pub const BUNDLE_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the run's TLS certificate authority: {0}")]
    Ca(rcgen::Error),
    #[error("cannot issue a TLS certificate for {host}: {source}")]
    Leaf {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Config(#[from] rustls::Error),
    #[error("upstream CA file {}: {why}", path.display())]
    UpstreamCa { path: PathBuf, why: String },
    #[error("cannot load the system's CA certificates: {0}")]
    SystemRoots(String),
}

/// One run's interception authority.
pub struct Interceptor {
    provider: Arc<CryptoProvider>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<Host, Arc<ServerConfig>>>,
    extra_roots: Vec<CertificateDer<'static>>,
    client: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// A fresh CA named after the run; `upstream_cas` are PEM files of
    /// extra roots for upstream verification.
    pub fn new(run: &str, upstream_cas: &[PathBuf]) -> Result<Interceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let extra_roots = upstream_cas
            .iter()
            .map(|p| read_ca_file(p))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();

        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "vallignus");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("vallignus run {run} interception CA"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let ca_key = KeyPair::generate().map_err(TlsError::Ca)?;
        let ca = params.self_signed(&ca_key).map_err(TlsError::Ca)?;
        let leaf_key = KeyPair::generate().map_err(TlsError::Ca)?;
        Ok(Interceptor {
            provider,
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, ca_key),
            leaf_key,
            leaves: Mutex::new(HashMap::new()),
            extra_roots,
            client: OnceLock::new(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// What the agent trusts: the system bundle (for `tls: passthrough`
    /// hosts, whose real certificates it sees) followed by the run's CA.
    pub fn agent_bundle(&self) -> String {
        let mut out = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| crate::textfile::read_limited(Path::new(p), 16 << 20).ok())
            .unwrap_or_default();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("# vallignus: this run's interception CA\n");
        out.push_str(&self.ca_pem);
        out
    }

    /// The server side for a tunnel to `host`: a leaf for that host, issued
    /// on first use and cached.
    pub fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(cfg) = self.leaves.lock().ok().and_then(|m| m.get(host).cloned()) {
            return Ok(cfg);
        }
        let leaf_err = |source| TlsError::Leaf {
            host: host.to_string(),
            source,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host.to_string());
        params.subject_alt_names = vec![match host {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Name(name) => SanType::DnsName(name.clone().try_into().map_err(leaf_err)?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(leaf_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        if let Ok(mut map) = self.leaves.lock() {
            // Bounded: an agent allowed `*.example.com` can ask for any
            // number of names; past the bound the cache starts over.
            if map.len() >= MAX_CACHED_LEAVES {
                map.clear();
            }
            map.insert(host.clone(), Arc::clone(&cfg));
        }
        Ok(cfg)
    }

    /// The client side towards upstreams (built on first use).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client
            .get_or_init(|| self.build_client().map_err(|e| e.to_string()))
            .clone()
            .map_err(TlsError::SystemRoots)
    }

    fn build_client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        for cert in &self.extra_roots {
            roots.add(cert.clone())?;
        }
        if roots.is_empty() {
            let why = native
                .errors
                .first()
                .map_or_else(|| "none found".to_string(), ToString::to_string);
            return Err(TlsError::SystemRoots(why));
        }
        let mut cfg = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The name an upstream's certificate must carry.
pub fn server_name(host: &Host) -> ServerName<'static> {
    match host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(name) => match ServerName::try_from(name.clone()) {
            Ok(n) => n,
            // A normalised host name is always a valid DNS name; if not,
            // verification against it fails, which is the safe outcome.
            Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
        },
    }
}

/// Check that every `--upstream-ca` file holds usable certificates (what
/// [`Interceptor::new`] reads), without making a CA.
pub fn check_upstream_cas(paths: &[PathBuf]) -> Result<(), TlsError> {
    paths.iter().try_for_each(|p| read_ca_file(p).map(drop))
}

/// The certificates of one `--upstream-ca` file (at least one).
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::UpstreamCa {
        path: path.to_path_buf(),
        why,
    };
    let text = crate::textfile::read_limited(path, MAX_CA_FILE_BYTES).map_err(|e| match e {
        crate::textfile::ReadError::Io(e) => err(e.to_string()),
        crate::textfile::ReadError::TooLarge => {
            err(format!("larger than {MAX_CA_FILE_BYTES} bytes"))
        }
    })?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    // Each must be a certificate rustls can use as a trust anchor.
    let mut check = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check
            .add(cert.clone())
            .map_err(|e| err(format!("certificate {} is unusable: {e}", i + 1)))?;
    }
    Ok(certs)
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = [0u8; 16];
    // A serial only has to be unique per issuer; if the kernel cannot give
    // randomness, the time still differs between leaves of one run.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests;
