//! Agents: who a token is issued to. One file per agent,
//! `agents/<agent_id>.json`, written once (agents are not edited; revoking
//! one is recorded in the revocation list).

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::ids;
use super::store::{self, AuthError, AuthStore};

const OWNER_MAX: usize = 256;
const DESCRIPTION_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub agent_id: String,
    pub owner: String,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
}

fn check_text(
    what: &'static str,
    value: &str,
    max: usize,
    empty_ok: bool,
) -> Result<(), AuthError> {
    let reason = if !empty_ok && value.trim().is_empty() {
        Some("it is empty".to_string())
    } else if value.chars().count() > max {
        Some(format!("longer than {max} characters"))
    } else if value.chars().any(char::is_control) {
        Some("contains control characters".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AuthError::InvalidValue { what, reason }),
        None => Ok(()),
    }
}

impl AuthStore {
    fn agent_path(&self, agent_id: &str) -> Result<PathBuf, AuthError> {
        let id = ids::agent_id(agent_id)?;
        Ok(self.agents_dir().join(format!("{id}.json")))
    }

    /// Register a new agent. Fails if the id is taken.
    pub fn create_agent(
        &self,
        agent_id: &str,
        owner: &str,
        description: &str,
        now: SystemTime,
    ) -> Result<Agent, AuthError> {
        let path = self.agent_path(agent_id)?;
        check_text("--owner", owner, OWNER_MAX, false)?;
        check_text("--description", description, DESCRIPTION_MAX, true)?;
        let _lock = self.lock()?;
        if store::read_file(&path)?.is_some() {
            return Err(AuthError::AgentExists {
                agent_id: agent_id.into(),
                path,
            });
        }
        let agent = Agent {
            agent_id: agent_id.into(),
            owner: owner.into(),
            description: description.into(),
            created_at: super::iso_utc(super::unix_secs(now)),
        };
        store::write_json(&path, &agent)?;
        Ok(agent)
    }

    /// One agent, or `None` if it does not exist.
    pub fn load_agent(&self, agent_id: &str) -> Result<Option<Agent>, AuthError> {
        let path = self.agent_path(agent_id)?;
        let Some(agent) = store::read_json_object::<Agent>(&path)? else {
            return Ok(None);
        };
        if agent.agent_id != agent_id {
            return Err(AuthError::Corrupt {
                path,
                reason: format!("it holds agent {:?}", agent.agent_id),
            });
        }
        Ok(Some(agent))
    }

    /// All agents, by id. Files whose name is not a valid id are ignored.
    pub fn list_agents(&self) -> Result<Vec<Agent>, AuthError> {
        let mut agents = Vec::new();
        for name in store::dir_names(&self.agents_dir())? {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if ids::agent_id(id).is_err() {
                continue;
            }
            if let Some(agent) = self.load_agent(id)? {
                agents.push(agent);
            }
        }
        Ok(agents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_load_list() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600);
        let a = store
            .create_agent("bot-1", "ops@example.com", "", now)
            .unwrap();
        assert_eq!(a.created_at, "2026-01-01T00:00:00Z");
        assert!(matches!(
            store.create_agent("bot-1", "x", "", now),
            Err(AuthError::AgentExists { .. })
        ));
        assert!(matches!(
            store.create_agent("../evil", "x", "", now),
            Err(AuthError::InvalidId(_))
        ));
        assert!(matches!(
            store.create_agent("bot-2", " ", "", now),
            Err(AuthError::InvalidValue { .. })
        ));
        store.create_agent("a-0", "me", "first", now).unwrap();
        let ids: Vec<String> = store
            .list_agents()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(ids, ["a-0", "bot-1"]);
        assert_eq!(store.load_agent("bot-1").unwrap(), Some(a));
        assert_eq!(store.load_agent("nobody").unwrap(), None);
        let mode = std::fs::metadata(store.agents_dir().join("bot-1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
