//! The container driver: a node whose order names an image runs as a container of the
//! machine's Docker engine, reached over its unix socket through the Engine API (`bollard`).
//! It is the exec driver's twin ([`crate::sandbox`]): the same [`SandboxSpec`], the same
//! [`Chunk`]s of output, the same [`Ended`] report, so the runner treats both alike.
//!
//! What a container gets, and nothing else (see [`create_body`]):
//! - the image's root filesystem read-only, a private `/tmp` (tmpfs), the run's work dir
//!   bound read-write at `/work`, which is its working directory and `HOME`. Never the engine's
//!   socket, nor anything else of the worker's data dir;
//! - user 65534:65534 (nobody), every capability dropped, `no-new-privileges`;
//! - the order's memory limit with no swap, its CPU limit (`NanoCpus`, the engine's cores at
//!   most), a pids limit, no log kept by the engine (output is streamed over an attach, so
//!   nothing grows on the worker's disk);
//! - its GPUs through the engine's NVIDIA device request, only when it holds GPUs; an engine
//!   without an `nvidia` runtime cannot start such a node;
//! - the image's entrypoint, with the order's argv as its command, as `docker run IMAGE ARGV`
//!   does: images that set up their environment in an entrypoint keep working.
//!
//! Every container is labelled with its run id and the worker that made it (its runs dir and
//! this runner's random id); a runner that starts removes the containers a previous process of
//! the same worker left ([`Engine::sweep_leftovers`]). A container is removed once its end is
//! known; a [`Running`] dropped before that (its task cancelled) removes it in the background.
//!
//! An image not on the worker is pulled (bounded by [`PULL_MS_MAX`]); when the pull fails the
//! node does not start and the report names the image. Registries needing credentials are not
//! supported.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, HostConfigLogConfig, Mount, MountType,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use flotilla_proto::wire::LogStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::sandbox::{
    CHUNK_BYTES_MAX, Chunk, Ended, Ending, SANDBOX_GID, SANDBOX_UID, SandboxError, SandboxSpec,
    WORK_MOUNT,
};

/// Where the engine listens when neither the config nor `DOCKER_HOST` says.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Label: the run a container belongs to.
pub const LABEL_RUN_ID: &str = "flotilla.run_id";
/// Label: the runs directory of the worker that made it (two workers on one machine keep apart).
pub const LABEL_RUNS_DIR: &str = "flotilla.runs_dir";
/// Label: the runner (one per worker process) that made it.
pub const LABEL_RUNNER: &str = "flotilla.runner";
/// Seconds the engine has to answer a request (its headers; streams run on).
const API_TIMEOUT_S: u64 = 30;
/// How long pulling a missing image may take.
pub const PULL_MS_MAX: u64 = 15 * 60 * 1_000;
/// Processes and threads a container may have at once.
const PIDS_MAX: i64 = 4_096;
/// Characters in an image reference at most.
const IMAGE_CHARS_MAX: usize = 512;
/// Leftover containers removed per sweep at most.
const SWEEP_CONTAINERS_MAX: usize = 1_024;
/// How long the output may take to arrive once the container is dead.
const OUTPUT_DRAIN_MS_MAX: u64 = 5_000;
/// How long a killed container may take to be reported dead.
const KILL_WAIT_MS_MAX: u64 = 10_000;
/// Billionths of a core (the engine's unit) in a thousandth of a core (the order's).
const NANO_CPUS_PER_MILLI: u64 = 1_000_000;
/// The smallest CPU limit, in thousandths of a core: a hundredth of a core, the smallest the
/// engine (and the kernel's 1 ms quota per 100 ms) takes.
const CPU_MILLIS_MIN: u64 = 10;
/// Mount options of the private /tmp: executable, since compilers (Triton, nvcc) load what
/// they build there. Its pages count against the memory limit, which bounds it.
const TMP_OPTIONS: &str = "rw,exec,nosuid,nodev,mode=1777";
/// The exit code of a process killed by SIGKILL (128 + 9), as the engine reports it.
const SIGKILL_EXIT_CODE: i64 = 137;
/// Further looks at a killed container's OOM flag, this far apart.
const OOM_FLAG_RECHECKS_MAX: u32 = 3;
const OOM_FLAG_RECHECK_MS: u64 = 100;

/// Why a container node could not start or be followed (not why it failed: its exit code).
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("this worker has no container engine")]
    NoEngine,
    #[error("{0}")]
    Invalid(#[from] SandboxError),
    #[error("image name {image:?} is not a valid image reference")]
    BadImage { image: String },
    #[error("the container engine at {socket} is unreachable: {source}")]
    Unreachable {
        socket: PathBuf,
        source: DockerError,
    },
    #[error("image {image} is not on this worker and could not be pulled: {reason}")]
    ImageMissing { image: String, reason: String },
    #[error("the node holds GPUs {gpus} but this worker's container engine has no nvidia runtime")]
    NoGpuRuntime { gpus: String },
    #[error("the container engine could not {action} for run {run_id}: {source}")]
    Engine {
        action: &'static str,
        run_id: String,
        source: DockerError,
    },
}

/// Finds the engine's socket: the configured one, else `DOCKER_HOST` when it is a unix
/// socket, else [`DEFAULT_SOCKET`] when it exists. None: this worker runs no containers.
pub fn locate(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(socket) = configured {
        return Some(socket.to_owned());
    }
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && !host.is_empty()
    {
        match host.strip_prefix("unix://") {
            Some(path) => return Some(PathBuf::from(path)),
            // A TCP engine would need TLS and its own trust; the driver speaks unix only.
            None => tracing::warn!(%host, "DOCKER_HOST is not a unix socket; ignoring it"),
        }
    }
    let default = Path::new(DEFAULT_SOCKET);
    default.exists().then(|| default.to_owned())
}

/// A container engine and the labels this runner's containers carry.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    runs_dir: String,
    runner_id: String,
}

impl Engine {
    /// The engine at `socket`, for the runner keeping its work dirs in `runs_dir`. Nothing is
    /// contacted yet: the engine may come up after the worker.
    pub fn new(socket: PathBuf, runs_dir: &Path) -> Engine {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the operating system has a random source");
        Engine {
            socket,
            runs_dir: runs_dir.to_string_lossy().into_owned(),
            runner_id: hex::encode(bytes),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A client speaking the engine's API version (older engines answer older versions only).
    pub async fn connect(&self) -> Result<Docker, ContainerError> {
        let unreachable = |source| ContainerError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let path = self.socket.to_string_lossy();
        let docker = Docker::connect_with_unix(&path, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
            .map_err(unreachable)?;
        docker.negotiate_version().await.map_err(unreachable)
    }

    /// Removes the containers a previous process of this worker left (their nodes are gone
    /// with it); keeps this runner's own.
    pub async fn sweep_leftovers(&self) {
        let docker = match self.connect().await {
            Ok(docker) => docker,
            Err(error) => {
                tracing::info!(%error, "no container engine to sweep");
                return;
            }
        };
        let filter =
            HashMap::from([("label", vec![format!("{LABEL_RUNS_DIR}={}", self.runs_dir)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filter)
            .build();
        let containers = match docker.list_containers(Some(options)).await {
            Ok(containers) => containers,
            Err(error) => {
                tracing::warn!(%error, "cannot list leftover containers");
                return;
            }
        };
        let leftovers = containers.into_iter().filter(|c| {
            c.labels.as_ref().and_then(|l| l.get(LABEL_RUNNER)) != Some(&self.runner_id)
        });
        for container in leftovers.take(SWEEP_CONTAINERS_MAX) {
            let Some(id) = container.id else { continue };
            tracing::info!(container = %id, "removing a container a previous worker left");
            remove(&docker, &id).await;
        }
    }

    /// Creates and starts the node's container, streaming its output to `output` as it
    /// comes (a full channel holds it back, a closed one discards the rest).
    pub async fn start(
        &self,
        run_id: &str,
        image: &str,
        spec: &SandboxSpec,
        output: mpsc::Sender<Chunk>,
    ) -> Result<Running, ContainerError> {
        spec.check()?;
        check_image(image)?;
        let engine_error = |action| {
            let run_id = run_id.to_owned();
            move |source| ContainerError::Engine {
                action,
                run_id,
                source,
            }
        };
        let docker = self.connect().await?;
        ensure_image(&docker, run_id, image).await?;
        // Asked only when the policy depends on it: GPUs or a CPU limit.
        let facts = if spec.gpu_indices.is_empty() && spec.cpu_millis_max == 0 {
            EngineFacts::default()
        } else {
            EngineFacts::ask(&docker)
                .await
                .map_err(engine_error("describe itself"))?
        };
        if !spec.gpu_indices.is_empty() && !facts.nvidia {
            return Err(ContainerError::NoGpuRuntime {
                gpus: join_indices(&spec.gpu_indices),
            });
        }
        let labels = self.labels(run_id);
        let body = create_body(image, spec, labels, facts);
        let created = docker
            .create_container(None, body)
            .await
            .map_err(engine_error("create the container"))?;
        // From here on the guard removes the container whatever happens.
        let guard = Guard {
            docker: docker.clone(),
            id: created.id,
            armed: true,
        };
        // Attached before it starts, so not a byte of output is missed.
        let attach = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = docker
            .attach_container(&guard.id, Some(attach))
            .await
            .map_err(engine_error("attach to the container"))?;
        let reader = tokio::spawn(forward(attached.output, output));
        docker
            .start_container(&guard.id, None)
            .await
            .map_err(engine_error("start the container"))?;
        let deadline = tokio::time::Instant::now()
            .checked_add(spec.wall_limit)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
        Ok(Running {
            run_id: run_id.to_owned(),
            guard,
            reader,
            deadline,
        })
    }

    fn labels(&self, run_id: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_RUN_ID.to_owned(), run_id.to_owned()),
            (LABEL_RUNS_DIR.to_owned(), self.runs_dir.clone()),
            (LABEL_RUNNER.to_owned(), self.runner_id.clone()),
        ])
    }
}

/// A started container. Dropping it removes the container in the background.
#[derive(Debug)]
pub struct Running {
    run_id: String,
    guard: Guard,
    reader: JoinHandle<()>,
    deadline: tokio::time::Instant,
}

impl Running {
    /// The container's network namespace, as its first process's: the tunnel dials its ports
    /// inside it, on loopback, so a server bound to 127.0.0.1 there is reached too.
    pub async fn namespace(&self) -> Option<PathBuf> {
        let inspected = self
            .guard
            .docker
            .inspect_container(&self.guard.id, None)
            .await
            .ok()?;
        let pid = inspected.state?.pid.filter(|pid| *pid > 0)?;
        Some(PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    /// Waits for the node's end: by itself, at its wall-clock limit, or when `stop` resolves
    /// (then it is killed). Returns once the output is all handed over and the container is
    /// removed.
    pub async fn wait(mut self, stop: impl Future<Output = ()>) -> Result<Ended, ContainerError> {
        let docker = self.guard.docker.clone();
        let id = self.guard.id.clone();
        let run_id = self.run_id.clone();
        let engine_error = |action| {
            let run_id = run_id.clone();
            move |source| ContainerError::Engine {
                action,
                run_id,
                source,
            }
        };
        let ending = tokio::select! {
            waited = wait_exit(&docker, &id) => {
                waited.map_err(engine_error("wait for the container"))?;
                Ending::Exited
            }
            () = tokio::time::sleep_until(self.deadline) => Ending::TimedOut,
            () = stop => Ending::Stopped,
        };
        if ending != Ending::Exited {
            kill(&docker, &id).await;
        }
        self.drain_output().await;
        let mut state = bollard::models::ContainerState::default();
        for attempt in 0..=OOM_FLAG_RECHECKS_MAX {
            state = docker
                .inspect_container(&id, None)
                .await
                .map_err(engine_error("inspect the container"))?
                .state
                .unwrap_or_default();
            // The engine may record the OOM kill a moment after the exit (cgroup v1 events
            // race the wait): a SIGKILL we did not send is asked about again, briefly.
            let unexplained_kill = ending == Ending::Exited
                && state.exit_code == Some(SIGKILL_EXIT_CODE)
                && state.oom_killed != Some(true);
            if !unexplained_kill || attempt == OOM_FLAG_RECHECKS_MAX {
                break;
            }
            tokio::time::sleep(Duration::from_millis(OOM_FLAG_RECHECK_MS)).await;
        }
        self.guard.remove_now().await;
        let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
        let ending = match ending {
            Ending::Exited if state.oom_killed == Some(true) && code != Some(0) => {
                Ending::OutOfMemory
            }
            other => other,
        };
        // A killed node has no code of its own, as with the exec driver.
        let code = if ending == Ending::Exited || ending == Ending::OutOfMemory {
            code
        } else {
            None
        };
        Ok(Ended { code, ending })
    }

    /// Lets the reader hand over what the attach still holds; gives up after a while.
    async fn drain_output(&mut self) {
        let deadline = Duration::from_millis(OUTPUT_DRAIN_MS_MAX);
        if tokio::time::timeout(deadline, &mut self.reader)
            .await
            .is_err()
        {
            self.reader.abort();
        }
    }
}

/// Removes its container when dropped armed, so a cancelled start or run leaves nothing.
#[derive(Debug)]
struct Guard {
    docker: Docker,
    id: String,
    armed: bool,
}

impl Guard {
    async fn remove_now(&mut self) {
        self.armed = false;
        remove(&self.docker, &self.id).await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Without a runtime (it is shutting down) the next worker's sweep removes it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (docker, id) = (self.docker.clone(), self.id.clone());
            runtime.spawn(async move { remove(&docker, &id).await });
        }
    }
}

/// Resolves when the container is no longer running. The engine answers a non-zero exit as
/// an error carrying the code, which is an ordinary end here.
async fn wait_exit(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let mut waiting = docker.wait_container(id, None);
    match waiting.next().await {
        Some(Ok(_) | Err(DockerError::DockerContainerWaitError { .. })) | None => Ok(()),
        Some(Err(error)) => Err(error),
    }
}

/// Kills the container and waits (bounded) until the engine knows it is dead.
async fn kill(docker: &Docker, id: &str) {
    let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
    if let Err(error) = docker.kill_container(id, Some(options)).await {
        // Already dead (409) is the common case of a race with its own end.
        tracing::debug!(container = %id, %error, "kill");
    }
    let deadline = Duration::from_millis(KILL_WAIT_MS_MAX);
    if tokio::time::timeout(deadline, wait_exit(docker, id))
        .await
        .is_err()
    {
        tracing::warn!(container = %id, "a killed container is still running");
    }
}

async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(error) => tracing::warn!(container = %id, %error, "cannot remove a container"),
    }
}

/// Makes sure the image is on this worker, pulling it when it is not.
async fn ensure_image(docker: &Docker, run_id: &str, image: &str) -> Result<(), ContainerError> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(source) => {
            return Err(ContainerError::Engine {
                action: "inspect the image",
                run_id: run_id.to_owned(),
                source,
            });
        }
    }
    tracing::info!(%image, "pulling an image this worker lacks");
    let missing = |reason: String| ContainerError::ImageMissing {
        image: image.to_owned(),
        reason,
    };
    let pull = async {
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(Duration::from_millis(PULL_MS_MAX), pull).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(missing(reason)),
        Err(_) => Err(missing(format!("the pull took over {PULL_MS_MAX} ms"))),
    }
}

/// What the engine says of itself that a container's policy depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineFacts {
    /// It has an `nvidia` runtime: GPUs can be requested.
    pub nvidia: bool,
    /// The cores it has (unknown: none); it refuses a CPU limit above them.
    pub cpus: Option<u64>,
}

impl EngineFacts {
    async fn ask(docker: &Docker) -> Result<EngineFacts, DockerError> {
        let info = docker.info().await?;
        Ok(EngineFacts {
            nvidia: info.runtimes.is_some_and(|r| r.contains_key("nvidia")),
            cpus: info
                .ncpu
                .and_then(|n| u64::try_from(n).ok())
                .filter(|&n| n > 0),
        })
    }
}

/// The engine's CPU limit (`NanoCpus`, billionths of a core) for `cpu_millis_max`
/// thousandths of a core; none for none (0). Raised to [`CPU_MILLIS_MIN`], and lowered to the
/// engine's cores, which it refuses to exceed (a limit that high binds nothing anyway).
pub fn nano_cpus(cpu_millis_max: u64, engine_cpus: Option<u64>) -> Option<i64> {
    if cpu_millis_max == 0 {
        return None;
    }
    let cores_millis = engine_cpus.map_or(u64::MAX, |cores| cores.saturating_mul(1_000));
    let millis = cpu_millis_max.min(cores_millis).max(CPU_MILLIS_MIN);
    Some(i64::try_from(millis.saturating_mul(NANO_CPUS_PER_MILLI)).unwrap_or(i64::MAX))
}

/// Hands the attached output to `output` in chunks; once nobody listens, reads on and
/// discards so the container never blocks on a full pipe.
async fn forward(
    mut attached: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, DockerError>>
    + Unpin,
    output: mpsc::Sender<Chunk>,
) {
    use bollard::container::LogOutput;
    let mut listening = true;
    while let Some(Ok(piece)) = attached.next().await {
        let (stream, bytes) = match piece {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (LogStream::Stdout, message)
            }
            LogOutput::StdErr { message } => (LogStream::Stderr, message),
            LogOutput::StdIn { .. } => continue,
        };
        for part in bytes.chunks(CHUNK_BYTES_MAX) {
            if listening {
                let chunk = Chunk {
                    stream,
                    bytes: part.to_vec(),
                };
                listening = output.send(chunk).await.is_ok();
            }
        }
    }
}

/// An image reference goes into URL paths of the API: letters, digits and `._-/:@` only,
/// no `..`, bounded.
fn check_image(image: &str) -> Result<(), ContainerError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/:@".contains(c);
    let valid = !image.is_empty()
        && image.len() <= IMAGE_CHARS_MAX
        && image.chars().all(allowed)
        && image.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !image.contains("..")
        && !image.contains("//");
    if valid {
        Ok(())
    } else {
        Err(ContainerError::BadImage {
            image: image.chars().take(IMAGE_CHARS_MAX).collect(),
        })
    }
}

fn join_indices(indices: &[u32]) -> String {
    indices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The container's environment, as the exec driver's: `HOME`, the node's own variables,
/// then what the node may not change. The image's `PATH` stays: images keep their tools in
/// their own places.
fn container_env(spec: &SandboxSpec) -> Vec<String> {
    // Inside the container the engine shows only the node's GPUs, numbered from 0, so CUDA
    // must count from 0; the NVIDIA hook, outside, takes the host's indices. "void" hides
    // every GPU from images (CUDA's) that ask for all of them.
    let inside: Vec<u32> = (0..spec.gpu_indices.len() as u32).collect();
    let nvidia = if spec.gpu_indices.is_empty() {
        "void".to_owned()
    } else {
        join_indices(&spec.gpu_indices)
    };
    let imposed = [
        ("CUDA_VISIBLE_DEVICES".to_owned(), join_indices(&inside)),
        ("NVIDIA_VISIBLE_DEVICES".to_owned(), nvidia),
    ];
    let defaults = [("HOME".to_owned(), WORK_MOUNT.to_owned())];
    defaults
        .iter()
        .chain(&spec.env)
        .chain(&imposed)
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// What the engine is asked to create: the whole confinement policy of a container node.
pub fn create_body(
    image: &str,
    spec: &SandboxSpec,
    labels: HashMap<String, String>,
    facts: EngineFacts,
) -> ContainerCreateBody {
    let memory_bytes = i64::try_from(spec.memory_bytes_max).unwrap_or(i64::MAX);
    let work = Mount {
        typ: Some(MountType::BIND),
        source: Some(spec.work_dir.to_string_lossy().into_owned()),
        target: Some(WORK_MOUNT.to_owned()),
        read_only: Some(false),
        ..Mount::default()
    };
    let gpus = (facts.nvidia && !spec.gpu_indices.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(spec.gpu_indices.iter().map(u32::to_string).collect()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..DeviceRequest::default()
        }]
    });
    let host_config = HostConfig {
        mounts: Some(vec![work]),
        tmpfs: Some(HashMap::from([("/tmp".to_owned(), TMP_OPTIONS.to_owned())])),
        readonly_rootfs: Some(true),
        memory: Some(memory_bytes),
        // Equal to the memory limit: no swap at all.
        memory_swap: Some(memory_bytes),
        nano_cpus: nano_cpus(spec.cpu_millis_max, facts.cpus),
        pids_limit: Some(PIDS_MAX),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        privileged: Some(false),
        device_requests: gpus,
        // The output is streamed over the attach; an engine log would grow on the worker's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        auto_remove: Some(false),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(spec.argv.clone()),
        env: Some(container_env(spec)),
        user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
        working_dir: Some(WORK_MOUNT.to_owned()),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

#[cfg(test)]
mod tests;
