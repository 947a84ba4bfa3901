//! The prover's steps over any [`Device`]: the compute chain and its openings, the memory
//! fill, the trees, and the openings the coordinator's nonce picks. What is done on the device
//! is what scales with the challenge; the host computes only positions and formats openings.

use flotilla_proof::merkle::Hash;
use flotilla_proof::stream::initial_state;
use flotilla_proof::{
    BlockOpening, Challenge, ComputeParams, MemoryParams, RowOpening, Transcript, compute, memory,
    parse_hash,
};

use crate::device::Device;
use crate::{Error, MATRIX_TILE, to_usize, tree};

/// 64-bit words in a tree node (a SHA-256 digest).
const HASH_WORDS: u64 = 4;
/// 64-bit words in a memory block.
const BLOCK_WORDS: u64 = memory::BLOCK_BYTES as u64 / 8;

/// A Merkle tree on the device: every level in one buffer, leaves first.
#[derive(Debug)]
pub(crate) struct DeviceTree<B> {
    nodes: B,
    layout: tree::Layout,
}

/// The memory fill on the device, held for the openings.
#[derive(Debug)]
pub(crate) struct DeviceFill<B> {
    blocks: B,
    tree: DeviceTree<B>,
}

/// Does the compute work and the memory fill on `device`: the transcript with both
/// commitments and the compute openings, and the fill held for the memory openings.
pub(crate) fn prove<D: Device>(
    device: &D,
    challenge: &Challenge,
) -> Result<(Transcript, DeviceFill<D::Buffer>), Error> {
    let seed = flotilla_proof::check_challenge(challenge)?;
    let (compute_root, openings) = prove_compute(device, &seed, &challenge.compute)?;
    let fill = fill_memory(device, &seed, &challenge.memory)?;
    let memory_root = root(device, &fill.tree)?;
    let transcript = Transcript {
        challenge: challenge.clone(),
        compute_root: hex::encode(compute_root),
        openings,
        memory_root: hex::encode(memory_root),
        elapsed_ms: 0,
        memory_nonce: String::new(),
        memory_openings: Vec::new(),
        answer_elapsed_ms: 0,
    };
    Ok((transcript, fill))
}

/// The compute chain: every matrix, the tree over their rows, and the openings the root
/// selects. The matrices are freed on return.
fn prove_compute<D: Device>(
    device: &D,
    seed: &[u8; 32],
    params: &ComputeParams,
) -> Result<(Hash, Vec<RowOpening>), Error> {
    let n = u64::from(params.matrix_n);
    if n == 0 || !n.is_multiple_of(MATRIX_TILE) {
        return Err(Error::MatrixSize(params.matrix_n));
    }
    let steps = u64::from(params.steps);
    let matrix_words = n * n / 8;
    let rows = (steps + 1) * n;
    let layout = tree::Layout::new(rows);
    let tree_bytes = layout.nodes() * HASH_WORDS * 8;
    ensure_free(
        device,
        "the compute chain",
        (steps + 2) * n * n + tree_bytes,
    )?;
    let matrices = device.alloc((steps + 1) * matrix_words)?;
    let a = device.alloc(matrix_words)?;
    let (base, a_at) = (device.address(&matrices), device.address(&a));
    // SAFETY (every kernel call here): `matrices` holds steps + 1 matrices of n×n bytes, `a`
    // one, and the tree's leaves are `rows` hashes.
    unsafe {
        device.stream_fill(initial_state(seed, "x0", 0), base, matrix_words)?;
        for step in 0..steps {
            device.stream_fill(initial_state(seed, "a", step), a_at, matrix_words)?;
            let x = base + step * n * n;
            device.matrix_step(x, a_at, x + n * n, params.matrix_n)?;
        }
    }
    let tree = build_tree(device, layout, |leaves| unsafe {
        device.row_leaves(base, params.matrix_n, rows, leaves)
    })?;
    let root = root(device, &tree)?;
    let positions = compute::check_positions(seed, &root, params);
    let leaves: Vec<u64> = positions
        .iter()
        .flat_map(|&(step, row)| [step, step + 1].map(|s| u64::from(s) * n + u64::from(row)))
        .collect();
    let row_starts: Vec<u64> = leaves.iter().map(|leaf| leaf * n / 8).collect();
    let row_words = gather(device, base, &row_starts, n / 8)?;
    let mut rows_hex = row_words.chunks(to_usize(n / 8)).map(words_hex);
    let mut paths = paths(device, &tree, &leaves)?.into_iter();
    let openings = positions
        .into_iter()
        .map(|(step, row)| RowOpening {
            step,
            row,
            values: rows_hex.next().expect("two rows per opening"),
            next_values: rows_hex.next().expect("two rows per opening"),
            path: paths.next().expect("two paths per opening"),
            next_path: paths.next().expect("two paths per opening"),
        })
        .collect();
    Ok((root, openings))
}

/// Fills the memory and builds the tree over its blocks.
fn fill_memory<D: Device>(
    device: &D,
    seed: &[u8; 32],
    params: &MemoryParams,
) -> Result<DeviceFill<D::Buffer>, Error> {
    let count = params.block_count();
    let (lanes, per_lane) = (params.lanes, params.blocks_per_lane);
    let layout = tree::Layout::new(count);
    let tree_bytes = layout.nodes() * HASH_WORDS * 8;
    ensure_free(device, "the memory fill", params.fill_bytes() + tree_bytes)?;
    let blocks = device.alloc(count * BLOCK_WORDS)?;
    let states: Vec<u64> = (0..u64::from(lanes))
        .flat_map(|lane| [0, 1].map(|j| initial_state(seed, "memory", lane * per_lane + j)))
        .collect();
    let states = device.upload(&states)?;
    let at = device.address(&blocks);
    // SAFETY: `states` holds two states per lane; `blocks` every lane's blocks; the leaves
    // are `count` hashes.
    unsafe {
        device.seed_blocks(device.address(&states), lanes, per_lane, at)?;
        device.fill_lanes(lanes, per_lane, at)?;
    }
    let tree = build_tree(device, layout, |leaves| unsafe {
        device.block_leaves(at, count, leaves)
    })?;
    Ok(DeviceFill { blocks, tree })
}

/// The openings for `nonce` (hex): each picked block, its predecessor and the block its
/// predecessor references, with their paths.
pub(crate) fn open_memory<D: Device>(
    device: &D,
    fill: &DeviceFill<D::Buffer>,
    transcript: &Transcript,
    nonce: &str,
) -> Result<Vec<BlockOpening>, Error> {
    let params = &transcript.challenge.memory;
    let seed = parse_hash(&transcript.challenge.seed, "seed")?;
    let root = parse_hash(&transcript.memory_root, "memory root")?;
    let nonce = parse_hash(nonce, "memory nonce")?;
    let picked = memory::query_positions(&seed, &root, &nonce, params);
    let base = device.address(&fill.blocks);
    let previous_starts: Vec<u64> = picked.iter().map(|&i| (i - 1) * BLOCK_WORDS).collect();
    let previous = gather(device, base, &previous_starts, BLOCK_WORDS)?;
    let references: Vec<u64> = picked
        .iter()
        .zip(previous.chunks(to_usize(BLOCK_WORDS)))
        .map(|(&index, previous)| {
            let lane_start = index - index % params.blocks_per_lane;
            let previous: &memory::Block = previous.try_into().expect("a whole block");
            lane_start + memory::reference_of(previous, index - lane_start)
        })
        .collect();
    let pairs: Vec<u64> = picked
        .iter()
        .zip(&references)
        .flat_map(|(&index, &reference)| [index, reference])
        .collect();
    let pair_starts: Vec<u64> = pairs.iter().map(|i| i * BLOCK_WORDS).collect();
    let pair_words = gather(device, base, &pair_starts, BLOCK_WORDS)?;
    let leaves: Vec<u64> = picked
        .iter()
        .zip(&references)
        .flat_map(|(&index, &reference)| [index, index - 1, reference])
        .collect();
    let mut paths = paths(device, &fill.tree, &leaves)?.into_iter();
    let mut path = || paths.next().expect("three paths per opening");
    let mut previous = previous.chunks(to_usize(BLOCK_WORDS)).map(words_hex);
    let mut pair = pair_words.chunks(to_usize(BLOCK_WORDS)).map(words_hex);
    Ok(picked
        .into_iter()
        .map(|index| BlockOpening {
            index,
            block: pair.next().expect("two blocks per opening"),
            previous: previous.next().expect("one predecessor per opening"),
            reference: pair.next().expect("two blocks per opening"),
            path: path(),
            previous_path: path(),
            reference_path: path(),
        })
        .collect())
}

/// Allocates a tree of `layout`, has `hash_leaves` write the leaves (given their address),
/// and hashes every level above.
fn build_tree<D: Device>(
    device: &D,
    layout: tree::Layout,
    hash_leaves: impl FnOnce(u64) -> Result<(), Error>,
) -> Result<DeviceTree<D::Buffer>, Error> {
    let nodes = device.alloc(layout.nodes() * HASH_WORDS)?;
    let base = device.address(&nodes);
    let at = |level: usize| base + layout.starts[level] * HASH_WORDS * 8;
    hash_leaves(at(0))?;
    for level in 1..layout.widths.len() {
        // SAFETY: level `level - 1` holds `width` nodes and the next one half as many,
        // rounded up, both inside `nodes`.
        unsafe { device.tree_level(at(level - 1), layout.widths[level - 1], at(level))? };
    }
    Ok(DeviceTree { nodes, layout })
}

fn root<D: Device>(device: &D, tree: &DeviceTree<D::Buffer>) -> Result<Hash, Error> {
    let top = tree.layout.root() * HASH_WORDS;
    let words = gather(device, device.address(&tree.nodes), &[top], HASH_WORDS)?;
    Ok(words_bytes(&words).try_into().expect("a hash is 32 bytes"))
}

/// The hex Merkle paths of `leaves`, in order, read with one copy.
fn paths<D: Device>(
    device: &D,
    tree: &DeviceTree<D::Buffer>,
    leaves: &[u64],
) -> Result<Vec<Vec<String>>, Error> {
    let per_leaf: Vec<Vec<u64>> = leaves.iter().map(|&leaf| tree.layout.path(leaf)).collect();
    let starts: Vec<u64> = per_leaf.iter().flatten().map(|p| p * HASH_WORDS).collect();
    let words = gather(device, device.address(&tree.nodes), &starts, HASH_WORDS)?;
    let mut hashes = words.chunks(to_usize(HASH_WORDS)).map(words_hex);
    Ok(per_leaf
        .iter()
        .map(|path| {
            path.iter()
                .map(|_| hashes.next().expect("a hash"))
                .collect()
        })
        .collect())
}

/// Copies runs of `run_words` words, starting at each of `starts` (in words from `base`),
/// back to the host in one transfer.
fn gather<D: Device>(
    device: &D,
    base: u64,
    starts: &[u64],
    run_words: u64,
) -> Result<Vec<u64>, Error> {
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    let count = starts.len() as u64;
    let starts = device.upload(starts)?;
    let out = device.alloc(count * run_words)?;
    let run = u32::try_from(run_words).expect("runs are rows, blocks or hashes");
    // SAFETY: every start is, by its caller's construction, the first of `run_words` words
    // inside the buffer at `base`; `out` holds `count` runs.
    unsafe {
        device.gather_words(
            base,
            device.address(&starts),
            count,
            run,
            device.address(&out),
        )?
    };
    device.download(&out)
}

fn ensure_free<D: Device>(device: &D, what: &'static str, needed_bytes: u64) -> Result<(), Error> {
    let free_bytes = device.free_bytes()?;
    if needed_bytes > free_bytes {
        return Err(Error::Memory {
            what,
            needed_bytes,
            free_bytes,
        });
    }
    Ok(())
}

fn words_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn words_hex(words: &[u64]) -> String {
    hex::encode(words_bytes(words))
}
