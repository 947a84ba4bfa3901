//! What a device is: its kind, its lifecycle state, the hardware a worker reports, and the
//! telemetry it sends.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A device's place in its lifecycle. See `flotilla_coordinator::device_state` for the
/// transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Reported but not yet verified.
    Pending,
    /// Verified, up and free to hire.
    Idle,
    /// Running rented work.
    Hired,
    /// Taken off the market by its supplier.
    Paused,
    /// Missed heartbeats past the grace period.
    Down,
    /// Refused for cause (failed proof, fraud).
    Blocked,
    /// Hardware the network does not accept.
    Unsupported,
    /// Down for longer than the inactivity period.
    Inactive,
}

impl DeviceState {
    pub const ALL: [DeviceState; 8] = [
        DeviceState::Pending,
        DeviceState::Idle,
        DeviceState::Hired,
        DeviceState::Paused,
        DeviceState::Down,
        DeviceState::Blocked,
        DeviceState::Unsupported,
        DeviceState::Inactive,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Idle => "idle",
            DeviceState::Hired => "hired",
            DeviceState::Paused => "paused",
            DeviceState::Down => "down",
            DeviceState::Blocked => "blocked",
            DeviceState::Unsupported => "unsupported",
            DeviceState::Inactive => "inactive",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceState> {
        DeviceState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GPU or CPU package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Gpu,
    Cpu,
}

impl DeviceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Gpu => "gpu",
            DeviceKind::Cpu => "cpu",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceKind> {
        match text {
            "gpu" => Some(DeviceKind::Gpu),
            "cpu" => Some(DeviceKind::Cpu),
            _ => None,
        }
    }
}

/// The hardware of one device as its worker detected it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceHardware {
    /// Stable hardware id on its worker: the GPU UUID, or `cpu-0` for the CPU package.
    pub hardware_id: String,
    pub kind: DeviceKind,
    /// Marketing name, e.g. `NVIDIA GeForce RTX 4090`.
    pub model: String,
    /// GPU memory, or host memory for a CPU device.
    pub memory_bytes: u64,
    /// True when the device was made up by `--simulate-gpu`; such devices are refused unless the
    /// coordinator allows them.
    pub simulated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// CUDA compute capability, `major.minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_link_width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<u32>,
    /// Logical cores, for a CPU device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
}

impl DeviceHardware {
    /// A device with only the facts every device has; the optional details start empty.
    pub fn new(
        hardware_id: &str,
        kind: DeviceKind,
        model: &str,
        memory_bytes: u64,
    ) -> DeviceHardware {
        DeviceHardware {
            hardware_id: hardware_id.to_owned(),
            kind,
            model: model.to_owned(),
            memory_bytes,
            simulated: false,
            driver_version: None,
            cuda_capability: None,
            pcie_generation: None,
            pcie_link_width: None,
            power_limit_w: None,
            cores: None,
        }
    }
}

/// One telemetry sample of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceTelemetry {
    pub device_id: String,
    /// 0 to 100.
    pub utilization_pct: u8,
    pub memory_used_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<u32>,
    /// Bytes the host received since the worker started (a counter).
    pub net_rx_bytes: u64,
    /// Bytes the host sent since the worker started (a counter).
    pub net_tx_bytes: u64,
}

/// Known GPU models: name fragments, memory. Used to make simulated devices look like the real
/// thing; proof of compute takes this table over later.
pub const KNOWN_GPU_MODELS: &[(&str, &str, u64)] = &[
    ("rtx4090", "NVIDIA GeForce RTX 4090", 24 * GIB),
    ("rtx3090", "NVIDIA GeForce RTX 3090", 24 * GIB),
    ("rtx4080", "NVIDIA GeForce RTX 4080", 16 * GIB),
    ("a100-80gb", "NVIDIA A100 80GB PCIe", 80 * GIB),
    ("a100", "NVIDIA A100-SXM4-40GB", 40 * GIB),
    ("h100", "NVIDIA H100 80GB HBM3", 80 * GIB),
    ("h200", "NVIDIA H200", 141 * GIB),
    ("l40s", "NVIDIA L40S", 48 * GIB),
    ("b200", "NVIDIA B200", 180 * GIB),
];

const GIB: u64 = 1024 * 1024 * 1024;

/// Finds a known GPU model by a loose name (`RTX 4090`, `rtx4090`, `A100-80GB`).
pub fn known_gpu_model(name: &str) -> Option<(&'static str, u64)> {
    let wanted: String = name
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    KNOWN_GPU_MODELS
        .iter()
        .find(|(key, full, _)| wanted == *key || wanted == full.replace(' ', "").to_lowercase())
        .map(|(_, full, memory)| (*full, *memory))
}

/// The market's key for a device model: the known key (`rtx4090`, `h100`) when the name is a
/// known GPU, `cpu` for CPUs, otherwise the name in lower case with only letters and digits.
pub fn model_key(kind: DeviceKind, name: &str) -> String {
    if kind == DeviceKind::Cpu {
        return "cpu".to_owned();
    }
    let squashed: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    KNOWN_GPU_MODELS
        .iter()
        .find(|(key, full, _)| {
            let full: String = full
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_lowercase();
            squashed == full || squashed == key.replace('-', "")
        })
        .map(|(key, _, _)| (*key).to_owned())
        .unwrap_or_else(|| squashed.trim_start_matches("nvidia").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for (index, state) in DeviceState::ALL.into_iter().enumerate() {
            assert_eq!(DeviceState::parse(state.as_str()), Some(state));
            assert_eq!(
                state as usize, index,
                "ALL lists states in declaration order"
            );
        }
        assert_eq!(DeviceState::parse("bogus"), None);
    }

    #[test]
    fn model_keys_are_the_known_keys() {
        assert_eq!(
            model_key(DeviceKind::Gpu, "NVIDIA GeForce RTX 4090"),
            "rtx4090"
        );
        assert_eq!(model_key(DeviceKind::Gpu, "NVIDIA H100 80GB HBM3"), "h100");
        assert_eq!(
            model_key(DeviceKind::Gpu, "NVIDIA A100 80GB PCIe"),
            "a100-80gb"
        );
        assert_eq!(model_key(DeviceKind::Gpu, "NVIDIA Tesla T4"), "teslat4");
        assert_eq!(model_key(DeviceKind::Cpu, "AMD EPYC 7763"), "cpu");
    }

    #[test]
    fn finds_models_by_loose_name() {
        assert_eq!(known_gpu_model("RTX 4090").unwrap().1, 24 * GIB);
        assert_eq!(known_gpu_model("a100-80GB").unwrap().1, 80 * GIB);
        assert!(known_gpu_model("voodoo2").is_none());
    }
}
