//! The PTX check runs wherever NVRTC is (the test command installs it); the GPU tests run only
//! where a GPU is, and elsewhere say they did not run.

use super::*;

/// The prover on the first GPU, or `None` (and a line saying the test did not run) where this
/// machine has none. With `FLOTILLA_REQUIRE_GPU` set, a missing GPU fails instead.
fn first_gpu(test: &str) -> Option<CudaProver> {
    let found = gpus().map(|gpus| gpus.into_iter().next());
    match found {
        Ok(Some(gpu)) => Some(CudaProver::on(gpu).expect("the prover loads on the GPU")),
        missing => {
            let why = match missing {
                Err(error) => error.to_string(),
                _ => "the driver sees no GPU".to_owned(),
            };
            assert!(
                std::env::var_os("FLOTILLA_REQUIRE_GPU").is_none(),
                "{test}: a GPU is required here: {why}"
            );
            eprintln!("{test}: did not run: {why}");
            None
        }
    }
}

#[test]
fn the_checked_in_ptx_is_the_sources() {
    let required = std::env::var_os("FLOTILLA_REQUIRE_NVRTC").is_some();
    if let Some(version) = nvrtc_version().filter(|v| *v != PTX_NVRTC_VERSION) {
        // The test command puts the pinned release on the library path; elsewhere (a GPU
        // machine's own CUDA) the check says it did not run.
        assert!(
            !required,
            "NVRTC {version:?} here, not {PTX_NVRTC_VERSION:?}"
        );
        eprintln!(
            "the_checked_in_ptx_is_the_sources: did not run: NVRTC {version:?} is not {PTX_NVRTC_VERSION:?}"
        );
        return;
    }
    match compile_kernels() {
        Ok(ptx) => assert!(
            ptx == KERNELS_PTX,
            "kernels/prover.ptx is stale: run `cargo xtask ptx`"
        ),
        Err(Error::NoNvrtc) => {
            assert!(
                !required,
                "NVRTC is required here (LD_LIBRARY_PATH must reach libnvrtc)"
            );
            eprintln!("the_checked_in_ptx_is_the_sources: did not run: no NVRTC");
        }
        Err(error) => panic!("the kernels do not compile: {error}"),
    }
}

#[test]
fn uuids_are_written_as_nvml_writes_them() {
    let bytes: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
    assert_eq!(
        uuid_text(&bytes),
        "GPU-00112233-4455-6677-8899-aabbccddeeff"
    );
}

#[test]
fn without_a_driver_there_is_no_gpu_and_no_prover() {
    if driver_present() {
        eprintln!("without_a_driver_there_is_no_gpu_and_no_prover: did not run: a driver is here");
        return;
    }
    assert!(matches!(gpus(), Err(Error::NoDriver)));
    assert!(matches!(
        CudaProver::on_gpu("GPU-00000000-0000-0000-0000-000000000000"),
        Err(Error::NoDriver)
    ));
}

#[test]
fn the_gpu_prover_commits_and_opens_exactly_as_the_cpu_prover() {
    let Some(prover) = first_gpu("the_gpu_prover_commits_and_opens_exactly_as_the_cpu_prover")
    else {
        return;
    };
    let class = flotilla_proof::cpu_class();
    let challenge = flotilla_proof::challenge_with_target(&class, [9; 32], 50, 1);
    let nonce = "3c".repeat(32);
    let on_gpu = prover.prove(&challenge).unwrap().finish(&nonce).unwrap();
    let on_cpu = flotilla_proof::prove_on_cpu(&challenge)
        .unwrap()
        .finish(&nonce)
        .unwrap();
    assert_eq!(on_gpu.compute_root, on_cpu.compute_root, "compute roots");
    assert_eq!(on_gpu.memory_root, on_cpu.memory_root, "memory roots");
    assert_eq!(on_gpu, on_cpu, "whole transcripts");
    flotilla_proof::verify_content(&on_gpu).unwrap();
}

#[test]
fn the_gpu_proves_its_own_class_within_the_deadlines() {
    let Some(prover) = first_gpu("the_gpu_proves_its_own_class_within_the_deadlines") else {
        return;
    };
    let class = flotilla_proof::class_for(&prover.gpu.name, true, false);
    assert_ne!(
        class.name, "cpu",
        "{} is in the class table",
        prover.gpu.name
    );
    let challenge = flotilla_proof::challenge_for(&class, [4; 32]);
    let started = std::time::Instant::now();
    let proof = prover.prove(&challenge).unwrap();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let answered = std::time::Instant::now();
    let mut transcript = proof.finish(&"7e".repeat(32)).unwrap();
    transcript.answer_elapsed_ms = answered.elapsed().as_millis() as u64;
    transcript.elapsed_ms = elapsed_ms;
    eprintln!(
        "{}: class {} committed in {elapsed_ms} ms (deadline {} ms), opened the memory in {} ms",
        prover.gpu.name,
        class.name,
        challenge.commit_deadline_ms(),
        transcript.answer_elapsed_ms
    );
    // The deadlines are part of the verdict: an honest GPU that missed them would be blocked.
    flotilla_proof::verify_transcript(&transcript).unwrap();
}

// ---- The kernels and the whole prover, on the host ----------------------------------------

mod on_host {
    use flotilla_proof::compute::{ComputeProof, next_row, start_matrix, step_matrix};
    use flotilla_proof::memory::{BLOCK_BYTES, MemoryFill};
    use flotilla_proof::stream::{Stream, initial_state};
    use flotilla_proof::{ComputeParams, MemoryParams};

    use crate::device::Device;
    use crate::host::{HostKernels, kernels};
    use crate::{Error, prover};

    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The root over `leaves` (a buffer of hashes), hashed level by level by the tree kernel.
    fn root(kernels: &HostKernels, leaves: Vec<u64>) -> [u8; 32] {
        let mut level = kernels.upload(&leaves).unwrap();
        let mut width = leaves.len() as u64 / 4;
        while width > 1 {
            let above = kernels.alloc(width.div_ceil(2) * 4).unwrap();
            // SAFETY: `level` holds `width` hashes, `above` half as many, rounded up.
            unsafe {
                kernels
                    .tree_level(kernels.address(&level), width, kernels.address(&above))
                    .unwrap()
            };
            (level, width) = (above, width.div_ceil(2));
        }
        bytes(&kernels.download(&level).unwrap())
            .try_into()
            .unwrap()
    }

    #[test]
    fn the_stream_kernel_writes_the_provers_streams() {
        let Some(kernels) = kernels("the_stream_kernel_writes_the_provers_streams") else {
            return;
        };
        let seed = [3u8; 32];
        let out = kernels.alloc(1000).unwrap();
        // SAFETY: `out` holds the 1,000 words asked for.
        unsafe {
            kernels
                .stream_fill(initial_state(&seed, "a", 7), kernels.address(&out), 1000)
                .unwrap()
        };
        let mut expected = vec![0u8; 8000];
        Stream::new(&seed, "a", 7).fill(&mut expected);
        assert_eq!(bytes(&kernels.download(&out).unwrap()), expected);
    }

    #[test]
    fn the_compute_kernels_commit_to_the_cpu_provers_chain() {
        let Some(kernels) = kernels("the_compute_kernels_commit_to_the_cpu_provers_chain") else {
            return;
        };
        // Two tiles a side, so the tiling's every boundary is crossed.
        let n = 128u32;
        let params = ComputeParams {
            matrix_n: n,
            steps: 3,
            checks: 1,
            deadline_ms: 0,
        };
        let seed = [5u8; 32];
        let (words, bytes_per_matrix) = (u64::from(n * n / 8), u64::from(n * n));
        let matrices = kernels.alloc(words * 4).unwrap();
        let a = kernels.alloc(words).unwrap();
        let (base, a_at) = (kernels.address(&matrices), kernels.address(&a));
        let leaves = kernels.alloc(4 * u64::from(n) * 4).unwrap();
        // SAFETY: `matrices` holds four n×n matrices, `a` one, `leaves` a hash per row.
        unsafe {
            kernels
                .stream_fill(initial_state(&seed, "x0", 0), base, words)
                .unwrap();
            for step in 0..3u64 {
                kernels
                    .stream_fill(initial_state(&seed, "a", step), a_at, words)
                    .unwrap();
                let x = base + step * bytes_per_matrix;
                kernels
                    .matrix_step(x, a_at, x + bytes_per_matrix, n)
                    .unwrap();
            }
            let rows = 4 * u64::from(n);
            kernels
                .row_leaves(base, n, rows, kernels.address(&leaves))
                .unwrap();
        }
        let all = bytes(&kernels.download(&matrices).unwrap());
        assert_eq!(
            all[..n as usize * n as usize],
            start_matrix(&seed, n as usize)
        );
        // The first product, row by row, against the Rust prover's arithmetic.
        let (x0, a0) = (
            start_matrix(&seed, n as usize),
            step_matrix(&seed, 0, n as usize),
        );
        let x1 = &all[(n * n) as usize..2 * (n * n) as usize];
        let (mut expected, mut acc) = (vec![0u8; n as usize], vec![0i32; n as usize]);
        for (row, (x, got)) in x0.chunks(n as usize).zip(x1.chunks(n as usize)).enumerate() {
            next_row(x, &a0, n as usize, &mut expected, &mut acc);
            assert_eq!(got, expected, "row {row} of the first product");
        }
        let leaves = kernels.download(&leaves).unwrap();
        assert_eq!(
            root(kernels, leaves),
            ComputeProof::prove(&seed, &params).root()
        );
    }

    #[test]
    fn the_memory_kernels_fill_and_commit_as_the_cpu_prover() {
        let Some(kernels) = kernels("the_memory_kernels_fill_and_commit_as_the_cpu_prover") else {
            return;
        };
        let params = MemoryParams {
            block_bytes: BLOCK_BYTES,
            lanes: 3,
            blocks_per_lane: 40,
            checks: 1,
            fill_deadline_ms: 0,
            answer_deadline_ms: 0,
        };
        let seed = [6u8; 32];
        let states: Vec<u64> = (0..3u64)
            .flat_map(|lane| [0, 1].map(|j| initial_state(&seed, "memory", lane * 40 + j)))
            .collect();
        let states = kernels.upload(&states).unwrap();
        let blocks = kernels.alloc(120 * 128).unwrap();
        let leaves = kernels.alloc(120 * 4).unwrap();
        let at = kernels.address(&blocks);
        // SAFETY: two states per lane; three lanes of 40 blocks; a hash per block.
        unsafe {
            kernels
                .seed_blocks(kernels.address(&states), 3, 40, at)
                .unwrap();
            kernels.fill_lanes(3, 40, at).unwrap();
            kernels
                .block_leaves(at, 120, kernels.address(&leaves))
                .unwrap();
        }
        let leaves = kernels.download(&leaves).unwrap();
        assert_eq!(
            root(kernels, leaves),
            MemoryFill::fill(&seed, &params).root()
        );
    }

    #[test]
    fn the_gather_kernel_copies_the_runs_asked_for() {
        let Some(kernels) = kernels("the_gather_kernel_copies_the_runs_asked_for") else {
            return;
        };
        let source = kernels.upload(&(0..100).collect::<Vec<u64>>()).unwrap();
        let starts = kernels.upload(&[10, 0, 96]).unwrap();
        let out = kernels.alloc(12).unwrap();
        // SAFETY: every run of four lies inside the hundred words.
        unsafe {
            kernels
                .gather_words(
                    kernels.address(&source),
                    kernels.address(&starts),
                    3,
                    4,
                    kernels.address(&out),
                )
                .unwrap()
        };
        assert_eq!(
            kernels.download(&out).unwrap(),
            [10, 11, 12, 13, 0, 1, 2, 3, 96, 97, 98, 99]
        );
    }

    /// The GPU prover's every step, run on the host kernels: its transcript is the CPU
    /// prover's, byte for byte, and passes the verifier.
    fn proves_as_the_cpu_prover(test: &str, challenge: &flotilla_proof::Challenge) {
        let Some(kernels) = kernels(test) else {
            return;
        };
        let nonce = "3c".repeat(32);
        let (mut transcript, fill) = prover::prove(kernels, challenge).unwrap();
        transcript.memory_openings =
            prover::open_memory(kernels, &fill, &transcript, &nonce).unwrap();
        transcript.memory_nonce = nonce.clone();
        let on_cpu = flotilla_proof::prove_on_cpu(challenge)
            .unwrap()
            .finish(&nonce)
            .unwrap();
        assert_eq!(
            transcript.compute_root, on_cpu.compute_root,
            "compute roots"
        );
        assert_eq!(transcript.memory_root, on_cpu.memory_root, "memory roots");
        assert_eq!(transcript, on_cpu, "whole transcripts");
        flotilla_proof::verify_content(&transcript).unwrap();
    }

    #[test]
    fn the_gpu_prover_on_host_kernels_proves_a_cpu_class_challenge_as_the_cpu_prover() {
        let class = flotilla_proof::cpu_class();
        let challenge = flotilla_proof::challenge_with_target(&class, [9; 32], 10, 1);
        proves_as_the_cpu_prover(
            "the_gpu_prover_on_host_kernels_proves_a_cpu_class_challenge_as_the_cpu_prover",
            &challenge,
        );
    }

    #[test]
    fn the_gpu_prover_on_host_kernels_proves_odd_sizes_as_the_cpu_prover() {
        // Three tiles a side, an odd number of rows per level of the tree, and lanes that
        // are not a power of two.
        let class = flotilla_proof::cpu_class();
        let mut challenge = flotilla_proof::challenge_with_target(&class, [8; 32], 10, 1);
        challenge.compute.matrix_n = 192;
        challenge.compute.steps = 5;
        challenge.memory.lanes = 3;
        challenge.memory.blocks_per_lane = 37;
        proves_as_the_cpu_prover(
            "the_gpu_prover_on_host_kernels_proves_odd_sizes_as_the_cpu_prover",
            &challenge,
        );
    }

    #[test]
    fn matrices_off_the_tile_are_refused() {
        let Some(kernels) = kernels("matrices_off_the_tile_are_refused") else {
            return;
        };
        let class = flotilla_proof::cpu_class();
        let mut challenge = flotilla_proof::challenge_with_target(&class, [8; 32], 10, 1);
        challenge.compute.matrix_n = 100;
        assert!(matches!(
            prover::prove(kernels, &challenge),
            Err(Error::MatrixSize(100))
        ));
    }
}
