//! Hardware detection and telemetry: NVIDIA GPUs through NVML (no NVML library means no GPUs,
//! not an error), the CPU package from /proc, and simulated GPUs for development.

use std::fs;

use flotilla_proto::device::{DeviceHardware, DeviceKind, DeviceTelemetry, known_gpu_model};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

use crate::WorkerError;

/// Most simulated GPUs one worker may claim.
const SIMULATED_GPUS_MAX: u32 = 16;

/// Parses `--simulate-gpu` specs like `RTX 4090x2` or `h100` into (model, memory, count).
pub fn parse_simulated(spec: &str) -> Result<(String, u64, u32), WorkerError> {
    let spec = spec.trim();
    let (name, count) = match spec.rsplit_once(['x', 'X']) {
        Some((name, count)) if !count.is_empty() && count.chars().all(|c| c.is_ascii_digit()) => {
            (name.trim(), count.parse::<u32>().unwrap_or(0))
        }
        _ => (spec, 1),
    };
    if count == 0 || count > SIMULATED_GPUS_MAX {
        return Err(WorkerError::Config(format!(
            "--simulate-gpu {spec:?}: count must be 1 to {SIMULATED_GPUS_MAX}"
        )));
    }
    let (model, memory_bytes) = known_gpu_model(name).ok_or_else(|| {
        WorkerError::Config(format!(
            "--simulate-gpu {spec:?}: unknown gpu model {name:?}"
        ))
    })?;
    Ok((model.to_owned(), memory_bytes, count))
}

/// Where a device's numbers come from.
#[derive(Debug, Clone)]
enum Source {
    Nvml { index: u32 },
    Cpu,
    Simulated { seed: u64 },
}

/// The devices this machine offers and how to read them.
pub struct Inventory {
    nvml: Option<Nvml>,
    devices: Vec<(DeviceHardware, Source)>,
    cpu_times: Option<(u64, u64)>,
    net_baseline: (u64, u64),
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl Inventory {
    /// Detects real GPUs (if `real_gpus`) and the CPU (if `cpu_device`), and adds the
    /// simulated GPUs. `identity_seed` makes simulated hardware ids stable for one worker key.
    pub fn detect(
        simulate: &[String],
        real_gpus: bool,
        cpu_device: bool,
        identity_seed: &[u8],
    ) -> Result<Inventory, WorkerError> {
        let mut devices = Vec::new();
        let nvml = if real_gpus { init_nvml() } else { None };
        if let Some(nvml) = &nvml {
            devices.extend(detect_nvml(nvml));
        }
        if cpu_device {
            devices.push((detect_cpu(), Source::Cpu));
        }
        let mut index = 0u64;
        for spec in simulate {
            let (model, memory_bytes, count) = parse_simulated(spec)?;
            for _ in 0..count {
                let seed = simulated_seed(identity_seed, index);
                devices.push((
                    simulated_gpu(&model, memory_bytes, seed),
                    Source::Simulated { seed },
                ));
                index += 1;
            }
        }
        Ok(Inventory {
            nvml,
            devices,
            cpu_times: read_cpu_times(),
            net_baseline: read_net_bytes(),
        })
    }

    pub fn hardware(&self) -> Vec<DeviceHardware> {
        self.devices
            .iter()
            .map(|(hardware, _)| hardware.clone())
            .collect()
    }

    /// The GPU index (NVML's) of each device the coordinator gave an id to, by device id. CPU
    /// and simulated devices are there with none: a node holding them sees no GPU.
    pub fn gpu_indices(
        &self,
        device_ids: &[(String, String)],
    ) -> std::collections::HashMap<String, Option<u32>> {
        device_ids
            .iter()
            .filter_map(|(hardware_id, device_id)| {
                let (_, source) = self
                    .devices
                    .iter()
                    .find(|(hardware, _)| hardware.hardware_id == *hardware_id)?;
                let index = match source {
                    Source::Nvml { index } => Some(*index),
                    Source::Cpu | Source::Simulated { .. } => None,
                };
                Some((device_id.clone(), index))
            })
            .collect()
    }

    /// One telemetry sample per device, for the devices the coordinator gave ids to.
    pub fn sample(&mut self, device_ids: &[(String, String)], now_ms: i64) -> Vec<DeviceTelemetry> {
        let (rx_now, tx_now) = read_net_bytes();
        let net_rx_bytes = rx_now.saturating_sub(self.net_baseline.0);
        let net_tx_bytes = tx_now.saturating_sub(self.net_baseline.1);
        let cpu_utilization_pct = self.cpu_utilization_pct();
        let mut samples = Vec::with_capacity(device_ids.len());
        for (hardware, source) in &self.devices {
            let Some((_, device_id)) = device_ids
                .iter()
                .find(|(hw, _)| *hw == hardware.hardware_id)
            else {
                continue;
            };
            let (utilization_pct, memory_used_bytes, temperature_c, power_w) = match source {
                Source::Nvml { index } => self.nvml_sample(*index),
                Source::Cpu => (
                    cpu_utilization_pct,
                    host_memory_used_bytes(),
                    cpu_temperature_c(),
                    None,
                ),
                Source::Simulated { seed } => {
                    simulated_sample(*seed, hardware.memory_bytes, now_ms)
                }
            };
            samples.push(DeviceTelemetry {
                device_id: device_id.clone(),
                utilization_pct,
                memory_used_bytes,
                temperature_c,
                power_w,
                net_rx_bytes,
                net_tx_bytes,
            });
        }
        samples
    }

    fn nvml_sample(&self, index: u32) -> (u8, u64, Option<i16>, Option<u32>) {
        let Some(device) = self
            .nvml
            .as_ref()
            .and_then(|nvml| nvml.device_by_index(index).ok())
        else {
            return (0, 0, None, None);
        };
        let utilization = device
            .utilization_rates()
            .map(|u| u.gpu.min(100) as u8)
            .unwrap_or(0);
        let memory_used = device.memory_info().map(|m| m.used).unwrap_or(0);
        let temperature = device
            .temperature(TemperatureSensor::Gpu)
            .ok()
            .and_then(|t| i16::try_from(t).ok());
        let power = device.power_usage().ok().map(|mw| mw / 1000);
        (utilization, memory_used, temperature, power)
    }

    fn cpu_utilization_pct(&mut self) -> u8 {
        let now = read_cpu_times();
        let pct = match (self.cpu_times, now) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                ((busy1.saturating_sub(busy0)) * 100 / (total1 - total0)).min(100) as u8
            }
            _ => 0,
        };
        self.cpu_times = now;
        pct
    }
}

fn init_nvml() -> Option<Nvml> {
    Nvml::init()
        .inspect_err(|error| tracing::info!(%error, "no NVIDIA driver found; no real GPUs offered"))
        .ok()
}

fn detect_nvml(nvml: &Nvml) -> Vec<(DeviceHardware, Source)> {
    let driver_version = nvml.sys_driver_version().ok();
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let hardware = DeviceHardware {
                hardware_id: device.uuid().ok()?,
                kind: DeviceKind::Gpu,
                model: device
                    .name()
                    .unwrap_or_else(|_| "unknown NVIDIA GPU".to_owned()),
                memory_bytes: device.memory_info().map(|m| m.total).unwrap_or(0),
                simulated: false,
                driver_version: driver_version.clone(),
                cuda_capability: device
                    .cuda_compute_capability()
                    .ok()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
                pcie_generation: device.current_pcie_link_gen().ok(),
                pcie_link_width: device.current_pcie_link_width().ok(),
                power_limit_w: device.power_management_limit().ok().map(|mw| mw / 1000),
                cores: None,
            };
            Some((hardware, Source::Nvml { index }))
        })
        .collect()
}

fn detect_cpu() -> DeviceHardware {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    DeviceHardware {
        cores: Some(cores),
        ..DeviceHardware::new(
            "cpu-0",
            DeviceKind::Cpu,
            &model,
            meminfo_kib("MemTotal:").unwrap_or(0) * 1024,
        )
    }
}

fn simulated_seed(identity_seed: &[u8], index: u64) -> u64 {
    // FNV-1a over the identity and index: stable per worker, distinct per device.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity_seed.iter().chain(index.to_le_bytes().iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn simulated_gpu(model: &str, memory_bytes: u64, seed: u64) -> DeviceHardware {
    let cuda_capability = if model.contains("H100") || model.contains("H200") {
        "9.0"
    } else {
        "8.9"
    };
    DeviceHardware {
        simulated: true,
        driver_version: Some("simulated".to_owned()),
        cuda_capability: Some(cuda_capability.to_owned()),
        pcie_generation: Some(4),
        pcie_link_width: Some(16),
        power_limit_w: Some(450),
        ..DeviceHardware::new(
            &format!("SIM-{seed:016x}"),
            DeviceKind::Gpu,
            model,
            memory_bytes,
        )
    }
}

/// A plausible, slowly varying load for a simulated GPU.
fn simulated_sample(
    seed: u64,
    memory_bytes: u64,
    now_ms: i64,
) -> (u8, u64, Option<i16>, Option<u32>) {
    let phase = (now_ms / 1000).unsigned_abs().wrapping_add(seed % 97);
    let utilization = (phase * 7 % 101) as u8;
    let memory_used = memory_bytes / 100 * u64::from(utilization / 2 + 5);
    let temperature = 35 + i16::from(utilization) * 45 / 100;
    let power = 60 + u32::from(utilization) * 3;
    (utilization, memory_used, Some(temperature), Some(power))
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

fn host_memory_used_bytes() -> u64 {
    let total = meminfo_kib("MemTotal:").unwrap_or(0);
    let available = meminfo_kib("MemAvailable:").unwrap_or(total);
    total.saturating_sub(available) * 1024
}

fn cpu_temperature_c() -> Option<i16> {
    let text = fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    let millidegrees: i32 = text.trim().parse().ok()?;
    i16::try_from(millidegrees / 1000).ok()
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn read_cpu_times() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Bytes received and sent on every interface but loopback.
fn read_net_bytes() -> (u64, u64) {
    let text = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    parse_net_dev(&text)
}

fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let fields: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            Some((*fields.first()?, *fields.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_specs_parse() {
        let (model, memory, count) = parse_simulated("RTX 4090x2").unwrap();
        assert_eq!(
            (model.as_str(), memory, count),
            ("NVIDIA GeForce RTX 4090", 24 << 30, 2)
        );
        assert_eq!(parse_simulated("h100").unwrap().2, 1);
        assert_eq!(parse_simulated("A100-80GB x4").unwrap().2, 4);
        assert!(parse_simulated("RTX 4090x0").is_err());
        assert!(parse_simulated("voodoo x2").is_err());
        assert!(parse_simulated("RTX 4090x99").is_err());
    }

    #[test]
    fn simulated_devices_are_marked_and_stable() {
        let a = Inventory::detect(&["RTX 4090x2".into()], false, false, b"key-a")
            .unwrap()
            .hardware();
        let again = Inventory::detect(&["RTX 4090x2".into()], false, false, b"key-a")
            .unwrap()
            .hardware();
        let b = Inventory::detect(&["RTX 4090x2".into()], false, false, b"key-b")
            .unwrap()
            .hardware();
        let simulated: Vec<_> = a.iter().filter(|d| d.simulated).collect();
        assert_eq!(simulated.len(), 2);
        assert_ne!(simulated[0].hardware_id, simulated[1].hardware_id);
        assert_eq!(a, again);
        assert!(a.iter().filter(|d| d.simulated).all(|d| !b.contains(d)));
    }

    #[test]
    fn cpu_is_detected_from_proc() {
        let cpu = detect_cpu();
        assert_eq!(cpu.kind, DeviceKind::Cpu);
        assert!(cpu.cores.unwrap() >= 1);
        assert!(cpu.memory_bytes > 0);
    }

    #[test]
    fn net_dev_skips_loopback() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n  eth0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), (10, 20));
    }
}
