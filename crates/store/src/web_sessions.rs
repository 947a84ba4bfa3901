//! Dashboard sessions: a cookie's hash to the API key it stands for and its CSRF token.

use crate::{Result, Store, col};

/// A live session: the key it stands for (by hash) and the token its forms carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSessionRow {
    pub key_hash: String,
    pub csrf: String,
    pub expires_at_ms: i64,
}

impl Store {
    /// Opens a session; expired ones go at the same time, so the table stays small.
    pub async fn open_web_session(
        &self,
        id_hash: &str,
        session: &WebSessionRow,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM web_sessions WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, key_hash, csrf, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(&session.key_hash)
        .bind(&session.csrf)
        .bind(now_ms)
        .bind(session.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session with this hash, unless it expired by `now_ms`.
    pub async fn web_session(&self, id_hash: &str, now_ms: i64) -> Result<Option<WebSessionRow>> {
        let row = sqlx::query(
            "SELECT key_hash, csrf, expires_at_ms FROM web_sessions \
             WHERE id_hash = $1 AND expires_at_ms > $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(WebSessionRow {
                key_hash: col(&row, "key_hash")?,
                csrf: col(&row, "csrf")?,
                expires_at_ms: col(&row, "expires_at_ms")?,
            })
        })
        .transpose()
    }

    pub async fn close_web_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
