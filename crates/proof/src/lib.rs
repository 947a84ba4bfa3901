//! Proof of compute: a device proves, by doing the work, that it has the compute and the memory
//! it claims.
//!
//! The coordinator sends a [`Challenge`]: a fresh random seed and parameters sized to the
//! device's claimed class ([`class_for`]). The prover runs a chain of integer matrix products
//! ([`compute`]), commits to every intermediate row with a Merkle root, and opens the rows that
//! the root itself selects (Fiat–Shamir). It also fills the claimed memory with a
//! memory-hard chain of blocks ([`memory`]) and commits to it. Once both commitments are in, the
//! coordinator sends a fresh nonce that picks the memory blocks to open, under a deadline too
//! short to refill. The whole exchange fits in one [`Transcript`] that anyone can re-check
//! offline with [`verify_transcript`].
//!
//! Invariants: no IO, no clock (the caller measures and records time), no floating point in
//! anything a verdict depends on, and every verdict is a pure function of the transcript.
//!
//! Soundness: a prover that skipped a fraction `f` of the row-steps passes one check with
//! probability at most `1 - f`, and [`checks_for`] picks the number of checks `k` so that
//! `(1 - f)^k <= 2^-40` at `f = SKIPPED_FRACTION_DETECTED`.

pub mod compute;
pub mod memory;
pub mod merkle;
pub mod stream;

use serde::{Deserialize, Serialize};

/// Version of the transcript format and of the arithmetic.
pub const PROOF_VERSION: u32 = 2;
/// Bits of security against a prover that skipped the detected fraction of the work.
pub const SOUNDNESS_BITS: u32 = 40;
/// The smallest skipped fraction caught with probability `1 - 2^-SOUNDNESS_BITS`, as a
/// numerator over 100. A prover skipping less passes more often, but saves less than this.
pub const SKIPPED_FRACTION_DETECTED_PCT: u32 = 25;
/// Time allowed on top of the expected compute time for the network and scheduling, so an
/// honest device on a slow link is not failed.
pub const NETWORK_ALLOWANCE_MS: u64 = 2_000;
/// The deadline is this many times the time the claimed throughput needs.
pub const DEADLINE_SLACK_FACTOR: u64 = 4;
/// The memory check's soundness: a prover whose committed fill is wrong at this share of the
/// blocks (numerator over 100) passes with probability at most `2^-SOUNDNESS_BITS`. Half, not a
/// quarter as for compute, because each memory opening carries three 1 KiB blocks and the
/// answer must fit in one frame; a device short of half its claimed memory is what this catches.
pub const MEMORY_WRONG_FRACTION_DETECTED_PCT: u32 = 50;
/// Time for the prover to read and send the openings, on top of the network allowance.
pub const ANSWER_LOCAL_MS: u64 = 1_000;

/// The number of checks for the soundness target: the smallest `k` with
/// `(1 - f)^k <= 2^-bits`, computed in integers (`(100 - pct)^k * 2^bits <= 100^k`).
pub fn checks_for(bits: u32, skipped_pct: u32) -> u32 {
    assert!(
        (1..100).contains(&skipped_pct),
        "a fraction strictly between 0 and 1"
    );
    // Compare logarithms through repeated multiplication on u128 with scaling to avoid overflow:
    // track (100 - pct)^k / 100^k as a fixed-point fraction with 60 bits.
    let mut fraction: u128 = 1 << 60;
    let target: u128 = (1u128 << 60) >> bits;
    let mut k = 0;
    while fraction > target {
        // Rounded up, so rounding never makes k smaller than the exact answer.
        fraction = (fraction * u128::from(100 - skipped_pct)).div_ceil(100);
        k += 1;
    }
    k
}

/// What a class of device can do: used to size the challenge and its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceClass {
    /// `cpu`, or a GPU model key such as `h100`.
    pub name: String,
    /// int8 multiply-adds per second the class sustains on this proof.
    pub int8_ops_per_s: u64,
    /// Memory the class has.
    pub memory_bytes: u64,
    /// Bytes per second of the memory fill the class sustains.
    pub fill_bytes_per_s: u64,
}

const GIB: u64 = 1 << 30;

/// Known classes: (model fragment, int8 multiply-adds per second on this proof, memory, memory
/// fill bytes per second). The GPU figures are what the CUDA prover (`flotilla-proof-cuda`,
/// `dp4a` products on the CUDA cores, not the tensor cores) should sustain with a wide margin:
/// about a quarter of each model's `dp4a` peak for compute, and about a hundredth of its memory
/// bandwidth for the memory-hard fill, whose lanes run one thread each. They are not yet
/// measured on the hardware; a device that cannot reach them fails its deadline, so they err
/// low, and the memory part (the fill must fit in the claimed memory) is what tells models
/// apart. The CPU figures are what the portable Rust prover sustains on one AVX2 core (4 to 6 G
/// ops/s and 350 MiB/s of fill measured on the build machine); slower CPUs still meet the
/// deadline, which allows four times the expected time plus the network allowance.
const CLASSES: &[(&str, u64, u64, u64)] = &[
    ("b200", 16_000_000_000_000, 180 * GIB, 60 * GIB),
    ("h200", 10_000_000_000_000, 141 * GIB, 40 * GIB),
    ("h100", 10_000_000_000_000, 80 * GIB, 40 * GIB),
    ("a100", 6_000_000_000_000, 80 * GIB, 25 * GIB),
    ("l40s", 8_000_000_000_000, 48 * GIB, 10 * GIB),
    ("4090", 8_000_000_000_000, 24 * GIB, 10 * GIB),
    ("3090", 5_000_000_000_000, 24 * GIB, 8 * GIB),
    ("4080", 6_000_000_000_000, 16 * GIB, 8 * GIB),
];

/// The CPU class: every CPU device, and every simulated GPU (which never passes as the GPU it
/// simulates).
pub fn cpu_class() -> DeviceClass {
    DeviceClass {
        name: "cpu".to_owned(),
        int8_ops_per_s: 4_000_000_000,
        memory_bytes: GIB,
        fill_bytes_per_s: 300 << 20,
    }
}

/// The class of a device from its reported model. Unknown GPUs get the CPU class: they must
/// prove at least that much.
pub fn class_for(model: &str, is_gpu: bool, simulated: bool) -> DeviceClass {
    if !is_gpu || simulated {
        return cpu_class();
    }
    let key: String = model
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    CLASSES
        .iter()
        .find(|(fragment, ..)| key.contains(fragment))
        .map(class_from_row)
        .unwrap_or_else(cpu_class)
}

fn class_from_row(&(fragment, ops, memory, fill): &(&str, u64, u64, u64)) -> DeviceClass {
    DeviceClass {
        name: fragment.to_owned(),
        int8_ops_per_s: ops,
        memory_bytes: memory,
        fill_bytes_per_s: fill,
    }
}

/// How long the claimed class should need for a challenge's work, by default.
pub const CHALLENGE_TARGET_MS: u64 = 2_000;
/// Bounds on a challenge's target time: below the minimum a proof proves little, above the
/// maximum a device is tied up too long.
pub const CHALLENGE_TARGET_MS_MIN: u64 = 10;
pub const CHALLENGE_TARGET_MS_MAX: u64 = 600_000;

/// The class with this name (as recorded in a challenge).
pub fn class_named(name: &str) -> Option<DeviceClass> {
    if name == "cpu" {
        return Some(cpu_class());
    }
    CLASSES
        .iter()
        .find(|(fragment, ..)| *fragment == name)
        .map(class_from_row)
}

/// The share of a class's memory a challenge fills by default, in percent: what is left over is
/// for the driver and the prover's own tree.
pub const MEMORY_PCT_DEFAULT: u32 = 90;

/// A fresh challenge for a device of `class`, with `seed` from the caller's random source.
pub fn challenge_for(class: &DeviceClass, seed: [u8; 32]) -> Challenge {
    challenge_with_target(class, seed, CHALLENGE_TARGET_MS, MEMORY_PCT_DEFAULT)
}

/// A fresh challenge whose compute the class needs about `target_ms` for (clamped to the
/// bounds), filling `memory_pct` percent of the class's memory (clamped to 1..=100).
pub fn challenge_with_target(
    class: &DeviceClass,
    seed: [u8; 32],
    target_ms: u64,
    memory_pct: u32,
) -> Challenge {
    let target_ms = target_ms.clamp(CHALLENGE_TARGET_MS_MIN, CHALLENGE_TARGET_MS_MAX);
    let memory_pct = memory_pct.clamp(1, 100);
    Challenge {
        version: PROOF_VERSION,
        seed: hex::encode(seed),
        class: class.name.clone(),
        target_ms,
        memory_pct,
        compute: ComputeParams::for_class(class, target_ms),
        memory: MemoryParams::for_class(class, memory_pct),
    }
}

/// Parameters of the compute part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeParams {
    /// Matrices are `matrix_n × matrix_n`.
    pub matrix_n: u32,
    /// Products in the chain.
    pub steps: u32,
    /// Rows the verifier checks.
    pub checks: u32,
    /// Time the prover has, from receiving the challenge to sending the transcript.
    pub deadline_ms: u64,
}

impl ComputeParams {
    /// Multiply-adds an honest prover does.
    pub fn work_ops(&self) -> u64 {
        u64::from(self.steps) * u64::from(self.matrix_n).pow(3)
    }

    /// Sized so the claimed class needs about `target_ms` for the work.
    pub fn for_class(class: &DeviceClass, target_ms: u64) -> ComputeParams {
        let matrix_n: u32 = if class.name == "cpu" { 256 } else { 4096 };
        let per_step_ops = u64::from(matrix_n).pow(3);
        let wanted_ops = class.int8_ops_per_s / 1000 * target_ms;
        let steps = (wanted_ops / per_step_ops).clamp(16, 4096) as u32;
        let mut params = ComputeParams {
            matrix_n,
            steps,
            checks: checks_for(SOUNDNESS_BITS, SKIPPED_FRACTION_DETECTED_PCT),
            deadline_ms: 0,
        };
        let expected_ms = params.work_ops() * 1000 / class.int8_ops_per_s.max(1);
        params.deadline_ms = expected_ms * DEADLINE_SLACK_FACTOR + NETWORK_ALLOWANCE_MS;
        params
    }
}

/// Parameters of the memory part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryParams {
    /// Always [`memory::BLOCK_BYTES`]; recorded so a transcript says what was proven.
    pub block_bytes: u32,
    /// Independent chains of blocks.
    pub lanes: u32,
    pub blocks_per_lane: u64,
    /// Blocks the verifier opens.
    pub checks: u32,
    /// Time the fill may take at the class's speed, with the slack factor; added to the compute
    /// deadline for the commitments.
    pub fill_deadline_ms: u64,
    /// Time from the nonce to the openings: the network allowance and [`ANSWER_LOCAL_MS`].
    pub answer_deadline_ms: u64,
}

/// Lanes for CPU and for GPU classes: a GPU runs one chain per thread.
const CPU_LANES: u32 = 4;
const GPU_LANES: u32 = 8192;
/// The fewest blocks in a lane: two seed blocks and enough chained ones to check.
const BLOCKS_PER_LANE_MIN: u64 = 16;

impl MemoryParams {
    pub fn block_count(&self) -> u64 {
        u64::from(self.lanes) * self.blocks_per_lane
    }

    /// Bytes of memory an honest prover fills.
    pub fn fill_bytes(&self) -> u64 {
        self.block_count() * u64::from(self.block_bytes)
    }

    /// Sized to fill `memory_pct` percent of the class's memory.
    pub fn for_class(class: &DeviceClass, memory_pct: u32) -> MemoryParams {
        let lanes = if class.name == "cpu" {
            CPU_LANES
        } else {
            GPU_LANES
        };
        let wanted_bytes = class.memory_bytes / 100 * u64::from(memory_pct);
        let blocks_per_lane = (wanted_bytes / u64::from(memory::BLOCK_BYTES) / u64::from(lanes))
            .max(BLOCKS_PER_LANE_MIN);
        let mut params = MemoryParams {
            block_bytes: memory::BLOCK_BYTES,
            lanes,
            blocks_per_lane,
            checks: checks_for(SOUNDNESS_BITS, MEMORY_WRONG_FRACTION_DETECTED_PCT),
            fill_deadline_ms: 0,
            answer_deadline_ms: NETWORK_ALLOWANCE_MS + ANSWER_LOCAL_MS,
        };
        let expected_ms = params.fill_bytes() * 1000 / class.fill_bytes_per_s.max(1);
        params.fill_deadline_ms = expected_ms * DEADLINE_SLACK_FACTOR;
        params
    }
}

/// What the coordinator sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub version: u32,
    /// Hex of 32 fresh random bytes.
    pub seed: String,
    /// The class the device claimed.
    pub class: String,
    /// The time the class should need; the compute parameters follow from class and target.
    pub target_ms: u64,
    /// The share of the class's memory to fill; the memory parameters follow from class and it.
    pub memory_pct: u32,
    pub compute: ComputeParams,
    pub memory: MemoryParams,
}

impl Challenge {
    /// Time from the challenge to both commitments: the compute deadline and the fill's.
    pub fn commit_deadline_ms(&self) -> u64 {
        self.compute
            .deadline_ms
            .saturating_add(self.memory.fill_deadline_ms)
    }
}

/// One checked row: row `row` of `X_step` and of `X_{step+1}`, with their Merkle paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowOpening {
    pub step: u32,
    pub row: u32,
    pub values: String,
    pub next_values: String,
    pub path: Vec<String>,
    pub next_path: Vec<String>,
}

/// One checked memory block, with its predecessor and the block its predecessor references,
/// each with its Merkle path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockOpening {
    /// Global index: lane × blocks per lane + position.
    pub index: u64,
    pub block: String,
    pub previous: String,
    pub reference: String,
    pub path: Vec<String>,
    pub previous_path: Vec<String>,
    pub reference_path: Vec<String>,
}

/// Everything needed to re-check a proof: challenge, commitments, openings, timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    pub challenge: Challenge,
    /// Hex Merkle root over every row of every matrix in the chain.
    pub compute_root: String,
    pub openings: Vec<RowOpening>,
    /// Hex Merkle root over every memory block.
    pub memory_root: String,
    /// Measured by the coordinator: challenge sent to commitments received.
    pub elapsed_ms: u64,
    /// Hex of the 32 random bytes the coordinator sent once the commitments were in.
    #[serde(default)]
    pub memory_nonce: String,
    #[serde(default)]
    pub memory_openings: Vec<BlockOpening>,
    /// Measured by the coordinator: nonce sent to memory openings received.
    #[serde(default)]
    pub answer_elapsed_ms: u64,
}

/// Why a proof fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("transcript version {0} is not {PROOF_VERSION}")]
    Version(u32),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("parameters out of range: {0}")]
    Parameters(&'static str),
    #[error("the openings are not the ones the commitment selects")]
    WrongOpenings,
    #[error("row {row} of step {step} is not in the commitment")]
    NotCommitted { step: u32, row: u32 },
    #[error("row {row} of step {step} is not the product of the step before")]
    WrongRow { step: u32, row: u32 },
    #[error("memory block {index} is not in the commitment")]
    BlockNotCommitted { index: u64 },
    #[error("memory block {index} is not the fill's block")]
    WrongBlock { index: u64 },
    #[error("committed after {elapsed_ms} ms; the deadline was {deadline_ms} ms")]
    Late { elapsed_ms: u64, deadline_ms: u64 },
    #[error("opened the memory after {elapsed_ms} ms; the deadline was {deadline_ms} ms")]
    LateAnswer { elapsed_ms: u64, deadline_ms: u64 },
}

/// Bounds a verifier accepts, so a hostile transcript cannot make it allocate or loop without
/// limit.
const MATRIX_N_MAX: u32 = 8192;
const STEPS_MAX: u32 = 1 << 16;
const CHECKS_MAX: u32 = 4096;
const LANES_MAX: u32 = 1 << 16;
/// 1 TiB of blocks.
const MEMORY_BLOCKS_MAX: u64 = 1 << 30;

/// The 32 bytes a hex field of a challenge or transcript holds (a seed, root or nonce).
pub fn parse_hash(text: &str, what: &'static str) -> Result<[u8; 32], Failure> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| Failure::Malformed(what))?;
    Ok(bytes)
}

fn parse_seed(text: &str) -> Result<[u8; 32], Failure> {
    parse_hash(text, "seed")
}

fn check_memory_params(params: &MemoryParams) -> Result<(), Failure> {
    if params.block_bytes != memory::BLOCK_BYTES {
        return Err(Failure::Parameters("block_bytes"));
    }
    if params.lanes == 0 || params.lanes > LANES_MAX {
        return Err(Failure::Parameters("lanes"));
    }
    if params.blocks_per_lane < BLOCKS_PER_LANE_MIN || params.block_count() > MEMORY_BLOCKS_MAX {
        return Err(Failure::Parameters("blocks_per_lane"));
    }
    if params.checks == 0 || params.checks > CHECKS_MAX {
        return Err(Failure::Parameters("memory checks"));
    }
    Ok(())
}

fn check_params(params: &ComputeParams) -> Result<(), Failure> {
    if params.matrix_n == 0 || params.matrix_n > MATRIX_N_MAX {
        return Err(Failure::Parameters("matrix_n"));
    }
    if params.steps == 0 || params.steps > STEPS_MAX {
        return Err(Failure::Parameters("steps"));
    }
    if params.checks == 0 || params.checks > CHECKS_MAX {
        return Err(Failure::Parameters("checks"));
    }
    Ok(())
}

/// Checks a challenge's version and bounds, and returns its seed: what any prover does first.
pub fn check_challenge(challenge: &Challenge) -> Result<[u8; 32], Failure> {
    if challenge.version != PROOF_VERSION {
        return Err(Failure::Version(challenge.version));
    }
    check_params(&challenge.compute)?;
    check_memory_params(&challenge.memory)?;
    parse_seed(&challenge.seed)
}

/// What the coordinator signs to vouch for a transcript it checked (its timings are its own
/// measurements): a domain tag and the SHA-256 of the transcript's canonical JSON.
pub fn transcript_message(transcript: &Transcript) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(transcript).expect("a transcript serializes");
    let mut message = b"flotilla-proof-transcript-v1".to_vec();
    message.extend_from_slice(&Sha256::digest(&json));
    message
}

/// Re-checks a transcript: format, that the parameters are the ones its class calls for, the
/// commitment, every opening, and the deadline.
pub fn verify_transcript(transcript: &Transcript) -> Result<(), Failure> {
    let class = class_named(&transcript.challenge.class).ok_or(Failure::Parameters("class"))?;
    let target_ms = transcript.challenge.target_ms;
    if !(CHALLENGE_TARGET_MS_MIN..=CHALLENGE_TARGET_MS_MAX).contains(&target_ms) {
        return Err(Failure::Parameters("target_ms"));
    }
    if transcript.challenge.compute != ComputeParams::for_class(&class, target_ms) {
        return Err(Failure::Parameters("not the sizing of the claimed class"));
    }
    let memory_pct = transcript.challenge.memory_pct;
    if !(1..=100).contains(&memory_pct) {
        return Err(Failure::Parameters("memory_pct"));
    }
    if transcript.challenge.memory != MemoryParams::for_class(&class, memory_pct) {
        return Err(Failure::Parameters(
            "not the memory sizing of the claimed class",
        ));
    }
    verify_content(transcript)
}

/// Everything [`verify_transcript`] checks except the class sizing; for challenges sized by
/// hand (tests, benchmarks).
pub fn verify_content(transcript: &Transcript) -> Result<(), Failure> {
    verify_commitments(transcript)?;
    let challenge = &transcript.challenge;
    let seed = parse_seed(&challenge.seed)?;
    let memory_root = parse_hash(&transcript.memory_root, "memory root")?;
    let nonce = parse_hash(&transcript.memory_nonce, "memory nonce")?;
    memory::verify(
        &seed,
        &challenge.memory,
        &memory_root,
        &nonce,
        &transcript.memory_openings,
    )?;
    if transcript.answer_elapsed_ms > challenge.memory.answer_deadline_ms {
        return Err(Failure::LateAnswer {
            elapsed_ms: transcript.answer_elapsed_ms,
            deadline_ms: challenge.memory.answer_deadline_ms,
        });
    }
    Ok(())
}

/// The first half of [`verify_content`]: the compute openings and that both commitments came
/// in time. The coordinator runs it before sending the memory nonce.
pub fn verify_commitments(transcript: &Transcript) -> Result<(), Failure> {
    let challenge = &transcript.challenge;
    let seed = check_challenge(challenge)?;
    let root = parse_hash(&transcript.compute_root, "compute root")?;
    parse_hash(&transcript.memory_root, "memory root")?;
    compute::verify(&seed, &challenge.compute, &root, &transcript.openings)?;
    let deadline_ms = challenge.commit_deadline_ms();
    if transcript.elapsed_ms > deadline_ms {
        return Err(Failure::Late {
            elapsed_ms: transcript.elapsed_ms,
            deadline_ms,
        });
    }
    Ok(())
}

/// The CPU prover's state between its commitments and the memory openings.
#[derive(Debug)]
pub struct CpuProof {
    /// The commitments and compute openings, with the timings and memory fields left for the
    /// caller (who owns the clock and the nonce).
    pub transcript: Transcript,
    fill: memory::MemoryFill,
}

impl CpuProof {
    /// Opens the memory blocks that `nonce` (hex of 32 bytes) picks.
    pub fn open_memory(&self, nonce: &str) -> Result<Vec<BlockOpening>, Failure> {
        let challenge = &self.transcript.challenge;
        let seed = parse_seed(&challenge.seed)?;
        let nonce = parse_hash(nonce, "memory nonce")?;
        Ok(self.fill.open(&seed, &challenge.memory, &nonce))
    }

    /// The whole transcript for `nonce`, for tests and benchmarks that play both sides.
    pub fn finish(mut self, nonce: &str) -> Result<Transcript, Failure> {
        self.transcript.memory_openings = self.open_memory(nonce)?;
        self.transcript.memory_nonce = nonce.to_owned();
        Ok(self.transcript)
    }
}

/// The CPU prover: does the compute work, fills the memory, and returns both commitments.
pub fn prove_on_cpu(challenge: &Challenge) -> Result<CpuProof, Failure> {
    let seed = check_challenge(challenge)?;
    let proof = compute::ComputeProof::prove(&seed, &challenge.compute);
    let openings = proof.open(&seed, &challenge.compute);
    let compute_root = hex::encode(proof.root());
    drop(proof);
    let fill = memory::MemoryFill::fill(&seed, &challenge.memory);
    Ok(CpuProof {
        transcript: Transcript {
            challenge: challenge.clone(),
            compute_root,
            openings,
            memory_root: hex::encode(fill.root()),
            elapsed_ms: 0,
            memory_nonce: String::new(),
            memory_openings: Vec::new(),
            answer_elapsed_ms: 0,
        },
        fill,
    })
}

#[cfg(test)]
mod tests;
