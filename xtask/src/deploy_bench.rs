//! `cargo xtask bench deploy`: a release-built coordinator and nine workers on loopback (one
//! simulated GPU each, nodes run in the real sandbox). Deploys an 8-node cluster again and
//! again and measures deploy to running (every node's command started); then kills (SIGKILL)
//! the worker of one node of a running cluster and measures until that node runs again
//! elsewhere, less the heartbeat grace. The last line printed is one JSON object.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_client::Client;
use flotilla_proto::api::{
    ClusterInfo, ClusterSpec, CreateEnrollmentTokenRequest, CreatedEnrollmentToken, Device,
    FaucetRequest, Page, Role, SetPriceRequest,
};
use flotilla_proto::device::DeviceState;

use crate::{cargo, run as run_command};

const NODES: u32 = 8;
/// One spare worker, for the replacement.
const WORKERS: usize = NODES as usize + 1;
const HEARTBEAT_INTERVAL_MS: u64 = 200;
const HEARTBEAT_GRACE_MS: u64 = 1_000;
/// How often the bench polls a cluster's state.
const POLL_MS: u64 = 5;
const DEPLOYS_DEFAULT: usize = 20;

struct Procs {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let deploys = match args {
        [] => DEPLOYS_DEFAULT,
        [flag, value] if flag == "--deploys" => value.parse().context("--deploys N")?,
        _ => bail!("usage: cargo xtask bench deploy [--deploys N]"),
    };
    if Command::new("bwrap").arg("--version").output().is_err() {
        bail!("bubblewrap is not installed (apt-get install -y bubblewrap): nodes cannot run");
    }
    run_command(cargo().args(["build", "--release", "--bin", "flotilla"]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(deploys))
}

fn binary() -> &'static Path {
    Path::new("target/release/flotilla")
}

fn start_coordinator(procs: &mut Procs) -> Result<String> {
    let mut command = Command::new(binary());
    command
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--allow-simulated-devices",
            "--faucet",
        ])
        .arg("--database")
        .arg(format!("sqlite:{}", procs.dir.join("bench.db").display()))
        .args([
            "--heartbeat-interval-ms",
            &HEARTBEAT_INTERVAL_MS.to_string(),
        ])
        .args(["--heartbeat-grace-ms", &HEARTBEAT_GRACE_MS.to_string()])
        .args(["--proof-target-ms", "20", "--proof-memory-pct", "1"])
        .env("FLOTILLA_LOG", "warn");
    let (child, url) = crate::spawn_coordinator(&mut command)?;
    procs.children.push(child);
    Ok(url)
}

fn start_worker(procs: &mut Procs, url: &str, token: &str, index: usize) -> Result<()> {
    let data = procs.dir.join(format!("worker-{index}"));
    std::fs::create_dir_all(&data)?;
    // The sandbox runs as nobody, which must pass through to the run directories.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let child = Command::new(binary())
        .args([
            "worker",
            "--coordinator",
            url,
            "--no-cpu",
            "--no-gpus",
            "--simulate-gpu",
            "H100x1",
        ])
        .args(["--token", token])
        .arg("--data")
        .arg(&data)
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting a worker")?;
    procs.children.push(child);
    Ok(())
}

async fn account(client: &Client, name: &str, role: Role) -> Result<Client> {
    let created = crate::create_account(client, name, role).await?;
    Ok(client.with_key(&created.api_key.secret))
}

/// Waits for every worker's device to prove itself, then prices it.
async fn price_devices(supplier: &Client) -> Result<()> {
    let started = Instant::now();
    loop {
        let page: Page<Device> = supplier.get("devices").await?;
        let idle: Vec<&Device> = page
            .items
            .iter()
            .filter(|d| d.state == DeviceState::Idle)
            .collect();
        if idle.len() >= WORKERS {
            for device in idle {
                let _: Device = supplier
                    .post(
                        &format!("devices/{}/price", device.id),
                        &SetPriceRequest {
                            price_per_hour: Some(2_000_000),
                        },
                    )
                    .await?;
            }
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {} of {WORKERS} devices proved themselves", idle.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn service() -> ClusterSpec {
    ClusterSpec {
        kind: "service".into(),
        ..ClusterSpec::new("bench", NODES, vec!["sleep".into(), "3600".into()])
    }
}

/// Polls a cluster until `done` says so; the cluster as last seen.
async fn until(
    renter: &Client,
    id: &str,
    limit: Duration,
    done: impl Fn(&ClusterInfo) -> bool,
) -> Result<ClusterInfo> {
    let started = Instant::now();
    loop {
        let info: ClusterInfo = renter.get(&format!("clusters/{id}")).await?;
        if done(&info) {
            return Ok(info);
        }
        if started.elapsed() > limit {
            bail!(
                "cluster {id} stuck in {} ({:?})",
                info.state,
                info.ended_because
            );
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

async fn deploy_once(renter: &Client) -> Result<(f64, ClusterInfo)> {
    let started = Instant::now();
    let cluster: ClusterInfo = renter.post("clusters", &service()).await?;
    let running = until(renter, &cluster.id, Duration::from_secs(30), |c| {
        c.state == "running"
    })
    .await?;
    Ok((started.elapsed().as_secs_f64() * 1_000.0, running))
}

async fn terminate(renter: &Client, id: &str) -> Result<()> {
    let _: ClusterInfo = renter
        .post_empty(&format!("clusters/{id}/terminate"))
        .await?;
    Ok(())
}

fn percentile(sorted: &[f64], pct: usize) -> f64 {
    let index = (sorted.len() * pct).div_ceil(100).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

async fn bench(deploys: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("flotilla-deploy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut procs = Procs {
        children: Vec::new(),
        dir,
    };
    let url = start_coordinator(&mut procs)?;
    let anonymous = Client::new(&url, None);
    let supplier = account(&anonymous, "supplier", Role::Supplier).await?;
    let renter = account(&anonymous, "renter", Role::Renter).await?;
    for index in 0..WORKERS {
        let token: CreatedEnrollmentToken = supplier
            .post(
                "enrollment-tokens",
                &CreateEnrollmentTokenRequest {
                    name: None,
                    expires_in_s: None,
                },
            )
            .await?;
        start_worker(&mut procs, &url, &token.secret, index)?;
    }
    price_devices(&supplier).await?;
    let _: serde_json::Value = renter
        .post_idempotent(
            "wallet/faucet",
            &FaucetRequest {
                token: "IOSD".into(),
                amount_micros: 10_000_000_000,
            },
            "bench",
        )
        .await?;

    let mut latencies_ms = Vec::with_capacity(deploys);
    for _ in 0..deploys {
        let (ms, cluster) = deploy_once(&renter).await?;
        latencies_ms.push(ms);
        terminate(&renter, &cluster.id).await?;
    }
    latencies_ms.sort_by(f64::total_cmp);
    eprintln!("deploy to running, ms: {latencies_ms:?}");

    let (_, cluster) = deploy_once(&renter).await?;
    let victim = cluster.nodes[0].worker_id.clone();
    let index = worker_index(&procs.dir, &victim)?;
    // Child 0 is the coordinator.
    procs.children[index + 1].kill()?;
    let killed = Instant::now();
    until(&renter, &cluster.id, Duration::from_secs(60), |c| {
        c.nodes[0].attempt == 2 && c.nodes[0].state == "running"
    })
    .await?;
    let failover_ms = killed.elapsed().as_secs_f64() * 1_000.0 - HEARTBEAT_GRACE_MS as f64;
    terminate(&renter, &cluster.id).await?;

    let result = serde_json::json!({
        "bench": "deploy",
        "nodes": NODES,
        "deploys": deploys,
        "deploy_to_running_p50_ms": percentile(&latencies_ms, 50).round(),
        "deploy_to_running_p99_ms": percentile(&latencies_ms, 99).round(),
        "failover_ms": failover_ms.round(),
        "heartbeat_grace_ms": HEARTBEAT_GRACE_MS,
        "targets": {"deploy_to_running_p50_ms": 1000, "failover_ms": 2000},
    });
    println!("{result}");
    Ok(())
}

/// Which worker process (by start order) enrolled as `worker_id`.
fn worker_index(dir: &Path, worker_id: &str) -> Result<usize> {
    for index in 0..WORKERS {
        let path = dir.join(format!("worker-{index}")).join("enrollment.json");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(worker_id) {
            return Ok(index);
        }
    }
    bail!("no worker process enrolled as {worker_id}")
}
