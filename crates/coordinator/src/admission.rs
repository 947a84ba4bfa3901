//! Admission: the one step that decides whether a reported device may join the pool.
//!
//! Devices are stored `pending` when first reported. This step then moves each one to `idle`
//! (admitted) or `unsupported`. Proof of compute takes this step over: until it lands, a
//! device whose hardware is acceptable is admitted on its worker's claim, which is why
//! simulated devices are refused unless the coordinator allows them.

use flotilla_proto::device::{DeviceHardware, DeviceKind};

use crate::device_state::DeviceEvent;

/// Smallest GPU memory the network accepts.
pub const GPU_MEMORY_BYTES_MIN: u64 = 4 * 1024 * 1024 * 1024;
/// Fewest logical cores a CPU device needs.
pub const CPU_CORES_MIN: u32 = 2;

/// The admission event for a pending device with this hardware.
pub fn admit(hardware: &DeviceHardware) -> DeviceEvent {
    let acceptable = match hardware.kind {
        DeviceKind::Gpu => hardware.memory_bytes >= GPU_MEMORY_BYTES_MIN,
        DeviceKind::Cpu => hardware.cores.unwrap_or(0) >= CPU_CORES_MIN,
    };
    if acceptable {
        DeviceEvent::Admitted
    } else {
        DeviceEvent::Rejected
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
            DeviceEvent::Admitted
        );
        assert_eq!(
            admit(&hardware(DeviceKind::Gpu, 2 << 30, None)),
            DeviceEvent::Rejected
        );
        assert_eq!(
            admit(&hardware(DeviceKind::Cpu, 1 << 30, Some(8))),
            DeviceEvent::Admitted
        );
        assert_eq!(
            admit(&hardware(DeviceKind::Cpu, 1 << 30, Some(1))),
            DeviceEvent::Rejected
        );
    }
}
