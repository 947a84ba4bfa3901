//! Downsampled telemetry history: one row per device per bucket, pruned past retention.

use sqlx::any::AnyRow;

use crate::{Result, Store, col, to_i64, to_u64};

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryBucketRow {
    pub device_id: String,
    pub bucket_start_ms: i64,
    pub bucket_s: u64,
    pub samples: u32,
    pub utilization_pct: u8,
    pub memory_used_bytes: u64,
    pub temperature_c: Option<i16>,
    pub power_w: Option<u32>,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// Rows per INSERT statement; keeps the bind count (10 per row) well under PostgreSQL's limit.
const ROWS_PER_INSERT_MAX: usize = 500;

fn bucket_from(row: &AnyRow) -> Result<TelemetryBucketRow> {
    Ok(TelemetryBucketRow {
        device_id: col(row, "device_id")?,
        bucket_start_ms: col(row, "bucket_start_ms")?,
        bucket_s: to_u64(col(row, "bucket_s")?),
        samples: u32::try_from(col::<i64>(row, "samples")?).unwrap_or(0),
        utilization_pct: u8::try_from(col::<i64>(row, "utilization_pct")?).unwrap_or(0),
        memory_used_bytes: to_u64(col(row, "memory_used_bytes")?),
        temperature_c: col::<Option<i64>>(row, "temperature_c")?
            .and_then(|t| i16::try_from(t).ok()),
        power_w: col::<Option<i64>>(row, "power_w")?.and_then(|p| u32::try_from(p).ok()),
        net_rx_bytes: to_u64(col(row, "net_rx_bytes")?),
        net_tx_bytes: to_u64(col(row, "net_tx_bytes")?),
    })
}

impl Store {
    /// Writes closed buckets in batches. A bucket written twice keeps the later values.
    pub async fn insert_telemetry(&self, buckets: &[TelemetryBucketRow]) -> Result<()> {
        // PostgreSQL refuses an upsert that touches one row twice, so keep the last of each
        // (device, bucket) pair.
        let mut latest = std::collections::HashMap::with_capacity(buckets.len());
        for (index, bucket) in buckets.iter().enumerate() {
            latest.insert((bucket.device_id.as_str(), bucket.bucket_start_ms), index);
        }
        let mut unique: Vec<usize> = latest.into_values().collect();
        unique.sort_unstable();
        let buckets: Vec<&TelemetryBucketRow> =
            unique.into_iter().map(|index| &buckets[index]).collect();
        let mut tx = self.begin_write().await?;
        for chunk in buckets.chunks(ROWS_PER_INSERT_MAX) {
            let mut sql = String::from(
                "INSERT INTO telemetry (device_id, bucket_start_ms, bucket_s, samples, utilization_pct, memory_used_bytes, \
                 temperature_c, power_w, net_rx_bytes, net_tx_bytes) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 10;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10
                ));
            }
            sql.push_str(
                " ON CONFLICT (device_id, bucket_start_ms) DO UPDATE SET samples = excluded.samples, \
                 utilization_pct = excluded.utilization_pct, memory_used_bytes = excluded.memory_used_bytes, \
                 temperature_c = excluded.temperature_c, power_w = excluded.power_w, \
                 net_rx_bytes = excluded.net_rx_bytes, net_tx_bytes = excluded.net_tx_bytes",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for bucket in chunk.iter().copied() {
                query = query
                    .bind(bucket.device_id.clone())
                    .bind(bucket.bucket_start_ms)
                    .bind(to_i64(bucket.bucket_s))
                    .bind(i64::from(bucket.samples))
                    .bind(i64::from(bucket.utilization_pct))
                    .bind(to_i64(bucket.memory_used_bytes))
                    .bind(bucket.temperature_c.map(i64::from))
                    .bind(bucket.power_w.map(i64::from))
                    .bind(to_i64(bucket.net_rx_bytes))
                    .bind(to_i64(bucket.net_tx_bytes));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` buckets of a device the account owns, oldest first.
    pub async fn telemetry_history(
        &self,
        account_id: &str,
        device_id: &str,
        limit: u32,
    ) -> Result<Vec<TelemetryBucketRow>> {
        let rows = sqlx::query(
            "SELECT t.device_id, t.bucket_start_ms, t.bucket_s, t.samples, t.utilization_pct, t.memory_used_bytes, \
             t.temperature_c, t.power_w, t.net_rx_bytes, t.net_tx_bytes \
             FROM telemetry t JOIN devices d ON d.id = t.device_id \
             WHERE t.device_id = $1 AND d.account_id = $2 ORDER BY t.bucket_start_ms DESC LIMIT $3",
        )
        .bind(device_id)
        .bind(account_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut history = rows.iter().map(bucket_from).collect::<Result<Vec<_>>>()?;
        history.reverse();
        Ok(history)
    }

    /// Deletes buckets that started before `cutoff_ms`. Returns how many went.
    pub async fn prune_telemetry(&self, cutoff_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM telemetry WHERE bucket_start_ms < $1")
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
