//! Signed tokens: the format, signing, decoding and verification. Pure: the
//! keys, revocations, agents and policies come from a [`TokenContext`]; the
//! store implements it over files, the tests implement it in memory.
//!
//! Format, version 1:
//!
//! ```text
//! vl1.<b64(header)>.<b64(payload)>.<b64(signature)>
//! header    = {"alg":"EdDSA","kid":"k-<16 hex>","typ":"vallignus+token"}
//! payload   = {"agent_id","owner","policy_id","policy_version","policy_hash","iat","exp","jti"}
//! signature = Ed25519 over the ASCII bytes "vl1.<b64(header)>.<b64(payload)>"
//! ```
//!
//! `b64` is base64url without padding (RFC 4648 §5), decoded strictly (no
//! `=`, no stray trailing bits). Header and payload are compact JSON objects
//! with exactly these keys (unknown or duplicate keys are refused). `iat` and
//! `exp` are Unix seconds; `policy_hash` is the policy version's canonical
//! hash ([`super::policy`]); `jti` is 32 hex digits.
//!
//! Verification order, each failure with its own [`TokenError`] variant:
//! malformed (size, parts, prefix, base64, JSON) → unsupported `alg` (only
//! `EdDSA`; `none`, `HS256`... refused) → malformed `typ` or signature
//! length → invalid
//! `kid` (pattern check; no lookup happens for a bad kid) → unknown `kid` →
//! bad signature (`verify_strict`) → expired (`exp <= now`, no clock skew
//! allowed) → revoked `jti` → revoked agent → agent gone or changed owner →
//! policy version gone → policy hash mismatch. Nothing from the token is
//! trusted before the signature has been checked, except the kid, which is
//! only used after its pattern check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::agents::Agent;
use super::ids::{self, IdError};
use super::policy::PolicyVersion;
use super::store::AuthError;

pub const PREFIX: &str = "vl1";
pub const ALG: &str = "EdDSA";
pub const TYP: &str = "vallignus+token";
/// Longer inputs are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub alg: String,
    pub kid: String,
    pub typ: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub agent_id: String,
    pub owner: String,
    pub policy_id: String,
    pub policy_version: u32,
    pub policy_hash: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// What a valid token grants: the run pipeline applies `policy`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiedToken {
    pub agent_id: String,
    pub owner: String,
    pub policy: PolicyVersion,
    pub policy_hash: String,
    pub jti: String,
    pub kid: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// Why a token was refused (or could not be checked).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token uses unsupported algorithm {0:?} (only \"EdDSA\" is accepted)")]
    UnsupportedAlg(String),
    #[error("token names an invalid key: {0}")]
    InvalidKid(#[source] IdError),
    #[error("token was signed with unknown key {0} (not in this store)")]
    UnknownKid(String),
    #[error("token signature does not verify with key {0} (forged, altered, or signed with another key)")]
    BadSignature(String),
    #[error("token expired at {} (now {})", super::iso_utc(*.exp), super::iso_utc(*.now))]
    Expired { exp: u64, now: u64 },
    #[error("token {0} has been revoked")]
    Revoked(String),
    #[error("agent {0:?} named by the token has been revoked")]
    AgentRevoked(String),
    #[error("agent {0:?} named by the token no longer exists")]
    AgentNotFound(String),
    #[error("agent {agent_id:?} named by the token now has owner {current:?}, not {token:?}")]
    AgentChanged {
        agent_id: String,
        token: String,
        current: String,
    },
    #[error("policy {policy_id:?} version {version} named by the token no longer exists")]
    PolicyVersionNotFound { policy_id: String, version: u32 },
    #[error("policy {policy_id:?} version {version} was altered after the token was issued (hash {actual}, token has {expected})")]
    PolicyHashMismatch {
        policy_id: String,
        version: u32,
        expected: String,
        actual: String,
    },
    #[error("cannot check the token: {0}")]
    Store(#[from] AuthError),
}

impl TokenError {
    /// A stable machine-readable name (for `--json`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlg(_) => "unsupported_alg",
            Self::InvalidKid(_) => "invalid_kid",
            Self::UnknownKid(_) => "unknown_kid",
            Self::BadSignature(_) => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::Revoked(_) => "revoked",
            Self::AgentRevoked(_) => "agent_revoked",
            Self::AgentNotFound(_) => "agent_not_found",
            Self::AgentChanged { .. } => "agent_changed",
            Self::PolicyVersionNotFound { .. } => "policy_version_not_found",
            Self::PolicyHashMismatch { .. } => "policy_hash_mismatch",
            Self::Store(_) => "store_error",
        }
    }
}

/// Where verification gets what it checks against. `Ok(None)` means "does
/// not exist"; `Err` means the store could not be read.
pub trait TokenContext {
    /// Called only with a kid that passed [`ids::kid`].
    fn verifying_key(&self, kid: &str) -> Result<Option<VerifyingKey>, AuthError>;
    fn is_jti_revoked(&self, jti: &str) -> Result<bool, AuthError>;
    fn is_agent_revoked(&self, agent_id: &str) -> Result<bool, AuthError>;
    fn agent(&self, agent_id: &str) -> Result<Option<Agent>, AuthError>;
    fn policy_version(
        &self,
        policy_id: &str,
        version: u32,
    ) -> Result<Option<PolicyVersion>, AuthError>;
}

/// Sign `claims` with `key`, naming it `kid`.
pub fn encode(claims: &Claims, kid: &str, key: &SigningKey) -> String {
    let header = Header {
        alg: ALG.into(),
        kid: kid.into(),
        typ: TYP.into(),
    };
    // Serializing these plain structs cannot fail.
    let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
    let p = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{PREFIX}.{h}.{p}");
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(signature.to_bytes()))
}

/// The base64url parts of a token, split and size-checked.
struct Parts<'a> {
    signing_input: &'a str,
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Malformed("empty".into()));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "{} bytes long (at most {MAX_TOKEN_LEN})",
            token.len()
        )));
    }
    let pieces: Vec<&str> = token.split('.').collect();
    if pieces.len() != 4 {
        return Err(TokenError::Malformed(format!(
            "expected 4 dot-separated parts ({PREFIX}.header.payload.signature), found {}",
            pieces.len()
        )));
    }
    if pieces[0] != PREFIX {
        return Err(TokenError::Malformed(format!(
            "unknown token format {:?} (expected {PREFIX:?})",
            pieces[0].chars().take(16).collect::<String>()
        )));
    }
    let cut = token.len() - pieces[3].len() - 1;
    Ok(Parts {
        signing_input: &token[..cut],
        header: pieces[1],
        payload: pieces[2],
        signature: pieces[3],
    })
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    B64.decode(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not valid base64url: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, TokenError> {
    serde_json::from_slice(bytes)
        .map_err(|e| TokenError::Malformed(format!("{what} is not valid token JSON: {e}")))
}

/// A token whose structure is sound but whose signature is not yet checked.
#[derive(Debug)]
pub struct Unverified {
    pub header: Header,
    pub claims: Claims,
    signing_input: String,
    /// Raw bytes: their length is checked once the algorithm is known.
    signature: Vec<u8>,
}

/// Parse a token without checking anything but its structure.
pub fn decode(token: &str) -> Result<Unverified, TokenError> {
    let parts = split(token)?;
    let header_bytes = b64(parts.header, "header")?;
    let payload_bytes = b64(parts.payload, "payload")?;
    let signature_bytes = b64(parts.signature, "signature")?;
    let header: Header = json(&header_bytes, "header")?;
    let claims: Claims = json(&payload_bytes, "payload")?;
    Ok(Unverified {
        header,
        claims,
        signing_input: parts.signing_input.to_string(),
        signature: signature_bytes,
    })
}

/// Header and payload as free-form JSON, for `inspect-token`: nothing is
/// verified, unknown keys are kept.
pub fn decode_unverified_json(
    token: &str,
) -> Result<(serde_json::Value, serde_json::Value), TokenError> {
    let parts = split(token)?;
    let header = json(&b64(parts.header, "header")?, "header")?;
    let payload = json(&b64(parts.payload, "payload")?, "payload")?;
    b64(parts.signature, "signature")?;
    Ok((header, payload))
}

fn check_claim_ids(c: &Claims) -> Result<(), TokenError> {
    let bad = |e: IdError| TokenError::Malformed(format!("signed payload: {e}"));
    ids::agent_id(&c.agent_id).map_err(bad)?;
    ids::policy_id(&c.policy_id).map_err(bad)?;
    ids::jti(&c.jti).map_err(bad)?;
    let hash_ok = c.policy_hash.len() == 64
        && c.policy_hash
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hash_ok {
        return Err(TokenError::Malformed(
            "signed payload: policy_hash is not a SHA-256 hex digest".into(),
        ));
    }
    Ok(())
}

/// Verify `token` against `ctx` at `now` (Unix seconds), in the order given
/// in the module docs.
pub fn verify(token: &str, ctx: &impl TokenContext, now: u64) -> Result<VerifiedToken, TokenError> {
    let t = decode(token)?;
    if t.header.alg != ALG {
        return Err(TokenError::UnsupportedAlg(
            t.header.alg.chars().take(32).collect(),
        ));
    }
    if t.header.typ != TYP {
        return Err(TokenError::Malformed(format!(
            "typ is {:?}, expected {TYP:?}",
            t.header.typ.chars().take(32).collect::<String>()
        )));
    }
    let signature = Signature::from_slice(&t.signature).map_err(|_| {
        TokenError::Malformed(format!(
            "signature is {} bytes (an Ed25519 signature is 64)",
            t.signature.len()
        ))
    })?;
    let kid = ids::kid(&t.header.kid).map_err(TokenError::InvalidKid)?;
    let key = ctx
        .verifying_key(kid)?
        .ok_or_else(|| TokenError::UnknownKid(kid.to_string()))?;
    key.verify_strict(t.signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature(kid.to_string()))?;

    let c = t.claims;
    check_claim_ids(&c)?;
    if c.exp <= now {
        return Err(TokenError::Expired { exp: c.exp, now });
    }
    if ctx.is_jti_revoked(&c.jti)? {
        return Err(TokenError::Revoked(c.jti));
    }
    if ctx.is_agent_revoked(&c.agent_id)? {
        return Err(TokenError::AgentRevoked(c.agent_id));
    }
    let agent = ctx
        .agent(&c.agent_id)?
        .ok_or_else(|| TokenError::AgentNotFound(c.agent_id.clone()))?;
    if agent.owner != c.owner {
        return Err(TokenError::AgentChanged {
            agent_id: c.agent_id,
            token: c.owner,
            current: agent.owner,
        });
    }
    let policy = ctx
        .policy_version(&c.policy_id, c.policy_version)?
        .ok_or_else(|| TokenError::PolicyVersionNotFound {
            policy_id: c.policy_id.clone(),
            version: c.policy_version,
        })?;
    let actual = policy.hash();
    if actual != c.policy_hash {
        return Err(TokenError::PolicyHashMismatch {
            policy_id: c.policy_id,
            version: c.policy_version,
            expected: c.policy_hash,
            actual,
        });
    }
    Ok(VerifiedToken {
        agent_id: c.agent_id,
        owner: c.owner,
        policy,
        policy_hash: actual,
        jti: c.jti,
        kid: kid.to_string(),
        issued_at: c.iat,
        expires_at: c.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};

    const NOW: u64 = 1_800_000_000;
    const JTI: &str = "00112233445566778899aabbccddeeff";

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn kid_of(key: &SigningKey) -> String {
        ids::kid_for_public_key(&key.verifying_key().to_bytes())
    }

    fn policy() -> PolicyVersion {
        PolicyVersion {
            allowed_domains: vec!["api.example.com".into()],
            cpu_max: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            credentials: Vec::new(),
            deny_domains: Vec::new(),
            description: String::new(),
            isolation: None,
            max_output_bytes: None,
            max_output_lines: None,
            max_requests: Some(10),
            max_runtime_secs: Some(60),
            max_spend_usd: Some(1.0),
            memory_max: None,
            pids_max: None,
            policy_id: "pol".into(),
            version: 1,
        }
    }

    #[derive(Default)]
    struct Mem {
        keys: HashMap<String, VerifyingKey>,
        revoked: HashSet<String>,
        revoked_agents: HashSet<String>,
        agents: HashMap<String, Agent>,
        policies: HashMap<(String, u32), PolicyVersion>,
        key_lookups: RefCell<Vec<String>>,
    }

    impl TokenContext for Mem {
        fn verifying_key(&self, kid: &str) -> Result<Option<VerifyingKey>, AuthError> {
            self.key_lookups.borrow_mut().push(kid.to_string());
            Ok(self.keys.get(kid).copied())
        }
        fn is_jti_revoked(&self, jti: &str) -> Result<bool, AuthError> {
            Ok(self.revoked.contains(jti))
        }
        fn is_agent_revoked(&self, agent_id: &str) -> Result<bool, AuthError> {
            Ok(self.revoked_agents.contains(agent_id))
        }
        fn agent(&self, agent_id: &str) -> Result<Option<Agent>, AuthError> {
            Ok(self.agents.get(agent_id).cloned())
        }
        fn policy_version(
            &self,
            policy_id: &str,
            version: u32,
        ) -> Result<Option<PolicyVersion>, AuthError> {
            Ok(self
                .policies
                .get(&(policy_id.to_string(), version))
                .cloned())
        }
    }

    /// A context with one key, agent `bot` (owner `ops`), policy `pol` v1,
    /// and a valid token for them.
    fn setup() -> (Mem, SigningKey, Claims, String) {
        let key = signing_key(1);
        let mut mem = Mem::default();
        mem.keys.insert(kid_of(&key), key.verifying_key());
        mem.agents.insert(
            "bot".into(),
            Agent {
                agent_id: "bot".into(),
                owner: "ops".into(),
                description: String::new(),
                created_at: "2026-01-01T00:00:00Z".into(),
            },
        );
        let p = policy();
        let claims = Claims {
            agent_id: "bot".into(),
            owner: "ops".into(),
            policy_id: "pol".into(),
            policy_version: 1,
            policy_hash: p.hash(),
            iat: NOW - 10,
            exp: NOW + 3600,
            jti: JTI.into(),
        };
        mem.policies.insert(("pol".into(), 1), p);
        let token = encode(&claims, &kid_of(&key), &key);
        (mem, key, claims, token)
    }

    fn b64json(v: &serde_json::Value) -> String {
        B64.encode(serde_json::to_vec(v).unwrap())
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(String::from).collect()
    }

    #[test]
    fn valid_token_verifies() {
        let (mem, key, claims, token) = setup();
        let v = verify(&token, &mem, NOW).unwrap();
        assert_eq!(v.agent_id, "bot");
        assert_eq!(v.owner, "ops");
        assert_eq!(v.policy, policy());
        assert_eq!(v.jti, JTI);
        assert_eq!(v.kid, kid_of(&key));
        assert_eq!(v.expires_at, claims.exp);
        let d = decode(&token).unwrap();
        assert_eq!(d.claims, claims);
        assert_eq!(d.header.alg, "EdDSA");
        assert!(token.starts_with("vl1."));
    }

    #[test]
    fn forged_payload_is_a_bad_signature() {
        let (mem, _, mut claims, token) = setup();
        claims.agent_id = "root-agent".into();
        claims.exp = NOW + 10 * 365 * 86400;
        let mut p = parts(&token);
        p[2] = b64json(&serde_json::to_value(&claims).unwrap());
        let forged = p.join(".");
        let e = verify(&forged, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::BadSignature(_)), "{e}");
        assert!(e.to_string().contains("does not verify"), "{e}");
    }

    #[test]
    fn truncated_and_garbled_tokens_are_malformed() {
        let (mem, _, _, token) = setup();
        let p = parts(&token);
        let cases = [
            String::new(),
            token[..token.len() / 2].to_string(),
            token[..token.len() - 1].to_string(),
            p[..3].join("."),
            format!("{token}.extra"),
            format!("vl2.{}.{}.{}", p[1], p[2], p[3]),
            format!("{}.{}.{}.{}", p[0], "!!!", p[2], p[3]),
            format!("{}.{}.{}.{}=", p[0], p[1], p[2], p[3]),
            format!("{}.{}.{}.{}", p[0], B64.encode(b"{not json"), p[2], p[3]),
            format!("{}.{}.{}.{}", p[0], p[1], B64.encode(b"[]"), p[3]),
            format!("{}.{}.{}.{}", p[0], p[1], p[2], B64.encode([0u8; 10])),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        for case in cases {
            let e = verify(&case, &mem, NOW).unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed(_)),
                "{case:?}: expected malformed, got {e}"
            );
        }
        // Cutting the signature short by one character can still decode
        // (to 63 bytes): malformed, not a crash.
        let short = format!("{}.{}.{}.{}", p[0], p[1], p[2], &p[3][..p[3].len() - 2]);
        assert!(matches!(
            verify(&short, &mem, NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(mem.key_lookups.borrow().is_empty());
    }

    #[test]
    fn unknown_header_fields_are_malformed() {
        let (mem, key, _, token) = setup();
        let p = parts(&token);
        let h = serde_json::json!({"alg":"EdDSA","kid":kid_of(&key),"typ":TYP,"jwk":"x"});
        let t = format!("{}.{}.{}.{}", p[0], b64json(&h), p[2], p[3]);
        assert!(matches!(
            verify(&t, &mem, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn resigned_with_another_key_is_a_bad_signature() {
        let (mem, key, claims, _) = setup();
        let attacker = signing_key(9);
        // The attacker claims the store's kid but signs with their own key.
        let token = encode(&claims, &kid_of(&key), &attacker);
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::BadSignature(_)), "{e}");
        // With their own kid, the key is unknown to the store.
        let token = encode(&claims, &kid_of(&attacker), &attacker);
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::UnknownKid(_)), "{e}");
    }

    #[test]
    fn alg_swap_is_rejected() {
        let (mem, key, _, token) = setup();
        let p = parts(&token);
        for alg in ["none", "HS256", "eddsa", "RS256", ""] {
            let h = serde_json::json!({"alg":alg,"kid":kid_of(&key),"typ":TYP});
            let t = format!("{}.{}.{}.{}", p[0], b64json(&h), p[2], p[3]);
            let e = verify(&t, &mem, NOW).unwrap_err();
            assert!(
                matches!(e, TokenError::UnsupportedAlg(ref a) if a == alg),
                "{alg}: {e}"
            );
        }
        // The classic "none" token has an empty signature.
        let h = serde_json::json!({"alg":"none","kid":kid_of(&key),"typ":TYP});
        let t = format!("{}.{}.{}.", p[0], b64json(&h), p[2]);
        assert!(matches!(
            verify(&t, &mem, NOW),
            Err(TokenError::UnsupportedAlg(_))
        ));
        assert!(mem.key_lookups.borrow().is_empty());
    }

    #[test]
    fn kid_path_traversal_is_rejected_before_any_lookup() {
        let (mem, _, claims, _) = setup();
        let attacker = signing_key(9);
        for kid in ["../../x", "k-../../../../tmp/evil", "/etc/passwd", "k-", ""] {
            let token = encode(&claims, kid, &attacker);
            let e = verify(&token, &mem, NOW).unwrap_err();
            assert!(matches!(e, TokenError::InvalidKid(_)), "{kid}: {e}");
        }
        assert!(mem.key_lookups.borrow().is_empty());
    }

    #[test]
    fn unknown_kid_is_rejected() {
        let (mem, key, claims, _) = setup();
        let token = encode(&claims, "k-0000000000000000", &key);
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::UnknownKid(ref k) if k == "k-0000000000000000"));
    }

    #[test]
    fn expired_token_is_rejected_without_skew() {
        let (mem, _, claims, token) = setup();
        assert!(verify(&token, &mem, claims.exp - 1).is_ok());
        let e = verify(&token, &mem, claims.exp).unwrap_err();
        assert!(matches!(e, TokenError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
    }

    #[test]
    fn signature_is_checked_before_expiry() {
        let (mem, _, mut claims, _) = setup();
        claims.exp = NOW - 1;
        let attacker = signing_key(9);
        let token = encode(&claims, &kid_of(&signing_key(1)), &attacker);
        assert!(matches!(
            verify(&token, &mem, NOW),
            Err(TokenError::BadSignature(_))
        ));
    }

    #[test]
    fn revoked_token_is_rejected() {
        let (mut mem, _, _, token) = setup();
        mem.revoked.insert(JTI.into());
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::Revoked(ref j) if j == JTI), "{e}");
    }

    #[test]
    fn revoked_agent_is_rejected() {
        let (mut mem, _, _, token) = setup();
        mem.revoked_agents.insert("bot".into());
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::AgentRevoked(_)), "{e}");
    }

    #[test]
    fn deleted_or_changed_agent_is_rejected() {
        let (mut mem, _, _, token) = setup();
        mem.agents.get_mut("bot").unwrap().owner = "someone-else".into();
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::AgentChanged { .. }), "{e}");
        mem.agents.clear();
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(
            matches!(e, TokenError::AgentNotFound(ref a) if a == "bot"),
            "{e}"
        );
    }

    #[test]
    fn missing_policy_version_is_rejected() {
        let (mut mem, _, _, token) = setup();
        mem.policies.clear();
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(
            matches!(e, TokenError::PolicyVersionNotFound { version: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn altered_policy_is_a_hash_mismatch() {
        let (mut mem, _, _, token) = setup();
        mem.policies
            .get_mut(&("pol".to_string(), 1))
            .unwrap()
            .max_requests = Some(1_000_000);
        let e = verify(&token, &mem, NOW).unwrap_err();
        assert!(matches!(e, TokenError::PolicyHashMismatch { .. }), "{e}");
    }

    #[test]
    fn codes_are_distinct() {
        let errors = [
            TokenError::Malformed(String::new()),
            TokenError::UnsupportedAlg(String::new()),
            TokenError::InvalidKid(IdError::Kid(String::new())),
            TokenError::UnknownKid(String::new()),
            TokenError::BadSignature(String::new()),
            TokenError::Expired { exp: 0, now: 0 },
            TokenError::Revoked(String::new()),
            TokenError::AgentRevoked(String::new()),
            TokenError::AgentNotFound(String::new()),
            TokenError::AgentChanged {
                agent_id: String::new(),
                token: String::new(),
                current: String::new(),
            },
            TokenError::PolicyVersionNotFound {
                policy_id: String::new(),
                version: 0,
            },
            TokenError::PolicyHashMismatch {
                policy_id: String::new(),
                version: 0,
                expected: String::new(),
                actual: String::new(),
            },
        ];
        let codes: HashSet<&str> = errors.iter().map(TokenError::code).collect();
        assert_eq!(codes.len(), errors.len());
        let messages: HashSet<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), errors.len());
    }

    #[test]
    fn inspect_decodes_without_verifying() {
        let (_, _, _, token) = setup();
        let (h, p) = decode_unverified_json(&token).unwrap();
        assert_eq!(h["alg"], "EdDSA");
        assert_eq!(p["agent_id"], "bot");
        assert!(decode_unverified_json("vl1.a.b").is_err());
    }
}
