//! The kernels compiled as C++ (`kernels/host_check.cpp`) and run on the host, as a
//! [`Device`]: the tests run every kernel, and the whole prover, against the Rust CPU prover
//! on machines without a GPU. Needs a C++20 compiler (`g++`); without one the tests say they
//! did not run, unless `FLOTILLA_REQUIRE_CXX` is set.

use std::cell::Cell;
use std::path::Path;
use std::sync::OnceLock;

use crate::Error;
use crate::device::Device;

/// The host's "device memory": cells, since the kernels write through addresses while the
/// buffer is only borrowed.
pub(crate) struct HostBuffer(Box<[Cell<u64>]>);

/// The compiled kernels.
pub(crate) struct HostKernels {
    library: libloading::Library,
    _dir: tempfile::TempDir,
}

/// The kernels built once per test run; `None` (and a line saying `test` did not run) where
/// there is no C++ compiler.
pub(crate) fn kernels(test: &str) -> Option<&'static HostKernels> {
    static BUILT: OnceLock<Option<HostKernels>> = OnceLock::new();
    let built = BUILT.get_or_init(build);
    if built.is_none() {
        eprintln!("{test}: did not run: no g++");
    }
    built.as_ref()
}

fn build() -> Option<HostKernels> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("host_check.so");
    let compiled = std::process::Command::new("g++")
        .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread"])
        .args(["-Wall", "-Werror", "-I"])
        .arg(&source)
        .arg("-o")
        .arg(&library)
        .arg(source.join("host_check.cpp"))
        .output();
    match compiled {
        Ok(output) if output.status.success() => Some(HostKernels {
            // SAFETY: the library is ours, built just now; its initialisers do nothing.
            library: unsafe { libloading::Library::new(&library) }.unwrap(),
            _dir: dir,
        }),
        Ok(output) => panic!(
            "the kernels do not build as C++:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            assert!(
                std::env::var_os("FLOTILLA_REQUIRE_CXX").is_none(),
                "g++ is required here: {error}"
            );
            None
        }
    }
}

impl HostKernels {
    /// The launcher `host_<name>` of host_check.cpp.
    ///
    /// Safety: `F` must be that launcher's signature.
    unsafe fn launcher<F: Copy>(&self, name: &str) -> F {
        let symbol = format!("host_{name}\0");
        // SAFETY: the caller's.
        *unsafe { self.library.get::<F>(symbol.as_bytes()) }.unwrap()
    }
}

/// Addresses are host pointers; `n` and the like pass as they are.
fn at(address: u64) -> *mut u64 {
    address as usize as *mut u64
}

// Every launcher below: the signature is host_check.cpp's, and the caller vouches for the
// addresses (the `Device` contract).
type Launch3 = unsafe extern "C" fn(u64, *mut u64, u64);
type Matrix = unsafe extern "C" fn(*mut u64, *mut u64, *mut u64, u32);
type RowLeaves = unsafe extern "C" fn(*mut u64, u32, u64, *mut u64);
type BlockLeaves = unsafe extern "C" fn(*mut u64, u64, *mut u64);
type SeedBlocks = unsafe extern "C" fn(*mut u64, u32, u64, *mut u64);
type FillLanes = unsafe extern "C" fn(u32, u64, *mut u64);
type Gather = unsafe extern "C" fn(*mut u64, *mut u64, u64, u32, *mut u64);

impl Device for HostKernels {
    type Buffer = HostBuffer;

    fn alloc(&self, words: u64) -> Result<HostBuffer, Error> {
        Ok(HostBuffer((0..words).map(|_| Cell::new(0)).collect()))
    }

    fn upload(&self, words: &[u64]) -> Result<HostBuffer, Error> {
        Ok(HostBuffer(words.iter().copied().map(Cell::new).collect()))
    }

    fn download(&self, buffer: &HostBuffer) -> Result<Vec<u64>, Error> {
        Ok(buffer.0.iter().map(Cell::get).collect())
    }

    fn address(&self, buffer: &HostBuffer) -> u64 {
        buffer.0.as_ptr() as usize as u64
    }

    fn free_bytes(&self) -> Result<u64, Error> {
        Ok(u64::MAX)
    }

    unsafe fn stream_fill(&self, state: u64, out: u64, words: u64) -> Result<(), Error> {
        unsafe { self.launcher::<Launch3>("stream_fill")(state, at(out), words) };
        Ok(())
    }

    unsafe fn matrix_step(&self, x: u64, a: u64, next: u64, n: u32) -> Result<(), Error> {
        unsafe { self.launcher::<Matrix>("matrix_step")(at(x), at(a), at(next), n) };
        Ok(())
    }

    unsafe fn row_leaves(
        &self,
        matrices: u64,
        n: u32,
        rows: u64,
        leaves: u64,
    ) -> Result<(), Error> {
        unsafe { self.launcher::<RowLeaves>("row_leaves")(at(matrices), n, rows, at(leaves)) };
        Ok(())
    }

    unsafe fn block_leaves(&self, blocks: u64, count: u64, leaves: u64) -> Result<(), Error> {
        unsafe { self.launcher::<BlockLeaves>("block_leaves")(at(blocks), count, at(leaves)) };
        Ok(())
    }

    unsafe fn tree_level(&self, below: u64, width: u64, above: u64) -> Result<(), Error> {
        unsafe { self.launcher::<BlockLeaves>("tree_level")(at(below), width, at(above)) };
        Ok(())
    }

    unsafe fn seed_blocks(
        &self,
        states: u64,
        lanes: u32,
        per_lane: u64,
        blocks: u64,
    ) -> Result<(), Error> {
        unsafe {
            self.launcher::<SeedBlocks>("seed_blocks")(at(states), lanes, per_lane, at(blocks))
        };
        Ok(())
    }

    unsafe fn fill_lanes(&self, lanes: u32, per_lane: u64, blocks: u64) -> Result<(), Error> {
        unsafe { self.launcher::<FillLanes>("fill_lanes")(lanes, per_lane, at(blocks)) };
        Ok(())
    }

    unsafe fn gather_words(
        &self,
        source: u64,
        starts: u64,
        count: u64,
        run_words: u32,
        out: u64,
    ) -> Result<(), Error> {
        unsafe {
            self.launcher::<Gather>("gather_words")(
                at(source),
                at(starts),
                count,
                run_words,
                at(out),
            )
        };
        Ok(())
    }
}
