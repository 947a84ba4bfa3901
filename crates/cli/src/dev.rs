//! `flotilla dev`: the whole network on one machine. A coordinator on SQLite in the data
//! directory, N workers with their own keys (simulated GPUs, plus the machine's real GPUs and
//! CPU on the first), a demo supplier and renter. A second run on the same directory resumes
//! the same network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_client::Client;
use flotilla_proto::api::{
    CreateAccountRequest, CreateAccountResponse, CreateEnrollmentTokenRequest,
    CreatedEnrollmentToken, Me, Role,
};

/// GPU mixes handed to the dev workers in turn.
/// Ledger epoch length in `flotilla dev`.
const DEV_LEDGER_EPOCH_MS: u64 = 60_000;
/// What one IO costs in `flotilla dev`, IOSD base units: two dollars.
const DEV_IO_PRICE_MICROS: u64 = 2_000_000;
/// Two workers hold H100s, so a 2-node cluster has somewhere to go.
const DEV_GPU_MIXES: &[&str] = &["RTX 4090x2", "H100x1", "H100x4", "L40Sx2"];
/// Most workers `flotilla dev` starts.
const DEV_WORKERS_MAX: usize = 64;
/// Where the demo workers say they are, in turn: (region, country, tier).
const DEV_LOCATIONS: &[(&str, &str, &str)] = &[
    ("eu-west", "fr", "high"),
    ("us-east", "us", "ultra"),
    ("eu-central", "de", "medium"),
    ("ap-northeast", "jp", "high"),
];
/// The demo supplier's asking prices, in IOSD base units per hour, by model key.
const DEV_PRICES: &[(&str, u64)] = &[
    ("rtx4090", 350_000),
    ("a100-80gb", 1_200_000),
    ("h100", 2_100_000),
    ("l40s", 800_000),
    ("cpu", 40_000),
];
/// The demo supplier's asking price for a real GPU of a model not listed above.
const DEV_PRICE_OTHER_GPU: u64 = 1_500_000;
/// How long the demo supplier waits for devices to appear before giving up on pricing them.
const DEV_STOCKING_MS: u64 = 30_000;
/// Time allowed for everything to stop on Ctrl-C.
const DEV_SHUTDOWN_DEADLINE_MS: u64 = 4_500;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory for the database, worker keys and dev.env.
    #[arg(long, default_value = ".flotilla-dev")]
    data: PathBuf,
    /// Address for the coordinator.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Local workers to run.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Heartbeat interval for the dev network.
    #[arg(long, default_value_t = 2_000)]
    heartbeat_interval_ms: u64,
    /// Proof-of-compute challenge size, as the time a CPU should need (short, for a quick start).
    #[arg(long, default_value_t = 300)]
    proof_target_ms: u64,
    /// The share of the CPU class's 1 GiB each proof fills, in percent (small, for a quick
    /// start: every simulated GPU proves as a CPU).
    #[arg(long, default_value_t = 5)]
    proof_memory_pct: u32,
    /// Where the workers keep Ray's environment, shared by all (default: DATA/ray).
    #[arg(long, env = "FLOTILLA_RAY_DIR")]
    ray_dir: Option<PathBuf>,
}

pub async fn run(args: DevArgs) -> Result<()> {
    anyhow::ensure!(
        args.workers <= DEV_WORKERS_MAX,
        "--workers must be at most {DEV_WORKERS_MAX}"
    );
    std::fs::create_dir_all(args.data.join("workers"))
        .with_context(|| format!("creating {}", args.data.display()))?;
    let data = std::fs::canonicalize(&args.data)?;
    // Cluster nodes run as nobody, which must pass through to the workers' run directories;
    // passing is all it may do (the files inside keep their own modes).
    for dir in [data.clone(), data.join("workers")] {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    let config = flotilla_coordinator::Config {
        listen: args.listen,
        database_url: format!("sqlite:{}", data.join("flotilla.db").display()),
        allow_simulated_devices: true,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        heartbeat_grace_ms: args.heartbeat_interval_ms * 3,
        admin_key_file: Some(data.join("admin.key")),
        proof_target_ms: args.proof_target_ms,
        proof_memory_pct: args.proof_memory_pct,
        // A minute's epoch, so block rewards and sealed roots show up while you watch.
        ledger_epoch_ms: DEV_LEDGER_EPOCH_MS,
        faucet: true,
        // A demo price, so clusters may be paid in IO too.
        io_price_micros: Some(DEV_IO_PRICE_MICROS),
        ..flotilla_coordinator::Config::default()
    };
    let coordinator = flotilla_coordinator::start(config).await?;
    let url = format!("http://{}", coordinator.local_addr);
    let client = Client::new(&url, None);
    let keys = demo_accounts(&client, &data).await?;
    fund_demo(&client, &keys).await?;
    write_env(&data, &url, &keys)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let ray_dir = args.ray_dir.clone().unwrap_or_else(|| data.join("ray"));
    for index in 0..args.workers {
        let mut config =
            worker_config(&client.with_key(&keys.supplier), &url, &data, index).await?;
        config.ray_dir = Some(ray_dir.clone());
        let stopped = stopped.clone();
        workers.push(tokio::spawn(async move {
            if let Err(error) = flotilla_worker::run(config, stopped).await {
                tracing::error!(%error, worker = index, "dev worker stopped");
            }
        }));
    }
    tokio::spawn(stock_market(client.with_key(&keys.supplier), args.workers));
    print_usage(&url, &data, args.workers);
    crate::stop_signal().await;
    eprintln!("stopping...");
    let _ = stop.send(true);
    let deadline = Duration::from_millis(DEV_SHUTDOWN_DEADLINE_MS);
    let _ = tokio::time::timeout(deadline, async {
        for worker in workers {
            let _ = worker.await;
        }
        coordinator.shutdown().await;
    })
    .await;
    Ok(())
}

/// Plays the demo supplier: gives each worker a location and each device a price, so the
/// market has offers. Devices keep a price set earlier.
async fn stock_market(supplier: Client, workers: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEV_STOCKING_MS);
    while tokio::time::Instant::now() < deadline {
        match stock_once(&supplier).await {
            Ok(stocked) if stocked >= workers => return,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "demo supplier could not stock the market"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One round of pricing; returns how many workers have every device priced (a worker whose
/// devices are still being listed counts once they are all there and priced).
async fn stock_once(supplier: &Client) -> Result<usize> {
    let workers: flotilla_proto::api::Page<flotilla_proto::api::Worker> =
        supplier.get("workers").await?;
    for (index, worker) in workers.items.iter().enumerate() {
        if worker.region.is_empty() {
            let (region, country, tier) = DEV_LOCATIONS[index % DEV_LOCATIONS.len()];
            let request = flotilla_proto::api::SetLocationRequest {
                region: region.to_owned(),
                country: country.to_owned(),
                tier: tier.to_owned(),
            };
            let _: flotilla_proto::api::WorkerDetail = supplier
                .post(&format!("workers/{}/location", worker.id), &request)
                .await?;
        }
    }
    let devices: flotilla_proto::api::Page<flotilla_proto::api::Device> =
        supplier.get("devices").await?;
    let mut priced_workers = std::collections::BTreeSet::new();
    let mut unpriced_workers = std::collections::BTreeSet::new();
    for device in &devices.items {
        if device.price_per_hour.is_some() {
            priced_workers.insert(device.worker_id.clone());
            continue;
        }
        let key = flotilla_proto::device::model_key(device.kind, &device.model);
        let listed = DEV_PRICES.iter().find(|(model, _)| *model == key);
        let price = match listed {
            Some(&(_, price)) => price,
            None if device.kind == flotilla_proto::device::DeviceKind::Gpu => DEV_PRICE_OTHER_GPU,
            None => {
                unpriced_workers.insert(device.worker_id.clone());
                continue;
            }
        };
        let request = flotilla_proto::api::SetPriceRequest {
            price_per_hour: Some(price),
        };
        let _: flotilla_proto::api::Device = supplier
            .post(&format!("devices/{}/price", device.id), &request)
            .await?;
        priced_workers.insert(device.worker_id.clone());
    }
    Ok(priced_workers.difference(&unpriced_workers).count())
}

/// Funds the demo accounts from the faucet, once (fixed idempotency keys), and stakes the
/// supplier's IO so its devices earn block rewards.
async fn fund_demo(client: &Client, keys: &DemoKeys) -> Result<()> {
    use flotilla_proto::api::{FaucetRequest, StakeRequest, TransferResult};
    let tokens = |n: u64| n * flotilla_ledger::MICROS_PER_TOKEN;
    let grants = [
        (&keys.renter, "IOSD", tokens(1_000)),
        (&keys.renter, "IO", tokens(1_000)),
        (&keys.supplier, "IO", tokens(10_000)),
    ];
    for (key, token, amount_micros) in grants {
        let request = FaucetRequest {
            token: token.to_owned(),
            amount_micros,
        };
        let _: TransferResult = client
            .with_key(key)
            .post_idempotent("wallet/faucet", &request, &format!("dev-faucet-{token}"))
            .await?;
    }
    let stake = StakeRequest {
        amount_micros: tokens(5_000),
    };
    let _: TransferResult = client
        .with_key(&keys.supplier)
        .post_idempotent("wallet/stake", &stake, "dev-stake")
        .await?;
    Ok(())
}

struct DemoKeys {
    renter: String,
    supplier: String,
}

/// Reuses the keys in dev.env when they still work; otherwise makes the demo accounts.
async fn demo_accounts(client: &Client, data: &Path) -> Result<DemoKeys> {
    let saved = read_env(data);
    if let (Some(renter), Some(supplier)) = (
        saved.get("FLOTILLA_API_KEY"),
        saved.get("FLOTILLA_SUPPLIER_API_KEY"),
    ) && client.with_key(renter).get::<Me>("me").await.is_ok()
        && client.with_key(supplier).get::<Me>("me").await.is_ok()
    {
        return Ok(DemoKeys {
            renter: renter.clone(),
            supplier: supplier.clone(),
        });
    }
    let supplier: CreateAccountResponse = client
        .post(
            "accounts",
            &CreateAccountRequest {
                name: "demo-supplier".to_owned(),
                roles: vec![Role::Supplier],
            },
        )
        .await?;
    let renter: CreateAccountResponse = client
        .post(
            "accounts",
            &CreateAccountRequest {
                name: "demo-renter".to_owned(),
                roles: vec![Role::Renter],
            },
        )
        .await?;
    Ok(DemoKeys {
        renter: renter.api_key.secret,
        supplier: supplier.api_key.secret,
    })
}

async fn worker_config(
    supplier: &Client,
    url: &str,
    data: &Path,
    index: usize,
) -> Result<flotilla_worker::WorkerConfig> {
    let data_dir = data.join("workers").join(format!("worker-{index}"));
    let enrolled = flotilla_worker::identity::load_enrollment(&data_dir)?
        .is_some_and(|e| e.coordinator_url == url);
    let token = if enrolled {
        None
    } else {
        let request = CreateEnrollmentTokenRequest {
            name: Some(format!("dev-worker-{index}")),
            expires_in_s: Some(600),
        };
        let created: CreatedEnrollmentToken = supplier.post("enrollment-tokens", &request).await?;
        Some(flotilla_proto::secret::Secret::new(created.secret))
    };
    Ok(flotilla_worker::WorkerConfig {
        coordinator_url: url.to_owned(),
        token,
        data_dir,
        simulate_gpus: vec![DEV_GPU_MIXES[index % DEV_GPU_MIXES.len()].to_owned()],
        // One worker offers the machine's real GPUs and CPU: the same GPU offered by two workers
        // is a spoofing sign, which blocks it on both.
        real_gpus: index == 0,
        cpu_device: index == 0,
        tunnel_lanes: flotilla_worker::tunnel::tunnel_lanes_default(),
        hostname: Some(format!("dev-worker-{index}")),
        docker_socket: None,
        ray_dir: None,
        ca_pem: None,
    })
}

fn read_env(data: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(data.join("dev.env")).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn write_env(data: &Path, url: &str, keys: &DemoKeys) -> Result<()> {
    let text = format!(
        "FLOTILLA_URL={url}\nFLOTILLA_API_KEY={}\nFLOTILLA_SUPPLIER_API_KEY={}\n",
        keys.renter, keys.supplier
    );
    flotilla_coordinator::files::write_private(&data.join("dev.env"), text.as_bytes())?;
    Ok(())
}

fn print_usage(url: &str, data: &Path, workers: usize) {
    use std::io::Write;
    let env = data.join("dev.env");
    let admin_key = data.join("admin.key");
    let text = format!(
        "flotilla dev network running at {url} with {workers} workers\n\
         \x20 dashboard: {url}/explorer (public), {url}/cloud and {url}/worker (log in with a key from the environment file)\n\
         \x20 environment: {env} (renter key in FLOTILLA_API_KEY, supplier key in FLOTILLA_SUPPLIER_API_KEY)\n\
         \x20 try:\n\
         \x20   set -a; . {env}; set +a\n\
         \x20   FLOTILLA_API_KEY=$FLOTILLA_SUPPLIER_API_KEY flotilla devices list\n\
         \x20   flotilla whoami\n\
         \x20   flotilla offers 'gpu=h100 count>=2' --sort price\n\
         \x20   flotilla market prices\n\
         \x20   flotilla wallet balance\n\
         \x20   flotilla ledger export ledger.jsonl && flotilla ledger verify ledger.jsonl\n\
         \x20   curl {url}/api/v1/openapi.json\n\
         \x20 admin key: {admin_key}\n\
         \x20 Ctrl-C stops everything\n",
        env = env.display(),
        admin_key = admin_key.display(),
    );
    // A closed stdout (a pipe whose reader left) must not take the network down.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}
