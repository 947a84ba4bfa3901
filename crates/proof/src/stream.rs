//! Seed-derived byte streams: SHA-256 picks a 64-bit state per (seed, label, index), and
//! splitmix64 expands it. Fast enough that the verifier's cost is the arithmetic, and fully
//! determined by the challenge seed, which the prover learns only when the challenge arrives.

use sha2::{Digest, Sha256};

/// Two 64-bit draws from a domain-separated SHA-256 of `parts`: how positions to check are
/// picked from a seed, a commitment and the like.
pub fn draw_pair(domain: &[u8], parts: &[&[u8]]) -> (u64, u64) {
    let mut hasher = Sha256::new();
    hasher.update(domain);
    for part in parts {
        hasher.update(part);
    }
    let digest: [u8; 32] = hasher.finalize().into();
    (
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(digest[8..16].try_into().expect("8 bytes")),
    )
}

#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

impl Stream {
    pub fn new(seed: &[u8; 32], label: &str, index: u64) -> Stream {
        let mut hasher = Sha256::new();
        hasher.update(seed);
        hasher.update(label.as_bytes());
        hasher.update(index.to_le_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        Stream {
            state: u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `out` with stream bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
