//! Policy versions on disk: `policies/<id>/vNNNN.json` (immutable once
//! written) and `policies/<id>/latest` ("vNNNN", the newest version).
//!
//! A version file is `{"policy": {...}, "policy_hash": "<hex>"}`; the hash is
//! the canonical hash of `policy` when it was written ([`super::policy`]).
//! Readers recompute the hash from the content; the stored one only lets
//! `list-policies` show that a file was edited by hand. A new version number
//! is one more than the highest existing file (not just `latest`), so a crash
//! between writing a version and moving `latest` never leads to an overwrite.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::ids;
use super::policy::{PolicyEdit, PolicyVersion};
use super::store::{self, AuthError, AuthStore};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPolicy {
    policy: PolicyVersion,
    policy_hash: String,
}

/// The readable policies, and the unreadable ones with why.
pub type PolicyListing = (Vec<PolicySummary>, Vec<(String, AuthError)>);

/// One policy as `list-policies` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub latest: PolicyVersion,
    /// Hash of the latest version's content as it is now.
    pub policy_hash: String,
    /// False when any version's file no longer matches the hash written
    /// with it, or cannot be read (see `altered`).
    pub intact: bool,
    pub versions: Vec<u32>,
    /// Every version that was edited or broken after it was written (tokens
    /// issued for an old version still use it, so all are checked).
    pub altered: Vec<AlteredVersion>,
}

/// A policy version whose file is not as it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlteredVersion {
    pub version: u32,
    /// What is wrong, as a phrase: "was edited after it was written ...".
    pub reason: String,
}

fn version_name(version: u32) -> String {
    format!("v{version:04}")
}

/// `v0003` (or `v0003.json` with the suffix) → 3.
fn parse_version_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&v| v > 0)
}

impl AuthStore {
    fn policy_dir(&self, policy_id: &str) -> Result<PathBuf, AuthError> {
        let id = ids::policy_id(policy_id)?;
        Ok(self.policies_dir().join(id))
    }

    fn version_path(dir: &Path, version: u32) -> PathBuf {
        dir.join(format!("{}.json", version_name(version)))
    }

    /// All version numbers of a policy, ascending (empty if none).
    pub fn policy_versions(&self, policy_id: &str) -> Result<Vec<u32>, AuthError> {
        let dir = self.policy_dir(policy_id)?;
        let mut versions: Vec<u32> = store::dir_names(&dir)?
            .iter()
            .filter_map(|n| n.strip_suffix(".json").and_then(parse_version_name))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The version `latest` points to (the highest file if it is missing).
    pub fn latest_policy_version(&self, policy_id: &str) -> Result<Option<u32>, AuthError> {
        let dir = self.policy_dir(policy_id)?;
        let path = dir.join("latest");
        match store::read_file(&path)? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                parse_version_name(text.trim())
                    .map(Some)
                    .ok_or_else(|| AuthError::Corrupt {
                        path,
                        reason: format!("expected a version like v0001, found {:?}", text.trim()),
                    })
            }
            None => Ok(self.policy_versions(policy_id)?.last().copied()),
        }
    }

    fn load_stored(
        &self,
        policy_id: &str,
        version: u32,
    ) -> Result<Option<StoredPolicy>, AuthError> {
        let path = Self::version_path(&self.policy_dir(policy_id)?, version);
        let Some(stored) = store::read_json_object::<StoredPolicy>(&path)? else {
            return Ok(None);
        };
        if stored.policy.policy_id != policy_id || stored.policy.version != version {
            return Err(AuthError::Corrupt {
                path,
                reason: format!(
                    "it holds policy {:?} version {}",
                    stored.policy.policy_id, stored.policy.version
                ),
            });
        }
        Ok(Some(stored))
    }

    /// One version of a policy, or `None` if it does not exist.
    pub fn load_policy_version(
        &self,
        policy_id: &str,
        version: u32,
    ) -> Result<Option<PolicyVersion>, AuthError> {
        Ok(self.load_stored(policy_id, version)?.map(|s| s.policy))
    }

    /// The newest version of a policy.
    pub fn load_latest_policy(&self, policy_id: &str) -> Result<PolicyVersion, AuthError> {
        let version = self
            .latest_policy_version(policy_id)?
            .ok_or_else(|| AuthError::PolicyNotFound(policy_id.into()))?;
        self.load_policy_version(policy_id, version)?
            .ok_or_else(|| AuthError::Corrupt {
                path: self.policies_dir().join(policy_id).join("latest"),
                reason: format!("points to {}, which does not exist", version_name(version)),
            })
    }

    fn write_version(&self, dir: &Path, policy: &PolicyVersion) -> Result<(), AuthError> {
        crate::session::store::create_private_dir(dir)?;
        let stored = StoredPolicy {
            policy: policy.clone(),
            policy_hash: policy.hash(),
        };
        store::write_json(&Self::version_path(dir, policy.version), &stored)?;
        let mut latest = version_name(policy.version);
        latest.push('\n');
        crate::session::store::write_atomic(&dir.join("latest"), latest.as_bytes())?;
        Ok(())
    }

    /// Version 1 of a new policy.
    pub fn create_policy(
        &self,
        policy_id: &str,
        edit: &PolicyEdit,
        now: SystemTime,
    ) -> Result<PolicyVersion, AuthError> {
        let dir = self.policy_dir(policy_id)?;
        let policy = edit.create(policy_id, super::iso_utc(super::unix_secs(now)))?;
        let _lock = self.lock()?;
        if !self.policy_versions(policy_id)?.is_empty() || dir.join("latest").exists() {
            return Err(AuthError::PolicyExists {
                policy_id: policy_id.into(),
                path: dir,
            });
        }
        self.write_version(&dir, &policy)?;
        Ok(policy)
    }

    /// A new version of an existing policy with `edit` applied; the old
    /// versions stay (tokens issued for them remain valid).
    pub fn update_policy(
        &self,
        policy_id: &str,
        edit: &PolicyEdit,
        now: SystemTime,
    ) -> Result<PolicyVersion, AuthError> {
        let dir = self.policy_dir(policy_id)?;
        if edit.is_empty() {
            return Err(AuthError::EmptyUpdate);
        }
        let _lock = self.lock()?;
        let latest = self.load_latest_policy(policy_id)?;
        let highest = self
            .policy_versions(policy_id)?
            .last()
            .copied()
            .unwrap_or(0);
        let version =
            highest
                .max(latest.version)
                .checked_add(1)
                .ok_or_else(|| AuthError::InvalidValue {
                    what: "policy version",
                    reason: "no version numbers left".into(),
                })?;
        let next = edit
            .apply(&latest, version, super::iso_utc(super::unix_secs(now)))
            .ok_or_else(|| AuthError::NoChange {
                policy_id: policy_id.into(),
                version: latest.version,
            })?;
        self.write_version(&dir, &next)?;
        Ok(next)
    }

    /// Every policy with its latest version, by id.
    /// Every policy; an error if one cannot be read (see [`policy_listing`]).
    ///
    /// [`policy_listing`]: AuthStore::policy_listing
    pub fn list_policies(&self) -> Result<Vec<PolicySummary>, AuthError> {
        let (policies, mut unreadable) = self.policy_listing()?;
        match unreadable.pop() {
            Some((_, e)) => Err(e),
            None => Ok(policies),
        }
    }

    /// Every policy that can be read, and the ids of those that cannot
    /// (with why): one broken policy does not hide the others.
    pub fn policy_listing(&self) -> Result<PolicyListing, AuthError> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for name in store::dir_names(&self.policies_dir())? {
            if ids::policy_id(&name).is_err() {
                continue;
            }
            match self.policy_summary(&name) {
                Ok(Some(summary)) => out.push(summary),
                Ok(None) => {}
                Err(e) => unreadable.push((name, e)),
            }
        }
        Ok((out, unreadable))
    }

    fn policy_summary(&self, name: &str) -> Result<Option<PolicySummary>, AuthError> {
        let Some(version) = self.latest_policy_version(name)? else {
            return Ok(None);
        };
        let Some(stored) = self.load_stored(name, version)? else {
            return Ok(None);
        };
        let versions = self.policy_versions(name)?;
        let altered = self.altered_versions(name, &versions);
        Ok(Some(PolicySummary {
            intact: altered.is_empty(),
            policy_hash: stored.policy.hash(),
            latest: stored.policy,
            versions,
            altered,
        }))
    }

    /// The versions of a policy whose content no longer matches the hash
    /// written with them, or that cannot be read.
    fn altered_versions(&self, policy_id: &str, versions: &[u32]) -> Vec<AlteredVersion> {
        versions
            .iter()
            .filter_map(|&version| {
                let reason = match self.load_stored(policy_id, version) {
                    Ok(Some(s)) if s.policy.hash() == s.policy_hash => return None,
                    Ok(Some(_)) => {
                        "was edited after it was written (its tokens will fail verification)"
                            .to_string()
                    }
                    // Listed a moment ago: removed since.
                    Ok(None) => return None,
                    Err(e) => format!("cannot be read (its tokens will fail verification): {e}"),
                };
                Some(AlteredVersion { version, reason })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::PolicyError;

    fn edit(domains: &str) -> PolicyEdit {
        PolicyEdit {
            allowed_domains: Some(crate::auth::policy::parse_domains_csv(domains).unwrap()),
            max_requests: Some(Some(10)),
            ..Default::default()
        }
    }

    #[test]
    fn versions_are_kept_and_latest_moves() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        let v1 = store.create_policy("p", &edit("a.com"), now).unwrap();
        assert_eq!(v1.version, 1);
        assert!(matches!(
            store.create_policy("p", &edit("b.com"), now),
            Err(AuthError::PolicyExists { .. })
        ));
        assert!(matches!(
            store.update_policy("p", &PolicyEdit::default(), now),
            Err(AuthError::EmptyUpdate)
        ));
        assert!(matches!(
            store.update_policy("p", &edit("a.com"), now),
            Err(AuthError::NoChange { version: 1, .. })
        ));
        let v2 = store.update_policy("p", &edit("b.com"), now).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.allowed_domains, ["b.com"]);
        assert_eq!(v2.max_requests, Some(10));
        assert_eq!(store.policy_versions("p").unwrap(), [1, 2]);
        assert_eq!(store.load_latest_policy("p").unwrap(), v2);
        assert_eq!(store.load_policy_version("p", 1).unwrap(), Some(v1));
        assert_eq!(store.load_policy_version("p", 3).unwrap(), None);
        let dir = store.policies_dir().join("p");
        assert!(dir.join("v0001.json").exists() && dir.join("v0002.json").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("latest")).unwrap(),
            "v0002\n"
        );
        let list = store.list_policies().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].versions, [1, 2]);
        assert!(list[0].intact);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        assert!(matches!(
            store.update_policy("nope", &edit("a.com"), now),
            Err(AuthError::PolicyNotFound(_))
        ));
        assert!(matches!(
            store.create_policy("p", &PolicyEdit::default(), now),
            Err(AuthError::InvalidPolicy(PolicyError::MissingDomains))
        ));
        assert!(matches!(
            store.create_policy("../p", &edit("a.com"), now),
            Err(AuthError::InvalidId(_))
        ));
    }

    #[test]
    fn a_hand_edit_is_visible() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        store
            .create_policy("p", &edit("a.com"), SystemTime::now())
            .unwrap();
        let path = store.policies_dir().join("p").join("v0001.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"max_requests\": 10", "\"max_requests\": 99"),
        )
        .unwrap();
        let list = store.list_policies().unwrap();
        assert!(!list[0].intact);
        assert_eq!(list[0].latest.max_requests, Some(99));
        assert_eq!(list[0].altered.len(), 1);
        assert_eq!(list[0].altered[0].version, 1);
    }

    /// One policy whose latest version is corrupt is named; the others
    /// are still listed.
    #[test]
    fn a_broken_policy_does_not_hide_the_others() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        store.create_policy("good", &edit("a.com"), now).unwrap();
        store.create_policy("bad", &edit("b.com"), now).unwrap();
        std::fs::write(store.policies_dir().join("bad").join("v0001.json"), "{").unwrap();
        let (list, unreadable) = store.policy_listing().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].latest.policy_id, "good");
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].0, "bad");
        assert!(store.list_policies().is_err());
    }

    #[test]
    fn every_version_is_checked_not_only_the_latest() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        store.create_policy("p", &edit("a.com"), now).unwrap();
        store.update_policy("p", &edit("b.com"), now).unwrap();
        store.update_policy("p", &edit("c.com"), now).unwrap();
        assert!(store.list_policies().unwrap()[0].intact);
        let dir = store.policies_dir().join("p");
        let v1 = dir.join("v0001.json");
        let text = std::fs::read_to_string(&v1).unwrap();
        std::fs::write(&v1, text.replace("a.com", "evil.com")).unwrap();
        std::fs::write(dir.join("v0002.json"), b"{").unwrap();
        let list = store.list_policies().unwrap();
        let p = &list[0];
        assert_eq!(p.latest.version, 3);
        assert!(!p.intact);
        let versions: Vec<u32> = p.altered.iter().map(|a| a.version).collect();
        assert_eq!(versions, [1, 2]);
        assert!(p.altered[0].reason.contains("edited"), "{:?}", p.altered);
        assert!(
            p.altered[1].reason.contains("cannot be read"),
            "{:?}",
            p.altered
        );
    }

    #[test]
    fn version_names() {
        assert_eq!(parse_version_name("v0001"), Some(1));
        assert_eq!(parse_version_name("v12345"), Some(12345));
        for bad in ["v0000", "v001", "0001", "v00a1", "v-001", "latest"] {
            assert_eq!(parse_version_name(bad), None, "{bad}");
        }
    }
}
