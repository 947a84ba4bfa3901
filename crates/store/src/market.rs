//! The market: asking prices, worker locations, and the rows the scheduler's snapshot is
//! built from.

use flotilla_proto::device::DeviceState;

use crate::devices::{DEVICE_COLUMNS_QUALIFIED, device_from};
use crate::{Result, Store, col};

/// One offered device with its worker's market facts.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketRow {
    pub device: crate::DeviceRow,
    /// IOSD base units per hour.
    pub price_per_hour: u64,
    pub region: String,
    pub country: String,
    pub tier: String,
    /// The worker runs container images.
    pub containers: bool,
}

/// Where a worker is and how well it is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLocation {
    pub region: String,
    pub country: String,
    pub tier: String,
}

impl Store {
    /// Sets (or, with `None`, withdraws) a device's asking price; false when the device is not
    /// the account's.
    pub async fn set_device_price(
        &self,
        account_id: &str,
        device_id: &str,
        price_per_hour: Option<u64>,
    ) -> Result<bool> {
        let price = price_per_hour.map(crate::to_i64);
        let done = sqlx::query(
            "UPDATE devices SET price_per_hour = $1 WHERE id = $2 AND account_id = $3 AND removed_at_ms IS NULL",
        )
        .bind(price)
        .bind(device_id)
        .bind(account_id)
        .execute(&self.pool)
        .await?;
        self.market_changed();
        Ok(done.rows_affected() == 1)
    }

    /// A device's asking price, if it has one.
    pub async fn device_price(&self, device_id: &str) -> Result<Option<u64>> {
        let price: Option<Option<i64>> =
            sqlx::query_scalar("SELECT price_per_hour FROM devices WHERE id = $1")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(price.flatten().and_then(|p| u64::try_from(p).ok()))
    }

    /// Sets where a worker is; false when the worker is not the account's.
    pub async fn set_worker_location(
        &self,
        account_id: &str,
        worker_id: &str,
        location: &WorkerLocation,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE workers SET region = $1, country = $2, tier = $3 WHERE id = $4 AND account_id = $5 AND removed_at_ms IS NULL",
        )
        .bind(&location.region)
        .bind(&location.country)
        .bind(&location.tier)
        .bind(worker_id)
        .bind(account_id)
        .execute(&self.pool)
        .await?;
        self.market_changed();
        Ok(done.rows_affected() == 1)
    }

    /// Every priced device that is idle or hired, with its worker's location, ordered by
    /// worker then device: the scheduler's snapshot.
    pub async fn market_rows(&self) -> Result<Vec<MarketRow>> {
        self.up_device_rows("AND d.price_per_hour IS NOT NULL")
            .await
    }

    /// Every device that is idle or hired, priced or not (its price reads 0 when unpriced):
    /// the devices that earn block rewards.
    pub async fn earning_rows(&self) -> Result<Vec<MarketRow>> {
        self.up_device_rows("").await
    }

    async fn up_device_rows(&self, filter: &'static str) -> Result<Vec<MarketRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS_QUALIFIED}, w.region AS region, \
             w.country AS country, w.tier AS tier, w.containers AS containers \
             FROM devices d JOIN workers w ON w.id = d.worker_id \
             WHERE d.removed_at_ms IS NULL AND w.removed_at_ms IS NULL {filter} \
             AND d.state IN ($1, $2) ORDER BY d.worker_id, d.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(DeviceState::Idle.as_str())
            .bind(DeviceState::Hired.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(MarketRow {
                    device: device_from(row)?,
                    price_per_hour: col::<Option<i64>>(row, "price_per_hour")?
                        .map_or(0, crate::to_u64),
                    region: col(row, "region")?,
                    country: col(row, "country")?,
                    tier: col(row, "tier")?,
                    containers: col::<i64>(row, "containers")? != 0,
                })
            })
            .collect()
    }
}

/// What a worker's reliability and reputation are computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub up_ms: u64,
    pub observed_ms: u64,
    /// Requests it served that have ended.
    pub completed: u32,
    /// Requests that lost its node because it failed.
    pub failed: u32,
    pub feedback_sum_milli: u64,
    pub feedback_count: u32,
}

impl Store {
    /// Adds `elapsed_ms` of observation to every live worker, and of uptime to the connected
    /// ones (chunked, like the last-seen stamps).
    pub async fn account_uptime(&self, connected: &[String], elapsed_ms: u64) -> Result<()> {
        let elapsed = crate::to_i64(elapsed_ms);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE workers SET observed_ms = observed_ms + $1 WHERE removed_at_ms IS NULL",
        )
        .bind(elapsed)
        .execute(&mut *tx)
        .await?;
        for chunk in connected.chunks(crate::workers::WORKERS_PER_TOUCH_MAX) {
            let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE workers SET up_ms = up_ms + $1 WHERE id IN ({})",
                ids.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(elapsed);
            for id in chunk {
                query = query.bind(id.clone());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every live worker's uptime, completed requests and feedback.
    pub async fn worker_stats(&self) -> Result<std::collections::HashMap<String, WorkerStats>> {
        let mut stats = std::collections::HashMap::new();
        let rows =
            sqlx::query("SELECT id, up_ms, observed_ms FROM workers WHERE removed_at_ms IS NULL")
                .fetch_all(&self.pool)
                .await?;
        for row in &rows {
            stats.insert(
                col::<String>(row, "id")?,
                WorkerStats {
                    up_ms: crate::to_u64(col(row, "up_ms")?),
                    observed_ms: crate::to_u64(col(row, "observed_ms")?),
                    ..WorkerStats::default()
                },
            );
        }
        let served = sqlx::query(
            "SELECT DISTINCT p.worker_id AS worker_id, p.request_id AS request_id, r.feedback_milli AS feedback_milli, \
             p.lost AS lost FROM placements p JOIN requests r ON r.id = p.request_id WHERE p.released_at_ms IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in &served {
            let Some(entry) = stats.get_mut(&col::<String>(row, "worker_id")?) else {
                continue;
            };
            if col::<i64>(row, "lost")? != 0 {
                entry.failed += 1;
                continue;
            }
            entry.completed += 1;
            if let Some(feedback) = col::<Option<i64>>(row, "feedback_milli")? {
                entry.feedback_sum_milli += crate::to_u64(feedback);
                entry.feedback_count += 1;
            }
        }
        // Ratings of cluster nodes count like request feedback, one per node.
        let rated = sqlx::query(
            "SELECT worker_id, CAST(SUM(stars) AS BIGINT) AS stars, COUNT(*) AS ratings \
             FROM node_ratings GROUP BY worker_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in &rated {
            if let Some(entry) = stats.get_mut(&col::<String>(row, "worker_id")?) {
                entry.feedback_sum_milli += crate::to_u64(col::<i64>(row, "stars")?) * 1_000;
                entry.feedback_count += u32::try_from(col::<i64>(row, "ratings")?).unwrap_or(0);
            }
        }
        Ok(stats)
    }

    /// Records a renter's feedback on a request that was placed; false when it is not the
    /// account's or never ran.
    pub async fn set_request_feedback(
        &self,
        account_id: &str,
        request_id: &str,
        feedback_milli: u32,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE requests SET feedback_milli = $1 WHERE id = $2 AND account_id = $3 AND placed_at_ms IS NOT NULL",
        )
        .bind(i64::from(feedback_milli))
        .bind(request_id)
        .bind(account_id)
        .execute(&self.pool)
        .await?;
        self.market_changed();
        Ok(done.rows_affected() == 1)
    }
}
