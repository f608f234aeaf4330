//! The auth store: agents, versioned policies, signing keys with rotation,
//! revocation, and the signed tokens that tie an agent to one policy
//! version.
//!
//! - [`ids`]: the validation every id passes before it becomes a path.
//! - [`policy`]: policy content, validation and canonical hash (pure).
//! - [`token`]: token format, signing and verification (pure, against a
//!   [`token::TokenContext`]).
//! - [`store`]: layout of `<home>/auth/`, the lock, file helpers; then one
//!   file per kind of record: [`agents`], [`policy_store`], [`keys`],
//!   [`revocation`], [`issue`] (issuing, and the store as a token context).
//!
//! Invariants: nothing from a token becomes a path before it is validated;
//! the store is 0700 with 0600 files, written atomically, and every
//! read-modify-write holds the store's exclusive `flock`; a token only
//! verifies if its signature, expiry, revocation state, agent and exact
//! policy version (by hash) all check out, in the order documented in
//! [`token`].

pub mod agents;
pub mod ids;
pub mod issue;
pub mod keys;
pub mod policy;
pub mod policy_store;
pub mod revocation;
pub mod store;
pub mod token;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::SystemTime;

pub use agents::Agent;
pub use policy::PolicyVersion;
pub use store::{AuthError, AuthStore};
pub use token::{TokenError, VerifiedToken};

/// Default lifetime of an issued token (as in vallignus 0.4.2).
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// Longest lifetime `issue-token` accepts: one year.
pub const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

/// Verify `token` against the auth store of `home` at `now`: what
/// `vallignus run --token` calls before anything starts.
pub fn verify_for_run(
    home: &Path,
    token: &str,
    now: SystemTime,
) -> Result<VerifiedToken, TokenError> {
    AuthStore::new(home).verify_token(token, now)
}

/// Seconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-01-01T00:00:00Z` for Unix seconds.
pub fn iso_utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("@{secs}"))
}
