//! Clusters (a request plus the work its nodes run), their node runs, and the runs' output.

use std::collections::HashMap;

use sqlx::any::AnyRow;

use crate::{RequestRow, Result, Store, col, conflict_on_unique, to_i64, to_u64};

pub const CLUSTER_DEPLOYING: &str = "deploying";
pub const CLUSTER_RUNNING: &str = "running";
/// A run waiting for its worker to start it.
pub const RUN_ASSIGNED: &str = "assigned";
pub const RUN_RUNNING: &str = "running";
/// Exited 0.
pub const RUN_EXITED: &str = "exited";
/// Exited otherwise, or could not start.
pub const RUN_FAILED: &str = "failed";
/// Stopped by the coordinator (the cluster ended).
pub const RUN_STOPPED: &str = "stopped";
/// Its worker was lost: fenced, any later report from it is refused.
pub const RUN_LOST: &str = "lost";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub kind: String,
    /// The spec without secret values (JSON).
    pub spec: String,
    /// Secret environment values (JSON object).
    pub secret_env: String,
    pub state: String,
    pub ended_because: String,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    pub running_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: String,
    pub cluster_id: String,
    pub node_rank: u32,
    pub attempt: u32,
    pub worker_id: String,
    pub node_index: u32,
    pub state: String,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub log_bytes: u64,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

impl RunRow {
    /// Assigned or running: the worker should be running it.
    pub fn is_live(&self) -> bool {
        self.state == RUN_ASSIGNED || self.state == RUN_RUNNING
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub seq: i64,
    pub run_id: String,
    pub node_rank: u32,
    pub attempt: u32,
    pub stream: String,
    pub at_ms: i64,
    pub text: String,
}

const CLUSTER_COLUMNS: &str = "id, account_id, name, kind, spec, secret_env, state, ended_because, \
     idempotency_key, created_at_ms, running_at_ms, ended_at_ms";
const RUN_COLUMNS: &str = "id, cluster_id, node_rank, attempt, worker_id, node_index, state, \
     exit_code, reason, log_bytes, created_at_ms, started_at_ms, ended_at_ms";

fn small(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn cluster_from(row: &AnyRow) -> Result<ClusterRow> {
    Ok(ClusterRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        name: col(row, "name")?,
        kind: col(row, "kind")?,
        spec: col(row, "spec")?,
        secret_env: col(row, "secret_env")?,
        state: col(row, "state")?,
        ended_because: col(row, "ended_because")?,
        idempotency_key: col(row, "idempotency_key")?,
        created_at_ms: col(row, "created_at_ms")?,
        running_at_ms: col(row, "running_at_ms")?,
        ended_at_ms: col(row, "ended_at_ms")?,
    })
}

fn run_from(row: &AnyRow) -> Result<RunRow> {
    Ok(RunRow {
        id: col(row, "id")?,
        cluster_id: col(row, "cluster_id")?,
        node_rank: small(col(row, "node_rank")?),
        attempt: small(col(row, "attempt")?),
        worker_id: col(row, "worker_id")?,
        node_index: small(col(row, "node_index")?),
        state: col(row, "state")?,
        exit_code: col::<Option<i64>>(row, "exit_code")?.and_then(|c| i32::try_from(c).ok()),
        reason: col(row, "reason")?,
        log_bytes: to_u64(col(row, "log_bytes")?),
        created_at_ms: col(row, "created_at_ms")?,
        started_at_ms: col(row, "started_at_ms")?,
        ended_at_ms: col(row, "ended_at_ms")?,
    })
}

impl Store {
    /// Stores a new cluster and its request in one transaction.
    pub async fn insert_cluster(&self, request: &RequestRow, cluster: &ClusterRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO requests (id, account_id, spec, state, reason, attempt, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&request.id)
        .bind(&request.account_id)
        .bind(&request.spec)
        .bind(&request.state)
        .bind(&request.reason)
        .bind(i64::from(request.attempt))
        .bind(request.created_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO clusters (id, account_id, name, kind, spec, secret_env, state, ended_because, \
             idempotency_key, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&cluster.id)
        .bind(&cluster.account_id)
        .bind(&cluster.name)
        .bind(&cluster.kind)
        .bind(&cluster.spec)
        .bind(&cluster.secret_env)
        .bind(&cluster.state)
        .bind(&cluster.ended_because)
        .bind(&cluster.idempotency_key)
        .bind(cluster.created_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The account's cluster deployed with this idempotency key, if any.
    pub async fn cluster_by_idempotency_key(
        &self,
        account_id: &str,
        key: &str,
    ) -> Result<Option<ClusterRow>> {
        let sql = format!(
            "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE account_id = $1 AND idempotency_key = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from).transpose()
    }

    /// The account's cluster (none if it is another account's).
    pub async fn cluster(&self, account_id: &str, cluster_id: &str) -> Result<Option<ClusterRow>> {
        let sql =
            format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = $1 AND account_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cluster_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from).transpose()
    }

    /// A cluster by id alone, for the coordinator's own loops.
    pub async fn cluster_by_id(&self, cluster_id: &str) -> Result<Option<ClusterRow>> {
        let sql = format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cluster_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from).transpose()
    }

    /// The account's clusters in id order after `after_id`.
    pub async fn list_clusters(
        &self,
        account_id: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ClusterRow>> {
        let sql = format!(
            "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(cluster_from).collect()
    }

    /// Clusters not ended, oldest first.
    pub async fn live_clusters(&self, limit: u32) -> Result<Vec<ClusterRow>> {
        let sql = format!(
            "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE state IN ($1, $2) ORDER BY created_at_ms, id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(CLUSTER_DEPLOYING)
            .bind(CLUSTER_RUNNING)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(cluster_from).collect()
    }

    /// Marks a deploying cluster running.
    pub async fn set_cluster_running(&self, cluster_id: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE clusters SET state = $1, running_at_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(CLUSTER_RUNNING)
        .bind(now_ms)
        .bind(cluster_id)
        .bind(CLUSTER_DEPLOYING)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a live cluster in `state`, and every live run of it as stopped; false when it had
    /// ended already. Returns the workers that were running its live runs.
    pub async fn end_cluster(
        &self,
        cluster_id: &str,
        state: &str,
        because: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE clusters SET state = $1, ended_because = $2, ended_at_ms = $3 \
             WHERE id = $4 AND state IN ($5, $6)",
        )
        .bind(state)
        .bind(because)
        .bind(now_ms)
        .bind(cluster_id)
        .bind(CLUSTER_DEPLOYING)
        .bind(CLUSTER_RUNNING)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let workers: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT worker_id FROM node_runs WHERE cluster_id = $1 AND state IN ($2, $3)",
        )
        .bind(cluster_id)
        .bind(RUN_ASSIGNED)
        .bind(RUN_RUNNING)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE node_runs SET state = $1, reason = $2, ended_at_ms = $3 \
             WHERE cluster_id = $4 AND state IN ($5, $6)",
        )
        .bind(RUN_STOPPED)
        .bind("stopped")
        .bind(now_ms)
        .bind(cluster_id)
        .bind(RUN_ASSIGNED)
        .bind(RUN_RUNNING)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(workers))
    }

    /// Replaces a cluster's spec and its request's (an extension's new hours).
    pub async fn set_cluster_specs(
        &self,
        cluster_id: &str,
        cluster_spec: &str,
        request_spec: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE clusters SET spec = $1 WHERE id = $2")
            .bind(cluster_spec)
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE requests SET spec = $1 WHERE id = $2")
            .bind(request_spec)
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_runs(&self, runs: &[RunRow]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for run in runs {
            insert_run(&mut tx, run)
                .await
                .map_err(|e| conflict_on_unique(e, "run attempt"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every run of these clusters, by cluster, in rank and attempt order.
    pub async fn runs_of(&self, cluster_ids: &[String]) -> Result<HashMap<String, Vec<RunRow>>> {
        let mut by_cluster: HashMap<String, Vec<RunRow>> = HashMap::new();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM node_runs WHERE cluster_id IN ({{ids}}) \
                 ORDER BY cluster_id, node_rank, attempt"
        );
        for row in self.rows_in(&sql, cluster_ids).await? {
            let run = run_from(&row)?;
            by_cluster
                .entry(run.cluster_id.clone())
                .or_default()
                .push(run);
        }
        Ok(by_cluster)
    }

    /// Every run of one cluster, in rank and attempt order.
    pub async fn runs_of_cluster(&self, cluster_id: &str) -> Result<Vec<RunRow>> {
        let mut by_cluster = self.runs_of(&[cluster_id.to_owned()]).await?;
        Ok(by_cluster.remove(cluster_id).unwrap_or_default())
    }

    /// The node runs that held one of the account's devices (through their node's
    /// placement), newest first, at most `limit`.
    pub async fn device_runs(
        &self,
        account_id: &str,
        device_id: &str,
        limit: u32,
    ) -> Result<Vec<RunRow>> {
        let columns: Vec<String> = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("r.{c} AS {c}"))
            .collect();
        let sql = format!(
            "SELECT DISTINCT {} FROM node_runs r JOIN placements p ON p.request_id = r.cluster_id \
             AND p.node_index = r.node_index AND p.worker_id = r.worker_id \
             JOIN devices d ON d.id = p.device_id \
             WHERE p.device_id = $1 AND d.account_id = $2 ORDER BY created_at_ms DESC, id DESC LIMIT $3",
            columns.join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device_id)
            .bind(account_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from).collect()
    }

    /// The GPU models each of these clusters holds now, by cluster (public facts, for the
    /// Explorer).
    pub async fn cluster_models(
        &self,
        cluster_ids: &[String],
    ) -> Result<HashMap<String, Vec<String>>> {
        let mut by_cluster: HashMap<String, Vec<String>> = HashMap::new();
        let sql = "SELECT DISTINCT p.request_id AS request_id, d.model AS model FROM placements p \
                 JOIN devices d ON d.id = p.device_id WHERE p.request_id IN ({ids}) \
                 AND p.released_at_ms IS NULL ORDER BY request_id, model";
        for row in self.rows_in(sql, cluster_ids).await? {
            by_cluster
                .entry(col(&row, "request_id")?)
                .or_default()
                .push(col(&row, "model")?);
        }
        Ok(by_cluster)
    }

    /// The runs a worker should be running now.
    pub async fn live_runs_of_worker(&self, worker_id: &str) -> Result<Vec<RunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM node_runs WHERE worker_id = $1 AND state IN ($2, $3) ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker_id)
            .bind(RUN_ASSIGNED)
            .bind(RUN_RUNNING)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from).collect()
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM node_runs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from).transpose()
    }

    /// Marks an assigned run running; false when it is not assigned any more.
    pub async fn set_run_started(&self, run_id: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE node_runs SET state = $1, started_at_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(RUN_RUNNING)
        .bind(now_ms)
        .bind(run_id)
        .bind(RUN_ASSIGNED)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a live run; false when it was not live any more.
    pub async fn end_run(
        &self,
        run_id: &str,
        state: &str,
        exit_code: Option<i32>,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE node_runs SET state = $1, exit_code = $2, reason = $3, ended_at_ms = $4 \
             WHERE id = $5 AND state IN ($6, $7)",
        )
        .bind(state)
        .bind(exit_code.map(i64::from))
        .bind(reason)
        .bind(now_ms)
        .bind(run_id)
        .bind(RUN_ASSIGNED)
        .bind(RUN_RUNNING)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves runs off nodes that are no longer placed, in one transaction: each old run still
    /// live is fenced as lost (its worker's late reports are then refused) and its successor is
    /// inserted. A second mover of the same rank and attempt gets [`crate::StoreError::Conflict`].
    pub async fn move_runs(&self, moves: &[(String, RunRow)], now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (old_run_id, successor) in moves {
            sqlx::query(
                "UPDATE node_runs SET state = $1, reason = $2, ended_at_ms = $3 \
                 WHERE id = $4 AND state IN ($5, $6)",
            )
            .bind(RUN_LOST)
            .bind("worker_lost")
            .bind(now_ms)
            .bind(old_run_id)
            .bind(RUN_ASSIGNED)
            .bind(RUN_RUNNING)
            .execute(&mut *tx)
            .await?;
            insert_run(&mut tx, successor)
                .await
                .map_err(|e| conflict_on_unique(e, "run attempt"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rates one node's supplier (again replaces the rating).
    pub async fn rate_node(
        &self,
        cluster_id: &str,
        node_rank: u32,
        worker_id: &str,
        stars: u8,
        comment: &str,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM node_ratings WHERE cluster_id = $1 AND node_rank = $2")
            .bind(cluster_id)
            .bind(i64::from(node_rank))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO node_ratings (cluster_id, node_rank, worker_id, stars, comment, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(cluster_id)
        .bind(i64::from(node_rank))
        .bind(worker_id)
        .bind(i64::from(stars))
        .bind(comment)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // A rating is the worker's feedback, which its offers show.
        self.market_changed();
        Ok(())
    }

    /// A cluster's ratings: rank -> (stars, comment).
    pub async fn node_ratings(&self, cluster_id: &str) -> Result<HashMap<u32, (u8, String)>> {
        let mut by_cluster = self.node_ratings_of(&[cluster_id.to_owned()]).await?;
        Ok(by_cluster.remove(cluster_id).unwrap_or_default())
    }

    /// Several clusters' ratings at once: cluster -> rank -> (stars, comment).
    pub async fn node_ratings_of(
        &self,
        cluster_ids: &[String],
    ) -> Result<HashMap<String, HashMap<u32, (u8, String)>>> {
        let mut by_cluster: HashMap<String, HashMap<u32, (u8, String)>> = HashMap::new();
        let sql = "SELECT cluster_id, node_rank, stars, comment FROM node_ratings WHERE cluster_id IN ({ids})";
        for row in self.rows_in(sql, cluster_ids).await? {
            let stars = u8::try_from(col::<i64>(&row, "stars")?).unwrap_or(0);
            by_cluster
                .entry(col(&row, "cluster_id")?)
                .or_default()
                .insert(
                    small(col(&row, "node_rank")?),
                    (stars, col(&row, "comment")?),
                );
        }
        Ok(by_cluster)
    }

    /// Keeps a node's newest checkpoint (replacing the one before).
    pub async fn put_checkpoint(&self, run: &RunRow, data: &[u8], now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM checkpoints WHERE cluster_id = $1 AND node_rank = $2")
            .bind(&run.cluster_id)
            .bind(i64::from(run.node_rank))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO checkpoints (cluster_id, node_rank, run_id, attempt, bytes, data, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&run.cluster_id)
        .bind(i64::from(run.node_rank))
        .bind(&run.id)
        .bind(i64::from(run.attempt))
        .bind(to_i64(data.len() as u64))
        .bind(data.to_vec())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A node's newest checkpoint, from any of its runs.
    pub async fn checkpoint(&self, cluster_id: &str, node_rank: u32) -> Result<Option<Vec<u8>>> {
        let data: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM checkpoints WHERE cluster_id = $1 AND node_rank = $2",
        )
        .bind(cluster_id)
        .bind(i64::from(node_rank))
        .fetch_optional(&self.pool)
        .await?;
        Ok(data)
    }

    /// Drops an ended cluster's checkpoints.
    pub async fn delete_checkpoints(&self, cluster_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM checkpoints WHERE cluster_id = $1")
            .bind(cluster_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Host names of these workers, by id.
    pub async fn worker_hostnames(&self, worker_ids: &[String]) -> Result<HashMap<String, String>> {
        let mut hosts = HashMap::new();
        for worker_id in worker_ids {
            if hosts.contains_key(worker_id) {
                continue;
            }
            let host: Option<String> =
                sqlx::query_scalar("SELECT hostname FROM workers WHERE id = $1")
                    .bind(worker_id)
                    .fetch_optional(&self.pool)
                    .await?;
            hosts.insert(worker_id.clone(), host.unwrap_or_default());
        }
        Ok(hosts)
    }

    /// Appends a run's output, keeping at most `run_bytes_max` of it: past that the oldest
    /// chunks go, down to three quarters of the bound, so trimming is rare.
    pub async fn append_log(
        &self,
        run: &RunRow,
        stream: &str,
        text: &str,
        now_ms: i64,
        run_bytes_max: u64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO node_logs (cluster_id, run_id, node_rank, attempt, stream, at_ms, text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&run.cluster_id)
        .bind(&run.id)
        .bind(i64::from(run.node_rank))
        .bind(i64::from(run.attempt))
        .bind(stream)
        .bind(now_ms)
        .bind(text)
        .execute(&mut *tx)
        .await?;
        let stored: i64 = sqlx::query_scalar(
            "UPDATE node_runs SET log_bytes = log_bytes + $1 WHERE id = $2 RETURNING log_bytes",
        )
        .bind(to_i64(text.len() as u64))
        .bind(&run.id)
        .fetch_one(&mut *tx)
        .await?;
        if to_u64(stored) > run_bytes_max {
            trim_log(&mut tx, &run.id, to_u64(stored), run_bytes_max / 4 * 3).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A cluster's output after `after_seq`, of one rank or all, in order.
    pub async fn logs(
        &self,
        cluster_id: &str,
        after_seq: i64,
        node_rank: Option<u32>,
        limit: u32,
    ) -> Result<Vec<LogRow>> {
        let rank_filter = if node_rank.is_some() {
            "AND node_rank = $4"
        } else {
            "AND $4 = $4"
        };
        let sql = format!(
            "SELECT seq, run_id, node_rank, attempt, stream, at_ms, text FROM node_logs \
             WHERE cluster_id = $1 AND seq > $2 {rank_filter} ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cluster_id)
            .bind(after_seq)
            .bind(i64::from(limit))
            .bind(i64::from(node_rank.unwrap_or(0)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LogRow {
                    seq: col(row, "seq")?,
                    run_id: col(row, "run_id")?,
                    node_rank: small(col(row, "node_rank")?),
                    attempt: small(col(row, "attempt")?),
                    stream: col(row, "stream")?,
                    at_ms: col(row, "at_ms")?,
                    text: col(row, "text")?,
                })
            })
            .collect()
    }
}

/// Deletes a run's oldest output until at most `keep_bytes` remain.
async fn trim_log(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: &str,
    stored_bytes: u64,
    keep_bytes: u64,
) -> Result<()> {
    let oldest = sqlx::query("SELECT seq, text FROM node_logs WHERE run_id = $1 ORDER BY seq")
        .bind(run_id)
        .fetch_all(&mut **tx)
        .await?;
    let mut left = stored_bytes;
    let mut last_dropped = None;
    for row in &oldest {
        if left <= keep_bytes {
            break;
        }
        let text: String = col(row, "text")?;
        left = left.saturating_sub(text.len() as u64);
        last_dropped = Some(col::<i64>(row, "seq")?);
    }
    let Some(through) = last_dropped else {
        return Ok(());
    };
    sqlx::query("DELETE FROM node_logs WHERE run_id = $1 AND seq <= $2")
        .bind(run_id)
        .bind(through)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE node_runs SET log_bytes = $1 WHERE id = $2")
        .bind(to_i64(left))
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_run(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    run: &RunRow,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO node_runs (id, cluster_id, node_rank, attempt, worker_id, node_index, \
         state, reason, log_bytes, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)",
    )
    .bind(&run.id)
    .bind(&run.cluster_id)
    .bind(i64::from(run.node_rank))
    .bind(i64::from(run.attempt))
    .bind(&run.worker_id)
    .bind(i64::from(run.node_index))
    .bind(&run.state)
    .bind(&run.reason)
    .bind(run.created_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
