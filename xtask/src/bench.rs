//! `cargo xtask bench heartbeat`: many simulated workers, each with its own key and signed
//! session, heartbeating against one release-built coordinator on SQLite. Measures the
//! coordinator's CPU and memory from /proc, and heartbeats from its own metrics. The last line
//! printed is one JSON object.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use flotilla_client::{Client, control_channel_url};
use flotilla_proto::api::{
    CreateEnrollmentTokenRequest, CreatedEnrollmentToken, EnrollRequest, EnrollResponse, Role,
};
use flotilla_proto::device::{DeviceHardware, DeviceKind, DeviceTelemetry};
use flotilla_proto::wire::{Envelope, ServerMessage, WorkerMessage, sign_enrollment};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{cargo, run as run_command};

const HEARTBEAT_INTERVAL_MS: u64 = 10_000;
/// Enrollments and session openings in flight at once.
const SETUP_CONCURRENCY: usize = 32;
/// Client-side socket buffer, kept small so 10,000 sessions fit in the bench process.
const CLIENT_BUFFER_BYTES: usize = 4 * 1024;
/// CPU of the idle coordinator is measured over this long before workers connect.
const BASELINE_S: u64 = 5;

struct Options {
    workers: usize,
    measure_s: u64,
    warmup_s: u64,
}

fn parse(args: &[String]) -> Result<Options> {
    if args.first().map(String::as_str) != Some("heartbeat") {
        bail!("usage: cargo xtask bench heartbeat [--workers N] [--measure-s S] [--warmup-s S]");
    }
    let mut options = Options {
        workers: 10_000,
        measure_s: 30,
        warmup_s: 12,
    };
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value: u64 = rest
            .next()
            .context("flag needs a value")?
            .parse()
            .context("flag value must be a number")?;
        match flag.as_str() {
            "--workers" => options.workers = usize::try_from(value)?,
            "--measure-s" => options.measure_s = value,
            "--warmup-s" => options.warmup_s = value,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    run_command(cargo().args(["build", "--release", "--bin", "flotilla"]))?;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(heartbeat(options))
}

struct Coordinator {
    child: Child,
    url: String,
    _dir: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_coordinator() -> Result<Coordinator> {
    let dir = std::env::temp_dir().join(format!("flotilla-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut command = Command::new(Path::new("target/release/flotilla"));
    command
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--allow-simulated-devices",
        ])
        .arg("--database")
        .arg(format!("sqlite:{}", dir.join("bench.db").display()))
        .args([
            "--heartbeat-interval-ms",
            &HEARTBEAT_INTERVAL_MS.to_string(),
            "--heartbeat-grace-ms",
            "30000",
        ])
        .args([
            "--enroll-rate-per-minute",
            "100000000",
            "--token-create-rate-per-minute",
            "100000000",
        ])
        // The simulated workers do not answer proof-of-compute challenges: the smallest target
        // lets those deadlines pass (devices blocked) before the measurement starts.
        .args(["--proof-target-ms", "10"])
        .env("FLOTILLA_LOG", "warn");
    let (child, url) = crate::spawn_coordinator(&mut command)?;
    Ok(Coordinator {
        child,
        url,
        _dir: dir,
    })
}

/// (CPU seconds used, resident bytes) of a process.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok((ticks as f64 / clock_ticks_per_s(), rss_kib * 1024))
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

async fn heartbeats_total(client: &Client) -> Result<f64> {
    let text = reqwest_text(&format!("{}/metrics", client.base_url())).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("flotilla_worker_heartbeats_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("heartbeat counter in /metrics")
}

async fn reqwest_text(url: &str) -> Result<String> {
    // The typed client decodes JSON only; metrics are text, so read them over a raw socket.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http url")?;
    let (host, path) = rest.split_once('/').context("path")?;
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

struct Enrolled {
    worker_id: String,
    key: SigningKey,
}

async fn enroll_all(client: &Client, supplier: &Client, count: usize) -> Result<Vec<Enrolled>> {
    let permits = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let (client, supplier, permits) = (client.clone(), supplier.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await?;
            let token: CreatedEnrollmentToken = supplier
                .post(
                    "enrollment-tokens",
                    &CreateEnrollmentTokenRequest {
                        name: None,
                        expires_in_s: None,
                    },
                )
                .await?;
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
            seed[8] = 0xf1;
            let key = SigningKey::from_bytes(&seed);
            let (public_key, signature) = sign_enrollment(&key, &token.secret);
            let request = EnrollRequest {
                token: token.secret,
                public_key,
                signature,
                hostname: format!("bench-{index}"),
            };
            let enrolled: EnrollResponse = client.post("workers/enroll", &request).await?;
            anyhow::Ok(Enrolled {
                worker_id: enrolled.worker_id,
                key,
            })
        }));
    }
    let mut enrolled = Vec::with_capacity(count);
    for task in tasks {
        enrolled.push(task.await??);
    }
    Ok(enrolled)
}

fn hardware(index: usize) -> DeviceHardware {
    DeviceHardware {
        simulated: true,
        ..DeviceHardware::new(
            &format!("SIM-bench-{index}"),
            DeviceKind::Gpu,
            "NVIDIA GeForce RTX 4090",
            24 << 30,
        )
    }
}

/// One simulated worker: handshake, then a heartbeat every interval until stopped.
async fn simulated_worker(
    url: String,
    index: usize,
    worker: Enrolled,
    offset_ms: u64,
    connected: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_BUFFER_BYTES)
        .write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(
        control_channel_url(&url),
        Some(config),
        false,
    )
    .await?;
    let next = |message: Option<Result<Message, _>>| -> Result<ServerMessage> {
        match message {
            Some(Ok(Message::Text(text))) => Ok(serde_json::from_str(text.as_str())?),
            other => bail!("unexpected {other:?}"),
        }
    };
    let ServerMessage::Challenge { session_nonce, .. } = next(socket.next().await)? else {
        bail!("challenge expected")
    };
    let nonce = hex::decode(session_nonce)?;
    let hello = WorkerMessage::Hello {
        agent_version: "bench".into(),
        hostname: format!("bench-{index}"),
        devices: vec![hardware(index)],
        containers: false,
    };
    let sealed = Envelope::seal(&worker.key, &nonce, &worker.worker_id, 1, &hello);
    socket
        .send(Message::text(serde_json::to_string(&sealed)?))
        .await?;
    let ServerMessage::Welcome { devices, .. } = next(socket.next().await)? else {
        bail!("welcome expected")
    };
    let device_id = devices.first().context("one device")?.device_id.clone();
    connected.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(offset_ms)).await;
    let mut ticker = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
    let mut seq = 1;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(()),
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str())? {
                    ServerMessage::ProveCompute { .. } => continue,
                    _ => bail!("coordinator said {text}"),
                },
                None | Some(Err(_)) => bail!("connection lost"),
                Some(Ok(_)) => continue,
            },
        }
        seq += 1;
        let sample = DeviceTelemetry {
            device_id: device_id.clone(),
            utilization_pct: (seq % 100) as u8,
            memory_used_bytes: 1 << 30,
            temperature_c: Some(55),
            power_w: Some(300),
            net_rx_bytes: seq * 1000,
            net_tx_bytes: seq * 500,
        };
        let beat = WorkerMessage::Heartbeat {
            sent_at_ms: 0,
            devices: vec![sample],
            running: vec![],
        };
        let sealed = Envelope::seal(&worker.key, &nonce, &worker.worker_id, seq, &beat);
        socket
            .send(Message::text(serde_json::to_string(&sealed)?))
            .await?;
    }
}

async fn heartbeat(options: Options) -> Result<()> {
    let coordinator = start_coordinator()?;
    let pid = coordinator.child.id();
    let client = Client::new(&coordinator.url, None);
    let account = crate::create_account(&client, "bench", Role::Supplier).await?;
    let supplier = client.with_key(&account.api_key.secret);
    let started = Instant::now();
    let enrolled = enroll_all(&client, &supplier, options.workers).await?;
    eprintln!(
        "bench: enrolled {} workers in {:.1} s",
        enrolled.len(),
        started.elapsed().as_secs_f64()
    );

    let (cpu0, rss_idle) = usage(pid)?;
    tokio::time::sleep(Duration::from_secs(BASELINE_S)).await;
    let (cpu1, _) = usage(pid)?;
    let idle_cpu_percent = (cpu1 - cpu0) / BASELINE_S as f64 * 100.0;

    let (stop, stopped) = watch::channel(false);
    let connected = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let count = enrolled.len();
    for (index, worker) in enrolled.into_iter().enumerate() {
        // At most SETUP_CONCURRENCY handshakes in flight.
        while connected.load(Ordering::Relaxed)
            + failures.load(Ordering::Relaxed)
            + (SETUP_CONCURRENCY as u64)
            <= index as u64
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (url, connected, failures, stopped) = (
            coordinator.url.clone(),
            connected.clone(),
            failures.clone(),
            stopped.clone(),
        );
        let offset_ms = (index as u64 * HEARTBEAT_INTERVAL_MS) / count as u64;
        tokio::spawn(async move {
            let stopping = stopped.clone();
            if let Err(error) =
                simulated_worker(url, index, worker, offset_ms, connected, stopped).await
                && !*stopping.borrow()
                && failures.fetch_add(1, Ordering::Relaxed) < 5
            {
                eprintln!("bench: worker {index} failed: {error:#}");
            }
        });
    }
    while connected.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed) < count as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sessions = connected.load(Ordering::Relaxed);
    eprintln!(
        "bench: {sessions} sessions open in {:.1} s; warming up {} s",
        started.elapsed().as_secs_f64(),
        options.warmup_s
    );
    tokio::time::sleep(Duration::from_secs(options.warmup_s)).await;

    let beats0 = heartbeats_total(&client).await?;
    let (cpu0, _) = usage(pid)?;
    let measured = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.measure_s)).await;
    let (cpu1, rss) = usage(pid)?;
    let beats1 = heartbeats_total(&client).await?;
    let elapsed_s = measured.elapsed().as_secs_f64();
    let _ = stop.send(true);

    let cpu_percent = (cpu1 - cpu0) / elapsed_s * 100.0;
    let heartbeats_per_s = (beats1 - beats0) / elapsed_s;
    let rss_per_worker = rss.saturating_sub(rss_idle) / sessions.max(1);
    let expected_per_s = sessions as f64 * 1000.0 / HEARTBEAT_INTERVAL_MS as f64;
    eprintln!(
        "bench: {sessions} workers, {heartbeats_per_s:.0} heartbeats/s (expected {expected_per_s:.0}), coordinator {cpu_percent:.2}% of one core \
         (idle {idle_cpu_percent:.2}%; target < 10%), {rss_per_worker} bytes RSS per worker (target <= 65536), {} failed",
        failures.load(Ordering::Relaxed)
    );
    let figures = serde_json::json!({
        "workers": sessions,
        "heartbeats_per_s": (heartbeats_per_s * 10.0).round() / 10.0,
        "coordinator_cpu_percent": (cpu_percent * 100.0).round() / 100.0,
        "coordinator_rss_bytes_per_worker": rss_per_worker,
        "coordinator_idle_cpu_percent": (idle_cpu_percent * 100.0).round() / 100.0,
        "coordinator_rss_bytes": rss,
        "cpu_ratio_to_target": ((cpu_percent / 10.0) * 1000.0).round() / 1000.0,
        "rss_ratio_to_target": ((rss_per_worker as f64 / 65536.0) * 1000.0).round() / 1000.0,
        "heartbeats_ratio_to_expected": ((heartbeats_per_s / expected_per_s.max(1.0)) * 1000.0).round() / 1000.0,
    });
    println!("{figures}");
    drop(coordinator);
    Ok(())
}
