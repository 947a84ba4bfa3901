//! The exec driver's sandbox: a renter's command runs under bubblewrap as an unprivileged user,
//! with a private view of the filesystem (the system read-only, one writable work directory,
//! nothing of the worker's own data or key), its own PID, IPC and UTS namespaces, a clean
//! environment holding only what the node is given, a memory limit, a CPU limit, and a
//! wall-clock limit.
//!
//! The memory and CPU limits are a cgroup per run where the machine has a writable one (see
//! [`crate::cgroup`]; on cgroup v1 two, one per hierarchy): the sandbox's first process joins
//! them before `bwrap` starts, so every process of the node is inside. Without a memory cgroup,
//! the fallback is an address-space limit (`prlimit --as`), which GPU programs (huge mappings)
//! cannot live with; without a writable CPU controller, nodes run without a CPU limit (said
//! once, at [`Sandbox::detect`]).
//!
//! [`Sandbox::start`] streams the output as [`Chunk`]s and [`Running::wait`] ends the run: by
//! itself, at its wall-clock limit, or when asked to stop. Killing `bwrap` ends the whole node:
//! `--die-with-parent` kills the namespace's first process with it, and a PID namespace dies
//! with its first process; the cgroup is killed too, as a second net. [`run`] runs a spec to its
//! end and keeps the tail of its output.
//!
//! The node's user is `nobody` inside and, when the worker runs as root, outside too: `bwrap`
//! is started through `setpriv` as `nobody`, since an unprivileged user namespace maps the
//! node's user to whoever started `bwrap`. So the work directory, and every directory above
//! it, must let others pass (`o+x`), and the kernel must allow unprivileged user namespaces.
//!
//! `bwrap_args` is pure so the policy is testable without running anything; running needs
//! `bwrap` (Debian package `bubblewrap`), `sh`, `setpriv` when root and `prlimit` without
//! cgroups (both util-linux).

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_proto::wire::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cgroup::{Cgroups, RunCgroup, Version};

/// The user and group a node runs as: `nobody`.
pub const SANDBOX_UID: u32 = 65_534;
pub const SANDBOX_GID: u32 = 65_534;
/// Where the work directory appears inside the sandbox.
pub const WORK_MOUNT: &str = "/work";
/// Bytes of a node's output (stdout and stderr together) kept by [`run`], the most recent.
pub const LOG_TAIL_BYTES_MAX: usize = 1 << 20;
/// Bytes of one [`Chunk`] at most (one read of a pipe).
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks [`run`] lets wait between the pipes and its tail.
const RUN_CHUNKS_QUEUED_MAX: usize = 16;
/// How long the output readers may take to finish once the node is dead.
const READERS_DRAIN_MS_MAX: u64 = 5_000;
/// The sandbox's first process joins the cgroups (the `cgroup.procs` files before the first
/// `--`), then becomes `bwrap` (what follows). An exit status of 125 with a shell message on
/// stderr means it could not join. A missing `--` ends at the first failed join, not in a loop.
const JOIN_CGROUPS_SCRIPT: &str =
    "while [ \"$1\" != -- ]; do echo $$ > \"$1\" || exit 125; shift; done; shift; exec \"$@\"";
/// The join script's `$0`, which names it in its error messages.
const JOIN_CGROUPS_NAME: &str = "flotilla-join";
/// Most arguments and environment variables a command may carry.
pub const ARGS_MAX: usize = 4_096;

/// System directories bound read-only when present.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"];
/// Files of /etc a program commonly needs, bound read-only when present.
const ETC_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/ld.so.cache",
];

/// One node's command and what it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The whole environment the command sees.
    pub env: Vec<(String, String)>,
    /// Writable, and the only writable place besides a private /tmp.
    pub work_dir: PathBuf,
    /// GPUs the node may use (indices), as `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`.
    pub gpu_indices: Vec<u32>,
    /// Memory limit: the cgroup's, or the address space's where there is no cgroup.
    pub memory_bytes_max: u64,
    /// CPU limit, thousandths of a core (2000: two cores' time); 0: none. Only where the
    /// machine has a writable CPU cgroup (the exec driver) or through the container engine.
    pub cpu_millis_max: u64,
    /// Killed after this long.
    pub wall_limit: Duration,
    /// The network namespace (a name under /run/netns) the node runs in; none: the worker's.
    /// The exec driver's only; a container has a network of its engine's making.
    pub network_namespace: Option<String>,
    /// Directories the node may read besides the system's: (on the host, in the sandbox).
    /// Never under the work directory's mount.
    pub read_only_binds: Vec<(PathBuf, PathBuf)>,
}

/// Why a command could not run (not why it failed: that is its exit status).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("cannot start the sandbox ({program}): {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("cannot make the run's cgroup: {0}")]
    Cgroup(std::io::Error),
    #[error("sandbox io: {0}")]
    Io(#[from] std::io::Error),
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code; none when killed by a signal.
    pub code: Option<i32>,
    /// Killed for running past its wall-clock limit.
    pub timed_out: bool,
    /// The kernel killed a process of it for going over its memory limit.
    pub out_of_memory: bool,
    /// The last [`LOG_TAIL_BYTES_MAX`] bytes of stdout and stderr.
    pub log_tail: Vec<u8>,
}

/// A piece of a node's output, as read from its pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: LogStream,
    /// At most [`CHUNK_BYTES_MAX`] bytes, not necessarily valid UTF-8 nor whole lines.
    pub bytes: Vec<u8>,
}

/// Why a started node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// By itself (its code says how).
    Exited,
    /// Killed at its wall-clock limit.
    TimedOut,
    /// Killed because it was asked to stop.
    Stopped,
    /// It failed after the kernel killed a process of it for going over its memory limit.
    OutOfMemory,
}

/// How a started node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The exit code of `bwrap` (the command's, or 128 + the signal that killed it); none when
    /// `bwrap` itself was killed (stopped, timed out).
    pub code: Option<i32>,
    pub ending: Ending,
}

impl SandboxSpec {
    /// Refuses what cannot be passed to `bwrap` safely.
    pub fn check(&self) -> Result<(), SandboxError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(SandboxError::Invalid("a command needs a program"));
        }
        if self.argv.len() + self.env.len() > ARGS_MAX {
            return Err(SandboxError::Invalid("too many arguments or variables"));
        }
        let bad_name = |name: &str| {
            name.is_empty()
                || name.contains('=')
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if self.env.iter().any(|(name, _)| bad_name(name)) {
            return Err(SandboxError::Invalid(
                "variable names are letters, digits and _",
            ));
        }
        let nul = |text: &String| text.contains('\0');
        if self.argv.iter().any(nul) || self.env.iter().any(|(_, value)| nul(value)) {
            return Err(SandboxError::Invalid("no NUL bytes in a command"));
        }
        if !self.work_dir.is_absolute() {
            return Err(SandboxError::Invalid("the work directory must be absolute"));
        }
        Ok(())
    }
}

/// The `bwrap` arguments for a spec: what the sandbox lets through, and nothing else.
/// The NVIDIA device nodes a node with these GPUs needs: the driver's shared control nodes and
/// `/dev/nvidiaN` of each of its GPUs (the device minor, which the driver numbers as NVML
/// indexes the GPUs), nothing for a node without GPUs.
pub fn gpu_device_paths(gpu_indices: &[u32]) -> Vec<String> {
    if gpu_indices.is_empty() {
        return Vec::new();
    }
    let shared = [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
    ];
    shared
        .iter()
        .map(|p| (*p).to_owned())
        .chain(gpu_indices.iter().map(|i| format!("/dev/nvidia{i}")))
        .collect()
}

pub fn bwrap_args(spec: &SandboxSpec, exists: impl Fn(&Path) -> bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "node",
    ]);
    for dir in SYSTEM_DIRS.iter().chain(ETC_FILES) {
        if exists(Path::new(dir)) {
            push(&["--ro-bind", dir, dir]);
        }
    }
    push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    for (host, inside) in &spec.read_only_binds {
        args.extend([
            "--ro-bind".into(),
            host.clone().into(),
            inside.clone().into(),
        ]);
    }
    // A private /dev holds no GPU: the driver's control nodes and the node's own GPUs come in.
    for path in gpu_device_paths(&spec.gpu_indices) {
        if exists(Path::new(&path)) {
            args.extend(["--dev-bind".into(), path.clone().into(), path.into()]);
        }
    }
    args.push("--bind".into());
    args.push(spec.work_dir.clone().into_os_string());
    args.push(WORK_MOUNT.into());
    let uid = SANDBOX_UID.to_string();
    let gid = SANDBOX_GID.to_string();
    args.extend(
        [
            "--chdir",
            WORK_MOUNT,
            "--uid",
            &uid,
            "--gid",
            &gid,
            "--clearenv",
        ]
        .iter()
        .map(OsString::from),
    );
    let gpus = spec
        .gpu_indices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // Defaults the node may change, its own environment, then what it may not: a later
    // --setenv wins, and the GPUs it sees are the worker's choice alone.
    let defaults = [
        ("HOME", WORK_MOUNT),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ];
    let nvidia = if gpus.is_empty() {
        "void"
    } else {
        gpus.as_str()
    };
    let imposed = [
        ("CUDA_VISIBLE_DEVICES", gpus.as_str()),
        ("NVIDIA_VISIBLE_DEVICES", nvidia),
    ];
    for (name, value) in defaults
        .into_iter()
        .chain(spec.env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .chain(imposed)
    {
        args.extend(["--setenv", name, value].iter().map(OsString::from));
    }
    args.push("--".into());
    args.extend(spec.argv.iter().map(OsString::from));
    args
}

/// How nodes are confined on this machine: found once, used for every run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    cgroups: Option<Cgroups>,
}

impl Sandbox {
    /// Uses a writable memory cgroup hierarchy where there is one, and the CPU controller
    /// beside it; says so when there is not.
    pub fn detect() -> Sandbox {
        match Cgroups::detect() {
            Ok(cgroups) => {
                tracing::info!(version = ?cgroups.version(), "node memory limits through cgroups");
                match cgroups.cpu_limits() {
                    Ok(()) => tracing::info!("node CPU limits through cgroups"),
                    Err(reason) => {
                        tracing::warn!(%reason, "no writable cpu cgroup: nodes run without a CPU limit");
                    }
                }
                Sandbox {
                    cgroups: Some(cgroups),
                }
            }
            Err(reason) => {
                tracing::warn!(%reason, "no writable memory cgroup: nodes get an address-space limit only, which GPU programs cannot live with, and no CPU limit");
                Sandbox::without_cgroups()
            }
        }
    }

    /// Address-space limits only.
    pub fn without_cgroups() -> Sandbox {
        Sandbox { cgroups: None }
    }

    /// The cgroup interface runs are limited through; none means the address-space fallback.
    pub fn cgroup_version(&self) -> Option<Version> {
        self.cgroups.as_ref().map(Cgroups::version)
    }

    /// Whether nodes get their CPU limit (a cgroup's).
    pub fn limits_cpu(&self) -> bool {
        self.cgroups
            .as_ref()
            .is_some_and(|cgroups| cgroups.cpu_limits().is_ok())
    }

    /// Removes run cgroups a previous worker left behind.
    pub fn sweep_leftovers(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.sweep_leftovers();
        }
    }

    /// Starts the spec; `name` (a path component, unique among live runs) names its cgroup. Its
    /// output goes to `output` as it comes; a full channel holds the node back, a closed one
    /// discards the rest. Needs a Tokio runtime.
    pub fn start(
        &self,
        name: &str,
        spec: &SandboxSpec,
        output: mpsc::Sender<Chunk>,
    ) -> Result<Running, SandboxError> {
        spec.check()?;
        let cgroup = match &self.cgroups {
            Some(cgroups) => Some(
                cgroups
                    .create(name, spec.memory_bytes_max, spec.cpu_millis_max)
                    .map_err(SandboxError::Cgroup)?,
            ),
            None => None,
        };
        let deadline = tokio::time::Instant::now()
            .checked_add(spec.wall_limit)
            .unwrap_or_else(far_future);
        let mut child = match command(spec, cgroup.as_ref()).spawn() {
            Ok(child) => child,
            Err(source) => {
                if let Some(cgroup) = cgroup {
                    tokio::spawn(cgroup.remove());
                }
                return Err(SandboxError::Spawn {
                    program: "sh/prlimit/bwrap",
                    source,
                });
            }
        };
        let mut readers = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(forward(
                stdout,
                LogStream::Stdout,
                output.clone(),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(forward(stderr, LogStream::Stderr, output)));
        }
        Ok(Running {
            child,
            cgroup,
            readers,
            deadline,
        })
    }
}

/// A started node. Dropping it kills the node (but leaves its cgroup: use [`Running::wait`]).
#[derive(Debug)]
pub struct Running {
    child: tokio::process::Child,
    cgroup: Option<RunCgroup>,
    readers: Vec<JoinHandle<()>>,
    deadline: tokio::time::Instant,
}

impl Running {
    /// Waits for the node's end: by itself, at its wall-clock limit, or when `stop` resolves
    /// (then it is killed). Returns once every process is gone, the output is all handed over
    /// and the cgroup is removed.
    pub async fn wait(mut self, stop: impl Future<Output = ()>) -> Result<Ended, SandboxError> {
        let (status, ending) = tokio::select! {
            status = self.child.wait() => (status, Ending::Exited),
            () = tokio::time::sleep_until(self.deadline) => (self.kill().await, Ending::TimedOut),
            () = stop => (self.kill().await, Ending::Stopped),
        };
        self.drain_readers().await;
        let out_of_memory = match self.cgroup.take() {
            Some(cgroup) => {
                let killed = cgroup.oom_killed();
                cgroup.remove().await;
                killed
            }
            None => false,
        };
        let status = status?;
        let ending = match ending {
            Ending::Exited if out_of_memory && !status.success() => Ending::OutOfMemory,
            other => other,
        };
        Ok(Ended {
            code: status.code(),
            ending,
        })
    }

    /// Kills the node (bwrap, and so its namespace; and its cgroup) and reaps it.
    async fn kill(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let _ = self.child.start_kill();
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        self.child.wait().await
    }

    /// Lets the readers hand over what the pipes still hold; gives up on a pipe some stray
    /// process keeps open.
    async fn drain_readers(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(READERS_DRAIN_MS_MAX);
        for reader in &mut self.readers {
            if tokio::time::timeout_at(deadline, &mut *reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        }
    }
}

/// Whether this process is root (it owns its own /proc entry).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn far_future() -> tokio::time::Instant {
    // About 30 years: what Tokio itself uses for "never".
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// The process to spawn: `bwrap` inside the run's cgroups, or under an address-space limit,
/// and as `nobody` on the host too when the worker is root.
fn command(spec: &SandboxSpec, cgroup: Option<&RunCgroup>) -> tokio::process::Command {
    let mut command = match cgroup {
        Some(cgroup) => {
            let mut command = tokio::process::Command::new("sh");
            command
                .arg("-c")
                .arg(JOIN_CGROUPS_SCRIPT)
                .arg(JOIN_CGROUPS_NAME)
                .args(cgroup.procs_files())
                .arg("--");
            command
        }
        None => {
            let mut command = tokio::process::Command::new("prlimit");
            command
                .arg(format!("--as={}", spec.memory_bytes_max))
                .arg("--");
            command
        }
    };
    if let Some(namespace) = &spec.network_namespace {
        command.args(["ip", "netns", "exec", namespace]);
    }
    if running_as_root() {
        // bwrap maps the node's user to whoever runs it: run by root, the node would own
        // every root file it can see (a 0600 key under a read-only /etc, say) and leave
        // root-owned, possibly setuid, files in its work dir.
        let (uid, gid) = (SANDBOX_UID.to_string(), SANDBOX_GID.to_string());
        command.args([
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--clear-groups",
            "--",
        ]);
    }
    command
        .arg("bwrap")
        .args(bwrap_args(spec, Path::exists))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Hands what `stream` says to `output` in chunks; once nobody listens, reads on and discards
/// so the node never blocks on a full pipe.
async fn forward(
    mut stream: impl AsyncRead + Unpin,
    which: LogStream,
    output: mpsc::Sender<Chunk>,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
    let mut listening = true;
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        if listening {
            let chunk = Chunk {
                stream: which,
                bytes: buffer[..read].to_vec(),
            };
            listening = output.send(chunk).await.is_ok();
        }
    }
}

/// Runs the spec to its end (or its wall-clock limit) and returns how it ended.
pub async fn run(spec: &SandboxSpec) -> Result<Exit, SandboxError> {
    let (output, mut chunks) = mpsc::channel(RUN_CHUNKS_QUEUED_MAX);
    let running = Sandbox::detect().start(&unique_name(), spec, output)?;
    let keep_tail = async {
        let mut tail = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            tail.extend_from_slice(&chunk.bytes);
            let excess = tail.len().saturating_sub(LOG_TAIL_BYTES_MAX);
            tail.drain(..excess);
        }
        tail
    };
    let (ended, log_tail) = tokio::join!(running.wait(std::future::pending()), keep_tail);
    let ended = ended?;
    Ok(Exit {
        code: ended.code,
        timed_out: ended.ending == Ending::TimedOut,
        out_of_memory: ended.ending == Ending::OutOfMemory,
        log_tail,
    })
}

/// A fresh cgroup name for a run that has no id of its own.
fn unique_name() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system has a random source");
    format!("sandbox-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], work_dir: &Path) -> SandboxSpec {
        SandboxSpec {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![("FLOTILLA_NODE_RANK".into(), "1".into())],
            work_dir: work_dir.to_owned(),
            gpu_indices: vec![2, 3],
            memory_bytes_max: 1 << 30,
            cpu_millis_max: 0,
            wall_limit: Duration::from_secs(20),
            network_namespace: None,
            read_only_binds: vec![],
        }
    }

    #[test]
    fn the_policy_binds_only_system_dirs_and_the_work_dir() {
        let args = bwrap_args(&spec(&["true"], Path::new("/srv/n1")), |_| true);
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = text.join(" ");
        assert!(joined.contains("--ro-bind /usr /usr"));
        assert!(joined.contains("--bind /srv/n1 /work"));
        assert!(joined.contains("--clearenv"));
        assert!(joined.contains("--setenv CUDA_VISIBLE_DEVICES 2,3"));
        assert!(joined.contains("--setenv FLOTILLA_NODE_RANK 1"));
        assert!(joined.ends_with("-- true"));
        // Nothing writable but the work dir and a private /tmp; no home, root or /var.
        let writable: Vec<&String> = text
            .windows(2)
            .filter(|w| w[0] == "--bind")
            .map(|w| &w[1])
            .collect();
        assert_eq!(writable, vec!["/srv/n1"]);
        assert!(
            !text
                .iter()
                .any(|a| a == "/root" || a == "/var" || a == "/home")
        );
    }

    #[test]
    fn a_node_sees_its_own_gpus_and_the_driver_nodes_only() {
        // The test spec holds GPUs 2 and 3; every path "exists".
        let args = bwrap_args(&spec(&["true"], Path::new("/srv/n1")), |_| true);
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let bound: Vec<&String> = text
            .windows(2)
            .filter(|w| w[0] == "--dev-bind")
            .map(|w| &w[1])
            .collect();
        assert_eq!(
            bound,
            vec![
                "/dev/nvidiactl",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia-modeset",
                "/dev/nvidia2",
                "/dev/nvidia3"
            ]
        );
        let mut cpu_only = spec(&["true"], Path::new("/srv/n1"));
        cpu_only.gpu_indices.clear();
        let args = bwrap_args(&cpu_only, |_| true);
        assert!(!args.iter().any(|a| a == "--dev-bind"));
        // Paths the machine lacks are not bound.
        let args = bwrap_args(&spec(&["true"], Path::new("/srv/n1")), |p| {
            p != Path::new("/dev/nvidia-modeset")
        });
        assert!(!args.iter().any(|a| a == "/dev/nvidia-modeset"));
    }

    #[test]
    fn malformed_specs_are_refused() {
        let dir = Path::new("/w");
        let mut bad = spec(&[], dir);
        assert!(bad.check().is_err());
        bad = spec(&["true"], Path::new("relative"));
        assert!(bad.check().is_err());
        bad = spec(&["true"], dir);
        bad.env.push(("A=B".into(), "x".into()));
        assert!(bad.check().is_err());
        bad = spec(&["tr\0ue"], dir);
        assert!(bad.check().is_err());
    }

    /// Runs for real where bubblewrap is installed (the test command installs it).
    #[tokio::test]
    async fn a_command_sees_its_work_dir_and_nothing_of_the_host() {
        if std::process::Command::new("bwrap")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("FLOTILLA_REQUIRE_SANDBOX").as_deref() != Ok("1"),
                "FLOTILLA_REQUIRE_SANDBOX=1 but bwrap is missing"
            );
            eprintln!("bwrap is not installed: the sandbox test did not run");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        // Outside /tmp (which is private in the sandbox anyway), where a worker keeps data.
        let secret_dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(secret_dir.path().join("worker.key"), "secret").unwrap();
        // The work dir belongs to the sandbox user, as the driver would make it.
        std::process::Command::new("chmod")
            .arg("0777")
            .arg(work.path())
            .status()
            .unwrap();
        let script = format!(
            "echo rank=$FLOTILLA_NODE_RANK gpus=$CUDA_VISIBLE_DEVICES uid=$(id -u); \
             echo hi > /work/out && echo wrote; \
             touch /usr/x 2>/dev/null || echo usr-read-only; \
             cat {}/worker.key 2>/dev/null || echo no-key; \
             test -z \"$HOSTNAME_LEAK\" && echo clean-env; exit 3",
            secret_dir.path().display()
        );
        let mut node = spec(&["sh", "-c", &script], work.path());
        node.env.push(("HOSTNAME_LEAK".into(), String::new()));
        let exit = run(&node).await.unwrap();
        let log = String::from_utf8_lossy(&exit.log_tail);
        assert_eq!(exit.code, Some(3), "{log}");
        for expected in [
            "rank=1 gpus=2,3 uid=65534",
            "wrote",
            "usr-read-only",
            "no-key",
            "clean-env",
        ] {
            assert!(log.contains(expected), "{expected} missing from {log}");
        }
        assert_eq!(
            std::fs::read_to_string(work.path().join("out")).unwrap(),
            "hi\n"
        );

        let mut sleepy = spec(&["sleep", "30"], work.path());
        sleepy.wall_limit = Duration::from_millis(300);
        let exit = run(&sleepy).await.unwrap();
        assert!(exit.timed_out && exit.code.is_none());
    }
}
