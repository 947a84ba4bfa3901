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

/// splitmix64's increment.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `index` of the stream that starts at `state`, without the words before it: what the
/// GPU prover computes, one thread per word.
pub fn word_at(state: u64, index: u64) -> u64 {
    mix(state.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

/// The starting state of the stream for (seed, label, index): word `i` of the stream is
/// splitmix64's mix of `state + (i + 1) · 0x9e3779b97f4a7c15`, so a GPU prover can compute
/// every word of a stream at once from this one number.
pub fn initial_state(seed: &[u8; 32], label: &str, index: u64) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(seed);
    hasher.update(label.as_bytes());
    hasher.update(index.to_le_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Stream {
    pub fn new(seed: &[u8; 32], label: &str, index: u64) -> Stream {
        Stream {
            state: initial_state(seed, label, index),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Fills `out` with stream bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_word_of_a_stream_is_computed_without_the_words_before_it() {
        let seed = [7u8; 32];
        let mut stream = Stream::new(&seed, "a", 3);
        let state = initial_state(&seed, "a", 3);
        for index in 0..1000 {
            assert_eq!(stream.next_u64(), word_at(state, index), "word {index}");
        }
    }
}
