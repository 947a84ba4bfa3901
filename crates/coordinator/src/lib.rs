//! The coordinator: the HTTP API under `/api/v1`, worker control sessions, failure detection,
//! telemetry history and the audit log, over one database.
//!
//! Invariants:
//! - Handlers reach stored objects only through `flotilla_store` queries filtered by the
//!   caller's account; an object that is not the caller's answers 404 like a missing one.
//! - Every device state change goes through `device_state::transition` and `Fleet`, which
//!   write the database (compare-and-set) before the in-memory copy.
//! - The pending-to-idle step lives in `admission` alone.
//! - Errors become HTTP answers in `error.rs` only.

pub mod admission;
pub mod api;
pub mod clusters;
pub mod config;
pub mod device_state;
pub mod error;
pub mod extract;
pub mod files;
pub mod fleet;
pub mod ledger;
pub mod ledger_upkeep;
pub mod liveness;
pub mod market;
pub mod mesh;
pub mod metrics;
pub mod ratelimit;
pub mod rent;
pub mod scheduling;
pub mod serve;
mod session;
pub mod spending;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod tunnels;
pub mod verifier;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::time::now_unix_ms;
use flotilla_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
use fleet::Fleet;
use metrics::Metrics;
use ratelimit::RateLimiter;

/// Failed authentications allowed per client address per minute.
const AUTH_FAILURES_PER_MINUTE: u32 = 120;
/// How often connected workers' last-seen stamps are written to the database.
/// Public market reads one client address may make a minute.
const MARKET_READS_PER_MINUTE: u32 = 600;
const LEDGER_READS_PER_MINUTE: u32 = 30;
const LAST_SEEN_FLUSH_INTERVAL_MS: u64 = 30_000;
/// How often telemetry older than retention is deleted.
const TELEMETRY_PRUNE_INTERVAL_MS: u64 = 600_000;
/// How long shutdown waits for sessions and the HTTP server.
const SHUTDOWN_DEADLINE_MS: u64 = 4_000;

/// The rate limiters, one per kind of request that can be abused.
#[derive(Debug)]
pub struct Limits {
    pub enroll: RateLimiter,
    pub enroll_per_supplier: RateLimiter,
    pub signup: RateLimiter,
    pub token_create: RateLimiter,
    pub auth_failures: RateLimiter,
    /// Public market reads (offer searches, prices) per client address: each reads the whole
    /// market.
    pub market_reads: RateLimiter,
    /// A whole-log export reads everything; far fewer are allowed per address.
    pub ledger_reads: RateLimiter,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub verifier: verifier::Verifier,
    pub shutdown: watch::Receiver<bool>,
    /// Price indexes kept for trends.
    pub prices: Arc<market::PriceHistory>,
    /// The market view public reads share.
    pub market: Arc<market::MarketCache>,
    /// Renters' spending this month, summed as the ledger grows.
    pub spending: Arc<spending::Spending>,
    pub ledger: ledger::Ledger,
    /// Asks the scheduling loop for a pass now (a deploy need not wait for the next tick).
    pub schedule_now: Arc<tokio::sync::Notify>,
    /// Workers' tunnels, for renters' connections to their nodes.
    pub tunnels: Arc<tunnels::Tunnels>,
    /// Clusters' mesh networks: members, keys, and where the relay sees them.
    pub meshes: Arc<mesh::Meshes>,
}

/// Errors starting the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] flotilla_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the admin key file: {0}")]
    AdminKey(std::io::Error),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running coordinator. Dropping it does not stop it; call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub local_addr: SocketAddr,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Ends once every handle to the ledger is dropped, after the tasks above.
    ledger_writer: JoinHandle<()>,
}

impl Running {
    /// Stops serving, ends worker sessions, flushes telemetry and closes the database, within
    /// a deadline.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let deadline = Duration::from_millis(SHUTDOWN_DEADLINE_MS);
        for task in self.tasks {
            let _ = tokio::time::timeout(deadline, task).await;
        }
        let _ = tokio::time::timeout(deadline, self.ledger_writer).await;
        self.store.close().await;
    }
}

/// Opens the database, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    config.validate()?;
    let store = Store::open(&config.database_url).await?;
    if let Some(path) = &config.admin_key_file {
        api::accounts::bootstrap_admin(&store, path).await?;
    }
    let metrics = Arc::new(Metrics::new());
    let fleet = Arc::new(Fleet::load(store.clone(), metrics.clone(), &config).await?);
    let limits = Arc::new(Limits {
        enroll: RateLimiter::per_minute(config.enroll_rate_per_minute),
        enroll_per_supplier: RateLimiter::per_minute(config.enroll_rate_per_minute),
        signup: RateLimiter::per_minute(config.signup_rate_per_minute),
        token_create: RateLimiter::per_minute(config.token_create_rate_per_minute),
        auth_failures: RateLimiter::per_minute(AUTH_FAILURES_PER_MINUTE),
        market_reads: RateLimiter::per_minute(MARKET_READS_PER_MINUTE),
        ledger_reads: RateLimiter::per_minute(LEDGER_READS_PER_MINUTE),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let (verifier, _verifier_task) = verifier::Verifier::start();
    let (ledger, ledger_writer) = ledger::Ledger::start(store.clone()).await?;
    let tunnel_addr = config.tunnel_listen.unwrap_or_else(|| {
        let port = match local_addr.port() {
            0 | u16::MAX => 0,
            _ if config.listen.port() == 0 => 0,
            port => port + 1,
        };
        SocketAddr::new(local_addr.ip(), port)
    });
    let tunnel_listener = tokio::net::TcpListener::bind(tunnel_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: tunnel_addr,
            source,
        })?;
    let tunnel_port = tunnel_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: tunnel_addr,
            source,
        })?
        .port();
    // The mesh relay shares the tunnel's port number, over UDP.
    let relay_addr = SocketAddr::new(tunnel_addr.ip(), tunnel_port);
    let relay_socket = tokio::net::UdpSocket::bind(relay_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: relay_addr,
            source,
        })?;
    // The tunnel's Noise key is the ledger key's X25519 twin: stable, and nothing more to keep.
    let tunnel_key = flotilla_tunnel::StaticKeypair::from_ed25519(ledger.signing_key());
    let (traffic_sink, traffic_records) = traffic::queue();
    let config_relay_only = config.mesh_relay_only;
    let tunnel_connections_per_node_max = config.tunnel_connections_per_node_max;
    let keepalive = config.client_keepalive();
    let unanswered_max = config.client_unanswered_max();
    let app = AppState {
        store: store.clone(),
        config: Arc::new(config),
        fleet,
        metrics,
        limits,
        verifier,
        shutdown: shutdown_rx.clone(),
        prices: Arc::new(market::PriceHistory::default()),
        market: Arc::default(),
        spending: Arc::default(),
        ledger,
        schedule_now: Arc::new(tokio::sync::Notify::new()),
        tunnels: Arc::new(tunnels::Tunnels::new(
            tunnel_key,
            tunnel_port,
            traffic_sink,
            tunnel_connections_per_node_max,
        )),
        meshes: Arc::new(mesh::Meshes::new(config_relay_only)),
    };
    let router = api::router(app.clone());
    let header_read_timeout = app.config.http_header_read_timeout();
    // Without Nagle: a tunnelled connection's small writes (keystrokes over SSH, say) go to
    // the renter at once instead of waiting for the previous one's ACK. With keepalive: a
    // vanished peer's connection (and its node's slot) does not live forever.
    let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
        let _ = tcp.set_nodelay(true);
        let socket = socket2::SockRef::from(&*tcp);
        let _ = socket.set_tcp_keepalive(&keepalive);
        let _ = socket.set_tcp_user_timeout(Some(unanswered_max));
    });
    let server = match tls {
        Some((acceptor, served)) => {
            tokio::spawn(tls::keep_fresh(served, shutdown_rx.clone()));
            let listener = tls::TlsListener::new(listener, acceptor);
            let serving =
                serve::serve_http(listener, router, header_read_timeout, shutdown_rx.clone());
            tokio::spawn(serving)
        }
        None => {
            let serving =
                serve::serve_http(listener, router, header_read_timeout, shutdown_rx.clone());
            tokio::spawn(serving)
        }
    };
    let tunnel = tokio::spawn(tunnels::serve(
        app.clone(),
        tunnel_listener,
        shutdown_rx.clone(),
    ));
    let relay = tokio::spawn(mesh::relay(app.clone(), relay_socket, shutdown_rx.clone()));
    let traffic = tokio::spawn(traffic::record(
        app.clone(),
        traffic_records,
        shutdown_rx.clone(),
    ));
    let liveness = tokio::spawn(liveness_loop(app.clone(), shutdown_rx.clone()));
    let scheduling = tokio::spawn(scheduling::run(app.clone(), shutdown_rx.clone()));
    let upkeep = tokio::spawn(ledger_upkeep::run(app.clone(), shutdown_rx.clone()));
    let housekeeping = tokio::spawn(housekeeping_loop(app, shutdown_rx));
    tracing::info!(%local_addr, "coordinator listening");
    Ok(Running {
        local_addr,
        store,
        shutdown: shutdown_tx,
        tasks: vec![
            server,
            tunnel,
            relay,
            traffic,
            liveness,
            scheduling,
            upkeep,
            housekeeping,
        ],
        ledger_writer,
    })
}

/// Failure detection on its own loop, so a slow database write elsewhere never delays marking
/// devices down.
async fn liveness_loop(app: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(
        app.config.liveness_sweep_interval_ms(),
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match app.fleet.sweep(now_unix_ms()).await {
            // A device that went down may hold a node: replace it now, not at the next pass.
            Ok(1..) => app.schedule_now.notify_one(),
            Ok(0) => {}
            Err(error) => tracing::warn!(%error, "liveness sweep incomplete; retrying next tick"),
        }
    }
}

/// Telemetry flushing and pruning, last-seen stamps. Flushes once more on shutdown.
async fn housekeeping_loop(app: AppState, mut shutdown: watch::Receiver<bool>) {
    let tick_ms = (app.config.telemetry_bucket_s * 1000 / 2).clamp(100, 5_000);
    let mut ticker = tokio::time::interval(Duration::from_millis(tick_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let last_seen_every_ticks = (LAST_SEEN_FLUSH_INTERVAL_MS / tick_ms).max(1);
    let prune_every_ticks = (TELEMETRY_PRUNE_INTERVAL_MS / tick_ms).max(1);
    let mut tick: u64 = 0;
    let mut uptime_accounted = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        tick += 1;
        let now_ms = now_unix_ms();
        flush_telemetry(&app, now_ms).await;
        if tick.is_multiple_of(last_seen_every_ticks) {
            flush_last_seen(&app).await;
            account_uptime(&app, &mut uptime_accounted).await;
        }
        if tick.is_multiple_of(prune_every_ticks) {
            let retention_ms =
                i64::try_from(app.config.telemetry_retention_s * 1000).unwrap_or(i64::MAX);
            if let Err(error) = app
                .store
                .prune_telemetry(now_ms.saturating_sub(retention_ms))
                .await
            {
                tracing::warn!(%error, "telemetry prune failed");
            }
        }
    }
    flush_telemetry(&app, i64::MAX / 2).await;
    flush_last_seen(&app).await;
}

async fn flush_telemetry(app: &AppState, now_ms: i64) {
    let buckets = app.fleet.take_closed_buckets(now_ms);
    if buckets.is_empty() {
        return;
    }
    match app.store.insert_telemetry(&buckets).await {
        Ok(()) => {
            app.metrics
                .telemetry_buckets_written
                .inc_by(buckets.len() as u64);
        }
        Err(error) => {
            app.metrics
                .telemetry_buckets_dropped
                .inc_by(buckets.len() as u64);
            tracing::warn!(%error, buckets = buckets.len(), "telemetry flush failed; buckets dropped");
        }
    }
}

async fn flush_last_seen(app: &AppState) {
    let seen = app.fleet.connected_last_seen();
    if seen.is_empty() {
        return;
    }
    if let Err(error) = app.store.touch_workers(&seen).await {
        tracing::warn!(%error, "last-seen flush failed");
    }
}

/// Adds the time since the last accounting to every worker's observed time, and to the
/// connected ones' uptime: the reliability the scheduler ranks by.
async fn account_uptime(app: &AppState, since: &mut tokio::time::Instant) {
    let elapsed_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
    *since = tokio::time::Instant::now();
    let connected: Vec<String> = app
        .fleet
        .connected_last_seen()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    if let Err(error) = app.store.account_uptime(&connected, elapsed_ms).await {
        tracing::warn!(%error, "uptime accounting failed");
    }
}

/// Milliseconds now; one place, so tests of pure parts never need it.
pub(crate) fn now_ms() -> i64 {
    now_unix_ms()
}
