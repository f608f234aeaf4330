//! The revocation list, `revoked/revoked.json`: revoked token ids and
//! revoked agents, each with the time it was revoked. Changed only under
//! the store lock (read, modify, atomic replace); read without it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::ids;
use super::store::{self, AuthError, AuthStore};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// jti → when it was revoked.
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// agent id → when it was revoked.
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
}

impl AuthStore {
    fn revocation_path(&self) -> PathBuf {
        self.revoked_dir().join("revoked.json")
    }

    /// The current list (empty if nothing was ever revoked).
    pub fn revocations(&self) -> Result<RevocationList, AuthError> {
        Ok(store::read_json_object(&self.revocation_path())?.unwrap_or_default())
    }

    fn modify_revocations(
        &self,
        change: impl FnOnce(&mut RevocationList) -> bool,
    ) -> Result<bool, AuthError> {
        let _lock = self.lock()?;
        let mut list = self.revocations()?;
        let changed = change(&mut list);
        if changed {
            store::write_json(&self.revocation_path(), &list)?;
        }
        Ok(changed)
    }

    /// Revoke a token by its jti. Returns false if it already was.
    pub fn revoke_token(&self, jti: &str, now: SystemTime) -> Result<bool, AuthError> {
        let jti = ids::jti(jti)?;
        let at = super::iso_utc(super::unix_secs(now));
        self.modify_revocations(|l| insert_new(&mut l.tokens, jti, at))
    }

    /// Revoke an agent: every token issued to it stops verifying, and no new
    /// token is issued to it. Returns false if it already was.
    pub fn revoke_agent(&self, agent_id: &str, now: SystemTime) -> Result<bool, AuthError> {
        let agent_id = ids::agent_id(agent_id)?;
        if self.load_agent(agent_id)?.is_none() {
            return Err(AuthError::AgentNotFound(agent_id.into()));
        }
        let at = super::iso_utc(super::unix_secs(now));
        self.modify_revocations(|l| insert_new(&mut l.agents, agent_id, at))
    }

    pub fn is_jti_revoked(&self, jti: &str) -> Result<bool, AuthError> {
        Ok(self.revocations()?.tokens.contains_key(jti))
    }

    pub fn is_agent_revoked(&self, agent_id: &str) -> Result<bool, AuthError> {
        Ok(self.revocations()?.agents.contains_key(agent_id))
    }
}

fn insert_new(map: &mut BTreeMap<String, String>, key: &str, at: String) -> bool {
    if map.contains_key(key) {
        return false;
    }
    map.insert(key.to_string(), at);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const JTI: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn revoke_is_idempotent_and_validated() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        assert!(!store.is_jti_revoked(JTI).unwrap());
        assert!(store.revoke_token(JTI, now).unwrap());
        assert!(!store.revoke_token(JTI, now).unwrap());
        assert!(store.is_jti_revoked(JTI).unwrap());
        assert!(matches!(
            store.revoke_token("../x", now),
            Err(AuthError::InvalidId(_))
        ));
        assert!(matches!(
            store.revoke_agent("ghost", now),
            Err(AuthError::AgentNotFound(_))
        ));
        store.create_agent("bot", "me", "", now).unwrap();
        assert!(store.revoke_agent("bot", now).unwrap());
        assert!(store.is_agent_revoked("bot").unwrap());
        let list = store.revocations().unwrap();
        assert_eq!(list.tokens.len(), 1);
        assert_eq!(list.agents.len(), 1);
    }

    /// A list that is not an object is corrupt, not empty: `[]` used to
    /// read as "nothing revoked", and revoked tokens verified again.
    #[test]
    fn a_list_of_another_shape_fails_closed() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        assert!(store.revoke_token(JTI, now).unwrap());
        for bad in ["[]", "[{}, {}]", "\"x\"", "null", "7"] {
            std::fs::write(store.revocation_path(), bad).unwrap();
            assert!(
                matches!(store.is_jti_revoked(JTI), Err(AuthError::Corrupt { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn concurrent_revocations_are_all_kept() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let jti = format!("{i:032x}");
                    store.revoke_token(&jti, SystemTime::now()).unwrap()
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(store.revocations().unwrap().tokens.len(), 8);
    }
}
