//! Devices: upsert at Hello, state changes, supplier actions.

use flotilla_proto::device::{DeviceHardware, DeviceState};
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, col, to_i64};

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub id: String,
    pub account_id: String,
    pub worker_id: String,
    pub name: String,
    pub hardware: DeviceHardware,
    pub state: DeviceState,
    /// The state to return to when a `down` device comes back.
    pub state_before_down: Option<DeviceState>,
    pub state_changed_at_ms: i64,
    pub created_at_ms: i64,
    pub last_seen_at_ms: Option<i64>,
    pub removed_at_ms: Option<i64>,
    /// The supplier's asking price, IOSD base units per hour; `None`: not offered.
    pub price_per_hour: Option<u64>,
}

/// A compare-and-set of a device's state: applies only if the device is still in `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStateChange {
    pub device_id: String,
    pub from: DeviceState,
    pub to: DeviceState,
    pub state_before_down: Option<DeviceState>,
}

const DEVICE_COLUMNS: &str = "id, account_id, worker_id, name, hardware, state, state_before_down, \
     state_changed_at_ms, created_at_ms, last_seen_at_ms, removed_at_ms, price_per_hour";

fn state_from(text: &str) -> Result<DeviceState> {
    DeviceState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown device state {text:?}")))
}

/// The same columns, qualified with the `d` alias, for joins.
pub(crate) const DEVICE_COLUMNS_QUALIFIED: &str = "d.id AS id, d.account_id AS account_id, \
     d.worker_id AS worker_id, d.name AS name, d.hardware AS hardware, d.state AS state, \
     d.state_before_down AS state_before_down, d.state_changed_at_ms AS state_changed_at_ms, \
     d.created_at_ms AS created_at_ms, d.last_seen_at_ms AS last_seen_at_ms, \
     d.removed_at_ms AS removed_at_ms, d.price_per_hour AS price_per_hour";

pub(crate) fn device_from(row: &AnyRow) -> Result<DeviceRow> {
    let hardware: String = col(row, "hardware")?;
    let hardware = serde_json::from_str(&hardware)
        .map_err(|e| StoreError::Corrupt(format!("device hardware: {e}")))?;
    Ok(DeviceRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        worker_id: col(row, "worker_id")?,
        name: col(row, "name")?,
        hardware,
        state: state_from(&col::<String>(row, "state")?)?,
        state_before_down: col::<Option<String>>(row, "state_before_down")?
            .map(|s| state_from(&s))
            .transpose()?,
        state_changed_at_ms: col(row, "state_changed_at_ms")?,
        created_at_ms: col(row, "created_at_ms")?,
        last_seen_at_ms: col(row, "last_seen_at_ms")?,
        removed_at_ms: col(row, "removed_at_ms")?,
        price_per_hour: col::<Option<i64>>(row, "price_per_hour")?.map(crate::to_u64),
    })
}

impl Store {
    /// Records the hardware a worker reported at Hello. New devices are inserted in
    /// `initial_state`; known ones get their hardware refreshed and keep their state. Returns
    /// all of the worker's devices, removed ones included (the caller skips those).
    pub async fn upsert_reported_devices(
        &self,
        account_id: &str,
        worker_id: &str,
        reported: &[(String, DeviceHardware, DeviceState)],
        now_ms: i64,
    ) -> Result<Vec<DeviceRow>> {
        let mut tx = self.begin_write().await?;
        for (new_id, hardware, initial_state) in reported {
            let hardware_json = serde_json::to_string(hardware).expect("hardware serializes");
            sqlx::query(
                "INSERT INTO devices (id, account_id, worker_id, hardware_id, name, kind, model, memory_bytes, simulated, \
                 hardware, state, state_changed_at_ms, created_at_ms, last_seen_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $12) \
                 ON CONFLICT (worker_id, hardware_id) DO UPDATE SET model = excluded.model, \
                 memory_bytes = excluded.memory_bytes, simulated = excluded.simulated, hardware = excluded.hardware, \
                 last_seen_at_ms = excluded.last_seen_at_ms",
            )
            .bind(new_id)
            .bind(account_id)
            .bind(worker_id)
            .bind(&hardware.hardware_id)
            .bind(&hardware.model)
            .bind(hardware.kind.as_str())
            .bind(&hardware.model)
            .bind(to_i64(hardware.memory_bytes))
            .bind(i64::from(hardware.simulated))
            .bind(hardware_json)
            .bind(initial_state.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.market_changed();
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE worker_id = $1 ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from).collect()
    }

    /// Applies state changes; each is a compare-and-set on the current state. Returns the
    /// changes that applied (a device changed in between is skipped, and the caller retries
    /// from a fresh read).
    pub async fn apply_device_state_changes(
        &self,
        changes: &[DeviceStateChange],
        now_ms: i64,
    ) -> Result<Vec<DeviceStateChange>> {
        let mut applied = Vec::with_capacity(changes.len());
        if changes.is_empty() {
            return Ok(applied);
        }
        let mut tx = self.begin_write().await?;
        for change in changes {
            let done = sqlx::query(
                // A change that keeps the state (pausing a device while it is down) keeps the
                // time it entered that state, so its inactivity clock does not restart.
                "UPDATE devices SET state = $1, state_before_down = $2, \
                 state_changed_at_ms = CASE WHEN state = $1 THEN state_changed_at_ms ELSE $3 END \
                 WHERE id = $4 AND state = $5 AND removed_at_ms IS NULL",
            )
            .bind(change.to.as_str())
            .bind(change.state_before_down.map(DeviceState::as_str))
            .bind(now_ms)
            .bind(&change.device_id)
            .bind(change.from.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                applied.push(change.clone());
            }
        }
        tx.commit().await?;
        if !applied.is_empty() {
            self.market_changed();
        }
        Ok(applied)
    }

    pub async fn device(&self, account_id: &str, device_id: &str) -> Result<Option<DeviceRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1 AND account_id = $2 AND removed_at_ms IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from).transpose()
    }

    /// The account's devices, optionally of one worker, in id order after `after_id`.
    pub async fn list_devices(
        &self,
        account_id: &str,
        worker_id: Option<&str>,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE account_id = $1 AND removed_at_ms IS NULL AND id > $2 \
             AND ($3 = '' OR worker_id = $3) ORDER BY id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after_id.unwrap_or(""))
            .bind(worker_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from).collect()
    }

    /// Every live device of every worker, for the liveness loop after a restart.
    pub async fn all_live_devices(&self) -> Result<Vec<DeviceRow>> {
        let sql =
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE removed_at_ms IS NULL ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from).collect()
    }

    /// Devices of every supplier in id order after `after_id`, at most `limit`: for the
    /// Explorer, which shows only their public facts (never names, owners or workers).
    pub async fn public_devices(&self, after_id: &str, limit: u32) -> Result<Vec<DeviceRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE removed_at_ms IS NULL AND id > $1 ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from).collect()
    }

    /// Live, real (not simulated) GPUs with this hardware id on any other worker, whoever owns
    /// them: for the coordinator's duplicate check, never for an API answer.
    pub async fn gpus_with_hardware_id_elsewhere(
        &self,
        hardware_id: &str,
        worker_id: &str,
    ) -> Result<Vec<DeviceRow>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE hardware_id = $1 AND worker_id <> $2 AND kind = 'gpu' \
             AND simulated = 0 AND removed_at_ms IS NULL ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hardware_id)
            .bind(worker_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from).collect()
    }

    pub async fn rename_device(
        &self,
        account_id: &str,
        device_id: &str,
        name: &str,
    ) -> Result<bool> {
        let done = sqlx::query("UPDATE devices SET name = $1 WHERE id = $2 AND account_id = $3 AND removed_at_ms IS NULL")
            .bind(name)
            .bind(device_id)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn remove_device(
        &self,
        account_id: &str,
        device_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET removed_at_ms = $1 WHERE id = $2 AND account_id = $3 AND removed_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(device_id)
        .bind(account_id)
        .execute(&self.pool)
        .await?;
        self.market_changed();
        Ok(done.rows_affected() == 1)
    }
}
