//! The ledger's rows: the chain's head, entries, balances, holds, epoch seals and the signing
//! key. The rules live in `flotilla-ledger`; this module only reads and writes what the
//! coordinator's ledger writer decides, inside one transaction per batch that starts by
//! locking the head row, so batches from any number of coordinators append in turn.

use sqlx::any::AnyRow;

use crate::{Backend, Result, Store, StoreError, col, to_i64, to_u64};

/// Most entries an owner's history walk steps over to reach a cursor that is not one of the
/// owner's own entries (a page's cursor always is): a bound on what one request can make the
/// database read.
pub const HISTORY_STEPS_OVER_MAX: u32 = 100_000;

/// Most bind parameters in one statement: under SQLite's 32,766 and PostgreSQL's 65,535.
const PARAMS_PER_STATEMENT_MAX: usize = 30_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHeadRow {
    pub seq: u64,
    pub hash: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntryRow {
    pub seq: u64,
    pub id: String,
    pub digest: String,
    pub at_ms: i64,
    pub debit_owner: String,
    pub credit_owner: String,
    /// The entry's canonical JSON.
    pub body: String,
    pub hash: String,
    /// The debit owner's entry before this one (0: none); see [`LedgerAccountRow::owner_last_seq`].
    pub debit_prev_seq: u64,
    /// The credit owner's entry before this one (0: none).
    pub credit_prev_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAccountRow {
    pub id: String,
    pub owner: String,
    pub token: String,
    pub posted: i64,
    pub held: i64,
    /// The owner's newest entry when this row was last written. Every entry writes a row of
    /// each of its owners, so an owner's newest entry is the largest of these among its
    /// accounts, and its history walks back from there along the entries' `*_prev_seq`.
    pub owner_last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHoldRow {
    pub id: String,
    pub debit_owner: String,
    /// The hold as JSON.
    pub body: String,
    pub is_open: bool,
    pub expires_at_ms: i64,
}

/// An applied transfer id: its content digest and entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSeenRow {
    pub id: String,
    pub digest: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSealRow {
    pub epoch: u64,
    pub part: u32,
    pub first_seq: u64,
    pub entry_count: u64,
    /// The signed seal as JSON.
    pub seal: String,
    pub rewards_paid_micros: Option<u64>,
}

const ENTRY_COLUMNS: &str = "seq, id, digest, at_ms, debit_owner, credit_owner, body, hash, debit_prev_seq, credit_prev_seq";
/// The same, each column of the entry `e`.
const ENTRY_COLUMNS_OF_E: &str = "e.seq, e.id, e.digest, e.at_ms, e.debit_owner, e.credit_owner, e.body, e.hash, \
     e.debit_prev_seq, e.credit_prev_seq";
/// The newest entry of the owner `$1` (null: none), as a subquery: the largest
/// [`LedgerAccountRow::owner_last_seq`] among its accounts.
const OWNER_LAST_SEQ: &str = "SELECT MAX(owner_last_seq) FROM ledger_accounts WHERE owner = $1";
const ACCOUNT_COLUMNS: &str = "id, owner, token, posted, held, owner_last_seq";

/// `(seq, hash, at_ms)` of the head row.
type HeadTuple = (i64, String, i64);
/// An account row's [`ACCOUNT_COLUMNS`], in order.
type AccountTuple = (String, String, String, i64, i64, i64);
/// A hold row's [`HOLD_COLUMNS`], in order.
type HoldTuple = (String, String, String, i64, i64);
/// `(id, digest, seq)` of an entry.
type SeenTuple = (String, String, i64);
const HOLD_COLUMNS: &str = "id, debit_owner, body, is_open, expires_at_ms";

fn entry_from(row: &AnyRow) -> Result<LedgerEntryRow> {
    Ok(LedgerEntryRow {
        seq: to_u64(col(row, "seq")?),
        id: col(row, "id")?,
        digest: col(row, "digest")?,
        at_ms: col(row, "at_ms")?,
        debit_owner: col(row, "debit_owner")?,
        credit_owner: col(row, "credit_owner")?,
        body: col(row, "body")?,
        hash: col(row, "hash")?,
        debit_prev_seq: to_u64(col(row, "debit_prev_seq")?),
        credit_prev_seq: to_u64(col(row, "credit_prev_seq")?),
    })
}

fn seal_from(row: &AnyRow) -> Result<EpochSealRow> {
    Ok(EpochSealRow {
        epoch: to_u64(col(row, "epoch")?),
        part: u32::try_from(col::<i64>(row, "part")?).unwrap_or(u32::MAX),
        first_seq: to_u64(col(row, "first_seq")?),
        entry_count: to_u64(col(row, "entry_count")?),
        seal: col(row, "seal")?,
        rewards_paid_micros: col::<Option<i64>>(row, "rewards_paid_micros")?.map(to_u64),
    })
}

/// `$first, $first+1, ...` for `count` parameters, in order. SQLite gets anonymous `?`: it
/// keeps `$N` and `?N` in a list that naming each parameter scans, which is quadratic in a
/// statement of thousands (seconds at 30,000).
fn placeholders(backend: Backend, first: usize, count: usize) -> String {
    let mut text = String::with_capacity(count * 7);
    for i in first..first + count {
        if i > first {
            text.push_str(", ");
        }
        match backend {
            Backend::Sqlite => text.push('?'),
            Backend::Postgres => {
                text.push('$');
                text.push_str(&i.to_string());
            }
        }
    }
    text
}

/// `($1, $2), ($3, $4), ...` for `rows` rows of `columns` parameters, written into one
/// string (a batch's statements hold tens of thousands of parameters).
fn value_rows(backend: Backend, rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * (columns * 8 + 4));
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        text.push_str(&placeholders(backend, row * columns + 1, columns));
        text.push(')');
    }
    text
}

/// `rows` in consecutive chunks of at most `size` (at least one), each owned.
fn chunks<T>(rows: impl IntoIterator<Item = T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    let mut rows = rows.into_iter().peekable();
    std::iter::from_fn(move || {
        rows.peek()?;
        Some(rows.by_ref().take(size.max(1)).collect())
    })
}

/// A ledger transaction's connection: sqlx's SQLite driver where the store has a ledger pool
/// (see `Store::ledger_pool`), else `Any`.
enum Tx {
    Any(sqlx::Transaction<'static, sqlx::Any>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// `$body` with `$conn` bound to the connection of the [`Tx`] `$tx`, whichever driver it is:
/// the statements are written once and compiled for each.
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            Tx::Any($conn) => $body,
            Tx::Sqlite($conn) => $body,
        }
    };
}

/// One bind parameter of a row a batch writes; each string is moved in, not copied.
enum Param {
    Int(i64),
    Text(String),
}

/// One open ledger transaction, holding the head's lock until commit or drop.
pub struct LedgerTx {
    tx: Tx,
    backend: Backend,
    /// Whether this transaction holds the head's lock (only such a one may commit).
    locked: bool,
    pub head: LedgerHeadRow,
}

impl std::fmt::Debug for LedgerTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerTx")
            .field("head", &self.head)
            .finish()
    }
}

impl Store {
    /// Begins a ledger batch: takes the head row's write lock (a write first, so SQLite takes
    /// its writer lock at once and PostgreSQL locks the row), then reads the head.
    pub async fn ledger_begin(&self) -> Result<LedgerTx> {
        let mut tx = match self.ledger_pool() {
            Some(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            None => Tx::Any(self.begin_write().await?),
        };
        on_tx!(&mut tx, conn => sqlx::query("UPDATE ledger_head SET seq = seq WHERE id = 1")
            .execute(&mut **conn)
            .await
            .map(|_| ()))?;
        let head = read_head(&mut tx).await?;
        Ok(LedgerTx {
            tx,
            backend: self.backend,
            locked: true,
            head,
        })
    }

    /// A read-only view of the committed ledger, without the head's lock: for a writer that
    /// prepares its next batch while the previous one commits. A plain (deferred) transaction,
    /// not [`Store::begin_write`]: on SQLite `BEGIN IMMEDIATE` would wait for the commit in
    /// flight to release the writer lock, so the next batch could not be prepared beside it.
    /// In WAL mode it reads a snapshot of the committed state beside the writer instead.
    pub async fn ledger_read(&self) -> Result<LedgerTx> {
        let mut tx = Tx::Any(self.pool.begin().await?);
        let head = read_head(&mut tx).await?;
        Ok(LedgerTx {
            tx,
            backend: self.backend,
            locked: false,
            head,
        })
    }

    pub async fn ledger_head(&self) -> Result<LedgerHeadRow> {
        let row = sqlx::query_as(HEAD_SELECT).fetch_one(&self.pool).await?;
        Ok(head_from(row))
    }

    /// Every account of `owner`.
    pub async fn ledger_accounts_of(&self, owner: &str) -> Result<Vec<LedgerAccountRow>> {
        let sql =
            format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE owner = $1 ORDER BY id");
        let rows: Vec<AccountTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(account_from).collect())
    }

    /// The stored balances among `ids` (a page's escrows at once); absent ones never moved.
    pub async fn ledger_balances(&self, ids: &[String]) -> Result<Vec<LedgerAccountRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id IN ({})",
            placeholders(self.backend, 1, ids.len())
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        let rows: Vec<AccountTuple> = query.fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(account_from).collect())
    }

    /// Every account with a balance in `purpose` (such as `stake`) of `token`.
    pub async fn ledger_accounts_like(&self, suffix: &str) -> Result<Vec<LedgerAccountRow>> {
        let sql =
            format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id LIKE $1 ORDER BY id");
        let rows: Vec<AccountTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(format!("%{suffix}"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(account_from).collect())
    }

    /// Entries touching `owner`'s accounts, newest first, below `before_seq`.
    ///
    /// A walk back along the owner's chain (see [`LedgerAccountRow::owner_last_seq`]). It
    /// starts at the owner's entry just below `before_seq` when `before_seq` is one of the
    /// owner's entries (a page's cursor is its last entry), else at the newest one, stepping
    /// over entries at or past `before_seq` (at most [`HISTORY_STEPS_OVER_MAX`]: past that
    /// the page is empty), and stops after `limit` entries.
    pub async fn ledger_history(
        &self,
        owner: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntryRow>> {
        // `chain` holds the entries to visit, how many of those visited were below
        // `before_seq`, and how many were not; it grows until `limit` of the first, so the walk
        // is as long as the page plus the entries stepped over. It starts at the owner's
        // entry before the cursor's when the cursor is the owner's, else at the newest.
        let sql = format!(
            "WITH RECURSIVE chain (seq, taken, passed) AS ( \
                 SELECT COALESCE( \
                     (SELECT CASE WHEN debit_owner = $1 THEN debit_prev_seq \
                                  WHEN credit_owner = $1 THEN credit_prev_seq END \
                      FROM ledger_entries WHERE seq = $2), \
                     ({OWNER_LAST_SEQ}), 0), 0, 0 \
                 UNION ALL \
                 SELECT CASE WHEN e.debit_owner = $1 THEN e.debit_prev_seq ELSE e.credit_prev_seq END, \
                        chain.taken + CASE WHEN e.seq < $2 THEN 1 ELSE 0 END, \
                        chain.passed + CASE WHEN e.seq < $2 THEN 0 ELSE 1 END \
                 FROM chain JOIN ledger_entries e ON e.seq = chain.seq \
                 WHERE chain.taken < $3 AND chain.passed < {HISTORY_STEPS_OVER_MAX} \
             ) \
             SELECT {ENTRY_COLUMNS_OF_E} FROM chain JOIN ledger_entries e ON e.seq = chain.seq \
             WHERE e.seq < $2 ORDER BY e.seq DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(to_i64(before_seq))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from).collect()
    }

    /// Entries touching `owner`'s accounts after `after_seq` and dated `since_ms` or later,
    /// oldest first, at most `limit`: a walk back along the owner's chain from its newest
    /// entry, which stops at `after_seq` or at the first entry dated before `since_ms`
    /// (entries are dated in order).
    pub async fn ledger_owner_entries_after(
        &self,
        owner: &str,
        after_seq: u64,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<LedgerEntryRow>> {
        let sql = format!(
            "WITH RECURSIVE chain (seq) AS ( \
                 SELECT COALESCE(({OWNER_LAST_SEQ}), 0) \
                 UNION ALL \
                 SELECT CASE WHEN e.debit_owner = $1 THEN e.debit_prev_seq ELSE e.credit_prev_seq END \
                 FROM chain JOIN ledger_entries e ON e.seq = chain.seq \
                 WHERE e.seq > $2 AND e.at_ms >= $3 \
             ) \
             SELECT {ENTRY_COLUMNS_OF_E} FROM chain JOIN ledger_entries e ON e.seq = chain.seq \
             WHERE e.seq > $2 AND e.at_ms >= $3 ORDER BY e.seq LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(to_i64(after_seq))
            .bind(since_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from).collect()
    }

    /// Entries from `first_seq` on, in order, at most `limit`.
    pub async fn ledger_entries(&self, first_seq: u64, limit: u32) -> Result<Vec<LedgerEntryRow>> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE seq >= $1 ORDER BY seq LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(first_seq))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from).collect()
    }

    /// `(seq, at_ms, hash)` of entries from `first_seq` on, in order, at most `limit`: what an
    /// epoch's seal and proofs need, without the bodies.
    pub async fn ledger_hashes(
        &self,
        first_seq: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64, String)>> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, hash FROM ledger_entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(first_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    to_u64(col(row, "seq")?),
                    col(row, "at_ms")?,
                    col(row, "hash")?,
                ))
            })
            .collect()
    }

    /// Balances summed per account purpose and token, for supply figures.
    pub async fn ledger_totals(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT id, posted FROM ledger_accounts WHERE owner = 'system'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((col(row, "id")?, col(row, "posted")?)))
            .collect()
    }

    pub async fn ledger_entry_by_id(&self, id: &str) -> Result<Option<LedgerEntryRow>> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry_from).transpose()
    }

    pub async fn ledger_entry(&self, seq: u64) -> Result<Option<LedgerEntryRow>> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE seq = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(seq))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry_from).transpose()
    }

    /// Open holds due at `now_ms`, oldest expiry first.
    pub async fn ledger_holds_due(&self, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM ledger_holds WHERE is_open = 1 AND expires_at_ms <= $1 \
             ORDER BY expires_at_ms, id LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    /// Open holds on accounts of `owner` (for a wallet's view).
    pub async fn ledger_open_holds(&self, owner: &str) -> Result<Vec<LedgerHoldRow>> {
        let sql = format!(
            "SELECT {HOLD_COLUMNS} FROM ledger_holds \
             WHERE debit_owner = $1 AND is_open = 1 ORDER BY expires_at_ms"
        );
        let rows: Vec<HoldTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(hold_from).collect())
    }

    /// The last seal (epoch and part), if any.
    pub async fn ledger_last_seal(&self) -> Result<Option<EpochSealRow>> {
        let row = sqlx::query(
            "SELECT epoch, part, first_seq, entry_count, seal, rewards_paid_micros FROM ledger_epochs \
             ORDER BY epoch DESC, part DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(seal_from).transpose()
    }

    /// Seals from epoch `from` on, in order, at most `limit`.
    pub async fn ledger_seals(&self, from: u64, limit: u32) -> Result<Vec<EpochSealRow>> {
        let rows = sqlx::query(
            "SELECT epoch, part, first_seq, entry_count, seal, rewards_paid_micros FROM ledger_epochs \
             WHERE epoch >= $1 ORDER BY epoch, part LIMIT $2",
        )
        .bind(to_i64(from))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(seal_from).collect()
    }

    /// The seal covering entry `seq`, if its epoch is sealed.
    pub async fn ledger_seal_covering(&self, seq: u64) -> Result<Option<EpochSealRow>> {
        let row = sqlx::query(
            "SELECT epoch, part, first_seq, entry_count, seal, rewards_paid_micros FROM ledger_epochs \
             WHERE first_seq <= $1 AND first_seq + entry_count > $1",
        )
        .bind(to_i64(seq))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(seal_from).transpose()
    }

    /// Records a seal once; a seal already there (another coordinator's) wins.
    pub async fn insert_epoch_seal(&self, seal: &EpochSealRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO ledger_epochs (epoch, part, first_seq, entry_count, seal) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (epoch, part) DO NOTHING",
        )
        .bind(to_i64(seal.epoch))
        .bind(i64::from(seal.part))
        .bind(to_i64(seal.first_seq))
        .bind(to_i64(seal.entry_count))
        .bind(&seal.seal)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The signing key, made by the first coordinator to ask: `(secret hex, public hex)`.
    pub async fn ledger_key(
        &self,
        candidate: (&str, &str),
        now_ms: i64,
    ) -> Result<(String, String)> {
        sqlx::query(
            "INSERT INTO ledger_keys (id, secret_key, public_key, created_at_ms) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(candidate.0)
        .bind(candidate.1)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT secret_key, public_key FROM ledger_keys WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((col(&row, "secret_key")?, col(&row, "public_key")?))
    }
}

const HEAD_SELECT: &str = "SELECT seq, hash, at_ms FROM ledger_head WHERE id = 1";

async fn read_head(tx: &mut Tx) -> Result<LedgerHeadRow> {
    let row = on_tx!(tx, conn => sqlx::query_as(HEAD_SELECT).fetch_one(&mut **conn).await)?;
    Ok(head_from(row))
}

fn head_from((seq, hash, at_ms): HeadTuple) -> LedgerHeadRow {
    LedgerHeadRow {
        seq: to_u64(seq),
        hash,
        at_ms,
    }
}

fn account_from(
    (id, owner, token, posted, held, owner_last_seq): AccountTuple,
) -> LedgerAccountRow {
    LedgerAccountRow {
        id,
        owner,
        token,
        posted,
        held,
        owner_last_seq: to_u64(owner_last_seq),
    }
}

fn seen_from((id, digest, seq): SeenTuple) -> LedgerSeenRow {
    LedgerSeenRow {
        id,
        digest,
        seq: to_u64(seq),
    }
}

fn hold_from((id, debit_owner, body, is_open, expires_at_ms): HoldTuple) -> LedgerHoldRow {
    LedgerHoldRow {
        id,
        debit_owner,
        body,
        is_open: is_open == 1,
        expires_at_ms,
    }
}

impl LedgerTx {
    /// Stored balances of `ids` (absent ones have never moved).
    pub async fn accounts(&mut self, ids: &[String]) -> Result<Vec<LedgerAccountRow>> {
        let select = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id");
        let rows: Vec<AccountTuple> = self.fetch_in(&select, "", ids).await?;
        Ok(rows.into_iter().map(account_from).collect())
    }

    /// Stored holds among `ids`.
    pub async fn holds(&mut self, ids: &[String]) -> Result<Vec<LedgerHoldRow>> {
        let select = format!("SELECT {HOLD_COLUMNS} FROM ledger_holds WHERE id");
        let rows: Vec<HoldTuple> = self.fetch_in(&select, "", ids).await?;
        Ok(rows.into_iter().map(hold_from).collect())
    }

    /// The newest entry of each of `owners` that has one (see
    /// [`LedgerAccountRow::owner_last_seq`]).
    pub async fn owner_last_seqs(&mut self, owners: &[String]) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = self
            .fetch_in(
                "SELECT owner, MAX(owner_last_seq) AS last_seq FROM ledger_accounts WHERE owner",
                " GROUP BY owner",
                owners,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(owner, last_seq)| (owner, to_u64(last_seq)))
            .collect())
    }

    /// Which of `ids` were applied before, with their digests.
    pub async fn seen(&mut self, ids: &[String]) -> Result<Vec<LedgerSeenRow>> {
        let rows: Vec<SeenTuple> = self
            .fetch_in(
                "SELECT id, digest, seq FROM ledger_entries WHERE id",
                "",
                ids,
            )
            .await?;
        Ok(rows.into_iter().map(seen_from).collect())
    }

    /// `select` (ending in a column) `IN` each chunk of `ids`, then `tail`, as tuples `T`.
    async fn fetch_in<T>(&mut self, select: &str, tail: &str, ids: &[String]) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, AnyRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        let mut found = Vec::new();
        for chunk in ids.chunks(PARAMS_PER_STATEMENT_MAX) {
            let sql = format!(
                "{select} IN ({}){tail}",
                placeholders(self.backend, 1, chunk.len())
            );
            let rows: Vec<T> = on_tx!(&mut self.tx, conn => {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(id);
                }
                query.fetch_all(&mut **conn).await
            })?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// `{into} VALUES (...), ...{tail}` over `rows` of `N` parameters each, in statements of
    /// at most [`PARAMS_PER_STATEMENT_MAX`] parameters.
    async fn insert_rows<const N: usize>(
        &mut self,
        into: &str,
        tail: &str,
        rows: impl Iterator<Item = [Param; N]>,
    ) -> std::result::Result<(), sqlx::Error> {
        for chunk in chunks(rows, PARAMS_PER_STATEMENT_MAX / N) {
            let sql = format!(
                "{into} VALUES {}{tail}",
                value_rows(self.backend, chunk.len(), N)
            );
            on_tx!(&mut self.tx, conn => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for param in chunk.into_iter().flatten() {
                    query = match param {
                        Param::Int(value) => query.bind(value),
                        Param::Text(value) => query.bind(value),
                    };
                }
                query.execute(&mut **conn).await.map(|_| ())
            })?;
        }
        Ok(())
    }

    /// Writes a batch's entries, changed balances and holds, moves the head, and commits. An
    /// entry id already stored (a racing writer) fails the whole batch with a conflict. The
    /// rows are taken by value: each string is moved into its bind parameter, not copied.
    pub async fn commit(
        mut self,
        entries: Vec<LedgerEntryRow>,
        accounts: Vec<LedgerAccountRow>,
        holds: Vec<LedgerHoldRow>,
        head: &LedgerHeadRow,
    ) -> Result<()> {
        if !self.locked {
            return Err(StoreError::Conflict("ledger head (read-only view)"));
        }
        // On SQLite `OR FAIL`: a statement that may abort halfway must first copy every page
        // it changes into a statement journal (spilled to a temporary file past 64 KiB), to
        // undo just that statement; a quarter of the batch's insert time. A failed statement
        // here fails the whole transaction, which is dropped and rolled back, so no statement
        // journal is needed. PostgreSQL has no such clause, nor such a journal.
        let insert = match self.backend {
            Backend::Sqlite => "INSERT OR FAIL",
            Backend::Postgres => "INSERT",
        };
        let entries = entries.into_iter().map(|e| {
            [
                Param::Int(to_i64(e.seq)),
                Param::Text(e.id),
                Param::Text(e.digest),
                Param::Int(e.at_ms),
                Param::Text(e.debit_owner),
                Param::Text(e.credit_owner),
                Param::Text(e.body),
                Param::Text(e.hash),
                Param::Int(to_i64(e.debit_prev_seq)),
                Param::Int(to_i64(e.credit_prev_seq)),
            ]
        });
        self.insert_rows(
            &format!("{insert} INTO ledger_entries ({ENTRY_COLUMNS})"),
            "",
            entries,
        )
        .await
        .map_err(|e| crate::conflict_on_unique(e, "ledger entry"))?;
        let accounts = accounts.into_iter().map(|a| {
            [
                Param::Text(a.id),
                Param::Text(a.owner),
                Param::Text(a.token),
                Param::Int(a.posted),
                Param::Int(a.held),
                Param::Int(to_i64(a.owner_last_seq)),
            ]
        });
        self.insert_rows(
            &format!("INSERT INTO ledger_accounts ({ACCOUNT_COLUMNS})"),
            " ON CONFLICT (id) DO UPDATE SET posted = excluded.posted, held = excluded.held, \
             owner_last_seq = excluded.owner_last_seq",
            accounts,
        )
        .await?;
        let holds = holds.into_iter().map(|h| {
            [
                Param::Text(h.id),
                Param::Text(h.debit_owner),
                Param::Text(h.body),
                Param::Int(i64::from(h.is_open)),
                Param::Int(h.expires_at_ms),
            ]
        });
        self.insert_rows(
            &format!("INSERT INTO ledger_holds ({HOLD_COLUMNS})"),
            " ON CONFLICT (id) DO UPDATE SET body = excluded.body, is_open = excluded.is_open",
            holds,
        )
        .await?;
        let moved = on_tx!(&mut self.tx, conn => sqlx::query(
            "UPDATE ledger_head SET seq = $1, hash = $2, at_ms = $3 WHERE id = 1 AND seq = $4",
        )
        .bind(to_i64(head.seq))
        .bind(&head.hash)
        .bind(head.at_ms)
        .bind(to_i64(self.head.seq))
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        if moved != 1 {
            return Err(StoreError::Conflict("ledger head"));
        }
        on_tx!(self.tx, tx => tx.commit().await)?;
        Ok(())
    }
}
