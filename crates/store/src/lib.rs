//! Database access for the coordinator: one code path over SQLite (the embedded default) and
//! PostgreSQL, through `sqlx::Any` and portable SQL.
//!
//! Invariants:
//! - The schema changes only through the numbered migrations in `migrations/`, applied in order
//!   inside a transaction, each recorded once in `schema_migrations`.
//! - Every query over an object a user owns filters by `account_id`, so a handler cannot leak
//!   another user's row by forgetting a check (the fix for BOLA lives in the query).
//! - Secrets arrive here already hashed; this crate never sees an API key or token in clear.
//! - State changes that race (token use, device state) are single conditional statements, so
//!   they apply once on both databases without relying on isolation levels.

mod accounts;
mod audit;
mod clusters;
mod devices;
mod governance;
mod ledger;
mod market;
mod proofs;
mod requests;
mod telemetry;
mod traffic;
mod web_sessions;
mod workers;

pub use accounts::{AccountRow, ApiKeyRow, AuthenticatedKey};
pub use audit::{AuditEventRow, NewAuditEvent};
pub use clusters::{
    CLUSTER_DEPLOYING, CLUSTER_RUNNING, ClusterRow, LogRow, RUN_ASSIGNED, RUN_EXITED, RUN_FAILED,
    RUN_LOST, RUN_RUNNING, RUN_STOPPED, RunRow,
};
pub use devices::{DeviceRow, DeviceStateChange};
pub use governance::ProposalRow;
pub use ledger::{
    EpochSealRow, LedgerAccountRow, LedgerEntryRow, LedgerHeadRow, LedgerHoldRow, LedgerSeenRow,
    LedgerTx,
};
pub use market::{MarketRow, WorkerLocation, WorkerStats};
pub use proofs::ProofRow;
pub use requests::{
    LostNode, LostNodeShape, PlacementRow, REQUEST_CANCELLED, REQUEST_COMPLETED, REQUEST_PLACED,
    REQUEST_QUEUED, RequestRow,
};
pub use telemetry::TelemetryBucketRow;
pub use web_sessions::WebSessionRow;
pub use workers::{EnrollmentTokenRow, WorkerRow};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url scheme {0:?} is neither sqlite nor postgres")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Conflict(&'static str),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Spells a migration's dialect words. `ROWID_KEY` is a 64-bit integer primary key,
    /// which on SQLite must be written `INTEGER PRIMARY KEY` to be the table's own row id and
    /// on PostgreSQL `BIGINT PRIMARY KEY` (`INTEGER` is 32 bits). `KEYED_TABLE` after a table
    /// with a text key stores its rows in the key's own B-tree on SQLite (`WITHOUT ROWID`),
    /// PostgreSQL having no such option. Either way, one B-tree fewer per write. `AUTO_KEY` is a
    /// 64-bit key the database numbers itself on insert; `BYTES_TYPE` a byte string.
    fn dialect(self, sql: &str) -> String {
        let (key, keyed, auto, bytes) = match self {
            Backend::Sqlite => (
                "INTEGER PRIMARY KEY",
                "WITHOUT ROWID",
                "INTEGER PRIMARY KEY",
                "BLOB",
            ),
            Backend::Postgres => ("BIGINT PRIMARY KEY", "", "BIGSERIAL PRIMARY KEY", "BYTEA"),
        };
        sql.replace("AUTO_KEY", auto)
            .replace("BYTES_TYPE", bytes)
            .replace("ROWID_KEY", key)
            .replace("KEYED_TABLE", keyed)
    }
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_foundation.sql")),
    (2, include_str!("../migrations/0002_hardware_index.sql")),
    (3, include_str!("../migrations/0003_proofs.sql")),
    (4, include_str!("../migrations/0004_market.sql")),
    (5, include_str!("../migrations/0005_requests.sql")),
    (6, include_str!("../migrations/0006_reliability.sql")),
    (7, include_str!("../migrations/0007_ledger.sql")),
    (8, include_str!("../migrations/0008_rent.sql")),
    (9, include_str!("../migrations/0009_requests_ended.sql")),
    (10, include_str!("../migrations/0010_clusters.sql")),
    (11, include_str!("../migrations/0011_tunnel_traffic.sql")),
    (12, include_str!("../migrations/0012_web_sessions.sql")),
    (13, include_str!("../migrations/0013_ledger_chains.sql")),
];

/// Connections held open to PostgreSQL. SQLite gets fewer: it has one writer anyway.
const POSTGRES_CONNECTIONS_MAX: u32 = 16;
const SQLITE_CONNECTIONS_MAX: u32 = 8;
/// SQLite connections of the ledger writer's own pool (see [`Store::ledger_pool`]): its
/// pipelined commits and a batch run again after a conflict.
const LEDGER_SQLITE_CONNECTIONS_MAX: u32 = 2;
/// SQLite's page cache per connection, in KiB: the default (2 MiB) is smaller than the
/// ledger's indexes, and batched inserts into them then read pages back from the OS.
const SQLITE_CACHE_KIB: u32 = 32_768;
/// How long an SQLite connection waits for another's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;
/// WAL pages (4 KiB each) a commit leaves before it copies them into the database file. Each
/// copy syncs the WAL and the file, so at SQLite's default (1,000 pages, less than one ledger
/// batch writes) every batch paid two syncs and rewrote the same balance pages; at 16,384
/// (64 MiB, about a dozen batches) it pays them a dozen times less often.
const SQLITE_CHECKPOINT_PAGES: u32 = 16_384;

/// The coordinator's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Goes up with every write through this store that changes what the market offers
    /// (devices' states, prices, hardware and removal; workers' locations, pauses and
    /// removal; renters' feedback and ratings), so a cached market view knows when it is out
    /// of date.
    market_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// SQLite only: connections for the ledger writer's transactions, through sqlx's SQLite
    /// driver rather than `Any`. A batch binds tens of thousands of strings, and `Any` copies
    /// each once more on its way to SQLite: a fifth of a commit's time.
    ledger_pool: Option<sqlx::SqlitePool>,
}

impl Store {
    /// The market's version: different after any write that changes what is offered.
    pub fn market_version(&self) -> u64 {
        self.market_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the market changed; called after such a write commits.
    pub(crate) fn market_changed(&self) {
        self.market_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Opens (creating an SQLite file if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_through(url, i64::MAX).await
    }

    /// [`Store::open`], applying migrations up to `version_max` only (tests of a migration
    /// over rows written before it).
    async fn open_through(url: &str, version_max: i64) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = normalize_url(url)?;
        let connections_max = match backend {
            Backend::Sqlite => SQLITE_CONNECTIONS_MAX,
            Backend::Postgres => POSTGRES_CONNECTIONS_MAX,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(connections_max)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for (pragma, value) in sqlite_pragmas(SQLITE_SYNCHRONOUS) {
                            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA {pragma} = {value}")))
                                .execute(&mut *conn)
                                .await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let ledger_pool = match backend {
            Backend::Sqlite => Some(sqlite_ledger_pool(&url).await?),
            Backend::Postgres => None,
        };
        let store = Store {
            pool,
            backend,
            market_version: std::sync::Arc::default(),
            ledger_pool,
        };
        store.migrate(version_max).await?;
        Ok(store)
    }

    /// The ledger writer's SQLite pool, when the database is SQLite.
    pub(crate) fn ledger_pool(&self) -> Option<&sqlx::SqlitePool> {
        self.ledger_pool.as_ref()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that may write. SQLite's default transaction takes the write lock
    /// at its first write, and when another connection committed after its first read, that
    /// upgrade fails at once with SQLITE_BUSY: busy_timeout never applies. `BEGIN IMMEDIATE`
    /// takes the lock at the start, where busy_timeout waits for it.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }

    /// Closes every connection; used on shutdown so SQLite checkpoints its WAL.
    pub async fn close(&self) {
        if let Some(ledger_pool) = &self.ledger_pool {
            ledger_pool.close().await;
        }
        self.pool.close().await;
    }

    async fn migrate(&self, version_max: i64) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= version_max) {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if applied.is_some() {
                continue;
            }
            self.apply_migration(*version, sql)
                .await
                .map_err(|source| StoreError::Migration {
                    version: *version,
                    source,
                })?;
            tracing::info!(
                version,
                backend = self.backend.as_str(),
                "applied migration"
            );
        }
        Ok(())
    }

    async fn apply_migration(
        &self,
        version: i64,
        sql: &str,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The marker row goes first so that on SQLite the transaction takes the write lock
        // before anything else, and two coordinators starting at once cannot both apply it.
        sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)")
            .bind(version)
            .bind(flotilla_proto::time::now_unix_ms())
            .execute(&mut *tx)
            .await?;
        for statement in split_statements(&self.backend.dialect(sql)) {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

/// Creates a fresh PostgreSQL database named `PREFIX_RANDOM` on the server of `admin_url` (a
/// URL whose user may create databases) and returns its URL: throwaway databases for tests and
/// benchmarks.
pub async fn create_postgres_database(admin_url: &str, prefix: &str) -> Result<String> {
    use sqlx::Connection;
    let name = format!(
        "{prefix}_{}",
        flotilla_proto::id::new_id(flotilla_proto::id::IdKind::Account).trim_start_matches("usr_")
    );
    let mut conn = sqlx::postgres::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| StoreError::UnsupportedUrl("postgres url without a database".into()))?;
    Ok(format!("{base}/{name}"))
}

/// SQLite's sync setting for most writes: in WAL mode, NORMAL survives a crash of the process
/// but may lose the newest commits to a crash of the machine (never a commit in the middle).
const SQLITE_SYNCHRONOUS: &str = "NORMAL";
/// The ledger writer's sync setting: FULL syncs the WAL at every commit, so a transfer that
/// was answered survives a crash of the machine too. One sync per batch of up to 8,190
/// transfers cost about 5% of the batched rate here.
const SQLITE_LEDGER_SYNCHRONOUS: &str = "FULL";

/// Every SQLite connection's settings, as `(pragma, value)`, with `synchronous` for its
/// commits. WAL lets readers proceed beside the writer.
fn sqlite_pragmas(synchronous: &str) -> [(&'static str, String); 6] {
    [
        ("journal_mode", "WAL".to_owned()),
        ("synchronous", synchronous.to_owned()),
        ("cache_size", format!("-{SQLITE_CACHE_KIB}")),
        ("busy_timeout", SQLITE_BUSY_TIMEOUT_MS.to_string()),
        ("wal_autocheckpoint", SQLITE_CHECKPOINT_PAGES.to_string()),
        ("foreign_keys", "ON".to_owned()),
    ]
}

/// Connections to the SQLite database at `url`, set up as the main pool's are but for a sync
/// at every commit.
async fn sqlite_ledger_pool(url: &str) -> Result<sqlx::SqlitePool> {
    let mut options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    for (pragma, value) in sqlite_pragmas(SQLITE_LEDGER_SYNCHRONOUS) {
        options = options.pragma(pragma, value);
    }
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(LEDGER_SQLITE_CONNECTIONS_MAX)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Accepts `sqlite:PATH`, `sqlite://PATH`, a bare file path, or `postgres://...`.
fn normalize_url(url: &str) -> Result<(Backend, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    let path = if let Some(rest) = url.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        rest
    } else if let Some((scheme, _)) = url.split_once("://") {
        // Name only the scheme: the rest may hold a password.
        return Err(StoreError::UnsupportedUrl(scheme.to_owned()));
    } else {
        url
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let query = if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        query.to_owned()
    };
    Ok((Backend::Sqlite, format!("sqlite://{path}?{query}")))
}

/// Splits a migration into statements: drops `--` comment lines, then splits on `;`.
/// Migrations hold no semicolons inside string literals.
fn split_statements(sql: &str) -> Vec<String> {
    let code: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a column, turning a decoding failure into [`StoreError::Corrupt`].
pub(crate) fn col<'r, T>(row: &'r AnyRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// Ids bound into one `IN (...)` list at most; longer lists are read in chunks.
pub(crate) const IDS_PER_QUERY_MAX: usize = 500;

/// `$1, $2, ... $count`: the placeholders of an `IN (...)` list.
fn numbered_marks(count: usize) -> String {
    let marks: Vec<String> = (1..=count).map(|i| format!("${i}")).collect();
    marks.join(", ")
}

impl Store {
    /// The rows of `sql` for every id of `ids`: `sql` holds `{ids}` where the `IN (...)` list's
    /// placeholders go, and is run once per [`IDS_PER_QUERY_MAX`] ids (its `ORDER BY` holds
    /// within each run).
    pub(crate) async fn rows_in(&self, sql: &str, ids: &[String]) -> Result<Vec<AnyRow>> {
        let mut rows = Vec::new();
        for chunk in ids.chunks(IDS_PER_QUERY_MAX) {
            let text = sql.replace("{ids}", &numbered_marks(chunk.len()));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
            for id in chunk {
                query = query.bind(id);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
pub(crate) fn conflict_on_unique(error: sqlx::Error, what: &'static str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Database(error),
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::device::DeviceState;

    use super::*;

    #[test]
    fn urls_normalize() {
        assert_eq!(
            normalize_url("/tmp/x.db").unwrap(),
            (Backend::Sqlite, "sqlite:///tmp/x.db?mode=rwc".into())
        );
        assert_eq!(
            normalize_url("sqlite:x.db").unwrap().1,
            "sqlite://x.db?mode=rwc"
        );
        assert_eq!(
            normalize_url("postgres://u@h/db").unwrap().0,
            Backend::Postgres
        );
        assert!(normalize_url("mysql://h/db").is_err());
    }

    #[test]
    fn statements_split_and_skip_comments() {
        let sql =
            "-- c\nCREATE TABLE a (x BIGINT);\n-- only a comment;\nCREATE INDEX i ON a (x);\n";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 2, "{statements:?}");
    }

    /// A fresh SQLite store, and a fresh PostgreSQL one when the test command provides a server.
    async fn test_stores(dir: &std::path::Path) -> Vec<Store> {
        let mut stores = vec![
            Store::open(&dir.join("f.db").display().to_string())
                .await
                .unwrap(),
        ];
        if let Ok(admin) = std::env::var("FLOTILLA_TEST_POSTGRES_URL") {
            let url = create_postgres_database(&admin, "s").await.unwrap();
            stores.push(Store::open(&url).await.unwrap());
        }
        stores
    }

    /// An account with one worker (its public key is its id), for tests that need rows to hang
    /// devices and stamps on.
    async fn seed_worker(store: &Store, account_id: &str, worker_id: &str) {
        if store.account(account_id).await.unwrap().is_none() {
            let account = AccountRow {
                id: account_id.into(),
                name: "a".into(),
                roles: vec![],
                created_at_ms: 0,
            };
            store.insert_account(&account).await.unwrap();
        }
        sqlx::query(
            "INSERT INTO workers (id, account_id, name, hostname, public_key, agent_version, paused, created_at_ms) \
             VALUES ($1, $2, 'w', 'h', $1, 'v', 0, 0)",
        )
        .bind(worker_id)
        .bind(account_id)
        .execute(store.pool())
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn last_seen_stamps_apply_per_worker_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        for store in test_stores(dir.path()).await {
            stamps_apply(&store).await;
        }
    }

    async fn stamps_apply(store: &Store) {
        let mut seen = Vec::new();
        for i in 0..1000 {
            let id = format!("wrk_{i}");
            seed_worker(store, "usr_a", &id).await;
            seen.push((id, 5_000 + i64::from(i)));
        }
        store.touch_workers(&seen).await.unwrap();
        for probe in [0usize, 399, 400, 999] {
            let at: Option<i64> =
                sqlx::query_scalar("SELECT last_seen_at_ms FROM workers WHERE id = $1")
                    .bind(&seen[probe].0)
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert_eq!(at, Some(seen[probe].1));
        }
    }

    #[tokio::test]
    async fn uptime_accrues_to_connected_workers_only() {
        let dir = tempfile::tempdir().unwrap();
        for store in test_stores(dir.path()).await {
            let ids: Vec<String> = (0..450).map(|i| format!("wrk_u{i}")).collect();
            for id in &ids {
                seed_worker(&store, "usr_u", id).await;
            }
            // All but the last are connected: past one chunk of 400.
            store.account_uptime(&ids[..449], 1_000).await.unwrap();
            store.account_uptime(&ids[..1], 500).await.unwrap();
            let stats = store.worker_stats().await.unwrap();
            assert_eq!(
                (stats["wrk_u0"].up_ms, stats["wrk_u0"].observed_ms),
                (1_500, 1_500)
            );
            assert_eq!(
                (stats["wrk_u448"].up_ms, stats["wrk_u448"].observed_ms),
                (1_000, 1_500)
            );
            assert_eq!(
                (stats["wrk_u449"].up_ms, stats["wrk_u449"].observed_ms),
                (0, 1_500)
            );
            assert_eq!(stats["wrk_u0"].completed, 0);
        }
    }

    #[tokio::test]
    async fn a_telemetry_batch_may_repeat_a_bucket_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        for store in test_stores(dir.path()).await {
            seed_worker(&store, "usr_t", "wrk_t").await;
            sqlx::query(
                "INSERT INTO devices (id, account_id, worker_id, hardware_id, name, kind, model, memory_bytes, simulated, \
                 hardware, state, state_changed_at_ms, created_at_ms) \
                 VALUES ('dev_t', 'usr_t', 'wrk_t', 'h', 'd', 'gpu', 'm', 0, 0, '{}', 'idle', 0, 0)",
            )
            .execute(store.pool())
            .await
            .unwrap();
            let bucket = |samples| TelemetryBucketRow {
                device_id: "dev_t".into(),
                bucket_start_ms: 60_000,
                bucket_s: 60,
                samples,
                utilization_pct: 5,
                memory_used_bytes: 1,
                temperature_c: None,
                power_w: Some(7),
                net_rx_bytes: 0,
                net_tx_bytes: 0,
            };
            store
                .insert_telemetry(&[bucket(1), bucket(2)])
                .await
                .unwrap();
            let history = store.telemetry_history("usr_t", "dev_t", 10).await.unwrap();
            assert_eq!(history.len(), 1);
            assert_eq!(history[0].samples, 2);
            assert!(
                store
                    .telemetry_history("usr_other", "dev_t", 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "owner-scoped"
            );
        }
    }

    #[tokio::test]
    async fn a_change_that_keeps_the_state_keeps_its_start_time() {
        let dir = tempfile::tempdir().unwrap();
        for store in test_stores(dir.path()).await {
            seed_worker(&store, "usr_k", "wrk_k").await;
            let hardware = flotilla_proto::device::DeviceHardware::new(
                "h",
                flotilla_proto::device::DeviceKind::Gpu,
                "m",
                1,
            );
            let reported = [("dev_k".to_owned(), hardware, DeviceState::Down)];
            store
                .upsert_reported_devices("usr_k", "wrk_k", &reported, 1_000)
                .await
                .unwrap();
            let pause_while_down = DeviceStateChange {
                device_id: "dev_k".into(),
                from: DeviceState::Down,
                to: DeviceState::Down,
                state_before_down: Some(DeviceState::Paused),
            };
            store
                .apply_device_state_changes(&[pause_while_down], 9_000)
                .await
                .unwrap();
            let row = store.device("usr_k", "dev_k").await.unwrap().unwrap();
            assert_eq!(
                (row.state_changed_at_ms, row.state_before_down),
                (1_000, Some(DeviceState::Paused))
            );
            let back = DeviceStateChange {
                device_id: "dev_k".into(),
                from: DeviceState::Down,
                to: DeviceState::Paused,
                state_before_down: None,
            };
            store
                .apply_device_state_changes(&[back], 9_500)
                .await
                .unwrap();
            assert_eq!(
                store
                    .device("usr_k", "dev_k")
                    .await
                    .unwrap()
                    .unwrap()
                    .state_changed_at_ms,
                9_500
            );
        }
    }

    #[tokio::test]
    async fn migrates_twice_without_error() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("f.db").display().to_string();
        Store::open(&url).await.unwrap().close().await;
        let store = Store::open(&url).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(count, MIGRATIONS.len() as i64);
    }

    /// Both SQLite pools, the main one and the ledger writer's, run with the same settings,
    /// but for the ledger's sync at every commit (FULL, 2; NORMAL is 1).
    #[tokio::test]
    async fn sqlite_connections_of_both_pools_share_their_settings() {
        async fn settings<'c, E>(connection: E) -> Vec<String>
        where
            E: sqlx::Executor<'c> + Copy,
            i64: sqlx::Type<E::Database> + for<'r> sqlx::Decode<'r, E::Database>,
            String: sqlx::Type<E::Database> + for<'r> sqlx::Decode<'r, E::Database>,
            <E::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<E::Database>,
            (i64,): for<'r> sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
            (String,): for<'r> sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
        {
            let mut found = Vec::new();
            for (pragma, _) in sqlite_pragmas(SQLITE_SYNCHRONOUS) {
                let sql = format!("PRAGMA {pragma}");
                let value = if pragma == "journal_mode" {
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(connection)
                        .await
                        .unwrap()
                } else {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(connection)
                        .await
                        .unwrap()
                        .to_string()
                };
                found.push(format!("{pragma}={value}"));
            }
            found
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db").display().to_string())
            .await
            .unwrap();
        let mut expected: Vec<String> = [
            "journal_mode=wal".to_owned(),
            "synchronous=1".to_owned(),
            format!("cache_size=-{SQLITE_CACHE_KIB}"),
            format!("busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"),
            format!("wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}"),
            "foreign_keys=1".to_owned(),
        ]
        .into();
        assert_eq!(settings(store.pool()).await, expected);
        expected[1] = "synchronous=2".to_owned();
        assert_eq!(settings(store.ledger_pool().unwrap()).await, expected);
    }

    /// Migration 13 chains the entries written before it: each owner's history, walked along
    /// the new chains, is what the owner indexes it drops answered.
    #[tokio::test]
    async fn ledger_entries_written_before_chains_are_chained() {
        let dir = tempfile::tempdir().unwrap();
        let mut urls = vec![dir.path().join("f.db").display().to_string()];
        if let Ok(admin) = std::env::var("FLOTILLA_TEST_POSTGRES_URL") {
            urls.push(create_postgres_database(&admin, "m").await.unwrap());
        }
        // (debit owner, credit owner) of entries 1.., '' for a record.
        let sides = [
            ("system", "usr_a"),
            ("usr_a", "usr_b"),
            ("", ""),
            ("usr_b", "usr_b"),
            ("usr_c", "usr_a"),
            ("usr_b", "usr_c"),
        ];
        for url in urls {
            let old = Store::open_through(&url, 12).await.unwrap();
            for (index, (debit, credit)) in sides.iter().enumerate() {
                let seq = index as i64 + 1;
                sqlx::query(
                    "INSERT INTO ledger_entries (seq, id, digest, at_ms, debit_owner, credit_owner, body, hash) \
                     VALUES ($1, $2, 'd', $3, $4, $5, '{}', 'h')",
                )
                .bind(seq)
                .bind(format!("t{seq}"))
                .bind(seq * 10)
                .bind(*debit)
                .bind(*credit)
                .execute(old.pool())
                .await
                .unwrap();
            }
            for owner in ["usr_a", "usr_b", "usr_c"] {
                sqlx::query(
                    "INSERT INTO ledger_accounts (id, owner, token, posted, held) VALUES ($1, $2, 'IO', 0, 0)",
                )
                .bind(format!("{owner}:main:IO"))
                .bind(owner)
                .execute(old.pool())
                .await
                .unwrap();
            }
            old.close().await;
            let store = Store::open(&url).await.unwrap();
            let seqs = |rows: Vec<ledger::LedgerEntryRow>| -> Vec<u64> {
                rows.iter().map(|r| r.seq).collect()
            };
            let top = u64::MAX >> 1;
            assert_eq!(
                seqs(store.ledger_history("usr_a", top, 9).await.unwrap()),
                [5, 2, 1]
            );
            assert_eq!(
                seqs(store.ledger_history("usr_b", top, 9).await.unwrap()),
                [6, 4, 2]
            );
            assert_eq!(
                seqs(store.ledger_history("usr_b", 6, 1).await.unwrap()),
                [4]
            );
            assert_eq!(
                seqs(store.ledger_history("usr_c", top, 9).await.unwrap()),
                [6, 5]
            );
            assert_eq!(
                seqs(
                    store
                        .ledger_owner_entries_after("usr_a", 1, 0, 9)
                        .await
                        .unwrap()
                ),
                [2, 5]
            );
            // Dated from 30 on: the walk stops at entry 2 (dated 20).
            assert_eq!(
                seqs(
                    store
                        .ledger_owner_entries_after("usr_a", 0, 30, 9)
                        .await
                        .unwrap()
                ),
                [5]
            );
            let accounts = store.ledger_accounts_of("usr_c").await.unwrap();
            assert_eq!(accounts[0].owner_last_seq, 6);
            store.close().await;
        }
    }
}
