//! `cargo xtask bench pages`: how fast the release coordinator serves the dashboard's main
//! pages (Explorer, Cloud, Worker) with 10,000 devices on 2,500 workers of four suppliers and
//! 1,000 clusters of one renter (100 live, each with its node runs, placements and logs) in its
//! SQLite database, with proofs, a device's telemetry and ledger entries (all in the current epoch: the ledger dates entries by its own clock). Accounts
//! are made through the API; the rest is written into the database with SQL while the
//! coordinator is stopped, then the coordinator starts again on it. Each page is fetched over
//! loopback with a session cookie, warmed up, then timed sequentially (request sent to body
//! read); every body must show a seeded id, so an empty page cannot pass. Public pages count
//! against a per-address read limit, so each page is fetched from its own loopback addresses.
//! The last line printed is one JSON object with `<page>_p50_ms` and `<page>_p99_ms`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_client::Client;
use flotilla_coordinator::ledger::commit_batch;
use flotilla_ledger::{AccountId, Kind, Op, Outcome, Purpose, Token, Transfer};
use flotilla_proto::api::{ClusterSpec, Role};
use flotilla_proto::device::{DeviceHardware, DeviceKind, DeviceState};
use flotilla_proto::id::{IdKind, new_id, new_secret, secret_hash};
use flotilla_store::{Store, WebSessionRow};
use sqlx::{Any, Transaction};

const DEVICES_SEEDED: usize = 10_000;
const DEVICES_PER_WORKER: usize = 4;
const WORKERS_SEEDED: usize = DEVICES_SEEDED / DEVICES_PER_WORKER;
/// Supplier accounts; the first is the one the Worker pages render.
const SUPPLIERS_SEEDED: usize = 4;
const CLUSTERS_SEEDED: usize = 1_000;
const LIVE_CLUSTERS_SEEDED: usize = 100;
const NODES_PER_CLUSTER_MAX: usize = 4;
/// Log lines of each cluster, and of the cluster whose page is measured.
const LOG_LINES_PER_CLUSTER: usize = 20;
const LOG_LINES_MEASURED_CLUSTER: usize = 300;
/// One-minute telemetry buckets of the device whose page is measured.
const TELEMETRY_BUCKETS_SEEDED: usize = 240;
/// Every tenth ended cluster ran a node on the measured device.
const MEASURED_DEVICE_CLUSTER_STRIDE: usize = 10;
/// Proof-of-compute attempts of the measured device (every other device has one).
const MEASURED_DEVICE_PROOFS: usize = 24;
/// Size of each stored proof transcript (a stand-in: pages never read it).
const TRANSCRIPT_BYTES: usize = 4_096;
/// Ended clusters are spread over this much history, and the ledger's entries with them.
const HISTORY_MS: i64 = 7 * 24 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;
const SAMPLES_PER_PAGE: usize = 200;
const WARMUP_PER_PAGE: usize = 20;
/// Loopback source addresses per page, so the public pages' read limit (600 per address per
/// minute, up to four reads a page) never refuses a sample.
const ADDRESSES_PER_PAGE: usize = 4;
const TARGET_MS: f64 = 50.0;
/// Left to the restarted coordinator's first passes (ledger upkeep, rent, liveness) before
/// the pages are measured.
const SETTLE_MS: u64 = 3_000;
/// Workers never connect, so their devices must not go down while the pages are measured;
/// and a rent minute of a day leaves the seeded live clusters' escrows alone.
const HEARTBEAT_GRACE_MS: u64 = 3_600_000;
const RENT_MINUTE_MS: u64 = 86_400_000;

/// Known GPU models: (name, memory in GiB, ask per hour in IOSD base units).
const MODELS: [(&str, u64, u64); 7] = [
    ("NVIDIA GeForce RTX 4090", 24, 400_000),
    ("NVIDIA GeForce RTX 3090", 24, 250_000),
    ("NVIDIA A100 80GB PCIe", 80, 1_500_000),
    ("NVIDIA H100 80GB HBM3", 80, 2_400_000),
    ("NVIDIA H200", 141, 3_200_000),
    ("NVIDIA L40S", 48, 900_000),
    ("NVIDIA B200", 180, 5_000_000),
];
const LOCATIONS: [(&str, &str); 6] = [
    ("eu", "DE"),
    ("eu", "FR"),
    ("us", "US"),
    ("us", "CA"),
    ("asia", "JP"),
    ("asia", "SG"),
];
const TIERS: [&str; 4] = ["low", "medium", "high", "ultra"];

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("--here") {
        crate::run(crate::cargo().args(["build", "--release", "--bin", "flotilla"]))?;
        return crate::rerun_release_bench("pages");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = TempDir::new()?;
    runtime.block_on(bench(&dir.0))
}

/// The bench's directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("flotilla-pages-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A release coordinator, killed when dropped.
struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn database_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("pages.db").display())
}

fn start_coordinator(dir: &Path) -> Result<Coordinator> {
    let (child, url) = crate::spawn_coordinator(
        Command::new("target/release/flotilla")
            .args(["coordinator", "--listen", "127.0.0.1:0"])
            .args(["--database", &database_url(dir)])
            .args(["--heartbeat-grace-ms", &HEARTBEAT_GRACE_MS.to_string()])
            .args(["--rent-minute-ms", &RENT_MINUTE_MS.to_string()])
            .env("FLOTILLA_LOG", "warn"),
    )?;
    Ok(Coordinator { child, url })
}

/// An account made through the API: its id and API key.
struct Account {
    id: String,
    key: String,
}

async fn create_account(client: &Client, name: &str, role: Role) -> Result<Account> {
    let created = crate::create_account(client, name, role).await?;
    Ok(Account {
        id: created.account.id,
        key: created.api_key.secret,
    })
}

struct Accounts {
    renter: Account,
    suppliers: Vec<Account>,
}

async fn create_accounts(url: &str) -> Result<Accounts> {
    let client = Client::new(url, None);
    let renter = create_account(&client, "bench-renter", Role::Renter).await?;
    let mut suppliers = Vec::with_capacity(SUPPLIERS_SEEDED);
    for index in 0..SUPPLIERS_SEEDED {
        let name = format!("bench-supplier-{index}");
        suppliers.push(create_account(&client, &name, Role::Supplier).await?);
    }
    Ok(Accounts { renter, suppliers })
}

async fn bench(dir: &Path) -> Result<()> {
    let accounts = {
        let first = start_coordinator(dir)?;
        create_accounts(&first.url).await?
    };
    let started = Instant::now();
    let store = Store::open(&database_url(dir)).await?;
    let seeded = seed(&store, &accounts).await?;
    store.close().await;
    eprintln!(
        "bench: pages, seeded {DEVICES_SEEDED} devices, {CLUSTERS_SEEDED} clusters in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let coordinator = start_coordinator(dir)?;
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    let mut figures = serde_json::Map::new();
    figures.insert("devices_seeded".into(), DEVICES_SEEDED.into());
    figures.insert("clusters_seeded".into(), CLUSTERS_SEEDED.into());
    figures.insert("samples_per_page".into(), SAMPLES_PER_PAGE.into());
    figures.insert("target_ms".into(), serde_json::json!(TARGET_MS));
    let mut met = 0;
    let pages = pages(&seeded);
    for (index, page) in pages.iter().enumerate() {
        let (p50, p99) = measure(&coordinator.url, index, page).await?;
        met += usize::from(p99 <= TARGET_MS);
        figures.insert(format!("{}_p50_ms", page.name), round2(p50).into());
        figures.insert(format!("{}_p99_ms", page.name), round2(p99).into());
        figures.insert(format!("{}_met", page.name), (p99 <= TARGET_MS).into());
    }
    figures.insert("pages_met".into(), met.into());
    figures.insert("pages".into(), pages.len().into());
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}

fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

// Seeding.

/// What the measured pages must show.
struct Seeded {
    renter_cookie: String,
    supplier_cookie: String,
    /// The live cluster whose page is measured, and a device it holds.
    cluster_id: String,
    cluster_device_id: String,
    /// The device whose page is measured.
    device_id: String,
    first_device_id: String,
    first_supplier_device_id: String,
    first_cluster_id: String,
    newest_reward_reference: String,
}

struct SeedWorker {
    id: String,
    supplier: usize,
    location: usize,
}

struct SeedDevice {
    id: String,
    worker: usize,
    model: usize,
    state: DeviceState,
    price_per_hour: Option<u64>,
}

struct SeedCluster {
    id: String,
    name: String,
    kind: &'static str,
    /// deploying or running while live; completed, terminated, failed or expired after.
    state: &'static str,
    /// Device index of each node, in rank order.
    nodes: Vec<usize>,
    hours: u32,
    created_at_ms: i64,
    ended_at_ms: Option<i64>,
}

/// SplitMix64: a seeded, dependency-free stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % bound as u64) as usize
    }
}

fn plan_workers(rng: &mut Rng) -> Vec<SeedWorker> {
    (0..WORKERS_SEEDED)
        .map(|index| SeedWorker {
            id: new_id(IdKind::Worker),
            supplier: index * SUPPLIERS_SEEDED / WORKERS_SEEDED,
            location: rng.below(LOCATIONS.len()),
        })
        .collect()
}

/// Devices of one model per worker, most idle, some paused, down, pending or blocked.
fn plan_devices(rng: &mut Rng) -> Vec<SeedDevice> {
    let mut devices = Vec::with_capacity(DEVICES_SEEDED);
    for worker in 0..WORKERS_SEEDED {
        let model = rng.below(MODELS.len());
        for _ in 0..DEVICES_PER_WORKER {
            let state = match rng.below(100) {
                0..76 => DeviceState::Idle,
                76..84 => DeviceState::Paused,
                84..94 => DeviceState::Down,
                94..98 => DeviceState::Pending,
                _ => DeviceState::Blocked,
            };
            let offered =
                !matches!(state, DeviceState::Pending | DeviceState::Blocked) && rng.below(10) != 0;
            let ask = MODELS[model].2 * (80 + rng.below(50) as u64) / 100;
            devices.push(SeedDevice {
                id: new_id(IdKind::Device),
                worker,
                model,
                state,
                price_per_hour: offered.then_some(ask),
            });
        }
    }
    devices
}

/// Live clusters first (the first holds the measured device, device 0), then ended ones over
/// the week before; live clusters' devices are hired, each by one cluster.
fn plan_clusters(rng: &mut Rng, devices: &mut [SeedDevice], now_ms: i64) -> Vec<SeedCluster> {
    // 7,919 is prime to 10,000: k -> k * 7,919 visits every device once, across suppliers.
    let mut next_device = 0usize;
    let mut take = || {
        let index = next_device * 7_919 % DEVICES_SEEDED;
        next_device += 1;
        index
    };
    let mut clusters = Vec::with_capacity(CLUSTERS_SEEDED);
    for index in 0..CLUSTERS_SEEDED {
        let live = index < LIVE_CLUSTERS_SEEDED;
        let node_count = 1 + rng.below(NODES_PER_CLUSTER_MAX);
        let mut nodes: Vec<usize> = (0..node_count).map(|_| take()).collect();
        let ended_index = index.checked_sub(LIVE_CLUSTERS_SEEDED);
        if ended_index.is_some_and(|e| e % MEASURED_DEVICE_CLUSTER_STRIDE == 0) {
            nodes[0] = 0;
        }
        let (state, created_at_ms, hours, ended_at_ms) = match ended_index {
            None => {
                let age_ms = (LIVE_CLUSTERS_SEEDED - index) as i64 * 5 * 60_000;
                (
                    if index % 25 == 24 {
                        "deploying"
                    } else {
                        "running"
                    },
                    now_ms - age_ms,
                    24,
                    None,
                )
            }
            Some(e) => {
                let hours = 1 + rng.below(8) as u32;
                let created = now_ms - HISTORY_MS
                    + e as i64 * (HISTORY_MS - 10 * HOUR_MS)
                        / (CLUSTERS_SEEDED - LIVE_CLUSTERS_SEEDED) as i64;
                let state = [
                    "completed",
                    "completed",
                    "completed",
                    "terminated",
                    "failed",
                    "expired",
                ][rng.below(6)];
                (
                    state,
                    created,
                    hours,
                    Some(created + i64::from(hours) * HOUR_MS),
                )
            }
        };
        if live {
            for &device in &nodes {
                devices[device].state = DeviceState::Hired;
                let model = devices[device].model;
                devices[device]
                    .price_per_hour
                    .get_or_insert(MODELS[model].2);
            }
        }
        clusters.push(SeedCluster {
            id: new_id(IdKind::Cluster),
            name: format!("train-{index:04}"),
            kind: if index % 5 == 4 { "service" } else { "batch" },
            state,
            nodes,
            hours,
            created_at_ms,
            ended_at_ms,
        });
    }
    clusters
}

async fn seed(store: &Store, accounts: &Accounts) -> Result<Seeded> {
    let now_ms = flotilla_proto::time::now_unix_ms();
    let mut rng = Rng(0x5eed);
    let workers = plan_workers(&mut rng);
    let mut devices = plan_devices(&mut rng);
    let clusters = plan_clusters(&mut rng, &mut devices, now_ms);
    let mut tx = store.pool().begin().await?;
    insert_workers(&mut tx, accounts, &workers, now_ms).await?;
    insert_devices(&mut tx, accounts, &workers, &devices, now_ms).await?;
    insert_proofs(&mut tx, accounts, &workers, &devices, now_ms).await?;
    insert_telemetry(&mut tx, &devices[0].id, now_ms).await?;
    for (index, cluster) in clusters.iter().enumerate() {
        let log_lines = if index == 0 {
            LOG_LINES_MEASURED_CLUSTER
        } else {
            LOG_LINES_PER_CLUSTER
        };
        insert_cluster(
            &mut tx, accounts, &workers, &devices, cluster, log_lines, now_ms,
        )
        .await?;
    }
    tx.commit().await?;
    let newest_reward_reference =
        seed_ledger(store, accounts, &workers, &devices, &clusters, now_ms).await?;
    let supplier = &accounts.suppliers[0];
    let first_supplier_device_id = devices
        .iter()
        .filter(|d| workers[d.worker].supplier == 0)
        .map(|d| d.id.clone())
        .min()
        .context("the first supplier has devices")?;
    Ok(Seeded {
        renter_cookie: open_session(store, &accounts.renter, now_ms).await?,
        supplier_cookie: open_session(store, supplier, now_ms).await?,
        cluster_id: clusters[0].id.clone(),
        cluster_device_id: devices[clusters[0].nodes[0]].id.clone(),
        device_id: devices[0].id.clone(),
        first_device_id: devices
            .iter()
            .map(|d| d.id.clone())
            .min()
            .context("devices")?,
        first_supplier_device_id,
        first_cluster_id: clusters
            .iter()
            .map(|c| c.id.clone())
            .min()
            .context("clusters")?,
        newest_reward_reference,
    })
}

/// A dashboard session for the account's key, as a login opens one; its cookie value.
async fn open_session(store: &Store, account: &Account, now_ms: i64) -> Result<String> {
    let token = new_secret("bench");
    let session = WebSessionRow {
        key_hash: secret_hash(&account.key),
        csrf: new_secret("csrf"),
        expires_at_ms: now_ms + flotilla_coordinator::web::SESSION_TTL_MS,
    };
    store
        .open_web_session(&secret_hash(&token), &session, now_ms)
        .await?;
    Ok(format!("flotilla_session={token}"))
}

async fn insert_workers(
    tx: &mut Transaction<'_, Any>,
    accounts: &Accounts,
    workers: &[SeedWorker],
    now_ms: i64,
) -> Result<()> {
    for (index, worker) in workers.iter().enumerate() {
        let (region, country) = LOCATIONS[worker.location];
        sqlx::query(
            "INSERT INTO workers (id, account_id, name, hostname, public_key, agent_version, paused, \
             created_at_ms, last_seen_at_ms, region, country, tier, up_ms, observed_ms, containers) \
             VALUES ($1, $2, $3, $4, $5, '0.1.0', 0, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&worker.id)
        .bind(&accounts.suppliers[worker.supplier].id)
        .bind(format!("rig-{index:04}"))
        .bind(format!("gpu-host-{index:04}"))
        .bind(format!("{index:064x}"))
        .bind(now_ms - HISTORY_MS)
        .bind(now_ms)
        .bind(region)
        .bind(country)
        .bind(TIERS[index % TIERS.len()])
        .bind(HISTORY_MS - (index as i64 % 7) * HOUR_MS)
        .bind(HISTORY_MS)
        .bind(i64::from(index % 3 == 0))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn insert_devices(
    tx: &mut Transaction<'_, Any>,
    accounts: &Accounts,
    workers: &[SeedWorker],
    devices: &[SeedDevice],
    now_ms: i64,
) -> Result<()> {
    for (index, device) in devices.iter().enumerate() {
        let (model, memory_gib, _) = MODELS[device.model];
        let worker = &workers[device.worker];
        let hardware = DeviceHardware::new(
            &format!("GPU-{index:08x}-bench"),
            DeviceKind::Gpu,
            model,
            memory_gib << 30,
        );
        let state_before_down = (device.state == DeviceState::Down).then_some("idle");
        sqlx::query(
            "INSERT INTO devices (id, account_id, worker_id, hardware_id, name, kind, model, memory_bytes, \
             simulated, hardware, state, state_before_down, state_changed_at_ms, created_at_ms, \
             last_seen_at_ms, price_per_hour) \
             VALUES ($1, $2, $3, $4, $5, 'gpu', $6, $7, 0, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&device.id)
        .bind(&accounts.suppliers[worker.supplier].id)
        .bind(&worker.id)
        .bind(&hardware.hardware_id)
        .bind(model)
        .bind(model)
        .bind((memory_gib << 30) as i64)
        .bind(serde_json::to_string(&hardware)?)
        .bind(device.state.as_str())
        .bind(state_before_down)
        .bind(now_ms - HOUR_MS)
        .bind(now_ms - HISTORY_MS)
        .bind(now_ms)
        .bind(device.price_per_hour.map(|p| p as i64))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One proof per device (failed for blocked ones), and a day of hourly re-checks of device 0.
async fn insert_proofs(
    tx: &mut Transaction<'_, Any>,
    accounts: &Accounts,
    workers: &[SeedWorker],
    devices: &[SeedDevice],
    now_ms: i64,
) -> Result<()> {
    let transcript = format!("{{\"stand_in\":\"{}\"}}", "0".repeat(TRANSCRIPT_BYTES));
    let attempts = devices
        .iter()
        .map(|d| (d, 0))
        .chain((1..MEASURED_DEVICE_PROOFS).map(|hour| (&devices[0], hour)));
    for (device, hours_ago) in attempts {
        if device.state == DeviceState::Pending {
            continue;
        }
        let worker = &workers[device.worker];
        let passed = device.state != DeviceState::Blocked;
        sqlx::query(
            "INSERT INTO proofs (id, device_id, account_id, worker_id, class, passed, reason, \
             elapsed_ms, created_at_ms, transcript) VALUES ($1, $2, $3, $4, 'gpu-large', $5, $6, $7, $8, $9)",
        )
        .bind(new_id(IdKind::Proof))
        .bind(&device.id)
        .bind(&accounts.suppliers[worker.supplier].id)
        .bind(&worker.id)
        .bind(i64::from(passed))
        .bind(if passed { "" } else { "compute check failed at row 17" })
        .bind(9_000 + hours_ago as i64)
        .bind(now_ms - HISTORY_MS + hours_ago as i64 * HOUR_MS)
        .bind(&transcript)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn insert_telemetry(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    now_ms: i64,
) -> Result<()> {
    let first_ms = (now_ms / 60_000 - TELEMETRY_BUCKETS_SEEDED as i64) * 60_000;
    for bucket in 0..TELEMETRY_BUCKETS_SEEDED as i64 {
        sqlx::query(
            "INSERT INTO telemetry (device_id, bucket_start_ms, bucket_s, samples, utilization_pct, \
             memory_used_bytes, temperature_c, power_w, net_rx_bytes, net_tx_bytes) \
             VALUES ($1, $2, 60, 6, $3, $4, $5, $6, $7, $8)",
        )
        .bind(device_id)
        .bind(first_ms + bucket * 60_000)
        .bind(60 + bucket % 40)
        .bind((40 + bucket % 30) << 30)
        .bind(55 + bucket % 25)
        .bind(450 + bucket % 200)
        .bind(1_000_000 + bucket * 1_000)
        .bind(2_000_000 + bucket * 1_500)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A cluster as a deploy stores it: its request, the cluster, one run per node, the placements
/// (released once it ended) and its nodes' log lines.
async fn insert_cluster(
    tx: &mut Transaction<'_, Any>,
    accounts: &Accounts,
    workers: &[SeedWorker],
    devices: &[SeedDevice],
    cluster: &SeedCluster,
    log_lines: usize,
    now_ms: i64,
) -> Result<()> {
    let spec = ClusterSpec {
        kind: cluster.kind.into(),
        hours: cluster.hours,
        ports: if cluster.kind == "service" {
            vec![8000]
        } else {
            Vec::new()
        },
        ..ClusterSpec::new(
            &cluster.name,
            cluster.nodes.len() as u32,
            vec!["python".into(), "train.py".into()],
        )
    };
    let request = flotilla_coordinator::clusters::check_spec(&spec)
        .map_err(|e| anyhow::anyhow!("seeded spec: {e:?}"))?;
    let placed_at_ms = cluster.created_at_ms + 10_000;
    let (request_state, metered_minutes) = match cluster.ended_at_ms {
        None => ("placed", (now_ms - placed_at_ms) / 60_000),
        Some(_) if cluster.state == "completed" || cluster.state == "expired" => {
            ("completed", i64::from(cluster.hours) * 60)
        }
        Some(ended) => ("cancelled", (ended - placed_at_ms) / 120_000),
    };
    sqlx::query(
        "INSERT INTO requests (id, account_id, spec, state, reason, attempt, created_at_ms, \
         placed_at_ms, ended_at_ms, metered_minutes) VALUES ($1, $2, $3, $4, '', 1, $5, $6, $7, $8)",
    )
    .bind(&cluster.id)
    .bind(&accounts.renter.id)
    .bind(serde_json::to_string(&request)?)
    .bind(request_state)
    .bind(cluster.created_at_ms)
    .bind(placed_at_ms)
    .bind(cluster.ended_at_ms)
    .bind(metered_minutes)
    .execute(&mut **tx)
    .await?;
    let ended_because = match cluster.state {
        "terminated" => "terminated by its renter",
        "failed" => "node 0 exited with 1",
        "expired" => "its paid hours ran out",
        _ => "",
    };
    sqlx::query(
        "INSERT INTO clusters (id, account_id, name, kind, spec, secret_env, state, ended_because, \
         created_at_ms, running_at_ms, ended_at_ms) VALUES ($1, $2, $3, $4, $5, '{}', $6, $7, $8, $9, $10)",
    )
    .bind(&cluster.id)
    .bind(&accounts.renter.id)
    .bind(&cluster.name)
    .bind(cluster.kind)
    .bind(serde_json::to_string(&spec)?)
    .bind(cluster.state)
    .bind(ended_because)
    .bind(cluster.created_at_ms)
    .bind((cluster.state != "deploying").then_some(placed_at_ms + 5_000))
    .bind(cluster.ended_at_ms)
    .execute(&mut **tx)
    .await?;
    for (rank, &device) in cluster.nodes.iter().enumerate() {
        let worker_id = &workers[devices[device].worker].id;
        let run_id = insert_run(tx, cluster, rank, worker_id, placed_at_ms).await?;
        sqlx::query(
            "INSERT INTO placements (request_id, device_id, worker_id, node_index, attempt, \
             price_per_hour, released_at_ms) VALUES ($1, $2, $3, $4, 1, $5, $6)",
        )
        .bind(&cluster.id)
        .bind(&devices[device].id)
        .bind(worker_id)
        .bind(rank as i64)
        .bind(node_price(devices, device) as i64)
        .bind(cluster.ended_at_ms)
        .execute(&mut **tx)
        .await?;
        let lines = log_lines / cluster.nodes.len()
            + usize::from(rank == 0) * (log_lines % cluster.nodes.len());
        for line in 0..lines {
            sqlx::query(
                "INSERT INTO node_logs (cluster_id, run_id, node_rank, attempt, stream, at_ms, text) \
                 VALUES ($1, $2, $3, 1, 'stdout', $4, $5)",
            )
            .bind(&cluster.id)
            .bind(&run_id)
            .bind(rank as i64)
            .bind(placed_at_ms + line as i64 * 1_000)
            .bind(format!("step {line}: loss {:.4}", 2.0 / (line + 1) as f64))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// The hourly price a node was placed at: its device's ask, or the model's list price.
fn node_price(devices: &[SeedDevice], device: usize) -> u64 {
    let device = &devices[device];
    device.price_per_hour.unwrap_or(MODELS[device.model].2)
}

async fn insert_run(
    tx: &mut Transaction<'_, Any>,
    cluster: &SeedCluster,
    rank: usize,
    worker_id: &str,
    placed_at_ms: i64,
) -> Result<String> {
    let (state, exit_code) = match cluster.state {
        "running" => ("running", None),
        "deploying" => ("assigned", None),
        "completed" => ("exited", Some(0)),
        "failed" if rank == 0 => ("failed", Some(1)),
        _ => ("stopped", None),
    };
    let run_id = new_id(IdKind::Run);
    sqlx::query(
        "INSERT INTO node_runs (id, cluster_id, node_rank, attempt, worker_id, node_index, state, \
         exit_code, reason, log_bytes, created_at_ms, started_at_ms, ended_at_ms) \
         VALUES ($1, $2, $3, 1, $4, $3, $5, $6, $5, 4096, $7, $8, $9)",
    )
    .bind(&run_id)
    .bind(&cluster.id)
    .bind(rank as i64)
    .bind(worker_id)
    .bind(state)
    .bind(exit_code)
    .bind(placed_at_ms)
    .bind((state != "assigned").then_some(placed_at_ms + 5_000))
    .bind(cluster.ended_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(run_id)
}

// The ledger: written through the coordinator's own batch commit, in time order.

/// A deposit to the renter, each cluster's escrow (and, once ended, its rent to the supplier
/// of its first node and the refund of the rest), and hourly block rewards to the first
/// supplier, in one batch (under `BATCH_TRANSFERS_MAX`). The ledger dates entries by its own
/// clock, so they all fall in the current, unsealed epoch. Returns the newest reward's
/// reference.
async fn seed_ledger(
    store: &Store,
    accounts: &Accounts,
    workers: &[SeedWorker],
    devices: &[SeedDevice],
    clusters: &[SeedCluster],
    now_ms: i64,
) -> Result<String> {
    let renter = &accounts.renter.id;
    let mut dated: Vec<(i64, Transfer)> = vec![(
        now_ms - HISTORY_MS,
        moving(
            "deposit-renter",
            Kind::Deposit,
            AccountId::system(Purpose::External, Token::Iosd),
            AccountId::main(renter, Token::Iosd),
            100_000_000_000_000,
            "wire 2026-001",
        ),
    )];
    for cluster in clusters {
        let rent_per_hour: u64 = cluster.nodes.iter().map(|&d| node_price(devices, d)).sum();
        let rent = rent_per_hour * u64::from(cluster.hours);
        let escrow = rent + rent / 10;
        let account = AccountId::escrow(&cluster.id, Token::Iosd);
        dated.push((
            cluster.created_at_ms,
            moving(
                &format!("escrow-{}", cluster.id),
                Kind::Escrow,
                AccountId::main(renter, Token::Iosd),
                account.clone(),
                escrow,
                &cluster.id,
            ),
        ));
        let Some(ended_at_ms) = cluster.ended_at_ms else {
            continue;
        };
        let supplier = &accounts.suppliers[workers[devices[cluster.nodes[0]].worker].supplier].id;
        dated.push((
            ended_at_ms,
            moving(
                &format!("rent-{}", cluster.id),
                Kind::Rent,
                account.clone(),
                AccountId::main(supplier, Token::Iosd),
                rent,
                &cluster.id,
            ),
        ));
        dated.push((
            ended_at_ms,
            moving(
                &format!("refund-{}", cluster.id),
                Kind::Refund,
                account,
                AccountId::main(renter, Token::Iosd),
                escrow - rent,
                &cluster.id,
            ),
        ));
    }
    let hours = HISTORY_MS / HOUR_MS;
    let mut newest_reward_reference = String::new();
    for hour in 1..hours {
        newest_reward_reference = format!("block rewards, epoch hour {hour}");
        dated.push((
            now_ms - HISTORY_MS + hour * HOUR_MS,
            moving(
                &format!("reward-{hour}"),
                Kind::Reward,
                AccountId::system(Purpose::Emission, Token::Io),
                AccountId::main(&accounts.suppliers[0].id, Token::Io),
                1_250_000_000,
                &newest_reward_reference,
            ),
        ));
    }
    dated.sort_by_key(|(at_ms, _)| *at_ms);
    let transfers: Vec<Transfer> = dated.into_iter().map(|(_, t)| t).collect();
    let outcomes = commit_batch(store, &mut None, &transfers, now_ms).await?;
    if let Some(refused) = outcomes.iter().find(|o| !matches!(o, Outcome::Applied(_))) {
        bail!("a seeded transfer was not applied: {refused:?}");
    }
    Ok(newest_reward_reference)
}

fn moving(
    id: &str,
    kind: Kind,
    debit: AccountId,
    credit: AccountId,
    amount: u64,
    reference: &str,
) -> Transfer {
    Transfer {
        id: id.to_owned(),
        kind,
        op: Op::Move {
            debit,
            credit,
            amount,
        },
        reference: reference.to_owned(),
        linked: false,
    }
}

// Measuring.

struct PageCheck {
    name: &'static str,
    path: String,
    cookie: Option<String>,
    /// Text the body must contain: a seeded id or name.
    expected: String,
}

fn pages(seeded: &Seeded) -> Vec<PageCheck> {
    let page = |name, path: String, cookie: Option<&String>, expected: &str| PageCheck {
        name,
        path,
        cookie: cookie.cloned(),
        expected: expected.to_owned(),
    };
    let renter = Some(&seeded.renter_cookie);
    let supplier = Some(&seeded.supplier_cookie);
    vec![
        page("explorer_home", "/explorer".into(), None, "<td>h100</td>"),
        page(
            "explorer_clusters",
            "/explorer/clusters".into(),
            None,
            &seeded.cluster_id,
        ),
        page(
            "explorer_devices",
            "/explorer/devices".into(),
            None,
            &seeded.first_device_id,
        ),
        page(
            "cloud_home",
            "/cloud".into(),
            renter,
            &seeded.first_cluster_id,
        ),
        page(
            "cloud_market",
            "/cloud/market".into(),
            renter,
            "<td>rtx3090</td>",
        ),
        page(
            "cloud_clusters",
            "/cloud/clusters".into(),
            renter,
            &seeded.first_cluster_id,
        ),
        page(
            "cloud_cluster",
            format!("/cloud/clusters/{}", seeded.cluster_id),
            renter,
            &seeded.cluster_device_id,
        ),
        page(
            "worker_home",
            "/worker".into(),
            supplier,
            &seeded.first_supplier_device_id,
        ),
        page(
            "worker_device",
            format!("/worker/devices/{}", seeded.device_id),
            supplier,
            &seeded.cluster_id,
        ),
        page(
            "worker_earnings",
            "/worker/earnings".into(),
            supplier,
            &seeded.newest_reward_reference,
        ),
    ]
}

/// Clients for one page, each from its own loopback address (127.0.P.K), never following a
/// redirect (a lost session would otherwise measure the login page).
fn clients(page_index: usize) -> Result<Vec<reqwest::Client>> {
    (0..ADDRESSES_PER_PAGE)
        .map(|k| {
            let address = Ipv4Addr::new(127, 0, (page_index + 1) as u8, (k + 1) as u8);
            Ok(reqwest::Client::builder()
                .local_address(IpAddr::V4(address))
                .redirect(reqwest::redirect::Policy::none())
                .build()?)
        })
        .collect()
}

/// One GET, timed from sending to the whole body read; fails unless 200 with the expected text.
async fn fetch(client: &reqwest::Client, url: &str, page: &PageCheck) -> Result<(f64, usize)> {
    let mut request = client.get(url);
    if let Some(cookie) = &page.cookie {
        request = request.header("cookie", cookie);
    }
    let started = Instant::now();
    let response = request.send().await?;
    let status = response.status();
    let body = response.text().await?;
    let ms = started.elapsed().as_secs_f64() * 1_000.0;
    if status != reqwest::StatusCode::OK {
        bail!(
            "{} answered {status}: {}",
            page.path,
            body.chars().take(300).collect::<String>()
        );
    }
    if !body.contains(&page.expected) {
        bail!(
            "{} does not show {:?}: the seeded data is not on the page",
            page.path,
            page.expected
        );
    }
    Ok((ms, body.len()))
}

/// Warms the page up, then times it; (p50, p99) in ms.
async fn measure(base_url: &str, index: usize, page: &PageCheck) -> Result<(f64, f64)> {
    let clients = clients(index)?;
    let url = format!("{base_url}{}", page.path);
    let mut bytes = 0;
    for sample in 0..WARMUP_PER_PAGE {
        bytes = fetch(&clients[sample % clients.len()], &url, page).await?.1;
    }
    let mut samples_ms = Vec::with_capacity(SAMPLES_PER_PAGE);
    for sample in 0..SAMPLES_PER_PAGE {
        samples_ms.push(fetch(&clients[sample % clients.len()], &url, page).await?.0);
    }
    samples_ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&samples_ms, 50), percentile(&samples_ms, 99));
    let verdict = if p99 <= TARGET_MS { "met" } else { "NOT met" };
    eprintln!(
        "bench: pages, {:<18} {:<45} p50 {p50:7.2} ms, p99 {p99:7.2} ms, {:4} KiB (target {TARGET_MS} ms: {verdict})",
        page.name,
        page.path,
        bytes / 1024
    );
    Ok((p50, p99))
}

fn percentile(sorted: &[f64], pct: usize) -> f64 {
    let index = (sorted.len() * pct).div_ceil(100).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}
