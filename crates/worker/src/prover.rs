//! Answers the coordinator's proof-of-compute challenges: picks the prover for a device
//! (the CUDA prover on a real GPU, the CPU prover for CPU-class challenges), runs it off the
//! async threads, and holds the committed memory fill until the coordinator asks for blocks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla_proof::{BlockOpening, Challenge, CpuProof, Transcript};
use flotilla_proof_cuda::{CudaProver, GpuProof};
use flotilla_proto::device::{DeviceHardware, DeviceKind};
use flotilla_proto::wire::WorkerMessage;

/// Most memory the CPU prover may use for one challenge: the compute chain, then the memory
/// fill (the whole CPU class's 1 GiB) with its Merkle tree.
const CPU_PROVER_BYTES_MAX: u64 = 1536 * 1024 * 1024;
/// How long a committed fill is held for the coordinator's memory query before it is dropped:
/// the query comes at once after the commitments, or not at all (the proof already failed).
const FILL_HOLD_MS_MAX: u64 = 30_000;

/// Which prover answers a challenge for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProverChoice {
    Cpu,
    /// The CUDA prover on the GPU with this UUID.
    Gpu {
        uuid: String,
    },
    /// None here: the challenge is declined, its deadline passes, and the device is blocked.
    Decline(&'static str),
}

/// The prover for `challenge` on `device`. A GPU class is proven only on the real GPU the
/// device is: never by a simulated one, never by the CPU.
pub fn choose(challenge: &Challenge, device: Option<&DeviceHardware>) -> ProverChoice {
    if challenge.class == "cpu" {
        return if cpu_prover_takes(challenge) {
            ProverChoice::Cpu
        } else {
            ProverChoice::Decline("over the CPU prover's memory bound")
        };
    }
    match device {
        Some(gpu) if gpu.kind == DeviceKind::Gpu && !gpu.simulated => ProverChoice::Gpu {
            uuid: gpu.hardware_id.clone(),
        },
        Some(_) => ProverChoice::Decline("a GPU class for a device that is no real GPU"),
        None => ProverChoice::Decline("a challenge for a device this worker does not have"),
    }
}

/// Whether a CPU-class challenge fits the CPU prover's memory bound.
fn cpu_prover_takes(challenge: &Challenge) -> bool {
    let n = u64::from(challenge.compute.matrix_n);
    let compute_bytes = (u64::from(challenge.compute.steps) + 1).saturating_mul(n * n);
    // Each block has a leaf hash and, about, an inner node in the tree: 64 bytes beside 1 KiB.
    let fill_bytes = challenge.memory.fill_bytes().saturating_mul(17) / 16;
    compute_bytes.max(fill_bytes) <= CPU_PROVER_BYTES_MAX
}

/// A prover's state between its commitments and the memory openings.
#[derive(Debug)]
pub enum Proof {
    Cpu(CpuProof),
    Gpu(GpuProof),
}

impl Proof {
    pub fn transcript(&self) -> &Transcript {
        match self {
            Proof::Cpu(proof) => &proof.transcript,
            Proof::Gpu(proof) => &proof.transcript,
        }
    }

    fn open_memory(&self, nonce: &str) -> Result<Vec<BlockOpening>, String> {
        match self {
            Proof::Cpu(proof) => proof.open_memory(nonce).map_err(|e| e.to_string()),
            Proof::Gpu(proof) => proof.open_memory(nonce).map_err(|e| e.to_string()),
        }
    }
}

/// Runs the chosen prover for one device on a blocking thread and hands the commitments back
/// to the session loop, which alone numbers messages.
pub fn start(
    device_id: String,
    challenge: Challenge,
    device: Option<&DeviceHardware>,
    proved: tokio::sync::mpsc::Sender<(String, Proof)>,
) {
    let choice = choose(&challenge, device);
    if let ProverChoice::Decline(why) = choice {
        tracing::warn!(%device_id, class = %challenge.class, why, "no prover here for this challenge; declining");
        return;
    }
    tracing::info!(%device_id, class = %challenge.class, steps = challenge.compute.steps, ?choice, "proving compute");
    tokio::task::spawn_blocking(move || {
        let proof = match choice {
            ProverChoice::Gpu { uuid } => CudaProver::on_gpu(&uuid)
                .and_then(|prover| prover.prove(&challenge))
                .map(Proof::Gpu)
                .map_err(|e| e.to_string()),
            _ => flotilla_proof::prove_on_cpu(&challenge)
                .map(Proof::Cpu)
                .map_err(|e| e.to_string()),
        };
        match proof {
            Ok(proof) => {
                let _ = proved.blocking_send((device_id, proof));
            }
            Err(failure) => tracing::warn!(%device_id, %failure, "cannot prove this challenge"),
        }
    });
}

/// Fills committed to the coordinator and held for its memory query, by device.
#[derive(Default)]
pub struct HeldFills {
    fills: HashMap<String, (Proof, Instant)>,
}

impl HeldFills {
    /// Holds a fill; a newer one for the same device replaces the older.
    pub fn keep(&mut self, device_id: String, proof: Proof) {
        self.drop_expired();
        self.fills.insert(device_id, (proof, Instant::now()));
    }

    /// Frees fills whose query never came.
    pub fn drop_expired(&mut self) {
        let hold = Duration::from_millis(FILL_HOLD_MS_MAX);
        self.fills
            .retain(|_, (_, kept_at)| kept_at.elapsed() < hold);
    }

    /// Opens the blocks `nonce` picks and frees the fill.
    pub fn open(&mut self, device_id: String, nonce: &str) -> Option<WorkerMessage> {
        let Some((proof, _)) = self.fills.remove(&device_id) else {
            tracing::warn!(%device_id, "memory query for no held fill");
            return None;
        };
        match proof.open_memory(nonce) {
            Ok(openings) => Some(WorkerMessage::MemoryOpenings {
                device_id,
                openings,
            }),
            Err(failure) => {
                tracing::warn!(%device_id, %failure, "cannot open the memory");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(simulated: bool) -> DeviceHardware {
        let mut gpu = DeviceHardware::new(
            "GPU-00112233-4455-6677-8899-aabbccddeeff",
            DeviceKind::Gpu,
            "NVIDIA H100 80GB HBM3",
            80 << 30,
        );
        gpu.simulated = simulated;
        gpu
    }

    #[test]
    fn cpu_challenges_go_to_the_cpu_prover_within_its_memory_bound() {
        let cpu = flotilla_proof::challenge_for(&flotilla_proof::cpu_class(), [1; 32]);
        assert_eq!(choose(&cpu, None), ProverChoice::Cpu);
        // A simulated GPU is challenged as a CPU, and answers with the CPU prover.
        assert_eq!(choose(&cpu, Some(&gpu(true))), ProverChoice::Cpu);
        let mut huge = cpu;
        huge.compute.steps = 1 << 16;
        assert!(matches!(choose(&huge, None), ProverChoice::Decline(_)));
    }

    #[test]
    fn gpu_challenges_go_to_the_real_gpu_and_nowhere_else() {
        let h100 = flotilla_proof::class_for("NVIDIA H100 80GB HBM3", true, false);
        let challenge = flotilla_proof::challenge_for(&h100, [1; 32]);
        assert_eq!(
            choose(&challenge, Some(&gpu(false))),
            ProverChoice::Gpu {
                uuid: "GPU-00112233-4455-6677-8899-aabbccddeeff".to_owned()
            }
        );
        assert!(matches!(
            choose(&challenge, Some(&gpu(true))),
            ProverChoice::Decline(_)
        ));
        let mut cpu_device = gpu(false);
        cpu_device.kind = DeviceKind::Cpu;
        assert!(matches!(
            choose(&challenge, Some(&cpu_device)),
            ProverChoice::Decline(_)
        ));
        assert!(matches!(choose(&challenge, None), ProverChoice::Decline(_)));
    }
}
