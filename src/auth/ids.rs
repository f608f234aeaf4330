//! Identifiers of the auth store, and the only gate between them and paths.
//!
//! Invariant: every id that becomes part of a path (agent ids, policy ids,
//! key ids) passes one of these checks first. A valid id names a direct child
//! of its directory: no `/`, no NUL, never `.` or `..` (it starts with a
//! letter or a digit), at most 64 bytes. Token ids (`jti`) never become paths,
//! but are checked too so the revocation list holds only well-formed entries.

/// Key ids are `k-` and 16 lowercase hex digits (the first 8 bytes of the
/// SHA-256 of the public key).
pub const KID_PREFIX: &str = "k-";
const KID_HEX_LEN: usize = 16;
/// Token ids are 32 lowercase hex digits (128 random bits).
const JTI_HEX_LEN: usize = 32;
const NAME_MAX: usize = 64;

/// Why an id was refused. The offending value is shown, cut to 80 characters
/// (a token can carry anything in its `kid`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid {kind} {value:?}: expected 1 to 64 characters from [A-Za-z0-9._-], starting with a letter or a digit")]
    Name { kind: &'static str, value: String },
    #[error("invalid key id {0:?}: expected \"k-\" followed by 16 lowercase hex digits")]
    Kid(String),
    #[error("invalid token id (jti) {0:?}: expected 32 lowercase hex digits")]
    Jti(String),
}

/// The value as shown in an error message.
fn shown(value: &str) -> String {
    if value.chars().count() <= 80 {
        value.to_string()
    } else {
        let cut: String = value.chars().take(77).collect();
        format!("{cut}...")
    }
}

fn is_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= NAME_MAX
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_lower_hex(value: &str, len: usize) -> bool {
    value.len() == len
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn name<'a>(kind: &'static str, value: &'a str) -> Result<&'a str, IdError> {
    if is_name(value) {
        Ok(value)
    } else {
        Err(IdError::Name {
            kind,
            value: shown(value),
        })
    }
}

/// An agent id: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn agent_id(value: &str) -> Result<&str, IdError> {
    name("agent id", value)
}

/// A policy id: same pattern as an agent id.
pub fn policy_id(value: &str) -> Result<&str, IdError> {
    name("policy id", value)
}

/// A key id: `k-[0-9a-f]{16}`.
pub fn kid(value: &str) -> Result<&str, IdError> {
    match value.strip_prefix(KID_PREFIX) {
        Some(hex) if is_lower_hex(hex, KID_HEX_LEN) => Ok(value),
        _ => Err(IdError::Kid(shown(value))),
    }
}

/// A token id: `[0-9a-f]{32}`.
pub fn jti(value: &str) -> Result<&str, IdError> {
    if is_lower_hex(value, JTI_HEX_LEN) {
        Ok(value)
    } else {
        Err(IdError::Jti(shown(value)))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The key id of a public key: `k-` + hex of the first 8 bytes of its SHA-256.
pub fn kid_for_public_key(public_key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(public_key);
    format!("{KID_PREFIX}{}", hex(&digest[..KID_HEX_LEN / 2]))
}

/// A fresh token id from 16 random bytes.
pub fn jti_from_bytes(bytes: &[u8; JTI_HEX_LEN / 2]) -> String {
    hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "agent-1", "A.b_c-9", "0", &"x".repeat(64)] {
            assert_eq!(agent_id(ok), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "../../etc/passwd",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(policy_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kids() {
        assert!(kid("k-0123456789abcdef").is_ok());
        for bad in [
            "",
            "k-",
            "k-0123456789ABCDEF",
            "k-0123456789abcde",
            "k-0123456789abcdef0",
            "../../x",
            "k-../../../etc/pw",
            "k-0123456789abcde/",
            "x-0123456789abcdef",
        ] {
            assert!(matches!(kid(bad), Err(IdError::Kid(_))), "{bad:?}");
        }
    }

    #[test]
    fn jtis_and_long_values_are_cut_in_messages() {
        assert!(jti("0123456789abcdef0123456789abcdef").is_ok());
        assert!(jti("0123456789abcdef0123456789abcde").is_err());
        let long = "y".repeat(500);
        let msg = kid(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn derived_kids_are_valid() {
        let k = kid_for_public_key(&[7u8; 32]);
        assert!(kid(&k).is_ok(), "{k}");
        assert_eq!(hex(&[0x00, 0xff, 0x1a]), "00ff1a");
    }
}
