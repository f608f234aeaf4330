//! Reading a small text file (policy, price table) with a size bound, so a
//! huge or endless file (`/dev/zero`) cannot exhaust memory, and a clear
//! error for bytes that are not UTF-8.

use std::io::Read;
use std::path::Path;

#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed, or the bytes are not UTF-8 (InvalidData).
    Io(std::io::Error),
    /// The file has more than the allowed bytes.
    TooLarge,
}

/// All of `input`, if it has at most `max_bytes` bytes (reading stops one
/// byte past the bound).
pub fn read_bounded(input: impl Read, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    input
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// The whole file as text, if it has at most `max_bytes` bytes.
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let bytes = read_bounded(file, max_bytes)?;
    String::from_utf8(bytes).map_err(|e| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}
