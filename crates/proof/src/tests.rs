use super::*;
use crate::compute::{ComputeProof, check_positions};

fn small_challenge(seed_byte: u8) -> Challenge {
    Challenge {
        version: PROOF_VERSION,
        seed: hex::encode([seed_byte; 32]),
        class: "cpu".to_owned(),
        target_ms: CHALLENGE_TARGET_MS,
        compute: ComputeParams {
            matrix_n: 24,
            steps: 8,
            checks: checks_for(40, 25),
            deadline_ms: 5_000,
        },
    }
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
    let transcript = prove_on_cpu(&challenge).unwrap();
    assert_eq!(transcript.openings.len(), 97);
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
        challenge: challenge.clone(),
        compute_root: hex::encode(cheat.root()),
        openings: cheat.open(&seed, &challenge.compute),
        elapsed_ms: 10,
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
    let old = prove_on_cpu(&small_challenge(3)).unwrap();
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
fn a_late_answer_fails() {
    let mut transcript = prove_on_cpu(&small_challenge(5)).unwrap();
    transcript.elapsed_ms = 5_001;
    assert_eq!(
        verify_content(&transcript),
        Err(Failure::Late {
            elapsed_ms: 5_001,
            deadline_ms: 5_000
        })
    );
}

#[test]
fn any_changed_hex_digit_in_the_proof_fails() {
    let transcript = prove_on_cpu(&small_challenge(6)).unwrap();
    let json = serde_json::to_string(&transcript).unwrap();
    let hex_positions: Vec<usize> = json
        .char_indices()
        .filter(|(_, c)| c.is_ascii_hexdigit())
        .map(|(i, _)| i)
        .collect();
    // Every 23rd hex digit across the seed, root, rows and paths (numbers included).
    let mut changed = 0;
    for &position in hex_positions.iter().step_by(23) {
        let mut bytes = json.clone().into_bytes();
        bytes[position] = if bytes[position] == b'0' { b'1' } else { b'0' };
        let Ok(tampered) = serde_json::from_slice::<Transcript>(&bytes) else {
            continue;
        };
        if tampered == transcript {
            continue;
        }
        // elapsed_ms below the deadline is a measurement, not part of the proof.
        if tampered.elapsed_ms != transcript.elapsed_ms {
            continue;
        }
        assert!(
            verify_content(&tampered).is_err(),
            "byte {position} changed and the proof still passed"
        );
        changed += 1;
    }
    assert!(changed > 50, "only {changed} mutations tried");
}

#[test]
fn real_cpu_class_challenges_verify_end_to_end() {
    let challenge = challenge_for(&cpu_class(), [9u8; 32]);
    assert_eq!(challenge.compute.checks, 97);
    let mut transcript = prove_on_cpu(&challenge).unwrap();
    transcript.elapsed_ms = 1_000;
    assert_eq!(verify_transcript(&transcript), Ok(()));
    let mut resized = transcript.clone();
    resized.challenge.compute.steps -= 1;
    assert!(
        verify_transcript(&resized).is_err(),
        "parameters must match the claimed class"
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
