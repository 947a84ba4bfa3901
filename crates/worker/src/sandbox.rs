//! The exec driver's sandbox: a renter's command runs under bubblewrap as an unprivileged user,
//! with a private view of the filesystem (the system read-only, one writable work directory,
//! nothing of the worker's own data or key), its own PID, IPC and UTS namespaces, a clean
//! environment holding only what the node is given, an address-space limit, and a wall-clock
//! limit. Output is kept in a bounded tail.
//!
//! `bwrap_args` is pure so the policy is testable without running anything; `run` needs
//! `bwrap` (Debian package `bubblewrap`) and `prlimit` (util-linux) on the machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The user and group a node runs as: `nobody`.
pub const SANDBOX_UID: u32 = 65_534;
pub const SANDBOX_GID: u32 = 65_534;
/// Where the work directory appears inside the sandbox.
pub const WORK_MOUNT: &str = "/work";
/// Bytes of a node's output (stdout and stderr together) kept, the most recent.
pub const LOG_TAIL_BYTES_MAX: usize = 1 << 20;
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
    /// Address-space limit.
    pub memory_bytes_max: u64,
    /// Killed after this long.
    pub wall_limit: Duration,
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
    /// The last [`LOG_TAIL_BYTES_MAX`] bytes of stdout and stderr.
    pub log_tail: Vec<u8>,
}

impl SandboxSpec {
    fn check(&self) -> Result<(), SandboxError> {
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
    let fixed = [
        ("HOME", WORK_MOUNT.to_owned()),
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("CUDA_VISIBLE_DEVICES", gpus.clone()),
        (
            "NVIDIA_VISIBLE_DEVICES",
            if gpus.is_empty() { "void".into() } else { gpus },
        ),
    ];
    for (name, value) in fixed
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(spec.env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        args.extend(["--setenv", name, value].iter().map(OsString::from));
    }
    args.push("--".into());
    args.extend(spec.argv.iter().map(OsString::from));
    args
}

/// Runs the spec to its end (or its wall-clock limit) and returns how it ended.
pub async fn run(spec: &SandboxSpec) -> Result<Exit, SandboxError> {
    spec.check()?;
    let mut command = tokio::process::Command::new("prlimit");
    command
        .arg(format!("--as={}", spec.memory_bytes_max))
        .arg("--")
        .arg("bwrap")
        .args(bwrap_args(spec, Path::exists))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
        program: "prlimit/bwrap",
        source,
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let readers = [
        tokio::spawn(keep_tail(stdout, tail.clone())),
        tokio::spawn(keep_tail(stderr, tail.clone())),
    ];
    let (status, timed_out) = match tokio::time::timeout(spec.wall_limit, child.wait()).await {
        Ok(status) => (Some(status?), false),
        Err(_) => {
            child.kill().await?;
            (None, true)
        }
    };
    for reader in readers {
        let _ = reader.await;
    }
    let log_tail = std::mem::take(&mut *tail.lock().expect("the tail lock is never poisoned"));
    Ok(Exit {
        code: status.and_then(|s| s.code()),
        timed_out,
        log_tail,
    })
}

/// Appends what `stream` says to `tail`, keeping the last [`LOG_TAIL_BYTES_MAX`] bytes.
async fn keep_tail(
    mut stream: impl AsyncRead + Unpin,
    tail: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut buffer = [0u8; 8192];
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        let mut tail = tail.lock().expect("the tail lock is never poisoned");
        tail.extend_from_slice(&buffer[..read]);
        let excess = tail.len().saturating_sub(LOG_TAIL_BYTES_MAX);
        tail.drain(..excess);
    }
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
            wall_limit: Duration::from_secs(20),
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
