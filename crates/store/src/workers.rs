//! Enrollment tokens and workers.

use sqlx::any::AnyRow;

use crate::{Result, Store, col, conflict_on_unique};

#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentTokenRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
    pub used_by_worker_id: Option<String>,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub hostname: String,
    pub public_key: String,
    pub agent_version: String,
    pub paused: bool,
    pub created_at_ms: i64,
    pub last_seen_at_ms: Option<i64>,
    pub removed_at_ms: Option<i64>,
    /// Devices not removed.
    pub device_count: u32,
    /// Where it is (empty until the supplier says) and its connectivity tier.
    pub region: String,
    pub country: String,
    pub tier: String,
}

/// Workers stamped by one UPDATE (two binds each).
pub(crate) const WORKERS_PER_TOUCH_MAX: usize = 400;

const TOKEN_COLUMNS: &str = "id, account_id, name, created_at_ms, expires_at_ms, used_at_ms, used_by_worker_id, revoked_at_ms";

const WORKER_COLUMNS: &str = "w.id, w.account_id, w.name, w.hostname, w.public_key, w.agent_version, w.paused, \
     w.created_at_ms, w.last_seen_at_ms, w.removed_at_ms, w.region, w.country, w.tier, \
     (SELECT COUNT(*) FROM devices d WHERE d.worker_id = w.id AND d.removed_at_ms IS NULL) AS device_count";

fn token_from(row: &AnyRow) -> Result<EnrollmentTokenRow> {
    Ok(EnrollmentTokenRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        name: col(row, "name")?,
        created_at_ms: col(row, "created_at_ms")?,
        expires_at_ms: col(row, "expires_at_ms")?,
        used_at_ms: col(row, "used_at_ms")?,
        used_by_worker_id: col(row, "used_by_worker_id")?,
        revoked_at_ms: col(row, "revoked_at_ms")?,
    })
}

fn worker_from(row: &AnyRow) -> Result<WorkerRow> {
    Ok(WorkerRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        name: col(row, "name")?,
        hostname: col(row, "hostname")?,
        public_key: col(row, "public_key")?,
        agent_version: col(row, "agent_version")?,
        paused: col::<i64>(row, "paused")? != 0,
        created_at_ms: col(row, "created_at_ms")?,
        last_seen_at_ms: col(row, "last_seen_at_ms")?,
        removed_at_ms: col(row, "removed_at_ms")?,
        device_count: u32::try_from(col::<i64>(row, "device_count")?).unwrap_or(u32::MAX),
        region: col(row, "region")?,
        country: col(row, "country")?,
        tier: col(row, "tier")?,
    })
}

impl Store {
    pub async fn insert_enrollment_token(
        &self,
        token: &EnrollmentTokenRow,
        secret_hash: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, account_id, name, secret_hash, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token.id)
        .bind(&token.account_id)
        .bind(&token.name)
        .bind(secret_hash)
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_enrollment_tokens(
        &self,
        account_id: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EnrollmentTokenRow>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from).collect()
    }

    pub async fn enrollment_token(
        &self,
        account_id: &str,
        token_id: &str,
    ) -> Result<Option<EnrollmentTokenRow>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = $1 AND account_id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from).transpose()
    }

    /// The account that created the token with this hash, whatever its state: for rate limits.
    pub async fn enrollment_token_owner(&self, secret_hash: &str) -> Result<Option<String>> {
        let owner =
            sqlx::query_scalar("SELECT account_id FROM enrollment_tokens WHERE secret_hash = $1")
                .bind(secret_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(owner)
    }

    /// Revokes an unused token. Returns the token as it is now, or None if the account has none
    /// with this id.
    pub async fn revoke_enrollment_token(
        &self,
        account_id: &str,
        token_id: &str,
        now_ms: i64,
    ) -> Result<Option<EnrollmentTokenRow>> {
        sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at_ms = $1 \
             WHERE id = $2 AND account_id = $3 AND revoked_at_ms IS NULL AND used_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(token_id)
        .bind(account_id)
        .execute(&self.pool)
        .await?;
        self.enrollment_token(account_id, token_id).await
    }

    /// Uses a token and creates the worker, atomically: the token is consumed only if it is
    /// live (unused, unrevoked, unexpired), and the worker exists only if the token was consumed.
    /// Returns None when the token is not live.
    pub async fn enroll_worker(
        &self,
        token_hash: &str,
        worker: &WorkerRow,
        now_ms: i64,
    ) -> Result<Option<WorkerRow>> {
        let mut tx = self.begin_write().await?;
        // A single conditional UPDATE takes the token, so two workers racing on one token
        // cannot both succeed on either database.
        let taken: Option<String> = sqlx::query_scalar(
            "UPDATE enrollment_tokens SET used_at_ms = $1, used_by_worker_id = $2 \
             WHERE secret_hash = $3 AND used_at_ms IS NULL AND revoked_at_ms IS NULL AND expires_at_ms > $1 \
             RETURNING account_id",
        )
        .bind(now_ms)
        .bind(&worker.id)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(account_id) = taken else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO workers (id, account_id, name, hostname, public_key, agent_version, paused, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(&worker.id)
        .bind(&account_id)
        .bind(&worker.name)
        .bind(&worker.hostname)
        .bind(&worker.public_key)
        .bind(&worker.agent_version)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "a worker with this public key"))?;
        tx.commit().await?;
        Ok(Some(WorkerRow {
            account_id,
            created_at_ms: now_ms,
            ..worker.clone()
        }))
    }

    /// A worker by id, whoever owns it: for the control channel, which authenticates by key.
    pub async fn worker_for_session(&self, worker_id: &str) -> Result<Option<WorkerRow>> {
        let sql = format!(
            "SELECT {WORKER_COLUMNS} FROM workers w WHERE w.id = $1 AND w.removed_at_ms IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(worker_from).transpose()
    }

    /// The account owning a worker (removed or not): who is paid for its work.
    pub async fn worker_owner(&self, worker_id: &str) -> Result<Option<String>> {
        let owner = sqlx::query_scalar("SELECT account_id FROM workers WHERE id = $1")
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(owner)
    }

    pub async fn worker(&self, account_id: &str, worker_id: &str) -> Result<Option<WorkerRow>> {
        let sql = format!(
            "SELECT {WORKER_COLUMNS} FROM workers w WHERE w.id = $1 AND w.account_id = $2 AND w.removed_at_ms IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(worker_from).transpose()
    }

    pub async fn list_workers(
        &self,
        account_id: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WorkerRow>> {
        let sql = format!(
            "SELECT {WORKER_COLUMNS} FROM workers w WHERE w.account_id = $1 AND w.removed_at_ms IS NULL AND w.id > $2 \
             ORDER BY w.id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(worker_from).collect()
    }

    /// Records what a worker said at Hello.
    pub async fn update_worker_hello(
        &self,
        worker_id: &str,
        hostname: &str,
        agent_version: &str,
        containers: bool,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE workers SET hostname = $1, agent_version = $2, last_seen_at_ms = $3, containers = $4 WHERE id = $5")
            .bind(hostname)
            .bind(agent_version)
            .bind(now_ms)
            .bind(i64::from(containers))
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        self.market_changed();
        Ok(())
    }

    /// Renames a worker the account owns; false if it owns none with this id.
    pub async fn rename_worker(
        &self,
        account_id: &str,
        worker_id: &str,
        name: &str,
    ) -> Result<bool> {
        let done = sqlx::query("UPDATE workers SET name = $1 WHERE id = $2 AND account_id = $3 AND removed_at_ms IS NULL")
            .bind(name)
            .bind(worker_id)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_worker_paused(
        &self,
        account_id: &str,
        worker_id: &str,
        paused: bool,
    ) -> Result<bool> {
        let done = sqlx::query("UPDATE workers SET paused = $1 WHERE id = $2 AND account_id = $3 AND removed_at_ms IS NULL")
            .bind(i64::from(paused))
            .bind(worker_id)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        self.market_changed();
        Ok(done.rows_affected() == 1)
    }

    /// Removes a worker and its devices. Its key can no longer open a session.
    pub async fn remove_worker(
        &self,
        account_id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE workers SET removed_at_ms = $1 WHERE id = $2 AND account_id = $3 AND removed_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(worker_id)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE devices SET removed_at_ms = $1 WHERE worker_id = $2 AND removed_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(worker_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.market_changed();
        Ok(true)
    }

    /// Stamps last-seen times for many workers at once (flushed periodically, not per beat).
    pub async fn touch_workers(&self, seen: &[(String, i64)]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // One statement per chunk rather than per worker: at 10,000 workers this write is the
        // coordinator's largest periodic cost.
        for chunk in seen.chunks(WORKERS_PER_TOUCH_MAX) {
            let mut cases = String::new();
            let mut ids = String::new();
            for i in 0..chunk.len() {
                let (id, at) = (2 * i + 1, 2 * i + 2);
                cases.push_str(&format!(" WHEN ${id} THEN ${at}"));
                ids.push_str(&format!("{}${id}", if i == 0 { "" } else { ", " }));
            }
            let sql = format!(
                "UPDATE workers SET last_seen_at_ms = CASE id{cases} END WHERE id IN ({ids})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (worker_id, at_ms) in chunk {
                query = query.bind(worker_id.clone()).bind(*at_ms);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
