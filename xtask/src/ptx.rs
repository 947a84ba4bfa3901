//! `cargo xtask ptx`: compiles the CUDA prover's kernels with NVRTC and writes the PTX that
//! `flotilla-proof-cuda` ships (`crates/proof-cuda/kernels/prover.ptx`).
//!
//! NVRTC comes from PyPI (NVIDIA's wheel), unpacked once under `target/test-tools/nvrtc`; one
//! pinned version, so the PTX is the same on every machine. Its PTX needs a driver of CUDA 12.2
//! or later (R535) on the supplier's machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// The NVRTC the PTX is made with.
const NVRTC_WHEEL: &str = "nvidia-cuda-nvrtc-cu12==12.2.140";

/// The folder holding `libnvrtc.so.12`, installed on first use; `None` (with a line saying
/// why) where it cannot be, and then the PTX check says it did not run.
pub fn ensure_nvrtc() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/nvrtc");
    let lib = root.join("nvidia/cuda_nvrtc/lib");
    if lib.join("libnvrtc.so.12").exists() {
        return Some(lib);
    }
    eprintln!("xtask: installing {NVRTC_WHEEL} under {}", root.display());
    let installed = crate::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&root)
            .arg(NVRTC_WHEEL),
    );
    match installed {
        Ok(()) if lib.join("libnvrtc.so.12").exists() => Some(lib),
        Ok(()) => {
            eprintln!("xtask: {NVRTC_WHEEL} has no libnvrtc.so.12; the PTX check will not run");
            None
        }
        Err(error) => {
            eprintln!("xtask: no NVRTC ({error}); the PTX check will not run");
            None
        }
    }
}

/// The library path for a process that loads NVRTC from `lib`.
pub fn library_path_with(lib: &Path) -> std::ffi::OsString {
    let mut paths = vec![lib.to_path_buf()];
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).expect("library paths join")
}

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("--here") {
        return write_ptx();
    }
    let lib = ensure_nvrtc().context("NVRTC could not be installed")?;
    // The dynamic loader reads LD_LIBRARY_PATH when a process starts: run again with it.
    crate::run(
        Command::new(std::env::current_exe()?)
            .args(["ptx", "--here"])
            .env("LD_LIBRARY_PATH", library_path_with(&lib)),
    )
}

fn write_ptx() -> Result<()> {
    let ptx = flotilla_proof_cuda::compile_kernels()?;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/proof-cuda/kernels/prover.ptx");
    std::fs::write(&path, ptx).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
