//! Governance proposals, the stake weights counted when each opened, and votes.

use sqlx::any::AnyRow;

use crate::{Result, Store, col, to_i64, to_u64};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRow {
    pub id: String,
    pub account_id: String,
    pub title: String,
    pub body: String,
    /// JSON array of option labels.
    pub options: String,
    pub opened_at_ms: i64,
    pub closes_at_ms: i64,
    /// The tally as JSON, once closed.
    pub tally: Option<String>,
    pub tally_seq: Option<u64>,
}

const PROPOSAL_COLUMNS: &str =
    "id, account_id, title, body, options, opened_at_ms, closes_at_ms, tally, tally_seq";

fn proposal_from(row: &AnyRow) -> Result<ProposalRow> {
    Ok(ProposalRow {
        id: col(row, "id")?,
        account_id: col(row, "account_id")?,
        title: col(row, "title")?,
        body: col(row, "body")?,
        options: col(row, "options")?,
        opened_at_ms: col(row, "opened_at_ms")?,
        closes_at_ms: col(row, "closes_at_ms")?,
        tally: col(row, "tally")?,
        tally_seq: col::<Option<i64>>(row, "tally_seq")?.map(to_u64),
    })
}

impl Store {
    /// Opens a proposal and, in the same transaction, counts every stake as its weights.
    pub async fn insert_proposal(&self, proposal: &ProposalRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO proposals (id, account_id, title, body, options, opened_at_ms, closes_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&proposal.id)
        .bind(&proposal.account_id)
        .bind(&proposal.title)
        .bind(&proposal.body)
        .bind(&proposal.options)
        .bind(proposal.opened_at_ms)
        .bind(proposal.closes_at_ms)
        .execute(&mut *tx)
        .await?;
        // Weight is stake not on its way out: posted less held (unstaking, slashed).
        sqlx::query(
            "INSERT INTO proposal_weights (proposal_id, account_id, weight_micros) \
             SELECT $1, owner, posted - held FROM ledger_accounts \
             WHERE id LIKE '%:stake:IO' AND posted - held > 0",
        )
        .bind(&proposal.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn proposals(&self, limit: u32) -> Result<Vec<ProposalRow>> {
        let sql = format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals ORDER BY opened_at_ms DESC, id LIMIT $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(proposal_from).collect()
    }

    pub async fn proposal(&self, id: &str) -> Result<Option<ProposalRow>> {
        let sql = format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(proposal_from).transpose()
    }

    /// Proposals past their close without a tally.
    pub async fn proposals_to_close(&self, now_ms: i64) -> Result<Vec<ProposalRow>> {
        let sql = format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE closes_at_ms <= $1 AND tally IS NULL \
             ORDER BY closes_at_ms LIMIT 100"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(proposal_from).collect()
    }

    /// Every weight of a proposal: `(account, micros)`.
    pub async fn proposal_weights(&self, proposal_id: &str) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT account_id, weight_micros FROM proposal_weights WHERE proposal_id = $1",
        )
        .bind(proposal_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((col(row, "account_id")?, to_u64(col(row, "weight_micros")?))))
            .collect()
    }

    /// One account's weight in a proposal (zero if it had no stake then).
    pub async fn proposal_weight(&self, proposal_id: &str, account_id: &str) -> Result<u64> {
        let weight: Option<i64> = sqlx::query_scalar(
            "SELECT weight_micros FROM proposal_weights WHERE proposal_id = $1 AND account_id = $2",
        )
        .bind(proposal_id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(weight.map_or(0, to_u64))
    }

    /// Records or changes a vote, only while the proposal is open at `now_ms`; false when it
    /// has closed.
    pub async fn cast_vote(
        &self,
        proposal_id: &str,
        account_id: &str,
        option: u32,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO votes (proposal_id, account_id, option_index, voted_at_ms) \
             SELECT $1, $2, $3, $4 WHERE EXISTS \
               (SELECT 1 FROM proposals WHERE id = $1 AND closes_at_ms > $4 AND tally IS NULL) \
             ON CONFLICT (proposal_id, account_id) DO UPDATE \
             SET option_index = excluded.option_index, voted_at_ms = excluded.voted_at_ms",
        )
        .bind(proposal_id)
        .bind(account_id)
        .bind(i64::from(option))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every vote of a proposal: `(account, option)`.
    pub async fn votes(&self, proposal_id: &str) -> Result<Vec<(String, u32)>> {
        let rows = sqlx::query("SELECT account_id, option_index FROM votes WHERE proposal_id = $1")
            .bind(proposal_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let option = u32::try_from(col::<i64>(row, "option_index")?).unwrap_or(u32::MAX);
                Ok((col(row, "account_id")?, option))
            })
            .collect()
    }

    pub async fn vote_of(&self, proposal_id: &str, account_id: &str) -> Result<Option<u32>> {
        let option: Option<i64> = sqlx::query_scalar(
            "SELECT option_index FROM votes WHERE proposal_id = $1 AND account_id = $2",
        )
        .bind(proposal_id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(option.and_then(|o| u32::try_from(o).ok()))
    }

    /// Stores a closed proposal's tally once.
    pub async fn close_proposal(&self, id: &str, tally: &str, tally_seq: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE proposals SET tally = $2, tally_seq = $3 WHERE id = $1 AND tally IS NULL",
        )
        .bind(id)
        .bind(tally)
        .bind(to_i64(tally_seq))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
