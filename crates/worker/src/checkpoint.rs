//! Checkpoints: a node's checkpoint directory, kept across its rank's restarts and
//! replacements by the coordinator. Before a node whose order has a [`CheckpointOrder`]
//! starts, the newest archive of its rank is fetched (`GET /api/v1/runs/{run_id}/checkpoint`)
//! and unpacked into its work directory; while it runs, every `interval_ms`, and once more when
//! it ends, its directory is packed and stored (`PUT` there), so the coordinator holds the final
//! state before the end is reported.
//!
//! Invariants:
//! - Nothing an order or an archive names reaches outside the work directory: the path is
//!   checked again here, an archive with a member that is absolute, holds `..` or lies outside
//!   the path is refused whole, a path through a symlink is not packed, and `tar` runs as the
//!   sandbox user when the worker is root (so a node's symlinks cannot make the worker read or
//!   write what the node could not). `tar` never follows symlinks (no `-h`).
//! - Bounded: an archive is held in memory up to `bytes_max` (and [`ARCHIVE_BYTES_CAP`]), is
//!   unpacked only when it expands to at most [`UNPACKED_PER_PACKED_MAX`] times that, and each
//!   restore and upload ends within its deadline.
//! - A failure is logged and skipped: the node starts from what is there, runs and ends as if
//!   it had no checkpoint. After a 409 (the run is no longer live) nothing more is uploaded.
//!
//! Needs `tar` and `gzip` (GNU), and `setpriv` when root (util-linux).

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flotilla_proto::secret::Secret;
use flotilla_proto::wire::CheckpointOrder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::sandbox::{SANDBOX_GID, SANDBOX_UID, running_as_root};

/// Bytes of an archive held in memory at most, whatever an order says.
pub const ARCHIVE_BYTES_CAP: u64 = 256 * 1024 * 1024;
/// An archive unpacks to at most this many times its `bytes_max`, or it is refused (a
/// compressed bomb would fill the worker's disk).
pub const UNPACKED_PER_PACKED_MAX: u64 = 64;
/// How long a restore may hold a node's start.
pub const RESTORE_MS_MAX: u64 = 30_000;
/// How long one upload (packing and sending) may take; the final one holds the exit report.
pub const UPLOAD_MS_MAX: u64 = 30_000;
/// Uploads come at most this often, whatever an order says.
pub const INTERVAL_MS_MIN: u64 = 100;
/// Characters of a checkpoint path at most.
pub const PATH_CHARS_MAX: usize = 256;
/// How long connecting to the coordinator may take.
const CONNECT_MS_MAX: u64 = 10_000;
/// Bytes of a tool's stderr kept for the log.
const TOOL_ERRORS_BYTES_MAX: usize = 2_048;
/// Bytes read from a tool's stdout at once.
const READ_BYTES: usize = 64 * 1024;
/// Bytes of one line of an archive's listing at most (a member name, escaped).
const LISTING_LINE_BYTES_MAX: usize = 16 * 1024;
/// The header carrying a run's checkpoint token.
pub const RUN_TOKEN_HEADER: &str = "X-Run-Token";

/// Why a restore or an upload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint path {path:?} {problem}")]
    Path { path: String, problem: &'static str },
    #[error("checkpoint order: {0}")]
    Order(&'static str),
    #[error("cannot reach the coordinator for a checkpoint: {0}")]
    Transport(String),
    #[error("the coordinator answered {status} for a checkpoint")]
    Status { status: u16 },
    #[error("the archive is over its {bytes_max} byte limit")]
    TooLarge { bytes_max: u64 },
    #[error("the archive unpacks to over {bytes_max} bytes")]
    UnpacksTooLarge { bytes_max: u64 },
    #[error("the archive has a member outside the checkpoint directory: {member:?}")]
    Member { member: String },
    #[error("{program} failed ({code:?}): {errors}")]
    Tool {
        program: &'static str,
        code: Option<i32>,
        errors: String,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("checkpoint io: {0}")]
    Io(#[from] std::io::Error),
}

/// The coordinator's checkpoint store, shared by every run of this worker.
#[derive(Debug)]
pub struct CheckpointStore {
    http: reqwest::Client,
    base_url: String,
}

/// What the coordinator did with an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Kept,
    /// 409: the run is no longer live; its checkpoints are not wanted any more.
    RunEnded,
}

impl CheckpointStore {
    /// The store of the coordinator at `coordinator_url` (e.g. `http://127.0.0.1:7700`).
    /// `extra_roots`: CA certificates trusted beside the platform's.
    pub fn new(
        coordinator_url: &str,
        extra_roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<CheckpointStore, CheckpointError> {
        // No overall timeout here: each restore and upload has its own deadline.
        let http = flotilla_client::tls::http_builder(extra_roots)
            .map_err(|e| CheckpointError::Transport(e.to_string()))?
            .connect_timeout(Duration::from_millis(CONNECT_MS_MAX))
            .build()
            .map_err(|e| CheckpointError::Transport(e.to_string()))?;
        Ok(CheckpointStore {
            http,
            base_url: coordinator_url.trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, run_id: &str) -> String {
        format!("{}/api/v1/runs/{run_id}/checkpoint", self.base_url)
    }

    /// The newest archive of this run's rank, read up to `bytes_max`; none when there is none.
    async fn newest(
        &self,
        run_id: &str,
        token: &Secret,
        bytes_max: u64,
    ) -> Result<Option<Vec<u8>>, CheckpointError> {
        let transport = |e: reqwest::Error| CheckpointError::Transport(e.to_string());
        let mut response = self
            .http
            .get(self.url(run_id))
            .header(RUN_TOKEN_HEADER, token.expose())
            .send()
            .await
            .map_err(transport)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(CheckpointError::Status { status }),
        }
        if response.content_length().is_some_and(|n| n > bytes_max) {
            return Err(CheckpointError::TooLarge { bytes_max });
        }
        let mut archive = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            push_bounded(&mut archive, &chunk, bytes_max)?;
        }
        Ok(Some(archive))
    }

    async fn store(
        &self,
        run_id: &str,
        token: &Secret,
        archive: Vec<u8>,
    ) -> Result<Stored, CheckpointError> {
        let response = self
            .http
            .put(self.url(run_id))
            .header(RUN_TOKEN_HEADER, token.expose())
            .body(archive)
            .send()
            .await
            .map_err(|e| CheckpointError::Transport(e.to_string()))?;
        match response.status().as_u16() {
            200..=299 => Ok(Stored::Kept),
            409 => Ok(Stored::RunEnded),
            status => Err(CheckpointError::Status { status }),
        }
    }
}

/// Appends `bytes` unless that makes `buffer` longer than `bytes_max`.
fn push_bounded(buffer: &mut Vec<u8>, bytes: &[u8], bytes_max: u64) -> Result<(), CheckpointError> {
    if (buffer.len() + bytes.len()) as u64 > bytes_max {
        return Err(CheckpointError::TooLarge { bytes_max });
    }
    buffer.extend_from_slice(bytes);
    Ok(())
}

/// One run's checkpoint directory and where it goes.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    store: Arc<CheckpointStore>,
    run_id: String,
    work_dir: PathBuf,
    /// Relative to `work_dir`, normalized: `a/b`, without `.`, `..` or empty components.
    path: String,
    token: Secret,
    interval: Duration,
    bytes_max: u64,
    /// Cleared when the coordinator says the run is no longer live.
    run_live: AtomicBool,
}

impl Checkpoint {
    /// The checkpoint of run `run_id`, whose work directory is `work_dir`, as ordered.
    pub(crate) fn new(
        store: Arc<CheckpointStore>,
        run_id: &str,
        work_dir: &Path,
        order: &CheckpointOrder,
    ) -> Result<Checkpoint, CheckpointError> {
        if order.bytes_max == 0 {
            return Err(CheckpointError::Order("the archive limit is zero"));
        }
        Ok(Checkpoint {
            store,
            run_id: run_id.to_owned(),
            work_dir: work_dir.to_owned(),
            path: checked_path(&order.path)?,
            token: Secret::new(order.token.clone()),
            interval: Duration::from_millis(order.interval_ms.max(INTERVAL_MS_MIN)),
            bytes_max: order.bytes_max.min(ARCHIVE_BYTES_CAP),
            run_live: AtomicBool::new(true),
        })
    }

    /// Restores the newest archive into the work directory, or leaves the checkpoint directory
    /// empty; either way the directory exists (unless even that fails, which is logged).
    pub(crate) async fn restore(&self) {
        let deadline = Duration::from_millis(RESTORE_MS_MAX);
        match tokio::time::timeout(deadline, self.restore_within()).await {
            Ok(Ok(Some(bytes))) => {
                tracing::info!(run_id = %self.run_id, bytes, "checkpoint restored");
            }
            Ok(Ok(None)) => tracing::info!(run_id = %self.run_id, "no checkpoint yet: fresh start"),
            Ok(Err(error)) => {
                tracing::warn!(run_id = %self.run_id, %error, "checkpoint not restored");
            }
            Err(_) => {
                tracing::warn!(run_id = %self.run_id, ms = RESTORE_MS_MAX, "checkpoint restore timed out")
            }
        }
        if let Err(error) = make_dirs(&self.work_dir, &self.path) {
            tracing::warn!(run_id = %self.run_id, %error, "cannot make the checkpoint directory");
        }
    }

    /// Bytes of the archive restored; none when there was none.
    async fn restore_within(&self) -> Result<Option<usize>, CheckpointError> {
        let newest = self
            .store
            .newest(&self.run_id, &self.token, self.bytes_max)
            .await?;
        let Some(archive) = newest else {
            return Ok(None);
        };
        let unpacked_bytes_max = self.bytes_max.saturating_mul(UNPACKED_PER_PACKED_MAX);
        check_unpacked_size(&archive, unpacked_bytes_max).await?;
        check_members(&archive, &self.path).await?;
        extract(&archive, &self.work_dir).await?;
        Ok(Some(archive.len()))
    }

    /// Whether uploads are still wanted.
    pub(crate) fn run_live(&self) -> bool {
        self.run_live.load(Ordering::Relaxed)
    }

    /// Packs the checkpoint directory and stores it; a failure is logged and skipped.
    pub(crate) async fn upload(&self) {
        if !self.run_live() {
            return;
        }
        let deadline = Duration::from_millis(UPLOAD_MS_MAX);
        match tokio::time::timeout(deadline, self.upload_within()).await {
            Ok(Ok((Stored::Kept, bytes))) => {
                tracing::debug!(run_id = %self.run_id, bytes, "checkpoint uploaded");
            }
            Ok(Ok((Stored::RunEnded, _))) => {
                tracing::info!(run_id = %self.run_id, "the run is no longer live: no more checkpoint uploads");
                self.run_live.store(false, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::warn!(run_id = %self.run_id, %error, "checkpoint upload skipped");
            }
            Err(_) => {
                tracing::warn!(run_id = %self.run_id, ms = UPLOAD_MS_MAX, "checkpoint upload timed out")
            }
        }
    }

    async fn upload_within(&self) -> Result<(Stored, usize), CheckpointError> {
        check_no_symlinks(&self.work_dir, &self.path)?;
        let archive = pack(&self.work_dir, &self.path, self.bytes_max).await?;
        let bytes = archive.len();
        let stored = self.store.store(&self.run_id, &self.token, archive).await?;
        Ok((stored, bytes))
    }
}

/// The periodic uploads of one run. Dropping it stops them (an upload under way is cut off).
#[derive(Debug)]
pub(crate) struct Uploads {
    task: JoinHandle<()>,
}

impl Uploads {
    /// Uploads every interval, from one interval after now, until stopped or the run ends.
    pub(crate) fn start(checkpoint: Arc<Checkpoint>) -> Uploads {
        let task = tokio::spawn(async move {
            let first = tokio::time::Instant::now() + checkpoint.interval;
            let mut ticks = tokio::time::interval_at(first, checkpoint.interval);
            // A slow upload delays the next rather than causing a burst.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while checkpoint.run_live() {
                ticks.tick().await;
                checkpoint.upload().await;
            }
        });
        Uploads { task }
    }

    /// Stops the uploads and waits until none is under way.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The checkpoint path, normalized, if it stays inside the work directory: letters, digits,
/// `-_./`, relative, no `..`, not the work directory itself.
pub(crate) fn checked_path(path: &str) -> Result<String, CheckpointError> {
    let refuse = |problem| CheckpointError::Path {
        path: path.chars().take(PATH_CHARS_MAX).collect(),
        problem,
    };
    if path.len() > PATH_CHARS_MAX {
        return Err(refuse("is too long"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
    if !path.chars().all(allowed) {
        return Err(refuse("may hold only letters, digits and -_./"));
    }
    if path.starts_with('/') {
        return Err(refuse("must be relative to the work directory"));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("must stay inside the work directory"));
            }
        }
    }
    if parts.is_empty() {
        return Err(refuse("names no directory"));
    }
    Ok(parts.join("/"))
}

/// Whether an archive member (as `tar -t` lists it) lies inside the checkpoint `path`.
fn member_inside(member: &str, path: &str) -> bool {
    let relative = !member.starts_with('/');
    let no_parent = member.split('/').all(|part| part != "..");
    let under = member
        .strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    relative && no_parent && under
}

/// Makes `<work_dir>/<path>` and the directories above it inside the work directory, owned by
/// the sandbox user when root (the node must write there). Called before the node starts, so
/// nothing of the node's is in the way; an existing entry is left as it is.
fn make_dirs(work_dir: &Path, path: &str) -> std::io::Result<()> {
    let mut dir = work_dir.to_owned();
    for part in path.split('/') {
        dir.push(part);
        if std::fs::symlink_metadata(&dir).is_ok() {
            continue;
        }
        std::fs::create_dir(&dir)?;
        if running_as_root() {
            std::os::unix::fs::chown(&dir, Some(SANDBOX_UID), Some(SANDBOX_GID))?;
        }
    }
    Ok(())
}

/// Refuses a checkpoint path that passes through (or is) a symlink: the node may have made
/// one to lead the packing elsewhere. (A swap after this check is met by packing as the
/// sandbox user when root.)
fn check_no_symlinks(work_dir: &Path, path: &str) -> Result<(), CheckpointError> {
    let mut dir = work_dir.to_owned();
    for part in path.split('/') {
        dir.push(part);
        let meta = std::fs::symlink_metadata(&dir)?;
        if meta.file_type().is_symlink() {
            return Err(CheckpointError::Path {
                path: path.to_owned(),
                problem: "passes through a symlink",
            });
        }
    }
    Ok(())
}

/// `tar -czf - -C <work_dir> -- <path>`, as the sandbox user when root, into memory.
async fn pack(work_dir: &Path, path: &str, bytes_max: u64) -> Result<Vec<u8>, CheckpointError> {
    let mut command = tool("tar", true);
    command
        .args(["--create", "--gzip", "--file", "-", "--directory"])
        .arg(work_dir)
        .args(["--", path]);
    let mut archive = Vec::new();
    let end = run_tool("tar", command, None, |bytes| {
        push_bounded(&mut archive, bytes, bytes_max)
    })
    .await?;
    // 1: a file changed while it was read (the node is running); the archive is whole.
    end.require("tar", &[0, 1])?;
    Ok(archive)
}

/// Refuses an archive that unpacks to more than `bytes_max` (stops reading there).
async fn check_unpacked_size(archive: &[u8], bytes_max: u64) -> Result<(), CheckpointError> {
    let mut command = tool("gzip", false);
    command.args(["--decompress", "--stdout"]);
    let mut unpacked_bytes: u64 = 0;
    let end = run_tool("gzip", command, Some(archive), |bytes| {
        unpacked_bytes += bytes.len() as u64;
        if unpacked_bytes > bytes_max {
            return Err(CheckpointError::UnpacksTooLarge { bytes_max });
        }
        Ok(())
    })
    .await?;
    end.require("gzip", &[0])
}

/// Refuses an archive with a member outside the checkpoint `path`.
async fn check_members(archive: &[u8], path: &str) -> Result<(), CheckpointError> {
    let mut command = tool("tar", false);
    command.args(["--list", "--gzip", "--file", "-", "--quoting-style=escape"]);
    let mut line = Vec::new();
    let check_line = |line: &mut Vec<u8>| {
        let member = String::from_utf8_lossy(line).into_owned();
        line.clear();
        if member_inside(&member, path) {
            Ok(())
        } else {
            Err(CheckpointError::Member { member })
        }
    };
    let end = run_tool("tar", command, Some(archive), |bytes| {
        for &byte in bytes {
            if byte == b'\n' {
                check_line(&mut line)?;
            } else {
                push_bounded(&mut line, &[byte], LISTING_LINE_BYTES_MAX as u64)?;
            }
        }
        Ok(())
    })
    .await?;
    end.require("tar", &[0])?;
    if !line.is_empty() {
        check_line(&mut line)?;
    }
    Ok(())
}

/// Unpacks a checked archive into the work directory, as the sandbox user when root, taking
/// neither owners nor permission bits from it.
async fn extract(archive: &[u8], work_dir: &Path) -> Result<(), CheckpointError> {
    let mut command = tool("tar", true);
    command
        .args(["--extract", "--gzip", "--file", "-", "--directory"])
        .arg(work_dir)
        .args([
            "--no-same-owner",
            "--no-same-permissions",
            "--no-overwrite-dir",
        ]);
    let end = run_tool("tar", command, Some(archive), |_| Ok(())).await?;
    end.require("tar", &[0])
}

/// A tool with a clean environment (no `TAR_OPTIONS` of the worker's), as the sandbox user
/// when asked and the worker is root. It dies with its future.
fn tool(program: &str, as_sandbox_user: bool) -> Command {
    let mut command = if as_sandbox_user && running_as_root() {
        let mut command = Command::new("setpriv");
        let (uid, gid) = (SANDBOX_UID.to_string(), SANDBOX_GID.to_string());
        command.args(["--reuid", &uid, "--regid", &gid, "--clear-groups", "--"]);
        command.arg(program);
        command
    } else {
        Command::new(program)
    };
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// How a tool ended.
struct ToolEnd {
    code: Option<i32>,
    /// The start of its stderr.
    errors: String,
}

impl ToolEnd {
    fn require(self, program: &'static str, codes_ok: &[i32]) -> Result<(), CheckpointError> {
        match self.code {
            Some(code) if codes_ok.contains(&code) => Ok(()),
            code => Err(CheckpointError::Tool {
                program,
                code,
                errors: self.errors,
            }),
        }
    }
}

/// Runs `command` with `input` on its stdin, handing its stdout to `sink` as it comes. An
/// error of the sink ends the run (the tool is killed) and is returned.
async fn run_tool(
    program: &'static str,
    mut command: Command,
    input: Option<&[u8]>,
    mut sink: impl FnMut(&[u8]) -> Result<(), CheckpointError>,
) -> Result<ToolEnd, CheckpointError> {
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .spawn()
        .map_err(|source| CheckpointError::Spawn { program, source })?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let errors = tokio::spawn(keep_start(stderr));
    let feed = async move {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A tool that stops reading (it failed, or the sink refused) shows in its status.
            let _ = stdin.write_all(input).await;
        }
        Ok(())
    };
    let read = async move {
        let Some(mut stdout) = stdout else {
            return Ok(());
        };
        let mut buffer = vec![0u8; READ_BYTES];
        loop {
            match stdout.read(&mut buffer).await? {
                0 => return Ok(()),
                read => sink(&buffer[..read])?,
            }
        }
    };
    if let Err(error) = tokio::try_join!(feed, read) {
        let _ = child.start_kill();
        errors.abort();
        return Err(error);
    }
    let status = child.wait().await?;
    Ok(ToolEnd {
        code: status.code(),
        errors: errors.await.unwrap_or_default(),
    })
}

/// Reads a stream to its end, keeping its first [`TOOL_ERRORS_BYTES_MAX`] bytes as text.
async fn keep_start(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 1024];
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        let room = TOOL_ERRORS_BYTES_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

#[cfg(test)]
pub(crate) mod tests;
