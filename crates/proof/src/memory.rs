//! The memory part: fill the claimed memory with data that is costly to hold back, then open
//! the blocks the verifier asks for after the fill.
//!
//! Memory is split into `lanes` independent lanes of `blocks_per_lane` blocks of
//! [`BLOCK_BYTES`]. The first two blocks of a lane come from the seed; every later block is
//! `B[j] = G(B[j-1], B[r])`, where `r` is drawn uniformly from `0..j-1` by the first word of
//! `B[j-1]` (data-dependent, as in Argon2d), and `G` is the BlaMka compression of Argon2 (RFC
//! 9106, section 3.5): a full-width 1 KiB mix, so no block can be rebuilt from a short digest of
//! it. A prover that keeps only part of a lane must recompute a missing block from its two
//! parents, which may be missing too, recursively; the cost grows quickly as the kept share
//! shrinks, and the fill itself is timed against the class's fill speed. Lanes let a GPU run
//! thousands of chains at once; references stay inside a lane so lanes need no synchronisation.
//!
//! The prover commits with one Merkle root over every block. Then the verifier sends a fresh
//! nonce, which (with the seed and root) picks the blocks to open; each opening carries the
//! block, its predecessor and its reference, with their paths, so the verifier checks the
//! relation with one `G`. The answer deadline is far shorter than a refill at the class's speed:
//! a prover that dropped the data after committing cannot answer in time.

use crate::merkle::{Hash, Tree, leaf_hash, verify_path};
use crate::stream::{Stream, draw_pair};
use crate::{BlockOpening, Failure, MemoryParams};

/// Bytes in one block.
pub const BLOCK_BYTES: u32 = 1024;
/// 64-bit words in one block.
const BLOCK_WORDS: usize = BLOCK_BYTES as usize / 8;

/// One block, as words.
pub type Block = [u64; BLOCK_WORDS];

/// The BlaMka mixing step: addition with a 32×32-bit product, as in Argon2.
#[inline(always)]
fn blamka(x: u64, y: u64) -> u64 {
    let product = (x & 0xffff_ffff).wrapping_mul(y & 0xffff_ffff);
    x.wrapping_add(y).wrapping_add(product.wrapping_mul(2))
}

#[inline(always)]
fn gb(v: &mut [u64; 16], a: usize, b: usize, c: usize, d: usize) {
    v[a] = blamka(v[a], v[b]);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = blamka(v[c], v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = blamka(v[a], v[b]);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = blamka(v[c], v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

/// The permutation P over 16 words.
fn permute(v: &mut [u64; 16]) {
    gb(v, 0, 4, 8, 12);
    gb(v, 1, 5, 9, 13);
    gb(v, 2, 6, 10, 14);
    gb(v, 3, 7, 11, 15);
    gb(v, 0, 5, 10, 15);
    gb(v, 1, 6, 11, 12);
    gb(v, 2, 7, 8, 13);
    gb(v, 3, 4, 9, 14);
}

/// The compression `G(x, y)`: `R = x ⊕ y`, P over each row and then each column of `R` seen as
/// an 8×8 matrix of 16-byte registers, and the result XORed with `R`.
pub fn compress(x: &Block, y: &Block, out: &mut Block) {
    let mut r = [0u64; BLOCK_WORDS];
    for ((r, x), y) in r.iter_mut().zip(x).zip(y) {
        *r = x ^ y;
    }
    let mut q = r;
    let mut v = [0u64; 16];
    for row in q.chunks_exact_mut(16) {
        v.copy_from_slice(row);
        permute(&mut v);
        row.copy_from_slice(&v);
    }
    for column in 0..8 {
        // Register `column + 8k` is words `2(column + 8k)` and `2(column + 8k) + 1`.
        for k in 0..8 {
            let word = 2 * (column + 8 * k);
            v[2 * k] = q[word];
            v[2 * k + 1] = q[word + 1];
        }
        permute(&mut v);
        for k in 0..8 {
            let word = 2 * (column + 8 * k);
            q[word] = v[2 * k];
            q[word + 1] = v[2 * k + 1];
        }
    }
    for ((out, q), r) in out.iter_mut().zip(&q).zip(&r) {
        *out = q ^ r;
    }
}

/// A seed block: the first two blocks of each lane.
pub fn seed_block(seed: &[u8; 32], index: u64) -> Block {
    let mut stream = Stream::new(seed, "memory", index);
    let mut block = [0u64; BLOCK_WORDS];
    block.iter_mut().for_each(|w| *w = stream.next_u64());
    block
}

/// The position in its lane of the block that block `position` references, chosen by its
/// predecessor. Only for `position >= 2`.
pub fn reference_of(previous: &Block, position: u64) -> u64 {
    debug_assert!(position >= 2);
    (previous[0] & 0xffff_ffff) % (position - 1)
}

fn block_bytes(block: &Block) -> Vec<u8> {
    block.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn block_leaf(index: u64, block: &Block) -> Hash {
    let mut data = Vec::with_capacity(8 + BLOCK_BYTES as usize);
    data.extend_from_slice(&index.to_le_bytes());
    data.extend_from_slice(&block_bytes(block));
    leaf_hash(&data)
}

/// Fills one lane of `blocks` blocks, starting at global block `first`.
fn fill_lane(seed: &[u8; 32], first: u64, lane: &mut [Block]) {
    lane[0] = seed_block(seed, first);
    lane[1] = seed_block(seed, first + 1);
    for position in 2..lane.len() {
        let (done, rest) = lane.split_at_mut(position);
        let previous = &done[position - 1];
        let reference = &done[reference_of(previous, position as u64) as usize];
        compress(previous, reference, &mut rest[0]);
    }
}

/// An honest prover's state between the fill and the openings: every block, and the tree.
#[derive(Debug)]
pub struct MemoryFill {
    blocks_per_lane: u64,
    blocks: Vec<Block>,
    tree: Tree,
}

impl MemoryFill {
    /// Fills the memory the parameters ask for and commits to it.
    pub fn fill(seed: &[u8; 32], params: &MemoryParams) -> MemoryFill {
        let per_lane = params.blocks_per_lane as usize;
        let mut blocks = vec![[0u64; BLOCK_WORDS]; params.block_count() as usize];
        for (lane, chunk) in blocks.chunks_mut(per_lane).enumerate() {
            fill_lane(seed, lane as u64 * params.blocks_per_lane, chunk);
        }
        MemoryFill::commit(params, blocks)
    }

    /// Commits to given blocks (the honest ones, or a cheater's, in tests).
    pub fn commit(params: &MemoryParams, blocks: Vec<Block>) -> MemoryFill {
        assert_eq!(blocks.len() as u64, params.block_count());
        let leaves = blocks
            .iter()
            .enumerate()
            .map(|(index, block)| block_leaf(index as u64, block))
            .collect();
        MemoryFill {
            blocks_per_lane: params.blocks_per_lane,
            blocks,
            tree: Tree::new(leaves),
        }
    }

    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// Mutable access for tests that model cheaters.
    pub fn blocks_mut(&mut self) -> &mut Vec<Block> {
        &mut self.blocks
    }

    /// Opens the blocks that the seed, the root and the verifier's `nonce` pick.
    pub fn open(
        &self,
        seed: &[u8; 32],
        params: &MemoryParams,
        nonce: &[u8; 32],
    ) -> Vec<BlockOpening> {
        query_positions(seed, &self.root(), nonce, params)
            .into_iter()
            .map(|index| {
                let lane_start = index - index % self.blocks_per_lane;
                let previous = index - 1;
                let reference =
                    lane_start + reference_of(&self.blocks[previous as usize], index - lane_start);
                let hex_block = |i: u64| hex::encode(block_bytes(&self.blocks[i as usize]));
                let hex_path =
                    |i: u64| self.tree.path(i as usize).iter().map(hex::encode).collect();
                BlockOpening {
                    index,
                    block: hex_block(index),
                    previous: hex_block(previous),
                    reference: hex_block(reference),
                    path: hex_path(index),
                    previous_path: hex_path(previous),
                    reference_path: hex_path(reference),
                }
            })
            .collect()
    }
}

/// The global indices of the blocks to open: never one of a lane's two seed blocks, so every
/// opening checks one step of the fill.
pub fn query_positions(
    seed: &[u8; 32],
    root: &Hash,
    nonce: &[u8; 32],
    params: &MemoryParams,
) -> Vec<u64> {
    (0..params.checks)
        .map(|check| {
            let (a, b) = draw_pair(
                b"flotilla/proof/memory/v1",
                &[seed, root, nonce, &check.to_le_bytes()],
            );
            let lane = a % u64::from(params.lanes);
            let position = 2 + b % (params.blocks_per_lane - 2);
            lane * params.blocks_per_lane + position
        })
        .collect()
}

fn decode_block(text: &str) -> Result<Block, Failure> {
    let bytes = hex::decode(text).map_err(|_| Failure::Malformed("memory block"))?;
    if bytes.len() != BLOCK_BYTES as usize {
        return Err(Failure::Malformed("memory block"));
    }
    let mut block = [0u64; BLOCK_WORDS];
    for (word, chunk) in block.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    Ok(block)
}

/// Checks every opening: the blocks the nonce picks, each in the commitment, each the
/// compression of its predecessor and the reference its predecessor selects.
pub fn verify(
    seed: &[u8; 32],
    params: &MemoryParams,
    root: &Hash,
    nonce: &[u8; 32],
    openings: &[BlockOpening],
) -> Result<(), Failure> {
    let positions = query_positions(seed, root, nonce, params);
    if openings.len() != positions.len() {
        return Err(Failure::WrongOpenings);
    }
    let leaf_count = params.block_count() as usize;
    let mut expected = [0u64; BLOCK_WORDS];
    for (opening, &index) in openings.iter().zip(&positions) {
        if opening.index != index {
            return Err(Failure::WrongOpenings);
        }
        let lane_start = index - index % params.blocks_per_lane;
        let block = decode_block(&opening.block)?;
        let previous = decode_block(&opening.previous)?;
        let reference = decode_block(&opening.reference)?;
        let reference_index = lane_start + reference_of(&previous, index - lane_start);
        let committed = |i: u64, block: &Block, path: &[String]| -> Result<bool, Failure> {
            let path = crate::compute::decode_path(path)?;
            Ok(verify_path(
                root,
                &block_leaf(i, block),
                i as usize,
                leaf_count,
                &path,
            ))
        };
        if !(committed(index, &block, &opening.path)?
            && committed(index - 1, &previous, &opening.previous_path)?
            && committed(reference_index, &reference, &opening.reference_path)?)
        {
            return Err(Failure::BlockNotCommitted { index });
        }
        for (i, parent) in [(index - 1, &previous), (reference_index, &reference)] {
            if i - lane_start < 2 && *parent != seed_block(seed, i) {
                return Err(Failure::WrongBlock { index: i });
            }
        }
        compress(&previous, &reference, &mut expected);
        if expected != block {
            return Err(Failure::WrongBlock { index });
        }
    }
    Ok(())
}
