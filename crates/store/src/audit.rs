//! The audit log: who did what, when, from where. Never a secret.

use sqlx::any::AnyRow;

use crate::{Result, Store, col};

#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub actor_account_id: Option<String>,
    pub actor_key_id: Option<String>,
    pub source_ip: Option<String>,
    pub action: &'static str,
    pub target_id: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEventRow {
    pub id: String,
    pub at_ms: i64,
    pub actor_account_id: Option<String>,
    pub actor_key_id: Option<String>,
    pub source_ip: Option<String>,
    pub action: String,
    pub target_id: Option<String>,
    pub detail: serde_json::Value,
}

fn event_from(row: &AnyRow) -> Result<AuditEventRow> {
    let detail: String = col(row, "detail")?;
    Ok(AuditEventRow {
        id: col(row, "id")?,
        at_ms: col(row, "at_ms")?,
        actor_account_id: col(row, "actor_account_id")?,
        actor_key_id: col(row, "actor_key_id")?,
        source_ip: col(row, "source_ip")?,
        action: col(row, "action")?,
        target_id: col(row, "target_id")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

impl Store {
    pub async fn insert_audit_event(
        &self,
        id: &str,
        at_ms: i64,
        event: &NewAuditEvent,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_events (id, at_ms, actor_account_id, actor_key_id, source_ip, action, target_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(at_ms)
        .bind(event.actor_account_id.clone())
        .bind(event.actor_key_id.clone())
        .bind(event.source_ip.clone())
        .bind(event.action)
        .bind(event.target_id.clone())
        .bind(event.detail.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Newest first. The cursor is the (at_ms, id) of the last event of the previous page.
    pub async fn list_audit_events(
        &self,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<AuditEventRow>> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, ""));
        let rows = sqlx::query(
            "SELECT id, at_ms, actor_account_id, actor_key_id, source_ip, action, target_id, detail FROM audit_events \
             WHERE at_ms < $1 OR (at_ms = $1 AND id < $2) ORDER BY at_ms DESC, id DESC LIMIT $3",
        )
        .bind(before_ms)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from).collect()
    }
}
