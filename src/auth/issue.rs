//! Issuing tokens, the log of issued tokens, and verification against the
//! store.
//!
//! Issuing runs under the store lock: it creates the first key if there is
//! none (so concurrent first calls agree on one key), checks the agent and
//! the policy, signs, and appends to `tokens/issued.json`. The log holds
//! metadata only (never the token, which is a bearer credential) and drops
//! entries that have expired.

use std::path::PathBuf;
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::agents::Agent;
use super::ids;
use super::policy::PolicyVersion;
use super::store::{self, AuthError, AuthStore};
use super::token::{self, Claims, TokenContext, TokenError, VerifiedToken};

/// One entry of the issued-token log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedToken {
    pub jti: String,
    pub agent_id: String,
    pub policy_id: String,
    pub policy_version: u32,
    pub kid: String,
    pub iat: u64,
    pub exp: u64,
}

/// A freshly issued token and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
    pub kid: String,
}

impl AuthStore {
    fn issued_path(&self) -> PathBuf {
        self.tokens_dir().join("issued.json")
    }

    /// Issued tokens that have not expired at `now`, oldest first.
    pub fn issued_tokens(&self, now: SystemTime) -> Result<Vec<IssuedToken>, AuthError> {
        let now = super::unix_secs(now);
        let all: Vec<IssuedToken> = store::read_json(&self.issued_path())?.unwrap_or_default();
        Ok(all.into_iter().filter(|t| t.exp > now).collect())
    }

    /// Sign a token for `agent_id` under the latest version of `policy_id`.
    pub fn issue_token(
        &self,
        agent_id: &str,
        policy_id: &str,
        ttl_secs: u64,
        now: SystemTime,
    ) -> Result<Issued, AuthError> {
        ids::agent_id(agent_id)?;
        ids::policy_id(policy_id)?;
        if ttl_secs == 0 || ttl_secs > super::MAX_TTL_SECS {
            return Err(AuthError::Ttl(ttl_secs));
        }
        let lock = self.lock()?;
        let agent = self
            .load_agent(agent_id)?
            .ok_or_else(|| AuthError::AgentNotFound(agent_id.into()))?;
        if self.is_agent_revoked(agent_id)? {
            return Err(AuthError::AgentRevoked(agent_id.into()));
        }
        let policy = self.load_latest_policy(policy_id)?;
        let kid = self.ensure_key(&lock, now)?;
        let key = self.signing_key(&kid)?;
        let iat = super::unix_secs(now);
        let claims = Claims {
            agent_id: agent.agent_id,
            owner: agent.owner,
            policy_id: policy.policy_id.clone(),
            policy_version: policy.version,
            policy_hash: policy.hash(),
            iat,
            exp: iat.saturating_add(ttl_secs),
            jti: ids::jti_from_bytes(&super::keys::random_bytes()?),
        };
        let token = token::encode(&claims, &kid, &key);

        let mut log = self.issued_tokens(now)?;
        log.push(IssuedToken {
            jti: claims.jti.clone(),
            agent_id: claims.agent_id.clone(),
            policy_id: claims.policy_id.clone(),
            policy_version: claims.policy_version,
            kid: kid.clone(),
            iat: claims.iat,
            exp: claims.exp,
        });
        store::write_json(&self.issued_path(), &log)?;
        Ok(Issued { token, claims, kid })
    }

    /// Verify a token against this store at `now`.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        token::verify(token, self, super::unix_secs(now))
    }
}

impl TokenContext for AuthStore {
    fn verifying_key(&self, kid: &str) -> Result<Option<VerifyingKey>, AuthError> {
        AuthStore::verifying_key(self, kid)
    }

    fn is_jti_revoked(&self, jti: &str) -> Result<bool, AuthError> {
        AuthStore::is_jti_revoked(self, jti)
    }

    fn is_agent_revoked(&self, agent_id: &str) -> Result<bool, AuthError> {
        AuthStore::is_agent_revoked(self, agent_id)
    }

    fn agent(&self, agent_id: &str) -> Result<Option<Agent>, AuthError> {
        self.load_agent(agent_id)
    }

    fn policy_version(
        &self,
        policy_id: &str,
        version: u32,
    ) -> Result<Option<PolicyVersion>, AuthError> {
        self.load_policy_version(policy_id, version)
    }
}
