//! The GPU as a [`Device`]: the NVIDIA driver, loaded at run time through cudarc, with the
//! checked-in PTX loaded into one context and every copy and launch on one stream.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use crate::device::Device;
use crate::{Error, GpuInfo, KERNELS_PTX, MATRIX_TILE, to_usize};

/// Threads per block for the one-thread-per-item kernels.
const THREADS_PER_BLOCK: u32 = 256;
/// Threads per block for the fill: one thread per lane, and few lanes (8,192 for GPU classes),
/// so small blocks spread them over every multiprocessor.
const FILL_THREADS_PER_BLOCK: u32 = 32;
/// The matrix product's block: 16×16 threads, each computing 4×4 outputs of a 64×64 tile.
const MATRIX_BLOCK_EDGE: u32 = 16;

#[derive(Debug, Clone)]
struct Kernels {
    stream_fill: CudaFunction,
    matrix_step: CudaFunction,
    row_leaves: CudaFunction,
    block_leaves: CudaFunction,
    tree_level: CudaFunction,
    seed_blocks: CudaFunction,
    fill_lanes: CudaFunction,
    gather_words: CudaFunction,
}

/// One GPU's context, stream and kernels. Cheap to clone: clones share the context.
#[derive(Debug, Clone)]
pub(crate) struct Cuda {
    stream: Arc<CudaStream>,
    kernels: Kernels,
}

impl Cuda {
    /// Opens a context on the GPU with this ordinal and loads the kernels (the driver compiles
    /// the PTX for the GPU on first load, and caches it).
    pub(crate) fn open(ordinal: usize) -> Result<Cuda, Error> {
        let context = CudaContext::new(ordinal)?;
        // SAFETY: the prover uses one stream, which orders every copy and launch; events
        // between streams are never needed.
        unsafe { context.disable_event_tracking() };
        let module = context.load_module(cudarc::nvrtc::Ptx::from_src(KERNELS_PTX))?;
        let kernels = Kernels {
            stream_fill: module.load_function("stream_fill")?,
            matrix_step: module.load_function("matrix_step")?,
            row_leaves: module.load_function("row_leaves")?,
            block_leaves: module.load_function("block_leaves")?,
            tree_level: module.load_function("tree_level")?,
            seed_blocks: module.load_function("seed_blocks")?,
            fill_lanes: module.load_function("fill_lanes")?,
            gather_words: module.load_function("gather_words")?,
        };
        Ok(Cuda {
            stream: context.default_stream(),
            kernels,
        })
    }
}

/// Every GPU the driver sees; [`Error::NoDriver`] where there is no driver.
pub(crate) fn gpus() -> Result<Vec<GpuInfo>, Error> {
    use cudarc::driver::result::device;
    use cudarc::driver::sys::CUdevice_attribute as Attribute;
    if !crate::driver_present() {
        return Err(Error::NoDriver);
    }
    cudarc::driver::result::init()?;
    let count = device::get_count()?;
    (0..count)
        .map(|ordinal| {
            let handle = device::get(ordinal)?;
            let uuid = device::get_uuid(handle)?;
            // SAFETY: `handle` is a device the driver just returned.
            let attribute = |which| unsafe { device::get_attribute(handle, which) };
            let multiprocessors = attribute(Attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let clock_khz = attribute(Attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?;
            Ok(GpuInfo {
                ordinal: ordinal as usize,
                uuid: crate::uuid_text(&uuid.bytes.map(|b| b as u8)),
                name: device::get_name(handle)?,
                // SAFETY: as above.
                memory_bytes: unsafe { device::total_mem(handle) }? as u64,
                multiprocessors: multiprocessors.max(0) as u32,
                clock_khz: clock_khz.max(0) as u32,
            })
        })
        .collect()
}

/// A launch with one thread per item.
fn grid(items: u64, threads: u32) -> LaunchConfig {
    let blocks = items.div_ceil(u64::from(threads)).max(1);
    LaunchConfig {
        grid_dim: (u32::try_from(blocks).expect("under 2^32 blocks"), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches a kernel of `$cuda` with the arguments given, in order.
///
/// Safety: the caller's: the arguments are the kernel's parameters, in order and of its types
/// (every address a `u64`), and the addresses cover the grid's items.
macro_rules! launch {
    ($cuda:ident . $kernel:ident, $config:expr, $($arg:expr),+) => {{
        let mut launch = $cuda.stream.launch_builder(&$cuda.kernels.$kernel);
        $(launch.arg($arg);)+
        // SAFETY: see the macro's contract; every use is inside an `unsafe fn` of the device.
        unsafe { launch.launch($config) }?;
        Ok(())
    }};
}

impl Device for Cuda {
    type Buffer = CudaSlice<u64>;

    fn alloc(&self, words: u64) -> Result<CudaSlice<u64>, Error> {
        Ok(self.stream.alloc_zeros::<u64>(to_usize(words))?)
    }

    fn upload(&self, words: &[u64]) -> Result<CudaSlice<u64>, Error> {
        Ok(self.stream.clone_htod(words)?)
    }

    fn download(&self, buffer: &CudaSlice<u64>) -> Result<Vec<u64>, Error> {
        Ok(self.stream.clone_dtoh(buffer)?)
    }

    fn address(&self, buffer: &CudaSlice<u64>) -> u64 {
        let (address, _sync) = buffer.device_ptr(&self.stream);
        address
    }

    fn free_bytes(&self) -> Result<u64, Error> {
        // Buffers are freed in stream order, and the pool returns them to the GPU only at a
        // synchronisation: without one the compute chain just dropped would still count as
        // used when the fill, which needs nearly all of the memory, asks what is free.
        self.stream.synchronize()?;
        let (free, _total) = self.stream.context().mem_get_info()?;
        Ok(free as u64)
    }

    unsafe fn stream_fill(&self, state: u64, out: u64, words: u64) -> Result<(), Error> {
        launch!(
            self.stream_fill,
            grid(words, THREADS_PER_BLOCK),
            &state,
            &out,
            &words
        )
    }

    unsafe fn matrix_step(&self, x: u64, a: u64, next: u64, n: u32) -> Result<(), Error> {
        let tiles = u32::try_from(u64::from(n) / MATRIX_TILE).expect("a u32 divided");
        let config = LaunchConfig {
            grid_dim: (tiles, tiles, 1),
            block_dim: (MATRIX_BLOCK_EDGE, MATRIX_BLOCK_EDGE, 1),
            shared_mem_bytes: 0,
        };
        launch!(self.matrix_step, config, &x, &a, &next, &n)
    }

    unsafe fn row_leaves(
        &self,
        matrices: u64,
        n: u32,
        rows: u64,
        leaves: u64,
    ) -> Result<(), Error> {
        launch!(
            self.row_leaves,
            grid(rows, THREADS_PER_BLOCK),
            &matrices,
            &n,
            &rows,
            &leaves
        )
    }

    unsafe fn block_leaves(&self, blocks: u64, count: u64, leaves: u64) -> Result<(), Error> {
        launch!(
            self.block_leaves,
            grid(count, THREADS_PER_BLOCK),
            &blocks,
            &count,
            &leaves
        )
    }

    unsafe fn tree_level(&self, below: u64, width: u64, above: u64) -> Result<(), Error> {
        launch!(
            self.tree_level,
            grid(width.div_ceil(2), THREADS_PER_BLOCK),
            &below,
            &width,
            &above
        )
    }

    unsafe fn seed_blocks(
        &self,
        states: u64,
        lanes: u32,
        per_lane: u64,
        blocks: u64,
    ) -> Result<(), Error> {
        let words = u64::from(lanes) * 2 * 128;
        launch!(
            self.seed_blocks,
            grid(words, THREADS_PER_BLOCK),
            &states,
            &lanes,
            &per_lane,
            &blocks
        )
    }

    unsafe fn fill_lanes(&self, lanes: u32, per_lane: u64, blocks: u64) -> Result<(), Error> {
        launch!(
            self.fill_lanes,
            grid(u64::from(lanes), FILL_THREADS_PER_BLOCK),
            &lanes,
            &per_lane,
            &blocks
        )
    }

    unsafe fn gather_words(
        &self,
        source: u64,
        starts: u64,
        count: u64,
        run_words: u32,
        out: u64,
    ) -> Result<(), Error> {
        let words = count * u64::from(run_words);
        launch!(
            self.gather_words,
            grid(words, THREADS_PER_BLOCK),
            &source,
            &starts,
            &count,
            &run_words,
            &out
        )
    }
}
