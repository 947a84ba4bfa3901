//! `cargo xtask bench proof`: proves and verifies CPU-class challenges and reports the
//! verifier's cost as a fraction of the prover's, both measured in the same run. Re-runs itself
//! as a release build so the figures are the shipped code's.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::{cargo, run as run_command};

/// Challenges proved; the figures are medians.
const ROUNDS: usize = 5;

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("--here") {
        return run_command(cargo().args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "xtask",
            "--",
            "bench",
            "proof",
            "--here",
        ]));
    }
    let class = flotilla_proof::cpu_class();
    let mut prover_ms = Vec::with_capacity(ROUNDS);
    let mut verifier_ms = Vec::with_capacity(ROUNDS);
    let mut work_ops = 0;
    for round in 0..ROUNDS {
        let mut seed = [0u8; 32];
        seed[0] = round as u8;
        seed[1] = 0xb5;
        let challenge = flotilla_proof::challenge_for(&class, seed);
        work_ops = challenge.compute.work_ops();
        let started = Instant::now();
        let mut transcript = flotilla_proof::prove_on_cpu(&challenge)?;
        prover_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        transcript.elapsed_ms = 0;
        let started = Instant::now();
        let verdict = flotilla_proof::verify_transcript(&transcript);
        verifier_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Err(failure) = verdict {
            bail!("an honest proof failed: {failure}");
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (prover, verifier) = (median(&mut prover_ms), median(&mut verifier_ms));
    let ops_per_s = work_ops as f64 / (prover / 1000.0);
    eprintln!(
        "bench: cpu class, {work_ops} int8 multiply-adds per proof: prover {prover:.1} ms ({:.2} G ops/s), verifier {verifier:.2} ms, \
         ratio {:.4} (target <= 0.01)",
        ops_per_s / 1e9,
        verifier / prover
    );
    let figures = serde_json::json!({
        "class": class.name,
        "work_ops": work_ops,
        "prover_ms": (prover * 10.0).round() / 10.0,
        "verifier_ms": (verifier * 100.0).round() / 100.0,
        "verifier_over_prover": ((verifier / prover) * 10000.0).round() / 10000.0,
        "prover_int8_ops_per_s": ops_per_s.round(),
    });
    println!("{figures}");
    Ok(())
}
