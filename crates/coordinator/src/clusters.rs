//! Clusters: a paid request (same id) whose nodes run the renter's command.
//!
//! - Deploy checks the spec, quotes it over the market now (nothing matches: refused with the
//!   reason, nothing held), holds the quote in escrow and queues the request; the scheduling
//!   loop places it like any other (`scheduling.rs`).
//! - Placed: one run per node (rank = the node's place in the placement), assigned to its
//!   worker. A worker's session sends each live run as a `RunNode` order and stops what the
//!   worker runs that is not live (`session.rs`); [`nudge`] makes it look now.
//! - Reports from the worker move a run: started, log chunks (kept bounded per run), exited.
//!   A failed run restarts on its node while the spec's `retries` last; then the cluster
//!   fails. A batch cluster whose every rank exited 0 completes.
//! - A lost worker (heartbeat grace passed) has its runs fenced (`lost`): later reports from
//!   them are refused, and the scheduler's replacement nodes get new runs of the same ranks
//!   with the next attempt.
//! - Ended (completed, failed, terminated, expired): live runs are stopped, the minutes that
//!   ran are metered (a started minute counts), devices go back, and the escrow's rest returns.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::api::{ClusterSpec, RequestSpec};
use flotilla_proto::id::{IdKind, new_id};
use flotilla_proto::mesh::{JUPYTER_PORT, MeshOrder, RAY_DASHBOARD_PORT, RayOrder, node_address};
use flotilla_proto::wire::{CheckpointOrder, LogStream, NodeOrder};
use flotilla_store::{
    ClusterRow, PlacementRow, REQUEST_PLACED, RUN_ASSIGNED, RUN_EXITED, RUN_FAILED, RUN_LOST,
    RequestRow, RunRow, StoreError,
};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::{AppState, now_ms};

/// Cluster types: `batch` is done when every node exits 0; `service` runs until terminated
/// or expired; `ray` runs a Ray cluster over the cluster's mesh until terminated or expired.
pub const KIND_BATCH: &str = "batch";
pub const KIND_SERVICE: &str = "service";
pub const KIND_RAY: &str = "ray";
pub const CLUSTER_COMPLETED: &str = "completed";
pub const CLUSTER_FAILED: &str = "failed";
pub const CLUSTER_TERMINATED: &str = "terminated";
pub const CLUSTER_EXPIRED: &str = "expired";

/// Largest checkpoint archive kept, bytes (one per node of a live cluster).
pub const CHECKPOINT_BYTES_MAX: u64 = 32 << 20;
/// Output kept per run, bytes; past it the oldest goes.
pub const LOG_RUN_BYTES_MAX: u64 = 1 << 20;
/// A node's memory limit when the spec names none, and the most it may name.
pub const MEMORY_MIB_DEFAULT: u64 = 4_096;
pub const MEMORY_MIB_MAX: u64 = 4 << 20;
/// CPU cores a node gets per GPU when the spec names none, and the most a spec may name.
pub const CPUS_PER_GPU_DEFAULT: u32 = 4;
pub const CPUS_MAX: u32 = 512;

/// A node's CPU cores: the spec's, else [`CPUS_PER_GPU_DEFAULT`] per GPU.
pub fn cpus_of(spec: &ClusterSpec) -> u32 {
    spec.cpus
        .unwrap_or_else(|| (spec.gpus_per_node * CPUS_PER_GPU_DEFAULT).max(1))
}

/// Most restarts of a failed node.
pub const RETRIES_MAX: u32 = 10;
/// Bounds on a spec's command and environment.
pub const COMMAND_ARGS_MAX: usize = 256;
pub const ENV_VARS_MAX: usize = 256;
pub const SPEC_STRING_BYTES_MAX: usize = 16 * 1024;
pub const PORTS_MAX: usize = 32;

fn field(name: &str, message: &str) -> ApiError {
    ApiError::invalid(name, message)
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= flotilla_proto::limits::NAME_CHARS_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(field("name", "must be 1 to 64 letters, digits, '-' or '_'"))
    }
}

fn check_env(name: &'static str, env: &BTreeMap<String, String>) -> ApiResult<()> {
    if env.len() > ENV_VARS_MAX {
        return Err(field(name, "has too many variables"));
    }
    for (key, value) in env {
        let good_key = !key.is_empty()
            && key.len() <= 128
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !good_key || key.starts_with("FLOTILLA_") {
            return Err(field(
                name,
                "variable names are letters, digits and '_', not starting with a digit or FLOTILLA_",
            ));
        }
        if value.len() > SPEC_STRING_BYTES_MAX || value.contains('\0') {
            return Err(field(name, "a value is too long or holds a NUL byte"));
        }
    }
    Ok(())
}

/// An image reference: what an engine accepts, and nothing that could reach past its path.
fn check_image(image: &str) -> ApiResult<()> {
    let ok = !image.is_empty()
        && image.len() <= 512
        && !image.contains("..")
        && !image.contains("//")
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(field(
            "image",
            "must be an image reference such as pytorch/pytorch:2.4 (letters, digits, ._-/:@)",
        ))
    }
}

/// A checkpoint directory is a relative path under the work directory.
fn check_checkpoint_path(path: &str) -> ApiResult<()> {
    let path = path.strip_prefix("/work/").unwrap_or(path);
    let ok = !path.is_empty()
        && path.len() <= 256
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(field(
            "checkpoint_path",
            "must be a directory under /work: letters, digits, '-', '_', '.' and '/', no '..'",
        ))
    }
}

/// Checks a spec; the request the scheduler places for it comes back.
pub fn check_spec(spec: &ClusterSpec) -> ApiResult<RequestSpec> {
    check_name(&spec.name)?;
    if ![KIND_BATCH, KIND_SERVICE, KIND_RAY].contains(&spec.kind.as_str()) {
        return Err(field("type", "must be batch, service or ray"));
    }
    if spec.hours == 0 || spec.hours > crate::rent::HOURS_MAX {
        return Err(field("hours", "must be between 1 and 720"));
    }
    if spec.kind == KIND_RAY {
        check_ray(spec)?;
    } else {
        check_command(&spec.command)?;
        if spec.jupyter {
            return Err(field(
                "jupyter",
                "Jupyter runs on the head of a ray cluster",
            ));
        }
    }
    check_env("env", &spec.env)?;
    check_env("secret_env", &spec.secret_env)?;
    if let Some(shared) = spec.env.keys().find(|k| spec.secret_env.contains_key(*k)) {
        return Err(field(
            "secret_env",
            &format!("{shared} is also a plain variable"),
        ));
    }
    if spec.ports.len() > PORTS_MAX || spec.ports.contains(&0) {
        return Err(field("ports", "at most 32 ports, each 1 to 65535"));
    }
    if spec.retries > RETRIES_MAX {
        return Err(field("retries", "must be at most 10"));
    }
    if spec.cpus.is_some_and(|c| c == 0 || c > CPUS_MAX) {
        return Err(field("cpus", "must be between 1 and 512"));
    }
    if let Some(mib) = spec.memory_mib
        && !(16..=MEMORY_MIB_MAX).contains(&mib)
    {
        return Err(field("memory_mib", "must be between 16 and 4194304"));
    }
    if let Some(image) = &spec.image {
        check_image(image)?;
    }
    if let Some(path) = &spec.checkpoint_path {
        check_checkpoint_path(path)?;
    }
    let request = RequestSpec {
        nodes: spec.nodes,
        gpus_per_node: spec.gpus_per_node,
        query: spec.query.clone(),
        budget_per_hour: spec.budget_per_hour,
        colocation: spec.colocation.clone(),
        renter_region: spec.renter_region.clone(),
        hours: Some(spec.hours),
        containers: spec.image.is_some(),
        ..RequestSpec::default()
    };
    crate::scheduling::to_request("clu_check", "usr_check", &planned_shape(&request), 0)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    Ok(request)
}

/// A command names a program, with bounded arguments and no NUL bytes.
fn check_command(command: &[String]) -> ApiResult<()> {
    let command_ok = !command.is_empty()
        && !command[0].is_empty()
        && command.len() <= COMMAND_ARGS_MAX
        && command
            .iter()
            .all(|a| a.len() <= SPEC_STRING_BYTES_MAX && !a.contains('\0'));
    if !command_ok {
        return Err(field(
            "command",
            "must name a program, with at most 256 arguments and no NUL bytes",
        ));
    }
    Ok(())
}

/// A Ray cluster runs Ray on exec nodes joined by the mesh; jobs come through its job API.
fn check_ray(spec: &ClusterSpec) -> ApiResult<()> {
    if !spec.command.is_empty() {
        return Err(field(
            "command",
            "a ray cluster runs Ray itself: leave the command out and submit jobs with `flotilla ray submit`",
        ));
    }
    if spec.image.is_some() {
        return Err(field(
            "image",
            "ray clusters run on exec nodes, without an image",
        ));
    }
    Ok(())
}

/// The ports a cluster's nodes serve: the declared ones, and on a Ray cluster Ray's dashboard
/// and Jupyter where asked for.
pub fn declared_ports(spec: &ClusterSpec) -> Vec<u16> {
    let mut ports = spec.ports.clone();
    for (port, _) in started_services(spec) {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// The servers Flotilla itself starts on a cluster's head node (rank 0): port and name.
pub fn started_services(spec: &ClusterSpec) -> Vec<(u16, &'static str)> {
    let mut services = Vec::new();
    if spec.kind == KIND_RAY {
        services.push((RAY_DASHBOARD_PORT, "Ray dashboard"));
        if spec.jupyter {
            services.push((JUPYTER_PORT, "Jupyter"));
        }
    }
    services
}

/// Whether the server behind `/t/CLUSTER/NODE/PORT/` is handed its requests' paths whole (it
/// serves under that prefix, as Jupyter does) rather than without the prefix.
pub fn serves_under_prefix(spec: &ClusterSpec, node: u32, port: u16) -> bool {
    spec.kind == KIND_RAY && spec.jupyter && node == 0 && port == JUPYTER_PORT
}

/// The public path of a port of a node.
pub fn port_path(cluster_id: &str, node: u32, port: u16) -> String {
    format!("/t/{cluster_id}/{node}/{port}/")
}

/// What the scheduler plans for a quote: without a budget, a cluster takes the market's price
/// (deploy then holds that), so it is planned as an unpaid request with no price limit.
pub fn planned_shape(request: &RequestSpec) -> RequestSpec {
    RequestSpec {
        hours: request.budget_per_hour.and(request.hours),
        ..request.clone()
    }
}

/// The spec as stored and shown: secret values left out.
pub fn without_secrets(spec: &ClusterSpec) -> ClusterSpec {
    ClusterSpec {
        secret_env: BTreeMap::new(),
        ..spec.clone()
    }
}

fn parse_spec(row: &ClusterRow) -> ApiResult<ClusterSpec> {
    serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::Internal(format!("stored cluster spec: {e}")))
}

/// Makes a worker's session look at its runs now.
pub fn nudge(app: &AppState, worker_ids: impl IntoIterator<Item = String>) {
    for worker_id in worker_ids {
        app.fleet.nudge(&worker_id);
    }
}

/// Node index -> (worker, devices), from placement rows.
fn nodes_of(placements: &[PlacementRow]) -> BTreeMap<u32, (String, Vec<String>)> {
    let mut nodes: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
    for placement in placements {
        nodes
            .entry(placement.node_index)
            .or_insert_with(|| (placement.worker_id.clone(), Vec::new()))
            .1
            .push(placement.device_id.clone());
    }
    nodes
}

fn new_run(cluster_id: &str, rank: u32, attempt: u32, worker_id: &str, node_index: u32) -> RunRow {
    RunRow {
        id: new_id(IdKind::Run),
        cluster_id: cluster_id.to_owned(),
        node_rank: rank,
        attempt,
        worker_id: worker_id.to_owned(),
        node_index,
        state: RUN_ASSIGNED.to_owned(),
        exit_code: None,
        reason: String::new(),
        log_bytes: 0,
        created_at_ms: now_ms(),
        started_at_ms: None,
        ended_at_ms: None,
    }
}

/// A cluster was placed: one run per node, ranked in node order.
pub async fn start_runs(app: &AppState, cluster_id: &str, placements: &[PlacementRow]) {
    let runs: Vec<RunRow> = nodes_of(placements)
        .into_iter()
        .enumerate()
        .map(|(rank, (node_index, (worker_id, _)))| {
            new_run(cluster_id, rank as u32, 1, &worker_id, node_index)
        })
        .collect();
    if let Err(error) = app.store.insert_runs(&runs).await {
        tracing::warn!(%cluster_id, %error, "could not assign a placed cluster's runs");
        return;
    }
    nudge(app, runs.into_iter().map(|r| r.worker_id));
}

/// Each rank whose latest run sits on a node no longer placed (its worker was lost and the
/// node replaced) runs again, with the next attempt, on a placed node that no rank uses; the
/// old run is fenced in the same transaction. Replacement calls this right after moving the
/// placement and the reconciler calls it again, so a move cut short still completes.
pub async fn move_orphaned_runs(
    app: &AppState,
    cluster_id: &str,
    runs: &[RunRow],
) -> ApiResult<()> {
    let placements = app.store.placements(cluster_id).await?;
    let moves = orphan_moves(cluster_id, runs, &nodes_of(&placements));
    if moves.is_empty() {
        return Ok(());
    }
    match app.store.move_runs(&moves, now_ms()).await {
        Ok(()) => {}
        // Another pass moved these ranks first.
        Err(StoreError::Conflict(_)) => return Ok(()),
        Err(error) => return Err(error.into()),
    }
    tracing::info!(%cluster_id, ranks = moves.len(), "runs moved off lost workers");
    // The old workers too: one that comes back must stop the run it lost, not keep running it.
    let old_workers: Vec<String> = moves
        .iter()
        .filter_map(|(old, _)| runs.iter().find(|r| &r.id == old))
        .map(|r| r.worker_id.clone())
        .collect();
    nudge(
        app,
        old_workers
            .into_iter()
            .chain(moves.into_iter().map(|(_, run)| run.worker_id)),
    );
    Ok(())
}

/// Whether a rank's latest run may sit on a node no longer placed: it was fenced, or its
/// worker has no session. Only then does the reconciler read the cluster's placements, so a
/// healthy cluster costs no query per tick.
fn may_be_orphaned(app: &AppState, runs: &[RunRow]) -> bool {
    latest_runs(runs).values().any(|run| {
        run.state == RUN_LOST || (run.is_live() && !app.fleet.worker_view(&run.worker_id).0)
    })
}

/// The moves (old run id, successor) that put each orphaned rank, in rank order, on a free
/// placed node, in node order.
fn orphan_moves(
    cluster_id: &str,
    runs: &[RunRow],
    nodes: &BTreeMap<u32, (String, Vec<String>)>,
) -> Vec<(String, RunRow)> {
    let latest = latest_runs(runs);
    let used: BTreeSet<u32> = latest.values().map(|run| run.node_index).collect();
    let free = nodes.iter().filter(|(index, _)| !used.contains(index));
    let orphans = latest.values().filter(|run| {
        let movable = run.is_live() || run.state == RUN_LOST;
        movable && !nodes.contains_key(&run.node_index)
    });
    orphans
        .zip(free)
        .map(|(old, (node_index, (worker_id, _)))| {
            let successor = new_run(
                cluster_id,
                old.node_rank,
                old.attempt + 1,
                worker_id,
                *node_index,
            );
            (old.id.clone(), successor)
        })
        .collect()
}

/// The order a worker gets for one of its live runs.
pub async fn order_for(app: &AppState, run: &RunRow) -> ApiResult<Option<NodeOrder>> {
    let Some(cluster) = app.store.cluster_by_id(&run.cluster_id).await? else {
        return Ok(None);
    };
    let spec = parse_spec(&cluster)?;
    let secrets: BTreeMap<String, String> =
        serde_json::from_str(&cluster.secret_env).unwrap_or_default();
    let runs = app.store.runs_of_cluster(&run.cluster_id).await?;
    let placements = app.store.placements(&run.cluster_id).await?;
    let nodes = nodes_of(&placements);
    let device_ids = nodes
        .get(&run.node_index)
        .map(|(_, devices)| devices.clone())
        .unwrap_or_default();
    let peers = peer_hosts(app, &latest_runs(&runs)).await?;
    let env = spec
        .env
        .iter()
        .chain(secrets.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Some(NodeOrder {
        run_id: run.id.clone(),
        cluster_id: run.cluster_id.clone(),
        node_rank: run.node_rank,
        node_count: spec.nodes,
        attempt: run.attempt,
        argv: spec.command.clone(),
        env,
        device_ids,
        peers,
        ports: declared_ports(&spec),
        memory_bytes_max: spec.memory_mib.unwrap_or(MEMORY_MIB_DEFAULT) << 20,
        cpu_millis_max: u64::from(cpus_of(&spec)) * 1_000,
        wall_limit_ms: u64::from(crate::rent::HOURS_MAX) * 3_600_000,
        image: spec.image.clone(),
        checkpoint: spec.checkpoint_path.as_ref().map(|path| CheckpointOrder {
            path: path.strip_prefix("/work/").unwrap_or(path).to_owned(),
            token: run_token(app, &run.id),
            interval_ms: app.config.checkpoint_interval_ms,
            bytes_max: CHECKPOINT_BYTES_MAX,
        }),
        mesh: has_mesh(&spec).then(|| MeshOrder {
            address: node_address(&run.cluster_id, run.node_rank),
            relay_port: app.tunnels.offer().port,
            relay_token: hex::encode(crate::mesh::relay_token(app, &run.id)),
        }),
        ray: (spec.kind == KIND_RAY).then(|| RayOrder {
            head_address: node_address(&run.cluster_id, 0),
            jupyter_base_url: (spec.jupyter && run.node_rank == 0)
                .then(|| port_path(&run.cluster_id, 0, JUPYTER_PORT)),
        }),
    }))
}

/// Whether a cluster's nodes get a mesh network: Ray clusters, and any cluster of several
/// exec nodes (containers keep the engine's network; one node has no one to talk to).
pub fn has_mesh(spec: &ClusterSpec) -> bool {
    spec.image.is_none() && (spec.nodes >= 2 || spec.kind == KIND_RAY)
}

/// Each rank's newest run, by rank.
pub(crate) fn latest_runs(runs: &[RunRow]) -> BTreeMap<u32, &RunRow> {
    let mut latest: BTreeMap<u32, &RunRow> = BTreeMap::new();
    for run in runs {
        let newer = latest
            .get(&run.node_rank)
            .is_none_or(|seen| seen.attempt < run.attempt);
        if newer {
            latest.insert(run.node_rank, run);
        }
    }
    latest
}

async fn peer_hosts(app: &AppState, latest: &BTreeMap<u32, &RunRow>) -> ApiResult<Vec<String>> {
    let ids: Vec<String> = latest.values().map(|r| r.worker_id.clone()).collect();
    let hosts = app.store.worker_hostnames(&ids).await?;
    Ok(ids
        .iter()
        .map(|id| hosts.get(id).cloned().unwrap_or_default())
        .collect())
}

/// The secret a run's worker shows to store and fetch its checkpoints: derived from the
/// coordinator's key and the run id, so it needs no storage and dies with the run's liveness
/// (the endpoints check that the run is live).
pub fn run_token(app: &AppState, run_id: &str) -> String {
    hex::encode(run_secret(app, b"flotilla/run-token/v1\0", run_id))
}

/// A secret of one run for one purpose (`domain`): derived from the coordinator's key and the
/// run id, so it needs no storage.
pub fn run_secret(app: &AppState, domain: &[u8], run_id: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(domain)
        .chain_update(app.ledger.signing_key().to_bytes())
        .chain_update(run_id.as_bytes())
        .finalize()
        .into()
}

/// Why a worker's report about a run is refused.
#[derive(Debug)]
pub struct ReportRefused {
    pub code: &'static str,
    pub message: String,
}

/// The run a report is about, if it is this worker's and not fenced.
async fn reported_run(
    app: &AppState,
    worker_id: &str,
    run_id: &str,
) -> Result<RunRow, ReportRefused> {
    let run = app.store.run(run_id).await.ok().flatten();
    match run {
        Some(run) if run.worker_id == worker_id && run.state != RUN_LOST => Ok(run),
        Some(run) if run.worker_id == worker_id => Err(ReportRefused {
            code: "run_fenced",
            message: format!("run {run_id} was moved off this worker after it was lost"),
        }),
        _ => Err(ReportRefused {
            code: "unknown_run",
            message: format!("run {run_id} is not this worker's"),
        }),
    }
}

/// The run a mesh report is about: this worker's, and live (an ended run has no mesh).
pub async fn live_run_of(
    app: &AppState,
    worker_id: &str,
    run_id: &str,
) -> Result<RunRow, ReportRefused> {
    let run = reported_run(app, worker_id, run_id).await?;
    if !run.is_live() {
        return Err(ReportRefused {
            code: "run_ended",
            message: format!("run {run_id} has ended"),
        });
    }
    Ok(run)
}

/// A run started on its worker.
pub async fn on_started(
    app: &AppState,
    worker_id: &str,
    run_id: &str,
) -> Result<(), ReportRefused> {
    let run = reported_run(app, worker_id, run_id).await?;
    let started = app.store.set_run_started(&run.id, now_ms()).await;
    if started.unwrap_or(false) {
        tracing::info!(cluster_id = %run.cluster_id, rank = run.node_rank, attempt = run.attempt, "node running");
        if let Err(error) = mark_running_when_all_started(app, &run.cluster_id).await {
            tracing::warn!(cluster_id = %run.cluster_id, %error, "could not update a cluster");
        }
    }
    Ok(())
}

async fn mark_running_when_all_started(app: &AppState, cluster_id: &str) -> ApiResult<()> {
    let runs = app.store.runs_of_cluster(cluster_id).await?;
    let Some(cluster) = app.store.cluster_by_id(cluster_id).await? else {
        return Ok(());
    };
    let spec = parse_spec(&cluster)?;
    let latest = latest_runs(&runs);
    let all_started =
        latest.len() == spec.nodes as usize && latest.values().all(|r| r.state != RUN_ASSIGNED);
    if all_started && app.store.set_cluster_running(cluster_id, now_ms()).await? {
        tracing::info!(%cluster_id, "cluster running");
    }
    Ok(())
}

/// A chunk of a run's output.
pub async fn on_log(
    app: &AppState,
    worker_id: &str,
    run_id: &str,
    stream: LogStream,
    text: &str,
) -> Result<(), ReportRefused> {
    let run = reported_run(app, worker_id, run_id).await?;
    if text.len() > flotilla_proto::wire::LOG_CHUNK_BYTES_MAX {
        return Err(ReportRefused {
            code: "log_chunk_too_large",
            message: "a log chunk is at most 16 KiB".to_owned(),
        });
    }
    let stream = match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    };
    if let Err(error) = app
        .store
        .append_log(&run, stream, text, now_ms(), LOG_RUN_BYTES_MAX)
        .await
    {
        tracing::warn!(%run_id, %error, "could not keep a log chunk");
    }
    Ok(())
}

/// A run ended on its worker: the rank is done, restarts, or fails the cluster.
pub async fn on_exited(
    app: &AppState,
    worker_id: &str,
    run_id: &str,
    exit_code: Option<i32>,
    reason: &str,
) -> Result<(), ReportRefused> {
    let run = reported_run(app, worker_id, run_id).await?;
    let succeeded = exit_code == Some(0) && reason == "exited";
    let state = if succeeded { RUN_EXITED } else { RUN_FAILED };
    let ended = app
        .store
        .end_run(&run.id, state, exit_code, reason, now_ms())
        .await
        .unwrap_or(false);
    if !ended {
        // Stopped by the coordinator already: the cluster ended, nothing more to do.
        return Ok(());
    }
    tracing::info!(cluster_id = %run.cluster_id, rank = run.node_rank, ?exit_code, %reason, "node ended");
    if let Err(error) = after_run_ended(app, &run, succeeded, exit_code, reason).await {
        tracing::warn!(cluster_id = %run.cluster_id, %error, "could not settle an ended node; the reconciler retries");
    }
    Ok(())
}

async fn after_run_ended(
    app: &AppState,
    run: &RunRow,
    succeeded: bool,
    exit_code: Option<i32>,
    reason: &str,
) -> ApiResult<()> {
    let Some(cluster) = app.store.cluster_by_id(&run.cluster_id).await? else {
        return Ok(());
    };
    let spec = parse_spec(&cluster)?;
    let runs = app.store.runs_of_cluster(&run.cluster_id).await?;
    if succeeded {
        let latest = latest_runs(&runs);
        let all_done =
            latest.len() == spec.nodes as usize && latest.values().all(|r| r.state == RUN_EXITED);
        if all_done {
            end(app, &cluster, CLUSTER_COMPLETED, "every node exited 0").await?;
        }
        return Ok(());
    }
    let failures = runs
        .iter()
        .filter(|r| r.node_rank == run.node_rank && r.state == RUN_FAILED)
        .count() as u32;
    if failures <= spec.retries {
        let again = new_run(
            &run.cluster_id,
            run.node_rank,
            run.attempt + 1,
            &run.worker_id,
            run.node_index,
        );
        app.store.insert_runs(std::slice::from_ref(&again)).await?;
        nudge(app, [again.worker_id]);
        return Ok(());
    }
    let code = exit_code.map_or("a signal".to_owned(), |c| format!("code {c}"));
    let because = format!("node {} ended ({reason}, {code})", run.node_rank);
    end(app, &cluster, CLUSTER_FAILED, &because).await
}

/// Ends a cluster: stops its runs, settles its request (the minutes that ran are paid, a
/// started minute counting; devices go back; the rest of the escrow returns).
pub async fn end(
    app: &AppState,
    cluster: &ClusterRow,
    state: &str,
    because: &str,
) -> ApiResult<()> {
    let Some(workers) = app
        .store
        .end_cluster(&cluster.id, state, because, now_ms())
        .await?
    else {
        return Ok(());
    };
    tracing::info!(cluster_id = %cluster.id, %state, %because, "cluster ended");
    nudge(app, workers);
    app.store.delete_checkpoints(&cluster.id).await?;
    let Some(request) = app.store.request_by_id(&cluster.id).await? else {
        return Ok(());
    };
    settle_request(app, &request, state == CLUSTER_COMPLETED).await
}

/// Ends a cluster's request and settles its money.
async fn settle_request(app: &AppState, row: &RequestRow, completed: bool) -> ApiResult<()> {
    let spec: RequestSpec = serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::Internal(format!("stored request spec: {e}")))?;
    let now = now_ms();
    if row.state == REQUEST_PLACED {
        crate::rent::meter(app, row, &spec, now, crate::rent::Rounding::StartedMinutes).await?;
    }
    let held: Vec<String> = app
        .store
        .placements(&row.id)
        .await?
        .into_iter()
        .map(|p| p.device_id)
        .collect();
    let previous = if completed && row.state == REQUEST_PLACED {
        app.store
            .complete_request(&row.id, now)
            .await?
            .then(|| REQUEST_PLACED.to_owned())
    } else {
        app.store
            .cancel_request(&row.account_id, &row.id, now)
            .await?
    };
    match previous.as_deref() {
        Some(REQUEST_PLACED) => {
            crate::scheduling::release(app, &held).await;
            crate::rent::refund(app, row).await
        }
        Some(_) => crate::rent::release_hold(app, &row.id)
            .await
            .map_err(ApiError::from),
        None => Ok(()),
    }
}

/// A cluster's request ended outside this module (its hours ran out): the cluster expires.
pub async fn request_expired(app: &AppState, request_id: &str) -> ApiResult<()> {
    let Some(workers) = app
        .store
        .end_cluster(request_id, CLUSTER_EXPIRED, "its hours ran out", now_ms())
        .await?
    else {
        return Ok(());
    };
    nudge(app, workers);
    app.store.delete_checkpoints(request_id).await?;
    Ok(())
}

/// Live clusters one reconciler run looks at, at most.
const RECONCILED_PER_RUN_MAX: u32 = 1_000;

/// The reconciler: a live cluster whose request ended elsewhere (its hours ran out, its
/// placement could not be funded) ends too, which stops its work; a placed one without runs
/// (the coordinator stopped between placing and assigning) gets them.
pub async fn reconcile(app: &AppState) -> ApiResult<()> {
    let clusters = app.store.live_clusters(RECONCILED_PER_RUN_MAX).await?;
    let ids: Vec<String> = clusters.iter().map(|c| c.id.clone()).collect();
    let mut runs = app.store.runs_of(&ids).await?;
    for cluster in clusters {
        let Some(request) = app.store.request_by_id(&cluster.id).await? else {
            continue;
        };
        match request.state.as_str() {
            flotilla_store::REQUEST_COMPLETED => request_expired(app, &cluster.id).await?,
            flotilla_store::REQUEST_CANCELLED => {
                end(
                    app,
                    &cluster,
                    CLUSTER_FAILED,
                    "its placement could not be funded",
                )
                .await?;
            }
            REQUEST_PLACED => match runs.get(&cluster.id) {
                None => {
                    let placements = app.store.placements(&cluster.id).await?;
                    start_runs(app, &cluster.id, &placements).await;
                }
                Some(cluster_runs) if may_be_orphaned(app, cluster_runs) => {
                    move_orphaned_runs(app, &cluster.id, cluster_runs).await?;
                }
                Some(_) => {}
            },
            _ => {}
        }
        runs.remove(&cluster.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use flotilla_store::RUN_RUNNING;

    use super::*;

    fn run(rank: u32, attempt: u32, node_index: u32, state: &str) -> RunRow {
        RunRow {
            state: state.to_owned(),
            ..new_run("clu_x", rank, attempt, "wrk_old", node_index)
        }
    }

    fn placed(indices: &[(u32, &str)]) -> BTreeMap<u32, (String, Vec<String>)> {
        indices
            .iter()
            .map(|(index, worker)| (*index, (worker.to_string(), vec![format!("dev_{index}")])))
            .collect()
    }

    #[test]
    fn orphaned_ranks_move_to_free_nodes_with_the_next_attempt() {
        let runs = [
            run(0, 1, 0, RUN_RUNNING),
            run(1, 1, 1, RUN_FAILED),
            run(1, 2, 1, RUN_RUNNING),
            run(2, 1, 2, RUN_LOST),
            run(3, 1, 3, RUN_EXITED),
        ];
        // Nodes 1 and 2 were lost and replaced by 4 and 5; node 3 finished before it was lost.
        let nodes = placed(&[(0, "wrk_a"), (4, "wrk_d"), (5, "wrk_e")]);
        let moves = orphan_moves("clu_x", &runs, &nodes);
        let summary: Vec<(&str, u32, u32, u32, &str)> = moves
            .iter()
            .map(|(old, new)| {
                (
                    old.as_str(),
                    new.node_rank,
                    new.attempt,
                    new.node_index,
                    new.worker_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (runs[2].id.as_str(), 1, 3, 4, "wrk_d"),
                (runs[3].id.as_str(), 2, 2, 5, "wrk_e"),
            ]
        );
        assert!(moves.iter().all(|(_, new)| new.state == RUN_ASSIGNED));
    }

    #[test]
    fn nothing_moves_while_every_live_rank_is_placed_or_no_node_is_free() {
        let runs = [run(0, 1, 0, RUN_RUNNING), run(1, 1, 1, RUN_RUNNING)];
        assert!(orphan_moves("clu_x", &runs, &placed(&[(0, "a"), (1, "b")])).is_empty());
        // Rank 1's node is gone but no replacement is placed yet: it waits.
        assert!(orphan_moves("clu_x", &runs, &placed(&[(0, "a")])).is_empty());
    }
}
