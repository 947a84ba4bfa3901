//! The runner: the nodes this worker runs, from the coordinator's [`NodeOrder`] to the
//! [`WorkerMessage::NodeExited`] report. It outlives control sessions: a session that drops
//! and reconnects finds its nodes still running and their reports waiting.
//!
//! Each run is one task that owns its node and turns what happens into messages in the
//! [`Outbox`], which the agent drains and sends. A node runs on one of two drivers, chosen by
//! its order: the exec driver ([`crate::sandbox`]) for a command, the container driver
//! ([`crate::container`]) for an order with an image. Both report alike. Invariants:
//! - Exactly one `NodeStarted` (unless the start failed) and then exactly one `NodeExited` per
//!   started run, never dropped; log chunks come between, in order, and are the only thing
//!   dropped when the outbox is full (the coordinator is away): the next chunk's `offset` shows
//!   the gap.
//! - A run is in [`Runner::running`] until its `NodeExited` has been handed to the agent.
//! - A run id is run at most once per worker process (while it is among the last
//!   `FINISHED_KEPT_MAX` ended runs). An order for a run that ended and was
//!   reported is answered with its `NodeExited` again (the first report may have been lost with
//!   its session; the coordinator re-sends orders whose runs a heartbeat lacks).
//! - A run's work directory is `<data_dir>/runs/<run_id>`, made empty at start and removed as
//!   soon as the node is dead; nothing is kept after a run. A worker that starts removes the
//!   directories a previous process left.
//! - A node ordered with a checkpoint ([`crate::checkpoint`]) starts after its checkpoint
//!   directory is restored (or found missing), and its last upload is done (or given up)
//!   before its `NodeExited` is queued; uploads in between never hold its output back.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_proto::wire::{LOG_CHUNK_BYTES_MAX, LogStream, NodeOrder, WorkerMessage};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::WorkerError;
use crate::checkpoint::{Checkpoint, CheckpointStore, Uploads};
use crate::container::{ContainerError, Engine};
use crate::mesh::MeshNode;
use crate::netns::{NamespaceSockets, NodeNetwork, NodeNetworks};
use crate::ray::RayEnvironments;
use crate::sandbox::{Chunk, Ended, Ending, Sandbox, SandboxSpec};

/// Runs at once on one worker, counting runs whose end is not yet handed to the agent.
pub const RUNS_MAX: usize = flotilla_proto::limits::DEVICES_PER_WORKER_MAX;
/// Log chunks waiting in the outbox at most; more are dropped.
pub const LOG_CHUNKS_QUEUED_MAX: usize = 256;
/// Ended runs remembered, to answer a repeated order with the same report.
/// How long a hello waits for the container engine to answer.
const CONTAINER_PING_MS_MAX: u64 = 3_000;
const FINISHED_KEPT_MAX: usize = 1_024;
/// Reports not tied to a live run (a refused order, a repeated end) waiting at most.
const OPTIONAL_QUEUED_MAX: usize = 256;
/// Output chunks waiting between a node's pipes and its run task.
const CHUNKS_QUEUED_MAX: usize = 16;
/// Characters in a run id at most (it names a directory and a cgroup).
const RUN_ID_CHARS_MAX: usize = 64;
/// Less memory than this cannot start a sandbox.
pub const MEMORY_BYTES_MIN: u64 = 16 * 1024 * 1024;
/// How long shutdown waits for the killed nodes to be cleaned up.
const SHUTDOWN_MS_MAX: u64 = 8_000;
/// Names of the environment variables the worker sets itself.
const RESERVED_ENV_PREFIX: &str = "FLOTILLA_";

/// What a queued message is, which decides whether it may be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// NodeStarted, MeshJoined and NodeExited of a tracked run: never dropped, at most three
    /// per run.
    Lifecycle,
    Log,
    /// A report the coordinator gets again by asking again.
    Optional,
}

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<(Kind, WorkerMessage)>,
    logs: usize,
    optional: usize,
}

/// The bounded queue of messages from the runs to the agent, in the order they happened.
#[derive(Debug, Default)]
struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Outbox {
    /// Queues a message; false when a log chunk or optional report did not fit.
    fn push(&self, kind: Kind, message: WorkerMessage) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match kind {
            Kind::Log if queue.logs >= LOG_CHUNKS_QUEUED_MAX => return false,
            Kind::Optional if queue.optional >= OPTIONAL_QUEUED_MAX => return false,
            Kind::Log => queue.logs += 1,
            Kind::Optional => queue.optional += 1,
            Kind::Lifecycle => {}
        }
        queue.messages.push_back((kind, message));
        drop(queue);
        self.ready.notify_one();
        true
    }

    fn pop(&self) -> Option<WorkerMessage> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let (kind, message) = queue.messages.pop_front()?;
        match kind {
            Kind::Log => queue.logs -= 1,
            Kind::Optional => queue.optional -= 1,
            Kind::Lifecycle => {}
        }
        Some(message)
    }

    /// Whether a report of this run's end is waiting.
    fn holds_exit_of(&self, run_id: &str) -> bool {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.messages.iter().any(|(_, message)| {
            matches!(message, WorkerMessage::NodeExited { run_id: id, .. } if id == run_id)
        })
    }
}

/// The ports of started runs a renter may reach through the tunnel, by run id. Shared between
/// the runner (which adds and removes runs) and the tunnel (which only reads).
#[derive(Debug, Clone, Default)]
pub struct PortTable {
    runs: Arc<std::sync::RwLock<HashMap<String, NodePorts>>>,
}

/// A started node's declared ports and the network they are in.
#[derive(Debug, Clone)]
struct NodePorts {
    ports: Vec<u16>,
    /// Sockets made in the node's network namespace; none: the worker's own network.
    namespace: Option<NamespaceSockets>,
}

/// Where a tunnelled connection goes: `port` on loopback, in `namespace` if there is one.
#[derive(Debug, Clone)]
pub struct PortTarget {
    pub port: u16,
    pub namespace: Option<NamespaceSockets>,
}

impl PortTable {
    /// A started node's ports, in the namespace at `namespace` (a path to `setns` into) if
    /// it has one.
    fn insert(&self, run_id: &str, ports: Vec<u16>, namespace: Option<PathBuf>) {
        let namespace = namespace.as_deref().map(NamespaceSockets::open);
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        runs.insert(run_id.to_owned(), NodePorts { ports, namespace });
    }

    fn remove(&self, run_id: &str) {
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        runs.remove(run_id);
    }

    /// Where a tunnelled connection to `port` of `run_id` goes, if this worker runs it, it has
    /// started, and the port was declared.
    pub fn target(&self, run_id: &str, port: u16) -> Result<PortTarget, String> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        match runs.get(run_id) {
            Some(node) if node.ports.contains(&port) => Ok(PortTarget {
                port,
                namespace: node.namespace.clone(),
            }),
            Some(_) => Err(format!("port {port} is not one its cluster declared")),
            None => Err(format!("run {run_id} is not started on this worker")),
        }
    }
}

/// The mesh endpoints of started runs, by run id, for the peer lists the coordinator sends.
#[derive(Debug, Clone, Default)]
pub struct MeshTable {
    runs: Arc<std::sync::RwLock<HashMap<String, Arc<MeshNode>>>>,
}

impl MeshTable {
    fn insert(&self, run_id: &str, mesh: Arc<MeshNode>) {
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        runs.insert(run_id.to_owned(), mesh);
    }

    fn remove(&self, run_id: &str) {
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        runs.remove(run_id);
    }

    fn get(&self, run_id: &str) -> Option<Arc<MeshNode>> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.get(run_id).cloned()
    }

    /// Each started node's `MeshJoined`, sorted by run id.
    fn joined(&self) -> Vec<WorkerMessage> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        let mut run_ids: Vec<&String> = runs.keys().collect();
        run_ids.sort();
        run_ids
            .into_iter()
            .map(|run_id| WorkerMessage::MeshJoined {
                run_id: run_id.clone(),
                public_key: runs[run_id].public_key(),
            })
            .collect()
    }
}

/// An order's mesh, as the runner will make it.
#[derive(Debug, Clone)]
struct MeshPlan {
    order: flotilla_proto::mesh::MeshOrder,
    /// The coordinator's host, where the relay is.
    relay_host: String,
    table: MeshTable,
}

/// A run whose end is not yet handed to the agent.
#[derive(Debug)]
struct Live {
    /// Taken when a stop is sent; dropping it also stops the run.
    stop: Option<oneshot::Sender<String>>,
    task: tokio::task::JoinHandle<()>,
}

/// The nodes of this worker. Dropping it kills them all.
#[derive(Debug)]
pub struct Runner {
    sandbox: Arc<Sandbox>,
    /// The container engine for orders with an image; none: such orders fail to start.
    engine: Option<Arc<Engine>>,
    runs_dir: PathBuf,
    /// Where checkpoints go; none: orders with a checkpoint run without one.
    checkpoints: Option<Arc<CheckpointStore>>,
    /// GPU index of each device of this worker, by device id (none: not a GPU).
    devices: HashMap<String, Option<u32>>,
    live: HashMap<String, Live>,
    /// What the tunnel may reach: each started run's declared ports.
    ports: PortTable,
    /// Whether exec nodes get a network namespace each.
    networks: Arc<NodeNetworks>,
    /// Started runs' mesh endpoints.
    meshes: MeshTable,
    /// The coordinator's host name or address (its relay's host).
    coordinator_host: String,
    /// Where Ray's environment is, for nodes of `ray` clusters.
    ray: RayEnvironments,
    /// Reports of runs that ended and were handed over, oldest first.
    finished: VecDeque<WorkerMessage>,
    outbox: Arc<Outbox>,
}

impl Runner {
    /// A runner keeping work directories under `<data_dir>/runs`, with the cgroups this
    /// machine offers.
    pub fn new(data_dir: &Path) -> Result<Runner, WorkerError> {
        let runner = Runner::with_sandbox(data_dir, Sandbox::detect())?;
        Ok(runner.with_node_networks(NodeNetworks::detect(data_dir)))
    }

    /// Gives exec nodes their networks this way (tests choose shared or private).
    pub fn with_node_networks(mut self, networks: NodeNetworks) -> Runner {
        self.networks = Arc::new(networks);
        self
    }

    /// A runner with a given sandbox (tests choose the cgroup fallback with it).
    pub fn with_sandbox(data_dir: &Path, sandbox: Sandbox) -> Result<Runner, WorkerError> {
        let runs_dir = data_dir.join("runs");
        // What a previous worker process left: its nodes died with it.
        if runs_dir.exists() {
            std::fs::remove_dir_all(&runs_dir).map_err(|e| WorkerError::io(&runs_dir, e))?;
        }
        std::fs::create_dir_all(&runs_dir).map_err(|e| WorkerError::io(&runs_dir, e))?;
        // Others may pass through to a work dir (the sandbox user must) but not list runs.
        std::fs::set_permissions(&runs_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| WorkerError::io(&runs_dir, e))?;
        if crate::sandbox::running_as_root()
            && let Some(closed) = closed_to_others(&runs_dir)
        {
            tracing::warn!(dir = %closed.display(), "nodes run as nobody and cannot reach their work dirs through this directory; chmod o+x it");
        }
        sandbox.sweep_leftovers();
        Ok(Runner {
            sandbox: Arc::new(sandbox),
            engine: None,
            checkpoints: None,
            runs_dir,
            devices: HashMap::new(),
            live: HashMap::new(),
            ports: PortTable::default(),
            networks: Arc::new(NodeNetworks::shared()),
            meshes: MeshTable::default(),
            coordinator_host: "127.0.0.1".to_owned(),
            ray: RayEnvironments::new(data_dir.join("ray")),
            finished: VecDeque::new(),
            outbox: Arc::default(),
        })
    }

    /// Whether orders with an image can run here: an engine is configured and answers (at
    /// most a few seconds). Told to the coordinator at each hello, so images are placed only on
    /// workers that run them.
    pub async fn runs_containers(&self) -> bool {
        let Some(engine) = &self.engine else {
            return false;
        };
        let answered = tokio::time::timeout(
            std::time::Duration::from_millis(CONTAINER_PING_MS_MAX),
            engine.connect(),
        )
        .await;
        matches!(answered, Ok(Ok(_)))
    }

    /// Runs orders with an image on the container engine at `socket` (see
    /// [`crate::container::locate`]), and removes in the background what a previous process
    /// left there (when called inside a Tokio runtime).
    pub fn with_container_engine(mut self, socket: Option<PathBuf>) -> Runner {
        let Some(socket) = socket else {
            tracing::info!("no container engine: orders with an image will not start");
            self.engine = None;
            return self;
        };
        tracing::info!(socket = %socket.display(), "nodes with an image run on the container engine");
        let engine = Arc::new(Engine::new(socket, &self.runs_dir));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let sweeper = engine.clone();
            runtime.spawn(async move { sweeper.sweep_leftovers().await });
        }
        self.engine = Some(engine);
        self
    }

    /// Makes and keeps Ray's environment in `dir` (none: `<data_dir>/ray`).
    pub fn with_ray_dir(mut self, dir: Option<PathBuf>) -> Runner {
        if let Some(dir) = dir {
            self.ray = RayEnvironments::new(dir);
        }
        self
    }

    /// Keeps the checkpoints of nodes ordered with one at the coordinator at `coordinator_url`
    /// (its base URL, e.g. `http://127.0.0.1:7700`).
    /// `extra_roots`: CA certificates trusted beside the platform's, for an `https://` one.
    pub fn with_coordinator(
        mut self,
        coordinator_url: &str,
        extra_roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Runner {
        if let Some(host) = reqwest::Url::parse(coordinator_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
        {
            self.coordinator_host = host.trim_matches(['[', ']']).to_owned();
        }
        self.checkpoints = match CheckpointStore::new(coordinator_url, extra_roots) {
            Ok(store) => Some(Arc::new(store)),
            Err(error) => {
                tracing::warn!(%error, "no checkpoint store: nodes run without checkpoints");
                None
            }
        };
        self
    }

    /// Whether nodes get a cgroup memory limit (else only an address-space limit).
    pub fn memory_limited_by_cgroup(&self) -> bool {
        self.sandbox.cgroup_version().is_some()
    }

    /// Whether exec nodes get their CPU limit (else they run without one).
    pub fn cpu_limited_by_cgroup(&self) -> bool {
        self.sandbox.limits_cpu()
    }

    /// The devices this worker holds, as the coordinator named them: device id to GPU index.
    pub fn set_devices(&mut self, devices: HashMap<String, Option<u32>>) {
        self.devices = devices;
    }

    /// Starts a run, unless this run id is already live or ended. A refused order is reported
    /// as `start_failed`. Needs a Tokio runtime.
    pub fn start(&mut self, order: NodeOrder) {
        if self.live.contains_key(&order.run_id) {
            return;
        }
        if let Some(report) = self.finished_report(&order.run_id) {
            if !self.outbox.holds_exit_of(&order.run_id) {
                self.outbox.push(Kind::Optional, report);
            }
            return;
        }
        let prepared = if self.live.len() >= RUNS_MAX {
            Err(format!("this worker runs {RUNS_MAX} nodes already"))
        } else {
            self.prepare(&order)
        };
        let plan = match prepared {
            Ok(plan) => plan,
            Err(message) => {
                tracing::warn!(run_id = %order.run_id, %message, "order refused");
                let report = exited(&order.run_id, None, "start_failed", message);
                self.outbox.push(Kind::Optional, report);
                return;
            }
        };
        tracing::info!(run_id = %order.run_id, cluster_id = %order.cluster_id, rank = order.node_rank, "starting a node");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(drive(
            plan,
            order.run_id.clone(),
            self.outbox.clone(),
            stopped,
        ));
        let live = Live {
            stop: Some(stop),
            task,
        };
        self.live.insert(order.run_id, live);
    }

    /// The table the tunnel consults, shared with it.
    pub fn port_table(&self) -> PortTable {
        self.ports.clone()
    }

    /// Reports every started node's mesh key again, for a coordinator that may have restarted
    /// (a session's first messages; joining again changes nothing at one that did not).
    pub fn rejoin_meshes(&self) {
        for joined in self.meshes.joined() {
            self.outbox.push(Kind::Lifecycle, joined);
        }
    }

    /// Gives a run's mesh endpoint its cluster's current peers; nothing for a run without one.
    pub fn mesh_peers(&self, run_id: &str, peers: &[flotilla_proto::mesh::MeshPeer]) {
        match self.meshes.get(run_id) {
            Some(mesh) => mesh.set_peers(peers),
            None => tracing::debug!(%run_id, "mesh peers for a run without a mesh here"),
        }
    }

    /// Kills a live run; it is reported `stopped` with `reason` as the message. A run this
    /// worker does not run is ignored.
    pub fn stop(&mut self, run_id: &str, reason: &str) {
        let Some(stop) = self.live.get_mut(run_id).and_then(|live| live.stop.take()) else {
            tracing::debug!(%run_id, "stop for a run not live here");
            return;
        };
        tracing::info!(%run_id, %reason, "stopping a node");
        let _ = stop.send(reason.to_owned());
    }

    /// The runs whose end is not handed to the agent yet, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.live.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The next message to send. Cancel-safe: a message is taken only when returned.
    pub async fn next_message(&mut self) -> WorkerMessage {
        loop {
            if let Some(message) = self.outbox.pop() {
                self.handed_over(&message);
                return message;
            }
            self.outbox.ready.notified().await;
        }
    }

    /// Kills every live run and waits (a bounded time) for their cleanup.
    pub async fn shutdown(&mut self) {
        let tasks: Vec<_> = self.live.drain().map(|(_, live)| live.task).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_MS_MAX);
        for task in tasks {
            // Dropping the stop sender (with `live`) stopped it.
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a node's cleanup outlived the shutdown deadline");
                break;
            }
        }
    }

    /// Moves a run whose end is handed over from the live runs to the finished ones.
    fn handed_over(&mut self, message: &WorkerMessage) {
        let WorkerMessage::NodeExited { run_id, .. } = message else {
            return;
        };
        self.ports.remove(run_id);
        if self.live.remove(run_id).is_none() || self.finished_report(run_id).is_some() {
            return;
        }
        if self.finished.len() >= FINISHED_KEPT_MAX {
            self.finished.pop_front();
        }
        self.finished.push_back(message.clone());
    }

    fn finished_report(&self, run_id: &str) -> Option<WorkerMessage> {
        self.finished
            .iter()
            .find(|report| {
                matches!(report, WorkerMessage::NodeExited { run_id: id, .. } if id == run_id)
            })
            .cloned()
    }

    /// Checks an order and turns it into a plan (the work dir is made by the task).
    fn prepare(&self, order: &NodeOrder) -> Result<Plan, String> {
        check_run_id(&order.run_id)?;
        let driver = match (&order.image, &self.engine) {
            (None, _) => Driver::Exec {
                sandbox: self.sandbox.clone(),
                networks: self.networks.clone(),
            },
            (Some(image), Some(engine)) => Driver::Container {
                engine: engine.clone(),
                image: image.clone(),
            },
            (Some(_), None) => return Err(ContainerError::NoEngine.to_string()),
        };
        if order.memory_bytes_max < MEMORY_BYTES_MIN {
            return Err(format!(
                "memory limit {} bytes is under the {MEMORY_BYTES_MIN} a node needs",
                order.memory_bytes_max
            ));
        }
        if order.wall_limit_ms == 0 {
            return Err("the wall-clock limit is zero".to_owned());
        }
        if order.peers.iter().any(|peer| peer.contains(',')) {
            return Err("a peer name has a comma".to_owned());
        }
        let mut gpu_indices = Vec::new();
        for device_id in &order.device_ids {
            match self.devices.get(device_id) {
                Some(Some(index)) => gpu_indices.push(*index),
                Some(None) => {}
                None => return Err(format!("device {device_id} is not on this worker")),
            }
        }
        let mesh = self.mesh_plan(order);
        let mut argv = order.argv.clone();
        let mut env = node_env(order, mesh.is_some());
        let mut read_only_binds = vec![];
        if let Some(ray) = &order.ray {
            if mesh.is_none() {
                return Err("a ray node needs the cluster mesh: run the worker as root".to_owned());
            }
            let cpus = (order.cpu_millis_max / 1_000).max(1);
            let (ray_argv, ray_env) =
                crate::ray::node_command(ray, cpus, gpu_indices.len(), order.memory_bytes_max);
            argv = ray_argv;
            env.retain(|(name, _)| !ray_env.iter().any(|(own, _)| own == name));
            env.extend(ray_env);
            read_only_binds.push((self.ray.path(), PathBuf::from(crate::ray::RAY_MOUNT)));
        }
        let spec = SandboxSpec {
            argv,
            env,
            work_dir: self.runs_dir.join(&order.run_id),
            gpu_indices,
            memory_bytes_max: order.memory_bytes_max,
            cpu_millis_max: order.cpu_millis_max,
            wall_limit: Duration::from_millis(order.wall_limit_ms),
            network_namespace: None,
            read_only_binds,
        };
        spec.check().map_err(|e| e.to_string())?;
        let checkpoint = self.checkpoint(order, &spec.work_dir)?;
        Ok(Plan {
            spec,
            driver,
            checkpoint,
            ports: order.ports.clone(),
            port_table: self.ports.clone(),
            mesh,
            ray: order.ray.as_ref().map(|_| self.ray.clone()),
        })
    }

    /// The order's mesh, where this worker makes one: exec nodes in networks of their own.
    fn mesh_plan(&self, order: &NodeOrder) -> Option<MeshPlan> {
        let ordered = order.mesh.as_ref()?;
        if order.image.is_some() || !self.networks.private() {
            tracing::warn!(run_id = %order.run_id, "this node has no mesh: it needs an exec node in a network of its own (a root worker)");
            return None;
        }
        Some(MeshPlan {
            order: ordered.clone(),
            relay_host: self.coordinator_host.clone(),
            table: self.meshes.clone(),
        })
    }

    /// The order's checkpoint, if it has one and this runner knows where checkpoints go.
    fn checkpoint(
        &self,
        order: &NodeOrder,
        work_dir: &Path,
    ) -> Result<Option<Arc<Checkpoint>>, String> {
        let Some(ordered) = &order.checkpoint else {
            return Ok(None);
        };
        let Some(store) = &self.checkpoints else {
            tracing::warn!(run_id = %order.run_id, "no checkpoint store: this node runs without its checkpoint");
            return Ok(None);
        };
        let checkpoint = Checkpoint::new(store.clone(), &order.run_id, work_dir, ordered)
            .map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(checkpoint)))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // The stop senders go with `live`, which stops every run; the tasks then clean up.
        if !self.live.is_empty() {
            tracing::info!(runs = self.live.len(), "stopping every node");
        }
    }
}

/// The first directory from `dir` up that others may not pass through.
fn closed_to_others(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_owned)
}

/// A run id names a directory and a cgroup: letters, digits, `_` and `-`, not too long.
fn check_run_id(run_id: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if run_id.is_empty() || run_id.len() > RUN_ID_CHARS_MAX || !run_id.chars().all(safe) {
        return Err(format!(
            "run ids are 1 to {RUN_ID_CHARS_MAX} letters, digits, _ and -"
        ));
    }
    Ok(())
}

/// The order's environment without the names the worker sets, then the worker's variables.
fn node_env(order: &NodeOrder, meshed: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = order
        .env
        .iter()
        .filter(|(name, _)| !name.starts_with(RESERVED_ENV_PREFIX))
        .cloned()
        .collect();
    let own = [
        ("FLOTILLA_RUN_ID", order.run_id.clone()),
        ("FLOTILLA_CLUSTER_ID", order.cluster_id.clone()),
        ("FLOTILLA_NODE_RANK", order.node_rank.to_string()),
        ("FLOTILLA_NODE_COUNT", order.node_count.to_string()),
        ("FLOTILLA_ATTEMPT", order.attempt.to_string()),
        ("FLOTILLA_PEERS", order.peers.join(",")),
    ];
    env.extend(
        own.into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    if let Some(mesh) = order.mesh.as_ref().filter(|_| meshed) {
        let addresses: Vec<String> = (0..order.node_count)
            .map(|rank| flotilla_proto::mesh::node_address(&order.cluster_id, rank).to_string())
            .collect();
        env.push(("FLOTILLA_MESH_ADDRESS".to_owned(), mesh.address.to_string()));
        env.push(("FLOTILLA_MESH_ADDRESSES".to_owned(), addresses.join(",")));
    }
    env
}

fn exited(run_id: &str, exit_code: Option<i32>, reason: &str, message: String) -> WorkerMessage {
    WorkerMessage::NodeExited {
        run_id: run_id.to_owned(),
        exit_code,
        reason: reason.to_owned(),
        message,
    }
}

/// A checked order: what to run, on what, and where its checkpoints go.
#[derive(Debug)]
struct Plan {
    spec: SandboxSpec,
    driver: Driver,
    checkpoint: Option<Arc<Checkpoint>>,
    /// The ports the cluster declared, entered in `port_table` once the node has started.
    ports: Vec<u16>,
    port_table: PortTable,
    mesh: Option<MeshPlan>,
    /// Ray's environment, made before the node starts, for a node of a `ray` cluster.
    ray: Option<RayEnvironments>,
}

/// What runs a node.
#[derive(Debug, Clone)]
enum Driver {
    Exec {
        sandbox: Arc<Sandbox>,
        networks: Arc<NodeNetworks>,
    },
    Container {
        engine: Arc<Engine>,
        image: String,
    },
}

/// A started node, on either driver.
enum Node {
    Exec(
        crate::sandbox::Running,
        Option<NodeNetwork>,
        Option<Arc<MeshNode>>,
    ),
    Container(crate::container::Running),
}

impl Node {
    /// Starts the node. A container's start (an image pull, even) ends early when `stop`
    /// comes: then the stop's reason is the error.
    async fn start(
        driver: &Driver,
        run_id: &str,
        spec: &SandboxSpec,
        output: mpsc::Sender<Chunk>,
        stop: &mut oneshot::Receiver<String>,
        mesh: Option<&MeshPlan>,
    ) -> Result<Node, StartFailed> {
        match driver {
            Driver::Exec { sandbox, networks } => {
                let network = make_network(networks, run_id).await?;
                let made = match (mesh, &network) {
                    (Some(plan), Some(network)) => make_mesh(plan, network).await.map(Some),
                    _ => Ok(None),
                };
                let mesh = match made {
                    Ok(mesh) => mesh,
                    Err(message) => {
                        remove_network(network).await;
                        return Err(StartFailed::Error(message));
                    }
                };
                let spec = SandboxSpec {
                    network_namespace: network.as_ref().map(|n| n.name().to_owned()),
                    ..spec.clone()
                };
                match sandbox.start(run_id, &spec, output) {
                    Ok(running) => Ok(Node::Exec(running, network, mesh)),
                    Err(error) => {
                        stop_mesh(mesh).await;
                        remove_network(network).await;
                        Err(StartFailed::Error(error.to_string()))
                    }
                }
            }
            Driver::Container { engine, image } => tokio::select! {
                started = engine.start(run_id, image, spec, output) => started
                    .map(Node::Container)
                    .map_err(|e| StartFailed::Error(e.to_string())),
                reason = stop => Err(StartFailed::Stopped(stop_reason(reason))),
            },
        }
    }

    fn mesh(&self) -> Option<&Arc<MeshNode>> {
        match self {
            Node::Exec(_, _, mesh) => mesh.as_ref(),
            Node::Container(_) => None,
        }
    }

    /// The network namespace the node's ports are in; none: the worker's.
    async fn namespace(&self) -> Option<PathBuf> {
        match self {
            Node::Exec(_, network, _) => network.as_ref().map(NodeNetwork::path),
            Node::Container(running) => running.namespace().await,
        }
    }

    async fn wait(self, stop: impl Future<Output = ()>) -> Result<Ended, String> {
        match self {
            Node::Exec(running, network, mesh) => {
                let ended = running.wait(stop).await.map_err(|e| e.to_string());
                // The interface's file closes before its namespace goes.
                stop_mesh(mesh).await;
                remove_network(network).await;
                ended
            }
            Node::Container(running) => running.wait(stop).await.map_err(|e| e.to_string()),
        }
    }
}

/// The node's own network, where this worker makes them.
async fn make_network(
    networks: &Arc<NodeNetworks>,
    run_id: &str,
) -> Result<Option<NodeNetwork>, StartFailed> {
    let (networks, id) = (networks.clone(), run_id.to_owned());
    tokio::task::spawn_blocking(move || networks.create(&id))
        .await
        .map_err(|e| StartFailed::Error(e.to_string()))?
        .map_err(|e| StartFailed::Error(format!("cannot make the node's network: {e}")))
}

/// The node's mesh endpoint, in its network; entered in the plan's table.
async fn make_mesh(plan: &MeshPlan, network: &NodeNetwork) -> Result<Arc<MeshNode>, String> {
    let (plan, path, name) = (plan.clone(), network.path(), network.name().to_owned());
    let started = tokio::task::spawn_blocking(move || {
        let relay = crate::mesh::relay_address(&plan.relay_host, plan.order.relay_port)
            .ok_or_else(|| format!("cannot resolve the coordinator's host {}", plan.relay_host))?;
        MeshNode::start(&path, &name, &plan.order, relay).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?;
    started
        .map(Arc::new)
        .map_err(|e| format!("cannot make the node's mesh: {e}"))
}

async fn stop_mesh(mesh: Option<Arc<MeshNode>>) {
    if let Some(mesh) = mesh {
        let _ = tokio::task::spawn_blocking(move || mesh.stop()).await;
    }
}

async fn remove_network(network: Option<NodeNetwork>) {
    if let Some(network) = network {
        let _ = tokio::task::spawn_blocking(move || network.remove()).await;
    }
}

/// Why a node did not start.
enum StartFailed {
    Error(String),
    /// A stop came first; its reason.
    Stopped(String),
}

/// A stop's reason; a dropped sender (the runner is gone) stops the run too.
fn stop_reason(received: Result<String, oneshot::error::RecvError>) -> String {
    received.unwrap_or_else(|_| "the worker is shutting down".to_owned())
}

/// One run from work dir to report. Always ends with exactly one `NodeExited`.
async fn drive(plan: Plan, run_id: String, outbox: Arc<Outbox>, stop: oneshot::Receiver<String>) {
    let spec = &plan.spec;
    let report = match fresh_work_dir(&spec.work_dir).await {
        Ok(()) => supervise(&plan, &run_id, &outbox, stop).await,
        Err(error) => exited(
            &run_id,
            None,
            "start_failed",
            format!("cannot make the work directory: {error}"),
        ),
    };
    if let Err(error) = tokio::fs::remove_dir_all(&spec.work_dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%run_id, %error, "cannot remove a run's work directory");
    }
    outbox.push(Kind::Lifecycle, report);
}

/// An empty work directory the sandbox user can write to.
async fn fresh_work_dir(dir: &Path) -> std::io::Result<()> {
    if let Err(error) = tokio::fs::remove_dir_all(dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return Err(error);
    }
    tokio::fs::create_dir(dir).await?;
    // The node's user is not the worker's; the parent (0711) keeps others from finding it.
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).await
}

/// Restores the node's checkpoint, starts the node, forwards its output and uploads its
/// checkpoints, and returns the report of its end.
async fn supervise(
    plan: &Plan,
    run_id: &str,
    outbox: &Outbox,
    mut stop: oneshot::Receiver<String>,
) -> WorkerMessage {
    let spec = &plan.spec;
    if let Some(checkpoint) = &plan.checkpoint {
        tokio::select! {
            () = checkpoint.restore() => {}
            reason = &mut stop => return exited(run_id, None, "stopped", stop_reason(reason)),
        }
    }
    if let Some(ray) = &plan.ray {
        tokio::select! {
            ready = ray.ready() => if let Err(message) = ready {
                tracing::warn!(%run_id, %message, "no Ray environment");
                return exited(run_id, None, "start_failed", format!("cannot install Ray: {message}"));
            },
            reason = &mut stop => return exited(run_id, None, "stopped", stop_reason(reason)),
        }
    }
    let (output, mut chunks) = mpsc::channel(CHUNKS_QUEUED_MAX);
    let started = Node::start(
        &plan.driver,
        run_id,
        spec,
        output,
        &mut stop,
        plan.mesh.as_ref(),
    );
    let running = match started.await {
        Ok(running) => running,
        Err(StartFailed::Error(message)) => {
            tracing::warn!(%run_id, %message, "a node did not start");
            return exited(run_id, None, "start_failed", message);
        }
        Err(StartFailed::Stopped(reason)) => return exited(run_id, None, "stopped", reason),
    };
    if !plan.ports.is_empty() {
        let namespace = running.namespace().await;
        plan.port_table
            .insert(run_id, plan.ports.clone(), namespace);
    }
    if let (Some(mesh_plan), Some(mesh)) = (&plan.mesh, running.mesh()) {
        mesh_plan.table.insert(run_id, mesh.clone());
        let public_key = mesh.public_key();
        outbox.push(
            Kind::Lifecycle,
            WorkerMessage::MeshJoined {
                run_id: run_id.to_owned(),
                public_key,
            },
        );
    }
    outbox.push(
        Kind::Lifecycle,
        WorkerMessage::NodeStarted {
            run_id: run_id.to_owned(),
        },
    );
    let uploads = plan.checkpoint.clone().map(Uploads::start);
    let mut logs = LogForwarder::new(run_id);
    let mut stopped_for = None;
    let ended = {
        let stop = async {
            stopped_for = Some(stop_reason(stop.await));
        };
        let wait = running.wait(stop);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                Some(chunk) = chunks.recv() => logs.forward(outbox, &chunk),
                ended = &mut wait => break ended,
            }
        }
    };
    plan.port_table.remove(run_id);
    if let Some(mesh_plan) = &plan.mesh {
        mesh_plan.table.remove(run_id);
    }
    // The readers are done: what is left in the channel is the last of the output.
    while let Some(chunk) = chunks.recv().await {
        logs.forward(outbox, &chunk);
    }
    logs.finish(outbox);
    final_upload(plan.checkpoint.as_deref(), uploads, &ended).await;
    match ended {
        Ok(ended) => {
            let (reason, message) = match ended.ending {
                Ending::Exited => ("exited", String::new()),
                Ending::Stopped => ("stopped", stopped_for.unwrap_or_default()),
                Ending::TimedOut => ("timed_out", format!("ran past {:?}", spec.wall_limit)),
                Ending::OutOfMemory => (
                    "memory",
                    format!("over its {} byte memory limit", spec.memory_bytes_max),
                ),
            };
            tracing::info!(%run_id, code = ?ended.code, %reason, "node ended");
            exited(run_id, ended.code, reason, message)
        }
        Err(error) => exited(
            run_id,
            None,
            "exited",
            format!("lost track of the node: {error}"),
        ),
    }
}

/// Stops the periodic uploads, then uploads the checkpoint once more unless the node was
/// stopped (the coordinator no longer wants it, or the worker is shutting down).
async fn final_upload(
    checkpoint: Option<&Checkpoint>,
    uploads: Option<Uploads>,
    ended: &Result<Ended, String>,
) {
    if let Some(uploads) = uploads {
        uploads.stop().await;
    }
    let stopped = matches!(
        ended,
        Ok(Ended {
            ending: Ending::Stopped,
            ..
        })
    );
    if let Some(checkpoint) = checkpoint
        && !stopped
    {
        checkpoint.upload().await;
    }
}

/// Turns a run's output into `NodeLog` messages and counts what did not fit.
struct LogForwarder {
    run_id: String,
    stdout: LogDecoder,
    stderr: LogDecoder,
    dropped_bytes: u64,
}

impl LogForwarder {
    fn new(run_id: &str) -> LogForwarder {
        LogForwarder {
            run_id: run_id.to_owned(),
            stdout: LogDecoder::default(),
            stderr: LogDecoder::default(),
            dropped_bytes: 0,
        }
    }

    fn forward(&mut self, outbox: &Outbox, chunk: &Chunk) {
        let decoder = match chunk.stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        let pieces = decoder.push(&chunk.bytes);
        self.send(outbox, chunk.stream, pieces);
    }

    /// Sends what is left of incomplete characters, and says what was dropped.
    fn finish(&mut self, outbox: &Outbox) {
        let stdout = self.stdout.finish();
        self.send(outbox, LogStream::Stdout, stdout);
        let stderr = self.stderr.finish();
        self.send(outbox, LogStream::Stderr, stderr);
        if self.dropped_bytes > 0 {
            tracing::warn!(run_id = %self.run_id, dropped_bytes = self.dropped_bytes, "log output dropped while the coordinator was away");
        }
    }

    fn send(&mut self, outbox: &Outbox, stream: LogStream, pieces: Vec<Piece>) {
        for piece in pieces {
            let message = WorkerMessage::NodeLog {
                run_id: self.run_id.clone(),
                stream,
                offset: piece.offset,
                text: piece.text,
            };
            if !outbox.push(Kind::Log, message) {
                self.dropped_bytes += piece.raw_bytes;
            }
        }
    }
}

/// Some text of a stream: `raw_bytes` of it starting at byte `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    offset: u64,
    raw_bytes: u64,
    text: String,
}

/// Cuts a byte stream into UTF-8 text pieces of at most [`LOG_CHUNK_BYTES_MAX`] bytes, keeping
/// a character split across reads whole and replacing invalid bytes. Offsets count the
/// stream's raw bytes.
#[derive(Debug, Default)]
struct LogDecoder {
    /// The start of a character whose end has not been read yet (at most 3 bytes).
    pending: Vec<u8>,
    /// Raw bytes of the stream turned into pieces so far.
    offset: u64,
}

impl LogDecoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<Piece> {
        let mut data = std::mem::take(&mut self.pending);
        data.extend_from_slice(bytes);
        let mut builder = PieceBuilder::new(self.offset);
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    builder.add_text(text);
                    rest = &[];
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    builder.add_text(std::str::from_utf8(valid).unwrap_or_default());
                    let Some(invalid) = error.error_len() else {
                        // An incomplete character at the end: wait for the rest of it.
                        self.pending = after.to_vec();
                        break;
                    };
                    builder.add_replacement(invalid);
                    rest = &after[invalid..];
                }
            }
        }
        let pieces = builder.finish();
        self.offset += pieces.iter().map(|p| p.raw_bytes).sum::<u64>();
        pieces
    }

    /// The stream ended: an incomplete character left is invalid.
    fn finish(&mut self) -> Vec<Piece> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let mut builder = PieceBuilder::new(self.offset);
        builder.add_replacement(self.pending.len());
        self.pending.clear();
        let pieces = builder.finish();
        self.offset += pieces.iter().map(|p| p.raw_bytes).sum::<u64>();
        pieces
    }
}

/// Fills pieces up to [`LOG_CHUNK_BYTES_MAX`] bytes of text each.
struct PieceBuilder {
    pieces: Vec<Piece>,
    current: Piece,
}

impl PieceBuilder {
    fn new(offset: u64) -> PieceBuilder {
        PieceBuilder {
            pieces: Vec::new(),
            current: Piece {
                offset,
                raw_bytes: 0,
                text: String::new(),
            },
        }
    }

    /// Valid text: each byte of it is a raw byte.
    fn add_text(&mut self, mut text: &str) {
        while !text.is_empty() {
            let room = LOG_CHUNK_BYTES_MAX - self.current.text.len();
            let cut = text.floor_char_boundary(room.min(text.len()));
            if cut == 0 {
                self.next_piece();
                continue;
            }
            self.current.text.push_str(&text[..cut]);
            self.current.raw_bytes += cut as u64;
            text = &text[cut..];
        }
    }

    /// `raw_bytes` invalid bytes, shown as one replacement character.
    fn add_replacement(&mut self, raw_bytes: usize) {
        if self.current.text.len() + char::REPLACEMENT_CHARACTER.len_utf8() > LOG_CHUNK_BYTES_MAX {
            self.next_piece();
        }
        self.current.text.push(char::REPLACEMENT_CHARACTER);
        self.current.raw_bytes += raw_bytes as u64;
    }

    fn next_piece(&mut self) {
        let offset = self.current.offset + self.current.raw_bytes;
        let done = std::mem::replace(
            &mut self.current,
            Piece {
                offset,
                raw_bytes: 0,
                text: String::new(),
            },
        );
        if done.raw_bytes > 0 {
            self.pieces.push(done);
        }
    }

    fn finish(mut self) -> Vec<Piece> {
        self.next_piece();
        self.pieces
    }
}

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod container_tests;
#[cfg(test)]
mod tests;
