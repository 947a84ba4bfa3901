//! Renters' requests and their placements.

use sqlx::any::AnyRow;

use crate::{Result, Store, col, to_i64, to_u64};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: String,
    pub account_id: String,
    /// The request as written (JSON).
    pub spec: String,
    pub state: String,
    /// Why it waits (JSON), empty before the first pass.
    pub reason: String,
    pub attempt: u32,
    pub created_at_ms: i64,
    pub placed_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// The renter's feedback, thousandths of a star.
    pub feedback_milli: Option<u32>,
    /// A paid rental's minutes metered so far.
    pub metered_minutes: u64,
}

/// One device a placement holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRow {
    pub device_id: String,
    pub worker_id: String,
    pub node_index: u32,
    pub attempt: u32,
    pub price_per_hour: u64,
}

pub const REQUEST_QUEUED: &str = "queued";
pub const REQUEST_PLACED: &str = "placed";
pub const REQUEST_CANCELLED: &str = "cancelled";
/// A paid rental that ran its hours.
pub const REQUEST_COMPLETED: &str = "completed";

const REQUEST_COLUMNS: &str = "id, account_id, spec, state, reason, attempt, created_at_ms, \
     placed_at_ms, ended_at_ms, feedback_milli, metered_minutes";

fn request_from(row: &AnyRow) -> Result<RequestRow> {
    Ok(RequestRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        spec: col(row, "spec")?,
        state: col(row, "state")?,
        reason: col(row, "reason")?,
        attempt: u32::try_from(col::<i64>(row, "attempt")?).unwrap_or(0),
        created_at_ms: col(row, "created_at_ms")?,
        placed_at_ms: col(row, "placed_at_ms")?,
        ended_at_ms: col(row, "ended_at_ms")?,
        feedback_milli: col::<Option<i64>>(row, "feedback_milli")?
            .and_then(|f| u32::try_from(f).ok()),
        metered_minutes: to_u64(col(row, "metered_minutes")?),
    })
}

/// Releases every device a request still holds, inside the caller's transaction.
async fn release_placements(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    request_id: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE placements SET released_at_ms = $1 WHERE request_id = $2 AND released_at_ms IS NULL",
    )
    .bind(now_ms)
    .bind(request_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts a request's placement rows, all as `attempt`, inside the caller's transaction.
async fn insert_placements(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    request_id: &str,
    attempt: i64,
    placements: &[PlacementRow],
) -> Result<()> {
    for placement in placements {
        sqlx::query(
            "INSERT INTO placements (request_id, device_id, worker_id, node_index, attempt, price_per_hour) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(request_id)
        .bind(&placement.device_id)
        .bind(&placement.worker_id)
        .bind(i64::from(placement.node_index))
        .bind(attempt)
        .bind(to_i64(placement.price_per_hour))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    pub async fn insert_request(&self, request: &RequestRow) -> Result<()> {
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The account's queued requests.
    pub async fn queued_request_count(&self, account_id: &str) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests WHERE account_id = $1 AND state = $2",
        )
        .bind(account_id)
        .bind(REQUEST_QUEUED)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(count))
    }

    pub async fn request(&self, account_id: &str, request_id: &str) -> Result<Option<RequestRow>> {
        let sql =
            format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1 AND account_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(request_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from).transpose()
    }

    /// The account's requests in id order after `after_id`.
    pub async fn list_requests(
        &self,
        account_id: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(request_from).collect()
    }

    /// Every queued request, oldest first, at most `limit`.
    pub async fn queued_requests(&self, limit: u32) -> Result<Vec<RequestRow>> {
        self.requests_in_state(REQUEST_QUEUED, limit).await
    }

    /// Requests in `state`, oldest first.
    pub async fn requests_in_state(&self, state: &str, limit: u32) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE state = $1 ORDER BY created_at_ms, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(state)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(request_from).collect()
    }

    /// Requests that ended (cancelled or completed) at or after `since_ms`, oldest first.
    pub async fn requests_ended_since(&self, since_ms: i64, limit: u32) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE ended_at_ms >= $3 AND state IN ($1, $2) \
             ORDER BY ended_at_ms, id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(REQUEST_CANCELLED)
            .bind(REQUEST_COMPLETED)
            .bind(since_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(request_from).collect()
    }

    /// Records a paid rental's metered minutes; they only grow.
    pub async fn set_metered_minutes(&self, request_id: &str, minutes: u64) -> Result<()> {
        sqlx::query(
            "UPDATE requests SET metered_minutes = $1 WHERE id = $2 AND metered_minutes < $1",
        )
        .bind(to_i64(minutes))
        .bind(request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a placed request that ran its hours and releases its devices; false when it was
    /// not placed any more.
    pub async fn complete_request(&self, request_id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE requests SET state = $1, ended_at_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(REQUEST_COMPLETED)
        .bind(now_ms)
        .bind(request_id)
        .bind(REQUEST_PLACED)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        release_placements(&mut tx, request_id, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records why queued requests wait.
    pub async fn set_request_reasons(&self, reasons: &[(String, String)]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (request_id, reason) in reasons {
            sqlx::query("UPDATE requests SET reason = $1 WHERE id = $2 AND state = $3")
                .bind(reason)
                .bind(request_id)
                .bind(REQUEST_QUEUED)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a queued request placed on these devices, in one transaction; false (and nothing
    /// written) when the request is no longer queued.
    pub async fn place_request(
        &self,
        request_id: &str,
        attempt: u32,
        placements: &[PlacementRow],
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE requests SET state = $1, attempt = $2, placed_at_ms = $3, reason = '' WHERE id = $4 AND state = $5",
        )
        .bind(REQUEST_PLACED)
        .bind(i64::from(attempt))
        .bind(now_ms)
        .bind(request_id)
        .bind(REQUEST_QUEUED)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_placements(&mut tx, request_id, i64::from(attempt), placements).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The devices a request holds now (its current attempt, not released).
    pub async fn placements(&self, request_id: &str) -> Result<Vec<PlacementRow>> {
        let mut by_request = self.placements_of(&[request_id.to_owned()]).await?;
        Ok(by_request.remove(request_id).unwrap_or_default())
    }

    /// The current placements of several requests at once (a page of a list), by request.
    pub async fn placements_of(
        &self,
        request_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<PlacementRow>>> {
        let mut by_request: std::collections::HashMap<String, Vec<PlacementRow>> =
            std::collections::HashMap::new();
        let sql = "SELECT request_id, device_id, worker_id, node_index, attempt, price_per_hour FROM placements \
             WHERE request_id IN ({ids}) AND released_at_ms IS NULL ORDER BY request_id, node_index, device_id";
        for row in self.rows_in(sql, request_ids).await? {
            let placement = PlacementRow {
                device_id: col(&row, "device_id")?,
                worker_id: col(&row, "worker_id")?,
                node_index: u32::try_from(col::<i64>(&row, "node_index")?).unwrap_or(0),
                attempt: u32::try_from(col::<i64>(&row, "attempt")?).unwrap_or(0),
                price_per_hour: to_u64(col::<i64>(&row, "price_per_hour")?),
            };
            by_request
                .entry(col(&row, "request_id")?)
                .or_default()
                .push(placement);
        }
        Ok(by_request)
    }

    /// Cancels a queued or placed request of the account and releases its placements; the
    /// state it had, or `None` when there was nothing to cancel.
    pub async fn cancel_request(
        &self,
        account_id: &str,
        request_id: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM requests WHERE id = $1 AND account_id = $2 AND state IN ($3, $4)",
        )
        .bind(request_id)
        .bind(account_id)
        .bind(REQUEST_QUEUED)
        .bind(REQUEST_PLACED)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        sqlx::query("UPDATE requests SET state = $1, ended_at_ms = $2 WHERE id = $3")
            .bind(REQUEST_CANCELLED)
            .bind(now_ms)
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        release_placements(&mut tx, request_id, now_ms).await?;
        tx.commit().await?;
        Ok(Some(state))
    }
}

/// A node of a placed request whose worker lost a device: the node must be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostNode {
    pub request_id: String,
    pub worker_id: String,
}

impl Store {
    /// Nodes of placed requests holding a device that is no longer hired (down, blocked...),
    /// at most `limit`, oldest requests first.
    pub async fn lost_nodes(&self, limit: u32) -> Result<Vec<LostNode>> {
        let rows = sqlx::query(
            "SELECT DISTINCT p.request_id AS request_id, p.worker_id AS worker_id, r.created_at_ms AS created_at_ms \
             FROM placements p JOIN devices d ON d.id = p.device_id JOIN requests r ON r.id = p.request_id \
             WHERE p.released_at_ms IS NULL AND r.state = $1 AND d.state <> $2 \
             ORDER BY r.created_at_ms, p.request_id, p.worker_id LIMIT $3",
        )
        .bind(REQUEST_PLACED)
        .bind("hired")
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LostNode {
                    request_id: col(row, "request_id")?,
                    worker_id: col(row, "worker_id")?,
                })
            })
            .collect()
    }

    /// A request by id, whoever owns it: for the scheduler, never for an API answer.
    pub async fn request_by_id(&self, request_id: &str) -> Result<Option<RequestRow>> {
        let mut by_id = self.requests_by_ids(&[request_id.to_owned()]).await?;
        Ok(by_id.remove(request_id))
    }

    /// Several requests by id at once (a page of clusters), whoever owns them; ids not found
    /// are left out.
    pub async fn requests_by_ids(
        &self,
        request_ids: &[String],
    ) -> Result<std::collections::HashMap<String, RequestRow>> {
        let mut by_id = std::collections::HashMap::with_capacity(request_ids.len());
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id IN ({{ids}})");
        for row in self.rows_in(&sql, request_ids).await? {
            let request = request_from(&row)?;
            by_id.insert(request.id.clone(), request);
        }
        Ok(by_id)
    }

    /// Moves a placed request off `lost_workers` onto `replacements`, as attempt
    /// `previous_attempt + 1`, in one transaction: the lost nodes' rows are released as lost,
    /// the others carry the new attempt. False (nothing written) when the request is no longer
    /// placed at `previous_attempt`.
    pub async fn replace_nodes(
        &self,
        request_id: &str,
        previous_attempt: u32,
        lost_workers: &[String],
        replacements: &[PlacementRow],
        now_ms: i64,
    ) -> Result<bool> {
        let attempt = i64::from(previous_attempt + 1);
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE requests SET attempt = $1 WHERE id = $2 AND state = $3 AND attempt = $4",
        )
        .bind(attempt)
        .bind(request_id)
        .bind(REQUEST_PLACED)
        .bind(i64::from(previous_attempt))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        for worker_id in lost_workers {
            sqlx::query(
                "UPDATE placements SET released_at_ms = $1, lost = 1 WHERE request_id = $2 AND worker_id = $3 AND released_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(request_id)
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE placements SET attempt = $1 WHERE request_id = $2 AND released_at_ms IS NULL",
        )
        .bind(attempt)
        .bind(request_id)
        .execute(&mut *tx)
        .await?;
        insert_placements(&mut tx, request_id, attempt, replacements).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// What a lost node was: its worker's region and tier, and one of its devices' hardware.
#[derive(Debug, Clone, PartialEq)]
pub struct LostNodeShape {
    pub region: String,
    pub tier: String,
    pub hardware: flotilla_proto::device::DeviceHardware,
}

impl Store {
    pub async fn lost_node_shape(
        &self,
        request_id: &str,
        worker_id: &str,
    ) -> Result<Option<LostNodeShape>> {
        let row = sqlx::query(
            "SELECT d.hardware AS hardware, w.region AS region, w.tier AS tier FROM placements p \
             JOIN devices d ON d.id = p.device_id JOIN workers w ON w.id = p.worker_id \
             WHERE p.request_id = $1 AND p.worker_id = $2 AND p.released_at_ms IS NULL \
             ORDER BY p.device_id LIMIT 1",
        )
        .bind(request_id)
        .bind(worker_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hardware: String = col(&row, "hardware")?;
        Ok(Some(LostNodeShape {
            region: col(&row, "region")?,
            tier: col(&row, "tier")?,
            hardware: serde_json::from_str(&hardware)
                .map_err(|e| crate::StoreError::Corrupt(format!("device hardware: {e}")))?,
        }))
    }
}
