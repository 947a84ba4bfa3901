//! The ledger writer: one task per coordinator that gathers submitted transfers into batches
//! (up to [`BATCH_TRANSFERS_MAX`], whatever is waiting), applies each batch to the pure book,
//! and writes it in one database transaction, so a thousand transfers cost about one commit.
//!
//! Each batch starts by locking the chain's head row, so writers in several coordinators
//! append in turn. The writer keeps the book of its last batch as a cache: when the head it
//! finds is the head it wrote, the balances it holds are current and only the accounts it has
//! never seen are read; otherwise it starts from an empty book. Applied ids are always checked
//! against the store, so the cache can never let a transfer apply twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use flotilla_ledger::log::{decode_hash, encode_hash};
use flotilla_ledger::{AccountId, Balance, Book, Entry, Head, Hold, Op, Outcome, Seen, Transfer};
use flotilla_store::{
    LedgerAccountRow, LedgerEntryRow, LedgerHeadRow, LedgerHoldRow, LedgerTx, Store,
};
use tokio::sync::{mpsc, oneshot};

/// Most transfers written in one database transaction (TigerBeetle's batch size).
pub const BATCH_TRANSFERS_MAX: usize = 8_190;
/// Most transfers one submission may carry.
pub const SUBMISSION_TRANSFERS_MAX: usize = 1_000;
/// Submissions waiting for the writer before `submit` answers busy.
pub const QUEUE_SUBMISSIONS_MAX: usize = 16_384;
/// Accounts, and holds, the writer's book may hold before it starts over.
const CACHE_ACCOUNTS_MAX: usize = 1_000_000;
const CACHE_HOLDS_MAX: usize = 1_000_000;

/// What the writer keeps from one batch to the next, as of the head its book is at: the book
/// (balances, holds, applied ids), and each owner's newest entry, which the owner's next
/// entry points back to (`flotilla_store::LedgerAccountRow::owner_last_seq`). Both are
/// dropped together whenever the store may have moved without this writer.
#[derive(Debug)]
pub struct Cache {
    book: Book,
    /// Owners the writer has looked up or written; absent ones are read before a batch.
    owner_last_seq: HashMap<String, u64>,
}

impl Cache {
    fn new(head: Head) -> Cache {
        Cache {
            book: Book::new(head),
            owner_last_seq: HashMap::new(),
        }
    }

    fn too_big(&self) -> bool {
        self.book.account_count() > CACHE_ACCOUNTS_MAX
            || self.book.hold_count() > CACHE_HOLDS_MAX
            || self.owner_last_seq.len() > CACHE_ACCOUNTS_MAX
    }
}

/// Why a submission did not reach the book.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger is busy; retry shortly")]
    Busy,
    #[error(
        "a submission holds 1 to {SUBMISSION_TRANSFERS_MAX} transfers, and its last is not linked"
    )]
    BadSubmission,
    #[error("ledger storage failed: {0}")]
    Store(#[from] flotilla_store::StoreError),
    #[error("stored ledger row is corrupt: {0}")]
    Corrupt(String),
    #[error("the ledger writer stopped")]
    Stopped,
}

struct Submission {
    /// Taken by the writer when it gathers the submission into a batch.
    transfers: Vec<Transfer>,
    /// How many transfers it carried: how many outcomes its reply takes.
    count: usize,
    reply: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// A handle to the writer, and the ledger's signing key.
#[derive(Clone)]
pub struct Ledger {
    sender: mpsc::Sender<Submission>,
    key: Arc<SigningKey>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("public_key", &self.public_key_hex())
            .finish()
    }
}

impl Ledger {
    /// Loads (or, on a new database, makes) the signing key and starts the writer.
    pub async fn start(store: Store) -> Result<(Ledger, tokio::task::JoinHandle<()>), LedgerError> {
        let key = load_key(&store).await?;
        let (sender, receiver) = mpsc::channel(QUEUE_SUBMISSIONS_MAX);
        let task = tokio::spawn(write_loop(store, receiver));
        Ok((
            Ledger {
                sender,
                key: Arc::new(key),
            },
            task,
        ))
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Applies `transfers` (one linked chain or independent transfers) and answers each one's
    /// outcome once its batch is durable.
    pub async fn submit(&self, transfers: Vec<Transfer>) -> Result<Vec<Outcome>, LedgerError> {
        let well_formed = !transfers.is_empty()
            && transfers.len() <= SUBMISSION_TRANSFERS_MAX
            && transfers.last().is_some_and(|t| !t.linked);
        if !well_formed {
            return Err(LedgerError::BadSubmission);
        }
        let (reply, answer) = oneshot::channel();
        let count = transfers.len();
        self.sender
            .try_send(Submission {
                transfers,
                count,
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => LedgerError::Busy,
                mpsc::error::TrySendError::Closed(_) => LedgerError::Stopped,
            })?;
        match answer.await {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(error)) => Err(LedgerError::Corrupt(error)),
            Err(_) => Err(LedgerError::Stopped),
        }
    }

    /// Submits one transfer.
    pub async fn submit_one(&self, transfer: Transfer) -> Result<Outcome, LedgerError> {
        let mut outcomes = self.submit(vec![transfer]).await?;
        outcomes.pop().ok_or(LedgerError::Stopped)
    }
}

async fn load_key(store: &Store) -> Result<SigningKey, LedgerError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
    let candidate = SigningKey::from_bytes(&seed);
    let secret = hex::encode(candidate.to_bytes());
    let public = hex::encode(candidate.verifying_key().to_bytes());
    let (secret, _) = store
        .ledger_key((&secret, &public), flotilla_proto::time::now_unix_ms())
        .await?;
    let bytes: [u8; 32] = hex::decode(&secret)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| LedgerError::Corrupt("ledger signing key".into()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// The writer. It prepares each batch (load, apply, build rows) on its book while the batch
/// before is still committing, then commits it once that one is durable: the CPU work and the
/// database's work overlap. A prepared batch assumed its predecessor would commit; when one
/// does not, the writer drops its book and runs the next batch again from the store.
async fn write_loop(store: Store, mut receiver: mpsc::Receiver<Submission>) {
    let mut cache: Option<Cache> = None;
    let mut inflight: Option<InFlight> = None;
    loop {
        let submissions = match &inflight {
            Some(_) => {
                let ready = gather(None, &mut receiver);
                if ready.is_empty() {
                    finish(&store, &mut cache, inflight.take()).await;
                    continue;
                }
                ready
            }
            None => match receiver.recv().await {
                Some(first) => gather(Some(first), &mut receiver),
                None => return,
            },
        };
        if inflight.is_some() && cache.as_ref().is_some_and(Cache::too_big) {
            finish(&store, &mut cache, inflight.take()).await;
            cache = None;
        }
        let mut submissions = submissions;
        let transfers: Vec<Transfer> = submissions
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.transfers))
            .collect();
        let now_ms = flotilla_proto::time::now_unix_ms();
        let prepared = prepare(&store, &mut cache, &transfers, now_ms).await;
        let continuous = finish(&store, &mut cache, inflight.take()).await;
        match prepared {
            Ok(prepared) if continuous => {
                inflight = Some(start(&store, submissions, transfers, prepared));
            }
            _ => {
                cache = None;
                let result = commit_batch(&store, &mut cache, &transfers, now_ms).await;
                reply(submissions, result);
            }
        }
    }
}

/// The first submission (or, without one, whatever is waiting) and more, up to a batch.
fn gather(first: Option<Submission>, receiver: &mut mpsc::Receiver<Submission>) -> Vec<Submission> {
    let mut submissions: Vec<Submission> = first.into_iter().collect();
    let mut count: usize = submissions.iter().map(|s| s.count).sum();
    while count < BATCH_TRANSFERS_MAX {
        match receiver.try_recv() {
            Ok(next) => {
                count += next.count;
                submissions.push(next);
            }
            Err(_) => break,
        }
    }
    submissions
}

fn reply(submissions: Vec<Submission>, result: Result<Vec<Outcome>, LedgerError>) {
    match result {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for submission in submissions {
                let mine: Vec<Outcome> = outcomes.by_ref().take(submission.count).collect();
                let _ = submission.reply.send(Ok(mine));
            }
        }
        Err(error) => {
            tracing::warn!(%error, "ledger batch not written");
            for submission in submissions {
                let _ = submission.reply.send(Err(error.to_string()));
            }
        }
    }
}

/// A batch applied to the book, and its rows.
struct Prepared {
    outcomes: Vec<Outcome>,
    rows: BatchRows,
    /// The head it was applied on, which the store must still have when it commits.
    base: Head,
    head: Head,
}

/// A prepared batch being committed.
struct InFlight {
    submissions: Vec<Submission>,
    transfers: Vec<Transfer>,
    outcomes: Vec<Outcome>,
    head: Head,
    commit: tokio::task::JoinHandle<Result<(), LedgerError>>,
}

/// Applies a batch to the book (made from the committed head when there is none), reading
/// what it lacks from the committed state, without taking the head's lock: anything the
/// batches in flight touched is in the book already. Ids are not looked up (as in
/// [`commit_batch`]'s first attempt); ids applied by batches in flight are in the book.
async fn prepare(
    store: &Store,
    cache: &mut Option<Cache>,
    transfers: &[Transfer],
    now_ms: i64,
) -> Result<Prepared, LedgerError> {
    let mut read = store.ledger_read().await?;
    let committed = head_from_row(&read.head)?;
    let cache = cache.get_or_insert_with(|| Cache::new(committed));
    let base = cache.book.head();
    load_for(&mut read, cache, transfers).await?;
    let (outcomes, canonical) = cache.book.apply_batch_canonical(transfers, now_ms);
    if refused_a_known_id(&mut read, transfers, &outcomes).await? {
        return Err(LedgerError::Store(flotilla_store::StoreError::Conflict(
            "ledger entry",
        )));
    }
    let rows = BatchRows::collect(cache, &outcomes, canonical)?;
    Ok(Prepared {
        outcomes,
        rows,
        base,
        head: cache.book.head(),
    })
}

/// Starts committing a prepared batch: lock the head, check it is the batch's base, write.
fn start(
    store: &Store,
    submissions: Vec<Submission>,
    transfers: Vec<Transfer>,
    prepared: Prepared,
) -> InFlight {
    let store = store.clone();
    let Prepared {
        outcomes,
        rows,
        base,
        head,
    } = prepared;
    let commit = tokio::spawn(async move {
        let tx = store.ledger_begin().await?;
        if head_from_row(&tx.head)? != base {
            return Err(LedgerError::Store(flotilla_store::StoreError::Conflict(
                "ledger head",
            )));
        }
        tx.commit(rows.entries, rows.accounts, rows.holds, &head_row(head))
            .await?;
        Ok(())
    });
    InFlight {
        submissions,
        transfers,
        outcomes,
        head,
        commit,
    }
}

/// Waits for the batch in flight and answers it. True when it committed as prepared, so the
/// book (which includes it) is still the store's future; false when it had to run again
/// (conflict) or failed, and the book was dropped.
async fn finish(store: &Store, cache: &mut Option<Cache>, inflight: Option<InFlight>) -> bool {
    let Some(batch) = inflight else {
        return true;
    };
    let result = match batch.commit.await {
        Ok(result) => result,
        Err(join) => Err(LedgerError::Corrupt(format!("ledger commit task: {join}"))),
    };
    match result {
        Ok(()) => {
            if let Some(kept) = cache {
                kept.book.trim_seen_through(batch.head.seq);
            }
            reply(batch.submissions, Ok(batch.outcomes));
            true
        }
        Err(LedgerError::Store(flotilla_store::StoreError::Conflict(_))) => {
            *cache = None;
            let now_ms = flotilla_proto::time::now_unix_ms();
            let result = commit_batch(store, cache, &batch.transfers, now_ms).await;
            *cache = None;
            reply(batch.submissions, result);
            false
        }
        Err(error) => {
            *cache = None;
            reply(batch.submissions, Err(error));
            false
        }
    }
}

/// Applies and writes one batch. On any error nothing is written and the cache is dropped.
///
/// The first attempt does not look up which ids were applied before: almost none were, and
/// the entries' unique index refuses a batch that applies one again; a refused transfer's id
/// is looked up before commit. Only when either finds an earlier id is the batch applied again
/// with every id looked up, to answer each retry with its first outcome.
pub async fn commit_batch(
    store: &Store,
    cache: &mut Option<Cache>,
    transfers: &[Transfer],
    now_ms: i64,
) -> Result<Vec<Outcome>, LedgerError> {
    match try_commit(store, cache, transfers, now_ms, false).await {
        Err(LedgerError::Store(flotilla_store::StoreError::Conflict(_))) => {
            try_commit(store, cache, transfers, now_ms, true).await
        }
        other => other,
    }
}

async fn try_commit(
    store: &Store,
    cache: &mut Option<Cache>,
    transfers: &[Transfer],
    now_ms: i64,
    look_up_ids: bool,
) -> Result<Vec<Outcome>, LedgerError> {
    let mut tx = store.ledger_begin().await?;
    let head = head_from_row(&tx.head)?;
    let mut kept = match cache.take() {
        Some(kept) if kept.book.head() == head => kept,
        _ => Cache::new(head),
    };
    if look_up_ids {
        load_seen(&mut tx, &mut kept.book, transfers).await?;
    }
    load_for(&mut tx, &mut kept, transfers).await?;
    let (outcomes, canonical) = kept.book.apply_batch_canonical(transfers, now_ms);
    if !look_up_ids && refused_a_known_id(&mut tx, transfers, &outcomes).await? {
        return Err(LedgerError::Store(flotilla_store::StoreError::Conflict(
            "ledger entry",
        )));
    }
    let rows = BatchRows::collect(&mut kept, &outcomes, canonical)?;
    tx.commit(
        rows.entries,
        rows.accounts,
        rows.holds,
        &head_row(kept.book.head()),
    )
    .await?;
    kept.book.trim();
    if !kept.too_big() {
        *cache = Some(kept);
    }
    Ok(outcomes)
}

/// Whether a transfer refused without its id looked up was applied before: then its answer
/// is "duplicate", not the refusal (a retry after the balance changed), and the batch runs
/// again with every id looked up.
async fn refused_a_known_id(
    tx: &mut LedgerTx,
    transfers: &[Transfer],
    outcomes: &[Outcome],
) -> Result<bool, LedgerError> {
    let refused: Vec<String> = transfers
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| matches!(outcome, Outcome::Refused(_)))
        .map(|(transfer, _)| transfer.id.clone())
        .collect();
    if refused.is_empty() {
        return Ok(false);
    }
    Ok(!tx.seen(&refused).await?.is_empty())
}

/// One account's stored balance (zero for one that never moved), outside any batch.
pub async fn balance(
    store: &Store,
    account: &AccountId,
) -> Result<Balance, flotilla_store::StoreError> {
    let mut found = balances(store, std::slice::from_ref(account)).await?;
    Ok(found.remove(&account.to_string()).unwrap_or_default())
}

/// Several accounts' stored balances at once, by account id; an account that never moved is
/// left out (its balance is zero).
pub async fn balances(
    store: &Store,
    accounts: &[AccountId],
) -> Result<std::collections::HashMap<String, Balance>, flotilla_store::StoreError> {
    let ids: Vec<String> = accounts.iter().map(AccountId::to_string).collect();
    let rows = store.ledger_balances(&ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let balance = Balance {
                posted: row.posted,
                held: row.held,
            };
            (row.id, balance)
        })
        .collect())
}

fn head_row(head: Head) -> LedgerHeadRow {
    LedgerHeadRow {
        seq: head.seq,
        hash: encode_hash(&head.hash),
        at_ms: head.at_ms,
    }
}

fn head_from_row(row: &LedgerHeadRow) -> Result<Head, LedgerError> {
    let hash = decode_hash(&row.hash).ok_or_else(|| LedgerError::Corrupt("ledger head".into()))?;
    Ok(Head {
        seq: row.seq,
        hash,
        at_ms: row.at_ms,
    })
}

/// Loads into `book` which of the batch's ids were applied before, with their digests.
async fn load_seen(
    tx: &mut LedgerTx,
    book: &mut Book,
    transfers: &[Transfer],
) -> Result<(), LedgerError> {
    let ids: Vec<String> = unique(transfers.iter().map(|t| t.id.clone()))
        .into_iter()
        .collect();
    for row in tx.seen(&ids).await? {
        let digest =
            decode_hash(&row.digest).ok_or_else(|| LedgerError::Corrupt(row.id.clone()))?;
        book.load_seen(
            row.id,
            Seen {
                digest,
                seq: row.seq,
            },
        );
    }
    Ok(())
}

/// Loads into the cache what the batch names and the cache does not hold: holds, the
/// balances of every account the transfers and their holds touch, and their owners' newest
/// entries.
async fn load_for(
    tx: &mut LedgerTx,
    cache: &mut Cache,
    transfers: &[Transfer],
) -> Result<(), LedgerError> {
    let Cache {
        book,
        owner_last_seq,
    } = cache;
    let hold_ids: Vec<String> = unique(transfers.iter().filter_map(|t| match &t.op {
        Op::Post { hold, .. } | Op::Void { hold } | Op::Expire { hold } => Some(hold.clone()),
        _ => None,
    }))
    .into_iter()
    .filter(|id| !book.knows_hold(id))
    .collect();
    for row in tx.holds(&hold_ids).await? {
        let hold: Hold =
            serde_json::from_str(&row.body).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        book.load_hold(hold);
    }
    // Borrowed, sorted and deduplicated: a batch names two accounts per transfer, and the
    // cached book knows most of them, so nothing is copied for those.
    let mut accounts: Vec<&AccountId> = Vec::with_capacity(2 * transfers.len());
    let mut owners: Vec<&str> = Vec::new();
    for transfer in transfers {
        let pair = match &transfer.op {
            Op::Move { debit, credit, .. } | Op::Hold { debit, credit, .. } => {
                Some((debit, credit))
            }
            Op::Post { hold, .. } | Op::Void { hold } | Op::Expire { hold } => {
                book.hold(hold).map(|hold| (&hold.debit, &hold.credit))
            }
            Op::Record { .. } => None,
        };
        if let Some((debit, credit)) = pair {
            accounts.extend(
                [debit, credit]
                    .into_iter()
                    .filter(|a| !book.knows_account(a)),
            );
            owners.extend(
                [debit.owner(), credit.owner()]
                    .into_iter()
                    .filter(|owner| !owner_last_seq.contains_key(*owner)),
            );
        }
    }
    owners.sort_unstable();
    owners.dedup();
    let owners: Vec<String> = owners.into_iter().map(str::to_owned).collect();
    let found: HashMap<String, u64> = tx.owner_last_seqs(&owners).await?.into_iter().collect();
    for owner in owners {
        let last_seq = found.get(&owner).copied().unwrap_or(0);
        owner_last_seq.insert(owner, last_seq);
    }
    accounts.sort_unstable();
    accounts.dedup();
    let missing: Vec<String> = accounts.into_iter().map(ToString::to_string).collect();
    for row in tx.accounts(&missing).await? {
        let account: AccountId = row
            .id
            .parse()
            .map_err(|_| LedgerError::Corrupt(row.id.clone()))?;
        book.load_balance(
            account,
            Balance {
                posted: row.posted,
                held: row.held,
            },
        );
    }
    Ok(())
}

fn unique(ids: impl Iterator<Item = String>) -> BTreeSet<String> {
    ids.collect()
}

/// What a batch writes: its entries, and the balances and holds they changed.
struct BatchRows {
    entries: Vec<LedgerEntryRow>,
    accounts: Vec<LedgerAccountRow>,
    holds: Vec<LedgerHoldRow>,
}

impl BatchRows {
    /// The rows of the batch's applied entries, whose bodies are their canonical JSON as the
    /// book hashed it (`canonical`, beside `outcomes`); each entry is chained to its owners'
    /// previous entries, and the cache's owners advanced past it.
    fn collect(
        cache: &mut Cache,
        outcomes: &[Outcome],
        canonical: Vec<Option<String>>,
    ) -> Result<BatchRows, LedgerError> {
        let Cache {
            book,
            owner_last_seq,
        } = cache;
        let mut applied: Vec<&Entry> = Vec::new();
        let mut bodies: Vec<String> = Vec::new();
        for (outcome, body) in outcomes.iter().zip(canonical) {
            if let Outcome::Applied(entry) = outcome {
                let body = body.ok_or_else(|| {
                    LedgerError::Corrupt("an applied entry without its JSON".into())
                })?;
                applied.push(entry);
                bodies.push(body);
            }
        }
        let mut entries = Vec::with_capacity(applied.len());
        // Sorted and deduplicated once at the end (cheaper than hashing each account name),
        // which also hands the store its balance rows in key order.
        let mut touched_accounts: Vec<&AccountId> = Vec::with_capacity(2 * applied.len());
        let mut touched_holds: HashSet<&str> = HashSet::new();
        for ((index, entry), body) in applied.iter().enumerate().zip(bodies) {
            // Applied entries form one chain: each one's hash is the next one's prev_hash, and
            // the last one's is the head's, so none is hashed twice.
            let hash = applied.get(index + 1).map_or_else(
                || encode_hash(&book.head().hash),
                |next| next.prev_hash.clone(),
            );
            let digest = book
                .seen(&entry.id)
                .map(|seen| encode_hash(&seen.digest))
                .expect("an applied id is seen until the book is trimmed");
            if let Some((debit, credit)) = entry.effect.accounts() {
                touched_accounts.push(debit);
                touched_accounts.push(credit);
            }
            match &entry.effect {
                flotilla_ledger::Effect::Hold { .. } => {
                    touched_holds.insert(&entry.id);
                }
                flotilla_ledger::Effect::Resolve { hold, .. } => {
                    touched_holds.insert(hold);
                }
                _ => {}
            }
            let mut row = entry_row(entry, body, digest, hash);
            (row.debit_prev_seq, row.credit_prev_seq) = chain(
                owner_last_seq,
                &row.debit_owner,
                &row.credit_owner,
                entry.seq,
            )?;
            entries.push(row);
        }
        touched_accounts.sort_unstable();
        touched_accounts.dedup();
        let accounts = touched_accounts
            .into_iter()
            .map(|account| {
                let balance = book.balance(account);
                LedgerAccountRow {
                    id: account.to_string(),
                    owner: account.owner().to_owned(),
                    token: account.token().as_str().to_owned(),
                    posted: balance.posted,
                    held: balance.held,
                    owner_last_seq: owner_last_seq.get(account.owner()).copied().unwrap_or(0),
                }
            })
            .collect();
        let holds = touched_holds
            .into_iter()
            .filter_map(|id| book.hold(id))
            .map(|hold| LedgerHoldRow {
                id: hold.id.clone(),
                debit_owner: hold.debit.owner().to_owned(),
                body: serde_json::to_string(hold).expect("a hold serializes"),
                is_open: hold.resolution.is_none(),
                expires_at_ms: hold.expires_at_ms,
            })
            .collect();
        Ok(BatchRows {
            entries,
            accounts,
            holds,
        })
    }
}

/// Chains entry `seq` of `debit_owner` and `credit_owner` (empty for a record, which no
/// owner's history shows): the owners' previous entries, and each owner's newest is now
/// `seq`. An entry between two accounts of one owner points back once, twice over.
fn chain(
    owner_last_seq: &mut HashMap<String, u64>,
    debit_owner: &str,
    credit_owner: &str,
    seq: u64,
) -> Result<(u64, u64), LedgerError> {
    let mut previous = |owner: &str| -> Result<u64, LedgerError> {
        if owner.is_empty() {
            return Ok(0);
        }
        let last = owner_last_seq
            .get_mut(owner)
            .ok_or_else(|| LedgerError::Corrupt(format!("owner {owner} was not loaded")))?;
        Ok(std::mem::replace(last, seq))
    };
    let debit_prev_seq = previous(debit_owner)?;
    let credit_prev_seq = if credit_owner == debit_owner {
        debit_prev_seq
    } else {
        previous(credit_owner)?
    };
    Ok((debit_prev_seq, credit_prev_seq))
}

fn entry_row(entry: &Entry, body: String, digest: String, hash: String) -> LedgerEntryRow {
    let (debit_owner, credit_owner) = entry
        .effect
        .accounts()
        .map(|(d, c)| (d.owner().to_owned(), c.owner().to_owned()))
        .unwrap_or_default();
    LedgerEntryRow {
        seq: entry.seq,
        id: entry.id.clone(),
        digest,
        at_ms: entry.at_ms,
        debit_owner,
        credit_owner,
        body,
        hash,
        debit_prev_seq: 0,
        credit_prev_seq: 0,
    }
}

/// Parses a stored entry.
pub fn entry_from_row(row: &LedgerEntryRow) -> Result<Entry, LedgerError> {
    serde_json::from_str(&row.body)
        .map_err(|e| LedgerError::Corrupt(format!("entry {}: {e}", row.seq)))
}

#[cfg(test)]
mod tests {
    use flotilla_ledger::{Kind, Purpose, Token, TransferError};

    use super::*;

    /// A fresh SQLite store, and a PostgreSQL one when the test command provides a server;
    /// each opened twice, as two coordinators would.
    async fn twin_stores(dir: &std::path::Path) -> Vec<(Store, Store)> {
        let url = dir.join("l.db").display().to_string();
        let mut stores = vec![(
            Store::open(&url).await.unwrap(),
            Store::open(&url).await.unwrap(),
        )];
        if let Ok(admin) = std::env::var("FLOTILLA_TEST_POSTGRES_URL") {
            let url = flotilla_store::create_postgres_database(&admin, "l")
                .await
                .unwrap();
            stores.push((
                Store::open(&url).await.unwrap(),
                Store::open(&url).await.unwrap(),
            ));
        }
        stores
    }

    fn debit(id: String, amount: u64) -> Transfer {
        Transfer {
            id,
            kind: Kind::Transfer,
            op: Op::Move {
                debit: AccountId::main("usr_payer", Token::Iosd),
                credit: AccountId::main("usr_payee", Token::Iosd),
                amount,
            },
            reference: String::new(),
            linked: false,
        }
    }

    /// The pipelined writer under concurrent submissions full of retries: every id applies
    /// once, every answer for an id names the same entry, and the balances are the sum of
    /// what applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_applies_each_id_once_under_retries() {
        let dir = tempfile::tempdir().unwrap();
        for (store, _) in twin_stores(dir.path()).await {
            let (ledger, _writer) = Ledger::start(store.clone()).await.unwrap();
            let fund = Transfer::moving(
                "fund".into(),
                Kind::Deposit,
                AccountId::system(Purpose::External, Token::Iosd),
                AccountId::main("usr_payer", Token::Iosd),
                1_000_000,
            );
            ledger.submit_one(fund).await.unwrap();
            let mut tasks = Vec::new();
            for task in 0..200u64 {
                let ledger = ledger.clone();
                tasks.push(tokio::spawn(async move {
                    // Ids collide within and across submissions; an id's content is fixed.
                    let ids: Vec<u64> = (0..100).map(|i| (task * 37 + i * 11) % 3_000).collect();
                    let batch: Vec<Transfer> = ids
                        .iter()
                        .map(|k| debit(format!("t{k}"), 1 + k % 5))
                        .collect();
                    let outcomes = ledger.submit(batch).await.unwrap();
                    ids.into_iter().zip(outcomes).collect::<Vec<_>>()
                }));
            }
            let mut seq_of: std::collections::HashMap<u64, u64> = Default::default();
            for task in tasks {
                for (id, outcome) in task.await.unwrap() {
                    let seq = match outcome {
                        Outcome::Applied(entry) => entry.seq,
                        Outcome::Duplicate { seq } => seq,
                        Outcome::Refused(error) => panic!("t{id} refused: {error}"),
                    };
                    assert_eq!(
                        *seq_of.entry(id).or_insert(seq),
                        seq,
                        "t{id} answered two entries"
                    );
                }
            }
            let reused = ledger.submit_one(debit("t5".into(), 99)).await.unwrap();
            assert!(matches!(
                reused,
                Outcome::Refused(TransferError::IdReused { .. })
            ));
            let rows = store.ledger_entries(1, 10_000).await.unwrap();
            assert_eq!(rows.len(), 1 + seq_of.len());
            let paid: i64 = seq_of.keys().map(|k| 1 + (k % 5) as i64).sum();
            let payee = store.ledger_accounts_of("usr_payee").await.unwrap();
            assert_eq!(payee[0].posted, paid);
        }
    }

    /// Every entry touching an owner, newest first, read straight from the whole log.
    fn expected_history(rows: &[LedgerEntryRow], owner: &str) -> Vec<u64> {
        let mut seqs: Vec<u64> = rows
            .iter()
            .filter(|r| r.debit_owner == owner || r.credit_owner == owner)
            .map(|r| r.seq)
            .collect();
        seqs.reverse();
        seqs
    }

    /// Owners' histories walk their chains: written by the pipelined writer and by
    /// `commit_batch` with and without a cache (so owners' newest entries come from memory and
    /// from the store), with moves between two accounts of one owner and records of none,
    /// each page, any cursor and the entries after a point are exactly the log's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn histories_follow_each_owners_chain() {
        let dir = tempfile::tempdir().unwrap();
        for (store, _) in twin_stores(dir.path()).await {
            let owners = ["usr_a", "usr_b", "usr_c", "usr_d"];
            let external = AccountId::system(Purpose::External, Token::Io);
            let funding: Vec<Transfer> = owners
                .iter()
                .map(|o| {
                    let main = AccountId::main(o, Token::Io);
                    Transfer::moving(
                        format!("fund-{o}"),
                        Kind::Deposit,
                        external.clone(),
                        main,
                        1_000,
                    )
                })
                .collect();
            commit_batch(&store, &mut None, &funding, 1).await.unwrap();
            let mut state = 7u64;
            let mut random = |n: u64| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 33) % n
            };
            let mut batches = Vec::new();
            for batch in 0..12 {
                let transfers: Vec<Transfer> = (0..1 + random(6))
                    .map(|i| {
                        let id = format!("t{batch}-{i}");
                        let from = owners[random(4) as usize];
                        let to = owners[random(4) as usize];
                        let debit = AccountId::main(from, Token::Io);
                        let credit = if from == to {
                            AccountId::stake(from)
                        } else {
                            AccountId::main(to, Token::Io)
                        };
                        Transfer::moving(id, Kind::Transfer, debit, credit, 1 + random(9))
                    })
                    .collect();
                batches.push(transfers);
            }
            let mut cache = None;
            for (index, batch) in batches.iter().enumerate() {
                match index % 3 {
                    0 => {
                        commit_batch(&store, &mut cache, batch, 2).await.unwrap();
                    }
                    1 => {
                        commit_batch(&store, &mut None, batch, 2).await.unwrap();
                        cache = None;
                    }
                    _ => {
                        let (ledger, _writer) = Ledger::start(store.clone()).await.unwrap();
                        ledger.submit(batch.clone()).await.unwrap();
                        cache = None;
                    }
                }
            }
            let record = Transfer::new(
                "tally".into(),
                Kind::Governance,
                Op::Record {
                    body: "a tally".into(),
                },
                String::new(),
            );
            commit_batch(&store, &mut None, &[record], 3).await.unwrap();
            let rows = store.ledger_entries(1, 10_000).await.unwrap();
            for owner in owners {
                let expected = expected_history(&rows, owner);
                assert!(expected.len() > 3, "{owner}: {expected:?}");
                let mut walked = Vec::new();
                let mut before = u64::MAX >> 1;
                loop {
                    let page = store.ledger_history(owner, before, 3).await.unwrap();
                    walked.extend(page.iter().map(|r| r.seq));
                    match page.last() {
                        Some(last) if page.len() == 3 => before = last.seq,
                        _ => break,
                    }
                }
                assert_eq!(walked, expected, "{owner}");
                // A cursor that is not one of the owner's entries.
                let other = rows
                    .iter()
                    .find(|r| r.debit_owner != owner && r.credit_owner != owner && r.seq > 5)
                    .unwrap()
                    .seq;
                let below: Vec<u64> = expected.iter().copied().filter(|s| *s < other).collect();
                let page = store.ledger_history(owner, other, 500).await.unwrap();
                let page: Vec<u64> = page.iter().map(|r| r.seq).collect();
                assert_eq!(page, below, "{owner} before {other}");
                // Oldest first after a point, at most a limit.
                let after = expected[expected.len() / 2];
                let mut later: Vec<u64> = expected.iter().copied().filter(|s| *s > after).collect();
                later.reverse();
                later.truncate(2);
                let found = store
                    .ledger_owner_entries_after(owner, after, 0, 2)
                    .await
                    .unwrap();
                let found: Vec<u64> = found.iter().map(|r| r.seq).collect();
                assert_eq!(found, later, "{owner} after {after}");
            }
            assert!(
                store
                    .ledger_history("usr_nobody", u64::MAX >> 1, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    /// Two writers (two coordinators, each with its own cache) race 50 debits of 3 against a
    /// balance of 100: exactly 33 apply, nothing is lost or applied twice, and the chain is
    /// one chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_writers_never_overdraw_or_lose_an_update() {
        let dir = tempfile::tempdir().unwrap();
        for (first, second) in twin_stores(dir.path()).await {
            let fund = Transfer {
                id: "fund".into(),
                kind: Kind::Deposit,
                op: Op::Move {
                    debit: AccountId::system(Purpose::External, Token::Iosd),
                    credit: AccountId::main("usr_payer", Token::Iosd),
                    amount: 100,
                },
                reference: String::new(),
                linked: false,
            };
            commit_batch(&first, &mut None, &[fund], 0).await.unwrap();
            let mut tasks = Vec::new();
            for (writer, store) in [first.clone(), second.clone()].into_iter().enumerate() {
                tasks.push(tokio::spawn(async move {
                    let mut cache = None;
                    let mut applied = 0;
                    for i in 0..25 {
                        let transfer = debit(format!("d{writer}-{i}"), 3);
                        let outcomes = commit_batch(&store, &mut cache, &[transfer], 1)
                            .await
                            .unwrap();
                        applied += usize::from(matches!(outcomes[0], Outcome::Applied(_)));
                    }
                    applied
                }));
            }
            let mut applied = 0;
            for task in tasks {
                applied += task.await.unwrap();
            }
            assert_eq!(applied, 33);
            // A retry through the other writer is a duplicate, not a second debit.
            let retried = commit_batch(&second, &mut None, &[debit("d0-0".into(), 3)], 2)
                .await
                .unwrap();
            assert!(
                matches!(retried[0], Outcome::Duplicate { .. }),
                "{retried:?}"
            );
            let rows = first.ledger_entries(1, 1_000).await.unwrap();
            assert_eq!(rows.len(), 34);
            let mut book = Book::default();
            for row in &rows {
                book.replay(&entry_from_row(row).unwrap()).unwrap();
            }
            let payer = AccountId::main("usr_payer", Token::Iosd);
            assert_eq!(book.balance(&payer).posted, 1);
            let stored = first.ledger_accounts_of("usr_payer").await.unwrap();
            assert_eq!(stored[0].posted, 1);
        }
    }
}
