//! Test harness: real `flotilla` processes on loopback ports bound to 0, over SQLite or a
//! throwaway PostgreSQL database.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use flotilla_client::Client;
use flotilla_proto::api::{
    CreateAccountRequest, CreateAccountResponse, CreateEnrollmentTokenRequest,
    CreatedEnrollmentToken, EnrollRequest, EnrollResponse, Role,
};
use flotilla_proto::wire::sign_enrollment;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
pub const HEARTBEAT_INTERVAL_MS: u64 = 200;
pub const HEARTBEAT_GRACE_MS: u64 = 1_500;

/// Which database a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs `scenario` on SQLite, and on PostgreSQL when the test command provided a server.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::harness::Db::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::harness::postgres_admin_url().is_none() {
                    return;
                }
                super::$name($crate::harness::Db::Postgres).await;
            }
        }
    };
}

/// The PostgreSQL server's admin URL from `FLOTILLA_TEST_POSTGRES_URL`. When
/// `FLOTILLA_REQUIRE_POSTGRES=1` (the test command sets it) a missing server fails the test
/// instead of skipping it.
pub fn postgres_admin_url() -> Option<String> {
    let url = std::env::var("FLOTILLA_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() && std::env::var("FLOTILLA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("FLOTILLA_REQUIRE_POSTGRES=1 but FLOTILLA_TEST_POSTGRES_URL is not set");
    }
    url
}

/// A fresh, empty database of the given kind; returns its URL.
pub async fn fresh_database(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite:{}", dir.join("flotilla.db").display()),
        Db::Postgres => {
            let admin = postgres_admin_url().expect("postgres url");
            flotilla_store::create_postgres_database(&admin, "t")
                .await
                .expect("a throwaway database on the test postgres")
        }
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGINT and waits for the exit; returns how long it took.
    pub fn interrupt(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        // SAFETY-free: a plain kill(2) on our own child's pid.
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test TLS files' folder.
pub const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/network/tls");
/// The test CA, which signed [`TLS_FLAGS`]' certificate.
pub const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/network/tls/ca.pem");
/// The SHA-256 of [`TLS_FLAGS`]' certificate's public key (base64), for Chromium's
/// `--ignore-certificate-errors-spki-list`: `openssl x509 -in cert.pem -pubkey -noout | openssl
/// pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`.
pub const TEST_CERT_SPKI_SHA256: &str = "fhFMUzGlw7FNkwNSj84E2Y3LkMSQvn2ANEwwXI/EoTw=";
/// A coordinator's flags to serve HTTPS as `localhost` and `127.0.0.1`.
pub const TLS_FLAGS: [&str; 4] = [
    "--tls-cert",
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/network/tls/cert.pem"),
    "--tls-key",
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/network/tls/key.pem"),
];

/// A coordinator process.
pub struct Coordinator {
    _proc: Proc,
    /// `http://127.0.0.1:PORT`, or `https://` when started with [`TLS_FLAGS`].
    pub url: String,
    pub database_url: String,
    pub admin_key: String,
    _dir: tempfile::TempDir,
}

/// Starts a restarted coordinator tries on its old port.
const RESTART_TRIES_MAX: u32 = 25;

/// `flag` with its value, unless the test gave that flag itself.
fn unless_given<'a>(extra: &[&str], flag: [&'a str; 2]) -> Vec<&'a str> {
    if extra.contains(&flag[0]) {
        Vec::new()
    } else {
        flag.to_vec()
    }
}

impl Coordinator {
    pub async fn start(db: Db, extra: &[&str]) -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let database_url = fresh_database(db, dir.path()).await;
        Coordinator::start_on(db, dir, database_url, extra)
    }

    pub fn start_on(
        _db: Db,
        dir: tempfile::TempDir,
        database_url: String,
        extra: &[&str],
    ) -> Coordinator {
        Coordinator::spawn(dir, database_url, "127.0.0.1:0", extra)
            .unwrap_or_else(|(_, line)| panic!("unexpected first line {line:?}"))
    }

    /// Starts a coordinator listening on every address (workers in other network namespaces
    /// reach it); its `url` is still the loopback one.
    pub async fn start_on_every_address(db: Db, extra: &[&str]) -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let database_url = fresh_database(db, dir.path()).await;
        Coordinator::spawn(dir, database_url, "0.0.0.0:0", extra)
            .unwrap_or_else(|(_, line)| panic!("unexpected first line {line:?}"))
    }

    /// Starts a coordinator; on failure (its first line is no address) the directory back,
    /// with what it printed.
    fn spawn(
        dir: tempfile::TempDir,
        database_url: String,
        listen: &str,
        extra: &[&str],
    ) -> Result<Coordinator, (tempfile::TempDir, String)> {
        let admin_key_file = dir.path().join("admin.key");
        let mut child = Command::new(BIN)
            .args([
                "coordinator",
                "--listen",
                listen,
                "--database",
                &database_url,
                "--admin-key-file",
            ])
            .arg(&admin_key_file)
            .args([
                "--heartbeat-interval-ms",
                &HEARTBEAT_INTERVAL_MS.to_string(),
            ])
            .args(unless_given(
                extra,
                ["--heartbeat-grace-ms", &HEARTBEAT_GRACE_MS.to_string()],
            ))
            .args(["--telemetry-bucket-s", "1"])
            .args(["--proof-target-ms", "20", "--proof-memory-pct", "1"])
            // Without `--tunnel-listen`, a coordinator restarted on a fixed port would take the
            // next port for its tunnels, which any other process may hold; workers learn the
            // tunnel port with each tunnel, so an ephemeral one serves.
            .args(unless_given(extra, ["--tunnel-listen", "127.0.0.1:0"]))
            .args(extra)
            .env(
                "FLOTILLA_LOG",
                std::env::var("FLOTILLA_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flotilla coordinator starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("the coordinator prints its address")
            .replace("http://0.0.0.0:", "http://127.0.0.1:")
            .replace("https://0.0.0.0:", "https://127.0.0.1:");
        if !url.starts_with("http://127.0.0.1:") && !url.starts_with("https://127.0.0.1:") {
            let _ = child.kill();
            let _ = child.wait();
            return Err((dir, line));
        }
        let admin_key = std::fs::read_to_string(&admin_key_file)
            .unwrap()
            .trim()
            .to_owned();
        Ok(Coordinator {
            _proc: Proc { child },
            url,
            database_url,
            admin_key,
            _dir: dir,
        })
    }

    /// Kills the coordinator (SIGKILL) and starts it again on the same port and database.
    pub fn restart(self, extra: &[&str]) -> Coordinator {
        let Coordinator {
            mut _proc,
            url,
            database_url,
            _dir,
            ..
        } = self;
        _proc.kill();
        let listen = url
            .split_once("://")
            .map_or(&*url, |(_, rest)| rest)
            .to_owned();
        debug_assert!(listen.starts_with("127.0.0.1:"), "restarts are on loopback");
        // Another test's process may have taken the freed port for a moment: try again.
        let mut dir = _dir;
        for _ in 0..RESTART_TRIES_MAX {
            match Coordinator::spawn(dir, database_url.clone(), &listen, extra) {
                Ok(coordinator) => return coordinator,
                Err((back, line)) => {
                    eprintln!("coordinator restart on {listen} failed ({line:?}); retrying");
                    dir = back;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
        panic!("the coordinator could not listen on {listen} again");
    }

    pub fn client(&self, key: Option<&str>) -> Client {
        let key = key.map(str::to_owned);
        if self.over_tls() {
            let ca = std::fs::read(TEST_CA).unwrap();
            Client::with_ca(&self.url, key, &ca).unwrap()
        } else {
            Client::new(&self.url, key)
        }
    }

    /// Sends a signal by name (`HUP`) to the coordinator process.
    pub fn signal(&self, name: &str) {
        self._proc.signal(name);
    }

    /// Whether it serves HTTPS ([`TLS_FLAGS`]); its clients then trust [`TEST_CA`].
    pub fn over_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// `--ca-cert` for a client or worker of this coordinator, when it serves HTTPS.
    pub fn ca_flags(&self) -> Vec<&'static str> {
        if self.over_tls() {
            vec!["--ca-cert", TEST_CA]
        } else {
            Vec::new()
        }
    }

    /// Signs up an account and returns its key.
    pub async fn account(&self, name: &str, roles: &[Role]) -> String {
        let request = CreateAccountRequest {
            name: name.to_owned(),
            roles: roles.to_vec(),
        };
        let created: CreateAccountResponse =
            self.client(None).post("accounts", &request).await.unwrap();
        created.api_key.secret
    }

    /// Enrolls `key` with a fresh token of the supplier's; returns the worker id.
    pub async fn enrolled(&self, supplier_key: &str, key: &SigningKey, hostname: &str) -> String {
        let token = self.token(supplier_key).await;
        enroll(&self.client(None), key, &token, hostname)
            .await
            .expect("a fresh token enrolls")
            .worker_id
    }

    pub async fn token(&self, supplier_key: &str) -> String {
        self.created_token(supplier_key, None).await.secret
    }

    /// Creates an enrollment token with the given lifetime (default when None).
    pub async fn created_token(
        &self,
        supplier_key: &str,
        expires_in_s: Option<u64>,
    ) -> CreatedEnrollmentToken {
        let request = CreateEnrollmentTokenRequest {
            name: None,
            expires_in_s,
        };
        self.client(Some(supplier_key))
            .post("enrollment-tokens", &request)
            .await
            .unwrap()
    }

    /// Starts a worker process with simulated GPUs.
    pub fn worker(&self, data_dir: &Path, token: Option<&str>, gpus: &str) -> Proc {
        self.worker_with(data_dir, token, gpus, &[])
    }

    /// Starts a worker process with simulated GPUs and extra arguments.
    pub fn worker_with(
        &self,
        data_dir: &Path,
        token: Option<&str>,
        gpus: &str,
        extra: &[&str],
    ) -> Proc {
        self.worker_through(&[BIN], &self.url, data_dir, token, gpus, extra)
    }

    /// Starts a worker as `program` (the binary, or a command that runs it, such as
    /// `ip netns exec NAME BIN`) dialling the coordinator at `url`.
    pub fn worker_through(
        &self,
        program: &[&str],
        url: &str,
        data_dir: &Path,
        token: Option<&str>,
        gpus: &str,
        extra: &[&str],
    ) -> Proc {
        let mut command = Command::new(program[0]);
        command
            .args(&program[1..])
            .args([
                "worker",
                "--coordinator",
                url,
                // Only the simulated GPUs: the same devices on a machine with real ones.
                "--no-cpu",
                "--no-gpus",
                "--simulate-gpu",
                gpus,
                "--data",
            ])
            .arg(data_dir)
            .args(self.ca_flags())
            .args(extra)
            .env(
                "FLOTILLA_LOG",
                std::env::var("FLOTILLA_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        Proc {
            child: command.spawn().expect("flotilla worker starts"),
        }
    }
}

/// Enrolls a key directly through the API, as a worker would.
pub async fn enroll(
    client: &Client,
    key: &SigningKey,
    token: &str,
    hostname: &str,
) -> Result<EnrollResponse, flotilla_client::ClientError> {
    let (public_key, signature) = sign_enrollment(key, token);
    client
        .post(
            "workers/enroll",
            &EnrollRequest {
                token: token.to_owned(),
                public_key,
                signature,
                hostname: hostname.to_owned(),
            },
        )
        .await
}

/// Polls `check` until it returns Some or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn key(byte: u8) -> SigningKey {
    let mut seed = [byte; 32];
    getrandom_seed(&mut seed);
    SigningKey::from_bytes(&seed)
}

fn getrandom_seed(seed: &mut [u8; 32]) {
    let secret = flotilla_proto::id::new_secret("");
    for (slot, byte) in seed.iter_mut().zip(secret.bytes()) {
        *slot ^= byte;
    }
}

impl Proc {
    /// Sends a signal by name (`STOP`, `CONT`) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// The exit status, if the process has exited.
    pub fn proc_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
