//! Admission: the one place that decides whether a reported device may join the pool.
//!
//! Devices are stored `pending` when first reported. Hardware the network does not accept goes
//! `unsupported` at once; everything else must pass proof of compute (`flotilla_proof`), sized
//! to the class it claims: a pass admits it (`idle`), a failure or a missed deadline blocks it.
//! Simulated GPUs are challenged as CPUs, so they never pass as the GPU they simulate.

use flotilla_proto::device::{DeviceHardware, DeviceKind};

use crate::device_state::DeviceEvent;

/// Smallest GPU memory the network accepts.
pub const GPU_MEMORY_BYTES_MIN: u64 = 4 * 1024 * 1024 * 1024;
/// Fewest logical cores a CPU device needs.
pub const CPU_CORES_MIN: u32 = 2;

/// The admission decision before any proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Unsupported,
    NeedsProof,
}

/// What happens to a pending device with this hardware.
pub fn admit(hardware: &DeviceHardware) -> Admission {
    let acceptable = match hardware.kind {
        DeviceKind::Gpu => hardware.memory_bytes >= GPU_MEMORY_BYTES_MIN,
        DeviceKind::Cpu => hardware.cores.unwrap_or(0) >= CPU_CORES_MIN,
    };
    if acceptable {
        Admission::NeedsProof
    } else {
        Admission::Unsupported
    }
}

/// Whether a device's proof runs on its worker's CPU (a CPU, or a simulated GPU, which proves
/// as one) rather than on a GPU of its own.
pub fn proves_on_host_cpu(hardware: &DeviceHardware) -> bool {
    hardware.kind == DeviceKind::Cpu || hardware.simulated
}

/// The challenge for a device, sized to the class its hardware claims. A GPU that claims less
/// memory than its model's entry (an A100 with 40 GB where the table says 80) fills
/// `memory_pct` of what it claims: the share is taken of the class's memory, so the transcript
/// still re-checks against the class alone.
pub fn challenge(
    hardware: &DeviceHardware,
    seed: [u8; 32],
    target_ms: u64,
    memory_pct: u32,
) -> flotilla_proof::Challenge {
    let is_gpu = hardware.kind == DeviceKind::Gpu;
    let class = flotilla_proof::class_for(&hardware.model, is_gpu, hardware.simulated);
    let memory_pct = if class.name == flotilla_proof::cpu_class().name {
        memory_pct
    } else {
        share_of_claim_pct(memory_pct, hardware.memory_bytes, class.memory_bytes)
    };
    flotilla_proof::challenge_with_target(&class, seed, target_ms, memory_pct)
}

/// `pct` percent of the claimed memory, as a percentage of the class's memory (at least 1).
fn share_of_claim_pct(pct: u32, claimed_bytes: u64, class_bytes: u64) -> u32 {
    let claimed = u128::from(claimed_bytes.min(class_bytes));
    let share = u128::from(pct) * claimed / u128::from(class_bytes.max(1));
    u32::try_from(share).unwrap_or(pct).max(1)
}

/// Slashes the supplier of a device whose proof failed: as much of its stake as the device's
/// minimum stake (200 IO x max(1, multiplier)), held through the appeal window with the
/// transcript's id as evidence, then burned. Nothing staked, nothing taken. The id derives
/// from the proof, so one failed proof slashes once.
pub async fn slash_for_failed_proof(
    app: &crate::AppState,
    supplier: &str,
    hardware: &DeviceHardware,
    proof_id: &str,
    reason: &str,
) -> Result<(), crate::ledger::LedgerError> {
    use flotilla_ledger::{AccountId, Kind, OnExpiry, Op, Purpose, Token, Transfer};
    let stake = AccountId::stake(supplier);
    let available = crate::ledger::balance(&app.store, &stake)
        .await?
        .available();
    let due = flotilla_ledger::emission::minimum_stake_micros(
        &flotilla_proto::device::model_key(hardware.kind, &hardware.model),
        1,
    );
    let amount = due.min(u64::try_from(available).unwrap_or(0));
    if amount == 0 {
        return Ok(());
    }
    let appeal_ms = i64::try_from(app.config.slash_appeal_ms).unwrap_or(i64::MAX);
    let mut reference = format!("proof failed: {reason} | evidence: {proof_id}");
    reference.retain(|c| !c.is_control());
    let reference: String = reference.chars().take(200).collect();
    let hold = Op::Hold {
        debit: stake,
        credit: AccountId::system(Purpose::Burn, Token::Io),
        amount,
        expires_at_ms: flotilla_proto::time::now_unix_ms().saturating_add(appeal_ms),
        on_expiry: OnExpiry::Post,
    };
    let slash = Transfer::new(format!("slash-{proof_id}"), Kind::Slash, hold, reference);
    let outcome = app.ledger.submit_one(slash).await?;
    tracing::warn!(%supplier, %proof_id, amount, ?outcome, "stake slashed for a failed proof");
    Ok(())
}

/// The event a verdict leads to.
pub fn verdict_event(passed: bool) -> DeviceEvent {
    if passed {
        DeviceEvent::Admitted
    } else {
        DeviceEvent::Blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardware(kind: DeviceKind, memory_bytes: u64, cores: Option<u32>) -> DeviceHardware {
        DeviceHardware {
            cores,
            ..DeviceHardware::new("x", kind, "m", memory_bytes)
        }
    }

    #[test]
    fn small_devices_are_unsupported() {
        assert_eq!(
            admit(&hardware(DeviceKind::Gpu, 24 << 30, None)),
            Admission::NeedsProof
        );
        assert_eq!(
            admit(&hardware(DeviceKind::Gpu, 2 << 30, None)),
            Admission::Unsupported
        );
        assert_eq!(
            admit(&hardware(DeviceKind::Cpu, 1 << 30, Some(8))),
            Admission::NeedsProof
        );
        assert_eq!(
            admit(&hardware(DeviceKind::Cpu, 1 << 30, Some(1))),
            Admission::Unsupported
        );
    }

    #[test]
    fn a_gpu_with_less_memory_than_its_models_entry_fills_a_share_of_its_claim() {
        let mut a100 = hardware(DeviceKind::Gpu, 40 << 30, None);
        a100.model = "NVIDIA A100-SXM4-40GB".into();
        let challenge = challenge(&a100, [1; 32], 2_000, 90);
        assert_eq!(challenge.class, "a100");
        assert_eq!(
            challenge.memory_pct, 45,
            "90% of 40 GiB is 45% of the class's 80"
        );
        let fill = challenge.memory.fill_bytes();
        assert!(fill <= 36 << 30 && fill > 35 << 30, "{fill} bytes");
        // The transcript's sizing is still the class's, so it re-checks offline.
        let class = flotilla_proof::class_named("a100").unwrap();
        assert_eq!(
            challenge.memory,
            flotilla_proof::MemoryParams::for_class(&class, 45)
        );
        // A claim above the entry is held to the entry, and a tiny one to 1%.
        assert_eq!(share_of_claim_pct(90, 200 << 30, 80 << 30), 90);
        assert_eq!(share_of_claim_pct(90, 1 << 20, 80 << 30), 1);
    }

    #[test]
    fn simulated_gpus_are_challenged_as_cpus_and_real_ones_by_model() {
        let mut gpu = hardware(DeviceKind::Gpu, 80 << 30, None);
        gpu.model = "NVIDIA H100 80GB HBM3".into();
        assert_eq!(challenge(&gpu, [1; 32], 2_000, 90).class, "h100");
        assert_eq!(challenge(&gpu, [1; 32], 2_000, 90).memory_pct, 90);
        assert!(!proves_on_host_cpu(&gpu));
        gpu.simulated = true;
        assert_eq!(challenge(&gpu, [1; 32], 2_000, 90).class, "cpu");
        assert!(proves_on_host_cpu(&gpu));
        assert!(proves_on_host_cpu(&hardware(
            DeviceKind::Cpu,
            1 << 30,
            Some(8)
        )));
        assert_eq!(verdict_event(true), DeviceEvent::Admitted);
        assert_eq!(verdict_event(false), DeviceEvent::Blocked);
    }
}
