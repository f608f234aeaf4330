//! Session ids: `YYYYMMDD-HHMMSS-xxxxxx` (local time, six `[a-z0-9]` from the
//! OS CSPRNG), as in vallignus 0.4.2, and the validation applied to any id a
//! user passes on the command line.

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh session id for the current local time.
pub fn generate() -> String {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    format!("{stamp}-{}", random_suffix())
}

fn random_suffix() -> String {
    let mut out = String::with_capacity(6);
    // Rejection sampling keeps the distribution uniform over 36 symbols.
    while out.len() < 6 {
        let mut buf = [0u8; 16];
        if getrandom::fill(&mut buf).is_err() {
            // The OS CSPRNG is unavailable only in broken environments; fall
            // back to a time-and-pid based value rather than failing the run.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            buf = (u128::from(nanos) ^ (u128::from(std::process::id()) << 32)).to_le_bytes();
        }
        for b in buf {
            if b < 252 && out.len() < 6 {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    out
}

/// Why a user-supplied session id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidId {
    #[error("invalid session id {0:?}: it is empty")]
    Empty(String),
    #[error("invalid session id {0:?}: longer than 128 characters")]
    TooLong(String),
    #[error("invalid session id {0:?}: only letters, digits, '-', '_' and '.' are allowed, and it must not start with '.'")]
    BadCharacters(String),
}

/// Accept ids that can only name a direct child of the sessions directory.
pub fn validate(id: &str) -> Result<&str, InvalidId> {
    if id.is_empty() {
        return Err(InvalidId::Empty(id.into()));
    }
    if id.len() > 128 {
        return Err(InvalidId::TooLong(id.into()));
    }
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok_chars || id.starts_with('.') {
        return Err(InvalidId::BadCharacters(id.into()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_0_4_2_shape() {
        let id = generate();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0].len(), 8);
        assert_eq!(parts[1].len(), 6);
        assert!(parts[0]
            .bytes()
            .chain(parts[1].bytes())
            .all(|b| b.is_ascii_digit()));
        assert_eq!(parts[2].len(), 6);
        assert!(parts[2].bytes().all(|b| ALPHABET.contains(&b)));
        assert!(validate(&id).is_ok());
    }

    #[test]
    fn ids_are_unique_enough() {
        let set: std::collections::HashSet<String> = (0..1000).map(|_| random_suffix()).collect();
        assert!(set.len() > 990);
    }

    #[test]
    fn rejects_traversal_and_separators() {
        for bad in [
            "../etc", "..", ".", "a/b", "a\\b", "", "x\0y", ".hidden", "a b",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate(&"a".repeat(129)).is_err());
        assert!(validate("20250124-153045-a1b2c3").is_ok());
    }
}
