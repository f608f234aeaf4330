//! Ed25519 signing keys: creation, rotation, loading.
//!
//! `keys/<kid>.pub` holds a public key and is kept forever (tokens signed by
//! a rotated-out key stay verifiable until they expire); `keys/<kid>.key`
//! holds the private seed of the active key only (rotation deletes the old
//! one); `keys/active` names the active kid. Invariants: a kid is derived
//! from its public key ([`ids::kid_for_public_key`]), so a `.pub` file whose
//! key does not match its name is refused as corrupt; a kid is validated
//! before it becomes a path; private key files are 0600 and refused
//! otherwise; creation and rotation run under the store lock.

use std::path::PathBuf;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use super::ids;
use super::store::{self, AuthError, AuthStore, Locked};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    kid: String,
    alg: String,
    /// base64url (no padding) of the 32-byte public key.
    public_key: String,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateKeyFile {
    kid: String,
    alg: String,
    /// base64url (no padding) of the 32-byte secret seed.
    secret_key: String,
    created_at: String,
}

/// A key as `init`/`rotate-key` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub created_at: String,
    pub active: bool,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub previous: Option<String>,
    pub active: String,
}

/// `n` bytes from the OS CSPRNG; an error (never a weak fallback) if it fails.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut buf = [0u8; N];
    OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(buf)
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

impl AuthStore {
    fn public_key_path(&self, kid: &str) -> Result<PathBuf, AuthError> {
        Ok(self.keys_dir().join(format!("{}.pub", ids::kid(kid)?)))
    }

    fn private_key_path(&self, kid: &str) -> Result<PathBuf, AuthError> {
        Ok(self.keys_dir().join(format!("{}.key", ids::kid(kid)?)))
    }

    fn active_path(&self) -> PathBuf {
        self.keys_dir().join("active")
    }

    /// The active kid, if a key was ever created.
    pub fn active_kid(&self) -> Result<Option<String>, AuthError> {
        let path = self.active_path();
        let Some(bytes) = store::read_file(&path)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let kid = ids::kid(text.trim()).map_err(|e| AuthError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(kid.to_string()))
    }

    /// Create a key and make it active. Returns its kid.
    fn create_key(&self, _lock: &Locked, now: SystemTime) -> Result<String, AuthError> {
        let seed: [u8; 32] = random_bytes()?;
        let signing = SigningKey::from_bytes(&seed);
        let public = signing.verifying_key().to_bytes();
        let kid = ids::kid_for_public_key(&public);
        let created_at = super::iso_utc(super::unix_secs(now));
        store::write_json(
            &self.public_key_path(&kid)?,
            &PublicKeyFile {
                kid: kid.clone(),
                alg: super::token::ALG.into(),
                public_key: B64.encode(public),
                created_at: created_at.clone(),
            },
        )?;
        store::write_json(
            &self.private_key_path(&kid)?,
            &PrivateKeyFile {
                kid: kid.clone(),
                alg: super::token::ALG.into(),
                secret_key: B64.encode(seed),
                created_at,
            },
        )?;
        crate::session::store::write_atomic(&self.active_path(), format!("{kid}\n").as_bytes())?;
        Ok(kid)
    }

    /// The active kid, creating the first key if there is none.
    pub(crate) fn ensure_key(&self, lock: &Locked, now: SystemTime) -> Result<String, AuthError> {
        match self.active_kid()? {
            Some(kid) => Ok(kid),
            None => self.create_key(lock, now),
        }
    }

    /// Create the store and its first key (idempotent). Returns the active
    /// kid and whether it was created now.
    pub fn init(&self, now: SystemTime) -> Result<(String, bool), AuthError> {
        let lock = self.lock()?;
        match self.active_kid()? {
            Some(kid) => Ok((kid, false)),
            None => Ok((self.create_key(&lock, now)?, true)),
        }
    }

    /// A new active key. The old public key stays for verification; the old
    /// private key is deleted.
    pub fn rotate_key(&self, now: SystemTime) -> Result<Rotation, AuthError> {
        let lock = self.lock()?;
        let previous = self.active_kid()?;
        let active = self.create_key(&lock, now)?;
        if let Some(old) = &previous {
            let path = self.private_key_path(old)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(store::io_err(&path)(e)),
            }
        }
        Ok(Rotation { previous, active })
    }

    /// The active kid and its private key, for signing outside the auth
    /// module (session seals). Creates the store and its first key if there
    /// is none, exactly as `auth init` would (under the lock, so concurrent
    /// runs agree on one first key).
    pub fn active_signing_key(&self, now: SystemTime) -> Result<(String, SigningKey), AuthError> {
        let lock = self.lock()?;
        let kid = self.ensure_key(&lock, now)?;
        let key = self.signing_key(&kid)?;
        Ok((kid, key))
    }

    /// The private key of `kid` (only the active one exists). Its public
    /// half must be there and match: what it signs must be verifiable (a
    /// token or seal signed without it would be refused later, far from
    /// the cause).
    pub(crate) fn signing_key(&self, kid: &str) -> Result<SigningKey, AuthError> {
        let path = self.private_key_path(kid)?;
        let Some(file) = store::read_json_object::<PrivateKeyFile>(&path)? else {
            // Only the active key keeps its private half.
            if self.active_kid()?.as_deref() != Some(kid) {
                return Err(AuthError::NoActiveKey);
            }
            return Err(AuthError::Corrupt {
                path: path.clone(),
                reason: format!(
                    "missing: keys/active names {kid}, but its private key is gone \
                     (vallignus auth rotate-key makes a new one)"
                ),
            });
        };
        store::check_private(&path)?;
        let corrupt = |reason: &str| AuthError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let seed = decode_32(&file.secret_key)
            .ok_or_else(|| corrupt("secret_key is not 32 base64url bytes"))?;
        let key = SigningKey::from_bytes(&seed);
        if file.kid != kid || ids::kid_for_public_key(&key.verifying_key().to_bytes()) != kid {
            return Err(corrupt("the key does not match its key id"));
        }
        match self.verifying_key(kid)? {
            Some(public) if public == key.verifying_key() => Ok(key),
            Some(_) => Err(AuthError::Corrupt {
                path: self.public_key_path(kid)?,
                reason: "does not match the private key".into(),
            }),
            None => Err(AuthError::Corrupt {
                path: self.public_key_path(kid)?,
                reason: "missing: what this key signs could not be verified".into(),
            }),
        }
    }

    /// The public key of `kid`, or `None` if this store never had it.
    pub fn verifying_key(&self, kid: &str) -> Result<Option<VerifyingKey>, AuthError> {
        let path = self.public_key_path(kid)?;
        let Some(file) = store::read_json_object::<PublicKeyFile>(&path)? else {
            return Ok(None);
        };
        let corrupt = |reason: &str| AuthError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let bytes = decode_32(&file.public_key)
            .ok_or_else(|| corrupt("public_key is not 32 base64url bytes"))?;
        if file.kid != kid || ids::kid_for_public_key(&bytes) != kid {
            return Err(corrupt("the key does not match its key id"));
        }
        VerifyingKey::from_bytes(&bytes)
            .map(Some)
            .map_err(|_| corrupt("not a valid Ed25519 public key"))
    }

    /// Every key this store can verify with, oldest first.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, AuthError> {
        let active = self.active_kid()?;
        let mut keys = Vec::new();
        for name in store::dir_names(&self.keys_dir())? {
            let Some(kid) = name.strip_suffix(".pub") else {
                continue;
            };
            if ids::kid(kid).is_err() {
                continue;
            }
            if let Some(file) =
                store::read_json_object::<PublicKeyFile>(&self.keys_dir().join(&name))?
            {
                keys.push(KeyInfo {
                    kid: kid.to_string(),
                    created_at: file.created_at,
                    active: active.as_deref() == Some(kid),
                });
            }
        }
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.kid.cmp(&b.kid)));
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_is_idempotent_and_files_are_private() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let (kid, created) = store.init(SystemTime::now()).unwrap();
        assert!(created);
        assert!(ids::kid(&kid).is_ok());
        assert_eq!(store.init(SystemTime::now()).unwrap(), (kid.clone(), false));
        let keys = store.keys_dir();
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(store.root()), 0o700);
        for f in [format!("{kid}.key"), format!("{kid}.pub"), "active".into()] {
            assert_eq!(mode(&keys.join(&f)), 0o600, "{f}");
        }
        let signing = store.signing_key(&kid).unwrap();
        assert_eq!(
            store.verifying_key(&kid).unwrap(),
            Some(signing.verifying_key())
        );
    }

    #[test]
    fn rotation_keeps_old_public_keys_only() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let (old, _) = store.init(SystemTime::now()).unwrap();
        let r = store.rotate_key(SystemTime::now()).unwrap();
        assert_eq!(r.previous.as_deref(), Some(old.as_str()));
        assert_ne!(r.active, old);
        assert_eq!(store.active_kid().unwrap(), Some(r.active.clone()));
        assert!(store.verifying_key(&old).unwrap().is_some());
        assert!(matches!(
            store.signing_key(&old),
            Err(AuthError::NoActiveKey)
        ));
        assert!(store.signing_key(&r.active).is_ok());
        let listed: Vec<(String, bool)> = store
            .list_keys()
            .unwrap()
            .into_iter()
            .map(|k| (k.kid, k.active))
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&(old, false)));
        assert!(listed.contains(&(r.active, true)));
    }

    #[test]
    fn loose_private_key_and_mismatched_files_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let (kid, _) = store.init(SystemTime::now()).unwrap();
        let key_path = store.keys_dir().join(format!("{kid}.key"));
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            store.signing_key(&kid),
            Err(AuthError::InsecureMode { .. })
        ));
        // A public key file swapped for another key is corrupt, not trusted.
        let other = SigningKey::from_bytes(&[5u8; 32]);
        let pub_path = store.keys_dir().join(format!("{kid}.pub"));
        let text = std::fs::read_to_string(&pub_path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["public_key"] = B64.encode(other.verifying_key().to_bytes()).into();
        std::fs::write(&pub_path, v.to_string()).unwrap();
        assert!(matches!(
            store.verifying_key(&kid),
            Err(AuthError::Corrupt { .. })
        ));
        assert!(matches!(
            store.verifying_key("../../x"),
            Err(AuthError::InvalidId(_))
        ));
    }

    /// Signing needs the public half too (else tokens and seals would be
    /// refused later), and a missing private key is named as such, not as
    /// "no key yet" (which `auth init` then contradicts).
    #[test]
    fn signing_needs_both_halves_and_names_what_is_missing() {
        let home = tempfile::tempdir().unwrap();
        let store = AuthStore::new(home.path());
        let now = SystemTime::now();
        let (kid, _) = store.init(now).unwrap();
        assert!(store.active_signing_key(now).is_ok());
        let pub_path = store.keys_dir().join(format!("{kid}.pub"));
        let public = std::fs::read(&pub_path).unwrap();
        std::fs::write(&pub_path, b"{").unwrap();
        assert!(matches!(
            store.active_signing_key(now),
            Err(AuthError::Corrupt { .. })
        ));
        std::fs::remove_file(&pub_path).unwrap();
        let err = store.active_signing_key(now).unwrap_err().to_string();
        assert!(err.contains("could not be verified"), "{err}");
        std::fs::write(&pub_path, public).unwrap();
        std::fs::remove_file(store.keys_dir().join(format!("{kid}.key"))).unwrap();
        let err = store.active_signing_key(now).unwrap_err().to_string();
        assert!(err.contains("its private key is gone"), "{err}");
        assert!(err.contains("rotate-key"), "{err}");
        // ... and rotate-key is the way out.
        store.rotate_key(now).unwrap();
        assert!(store.active_signing_key(now).is_ok());
    }
}
