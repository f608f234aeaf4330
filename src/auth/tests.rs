//! Store-level tests: tokens issued and verified through the files, with the
//! files tampered with, keys rotated, and many issuers at once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::policy::{parse_domains_csv, PolicyEdit};
use super::token::{self, Claims};
use super::*;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

const T0: u64 = 1_800_000_000;

fn store_with_agent_and_policy(home: &Path) -> AuthStore {
    let store = AuthStore::new(home);
    store.init(at(T0)).unwrap();
    store.create_agent("bot", "ops", "", at(T0)).unwrap();
    let edit = PolicyEdit {
        allowed_domains: Some(parse_domains_csv("api.example.com").unwrap()),
        max_requests: Some(Some(10)),
        ..Default::default()
    };
    store.create_policy("pol", &edit, at(T0)).unwrap();
    store
}

fn issue(store: &AuthStore) -> String {
    store.issue_token("bot", "pol", 3600, at(T0)).unwrap().token
}

fn verify(store: &AuthStore, token: &str) -> Result<VerifiedToken, TokenError> {
    verify_for_run(store.root().parent().unwrap(), token, at(T0 + 1))
}

#[test]
fn issued_token_verifies_for_run() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let issued = store.issue_token("bot", "pol", 3600, at(T0)).unwrap();
    let v = verify(&store, &issued.token).unwrap();
    assert_eq!(v.agent_id, "bot");
    assert_eq!(v.owner, "ops");
    assert_eq!(v.policy.policy_id, "pol");
    assert_eq!(v.policy.version, 1);
    assert_eq!(v.policy.max_requests, Some(10));
    assert_eq!(v.jti, issued.claims.jti);
    assert_eq!(v.kid, store.active_kid().unwrap().unwrap());
    assert_eq!(v.expires_at, T0 + 3600);
    let log = store.issued_tokens(at(T0)).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].jti, v.jti);
    assert!(store.issued_tokens(at(T0 + 3600)).unwrap().is_empty());
}

#[test]
fn issuing_checks_its_inputs() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let e = |r: Result<_, AuthError>| r.map(|i: issue::Issued| i.token).unwrap_err();
    assert!(matches!(
        e(store.issue_token("ghost", "pol", 60, at(T0))),
        AuthError::AgentNotFound(_)
    ));
    assert!(matches!(
        e(store.issue_token("bot", "nope", 60, at(T0))),
        AuthError::PolicyNotFound(_)
    ));
    assert!(matches!(
        e(store.issue_token("bot", "pol", 0, at(T0))),
        AuthError::Ttl(0)
    ));
    assert!(matches!(
        e(store.issue_token("../bot", "pol", 60, at(T0))),
        AuthError::InvalidId(_)
    ));
    store.revoke_agent("bot", at(T0)).unwrap();
    assert!(matches!(
        e(store.issue_token("bot", "pol", 60, at(T0))),
        AuthError::AgentRevoked(_)
    ));
}

#[test]
fn revoked_token_fails() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    let jti = token::decode(&t).unwrap().claims.jti;
    store.revoke_token(&jti, at(T0)).unwrap();
    assert!(matches!(verify(&store, &t), Err(TokenError::Revoked(j)) if j == jti));
    // Other tokens are unaffected.
    assert!(verify(&store, &issue(&store)).is_ok());
}

#[test]
fn revoked_agent_fails() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    store.revoke_agent("bot", at(T0)).unwrap();
    assert!(matches!(
        verify(&store, &t),
        Err(TokenError::AgentRevoked(_))
    ));
}

#[test]
fn expired_token_fails() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = store.issue_token("bot", "pol", 60, at(T0)).unwrap().token;
    let root = store.root().parent().unwrap();
    assert!(verify_for_run(root, &t, at(T0 + 59)).is_ok());
    assert!(matches!(
        verify_for_run(root, &t, at(T0 + 60)),
        Err(TokenError::Expired { .. })
    ));
}

#[test]
fn deleted_agent_fails() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    std::fs::remove_file(store.root().join("agents/bot.json")).unwrap();
    assert!(matches!(verify(&store, &t), Err(TokenError::AgentNotFound(a)) if a == "bot"));
}

#[test]
fn deleted_policy_version_fails() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    std::fs::remove_file(store.root().join("policies/pol/v0001.json")).unwrap();
    assert!(matches!(
        verify(&store, &t),
        Err(TokenError::PolicyVersionNotFound { version: 1, .. })
    ));
}

#[test]
fn tampered_policy_file_is_a_hash_mismatch() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    let path = store.root().join("policies/pol/v0001.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["policy"]["max_requests"] = 1_000_000.into();
    v["policy"]["allowed_domains"] = serde_json::json!(["*"]);
    // Even the stored hash is "fixed up": the token's hash still decides.
    let mut p: PolicyVersion = serde_json::from_value(v["policy"].clone()).unwrap();
    p.allowed_domains = vec!["*".into()];
    v["policy_hash"] = p.hash().into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = verify(&store, &t).unwrap_err();
    assert!(matches!(e, TokenError::PolicyHashMismatch { .. }), "{e}");
}

#[test]
fn updating_a_policy_keeps_old_tokens_valid() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let old = issue(&store);
    let edit = PolicyEdit {
        max_requests: Some(Some(5)),
        ..Default::default()
    };
    store.update_policy("pol", &edit, at(T0)).unwrap();
    let new = issue(&store);
    assert_eq!(verify(&store, &old).unwrap().policy.max_requests, Some(10));
    let v = verify(&store, &new).unwrap();
    assert_eq!((v.policy.version, v.policy.max_requests), (2, Some(5)));
}

#[test]
fn forged_and_foreign_tokens_fail_against_the_store() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    let mut claims: Claims = token::decode(&t).unwrap().claims;
    let kid = store.active_kid().unwrap().unwrap();

    // Re-signed with a key that is not in the store, under the store's kid.
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    claims.exp += 1_000_000;
    let resigned = token::encode(&claims, &kid, &foreign);
    assert!(matches!(
        verify(&store, &resigned),
        Err(TokenError::BadSignature(_))
    ));

    // A second store's valid token is foreign here.
    let other_home = tempfile::tempdir().unwrap();
    let other = store_with_agent_and_policy(other_home.path());
    assert!(matches!(
        verify(&store, &issue(&other)),
        Err(TokenError::UnknownKid(_))
    ));
}

#[test]
fn kid_path_traversal_never_reads_the_planted_key() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    let claims = token::decode(&t).unwrap().claims;
    // The attacker plants a public key file of their own outside keys/ and
    // points the kid at it.
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let planted = home.path().join("evil.pub");
    let real_pub = std::fs::read_to_string(
        store
            .root()
            .join(format!("keys/{}.pub", store.active_kid().unwrap().unwrap())),
    )
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&real_pub).unwrap();
    use base64::Engine;
    v["public_key"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(attacker.verifying_key().to_bytes())
        .into();
    std::fs::write(&planted, v.to_string()).unwrap();
    for kid in ["../../evil", "../../../evil", "k-/../../../evil"] {
        let forged = token::encode(&claims, kid, &attacker);
        let e = verify(&store, &forged).unwrap_err();
        assert!(matches!(e, TokenError::InvalidKid(_)), "{kid}: {e}");
    }
}

#[test]
fn rotation_keeps_old_tokens_and_signs_new_ones_with_the_new_key() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let old_kid = store.active_kid().unwrap().unwrap();
    let old = issue(&store);
    let r = store.rotate_key(at(T0)).unwrap();
    assert_eq!(r.previous.as_deref(), Some(old_kid.as_str()));
    assert_eq!(verify(&store, &old).unwrap().kid, old_kid);
    let new = issue(&store);
    assert_eq!(token::decode(&new).unwrap().header.kid, r.active);
    assert_eq!(verify(&store, &new).unwrap().kid, r.active);
    // Revocation still applies to old-key tokens.
    let jti = token::decode(&old).unwrap().claims.jti;
    store.revoke_token(&jti, at(T0)).unwrap();
    assert!(matches!(verify(&store, &old), Err(TokenError::Revoked(_))));
}

#[test]
fn concurrent_issuers_leave_a_consistent_store() {
    let home = tempfile::tempdir().unwrap();
    // No key yet: the issuers race to create the first one.
    let store = AuthStore::new(home.path());
    store.create_agent("bot", "ops", "", at(T0)).unwrap();
    let edit = PolicyEdit {
        allowed_domains: Some(vec![]),
        ..Default::default()
    };
    store.create_policy("pol", &edit, at(T0)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || (0..4).map(|_| issue(&store)).collect::<Vec<String>>())
        })
        .collect();
    let tokens: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(tokens.len(), 32);
    assert_eq!(
        store.list_keys().unwrap().len(),
        1,
        "one key, not one per racer"
    );
    let mut jtis = Vec::new();
    for t in &tokens {
        jtis.push(verify(&store, t).unwrap().jti);
    }
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 32);
    let mut logged: Vec<String> = store
        .issued_tokens(at(T0))
        .unwrap()
        .into_iter()
        .map(|t| t.jti)
        .collect();
    logged.sort();
    assert_eq!(logged, jtis, "every issued token is in the log");
    // No temp files left behind.
    for dir in ["tokens", "keys", "agents"] {
        for name in std::fs::read_dir(store.root().join(dir)).unwrap() {
            let name = name.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp."), "{dir}/{name}");
        }
    }
}

#[test]
fn every_file_is_0600_and_every_dir_0700() {
    let home = tempfile::tempdir().unwrap();
    let store = store_with_agent_and_policy(home.path());
    let t = issue(&store);
    store
        .revoke_token(&token::decode(&t).unwrap().claims.jti, at(T0))
        .unwrap();
    store.rotate_key(at(T0)).unwrap();
    let mut stack = vec![store.root().to_path_buf()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 9, "{files}");
}
