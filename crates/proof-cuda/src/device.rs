//! What the prover needs from a device: buffers of 64-bit words, and the kernels of
//! `kernels/prover.cu`, each taking addresses into those buffers. The GPU is one such device
//! ([`crate::cuda::Cuda`]); the tests' other is the same kernels compiled as C++ on the host,
//! so the whole prover, not only its kernels, is checked without a GPU.

use crate::Error;

/// A device running the prover's kernels. Kernel calls are queued in order: a later call
/// sees what an earlier one wrote, and [`Device::download`] waits for every call before it.
///
/// Safety of the kernel calls:
///
/// The kernels write where they are told: every address passed to them must point into a
/// live buffer of this device, with room for the items the call covers.
pub(crate) trait Device {
    type Buffer;

    /// A zeroed buffer of `words` 64-bit words.
    fn alloc(&self, words: u64) -> Result<Self::Buffer, Error>;
    fn upload(&self, words: &[u64]) -> Result<Self::Buffer, Error>;
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<u64>, Error>;
    /// The address kernels use for the buffer's first word.
    fn address(&self, buffer: &Self::Buffer) -> u64;
    /// Memory still free on the device.
    fn free_bytes(&self) -> Result<u64, Error>;

    /// Writes `words` words of the stream starting at `state` to `out`.
    unsafe fn stream_fill(&self, state: u64, out: u64, words: u64) -> Result<(), Error>;
    /// `next = fold(x · a)` for n×n byte matrices, n a multiple of [`crate::MATRIX_TILE`].
    unsafe fn matrix_step(&self, x: u64, a: u64, next: u64, n: u32) -> Result<(), Error>;
    /// The leaf hash of each of `rows` rows of n bytes.
    unsafe fn row_leaves(&self, matrices: u64, n: u32, rows: u64, leaves: u64)
    -> Result<(), Error>;
    /// The leaf hash of each of `count` memory blocks.
    unsafe fn block_leaves(&self, blocks: u64, count: u64, leaves: u64) -> Result<(), Error>;
    /// One tree level above `width` nodes.
    unsafe fn tree_level(&self, below: u64, width: u64, above: u64) -> Result<(), Error>;
    /// Every lane's two seed blocks from two stream states per lane.
    unsafe fn seed_blocks(
        &self,
        states: u64,
        lanes: u32,
        per_lane: u64,
        blocks: u64,
    ) -> Result<(), Error>;
    /// Every lane's chained blocks after its seed blocks.
    unsafe fn fill_lanes(&self, lanes: u32, per_lane: u64, blocks: u64) -> Result<(), Error>;
    /// `count` runs of `run_words` words from `source`, starting at the words `starts` holds.
    unsafe fn gather_words(
        &self,
        source: u64,
        starts: u64,
        count: u64,
        run_words: u32,
        out: u64,
    ) -> Result<(), Error>;
}
