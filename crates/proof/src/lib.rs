//! Proof of compute: a device proves, by doing the work, that it has the compute it claims.
//!
//! The coordinator sends a [`Challenge`]: a fresh random seed and parameters sized to the
//! device's claimed class ([`class_for`]). The prover runs a chain of integer matrix products
//! ([`compute`]), commits to every intermediate row with a Merkle root, and opens the rows that
//! the root itself selects (Fiat–Shamir), so the whole exchange fits in one [`Transcript`] that
//! anyone can re-check offline with [`verify_transcript`].
//!
//! Invariants: no IO, no clock (the caller measures and records time), no floating point in
//! anything a verdict depends on, and every verdict is a pure function of the transcript.
//!
//! Soundness: a prover that skipped a fraction `f` of the row-steps passes one check with
//! probability at most `1 - f`, and [`checks_for`] picks the number of checks `k` so that
//! `(1 - f)^k <= 2^-40` at `f = SKIPPED_FRACTION_DETECTED`.

pub mod compute;
pub mod merkle;
mod stream;

use serde::{Deserialize, Serialize};

/// Version of the transcript format and of the arithmetic.
pub const PROOF_VERSION: u32 = 1;
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
}

const GIB: u64 = 1 << 30;

/// Known classes: (model fragment, int8 multiply-adds per second on this proof, memory). GPU
/// figures are a conservative fraction of each model's dense int8 peak, for a CUDA prover; the
/// CPU figure is what the portable Rust prover sustains on one AVX2 core (5 G measured on the
/// build machine); slower CPUs still meet the deadline, which allows four times the expected
/// time plus the network allowance.
const CLASSES: &[(&str, u64, u64)] = &[
    ("b200", 2_000_000_000_000_000, 180 * GIB),
    ("h200", 1_000_000_000_000_000, 141 * GIB),
    ("h100", 1_000_000_000_000_000, 80 * GIB),
    ("a100", 300_000_000_000_000, 80 * GIB),
    ("l40s", 350_000_000_000_000, 48 * GIB),
    ("4090", 300_000_000_000_000, 24 * GIB),
    ("3090", 140_000_000_000_000, 24 * GIB),
    ("4080", 200_000_000_000_000, 16 * GIB),
];

/// The CPU class: every CPU device, and every simulated GPU (which never passes as the GPU it
/// simulates).
pub fn cpu_class() -> DeviceClass {
    DeviceClass {
        name: "cpu".to_owned(),
        int8_ops_per_s: 4_000_000_000,
        memory_bytes: GIB,
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
        .find(|(fragment, _, _)| key.contains(fragment))
        .map(|(fragment, ops, memory)| DeviceClass {
            name: (*fragment).to_owned(),
            int8_ops_per_s: *ops,
            memory_bytes: *memory,
        })
        .unwrap_or_else(cpu_class)
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
        .find(|(fragment, _, _)| *fragment == name)
        .map(|(fragment, ops, memory)| DeviceClass {
            name: (*fragment).to_owned(),
            int8_ops_per_s: *ops,
            memory_bytes: *memory,
        })
}

/// A fresh challenge for a device of `class`, with `seed` from the caller's random source.
pub fn challenge_for(class: &DeviceClass, seed: [u8; 32]) -> Challenge {
    challenge_with_target(class, seed, CHALLENGE_TARGET_MS)
}

/// A fresh challenge sized so the class needs about `target_ms` (clamped to the bounds).
pub fn challenge_with_target(class: &DeviceClass, seed: [u8; 32], target_ms: u64) -> Challenge {
    let target_ms = target_ms.clamp(CHALLENGE_TARGET_MS_MIN, CHALLENGE_TARGET_MS_MAX);
    Challenge {
        version: PROOF_VERSION,
        seed: hex::encode(seed),
        class: class.name.clone(),
        target_ms,
        compute: ComputeParams::for_class(class, target_ms),
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

/// What the coordinator sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub version: u32,
    /// Hex of 32 fresh random bytes.
    pub seed: String,
    /// The class the device claimed.
    pub class: String,
    /// The time the class should need; the parameters follow from class and target.
    pub target_ms: u64,
    pub compute: ComputeParams,
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

/// Everything needed to re-check a proof: challenge, commitment, openings, timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    pub challenge: Challenge,
    /// Hex Merkle root over every row of every matrix in the chain.
    pub compute_root: String,
    pub openings: Vec<RowOpening>,
    /// Measured by the coordinator: challenge sent to transcript received.
    pub elapsed_ms: u64,
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
    #[error("answered after {elapsed_ms} ms; the deadline was {deadline_ms} ms")]
    Late { elapsed_ms: u64, deadline_ms: u64 },
}

/// Bounds a verifier accepts, so a hostile transcript cannot make it allocate or loop without
/// limit.
const MATRIX_N_MAX: u32 = 8192;
const STEPS_MAX: u32 = 1 << 16;
const CHECKS_MAX: u32 = 4096;

fn parse_seed(text: &str) -> Result<[u8; 32], Failure> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text, &mut seed).map_err(|_| Failure::Malformed("seed"))?;
    Ok(seed)
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
    verify_content(transcript)
}

/// Everything [`verify_transcript`] checks except the class sizing; for challenges sized by
/// hand (tests, benchmarks).
pub fn verify_content(transcript: &Transcript) -> Result<(), Failure> {
    let challenge = &transcript.challenge;
    if challenge.version != PROOF_VERSION {
        return Err(Failure::Version(challenge.version));
    }
    check_params(&challenge.compute)?;
    let seed = parse_seed(&challenge.seed)?;
    let mut root = [0u8; 32];
    hex::decode_to_slice(&transcript.compute_root, &mut root)
        .map_err(|_| Failure::Malformed("compute root"))?;
    compute::verify(&seed, &challenge.compute, &root, &transcript.openings)?;
    if transcript.elapsed_ms > challenge.compute.deadline_ms {
        return Err(Failure::Late {
            elapsed_ms: transcript.elapsed_ms,
            deadline_ms: challenge.compute.deadline_ms,
        });
    }
    Ok(())
}

/// The CPU prover: does the work and returns the transcript, with `elapsed_ms` left for the
/// caller (who owns the clock) to fill in.
pub fn prove_on_cpu(challenge: &Challenge) -> Result<Transcript, Failure> {
    check_params(&challenge.compute)?;
    let seed = parse_seed(&challenge.seed)?;
    let proof = compute::ComputeProof::prove(&seed, &challenge.compute);
    Ok(Transcript {
        challenge: challenge.clone(),
        compute_root: hex::encode(proof.root()),
        openings: proof.open(&seed, &challenge.compute),
        elapsed_ms: 0,
    })
}

#[cfg(test)]
mod tests;
