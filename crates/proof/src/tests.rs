use super::*;
use crate::compute::{ComputeProof, check_positions};
use crate::memory::{MemoryFill, query_positions};

fn small_challenge(seed_byte: u8) -> Challenge {
    Challenge {
        version: PROOF_VERSION,
        seed: hex::encode([seed_byte; 32]),
        class: "cpu".to_owned(),
        target_ms: CHALLENGE_TARGET_MS,
        memory_pct: 1,
        compute: ComputeParams {
            matrix_n: 24,
            steps: 8,
            checks: checks_for(40, 25),
            deadline_ms: 5_000,
        },
        memory: MemoryParams {
            block_bytes: memory::BLOCK_BYTES,
            lanes: 4,
            blocks_per_lane: 64,
            checks: checks_for(40, 50),
            fill_deadline_ms: 1_000,
            answer_deadline_ms: 3_000,
        },
    }
}

const NONCE: &str = "6e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f";

/// An honest prover's whole transcript for the test nonce.
fn honest_transcript(challenge: &Challenge) -> Transcript {
    prove_on_cpu(challenge).unwrap().finish(NONCE).unwrap()
}

#[test]
fn soundness_sets_the_number_of_checks() {
    assert_eq!(checks_for(40, 50), 40);
    // (3/4)^97 = 2^-40.26 and (3/4)^96 = 2^-39.84: 97 is the least k reaching 2^-40.
    assert_eq!(checks_for(40, 25), 97);
    assert_eq!(checks_for(1, 50), 1);
}

#[test]
fn an_honest_prover_passes() {
    let challenge = small_challenge(1);
    let transcript = honest_transcript(&challenge);
    assert_eq!(transcript.openings.len(), 97);
    assert_eq!(transcript.memory_openings.len(), 40);
    assert_eq!(verify_content(&transcript), Ok(()));
    let json = serde_json::to_string(&transcript).unwrap();
    let reread: Transcript = serde_json::from_str(&json).unwrap();
    assert_eq!(
        verify_content(&reread),
        Ok(()),
        "transcripts re-check after a round trip"
    );
}

#[test]
fn a_prover_that_skips_a_quarter_of_the_rows_fails() {
    let challenge = small_challenge(2);
    let seed = [2u8; 32];
    let honest = ComputeProof::prove(&seed, &challenge.compute);
    let n = challenge.compute.matrix_n as usize;
    let mut matrices = honest_matrices(&honest, &challenge);
    // Skip the last quarter of the rows of every product: write zeros instead of computing.
    for matrix in matrices.iter_mut().skip(1) {
        for row in (n - n / 4)..n {
            matrix[row * n..(row + 1) * n].fill(0);
        }
    }
    let cheat = ComputeProof::commit(n, matrices);
    let transcript = Transcript {
        compute_root: hex::encode(cheat.root()),
        openings: cheat.open(&seed, &challenge.compute),
        elapsed_ms: 10,
        ..honest_transcript(&challenge)
    };
    assert!(matches!(
        verify_content(&transcript),
        Err(Failure::WrongRow { .. })
    ));
}

fn honest_matrices(proof: &ComputeProof, challenge: &Challenge) -> Vec<Vec<u8>> {
    let seed_bytes: [u8; 32] = hex::decode(&challenge.seed).unwrap().try_into().unwrap();
    let mut again = ComputeProof::prove(&seed_bytes, &challenge.compute);
    assert_eq!(again.root(), proof.root(), "the prover is deterministic");
    std::mem::take(again.matrices_mut())
}

#[test]
fn a_stale_commitment_fails() {
    let old = honest_transcript(&small_challenge(3));
    let fresh = small_challenge(4);
    let replayed = Transcript {
        challenge: fresh,
        ..old
    };
    assert!(
        verify_content(&replayed).is_err(),
        "work done for another seed does not count"
    );
}

#[test]
fn late_commitments_and_late_openings_fail() {
    let transcript = honest_transcript(&small_challenge(5));
    let mut late = transcript.clone();
    late.elapsed_ms = 6_001;
    assert_eq!(
        verify_content(&late),
        Err(Failure::Late {
            elapsed_ms: 6_001,
            deadline_ms: 6_000
        }),
        "the compute and fill deadlines add up"
    );
    // A prover that dropped its fill after committing must refill to answer: too slow.
    let mut refilled = transcript;
    refilled.answer_elapsed_ms = 3_001;
    assert_eq!(
        verify_content(&refilled),
        Err(Failure::LateAnswer {
            elapsed_ms: 3_001,
            deadline_ms: 3_000
        })
    );
}

/// A transcript whose memory part comes from `blocks` instead of the honest fill.
fn memory_cheat(challenge: &Challenge, blocks: Vec<memory::Block>) -> Transcript {
    let seed: [u8; 32] = hex::decode(&challenge.seed).unwrap().try_into().unwrap();
    let nonce: [u8; 32] = hex::decode(NONCE).unwrap().try_into().unwrap();
    let cheat = MemoryFill::commit(&challenge.memory, blocks);
    Transcript {
        memory_root: hex::encode(cheat.root()),
        memory_openings: cheat.open(&seed, &challenge.memory, &nonce),
        ..honest_transcript(challenge)
    }
}

fn honest_blocks(challenge: &Challenge) -> Vec<memory::Block> {
    let seed: [u8; 32] = hex::decode(&challenge.seed).unwrap().try_into().unwrap();
    std::mem::take(MemoryFill::fill(&seed, &challenge.memory).blocks_mut())
}

#[test]
fn a_prover_that_fills_half_the_claimed_memory_fails() {
    let challenge = small_challenge(7);
    let mut blocks = honest_blocks(&challenge);
    // Half the lanes are real; the other half claim memory that holds nothing.
    let half = blocks.len() / 2;
    blocks[half..].iter_mut().for_each(|b| *b = [0; 128]);
    assert!(matches!(
        verify_content(&memory_cheat(&challenge, blocks)),
        Err(Failure::WrongBlock { .. })
    ));
}

#[test]
fn a_prover_that_keeps_a_window_instead_of_the_lane_fails() {
    // Keeps only the last 8 blocks of each lane and, when the reference falls outside the
    // window, mixes in the predecessor instead: a chain that looks filled but is not the fill.
    let challenge = small_challenge(8);
    let per_lane = challenge.memory.blocks_per_lane as usize;
    let mut blocks = honest_blocks(&challenge);
    for lane in blocks.chunks_mut(per_lane) {
        for position in 2..per_lane {
            let previous = lane[position - 1];
            let reference = memory::reference_of(&previous, position as u64) as usize;
            let source = if position - reference <= 8 {
                lane[reference]
            } else {
                previous
            };
            memory::compress(&previous, &source, &mut lane[position]);
        }
    }
    let transcript = memory_cheat(&challenge, blocks);
    assert!(matches!(
        verify_content(&transcript),
        Err(Failure::WrongBlock { .. })
    ));
}

#[test]
fn memory_openings_hold_only_for_the_nonce_they_answer() {
    let challenge = small_challenge(10);
    let transcript = honest_transcript(&challenge);
    let mut other = transcript.clone();
    other.memory_nonce = "00".repeat(32);
    assert_eq!(verify_content(&other), Err(Failure::WrongOpenings));
    let seed = [10u8; 32];
    let root = [3u8; 32];
    let a = query_positions(&seed, &root, &[1; 32], &challenge.memory);
    let b = query_positions(&seed, &root, &[2; 32], &challenge.memory);
    assert_ne!(a, b);
    let per_lane = challenge.memory.blocks_per_lane;
    assert!(
        a.iter()
            .all(|&i| i < challenge.memory.block_count() && i % per_lane >= 2),
        "never a seed block"
    );
}

#[test]
fn the_compression_mixes_every_word() {
    let x: memory::Block = std::array::from_fn(|i| i as u64 * 0x9e37_79b9);
    let y: memory::Block = std::array::from_fn(|i| (i as u64) << 7);
    let mut out = [0u64; 128];
    memory::compress(&x, &y, &mut out);
    let mut flipped = y;
    flipped[77] ^= 1;
    let mut out_flipped = [0u64; 128];
    memory::compress(&x, &flipped, &mut out_flipped);
    let changed = out.iter().zip(&out_flipped).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 128, "one flipped bit reaches every output word");
}

#[test]
fn any_changed_hex_digit_in_the_proof_fails() {
    let transcript = honest_transcript(&small_challenge(6));
    let json = serde_json::to_string(&transcript).unwrap();
    let hex_positions: Vec<usize> = json
        .char_indices()
        .filter(|(_, c)| c.is_ascii_hexdigit())
        .map(|(i, _)| i)
        .collect();
    // About 400 hex digits spread across the seed, roots, rows, blocks and paths (numbers
    // included).
    let mut changed = 0;
    for &position in hex_positions.iter().step_by(hex_positions.len() / 400) {
        let mut bytes = json.clone().into_bytes();
        bytes[position] = if bytes[position] == b'0' { b'1' } else { b'0' };
        let Ok(tampered) = serde_json::from_slice::<Transcript>(&bytes) else {
            continue;
        };
        if tampered == transcript {
            continue;
        }
        // Times below the deadlines are measurements, not part of the proof, and deadlines are
        // sizing, which `verify_transcript` checks against the class.
        let deadlines = |t: &Transcript| {
            (
                t.challenge.commit_deadline_ms(),
                t.challenge.memory.answer_deadline_ms,
            )
        };
        if tampered.elapsed_ms != transcript.elapsed_ms
            || tampered.answer_elapsed_ms != transcript.answer_elapsed_ms
            || deadlines(&tampered) != deadlines(&transcript)
        {
            continue;
        }
        assert!(
            verify_content(&tampered).is_err(),
            "byte {position} changed and the proof still passed"
        );
        changed += 1;
    }
    assert!(changed > 300, "only {changed} mutations tried");
}

#[test]
fn real_cpu_class_challenges_verify_end_to_end() {
    let challenge = challenge_with_target(&cpu_class(), [9u8; 32], CHALLENGE_TARGET_MS, 2);
    assert_eq!(challenge.compute.checks, 97);
    assert_eq!(challenge.memory.fill_bytes(), GIB / 100 * 2 / 4096 * 4096);
    let mut transcript = honest_transcript(&challenge);
    transcript.elapsed_ms = 1_000;
    transcript.answer_elapsed_ms = 500;
    assert_eq!(verify_transcript(&transcript), Ok(()));
    let mut resized = transcript.clone();
    resized.challenge.compute.steps -= 1;
    assert!(
        verify_transcript(&resized).is_err(),
        "parameters must match the claimed class"
    );
    let mut shrunk = transcript.clone();
    shrunk.challenge.memory.blocks_per_lane /= 2;
    assert!(
        verify_transcript(&shrunk).is_err(),
        "memory must match the claimed class and share"
    );
    let mut upgraded = transcript;
    upgraded.challenge.class = "h100".to_owned();
    assert!(
        verify_transcript(&upgraded).is_err(),
        "cpu work does not pass as an h100"
    );
}

#[test]
fn simulated_and_unknown_gpus_are_sized_as_cpus() {
    assert_eq!(class_for("NVIDIA H100 80GB HBM3", true, true).name, "cpu");
    assert_eq!(class_for("NVIDIA H100 80GB HBM3", true, false).name, "h100");
    assert_eq!(class_for("Voodoo 2", true, false).name, "cpu");
    let h100 = ComputeParams::for_class(&class_for("H100", true, false), CHALLENGE_TARGET_MS);
    let cpu = ComputeParams::for_class(&cpu_class(), CHALLENGE_TARGET_MS);
    assert!(
        h100.work_ops() > 1000 * cpu.work_ops(),
        "a gpu challenge is far more work"
    );
}

#[test]
fn positions_depend_on_the_commitment() {
    let params = small_challenge(1).compute;
    let a = check_positions(&[1; 32], &[0; 32], &params);
    let b = check_positions(&[1; 32], &[1; 32], &params);
    assert_ne!(a, b);
    assert!(
        a.iter()
            .all(|&(step, row)| step < params.steps && row < params.matrix_n)
    );
}

proptest::proptest! {
    #[test]
    fn hostile_transcripts_never_panic(text in ".{0,400}") {
        if let Ok(transcript) = serde_json::from_str::<Transcript>(&text) {
            let _ = verify_transcript(&transcript);
        }
    }
}
