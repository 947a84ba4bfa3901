//! Proof of compute on NVIDIA GPUs: the prover of `flotilla-proof`, bit for bit, as CUDA
//! kernels.
//!
//! The kernels (`kernels/prover.cu`) are compiled to PTX by NVRTC and the PTX is checked in
//! (`cargo xtask ptx` writes it; a test fails when it is stale), so neither the build machine
//! nor a supplier's needs the CUDA toolkit: the driver, loaded at run time, compiles the PTX
//! for its GPU. On a machine without the driver, [`gpus`] says so and nothing else runs.
//!
//! The prover keeps what it committed to on the GPU: every matrix of the compute chain until
//! its rows are opened, and the memory fill with its Merkle tree until the coordinator's nonce
//! picks the blocks to open ([`GpuProof::open_memory`]). Its transcript is the CPU prover's,
//! and any verifier checks it the same way.
//!
//! The prover's steps (`prover.rs`) run over a `Device` (`device.rs`): the GPU (`cuda.rs`), or
//! in the tests the same kernels compiled as C++ on the host (`host.rs`), so every kernel and
//! the whole prover are checked against the CPU prover on machines without a GPU.
//!
//! Invariant: every kernel launch is given pointers into live allocations sized for the items
//! it covers; the kernels bound-check their item index against the counts they are passed.

// Launching a CUDA kernel is unsafe in cudarc: the driver cannot check the arguments against
// the kernel's signature. Each kernel call in `prover.rs` says why its addresses are right,
// and `cuda.rs` passes the parameters in the kernels' order and types.
#![allow(unsafe_code)]

mod cuda;
mod device;
#[cfg(test)]
mod host;
mod prover;
mod tree;

use cudarc::driver::{CudaSlice, DriverError};
use flotilla_proof::{BlockOpening, Challenge, Failure, Transcript};

use crate::cuda::Cuda;
use crate::prover::DeviceFill;

/// The kernels' CUDA source.
pub const KERNELS_SOURCE: &str = include_str!("../kernels/prover.cu");
/// The kernels, compiled by NVRTC from [`KERNELS_SOURCE`] for [`PTX_ARCH`].
pub const KERNELS_PTX: &str = include_str!("../kernels/prover.ptx");
/// The virtual architecture of the PTX: Volta and every later GPU (the product's `dp4a` needs
/// compute capability 6.1).
pub const PTX_ARCH: &str = "compute_70";
/// The NVRTC release (major, minor) that made [`KERNELS_PTX`], as `cargo xtask ptx` pins it:
/// other releases write other PTX for the same source, and CUDA 13's has dropped
/// [`PTX_ARCH`].
pub const PTX_NVRTC_VERSION: (i32, i32) = (12, 2);
/// The matrix product's tile edge: the GPU prover takes matrices of a multiple of it.
pub const MATRIX_TILE: u64 = 64;

/// Why the GPU prover cannot run or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no NVIDIA driver on this machine (libcuda was not found)")]
    NoDriver,
    #[error("no GPU with UUID {0} on this machine")]
    NoSuchGpu(String),
    #[error("no NVRTC on this machine (libnvrtc was not found)")]
    NoNvrtc,
    #[error("NVRTC: {0}")]
    Compile(String),
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("challenge: {0}")]
    Challenge(#[from] Failure),
    #[error("the GPU prover needs a matrix size that is a multiple of {MATRIX_TILE}, not {0}")]
    MatrixSize(u32),
    #[error("{what} needs {needed_bytes} bytes of GPU memory; {free_bytes} are free")]
    Memory {
        what: &'static str,
        needed_bytes: u64,
        free_bytes: u64,
    },
}

/// Whether the NVIDIA driver's library can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by name; calls nothing in it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A GPU the driver sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The driver's ordinal for it.
    pub ordinal: usize,
    /// As NVML and `nvidia-smi` write it: `GPU-` and the UUID's 16 bytes in hex, dashed.
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
    pub multiprocessors: u32,
    /// The multiprocessors' peak clock.
    pub clock_khz: u32,
}

impl GpuInfo {
    /// The GPU's peak of int8 multiply-adds on its CUDA cores with `dp4a` (what this prover
    /// uses): four per lane, 64 lanes per multiprocessor per clock on Volta and later.
    pub fn dp4a_peak_macs_per_s(&self) -> u64 {
        u64::from(self.multiprocessors) * u64::from(self.clock_khz) * 1000 * 64 * 4
    }
}

/// Every GPU the driver sees; [`Error::NoDriver`] where there is no driver.
pub fn gpus() -> Result<Vec<GpuInfo>, Error> {
    cuda::gpus()
}

/// A GPU UUID as NVML writes it.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex = hex::encode(bytes);
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Whether this process finds an NVRTC library to load.
fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by name; calls nothing in it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The release (major, minor) of the NVRTC this process loads, or `None` where there is none.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present, and nvrtcVersion writes two ints we own.
    let result = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (result == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compiles [`KERNELS_SOURCE`] with NVRTC, as `cargo xtask ptx` does for [`KERNELS_PTX`].
pub fn compile_kernels() -> Result<String, Error> {
    use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
    if !nvrtc_present() {
        return Err(Error::NoNvrtc);
    }
    let options = CompileOptions {
        arch: Some(PTX_ARCH),
        name: Some("prover.cu".to_owned()),
        ..Default::default()
    };
    compile_ptx_with_opts(KERNELS_SOURCE, options)
        .map(|ptx| ptx.to_src())
        .map_err(|error| Error::Compile(error.to_string()))
}

/// The prover on one GPU. Cheap to clone: clones share the GPU's context.
#[derive(Debug, Clone)]
pub struct CudaProver {
    pub gpu: GpuInfo,
    cuda: Cuda,
}

/// The GPU prover's state between its commitments and the memory openings: the fill stays on
/// the GPU until it is dropped.
#[derive(Debug)]
pub struct GpuProof {
    /// The commitments and compute openings; timings and memory fields are the caller's.
    pub transcript: Transcript,
    cuda: Cuda,
    fill: DeviceFill<CudaSlice<u64>>,
}

impl GpuProof {
    /// Opens the memory blocks that `nonce` (hex of 32 bytes) picks.
    pub fn open_memory(&self, nonce: &str) -> Result<Vec<BlockOpening>, Error> {
        prover::open_memory(&self.cuda, &self.fill, &self.transcript, nonce)
    }

    /// The whole transcript for `nonce`, for tests and benchmarks that play both sides.
    pub fn finish(mut self, nonce: &str) -> Result<Transcript, Error> {
        self.transcript.memory_openings = self.open_memory(nonce)?;
        self.transcript.memory_nonce = nonce.to_owned();
        Ok(self.transcript)
    }
}

impl CudaProver {
    /// The prover on the GPU with this UUID (as NVML writes it).
    pub fn on_gpu(uuid: &str) -> Result<CudaProver, Error> {
        let gpu = gpus()?
            .into_iter()
            .find(|gpu| gpu.uuid.eq_ignore_ascii_case(uuid))
            .ok_or_else(|| Error::NoSuchGpu(uuid.to_owned()))?;
        CudaProver::on(gpu)
    }

    /// The prover on `gpu`: opens a context and loads the kernels.
    pub fn on(gpu: GpuInfo) -> Result<CudaProver, Error> {
        let cuda = Cuda::open(gpu.ordinal)?;
        Ok(CudaProver { gpu, cuda })
    }

    /// Does the compute work and the memory fill, and returns both commitments with the
    /// compute openings.
    pub fn prove(&self, challenge: &Challenge) -> Result<GpuProof, Error> {
        let (transcript, fill) = prover::prove(&self.cuda, challenge)?;
        Ok(GpuProof {
            transcript,
            cuda: self.cuda.clone(),
            fill,
        })
    }
}

/// A length or index on the device as a host `usize` (the prover runs on 64-bit hosts).
fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("a 64-bit host")
}

#[cfg(test)]
mod tests;
