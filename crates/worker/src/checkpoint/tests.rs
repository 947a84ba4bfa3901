//! Checkpoint tests against an in-memory coordinator ([`FakeCoordinator`], also used by the
//! runner's tests): path and member checks, restores (safe and refused) and uploads. They need
//! GNU `tar` and `gzip` only, not the sandbox.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::*;

/// One PUT the fake coordinator answered.
#[derive(Debug, Clone)]
pub(crate) struct Put {
    pub run_id: String,
    pub status: u16,
    pub archive: Vec<u8>,
}

/// What the fake coordinator holds: the archives of one rank, whichever run sends them.
#[derive(Debug, Default)]
pub(crate) struct Held {
    tokens: HashMap<String, String>,
    ended: HashSet<String>,
    newest: Option<Vec<u8>>,
    puts: Vec<Put>,
    bytes_max: usize,
}

type Shared = Arc<Mutex<Held>>;

/// The two checkpoint endpoints of the coordinator, in memory, on 127.0.0.1.
pub(crate) struct FakeCoordinator {
    pub url: String,
    held: Shared,
    server: JoinHandle<()>,
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeCoordinator {
    pub(crate) async fn start() -> FakeCoordinator {
        let held: Shared = Arc::new(Mutex::new(Held {
            bytes_max: 1 << 20,
            ..Held::default()
        }));
        let route = "/api/v1/runs/{run_id}/checkpoint";
        let app = axum::Router::new()
            .route(route, axum::routing::get(fetch).put(keep))
            .with_state(held.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeCoordinator { url, held, server }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap()
    }

    /// A run of the rank, and the checkpoint order it gets.
    pub(crate) fn add_run(&self, run_id: &str, interval_ms: u64) -> CheckpointOrder {
        let token = format!("tok_{run_id}");
        self.held().tokens.insert(run_id.to_owned(), token.clone());
        CheckpointOrder {
            path: "ckpt".to_owned(),
            token,
            interval_ms,
            bytes_max: self.held().bytes_max as u64,
        }
    }

    /// The run is no longer live: its uploads get 409.
    pub(crate) fn end_run(&self, run_id: &str) {
        self.held().ended.insert(run_id.to_owned());
    }

    pub(crate) fn set_newest(&self, archive: Vec<u8>) {
        self.held().newest = Some(archive);
    }

    pub(crate) fn newest(&self) -> Option<Vec<u8>> {
        self.held().newest.clone()
    }

    /// The PUTs of `run_id`, oldest first.
    pub(crate) fn puts(&self, run_id: &str) -> Vec<Put> {
        let held = self.held();
        held.puts
            .iter()
            .filter(|put| put.run_id == run_id)
            .cloned()
            .collect()
    }
}

fn token_ok(held: &Held, run_id: &str, headers: &HeaderMap) -> bool {
    let sent = headers.get(RUN_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    sent.is_some() && held.tokens.get(run_id).map(String::as_str) == sent
}

async fn fetch(
    State(held): State<Shared>,
    UrlPath(run_id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let held = held.lock().unwrap();
    if !token_ok(&held, &run_id, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match &held.newest {
        Some(archive) => (StatusCode::OK, archive.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn keep(
    State(held): State<Shared>,
    UrlPath(run_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut held = held.lock().unwrap();
    let status = if !token_ok(&held, &run_id, &headers) {
        StatusCode::UNAUTHORIZED
    } else if held.ended.contains(&run_id) {
        StatusCode::CONFLICT
    } else if body.len() > held.bytes_max {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        held.newest = Some(body.to_vec());
        StatusCode::NO_CONTENT
    };
    held.puts.push(Put {
        run_id,
        status: status.as_u16(),
        archive: body.to_vec(),
    });
    status
}

/// The text of `member` in a tar.gz archive.
pub(crate) fn file_in(archive: &[u8], member: &str) -> String {
    use std::io::Write;
    let mut tar = std::process::Command::new("tar")
        .args(["-xzOf", "-", member])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tar.stdin.take().unwrap().write_all(archive).unwrap();
    let output = tar.wait_with_output().unwrap();
    assert!(output.status.success(), "{member} is not in the archive");
    String::from_utf8(output.stdout).unwrap()
}

/// A tar.gz of `files` (name, text), each renamed by `sed_renames` (a `--transform`), names
/// kept as they are (`-P`: absolute and `..` members too).
fn archive_of(files: &[(&str, &str)], sed_renames: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let file = dir.path().join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let output = std::process::Command::new("tar")
        .args(["-czPf", "-", "-C"])
        .arg(dir.path())
        .arg(format!("--transform={sed_renames}"))
        .args(files.iter().map(|(name, _)| name))
        .output()
        .unwrap();
    assert!(output.status.success());
    output.stdout
}

/// A data dir the sandbox user can pass through, and a fresh work dir in it, as the runner
/// makes them.
fn work_dirs() -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let work = data.path().join("run_x");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    (data, work)
}

fn checkpoint_of(
    coordinator: &FakeCoordinator,
    work: &Path,
    order: &CheckpointOrder,
) -> Checkpoint {
    let store = Arc::new(CheckpointStore::new(&coordinator.url, &[]).unwrap());
    Checkpoint::new(store, "run_x", work, order).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn paths_stay_inside_the_work_dir() {
    assert_eq!(checked_path("ckpt").unwrap(), "ckpt");
    assert_eq!(checked_path("./a//b/").unwrap(), "a/b");
    for bad in ["", ".", "/abs", "../up", "a/../../b", "a b", "a\\b", "ä"] {
        assert!(checked_path(bad).is_err(), "{bad:?}");
    }
    assert!(checked_path(&"a".repeat(PATH_CHARS_MAX + 1)).is_err());
}

#[test]
fn members_must_lie_under_the_path() {
    for good in ["ckpt", "ckpt/", "ckpt/n", "ckpt/a/b"] {
        assert!(member_inside(good, "ckpt"), "{good}");
    }
    for bad in [
        "ckpt2/n",
        "other",
        "/ckpt/n",
        "ckpt/../x",
        "../ckpt/n",
        "ckpt/..",
    ] {
        assert!(!member_inside(bad, "ckpt"), "{bad}");
    }
}

#[tokio::test]
async fn a_restore_unpacks_the_newest_archive_for_the_sandbox_user() {
    let coordinator = FakeCoordinator::start().await;
    let order = coordinator.add_run("run_x", 60_000);
    coordinator.set_newest(archive_of(
        &[("ckpt/n", "41"), ("ckpt/sub/m", "x")],
        "s,^,,",
    ));
    let (_data, work) = work_dirs();
    checkpoint_of(&coordinator, &work, &order).restore().await;
    assert_eq!(std::fs::read_to_string(work.join("ckpt/n")).unwrap(), "41");
    assert_eq!(
        std::fs::read_to_string(work.join("ckpt/sub/m")).unwrap(),
        "x"
    );
    if running_as_root() {
        let meta = std::fs::metadata(work.join("ckpt/sub")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (SANDBOX_UID, SANDBOX_GID));
    }
}

#[tokio::test]
async fn without_an_archive_the_directory_starts_empty_and_writable() {
    let coordinator = FakeCoordinator::start().await;
    let mut order = coordinator.add_run("run_x", 60_000);
    order.path = "a/ckpt".to_owned();
    let (_data, work) = work_dirs();
    checkpoint_of(&coordinator, &work, &order).restore().await;
    assert!(entries(&work.join("a/ckpt")).is_empty());
    if running_as_root() {
        for dir in ["a", "a/ckpt"] {
            let meta = std::fs::metadata(work.join(dir)).unwrap();
            assert_eq!(meta.uid(), SANDBOX_UID, "{dir}");
        }
    }
}

#[tokio::test]
async fn an_archive_reaching_outside_is_refused_whole() {
    let coordinator = FakeCoordinator::start().await;
    let order = coordinator.add_run("run_x", 60_000);
    let (data, work) = work_dirs();
    let outside = data.path().join("escape");
    let absolute = data.path().join("absolute");
    let renames = [
        "s,^x$,../escape,".to_owned(),
        format!("s,^y$,{},", absolute.display()),
        "s,^z$,other/file,".to_owned(),
    ];
    let files = [("ckpt/ok", "1"), ("x", "2"), ("y", "3"), ("z", "4")];
    for rename in renames {
        coordinator.set_newest(archive_of(&files, &rename));
        let checkpoint = checkpoint_of(&coordinator, &work, &order);
        let refused = checkpoint.restore_within().await;
        assert!(
            matches!(refused, Err(CheckpointError::Member { .. })),
            "{rename}: {refused:?}"
        );
        checkpoint.restore().await;
        assert!(!outside.exists() && !absolute.exists(), "{rename}");
        assert_eq!(entries(&work), vec!["ckpt"], "{rename}: nothing unpacked");
        assert!(entries(&work.join("ckpt")).is_empty(), "{rename}");
    }
}

#[tokio::test]
async fn an_archive_unpacking_too_large_is_refused() {
    let coordinator = FakeCoordinator::start().await;
    let mut order = coordinator.add_run("run_x", 60_000);
    // 2 MiB of zeros packs to a few KiB but unpacks past 64 times 4 KiB.
    order.bytes_max = 4_096;
    let zeros = "\0".repeat(2 << 20);
    let archive = archive_of(&[("ckpt/zeros", &zeros)], "s,^,,");
    assert!(archive.len() < 4_096, "{} bytes packed", archive.len());
    coordinator.set_newest(archive);
    let (_data, work) = work_dirs();
    let checkpoint = checkpoint_of(&coordinator, &work, &order);
    let refused = checkpoint.restore_within().await;
    assert!(
        matches!(refused, Err(CheckpointError::UnpacksTooLarge { .. })),
        "{refused:?}"
    );
    checkpoint.restore().await;
    assert!(entries(&work.join("ckpt")).is_empty());
}

#[tokio::test]
async fn uploads_pack_the_directory_and_stop_once_the_run_ended() {
    let coordinator = FakeCoordinator::start().await;
    let order = coordinator.add_run("run_x", 60_000);
    let (_data, work) = work_dirs();
    let checkpoint = checkpoint_of(&coordinator, &work, &order);
    checkpoint.restore().await;
    std::fs::write(work.join("ckpt/n"), "7").unwrap();
    // As the node would leave it: its own files (readable to the packing sandbox user).
    std::fs::set_permissions(work.join("ckpt/n"), std::fs::Permissions::from_mode(0o644)).unwrap();
    checkpoint.upload().await;
    let puts = coordinator.puts("run_x");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].status, 204);
    assert_eq!(file_in(&puts[0].archive, "ckpt/n"), "7");

    coordinator.end_run("run_x");
    checkpoint.upload().await;
    assert!(!checkpoint.run_live());
    checkpoint.upload().await;
    assert_eq!(coordinator.puts("run_x").len(), 2, "none after the 409");
}

#[tokio::test]
async fn a_checkpoint_through_a_symlink_or_over_its_limit_is_not_uploaded() {
    let coordinator = FakeCoordinator::start().await;
    let mut order = coordinator.add_run("run_x", 60_000);
    let (data, work) = work_dirs();
    std::fs::write(data.path().join("secret"), "key").unwrap();
    std::os::unix::fs::symlink(data.path(), work.join("ckpt")).unwrap();
    let through_link = checkpoint_of(&coordinator, &work, &order);
    let refused = through_link.upload_within().await;
    assert!(
        matches!(refused, Err(CheckpointError::Path { .. })),
        "{refused:?}"
    );
    through_link.upload().await;
    assert!(coordinator.puts("run_x").is_empty());

    std::fs::remove_file(work.join("ckpt")).unwrap();
    std::fs::create_dir(work.join("ckpt")).unwrap();
    let mut noise = vec![0u8; 64 * 1024];
    getrandom::fill(&mut noise).unwrap();
    std::fs::write(work.join("ckpt/noise"), &noise).unwrap();
    order.bytes_max = 16 * 1024;
    let too_large = checkpoint_of(&coordinator, &work, &order);
    let refused = too_large.upload_within().await;
    assert!(
        matches!(refused, Err(CheckpointError::TooLarge { .. })),
        "{refused:?}"
    );
    too_large.upload().await;
    assert!(
        coordinator.puts("run_x").is_empty(),
        "over bytes_max: skipped"
    );
}
