//! Accounts and API keys.

use flotilla_proto::api::{Role, Scope};
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, col};

#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

/// A key that authenticated, with its account.
#[derive(Debug, Clone)]
pub struct AuthenticatedKey {
    pub key: ApiKeyRow,
    pub account: AccountRow,
}

fn join<T: Copy>(items: &[T], as_str: fn(T) -> &'static str) -> String {
    items
        .iter()
        .map(|item| as_str(*item))
        .collect::<Vec<_>>()
        .join(",")
}

fn split<T>(text: &str, parse: fn(&str) -> Option<T>) -> Result<Vec<T>> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            parse(part).ok_or_else(|| StoreError::Corrupt(format!("unknown value {part:?}")))
        })
        .collect()
}

fn account_from(row: &AnyRow) -> Result<AccountRow> {
    Ok(AccountRow {
        id: col(row, "id")?,
        name: col(row, "name")?,
        roles: split(&col::<String>(row, "roles")?, Role::parse)?,
        created_at_ms: col(row, "created_at_ms")?,
    })
}

fn key_from(row: &AnyRow) -> Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        name: col(row, "name")?,
        prefix: col(row, "prefix")?,
        scopes: split(&col::<String>(row, "scopes")?, Scope::parse)?,
        created_at_ms: col(row, "created_at_ms")?,
        expires_at_ms: col(row, "expires_at_ms")?,
        revoked_at_ms: col(row, "revoked_at_ms")?,
        last_used_at_ms: col(row, "last_used_at_ms")?,
    })
}

const KEY_COLUMNS: &str = "k.id, k.account_id, k.name, k.prefix, k.scopes, k.created_at_ms, k.expires_at_ms, k.revoked_at_ms, k.last_used_at_ms";

impl Store {
    pub async fn insert_account(&self, account: &AccountRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO accounts (id, name, roles, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&account.id)
        .bind(&account.name)
        .bind(join(&account.roles, Role::as_str))
        .bind(account.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn account(&self, account_id: &str) -> Result<Option<AccountRow>> {
        let row = sqlx::query("SELECT id, name, roles, created_at_ms FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from).transpose()
    }

    /// Whether any account holds the admin role.
    pub async fn admin_exists(&self) -> Result<bool> {
        let rows = sqlx::query("SELECT roles FROM accounts")
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            if split(&col::<String>(row, "roles")?, Role::parse)?.contains(&Role::Admin) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn insert_api_key(&self, key: &ApiKeyRow, secret_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, name, prefix, secret_hash, scopes, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key.id)
        .bind(&key.account_id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(secret_hash)
        .bind(join(&key.scopes, Scope::as_str))
        .bind(key.created_at_ms)
        .bind(key.expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live key with this hash: not revoked, not expired at `now_ms`.
    pub async fn authenticate_key(
        &self,
        secret_hash: &str,
        now_ms: i64,
    ) -> Result<Option<AuthenticatedKey>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS}, a.id AS a_id, a.name AS a_name, a.roles AS a_roles, a.created_at_ms AS a_created_at_ms \
             FROM api_keys k JOIN accounts a ON a.id = k.account_id \
             WHERE k.secret_hash = $1 AND k.revoked_at_ms IS NULL AND (k.expires_at_ms IS NULL OR k.expires_at_ms > $2)"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(secret_hash)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let account = AccountRow {
            id: col(&row, "a_id")?,
            name: col(&row, "a_name")?,
            roles: split(&col::<String>(&row, "a_roles")?, Role::parse)?,
            created_at_ms: col(&row, "a_created_at_ms")?,
        };
        Ok(Some(AuthenticatedKey {
            key: key_from(&row)?,
            account,
        }))
    }

    /// Records use, at most once per `granularity_ms` per key, so reads do not become writes.
    pub async fn touch_api_key(
        &self,
        key_id: &str,
        now_ms: i64,
        granularity_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at_ms = $1 WHERE id = $2 AND (last_used_at_ms IS NULL OR last_used_at_ms < $3)",
        )
        .bind(now_ms)
        .bind(key_id)
        .bind(now_ms - granularity_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_api_keys(
        &self,
        account_id: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRow>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.account_id = $1 AND k.id > $2 ORDER BY k.id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from).collect()
    }

    /// Revokes one of the account's keys. Returns the key as it is now, or None if the account
    /// has no such key.
    pub async fn revoke_api_key(
        &self,
        account_id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<ApiKeyRow>> {
        sqlx::query("UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND account_id = $3 AND revoked_at_ms IS NULL")
            .bind(now_ms)
            .bind(key_id)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = $1 AND k.account_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from).transpose()
    }
}
