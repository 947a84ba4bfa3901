//! `cargo xtask bench ledger`: durable transfers per second through the coordinator's ledger
//! writer (batches of up to 8,190, each prepared while the one before commits) on SQLite and
//! on a throwaway PostgreSQL that syncs its commits, against the naive loop of one
//! transaction per transfer (`commit_batch` with one transfer) on the same SQLite database in
//! the same run. Both databases sync every ledger commit to disk. SQLite is timed twice: on a
//! fresh ledger, and again after [`FILL_TRANSFERS`] more. Re-runs itself as a release build.

use std::time::Instant;

use anyhow::{Result, bail};
use flotilla_coordinator::ledger::{
    BATCH_TRANSFERS_MAX, Ledger, SUBMISSION_TRANSFERS_MAX, commit_batch,
};
use flotilla_ledger::{AccountId, Kind, Op, Outcome, Purpose, Token, Transfer};
use flotilla_store::Store;

/// Accounts the transfers move between.
const ACCOUNTS: usize = 10_000;
/// Transfers timed in batches, per database: enough batches that SQLite's WAL is copied into
/// the database file (about every dozen batches) within each timed run, not only after it.
const BATCHED_TRANSFERS: usize = 24 * BATCH_TRANSFERS_MAX;
/// Transfers timed one transaction each.
const NAIVE_TRANSFERS: usize = 1_000;
/// Transfers written (untimed) between the first timed run and the second, so the second
/// shows what a grown ledger costs: a write that slows as the ledger grows (an index of
/// entries by a random key) shows here.
const FILL_TRANSFERS: usize = 40 * BATCH_TRANSFERS_MAX;

pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("--here") {
        return crate::rerun_release_bench("ledger");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile_dir()?;
    let sqlite_url = dir.join("ledger.db").display().to_string();
    let (batched_sqlite, grown_sqlite, naive_sqlite) = runtime.block_on(async {
        let store = Store::open(&sqlite_url).await?;
        let batched = measure(&store, BATCHED_TRANSFERS, BATCH_TRANSFERS_MAX, "b").await?;
        let naive = measure(&store, NAIVE_TRANSFERS, 1, "n").await?;
        measure(&store, FILL_TRANSFERS, BATCH_TRANSFERS_MAX, "f").await?;
        let grown = measure(&store, BATCHED_TRANSFERS, BATCH_TRANSFERS_MAX, "g").await?;
        store.close().await;
        anyhow::Ok((batched, grown, naive))
    })?;
    let server = crate::postgres::Server::start_durable()?;
    let batched_postgres = runtime.block_on(async {
        let url = server.create_database("ledger_bench")?;
        let store = Store::open(&url).await?;
        let batched = measure(&store, BATCHED_TRANSFERS, BATCH_TRANSFERS_MAX, "b").await?;
        store.close().await;
        anyhow::Ok(batched)
    })?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "bench: ledger, {ACCOUNTS} accounts, batches of {BATCH_TRANSFERS_MAX}: SQLite {batched_sqlite:.0} transfers/s \
         ({grown_sqlite:.0}/s past {} entries; naive {naive_sqlite:.0}/s, {:.1}x), PostgreSQL {batched_postgres:.0}/s \
         (targets: 100,000/s on SQLite, 20x naive)",
        grown_entries(),
        batched_sqlite / naive_sqlite
    );
    let figures = serde_json::json!({
        "accounts": ACCOUNTS,
        "batch_transfers": BATCH_TRANSFERS_MAX,
        "transfers_per_s_batched_sqlite": batched_sqlite.round(),
        "transfers_per_s_batched_sqlite_grown": grown_sqlite.round(),
        "grown_ledger_entries": grown_entries(),
        "transfers_per_s_naive_sqlite": naive_sqlite.round(),
        "transfers_per_s_batched_postgres": batched_postgres.round(),
        "batched_vs_naive_sqlite": (batched_sqlite / naive_sqlite * 100.0).round() / 100.0,
    });
    println!("{figures}");
    Ok(())
}

/// Entries in the SQLite ledger when the second timed run starts: four fundings of every
/// account (one per run, untimed), the first run, the naive loop and the fill.
fn grown_entries() -> usize {
    4 * ACCOUNTS + BATCHED_TRANSFERS + NAIVE_TRANSFERS + FILL_TRANSFERS
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("flotilla-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn account(index: usize) -> AccountId {
    AccountId::main(&format!("usr_bench{index}"), Token::Iosd)
}

/// Funds every account (untimed), then times `count` transfers between random pairs in
/// batches of `batch`; returns transfers per second.
async fn measure(store: &Store, count: usize, batch: usize, tag: &str) -> Result<f64> {
    let mut cache = None;
    let funding: Vec<Transfer> = (0..ACCOUNTS)
        .map(|i| Transfer {
            id: format!("fund-{tag}-{i}"),
            kind: Kind::Deposit,
            op: Op::Move {
                debit: AccountId::system(Purpose::External, Token::Iosd),
                credit: account(i),
                amount: 1_000_000_000,
            },
            reference: String::new(),
            linked: false,
        })
        .collect();
    for chunk in funding.chunks(BATCH_TRANSFERS_MAX) {
        commit(store, &mut cache, chunk).await?;
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let transfers: Vec<Transfer> = (0..count)
        .map(|i| {
            let from = next(&mut state) % ACCOUNTS;
            let to = (from + 1 + next(&mut state) % (ACCOUNTS - 1)) % ACCOUNTS;
            Transfer {
                id: format!("t-{tag}-{i}"),
                kind: Kind::Transfer,
                op: Op::Move {
                    debit: account(from),
                    credit: account(to),
                    amount: 1 + (next(&mut state) % 1_000) as u64,
                },
                reference: String::new(),
                linked: false,
            }
        })
        .collect();
    if batch == 1 {
        let started = Instant::now();
        for transfer in &transfers {
            commit(store, &mut cache, std::slice::from_ref(transfer)).await?;
        }
        return Ok(count as f64 / started.elapsed().as_secs_f64());
    }
    // Through the coordinator's writer, as the API uses it: submissions of up to 1,000
    // transfers, all waiting at once, which the writer gathers into batches of 8,190.
    let (ledger, _writer) = Ledger::start(store.clone()).await?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for chunk in transfers.chunks(SUBMISSION_TRANSFERS_MAX) {
        let ledger = ledger.clone();
        let chunk = chunk.to_vec();
        pending.push(tokio::spawn(async move { ledger.submit(chunk).await }));
    }
    for task in pending {
        let outcomes = task.await??;
        if let Some(refused) = outcomes.iter().find(|o| !matches!(o, Outcome::Applied(_))) {
            bail!("a benchmark transfer was not applied: {refused:?}");
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn commit(
    store: &Store,
    cache: &mut Option<flotilla_coordinator::ledger::Cache>,
    transfers: &[Transfer],
) -> Result<()> {
    let now_ms = flotilla_proto::time::now_unix_ms();
    let outcomes = commit_batch(store, cache, transfers, now_ms).await?;
    if let Some(refused) = outcomes.iter().find(|o| !matches!(o, Outcome::Applied(_))) {
        bail!("a benchmark transfer was not applied: {refused:?}");
    }
    Ok(())
}

/// SplitMix64: a seeded, dependency-free stream of pseudo-random numbers.
fn next(state: &mut u64) -> usize {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as usize
}
