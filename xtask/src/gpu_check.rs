//! `cargo xtask gpu-check`: builds here what the GPU check runs on a machine with an NVIDIA GPU
//! and no Rust toolchain: the CUDA prover's tests and the proof bench, as stripped release
//! builds, with a script that runs both, in `target/gpu-check/`. Carry that folder to the GPU
//! machine and run `target/gpu-check/run`; its last line is the bench's JSON, with the GPU's
//! figures under `gpu`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

const SCRIPT: &str = r#"#!/bin/sh
# The GPU check: the CUDA prover's tests (which must find a GPU), then the proof bench, which
# runs even when a test failed; the exit status is the tests'.
cd "$(dirname "$0")" || exit
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
FLOTILLA_REQUIRE_GPU=1 ./proof-cuda-tests --test-threads 1 --nocapture
tests=$?
./xtask bench proof --here
exit $tests
"#;

pub fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/gpu-check");
    std::fs::create_dir_all(&out)?;
    let tests = test_binary()?;
    crate::run(crate::cargo().args(["build", "--quiet", "--release", "-p", "xtask"]))?;
    let copies = [
        (tests.as_path(), "proof-cuda-tests"),
        (&root.join("target/release/xtask"), "xtask"),
    ];
    for (from, name) in copies {
        let to = out.join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        crate::run(Command::new("strip").arg(&to))?;
    }
    let script = out.join("run");
    std::fs::write(&script, SCRIPT)?;
    crate::run(Command::new("chmod").arg("+x").arg(&script))?;
    println!("carry target/gpu-check and run target/gpu-check/run on the GPU machine");
    Ok(())
}

/// Builds the CUDA prover's unit tests in release and returns the test binary's path.
fn test_binary() -> Result<std::path::PathBuf> {
    let output = crate::cargo()
        .args([
            "test",
            "--release",
            "--no-run",
            "--message-format=json",
            "-p",
            "flotilla-proof-cuda",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("building the CUDA prover's tests failed");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "flotilla_proof_cuda")
        .find_map(|message| message["executable"].as_str().map(Into::into))
        .context("no test binary in cargo's messages")
}
