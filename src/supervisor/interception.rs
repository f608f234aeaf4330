//! The supervisor's side of TLS interception and spend metering, prepared
//! before the fork (so a bad `--upstream-ca` or price file is an error
//! before anything is created, and the landlock ruleset can name the CA
//! bundle).
//!
//! - The run's CA ([`Interceptor`]) lives in this process only; the agent
//!   gets its certificate in a bundle file (system roots + the run's CA),
//!   `/run/vallignus/tls/<session>.pem`, readable by anyone (it holds only
//!   certificates), removed when the run ends (this value's `Drop`).
//! - The usual variables point clients at the bundle ([`BUNDLE_VARIABLES`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::net::credentials::{CredentialError, Credentials};
use crate::net::proxy::Spend;
use crate::net::spend::{PicoUsd, PriceTable};
use crate::net::tls::{Interceptor, BUNDLE_VARIABLES};
use crate::policy::NetworkRequest;

/// Where the agents' CA bundles live.
const BUNDLE_DIR: &str = "/run/vallignus/tls";

#[derive(Debug, thiserror::Error)]
pub enum InterceptionError {
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    /// (The error names the price file, from `--prices` or the policy.)
    #[error(transparent)]
    Prices(#[from] crate::net::spend::PriceFileError),
    #[error("--max-spend-usd {0}: not a usable amount")]
    Budget(f64),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("cannot hide the credentials from other processes (PR_SET_DUMPABLE): {0}")]
    Dumpable(std::io::Error),
    #[error("cannot write the agent's CA bundle {}: {source}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `--max-spend-usd` as an amount the meter can count in.
fn budget(usd: f64) -> Result<PicoUsd, InterceptionError> {
    PicoUsd::from_usd_f64(usd).map_err(|_| InterceptionError::Budget(usd))
}

/// One run's interception and budget.
#[derive(Debug)]
pub struct Interception {
    pub interceptor: Arc<Interceptor>,
    pub spend: Option<Arc<Spend>>,
    /// Secrets and their placeholders (`None`: no `--credential`).
    pub credentials: Option<Arc<Credentials>>,
    /// The agent's CA bundle (removed on drop).
    pub bundle: PathBuf,
}

impl Interception {
    /// What [`Interception::prepare`] reads, checked without creating
    /// anything (for `policy check`): the upstream CA files, the price
    /// file, the credentials' sources.
    pub fn check(req: &NetworkRequest) -> Result<(), InterceptionError> {
        crate::net::tls::check_upstream_cas(&req.upstream_ca)?;
        if let Some(usd) = req.max_spend_usd {
            budget(usd)?;
        }
        if let Some(p) = &req.prices {
            PriceTable::load(p)?;
        }
        if !req.credentials.is_empty() {
            Credentials::load(req.credentials.clone(), |k| std::env::var_os(k))?;
        }
        Ok(())
    }

    pub fn prepare(session_id: &str, req: &NetworkRequest) -> Result<Self, InterceptionError> {
        let interceptor = Arc::new(Interceptor::new(session_id, &req.upstream_ca)?);
        let spend = match req.max_spend_usd {
            Some(usd) => {
                let prices = PriceTable::shipped_with(req.prices.as_deref())?;
                Some(Arc::new(Spend::new(budget(usd)?, prices)))
            }
            None => {
                // A price file without a budget is still checked.
                if let Some(p) = &req.prices {
                    PriceTable::load(p)?;
                }
                None
            }
        };
        // Secrets are read from vallignus's own environment (or files) now,
        // so a missing one is an error before anything starts.
        let credentials = if req.credentials.is_empty() {
            None
        } else {
            let loaded = Credentials::load(req.credentials.clone(), |k| std::env::var_os(k))?;
            // The secrets are in this process's environment and memory: a
            // non-dumpable process's /proc/PID/environ and mem are closed to
            // other processes of its uid that lack CAP_SYS_PTRACE (the agent
            // never has it). The flag is reset by execve, so the agent's own
            // dumpability is untouched.
            nix::sys::prctl::set_dumpable(false)
                .map_err(|e| InterceptionError::Dumpable(std::io::Error::from(e)))?;
            Some(Arc::new(loaded))
        };
        let bundle = Path::new(BUNDLE_DIR).join(format!("{session_id}.pem"));
        write_bundle(&bundle, &interceptor.agent_bundle()).map_err(|source| {
            InterceptionError::Bundle {
                path: bundle.clone(),
                source,
            }
        })?;
        Ok(Interception {
            interceptor,
            spend,
            credentials,
            bundle,
        })
    }

    /// The agent's CA variables and credential placeholders.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = self.bundle.display().to_string();
        let mut env: Vec<(String, String)> = BUNDLE_VARIABLES
            .iter()
            .map(|k| (k.to_string(), path.clone()))
            .collect();
        if let Some(c) = &self.credentials {
            env.extend(c.agent_env());
        }
        env
    }

    /// Files the agent must not read: where secrets came from.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        self.credentials
            .as_ref()
            .map(|c| {
                c.source_files()
                    .into_iter()
                    .map(Path::to_path_buf)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Variables the agent must not inherit: where the secrets came from.
    pub fn secret_sources(&self) -> Vec<String> {
        self.credentials
            .as_ref()
            .map(|c| {
                c.source_env_vars()
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Interception {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.bundle);
    }
}

fn write_bundle(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        // An existing directory from an older umask: make it traversable.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    // A fresh file, never through a symlink (a name left in the directory
    // is removed first: it can only be a dead run's).
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The umask may have narrowed the mode: set it on the open file.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.write_all(text.as_bytes())
}

/// Remove the bundle of a run whose supervisor died before it could (the
/// reaper calls this with the ids it finds in dead runs' cgroup names).
pub fn remove_bundle(session_id: &str) -> bool {
    if session_id.is_empty() || session_id.contains('/') {
        return false;
    }
    std::fs::remove_file(Path::new(BUNDLE_DIR).join(format!("{session_id}.pem"))).is_ok()
}
