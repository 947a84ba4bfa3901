//! `cargo xtask bench proof`: proves and verifies CPU-class challenges (compute and a fill of
//! the class's default memory share) and reports the verifier's cost as a fraction of the
//! prover's, both measured in the same run, and the fill's speed on its own. Re-runs itself
//! as a release build so the figures are the shipped code's.
//!
//! Where the NVIDIA driver sees a GPU, the CUDA prover is measured too, on the GPU's own class:
//! a whole proof (checked by the verifier, deadlines included), and the compute chain alone,
//! whose speed is given against the class's figure and the GPU's `dp4a` and int8 tensor peaks.
//! Elsewhere the JSON line says why the GPU part did not run.

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
        "gpu": gpu_figures(),
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

/// Dense int8 tensor-core peaks (multiply-adds per second, half the vendors' "TOPS"), for the
/// report only: the prover does not use the tensor cores.
const TENSOR_INT8_PEAK_MACS_PER_S: &[(&str, f64)] = &[
    ("b200", 2.25e15),
    ("h200", 0.99e15),
    ("h100", 0.99e15),
    ("a100", 0.312e15),
    ("l40s", 0.362e15),
    ("4090", 0.33e15),
];

/// The CUDA prover's figures on the first GPU, or why there are none.
fn gpu_figures() -> serde_json::Value {
    match gpu_bench() {
        Ok(figures) => figures,
        Err(error) => {
            eprintln!("bench: no GPU part: {error}");
            serde_json::json!({ "not_run": error.to_string() })
        }
    }
}

fn gpu_bench() -> Result<serde_json::Value> {
    use flotilla_proof_cuda::{CudaProver, gpus};
    let gpu = gpus()?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the driver sees no GPU"))?;
    let prover = CudaProver::on(gpu.clone())?;
    let class = flotilla_proof::class_for(&gpu.name, true, false);
    // Warm: the driver compiles the PTX on first load, and the first launches set up the GPU.
    let warm = flotilla_proof::challenge_with_target(&class, [1; 32], 50, 1);
    prover.prove(&warm)?;
    // The compute chain alone: 1% of the memory, so the fill is noise.
    let compute = flotilla_proof::challenge_with_target(
        &class,
        [2; 32],
        flotilla_proof::CHALLENGE_TARGET_MS,
        1,
    );
    let started = Instant::now();
    prover.prove(&compute)?;
    let compute_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ops_per_s = compute.compute.work_ops() as f64 / (compute_ms / 1000.0);
    // A whole proof of the class, as the coordinator would ask for it.
    let challenge = flotilla_proof::challenge_for(&class, [3; 32]);
    let started = Instant::now();
    let proof = prover.prove(&challenge)?;
    let commit_ms = started.elapsed().as_secs_f64() * 1000.0;
    let opened = Instant::now();
    let mut transcript = proof.finish(&"5a".repeat(32))?;
    let answer_ms = opened.elapsed().as_secs_f64() * 1000.0;
    transcript.elapsed_ms = commit_ms as u64;
    transcript.answer_elapsed_ms = answer_ms as u64;
    let started = Instant::now();
    let verdict = flotilla_proof::verify_transcript(&transcript);
    let verifier_ms = started.elapsed().as_secs_f64() * 1000.0;
    let tensor_peak = TENSOR_INT8_PEAK_MACS_PER_S
        .iter()
        .find(|(name, _)| *name == class.name)
        .map(|(_, peak)| *peak);
    eprintln!(
        "bench: {} (class {}): compute {:.2} T ops/s ({:.2} of the class figure, {:.3} of the dp4a peak), \
         whole proof {commit_ms:.0} ms to commit (deadline {} ms) and {answer_ms:.0} ms to open, verdict {verdict:?}",
        gpu.name,
        class.name,
        ops_per_s / 1e12,
        ops_per_s / class.int8_ops_per_s as f64,
        ops_per_s / gpu.dp4a_peak_macs_per_s() as f64,
        challenge.commit_deadline_ms(),
    );
    Ok(serde_json::json!({
        "name": gpu.name,
        "class": class.name,
        "compute_ms": (compute_ms * 10.0).round() / 10.0,
        "int8_ops_per_s": ops_per_s.round(),
        "over_class_figure": ops_per_s / class.int8_ops_per_s as f64,
        "over_dp4a_peak": ops_per_s / gpu.dp4a_peak_macs_per_s() as f64,
        "over_tensor_int8_peak": tensor_peak.map(|peak| ops_per_s / peak),
        "fill_bytes": challenge.memory.fill_bytes(),
        "prover_ms": (commit_ms * 10.0).round() / 10.0,
        "commit_deadline_ms": challenge.commit_deadline_ms(),
        "answer_ms": (answer_ms * 10.0).round() / 10.0,
        "verifier_ms": (verifier_ms * 100.0).round() / 100.0,
        "verifier_over_prover": verifier_ms / commit_ms,
        "verdict": verdict.map_or_else(|failure| failure.to_string(), |()| "passed".to_owned()),
    }))
}
