//! `flotilla`: the one binary. Server roles are plain verbs (`coordinator`, `worker`, `dev`);
//! client commands are `flotilla <noun> <verb>`.

mod client_commands;
mod cluster_commands;
mod dev;
mod ledger_commands;
mod market_commands;
mod output;
mod profile;
mod ray_commands;
mod splice;
mod standby;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use client_commands::ClientCommand;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla: a decentralized GPU cloud"
)]
struct Cli {
    /// Log lines as JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator.
    Coordinator(CoordinatorArgs),
    /// Run a worker agent on this machine.
    Worker(WorkerArgs),
    /// Run a whole network on this machine: coordinator, workers, demo accounts.
    Dev(dev::DevArgs),
    /// Re-check a proof-of-compute transcript offline and print the verdict and why.
    VerifyProof {
        /// The transcript, as downloaded (JSON), or signed (`flotilla proofs get --signed`).
        file: PathBuf,
        /// The coordinator's published key (hex, `flotilla ledger info`): a signed transcript
        /// must be signed by it.
        #[arg(long)]
        key: Option<String>,
    },
    /// Simulate the market with the real scheduler: synthetic supply (joins, failures,
    /// returns) and demand (arrivals by priority class), in simulated time. The same seed
    /// prints the same output.
    Simulate {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Also print how long the simulation took in wall-clock time.
        #[arg(long)]
        timing: bool,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Debug, clap::Args)]
struct CoordinatorArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7700", env = "FLOTILLA_LISTEN")]
    listen: SocketAddr,
    /// Address of the tunnel listener workers dial for renters' connections (default: the
    /// listen host, next port; a free one when --listen picks its own).
    #[arg(long)]
    tunnel_listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate chain (PEM, the coordinator's certificate first);
    /// without it, plain HTTP for a TLS proxy in front. Needs --tls-key.
    #[arg(
        long,
        env = "FLOTILLA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert's certificate.
    #[arg(
        long,
        env = "FLOTILLA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// `sqlite:PATH` or `postgres://...`.
    #[arg(
        long,
        default_value = "sqlite:flotilla.db",
        env = "FLOTILLA_DATABASE",
        hide_env_values = true
    )]
    database: String,
    /// Accept simulated devices (development only).
    #[arg(long)]
    allow_simulated_devices: bool,
    /// How often workers heartbeat.
    #[arg(long, default_value_t = 10_000)]
    heartbeat_interval_ms: u64,
    /// Silence after which a worker's devices go down.
    #[arg(long, default_value_t = 30_000)]
    heartbeat_grace_ms: u64,
    /// Time down after which a device becomes inactive (default five days).
    #[arg(long, default_value_t = 5 * 24 * 3600 * 1000)]
    inactive_after_ms: u64,
    /// Width of one telemetry history bucket.
    #[arg(long, default_value_t = 60)]
    telemetry_bucket_s: u64,
    /// Enrollment attempts allowed per client address per minute.
    #[arg(long, default_value_t = 60)]
    enroll_rate_per_minute: u32,
    /// Account sign-ups allowed per client address per minute.
    #[arg(long, default_value_t = 20)]
    signup_rate_per_minute: u32,
    /// Enrollment tokens one account may create per minute.
    #[arg(long, default_value_t = 60)]
    token_create_rate_per_minute: u32,
    /// If the database has no admin, create one and write its key here (mode 0600).
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
    /// How long a proof-of-compute challenge should take the device class it is sized for.
    #[arg(long, default_value_t = flotilla_proof::CHALLENGE_TARGET_MS)]
    proof_target_ms: u64,
    /// About how often idle devices prove their compute again (±25% at random).
    #[arg(long, default_value_t = 3_600_000)]
    proof_recheck_interval_ms: u64,
    /// The share of a device class's memory a proof fills, in percent (1 to 100).
    #[arg(long, default_value_t = flotilla_proof::MEMORY_PCT_DEFAULT)]
    proof_memory_pct: u32,
    /// How often the scheduler plans the queue of requests.
    #[arg(long, default_value_t = 1_000)]
    schedule_interval_ms: u64,
    /// Length of a ledger epoch: one block-reward payout and one signed root each.
    #[arg(long, default_value_t = 3_600_000)]
    ledger_epoch_ms: u64,
    /// How long unstaked IO waits before it is spendable (default 14 days).
    #[arg(long, default_value_t = 14 * 24 * 3_600_000)]
    unstake_cooldown_ms: u64,
    /// How long slashed stake is held open to appeal before it is burned (default 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3_600_000)]
    slash_appeal_ms: u64,
    /// Length of one metered rent minute (shorter only in tests).
    #[arg(long, default_value_t = 60_000)]
    rent_minute_ms: u64,
    /// How often a cluster node's checkpoint directory is uploaded.
    #[arg(long, default_value_t = 60_000)]
    checkpoint_interval_ms: u64,
    /// Hand out demo funds (development only).
    #[arg(long)]
    faucet: bool,
    /// Accept rent in IO at this price, IOSD base units per IO (1000000: one USD per IO);
    /// without it, rent is paid in IOSD only.
    #[arg(long)]
    io_price_micros: Option<u64>,
    /// Carry all cluster mesh traffic through this coordinator's relay (UDP on the tunnel
    /// port) instead of directly between nodes.
    #[arg(long)]
    mesh_relay_only: bool,
    /// Tunnelled connections one node may have open at once; more are refused (at most 256,
    /// a worker's tunnel streams for all its nodes).
    #[arg(long, default_value_t = flotilla_coordinator::tunnels::TUNNEL_CONNECTIONS_PER_NODE_MAX_DEFAULT)]
    tunnel_connections_per_node_max: usize,
    /// Probe a client connection silent this long with TCP keepalive; one that stops
    /// answering (its renter vanished) closes within about twice this.
    #[arg(long, default_value_t = flotilla_coordinator::config::TCP_KEEPALIVE_S_DEFAULT)]
    tcp_keepalive_s: u64,
    /// Close a tunnelled connection on which no byte moved either way for this long (0:
    /// never; an SSH session left idle needs ssh's ServerAliveInterval below it).
    #[arg(long, default_value_t = flotilla_coordinator::config::TUNNEL_IDLE_TIMEOUT_S_DEFAULT)]
    tunnel_idle_timeout_s: u64,
    /// Time an HTTP client has to send a request's whole head; a slower one is cut off.
    #[arg(long, default_value_t = flotilla_coordinator::config::HTTP_HEADER_READ_TIMEOUT_MS_DEFAULT)]
    http_header_read_timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// The coordinator's URL.
    #[arg(long, env = "FLOTILLA_URL")]
    coordinator: String,
    /// Enrollment token (first start only).
    #[arg(long, env = "FLOTILLA_ENROLLMENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Directory for the worker's key and enrollment record.
    #[arg(long)]
    data: PathBuf,
    /// A private CA's certificates (PEM) to trust for an https:// coordinator, beside the
    /// system's.
    #[arg(long, env = "FLOTILLA_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Add simulated GPUs, e.g. "RTX 4090x2" (repeatable; development only).
    #[arg(long = "simulate-gpu")]
    simulate_gpu: Vec<String>,
    /// Do not offer the CPU as a device.
    #[arg(long)]
    no_cpu: bool,
    /// Do not offer this machine's NVIDIA GPUs as devices.
    #[arg(long)]
    no_gpus: bool,
    /// Tunnel connections to hold to the coordinator, which spreads renters' connections over
    /// them (default: one per core, at most 4).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(flotilla_tunnel::LANES_MAX)))]
    tunnel_lanes: Option<u8>,
    /// Name for this worker (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The Docker engine's socket for nodes with a container image (default: DOCKER_HOST,
    /// else /var/run/docker.sock when present).
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    /// Where the Python environment with Ray for `ray` clusters is made and kept (default:
    /// DATA/ray).
    #[arg(long, env = "FLOTILLA_RAY_DIR")]
    ray_dir: Option<PathBuf>,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Coordinator(args) => {
                init_logging(cli.log_format);
                run_coordinator(args).await
            }
            Command::Worker(args) => {
                init_logging(cli.log_format);
                run_worker(args).await
            }
            Command::Dev(args) => {
                init_logging(cli.log_format);
                dev::run(args).await
            }
            Command::VerifyProof { file, key } => verify_proof(&file, key.as_deref()),
            Command::Simulate {
                devices,
                requests,
                seed,
                timing,
            } => simulate(devices, requests, seed, timing),
            Command::Client(command) => client_commands::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub(crate) async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    // Every worker holds one connection: allow as many as the hard limit permits.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "could not raise the open-file limit");
    }
    let config = flotilla_coordinator::Config {
        listen: args.listen,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(
                |(certificate_chain, private_key)| flotilla_coordinator::tls::TlsFiles {
                    certificate_chain,
                    private_key,
                },
            ),
        tunnel_listen: args.tunnel_listen,
        database_url: args.database,
        allow_simulated_devices: args.allow_simulated_devices,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        heartbeat_grace_ms: args.heartbeat_grace_ms,
        inactive_after_ms: args.inactive_after_ms,
        telemetry_bucket_s: args.telemetry_bucket_s,
        enroll_rate_per_minute: args.enroll_rate_per_minute,
        signup_rate_per_minute: args.signup_rate_per_minute,
        token_create_rate_per_minute: args.token_create_rate_per_minute,
        admin_key_file: args.admin_key_file,
        proof_target_ms: args.proof_target_ms,
        proof_recheck_interval_ms: args.proof_recheck_interval_ms,
        proof_memory_pct: args.proof_memory_pct,
        schedule_interval_ms: args.schedule_interval_ms,
        ledger_epoch_ms: args.ledger_epoch_ms,
        unstake_cooldown_ms: args.unstake_cooldown_ms,
        slash_appeal_ms: args.slash_appeal_ms,
        faucet: args.faucet,
        rent_minute_ms: args.rent_minute_ms,
        checkpoint_interval_ms: args.checkpoint_interval_ms,
        io_price_micros: args.io_price_micros,
        mesh_relay_only: args.mesh_relay_only,
        tunnel_connections_per_node_max: args.tunnel_connections_per_node_max,
        tcp_keepalive_s: args.tcp_keepalive_s,
        tunnel_idle_timeout_s: args.tunnel_idle_timeout_s,
        http_header_read_timeout_ms: args.http_header_read_timeout_ms,
        ..flotilla_coordinator::Config::default()
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = flotilla_coordinator::start(config).await?;
    println!(
        "flotilla coordinator listening on {scheme}://{}",
        running.local_addr
    );
    stop_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let ca_pem = args
        .ca_cert
        .as_deref()
        .map(profile::read_ca_cert)
        .transpose()?;
    let config = flotilla_worker::WorkerConfig {
        coordinator_url: args.coordinator,
        token: args.token.map(flotilla_proto::secret::Secret::new),
        data_dir: args.data,
        simulate_gpus: args.simulate_gpu,
        real_gpus: !args.no_gpus,
        cpu_device: !args.no_cpu,
        tunnel_lanes: args
            .tunnel_lanes
            .unwrap_or_else(flotilla_worker::tunnel::tunnel_lanes_default),
        hostname: args.name,
        docker_socket: args.docker_socket,
        ray_dir: args.ray_dir,
        ca_pem,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut worker = tokio::spawn(flotilla_worker::run(config, stopped));
    tokio::select! {
        result = &mut worker => return Ok(result??),
        _ = stop_signal() => {}
    }
    let _ = stop.send(true);
    // The worker closes its session cleanly; give it a bounded moment to do so.
    match tokio::time::timeout(WORKER_STOP_DEADLINE, worker).await {
        Ok(result) => Ok(result??),
        Err(_) => Ok(()),
    }
}

/// How long `flotilla worker` waits for its session to close on Ctrl-C.
const WORKER_STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Most devices and requests a simulation takes: it holds them all in memory.
const SIMULATE_DEVICES_MAX: usize = 1_000_000;
const SIMULATE_REQUESTS_MAX: u64 = 10_000_000;

fn simulate(devices: usize, requests: u64, seed: u64, timing: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=SIMULATE_DEVICES_MAX).contains(&devices),
        "--devices must be between 1 and {SIMULATE_DEVICES_MAX}"
    );
    anyhow::ensure!(
        (1..=SIMULATE_REQUESTS_MAX).contains(&requests),
        "--requests must be between 1 and {SIMULATE_REQUESTS_MAX}"
    );
    let started = std::time::Instant::now();
    let report = flotilla_scheduler::simulate::simulate(flotilla_scheduler::simulate::Config {
        devices,
        requests,
        seed,
    });
    print!("{report}");
    if timing {
        println!("wall clock: {:.2} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Largest transcript `verify-proof` reads.
const TRANSCRIPT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Checks a signed transcript's signature, against `trusted` when given; returns the signer.
fn check_transcript_signature(
    document: &serde_json::Value,
    transcript: &flotilla_proof::Transcript,
    trusted: Option<&str>,
) -> anyhow::Result<String> {
    use ed25519_dalek::Verifier;
    let field = |name: &str| {
        document[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("invalid: the signed transcript lacks {name}"))
    };
    let (signer, signature) = (field("public_key")?, field("signature")?);
    if let Some(trusted) = trusted
        && trusted != signer
    {
        anyhow::bail!("invalid: signed by {signer}, not the trusted key {trusted}");
    }
    let key = flotilla_ledger::log::parse_key(&signer)
        .ok_or_else(|| anyhow::anyhow!("invalid: malformed public_key"))?;
    let bytes: [u8; 64] = hex::decode(&signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("invalid: malformed signature"))?;
    key.verify(
        &flotilla_proof::transcript_message(transcript),
        &ed25519_dalek::Signature::from_bytes(&bytes),
    )
    .map_err(|_| {
        anyhow::anyhow!("invalid: the coordinator's signature does not match the transcript")
    })?;
    if trusted.is_none() {
        eprintln!(
            "note: checked against the key the file names; pass --key with the coordinator's published key"
        );
    }
    Ok(signer)
}

fn verify_proof(file: &std::path::Path, key: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    anyhow::ensure!(
        size <= TRANSCRIPT_BYTES_MAX,
        "{} is larger than {TRANSCRIPT_BYTES_MAX} bytes",
        file.display()
    );
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let signed = document.get("transcript").is_some();
    let transcript: flotilla_proof::Transcript = serde_json::from_value(
        document
            .get("transcript")
            .cloned()
            .unwrap_or(document.clone()),
    )
    .with_context(|| format!("{} is not a proof transcript", file.display()))?;
    let signer = match (signed, key) {
        (true, _) => Some(check_transcript_signature(&document, &transcript, key)?),
        (false, Some(_)) => anyhow::bail!(
            "invalid: --key given but the transcript is not signed (use `flotilla proofs get --signed`)"
        ),
        (false, None) => None,
    };
    let challenge = &transcript.challenge;
    match flotilla_proof::verify_transcript(&transcript) {
        Ok(()) => {
            println!(
                "valid: {} checks of a {}x{} chain of {} products and {} checks of a {} MiB memory fill passed for class {}; \
                 committed in {} ms of {} ms, opened in {} ms of {} ms",
                challenge.compute.checks,
                challenge.compute.matrix_n,
                challenge.compute.matrix_n,
                challenge.compute.steps,
                challenge.memory.checks,
                challenge.memory.fill_bytes() >> 20,
                challenge.class,
                transcript.elapsed_ms,
                challenge.commit_deadline_ms(),
                transcript.answer_elapsed_ms,
                challenge.memory.answer_deadline_ms,
            );
            if let Some(signer) = signer {
                println!("signed by the coordinator key {signer}");
            }
            Ok(())
        }
        Err(failure) => anyhow::bail!("invalid: {failure}"),
    }
}
