//! `cargo xtask bench proof`: proves and verifies CPU-class challenges (compute and a fill of
//! the class's default memory share) and reports the verifier's cost as a fraction of the
//! prover's, both measured in the same run, and the fill's speed on its own. Re-runs itself
//! as a release build so the figures are the shipped code's.

use std::time::Instant;

use anyhow::{Result, bail};

/// Challenges proved; the figures are medians.
const ROUNDS: usize = 5;

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("--here") {
        return crate::rerun_release_bench("proof");
    }
    let class = flotilla_proof::cpu_class();
    let mut prover_ms = Vec::with_capacity(ROUNDS);
    let mut verifier_ms = Vec::with_capacity(ROUNDS);
    let mut work_ops = 0;
    let mut fill_bytes = 0;
    for round in 0..ROUNDS {
        let mut seed = [0u8; 32];
        seed[0] = round as u8;
        seed[1] = 0xb5;
        let challenge = flotilla_proof::challenge_for(&class, seed);
        work_ops = challenge.compute.work_ops();
        fill_bytes = challenge.memory.fill_bytes();
        let started = Instant::now();
        let proof = flotilla_proof::prove_on_cpu(&challenge)?;
        let transcript = proof.finish(&"5a".repeat(32))?;
        prover_ms.push(started.elapsed().as_secs_f64() * 1000.0);
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
    let fill_ms = fill_ms(&class)?;
    let compute_ms = prover - fill_ms;
    let ops_per_s = work_ops as f64 / (compute_ms / 1000.0);
    let fill_bytes_per_s = fill_bytes as f64 / (fill_ms / 1000.0);
    eprintln!(
        "bench: cpu class, {work_ops} int8 multiply-adds and {} MiB of fill per proof: prover {prover:.1} ms \
         ({:.2} G ops/s, fill {fill_ms:.1} ms at {:.0} MiB/s), verifier {verifier:.2} ms, ratio {:.4} (target <= 0.01)",
        fill_bytes >> 20,
        ops_per_s / 1e9,
        fill_bytes_per_s / f64::from(1 << 20),
        verifier / prover
    );
    let figures = serde_json::json!({
        "class": class.name,
        "work_ops": work_ops,
        "fill_bytes": fill_bytes,
        "fill_ms": (fill_ms * 10.0).round() / 10.0,
        "fill_bytes_per_s": fill_bytes_per_s.round(),
        "prover_ms": (prover * 10.0).round() / 10.0,
        "verifier_ms": (verifier * 100.0).round() / 100.0,
        "verifier_over_prover": ((verifier / prover) * 10000.0).round() / 10000.0,
        "prover_int8_ops_per_s": ops_per_s.round(),
    });
    println!("{figures}");
    Ok(())
}

/// The median time of the memory fill alone (fill and commitment), for a class's default share.
fn fill_ms(class: &flotilla_proof::DeviceClass) -> Result<f64> {
    let mut times: Vec<f64> = (0..3u8)
        .map(|round| {
            let challenge = flotilla_proof::challenge_for(class, [round; 32]);
            let started = Instant::now();
            let fill = flotilla_proof::memory::MemoryFill::fill(&[round; 32], &challenge.memory);
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            drop(fill);
            elapsed
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}
