//! Proof-of-compute transcripts. Public by design: anyone may list and re-check them, so these
//! queries do not filter by account.

use sqlx::any::AnyRow;

use crate::{Result, Store, col, to_u64};

#[derive(Debug, Clone, PartialEq)]
pub struct ProofRow {
    pub id: String,
    pub device_id: String,
    pub account_id: String,
    pub worker_id: String,
    pub class: String,
    pub passed: bool,
    /// Why it failed, or empty.
    pub reason: String,
    pub elapsed_ms: u64,
    pub created_at_ms: i64,
}

const PROOF_COLUMNS: &str =
    "id, device_id, account_id, worker_id, class, passed, reason, elapsed_ms, created_at_ms";

fn proof_from(row: &AnyRow) -> Result<ProofRow> {
    Ok(ProofRow {
        id: col(row, "id")?,
        device_id: col(row, "device_id")?,
        account_id: col(row, "account_id")?,
        worker_id: col(row, "worker_id")?,
        class: col(row, "class")?,
        passed: col::<i64>(row, "passed")? != 0,
        reason: col(row, "reason")?,
        elapsed_ms: to_u64(col(row, "elapsed_ms")?),
        created_at_ms: col(row, "created_at_ms")?,
    })
}

impl Store {
    pub async fn insert_proof(&self, proof: &ProofRow, transcript_json: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO proofs (id, device_id, account_id, worker_id, class, passed, reason, elapsed_ms, created_at_ms, transcript) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&proof.id)
        .bind(&proof.device_id)
        .bind(&proof.account_id)
        .bind(&proof.worker_id)
        .bind(&proof.class)
        .bind(i64::from(proof.passed))
        .bind(&proof.reason)
        .bind(crate::to_i64(proof.elapsed_ms))
        .bind(proof.created_at_ms)
        .bind(transcript_json)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Proofs in id order after `after_id`, optionally of one device.
    pub async fn list_proofs(
        &self,
        device_id: Option<&str>,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProofRow>> {
        // Two statements rather than `($2 = '' OR device_id = $2)`, which keeps the planner
        // off `proofs_device` and walks every proof.
        let filter = if device_id.is_some() {
            "AND device_id = $3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {PROOF_COLUMNS} FROM proofs WHERE id > $1 {filter} ORDER BY id LIMIT $2"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit));
        if let Some(device) = device_id {
            query = query.bind(device);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(proof_from).collect()
    }

    /// One proof with its transcript (JSON as stored).
    pub async fn proof(&self, proof_id: &str) -> Result<Option<(ProofRow, String)>> {
        let sql = format!("SELECT {PROOF_COLUMNS}, transcript FROM proofs WHERE id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(proof_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((proof_from(&row)?, col(&row, "transcript")?)))
    }
}
