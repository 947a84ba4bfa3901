//! `cargo xtask bench tunnel [--transfer-mib N]`: the cost of reaching a node's port through
//! Flotilla's tunnel, against the same traffic over raw TCP and through rathole, in one run on
//! loopback.
//!
//! One service, this program's hidden `bench tunnel --serve ADDR`, answers every path: a
//! connection's first byte picks a mode, either a sink (the client announces a byte count,
//! sends that many bytes, and the sink acknowledges the count it read) or an echo. Over each
//! path the bench measures:
//!
//! - throughput: `--transfer-mib` MiB (default 1,024) through one connection, and the same
//!   total split over [`PARALLEL_STREAMS`] connections at once;
//! - latency: the median round trip of a [`PING_BYTES`]-byte ping-pong over one connection,
//!   [`PING_ROUNDS`] rounds after a warm-up. The JSON line's round trips are measured side by
//!   side at the end, one connection per path (raw TCP, rathole with Noise, Flotilla's tunnel
//!   over the socket `flotilla connect --fdpass` hands over, as ssh's `ProxyUseFdpass` takes
//!   it, and Flotilla through `flotilla connect`'s local port) pinged in turn each round, so
//!   the machine's noise falls on every path alike;
//! - connect time: the median time from dialing a new connection to its first ping's answer,
//!   [`CONNECT_ROUNDS`] connections one after another: what a pool of pre-opened streams
//!   would shorten;
//! - idle cost (tunnels only): the growth of the proportional resident memory (`Pss`) of the
//!   tunnel's processes while [`IDLE_CONNECTIONS`] more connections sit idle, per connection.
//!   It is taken before the bulk transfers, whose freed buffers would otherwise absorb the
//!   growth.
//!
//! The paths: raw TCP (client straight to the service); rathole 0.5.0 with its Noise
//! transport (`Noise_NK_25519_ChaChaPoly_BLAKE2s`, the comparable protection) and, for
//! context, with plain TCP, installed once by `cargo install` under `target/bench-tools/`
//! (not `--locked`: its lock file pins a `time` release current compilers refuse); and
//! Flotilla: a release coordinator and worker, a `service` cluster declaring a port, the
//! service on that port inside the node (in the node's network namespace `flotilla-RUN` when
//! the worker made one, else on the host's loopback, where nodes share the host's network),
//! reached through `flotilla connect`, whose processes (coordinator, worker, connect) are the
//! ones whose memory counts. Without rathole (no registry), its figures are null.
//!
//! Which Flotilla path the headline round trip (`added_latency_p50_us`) is: the tunnel's own,
//! the same relays as rathole's. A rathole visitor dials the server's port, so rathole's server
//! and client relay; a Flotilla client that holds the coordinator's upgraded socket (ssh with
//! `--fdpass`, a browser's WebSocket through `/t/...`) has the coordinator and the worker relay.
//! `flotilla connect`'s local port, for clients that speak only plain TCP, puts a third relay
//! process (`connect` itself) in front, to turn the authenticated upgrade into the kind of
//! unauthenticated port rathole's visitor port already is; its round trip is reported beside
//! (`local_port_added_latency_p50_us`), without a target. Throughput is measured over both
//! paths alike (the headline figures are the tunnel's own, `local_port_*` the local port's);
//! connect time and idle memory through the local port, `connect`'s process counted.
//!
//! Human-readable figures go to standard error; the last line on standard output is one JSON
//! object.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
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
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{cargo, run as run_command};

const TRANSFER_MIB_DEFAULT: u64 = 1_024;
/// One write of the bulk transfer, and the sink's read buffer.
const CHUNK_BYTES: usize = 256 * 1024;
const PARALLEL_STREAMS: u64 = 4;
const PING_BYTES: usize = 64;
const PING_ROUNDS: usize = 2_000;
const PING_WARMUP_ROUNDS: usize = 200;
/// The side-by-side rounds are also compared in this many consecutive blocks.
const LATENCY_BLOCKS: usize = 10;
const CONNECT_ROUNDS: usize = 300;
const CONNECT_WARMUP_ROUNDS: usize = 30;
/// Idle connections opened and kept before the measured ones, so one-time growth (tables,
/// allocator arenas) is not charged to them. With the measured ones, below the tunnel's 256
/// streams per worker, which the bench's coordinator lets one node hold.
const IDLE_WARMUP_CONNECTIONS: usize = 32;
const IDLE_CONNECTIONS: usize = 200;
const TUNNEL_CONNECTIONS_PER_NODE_MAX: usize = 256;
const _: () = assert!(IDLE_WARMUP_CONNECTIONS + IDLE_CONNECTIONS < TUNNEL_CONNECTIONS_PER_NODE_MAX);
/// Pause before each memory reading, for the processes to finish their bookkeeping.
const SETTLE_MS: u64 = 1_000;
/// How long a path has to answer its first ping.
const READY_TIMEOUT_S: u64 = 60;
/// Bound on any one measurement (a transfer, the pings, the idle connections).
const MEASURE_TIMEOUT_S: u64 = 600;
/// How long the worker has to remove a stopped node's network namespace.
const NAMESPACE_GONE_TIMEOUT_S: u64 = 10;
/// The idle cost the issue allows, per connection.
const IDLE_CONNECTION_BYTES_TARGET: u64 = 36_000;

const MODE_SINK: u8 = b'S';
const MODE_ECHO: u8 = b'E';

const RATHOLE_VERSION: &str = "0.5.0";
/// Server, client and the Noise transport; not TLS or WebSocket, which would need OpenSSL.
const RATHOLE_FEATURES: &str = "server,client,noise";

const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
const PRICE_PER_HOUR_MICROS: u64 = 2_000_000;
const FAUCET_MICROS: u64 = 10_000_000_000;

/// What the command line asked for.
enum Mode {
    /// Build the release binaries, then run the bench in a release build of this program.
    Launch { transfer_mib: u64 },
    /// Run the bench here (already a release build).
    Here { transfer_mib: u64 },
    /// Be the service at this address until killed.
    Serve { address: String },
}

fn parse(args: &[String]) -> Result<Mode> {
    const USAGE: &str = "usage: cargo xtask bench tunnel [--transfer-mib N]";
    let mut transfer_mib = TRANSFER_MIB_DEFAULT;
    let mut here = false;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--here" => here = true,
            "--transfer-mib" => {
                let value = rest.next().context(USAGE)?;
                transfer_mib = value.parse().context("--transfer-mib N")?;
                if transfer_mib == 0 {
                    bail!("--transfer-mib must be at least 1");
                }
            }
            "--serve" => {
                let address = rest.next().context("--serve ADDR")?.clone();
                return Ok(Mode::Serve { address });
            }
            _ => bail!(USAGE),
        }
    }
    Ok(if here {
        Mode::Here { transfer_mib }
    } else {
        Mode::Launch { transfer_mib }
    })
}

pub fn run(args: &[String]) -> Result<()> {
    match parse(args)? {
        Mode::Launch { transfer_mib } => {
            run_command(cargo().args(["build", "--release", "--bin", "flotilla"]))?;
            let forwarded = ["--transfer-mib".to_owned(), transfer_mib.to_string()];
            crate::rerun_release_bench_with("tunnel", &forwarded)
        }
        Mode::Here { transfer_mib } => {
            if Command::new("bwrap").arg("--version").output().is_err() {
                bail!(
                    "bubblewrap is not installed (apt-get install -y bubblewrap): nodes cannot run"
                );
            }
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            runtime()?.block_on(bench(transfer_mib))
        }
        Mode::Serve { address } => runtime()?.block_on(serve(&address)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn workspace_root() -> &'static Path {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask)
}

// --- The service --------------------------------------------------------------------------

/// The sink and echo service; prints `listening on ADDR` first.
async fn serve(address: &str) -> Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = answer(stream).await;
        });
    }
}

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    match stream.read_u8().await? {
        MODE_SINK => {
            let expected_bytes = stream.read_u64_le().await?;
            let received_bytes = discard(&mut stream, expected_bytes).await?;
            stream.write_u64_le(received_bytes).await
        }
        _ => echo(&mut stream).await,
    }
}

/// Reads and drops up to `expected_bytes`; the count read.
async fn discard(stream: &mut TcpStream, expected_bytes: u64) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut received_bytes = 0u64;
    while received_bytes < expected_bytes {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        received_bytes += read as u64;
    }
    Ok(received_bytes)
}

async fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buffer = [0u8; PING_BYTES * 4];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..read]).await?;
    }
}

// --- The client's measurements ------------------------------------------------------------

/// What one path measured.
#[derive(Debug, Clone, Copy)]
struct Figures {
    gbit_s: f64,
    parallel_gbit_s: f64,
    latency_p50_us: f64,
    connect_p50_us: f64,
    idle_connection_bytes: Option<i64>,
}

async fn open(address: SocketAddr, mode: u8) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    stream.write_u8(mode).await?;
    Ok(stream)
}

async fn ping_once(stream: &mut TcpStream) -> Result<()> {
    let message = [0x5a_u8; PING_BYTES];
    let mut back = [0u8; PING_BYTES];
    stream.write_all(&message).await?;
    stream.read_exact(&mut back).await?;
    if back != message {
        bail!("the echo came back altered");
    }
    Ok(())
}

/// Waits until a ping through `address` comes back.
async fn until_ready(address: SocketAddr) -> Result<()> {
    let started = Instant::now();
    loop {
        let attempt = async {
            let mut stream = open(address, MODE_ECHO).await?;
            ping_once(&mut stream).await
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(READY_TIMEOUT_S) {
            bail!("{address} did not answer a ping within {READY_TIMEOUT_S} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes that do not compress, so no path gains from their shape.
fn payload() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..CHUNK_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `transfer_bytes` over `stream`, a connection to the sink, and waits for its count.
async fn transfer(mut stream: TcpStream, transfer_bytes: u64) -> Result<()> {
    stream.write_u64_le(transfer_bytes).await?;
    let chunk = payload();
    let mut sent_bytes = 0u64;
    while sent_bytes < transfer_bytes {
        let len = (transfer_bytes - sent_bytes).min(CHUNK_BYTES as u64) as usize;
        stream.write_all(&chunk[..len]).await?;
        sent_bytes += len as u64;
    }
    let received_bytes = stream
        .read_u64_le()
        .await
        .context("the sink's acknowledgement")?;
    if received_bytes != transfer_bytes {
        bail!("the sink read {received_bytes} of {transfer_bytes} bytes");
    }
    Ok(())
}

/// `transfer_bytes` in all over `streams` connections at once, in Gbit/s.
async fn throughput_gbit_s(address: SocketAddr, transfer_bytes: u64, streams: u64) -> Result<f64> {
    let mut opened = Vec::new();
    for _ in 0..streams {
        opened.push(open(address, MODE_SINK).await?);
    }
    throughput_over_gbit_s(opened, transfer_bytes).await
}

/// `transfer_bytes` in all over the sink connections `streams` at once, in Gbit/s; the clock
/// starts once every one is open.
async fn throughput_over_gbit_s(streams: Vec<TcpStream>, transfer_bytes: u64) -> Result<f64> {
    let per_stream_bytes = transfer_bytes / streams.len() as u64;
    let total_bytes = per_stream_bytes * streams.len() as u64;
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(transfer(stream, per_stream_bytes)))
        .collect();
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((total_bytes * 8) as f64 / seconds / 1e9)
}

/// The median ping round trip through `address` alone.
async fn latency_p50_us(address: SocketAddr) -> Result<f64> {
    let round_trips_us = interleaved_round_trips_us(vec![open(address, MODE_ECHO).await?]).await?;
    Ok(p50(&round_trips_us[0]))
}

/// The ping round trips over each of `streams` (echoes), in the order measured, in
/// interleaved rounds: each round pings every stream once, starting one further along each
/// time, so the machine's moments of noise (a neighbour's burst, a frequency change) fall on
/// every path alike instead of on whichever was measured then.
async fn interleaved_round_trips_us(mut streams: Vec<TcpStream>) -> Result<Vec<Vec<f64>>> {
    for stream in &mut streams {
        for _ in 0..PING_WARMUP_ROUNDS {
            ping_once(stream).await?;
        }
    }
    let count = streams.len();
    let mut round_trips_us = vec![Vec::with_capacity(PING_ROUNDS); count];
    for round in 0..PING_ROUNDS {
        for offset in 0..count {
            let index = (round + offset) % count;
            let started = Instant::now();
            ping_once(&mut streams[index]).await?;
            round_trips_us[index].push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(round_trips_us)
}

/// The median of `samples`.
fn p50(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// In how many of [`LATENCY_BLOCKS`] consecutive blocks of rounds the median of `ours` was at
/// most that of `theirs`: whether a difference of medians outlasts the machine's drift.
fn blocks_at_most(ours: &[f64], theirs: &[f64]) -> usize {
    let block_len = ours.len().min(theirs.len()) / LATENCY_BLOCKS;
    (0..LATENCY_BLOCKS)
        .filter(|block| {
            let span = block * block_len..(block + 1) * block_len;
            p50(&ours[span.clone()]) <= p50(&theirs[span])
        })
        .count()
}

/// The median time from dialing a new connection to its first answered ping.
async fn connect_p50_us(address: SocketAddr) -> Result<f64> {
    let mut connect_times_us = Vec::with_capacity(CONNECT_ROUNDS);
    for round in 0..CONNECT_WARMUP_ROUNDS + CONNECT_ROUNDS {
        let started = Instant::now();
        let mut stream = open(address, MODE_ECHO).await?;
        ping_once(&mut stream).await?;
        if round >= CONNECT_WARMUP_ROUNDS {
            connect_times_us.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    connect_times_us.sort_by(f64::total_cmp);
    Ok(connect_times_us[connect_times_us.len() / 2])
}

/// Opens `count` connections, each pinged once so it reaches the service.
async fn idle_connections(address: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = open(address, MODE_ECHO).await?;
        ping_once(&mut stream).await?;
        connections.push(stream);
    }
    Ok(connections)
}

/// The growth of `pids`' memory per idle connection through `address`.
async fn idle_connection_bytes(address: SocketAddr, pids: &[u32]) -> Result<i64> {
    let _warm = idle_connections(address, IDLE_WARMUP_CONNECTIONS).await?;
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    let before_bytes = memory_bytes(pids)?;
    let _measured = idle_connections(address, IDLE_CONNECTIONS).await?;
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    let after_bytes = memory_bytes(pids)?;
    Ok((after_bytes - before_bytes) / IDLE_CONNECTIONS as i64)
}

/// The processes' proportional set size (`Pss`), or resident size where the kernel has no
/// `smaps_rollup`, in bytes.
fn memory_bytes(pids: &[u32]) -> Result<i64> {
    let mut total_bytes = 0;
    for pid in pids {
        let (file, field) = match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            Ok(text) => (text, "Pss:"),
            Err(_) => (
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .with_context(|| format!("process {pid} is gone"))?,
                "VmRSS:",
            ),
        };
        total_bytes += kib_field(&file, field)
            .with_context(|| format!("no {field} for process {pid}"))?
            * 1024;
    }
    Ok(total_bytes)
}

fn kib_field(text: &str, field: &str) -> Option<i64> {
    let line = text.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Every figure for one path; the idle cost only where `memory_pids` names the processes.
async fn measure(
    address: SocketAddr,
    transfer_bytes: u64,
    memory_pids: Option<&[u32]>,
) -> Result<Figures> {
    let limit = Duration::from_secs(MEASURE_TIMEOUT_S);
    let bounded = |what: &'static str| move |_| anyhow::anyhow!("{what} took over {limit:?}");
    let idle_connection_bytes = match memory_pids {
        Some(pids) => Some(
            tokio::time::timeout(limit, idle_connection_bytes(address, pids))
                .await
                .map_err(bounded("idle connections"))??,
        ),
        None => None,
    };
    let gbit_s = tokio::time::timeout(limit, throughput_gbit_s(address, transfer_bytes, 1))
        .await
        .map_err(bounded("the transfer"))??;
    let parallel = throughput_gbit_s(address, transfer_bytes, PARALLEL_STREAMS);
    let parallel_gbit_s = tokio::time::timeout(limit, parallel)
        .await
        .map_err(bounded("the parallel transfer"))??;
    let latency_p50_us = tokio::time::timeout(limit, latency_p50_us(address))
        .await
        .map_err(bounded("the pings"))??;
    let connect_p50_us = tokio::time::timeout(limit, connect_p50_us(address))
        .await
        .map_err(bounded("the connections"))??;
    Ok(Figures {
        gbit_s,
        parallel_gbit_s,
        latency_p50_us,
        connect_p50_us,
        idle_connection_bytes,
    })
}

fn report(path: &str, figures: &Figures) {
    let idle = figures
        .idle_connection_bytes
        .map_or(String::new(), |bytes| {
            format!(", {bytes} B per idle connection")
        });
    eprintln!(
        "{path:<14} {:>6.2} Gbit/s one stream, {:>6.2} Gbit/s over {PARALLEL_STREAMS}, p50 round trip {:>5.0} µs, p50 connect {:>6.0} µs{idle}",
        figures.gbit_s, figures.parallel_gbit_s, figures.latency_p50_us, figures.connect_p50_us
    );
}

// --- Processes ------------------------------------------------------------------------------

/// Every process the bench started, killed when dropped (also on error), and its scratch
/// folder.
struct Procs {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Procs {
    fn new() -> Result<Procs> {
        let dir =
            std::env::temp_dir().join(format!("flotilla-tunnel-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Procs {
            children: Vec::new(),
            dir,
        })
    }

    /// Starts `command`; its pid.
    fn spawn(&mut self, command: &mut Command) -> Result<u32> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts `command` and reads the first line it prints; its pid and that line.
    fn spawn_reading_line(&mut self, command: &mut Command) -> Result<(u32, String)> {
        let pid = self.spawn(command.stdout(Stdio::piped()))?;
        let child = self.children.last_mut().context("the child just started")?;
        let stdout = child.stdout.take().context("its standard output")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.is_empty() {
            bail!("{command:?} ended without a word");
        }
        Ok((pid, line.trim().to_owned()))
    }

    /// Kills the process `pid` now.
    fn stop(&mut self, pid: u32) {
        if let Some(index) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(index);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Procs {
    /// Last started first: connections' ends before the tunnel, the worker before its
    /// coordinator.
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The address after `listening on ` in a first line (`listening on ADDR[: more]`).
fn listening_address(line: &str) -> Result<SocketAddr> {
    let rest = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    let address = rest.split_once(": ").map_or(rest, |(address, _)| address);
    address
        .parse()
        .with_context(|| format!("no address in {line:?}"))
}

/// The service, started by `command` (this program, maybe through `ip netns exec`).
fn start_sink(procs: &mut Procs, command: &mut Command) -> Result<SocketAddr> {
    let (_, line) = procs.spawn_reading_line(command)?;
    listening_address(&line)
}

fn sink_command(exe: &Path, address: &str) -> Command {
    let mut command = Command::new(exe);
    command.args(["bench", "tunnel", "--serve", address]);
    command
}

// --- rathole --------------------------------------------------------------------------------

/// rathole's binary, installed under `target/bench-tools/rathole` the first time.
fn rathole_binary() -> Result<PathBuf> {
    let root = workspace_root().join("target/bench-tools/rathole");
    let binary = root.join("bin/rathole");
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!(
        "installing rathole {RATHOLE_VERSION} into {} (once; later runs reuse it)",
        root.display()
    );
    run_command(
        cargo()
            .args(["install", "rathole", "--version", RATHOLE_VERSION])
            .args(["--no-default-features", "--features", RATHOLE_FEATURES])
            .arg("--root")
            .arg(&root),
    )?;
    Ok(binary)
}

/// A fresh x25519 keypair from `rathole --genkey`: (private, public), base64.
fn rathole_keypair(binary: &Path) -> Result<(String, String)> {
    let output = Command::new(binary).arg("--genkey").output()?;
    if !output.status.success() {
        bail!("rathole --genkey failed with {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let after = |label: &str| {
        let mut lines = text.lines().skip_while(|line| line.trim() != label);
        lines
            .nth(1)
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .with_context(|| format!("no {label:?} in rathole --genkey's output"))
    };
    Ok((after("Private Key:")?, after("Public Key:")?))
}

/// The `[server]` and `[client]` configurations of one rathole service from `visitor_port`
/// to `sink`; Noise with `keys` (private, public), plain TCP without.
fn rathole_configs(
    control_port: u16,
    visitor_port: u16,
    sink: SocketAddr,
    keys: Option<&(String, String)>,
) -> (String, String) {
    let transport = if keys.is_some() { "noise" } else { "tcp" };
    let (server_noise, client_noise) = match keys {
        Some((private, public)) => (
            format!("[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
        ),
        None => (String::new(), String::new()),
    };
    let server = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control_port}\"\ndefault_token = \"bench\"\n\
         [server.transport]\ntype = \"{transport}\"\n{server_noise}\
         [server.services.sink]\nbind_addr = \"127.0.0.1:{visitor_port}\"\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control_port}\"\ndefault_token = \"bench\"\n\
         [client.transport]\ntype = \"{transport}\"\n{client_noise}\
         [client.services.sink]\nlocal_addr = \"{sink}\"\n"
    );
    (server, client)
}

/// Starts a rathole server and client for one transport; the visitor address and both pids.
fn start_rathole(
    procs: &mut Procs,
    binary: &Path,
    sink: SocketAddr,
    keys: Option<&(String, String)>,
) -> Result<(SocketAddr, [u32; 2])> {
    let visitor_port = free_port()?;
    let (server, client) = rathole_configs(free_port()?, visitor_port, sink, keys);
    let name = if keys.is_some() { "noise" } else { "tcp" };
    let mut pids = [0; 2];
    for (index, (side, config)) in [("server", server), ("client", client)].iter().enumerate() {
        let config_path = procs.dir.join(format!("rathole-{name}-{side}.toml"));
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(procs.dir.join(format!("rathole-{name}-{side}.log")))?;
        pids[index] = procs.spawn(
            Command::new(binary)
                .arg(format!("--{side}"))
                .arg(&config_path)
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
    }
    Ok((SocketAddr::from(([127, 0, 0, 1], visitor_port)), pids))
}

/// rathole's figures with one transport, and its visitor address and processes, still
/// running.
async fn measure_rathole(
    procs: &mut Procs,
    binary: &Path,
    sink: SocketAddr,
    transfer_bytes: u64,
    keys: Option<&(String, String)>,
) -> Result<(Figures, SocketAddr, [u32; 2])> {
    let (visitor, pids) = start_rathole(procs, binary, sink, keys)?;
    until_ready(visitor).await?;
    let figures = measure(visitor, transfer_bytes, Some(&pids)).await?;
    Ok((figures, visitor, pids))
}

/// rathole's runs: with Noise (left running, for the round trips side by side with
/// Flotilla's) and with plain TCP.
struct Ratholes {
    noise: Figures,
    tcp: Figures,
    noise_visitor: SocketAddr,
    noise_pids: [u32; 2],
}

/// rathole with Noise, then with plain TCP; None (with the reason printed) where rathole
/// cannot be installed.
async fn measure_ratholes(
    procs: &mut Procs,
    sink: SocketAddr,
    transfer_bytes: u64,
) -> Result<Option<Ratholes>> {
    let binary = match rathole_binary() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("rathole could not be installed ({error:#}); its figures are null");
            return Ok(None);
        }
    };
    let keys = rathole_keypair(&binary)?;
    let (noise, noise_visitor, noise_pids) =
        measure_rathole(procs, &binary, sink, transfer_bytes, Some(&keys)).await?;
    report("rathole noise", &noise);
    let (tcp, _, tcp_pids) = measure_rathole(procs, &binary, sink, transfer_bytes, None).await?;
    report("rathole tcp", &tcp);
    for pid in tcp_pids {
        procs.stop(pid);
    }
    Ok(Some(Ratholes {
        noise,
        tcp,
        noise_visitor,
        noise_pids,
    }))
}

// --- Flotilla -------------------------------------------------------------------------------

fn flotilla_binary() -> PathBuf {
    workspace_root().join("target/release/flotilla")
}

/// A coordinator and one worker with a priced simulated GPU, and a renter with funds.
struct Market {
    url: String,
    renter: Client,
    renter_key: String,
    coordinator_pid: u32,
    worker_pid: u32,
}

fn start_coordinator(procs: &mut Procs) -> Result<(u32, String)> {
    let database = format!("sqlite:{}", procs.dir.join("bench.db").display());
    let (pid, line) = procs.spawn_reading_line(
        Command::new(flotilla_binary())
            .args(["coordinator", "--listen", "127.0.0.1:0"])
            .args(["--tunnel-listen", "127.0.0.1:0"])
            .args(["--database", &database])
            .args(["--allow-simulated-devices", "--faucet"])
            .args([
                "--heartbeat-interval-ms",
                &HEARTBEAT_INTERVAL_MS.to_string(),
            ])
            .args(["--schedule-interval-ms", "100"])
            .args(["--proof-target-ms", "20", "--proof-memory-pct", "1"])
            // The idle connections all go to one node: let it hold the worker's every stream.
            .args([
                "--tunnel-connections-per-node-max",
                &TUNNEL_CONNECTIONS_PER_NODE_MAX.to_string(),
            ])
            .env("FLOTILLA_LOG", "warn"),
    )?;
    let url = line
        .rsplit(' ')
        .next()
        .filter(|url| url.starts_with("http://"))
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((pid, url.to_owned()))
}

fn start_worker(procs: &mut Procs, url: &str, token: &str) -> Result<u32> {
    let data = procs.dir.join("worker");
    std::fs::create_dir_all(&data)?;
    // The sandbox runs as nobody, which must pass through to the run directories.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    procs.spawn(
        Command::new(flotilla_binary())
            // Only the simulated GPU: a real one's proof would run, and its memory come and go,
            // during the measurements.
            .args(["worker", "--coordinator", url, "--no-cpu", "--no-gpus"])
            .args(["--simulate-gpu", "H100x1", "--token", token])
            .arg("--data")
            .arg(&data)
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null()),
    )
}

/// A new account with `role`: its client and key.
async fn account(anonymous: &Client, name: &str, role: Role) -> Result<(Client, String)> {
    let key = crate::create_account(anonymous, name, role)
        .await?
        .api_key
        .secret;
    Ok((anonymous.with_key(&key), key))
}

/// Waits for the worker's device to prove itself, then prices it.
async fn price_device(supplier: &Client) -> Result<()> {
    let started = Instant::now();
    loop {
        let page: Page<Device> = supplier.get("devices").await?;
        if let Some(device) = page.items.iter().find(|d| d.state == DeviceState::Idle) {
            let price = SetPriceRequest {
                price_per_hour: Some(PRICE_PER_HOUR_MICROS),
            };
            let _: Device = supplier
                .post(&format!("devices/{}/price", device.id), &price)
                .await?;
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(READY_TIMEOUT_S) {
            bail!("the worker's device did not prove itself within {READY_TIMEOUT_S} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_market(procs: &mut Procs) -> Result<Market> {
    let (coordinator_pid, url) = start_coordinator(procs)?;
    let anonymous = Client::new(&url, None);
    let (supplier, _) = account(&anonymous, "supplier", Role::Supplier).await?;
    let (renter, renter_key) = account(&anonymous, "renter", Role::Renter).await?;
    let token_request = CreateEnrollmentTokenRequest {
        name: None,
        expires_in_s: None,
    };
    let token: CreatedEnrollmentToken = supplier.post("enrollment-tokens", &token_request).await?;
    let worker_pid = start_worker(procs, &url, &token.secret)?;
    price_device(&supplier).await?;
    let faucet = FaucetRequest {
        token: "IOSD".into(),
        amount_micros: FAUCET_MICROS,
    };
    let _: serde_json::Value = renter
        .post_idempotent("wallet/faucet", &faucet, "bench")
        .await?;
    Ok(Market {
        url,
        renter,
        renter_key,
        coordinator_pid,
        worker_pid,
    })
}

fn service(port: u16) -> ClusterSpec {
    ClusterSpec {
        kind: "service".into(),
        ports: vec![port],
        ..ClusterSpec::new("tunnel-bench", 1, vec!["sleep".into(), "3600".into()])
    }
}

/// Deploys the one-node service declaring `port`; the cluster once running.
async fn deploy(renter: &Client, port: u16) -> Result<ClusterInfo> {
    let cluster: ClusterInfo = renter.post("clusters", &service(port)).await?;
    let started = Instant::now();
    loop {
        let info: ClusterInfo = renter.get(&format!("clusters/{}", cluster.id)).await?;
        if info.state == "running" && info.nodes.first().is_some_and(|n| n.state == "running") {
            return Ok(info);
        }
        if started.elapsed() > Duration::from_secs(READY_TIMEOUT_S) {
            bail!(
                "cluster {} stuck in {} ({:?})",
                info.id,
                info.state,
                info.waiting_because
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service on `port` inside the node: in the run's network namespace where the worker
/// made one, else on the host's loopback. Which of the two it was.
fn start_node_sink(procs: &mut Procs, exe: &Path, run_id: &str, port: u16) -> Result<&'static str> {
    let namespace = format!("flotilla-{run_id}");
    if Path::new("/run/netns").join(&namespace).exists() {
        // Every address inside the namespace: the worker may dial its loopback or its link.
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &namespace]).arg(exe).args([
            "bench",
            "tunnel",
            "--serve",
            &format!("0.0.0.0:{port}"),
        ]);
        start_sink(procs, &mut command)?;
        Ok("namespace")
    } else {
        start_sink(procs, &mut sink_command(exe, &format!("127.0.0.1:{port}")))?;
        Ok("host")
    }
}

/// `flotilla connect` to node 0's `port` of `cluster`, as the renter.
fn connect_command(market: &Market, cluster: &str, port: u16) -> Command {
    let mut command = Command::new(flotilla_binary());
    command
        .args([
            "connect",
            cluster,
            "--node",
            "0",
            "--port",
            &port.to_string(),
        ])
        .args(["--url", &market.url, "--api-key", &market.renter_key])
        .env("FLOTILLA_LOG", "warn");
    command
}

/// `flotilla connect` to the node's `port`; its pid and local address.
fn start_connect(
    procs: &mut Procs,
    market: &Market,
    cluster: &str,
    port: u16,
) -> Result<(u32, SocketAddr)> {
    let (pid, line) = procs.spawn_reading_line(&mut connect_command(market, cluster, port))?;
    Ok((pid, listening_address(&line)?))
}

/// Flotilla's figures through `flotilla connect`'s local port, and its throughput over the
/// tunnel's own path; then the round trips over both, over raw TCP to `raw` and through
/// rathole's `rathole` visitor address, side by side; and where the node's service listened
/// (`namespace` or `host`).
async fn measure_flotilla(
    procs: &mut Procs,
    exe: &Path,
    transfer_bytes: u64,
    raw: SocketAddr,
    rathole: Option<SocketAddr>,
) -> Result<Flotilla> {
    let market = start_market(procs).await?;
    let port = free_port()?;
    let cluster = deploy(&market.renter, port).await?;
    let node = cluster
        .nodes
        .first()
        .context("the running cluster has no node")?;
    let node_network = start_node_sink(procs, exe, &node.run_id, port)?;
    let (connect_pid, local) = start_connect(procs, &market, &cluster.id, port)?;
    until_ready(local).await?;
    let pids = [market.coordinator_pid, market.worker_pid, connect_pid];
    let figures = measure(local, transfer_bytes, Some(&pids)).await;
    let tunnel = tunnel_throughput(&market, &cluster.id, port, transfer_bytes).await;
    let latencies = async {
        let mut streams = vec![
            open(raw, MODE_ECHO).await?,
            open_fdpassed(&market, &cluster.id, port, MODE_ECHO).await?,
            open(local, MODE_ECHO).await?,
        ];
        if let Some(visitor) = rathole {
            streams.push(open(visitor, MODE_ECHO).await?);
        }
        let limit = Duration::from_secs(MEASURE_TIMEOUT_S);
        let round_trips_us = tokio::time::timeout(limit, interleaved_round_trips_us(streams))
            .await
            .map_err(|_| anyhow::anyhow!("the interleaved pings took over {limit:?}"))??;
        let rathole = round_trips_us.get(3);
        anyhow::Ok(Latencies {
            raw_us: p50(&round_trips_us[0]),
            tunnel_us: p50(&round_trips_us[1]),
            local_port_us: p50(&round_trips_us[2]),
            rathole_noise_us: rathole.map(|samples| p50(samples)),
            blocks_at_most_rathole: rathole.map(|samples| {
                let tunnel = blocks_at_most(&round_trips_us[1], samples);
                (tunnel, blocks_at_most(&round_trips_us[2], samples))
            }),
        })
    }
    .await;
    let terminated: Result<ClusterInfo, _> = market
        .renter
        .post_empty(&format!("clusters/{}/terminate", cluster.id))
        .await;
    match terminated {
        Ok(_) => until_namespace_gone(&node.run_id).await,
        Err(error) => eprintln!("terminating cluster {}: {error}", cluster.id),
    }
    Ok(Flotilla {
        local_port: figures?,
        tunnel: tunnel?,
        latencies: latencies?,
        node_network,
    })
}

/// What [`measure_flotilla`] measured.
struct Flotilla {
    /// Through `flotilla connect`'s local port.
    local_port: Figures,
    /// Over the tunnel's own path.
    tunnel: Throughput,
    latencies: Latencies,
    node_network: &'static str,
}

/// Median round trips measured side by side ([`interleaved_round_trips_us`]).
struct Latencies {
    raw_us: f64,
    /// The tunnel's own path, the topology of rathole's visitor port: the client holds the
    /// coordinator's upgraded socket, so the coordinator and the worker are the only relays.
    /// Measured over the socket `flotilla connect --fdpass` hands over (ssh's
    /// `ProxyUseFdpass`); a browser's WebSocket through `/t/...` takes the same path.
    tunnel_us: f64,
    /// Through `flotilla connect`'s local port: one relay process more.
    local_port_us: f64,
    rathole_noise_us: Option<f64>,
    /// Of [`LATENCY_BLOCKS`] blocks of rounds, those in which the tunnel's median, and the
    /// local port's, was at most rathole's.
    blocks_at_most_rathole: Option<(usize, usize)>,
}

/// A connection (in `mode`) made the way ssh makes one with `ProxyUseFdpass`: `flotilla connect
/// --fdpass` asks the coordinator for the tunnel, hands this program the socket itself and
/// exits, so only the coordinator and the worker relay, as rathole's server and client do.
async fn open_fdpassed(market: &Market, cluster: &str, port: u16, mode: u8) -> Result<TcpStream> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let status = tokio::process::Command::from(connect_command(market, cluster, port))
        .arg("--fdpass")
        .stdout(std::os::fd::OwnedFd::from(theirs))
        .status()
        .await?;
    if !status.success() {
        bail!("flotilla connect --fdpass failed: {status}");
    }
    let socket = std::net::TcpStream::from(flotilla_client::fdpass::receive(&ours)?);
    socket.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(socket)?;
    stream.write_u8(mode).await?;
    Ok(stream)
}

/// Throughput over the tunnel's own path: one stream, then [`PARALLEL_STREAMS`] at once, each
/// a socket `flotilla connect --fdpass` handed over ([`open_fdpassed`]).
async fn tunnel_throughput(
    market: &Market,
    cluster: &str,
    port: u16,
    transfer_bytes: u64,
) -> Result<Throughput> {
    let limit = Duration::from_secs(MEASURE_TIMEOUT_S);
    let mut gbit_s = [0.0; 2];
    for (figure, streams) in gbit_s.iter_mut().zip([1, PARALLEL_STREAMS]) {
        let mut opened = Vec::new();
        for _ in 0..streams {
            opened.push(open_fdpassed(market, cluster, port, MODE_SINK).await?);
        }
        *figure = tokio::time::timeout(limit, throughput_over_gbit_s(opened, transfer_bytes))
            .await
            .map_err(|_| anyhow::anyhow!("the tunnel's transfer took over {limit:?}"))??;
    }
    Ok(Throughput {
        gbit_s: gbit_s[0],
        parallel_gbit_s: gbit_s[1],
    })
}

/// One stream's and [`PARALLEL_STREAMS`]' throughput.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    gbit_s: f64,
    parallel_gbit_s: f64,
}

/// Waits for the worker to remove the stopped node's namespace, so killing the worker after
/// does not leave it (and its veth pair) behind; removes it past [`NAMESPACE_GONE_TIMEOUT_S`].
async fn until_namespace_gone(run_id: &str) {
    let namespace = format!("flotilla-{run_id}");
    let path = Path::new("/run/netns").join(&namespace);
    let started = Instant::now();
    while path.exists() {
        if started.elapsed() > Duration::from_secs(NAMESPACE_GONE_TIMEOUT_S) {
            eprintln!("the worker left namespace {namespace} behind; removing it");
            let _ = Command::new("ip")
                .args(["netns", "delete", &namespace])
                .status();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- The run --------------------------------------------------------------------------------

fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

async fn bench(transfer_mib: u64) -> Result<()> {
    let transfer_bytes = transfer_mib << 20;
    let exe = std::env::current_exe().context("this program's path")?;
    let mut procs = Procs::new()?;
    let sink = start_sink(&mut procs, &mut sink_command(&exe, "127.0.0.1:0"))?;
    until_ready(sink).await?;
    let raw = measure(sink, transfer_bytes, None).await?;
    report("raw tcp", &raw);
    let rathole = measure_ratholes(&mut procs, sink, transfer_bytes).await?;
    let visitor = rathole.as_ref().map(|r| r.noise_visitor);
    let flotilla = measure_flotilla(&mut procs, &exe, transfer_bytes, sink, visitor).await?;
    if let Some(rathole) = &rathole {
        for pid in rathole.noise_pids {
            procs.stop(pid);
        }
    }
    report("flotilla port", &flotilla.local_port);
    eprintln!(
        "flotilla tunnel {:>6.2} Gbit/s one stream, {:>6.2} Gbit/s over {PARALLEL_STREAMS} \
         (ssh's `connect --fdpass`, a browser's /t/)",
        flotilla.tunnel.gbit_s, flotilla.tunnel.parallel_gbit_s
    );
    let latencies = &flotilla.latencies;
    let rathole_us = latencies
        .rathole_noise_us
        .map_or("-".to_owned(), |us| format!("{us:.0}"));
    eprintln!(
        "side by side, p50 round trip: raw tcp {:.0} µs, rathole noise {rathole_us} µs, \
         flotilla's tunnel {:.0} µs, through `flotilla connect`'s local port {:.0} µs",
        latencies.raw_us, latencies.tunnel_us, latencies.local_port_us
    );
    if let Some((tunnel, local_port)) = latencies.blocks_at_most_rathole {
        eprintln!(
            "blocks of rounds (of {LATENCY_BLOCKS}) with a median at most rathole's: \
             flotilla's tunnel {tunnel}, through the local port {local_port}"
        );
    }
    let paths = Paths {
        raw: &raw,
        rathole: rathole.as_ref(),
        flotilla: &flotilla,
    };
    println!("{}", summary(transfer_mib, &paths));
    Ok(())
}

/// Every path's figures, for the summary.
struct Paths<'a> {
    raw: &'a Figures,
    rathole: Option<&'a Ratholes>,
    flotilla: &'a Flotilla,
}

/// The JSON line. Round trips and added latencies come from the side-by-side rounds, except
/// rathole with plain TCP's (context), measured alone.
fn summary(transfer_mib: u64, paths: &Paths) -> serde_json::Value {
    let Paths {
        raw,
        rathole,
        flotilla,
    } = paths;
    let Flotilla {
        local_port,
        tunnel,
        latencies,
        node_network,
    } = flotilla;
    let noise = rathole.map(|r| &r.noise);
    let tcp = rathole.map(|r| &r.tcp);
    let mut figures = json!({
        "bench": "tunnel",
        "transfer_mib": transfer_mib,
        "parallel_streams": PARALLEL_STREAMS,
        "ping_bytes": PING_BYTES,
        "ping_rounds": PING_ROUNDS,
        "idle_connections": IDLE_CONNECTIONS,
        "node_network": node_network,
        "raw_tcp_gbit_s": rounded(raw.gbit_s, 2),
        "raw_tcp_parallel_gbit_s": rounded(raw.parallel_gbit_s, 2),
        "rathole_noise_gbit_s": noise.map(|f| rounded(f.gbit_s, 2)),
        "rathole_noise_parallel_gbit_s": noise.map(|f| rounded(f.parallel_gbit_s, 2)),
        "rathole_tcp_gbit_s": tcp.map(|f| rounded(f.gbit_s, 2)),
        "rathole_tcp_parallel_gbit_s": tcp.map(|f| rounded(f.parallel_gbit_s, 2)),
        "flotilla_gbit_s": rounded(tunnel.gbit_s, 2),
        "flotilla_parallel_gbit_s": rounded(tunnel.parallel_gbit_s, 2),
        "throughput_vs_rathole": noise.map(|f| rounded(tunnel.gbit_s / f.gbit_s, 3)),
        "parallel_throughput_vs_rathole":
            noise.map(|f| rounded(tunnel.parallel_gbit_s / f.parallel_gbit_s, 3)),
        "throughput_vs_raw_tcp": rounded(tunnel.gbit_s / raw.gbit_s, 3),
        "raw_tcp_latency_p50_us": rounded(latencies.raw_us, 1),
        "rathole_noise_latency_p50_us": latencies.rathole_noise_us.map(|us| rounded(us, 1)),
        "rathole_tcp_alone_latency_p50_us": tcp.map(|f| rounded(f.latency_p50_us, 1)),
        "flotilla_latency_p50_us": rounded(latencies.tunnel_us, 1),
        "added_latency_p50_us": rounded(latencies.tunnel_us - latencies.raw_us, 1),
        "rathole_added_latency_p50_us":
            latencies.rathole_noise_us.map(|us| rounded(us - latencies.raw_us, 1)),
        "connect_rounds": CONNECT_ROUNDS,
        "raw_tcp_connect_p50_us": rounded(raw.connect_p50_us, 1),
        "rathole_noise_connect_p50_us": noise.map(|f| rounded(f.connect_p50_us, 1)),
        "flotilla_connect_p50_us": rounded(local_port.connect_p50_us, 1),
        "added_connect_p50_us": rounded(local_port.connect_p50_us - raw.connect_p50_us, 1),
        "rathole_added_connect_p50_us":
            noise.map(|f| rounded(f.connect_p50_us - raw.connect_p50_us, 1)),
        "idle_connection_bytes": local_port.idle_connection_bytes,
        "rathole_idle_connection_bytes": noise.and_then(|f| f.idle_connection_bytes),
        "rathole_tcp_idle_connection_bytes": tcp.and_then(|f| f.idle_connection_bytes),
        "targets": {
            "throughput_vs_rathole": 1.0,
            "throughput_vs_raw_tcp": 0.15,
            "throughput_vs_raw_tcp_stretch": 0.3,
            "added_latency_p50_us": "at most rathole_added_latency_p50_us",
            "idle_connection_bytes": IDLE_CONNECTION_BYTES_TARGET,
        },
    });
    // Through `flotilla connect`'s local port: a plain TCP client's way in, one relay process
    // (`connect` itself) more than rathole's path, so no target of its own. Connect times and
    // idle memory above are this path's (`connect` in the processes counted).
    figures["local_port_gbit_s"] = json!(rounded(local_port.gbit_s, 2));
    figures["local_port_parallel_gbit_s"] = json!(rounded(local_port.parallel_gbit_s, 2));
    figures["local_port_throughput_vs_rathole"] =
        json!(noise.map(|f| rounded(local_port.gbit_s / f.gbit_s, 3)));
    figures["local_port_throughput_vs_raw_tcp"] = json!(rounded(local_port.gbit_s / raw.gbit_s, 3));
    figures["local_port_latency_p50_us"] = json!(rounded(latencies.local_port_us, 1));
    figures["local_port_added_latency_p50_us"] =
        json!(rounded(latencies.local_port_us - latencies.raw_us, 1));
    // How steady each comparison with rathole is: in how many blocks of rounds it held.
    figures["latency_blocks"] = json!(LATENCY_BLOCKS);
    let blocks = latencies.blocks_at_most_rathole;
    figures["blocks_latency_at_most_rathole"] = json!(blocks.map(|b| b.0));
    figures["blocks_local_port_latency_at_most_rathole"] = json!(blocks.map(|b| b.1));
    figures
}
