//! The Ray part of `cargo xtask bench mesh`: how long a 2-node Ray cluster takes from deploy
//! to its head saying every node joined, on a release-built `flotilla dev` (whose second and
//! third workers hold H100s: a cluster's nodes share a model and go to distinct workers) and
//! Ray's environment made beforehand (the test command's, under `target/test-tools`). Needs
//! root (nodes get a mesh) and bubblewrap. With `FLOTILLA_BENCH_RAY_LOGS` set, both nodes'
//! output up to the ready line follows the figures, with Ray's own timestamps.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_client::Client;
use flotilla_proto::api::{ClusterInfo, ClusterSpec, LogPage, OffersResponse};

/// What the head prints once every node joined (`flotilla_worker::ray`'s supervisor).
const READY_LINE: &str = "cluster ready: 2 of 2";
/// How long the cluster may take to be ready before the bench gives up.
const READY_LIMIT_S: u64 = 300;
/// How long the dev network may take to offer both workers' devices.
const SUPPLY_LIMIT_S: u64 = 120;
const POLL_MS: u64 = 100;
/// The model the cluster asks for, as the search language and as offers name it.
const MODEL_QUERY: &str = "gpu=h100";
const MODEL_NAMED: &str = "h100";
/// How long `flotilla dev` gets to stop its workers (and their nodes) after Ctrl-C.
const STOP_LIMIT_MS: u64 = 15_000;

/// Milliseconds from deploy to a whole 2-node Ray cluster; None without Ray's environment.
pub fn cluster_ready_ms() -> Result<Option<f64>> {
    let Some(ray_dir) = crate::ensure_ray() else {
        return Ok(None);
    };
    crate::run(crate::cargo().args(["build", "--release", "--bin", "flotilla"]))?;
    let data = std::env::temp_dir().join(format!("flotilla-ray-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let dev = Dev::start(&data, &ray_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = runtime.block_on(measure(&data));
    drop(dev);
    let _ = std::fs::remove_dir_all(&data);
    measured.map(Some)
}

/// `flotilla dev` with three workers; stopped with Ctrl-C when dropped, so that its workers end
/// their nodes and remove their namespaces.
struct Dev(Child);

impl Dev {
    fn start(data: &Path, ray_dir: &Path) -> Result<Dev> {
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/flotilla");
        let child = Command::new(binary)
            .args(["dev", "--listen", "127.0.0.1:0", "--workers", "3"])
            .arg("--data")
            .arg(data)
            .arg("--ray-dir")
            .arg(ray_dir)
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting flotilla dev")?;
        Ok(Dev(child))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_millis(STOP_LIMIT_MS);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn measure(data: &Path) -> Result<f64> {
    let renter = renter_when_supplied(data).await?;
    let spec = ClusterSpec {
        kind: "ray".into(),
        cpus: Some(1),
        query: MODEL_QUERY.into(),
        ..ClusterSpec::new("bench-ray", 2, Vec::new())
    };
    let started = Instant::now();
    let cluster: ClusterInfo = renter.post("clusters", &spec).await?;
    let ready = until_ready(&renter, &cluster.id).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1_000.0;
    let _: ClusterInfo = renter
        .post_empty(&format!("clusters/{}/terminate", cluster.id))
        .await?;
    ready?;
    eprintln!("bench: a 2-node Ray cluster was ready {elapsed_ms:.0} ms after deploy");
    Ok(elapsed_ms)
}

/// The demo renter, once two dev workers offer the model.
async fn renter_when_supplied(data: &Path) -> Result<Client> {
    let started = Instant::now();
    loop {
        if let Some((url, key)) = dev_env(data) {
            let offers: Option<OffersResponse> = Client::new(&url, None).get("offers").await.ok();
            let workers: std::collections::BTreeSet<String> = offers
                .into_iter()
                .flat_map(|o| o.offers)
                .filter(|offer| offer.model.eq_ignore_ascii_case(MODEL_NAMED))
                .map(|offer| offer.worker_id)
                .collect();
            if workers.len() >= 2 {
                return Ok(Client::new(&url, Some(key)));
            }
        }
        if started.elapsed() > Duration::from_secs(SUPPLY_LIMIT_S) {
            bail!("no two dev workers offered an {MODEL_NAMED} in {SUPPLY_LIMIT_S} s");
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// The coordinator's URL and the renter's key, from `dev.env`.
fn dev_env(data: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(data.join("dev.env")).ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some((value("FLOTILLA_URL")?, value("FLOTILLA_API_KEY")?))
}

/// What the nodes print at each step of a Ray cluster's start: (step, rank, text). A step
/// whose line did not reach the logs by the end is left out of the report.
const PHASES: [(&str, u32, &str); 4] = [
    (
        "worker joining (the head's GCS answers)",
        1,
        "joining the head at",
    ),
    ("head's ray start done", 0, "Ray runtime started"),
    ("worker joined", 1, "joined the Ray cluster at"),
    ("ready", 0, READY_LINE),
];

async fn until_ready(renter: &Client, cluster_id: &str) -> Result<()> {
    let started = Instant::now();
    let mut after = 0;
    // Each rank's output so far: chunks need not end at line ends.
    let mut output = [String::new(), String::new()];
    let mut seen_ms: [Option<u128>; PHASES.len()] = [None; PHASES.len()];
    loop {
        let page: LogPage = renter
            .get(&format!("clusters/{cluster_id}/logs?after={after}"))
            .await?;
        after = page.next_after;
        for line in &page.lines {
            if let Some(text) = output.get_mut(line.node_rank as usize) {
                text.push_str(&line.text);
            }
        }
        for (seen, (_, rank, needle)) in seen_ms.iter_mut().zip(PHASES) {
            if seen.is_none() && output[rank as usize].contains(needle) {
                *seen = Some(started.elapsed().as_millis());
            }
        }
        if seen_ms[PHASES.len() - 1].is_some() {
            let steps: Vec<String> = PHASES
                .iter()
                .zip(seen_ms)
                .filter_map(|((step, _, _), ms)| Some(format!("{step} {}", ms?)))
                .collect();
            eprintln!("bench: Ray start, ms after deploy: {}", steps.join(", "));
            if std::env::var_os("FLOTILLA_BENCH_RAY_LOGS").is_some() {
                for (rank, text) in output.iter().enumerate() {
                    eprintln!("--- rank {rank} ---\n{text}");
                }
            }
            return Ok(());
        }
        if page.ended || started.elapsed() > Duration::from_secs(READY_LIMIT_S) {
            bail!("the Ray cluster was not ready in {READY_LIMIT_S} s");
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}
