//! `xtask gpu-live --flotilla PATH`: the whole network on a machine with a real NVIDIA GPU,
//! checked end to end through the real binary. Runs `flotilla dev` with one worker, then
//! checks, each on its own (a failed check does not hide the later ones):
//!
//! - the worker found the GPU through NVML (model, memory, driver, CUDA capability);
//! - the coordinator challenged it as its own class and the CUDA prover passed: the device
//!   leaves `pending` for `idle`, with a passed proof on record;
//! - telemetry comes from NVML (temperature and power present);
//! - a renter's one-node job placed on that GPU sees it inside the sandbox (`nvidia-smi -L`
//!   prints the GPU's UUID) and completes.
//!
//! Prints one JSON object last; exits non-zero when a check failed. `cargo xtask gpu-check`
//! builds the binaries and a script that runs this on the GPU machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_client::Client;
use flotilla_proto::api::{ClusterInfo, ClusterSpec, Device, DeviceDetail, LogPage, Page};
use flotilla_proto::device::{DeviceKind, DeviceState, model_key};
use serde_json::{Value, json};

/// How long the dev network may take to write its keys.
const START_S_MAX: u64 = 60;
/// How long the GPU may take to appear and pass (or fail) its proof.
const PROOF_S_MAX: u64 = 240;
/// How long telemetry with NVML's figures may take to arrive.
const TELEMETRY_S_MAX: u64 = 30;
/// How long the job may take from deploy to its end.
const JOB_S_MAX: u64 = 180;
const POLL_MS: u64 = 500;
/// The job: the GPUs the sandbox lets it see.
const JOB_SCRIPT: &str = "nvidia-smi -L; ls /dev/nvidia*";

/// The dev network, stopped when dropped.
struct Dev {
    child: Child,
    data: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One check's outcome: passed, with what it saw.
struct Check {
    name: &'static str,
    outcome: Result<Value>,
}

pub fn run(args: &[String]) -> Result<()> {
    let flotilla = match args {
        [flag, path] if flag == "--flotilla" => PathBuf::from(path),
        _ => bail!("usage: xtask gpu-live --flotilla PATH"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let checks = runtime.block_on(live(&flotilla))?;
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.outcome.is_err())
        .map(|c| c.name)
        .collect();
    let report: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|check| {
            let value = check
                .outcome
                .unwrap_or_else(|error| json!({ "failed": format!("{error:#}") }));
            (check.name.to_owned(), value)
        })
        .collect();
    println!("{}", json!({ "gpu_live": report, "failed": failed }));
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn live(flotilla: &Path) -> Result<Vec<Check>> {
    let dev = start_dev(flotilla)?;
    let (url, renter_key, supplier_key) = dev_keys(&dev.data).await?;
    let supplier = Client::new(&url, Some(supplier_key));
    let renter = Client::new(&url, Some(renter_key));
    let mut checks = Vec::new();
    let gpu = until_proven(&supplier).await;
    let Ok(gpu) = gpu else {
        checks.push(Check {
            name: "detected_and_proven",
            outcome: gpu.map(|_| Value::Null),
        });
        print_log_tail(&dev.data);
        return Ok(checks);
    };
    checks.push(Check {
        name: "detected_and_proven",
        outcome: proven(&supplier, &gpu).await,
    });
    checks.push(Check {
        name: "telemetry",
        outcome: telemetry(&supplier, &gpu.id).await,
    });
    checks.push(Check {
        name: "job_sees_the_gpu",
        outcome: job_on(&renter, &gpu).await,
    });
    if checks.iter().any(|c| c.outcome.is_err()) {
        print_log_tail(&dev.data);
    }
    Ok(checks)
}

fn start_dev(flotilla: &Path) -> Result<Dev> {
    let data = std::env::temp_dir().join(format!("flotilla-gpu-live-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(data.join("dev.log"))?;
    let child = Command::new(flotilla)
        .arg("dev")
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .env("FLOTILLA_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} dev", flotilla.display()))?;
    Ok(Dev { child, data })
}

/// The coordinator's URL and the demo renter's and supplier's keys, once dev.env is written.
async fn dev_keys(data: &Path) -> Result<(String, String, String)> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(data.join("dev.env")).unwrap_or_default();
        let value = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if let (Some(url), Some(renter), Some(supplier)) = (
            value("FLOTILLA_URL"),
            value("FLOTILLA_API_KEY"),
            value("FLOTILLA_SUPPLIER_API_KEY"),
        ) {
            return Ok((url, renter, supplier));
        }
        if started.elapsed() > Duration::from_secs(START_S_MAX) {
            print_log_tail(data);
            bail!("flotilla dev wrote no dev.env in {START_S_MAX} s");
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// The real GPU device once its proof is decided (it left `pending`).
async fn until_proven(supplier: &Client) -> Result<Device> {
    let started = Instant::now();
    loop {
        let devices: Page<Device> = supplier.get("devices").await?;
        let real_gpu = devices
            .items
            .into_iter()
            .find(|d| d.kind == DeviceKind::Gpu && !d.simulated);
        match real_gpu {
            Some(gpu) if gpu.state != DeviceState::Pending => return Ok(gpu),
            _ if started.elapsed() > Duration::from_secs(PROOF_S_MAX) => {
                bail!("no real GPU left pending in {PROOF_S_MAX} s")
            }
            _ => tokio::time::sleep(Duration::from_millis(POLL_MS)).await,
        }
    }
}

/// What NVML reported and the proof on record; an error unless the GPU is idle (verified).
async fn proven(supplier: &Client, gpu: &Device) -> Result<Value> {
    let proofs: Value = supplier
        .get(&format!("proofs?device_id={}", gpu.id))
        .await?;
    let seen = json!({
        "model": gpu.model,
        "memory_bytes": gpu.memory_bytes,
        "state": gpu.state,
        "hardware": gpu.hardware,
        "proofs": proofs["items"],
    });
    if gpu.state != DeviceState::Idle {
        bail!("the GPU is {:?}, not idle: {seen}", gpu.state);
    }
    Ok(seen)
}

/// Telemetry with NVML's temperature and power.
async fn telemetry(supplier: &Client, device_id: &str) -> Result<Value> {
    let started = Instant::now();
    loop {
        let DeviceDetail { device, .. } = supplier.get(&format!("devices/{device_id}")).await?;
        if let Some(sample) = &device.telemetry
            && sample.temperature_c.is_some()
            && sample.power_w.is_some()
        {
            return Ok(serde_json::to_value(sample)?);
        }
        if started.elapsed() > Duration::from_secs(TELEMETRY_S_MAX) {
            bail!(
                "no telemetry with temperature and power: {:?}",
                device.telemetry
            );
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// A one-node job on the GPU's model: completes, and its output names the GPU's UUID.
async fn job_on(renter: &Client, gpu: &Device) -> Result<Value> {
    let mut spec = ClusterSpec::new(
        "gpu-live",
        1,
        vec!["sh".into(), "-c".into(), JOB_SCRIPT.into()],
    );
    spec.query = format!("gpu={}", model_key(gpu.kind, &gpu.model));
    let deployed: ClusterInfo = renter.post("clusters", &spec).await?;
    let started = Instant::now();
    let info = loop {
        let info: ClusterInfo = renter.get(&format!("clusters/{}", deployed.id)).await?;
        if matches!(info.state.as_str(), "completed" | "failed" | "expired") {
            break info;
        }
        if started.elapsed() > Duration::from_secs(JOB_S_MAX) {
            bail!("the job is still {} after {JOB_S_MAX} s", info.state);
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    let logs: LogPage = renter
        .get(&format!("clusters/{}/logs", deployed.id))
        .await?;
    let output: String = logs.lines.iter().map(|line| line.text.as_str()).collect();
    let seen = json!({
        "state": info.state,
        "deploy_to_end_ms": started.elapsed().as_millis() as u64,
        "output": output,
    });
    if info.state != "completed" || !output.contains(&gpu.hardware.hardware_id) {
        bail!("the job did not see {}: {seen}", gpu.hardware.hardware_id);
    }
    Ok(seen)
}

/// The dev network's last log lines, to stderr, for a failure's cause.
fn print_log_tail(data: &Path) {
    const LINES: usize = 60;
    let log = std::fs::read_to_string(data.join("dev.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- flotilla dev's log, last {LINES} lines ---");
    for line in &lines[lines.len().saturating_sub(LINES)..] {
        eprintln!("{line}");
    }
}
