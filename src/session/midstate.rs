//! SHA-256 in two halves, for the event chain: the supervisor's thread
//! compresses the whole 64-byte blocks of an event line as far as it knows
//! it (up to `"prev":"`), and the writer thread finishes the line once the
//! previous line's digest is known. The state between the two is 32 bytes
//! plus a count, so a batch of thousands of events carries little.
//!
//! This is plain FIPS 180-4 padding around `sha2`'s block function; tests
//! check it against `sha2::Sha256` for every split of many lengths.

use sha2::digest::generic_array::GenericArray;

/// The SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK: usize = 64;

/// The SHA-256 state after some whole blocks of a message.
#[derive(Clone, Copy, Debug)]
pub struct Midstate {
    words: [u32; 8],
    /// Bytes absorbed so far (a multiple of 64).
    absorbed: u64,
}

impl Default for Midstate {
    fn default() -> Self {
        Self::new()
    }
}

impl Midstate {
    pub fn new() -> Self {
        Self {
            words: IV,
            absorbed: 0,
        }
    }

    /// Bytes absorbed so far.
    pub fn absorbed(&self) -> u64 {
        self.absorbed
    }

    /// Absorb the whole blocks at the start of `bytes`; returns how many
    /// bytes that was (the rest, under 64 bytes, is left to [`finish`]).
    ///
    /// [`finish`]: Midstate::finish
    pub fn absorb_blocks(&mut self, bytes: &[u8]) -> usize {
        let whole = bytes.len() / BLOCK * BLOCK;
        for block in bytes[..whole].chunks_exact(BLOCK) {
            self.compress(block);
        }
        self.absorbed += whole as u64;
        whole
    }

    fn compress(&mut self, block: &[u8]) {
        sha2::compress256(
            &mut self.words,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }

    /// The digest of the message: what was absorbed, then `rest`.
    pub fn finish(mut self, rest: &[u8]) -> [u8; 32] {
        let total_bits = (self.absorbed + rest.len() as u64).wrapping_mul(8);
        let whole = rest.len() / BLOCK * BLOCK;
        for block in rest[..whole].chunks_exact(BLOCK) {
            self.compress(block);
        }
        let tail = &rest[whole..];
        let mut buf = [0u8; BLOCK];
        buf[..tail.len()].copy_from_slice(tail);
        buf[tail.len()] = 0x80;
        // The length takes the last 8 bytes; if they are not free, pad
        // this block and put the length in one more.
        if tail.len() + 1 > BLOCK - 8 {
            self.compress(&buf);
            buf = [0u8; BLOCK];
        }
        buf[BLOCK - 8..].copy_from_slice(&total_bits.to_be_bytes());
        self.compress(&buf);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.words) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha256_for_every_split() {
        let message: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..message.len() {
            let m = &message[..len];
            let want: [u8; 32] = Sha256::digest(m).into();
            for split in 0..=len {
                let mut s = Midstate::new();
                let done = s.absorb_blocks(&m[..split]);
                assert_eq!(done, split / 64 * 64);
                assert_eq!(s.absorbed(), done as u64);
                assert_eq!(s.finish(&m[done..]), want, "len {len} split {split}");
            }
        }
    }

    #[test]
    fn a_copied_midstate_finishes_different_messages() {
        let mut prefix = Midstate::new();
        prefix.absorb_blocks(&[b'p'; 64]);
        for tail in [&b""[..], b"x", &[b'y'; 55], &[b'z'; 56], &[b'w'; 130]] {
            let mut m = vec![b'p'; 64];
            m.extend_from_slice(tail);
            let want: [u8; 32] = Sha256::digest(&m).into();
            assert_eq!(prefix.finish(tail), want);
        }
    }
}
