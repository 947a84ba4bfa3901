//! `cargo xtask gpu-check`: builds here what the GPU check runs on a machine with an NVIDIA GPU
//! and no Rust toolchain: the CUDA prover's tests, `flotilla` itself and xtask (the live check
//! and the proof bench), as stripped release builds, with this machine's `bwrap` (the worker's
//! sandbox, which a bare GPU machine may lack) and a script that runs them all, packed into
//! `target/gpu-check/bundle.tar.gz` (gzip, which every machine has: the binaries shrink to a
//! fraction, and the device machine takes a bounded working tree). Carry `target/gpu-check` to the GPU machine and run
//! `target/gpu-check/run`; its last lines are the live check's JSON, then the proof bench's,
//! with the GPU's figures under `gpu`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

const SCRIPT: &str = r#"#!/bin/sh
# The GPU check: the CUDA prover's tests (which must find a GPU), the whole network on this GPU
# through the real binary (`xtask gpu-live`), then the proof bench. Each runs even when an
# earlier one failed; the exit status is the first failure's.
bundle="$(cd "$(dirname "$0")" && pwd)/bundle.tar.gz"
mkdir -p /tmp/gpu-check && cd /tmp/gpu-check && tar -xzf "$bundle" || exit
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
FLOTILLA_REQUIRE_GPU=1 ./proof-cuda-tests --test-threads 1 --nocapture
status=$?
PATH="$PWD/bin:$PATH" ./xtask gpu-live --flotilla "$PWD/flotilla"
live=$?
[ $status -eq 0 ] && status=$live
./xtask bench proof --here
exit $status
"#;

pub fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/gpu-check");
    std::fs::create_dir_all(&out)?;
    let tests = test_binary()?;
    crate::run(crate::cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "xtask",
        "-p",
        "flotilla-cli",
    ]))?;
    let staged = out.join("staged");
    std::fs::create_dir_all(staged.join("bin"))?;
    let copies = [
        (tests.as_path(), "proof-cuda-tests"),
        (&root.join("target/release/xtask"), "xtask"),
        (&root.join("target/release/flotilla"), "flotilla"),
    ];
    for (from, name) in copies {
        let to = staged.join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        crate::run(Command::new("strip").arg(&to))?;
    }
    let bwrap = Path::new("/usr/bin/bwrap");
    std::fs::copy(bwrap, staged.join("bin/bwrap")).context("copying /usr/bin/bwrap")?;
    crate::run(
        Command::new("tar")
            .arg("-czf")
            .arg(out.join("bundle.tar.gz"))
            .arg("-C")
            .arg(&staged)
            .arg("."),
    )?;
    std::fs::remove_dir_all(&staged)?;
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
