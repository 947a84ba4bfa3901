//! The ledger's upkeep, each tick: expire due holds (on the server's clock), meter paid
//! rentals (`rent.rs`), pay the last
//! epoch's block rewards, seal finished epochs under signed Merkle roots, and record the
//! tallies of closed proposals. Every step is idempotent (its transfer ids are derived from
//! what it settles), so coordinators sharing a database, or one restarted mid-step, never pay
//! twice. Also builds inclusion proofs and exports for the API.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use flotilla_ledger::emission::{RewardClaim, minimum_stake_micros, split_largest_remainder};
use flotilla_ledger::log::{
    EXPORT_FORMAT, EXPORT_VERSION, EpochSeal, ExportHeader, ExportLine, SEAL_PART_ENTRIES_MAX,
    SignedHead, decode_hash, epoch_of,
};
use flotilla_ledger::{AccountId, InclusionProof, Kind, Op, Outcome, Purpose, Token, Transfer};
use flotilla_proto::device::model_key;
use flotilla_store::{EpochSealRow, MarketRow, WorkerStats};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult};
use crate::ledger::{LedgerError, SUBMISSION_TRANSFERS_MAX, entry_from_row};
use crate::{AppState, now_ms};

/// Holds expired per tick at most.
const EXPIRIES_PER_TICK_MAX: u32 = 1_000;
/// Entry hashes read per page when sealing or proving.
const HASH_PAGE_ENTRIES: u32 = 10_000;

pub async fn run(app: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(app.config.ledger_tick_ms()));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rewards = RewardState::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(error) = tick(&app, &mut rewards).await {
            tracing::warn!(%error, "ledger upkeep incomplete; retrying next tick");
        }
        if let Err(error) = crate::rent::reconcile(&app).await {
            tracing::warn!(%error, "rent reconciler incomplete; retrying next tick");
        }
        if let Err(error) = crate::clusters::reconcile(&app).await {
            tracing::warn!(%error, "cluster reconciler incomplete; retrying next tick");
        }
    }
}

/// What the reward step remembers between epochs: the last epoch paid, and each worker's
/// uptime counters then, so an epoch's uptime is the change since (after a restart, until the
/// first payout, the worker's lifetime fraction stands in).
#[derive(Debug, Default)]
struct RewardState {
    epoch: Option<u64>,
    marks: HashMap<String, WorkerStats>,
}

async fn tick(app: &AppState, rewards: &mut RewardState) -> ApiResult<()> {
    expire_due(app).await?;
    crate::rent::meter_all(app).await?;
    pay_rewards(app, rewards).await?;
    seal_epochs(app).await?;
    close_proposals(app).await
}

async fn submit_all(app: &AppState, transfers: Vec<Transfer>) -> Result<Vec<Outcome>, LedgerError> {
    let mut outcomes = Vec::with_capacity(transfers.len());
    for chunk in transfers.chunks(SUBMISSION_TRANSFERS_MAX) {
        outcomes.extend(app.ledger.submit(chunk.to_vec()).await?);
    }
    Ok(outcomes)
}

async fn expire_due(app: &AppState) -> ApiResult<()> {
    let due = app
        .store
        .ledger_holds_due(now_ms(), EXPIRIES_PER_TICK_MAX)
        .await?;
    let transfers: Vec<Transfer> = due
        .into_iter()
        .map(|hold| Transfer {
            id: flotilla_ledger::book::derived_id("expire", &hold),
            kind: Kind::Escrow,
            op: Op::Expire { hold },
            reference: String::new(),
            linked: false,
        })
        .collect();
    if !transfers.is_empty() {
        submit_all(app, transfers).await?;
    }
    Ok(())
}

/// Devices that earn block rewards: up, verified (idle or hired), and covered by their
/// supplier's stake (each supplier's devices in id order while the stake lasts).
async fn reward_claims(
    app: &AppState,
    stats: &HashMap<String, WorkerStats>,
    marks: &HashMap<String, WorkerStats>,
) -> ApiResult<Vec<RewardClaim>> {
    let rows = app.store.earning_rows().await?;
    let stakes: HashMap<String, i64> = app
        .store
        .ledger_accounts_like(":stake:IO")
        .await?
        .into_iter()
        .map(|row| (row.owner, row.posted - row.held))
        .collect();
    let mut by_supplier: BTreeMap<&str, Vec<&MarketRow>> = BTreeMap::new();
    for row in &rows {
        by_supplier
            .entry(row.device.account_id.as_str())
            .or_default()
            .push(row);
    }
    let mut claims = Vec::new();
    for (supplier, mut devices) in by_supplier {
        devices.sort_by(|a, b| a.device.id.cmp(&b.device.id));
        let mut stake_left = u64::try_from(stakes.get(supplier).copied().unwrap_or(0)).unwrap_or(0);
        for row in devices {
            let key = model_key(row.device.hardware.kind, &row.device.hardware.model);
            let needed = minimum_stake_micros(&key, 1);
            if needed > stake_left {
                break;
            }
            stake_left -= needed;
            let now = stats
                .get(&row.device.worker_id)
                .cloned()
                .unwrap_or_default();
            let then = marks
                .get(&row.device.worker_id)
                .cloned()
                .unwrap_or_default();
            let up_ms = now.up_ms.saturating_sub(then.up_ms);
            let observed_ms = now.observed_ms.saturating_sub(then.observed_ms);
            // A worker not observed yet counts as up: it is up now.
            let uptime_ppm = (up_ms.min(observed_ms) * 1_000_000)
                .checked_div(observed_ms)
                .unwrap_or(1_000_000);
            claims.push(RewardClaim {
                device_id: row.device.id.clone(),
                supplier: supplier.to_owned(),
                model_key: key,
                gpu_count: 1,
                uptime_ppm,
                tier: row.tier.clone(),
                hired: row.device.state == flotilla_proto::device::DeviceState::Hired,
            });
        }
    }
    Ok(claims)
}

/// Pays the epoch that ended last: its emission split by score among the devices earning
/// now, exactly (largest remainder), plus a record of the payout. An epoch during which no
/// coordinator ran is not emitted.
async fn pay_rewards(app: &AppState, rewards: &mut RewardState) -> ApiResult<()> {
    let epoch_ms = app.config.ledger_epoch_ms;
    let Some(epoch) = epoch_of(now_ms(), epoch_ms).checked_sub(1) else {
        return Ok(());
    };
    if rewards.epoch == Some(epoch) {
        return Ok(());
    }
    let emission = app.config.emission.epoch_emission(epoch, epoch_ms);
    let stats = app.store.worker_stats().await?;
    let claims = reward_claims(app, &stats, &rewards.marks).await?;
    let scores: Vec<u128> = claims.iter().map(RewardClaim::score).collect();
    let shares = split_largest_remainder(emission, &scores);
    let transfers: Vec<Transfer> = claims
        .iter()
        .zip(&shares)
        .filter(|(_, share)| **share > 0)
        .map(|(claim, share)| {
            Transfer::moving(
                format!("reward-{epoch}-{}", claim.device_id),
                Kind::Reward,
                AccountId::system(Purpose::Emission, Token::Io),
                AccountId::main(&claim.supplier, Token::Io),
                *share,
            )
            .with_reference(format!("epoch {epoch} device {}", claim.device_id))
        })
        .collect();
    let paid: u64 = shares.iter().sum();
    let record = serde_json::json!({
        "epoch": epoch,
        "emission_micros": emission,
        "paid_micros": paid,
        "devices": transfers.len(),
    });
    // The record claims the epoch: whoever writes it first pays, once. A coordinator that
    // restarted, or a second one, finds it written and pays nothing. A crash between the
    // record and the payments under-pays that epoch; it never pays it twice.
    let claim = Transfer::new(
        format!("rewards-{epoch}"),
        Kind::Reward,
        Op::Record {
            body: record.to_string(),
        },
        format!("epoch {epoch}"),
    );
    let claimed = matches!(app.ledger.submit_one(claim).await?, Outcome::Applied(_));
    if claimed {
        submit_all(app, transfers).await?;
    }
    *rewards = RewardState {
        epoch: Some(epoch),
        marks: stats,
    };
    Ok(())
}

/// Seals every finished epoch not sealed yet, and every full part of a long epoch. An epoch is
/// finished once the chain's head has passed its end: entry times never run backwards, so
/// nothing can join it after that.
async fn seal_epochs(app: &AppState) -> ApiResult<()> {
    let epoch_ms = app.config.ledger_epoch_ms;
    let head = app.store.ledger_head().await?;
    let mut last = app.store.ledger_last_seal().await?;
    loop {
        let next_seq = last.as_ref().map_or(1, |s| s.first_seq + s.entry_count);
        if next_seq > head.seq {
            return Ok(());
        }
        let Some(&(_, first_at_ms, _)) = app.store.ledger_hashes(next_seq, 1).await?.first() else {
            return Ok(());
        };
        let epoch = epoch_of(first_at_ms, epoch_ms);
        let end_ms = i64::try_from((epoch + 1).saturating_mul(epoch_ms)).unwrap_or(i64::MAX);
        let hashes = epoch_hashes(app, next_seq, end_ms).await?;
        let full = hashes.len() == SEAL_PART_ENTRIES_MAX;
        if head.at_ms < end_ms && !full {
            return Ok(());
        }
        let part = match &last {
            Some(seal) if seal.epoch == epoch => seal.part + 1,
            _ => 0,
        };
        let seal = EpochSeal::sign_hashes(epoch, part, next_seq, &hashes, app.ledger.signing_key());
        let row = EpochSealRow {
            epoch,
            part,
            first_seq: next_seq,
            entry_count: hashes.len() as u64,
            seal: serde_json::to_string(&seal).expect("a seal serializes"),
            rewards_paid_micros: None,
        };
        if app.store.insert_epoch_seal(&row).await? {
            tracing::info!(epoch, part, entries = hashes.len(), "ledger epoch sealed");
        }
        // Another coordinator may have sealed it first: go on from whatever is stored.
        let stored = app.store.ledger_last_seal().await?;
        let after = stored.as_ref().map_or(1, |s| s.first_seq + s.entry_count);
        if after <= next_seq {
            return Err(ApiError::Internal(format!(
                "sealing epoch {epoch} part {part} made no progress"
            )));
        }
        last = stored;
    }
}

/// Hashes of the entries from `first_seq` up to (not including) the first at or after
/// `end_ms`, at most [`SEAL_PART_ENTRIES_MAX`].
async fn epoch_hashes(
    app: &AppState,
    first_seq: u64,
    end_ms: i64,
) -> ApiResult<Vec<flotilla_ledger::Hash>> {
    let mut hashes = Vec::new();
    let mut seq = first_seq;
    loop {
        let page = app.store.ledger_hashes(seq, HASH_PAGE_ENTRIES).await?;
        let page_len = page.len();
        for (entry_seq, at_ms, hash) in page {
            if at_ms >= end_ms || hashes.len() >= SEAL_PART_ENTRIES_MAX {
                return Ok(hashes);
            }
            hashes.push(
                decode_hash(&hash).ok_or_else(|| {
                    ApiError::Internal(format!("stored hash of entry {entry_seq}"))
                })?,
            );
            seq = entry_seq + 1;
        }
        if page_len < HASH_PAGE_ENTRIES as usize {
            return Ok(hashes);
        }
    }
}

/// The inclusion proof of `entry`, or none while its epoch is not sealed.
pub async fn inclusion_proof(
    app: &AppState,
    entry: flotilla_ledger::Entry,
) -> ApiResult<Option<InclusionProof>> {
    let Some(row) = app.store.ledger_seal_covering(entry.seq).await? else {
        return Ok(None);
    };
    let seal: EpochSeal = serde_json::from_str(&row.seal)
        .map_err(|e| ApiError::Internal(format!("stored seal: {e}")))?;
    let hashes = epoch_hashes(app, row.first_seq, i64::MAX).await?;
    let count = usize::try_from(row.entry_count).unwrap_or(usize::MAX);
    if hashes.len() < count {
        return Err(ApiError::Internal("a sealed epoch lost entries".into()));
    }
    Ok(Some(InclusionProof::build_from_hashes(
        entry,
        &hashes[..count],
        seal,
    )))
}

/// The log up to the head as it is when the export starts, as a stream of text chunks (one
/// page of entries each, so memory stays bounded however long the log): the header, entries
/// with each epoch's seal after its last entry, and that head signed now.
pub async fn export_stream(
    app: AppState,
    page_entries: u32,
) -> ApiResult<impl futures_util::Stream<Item = Result<String, std::io::Error>>> {
    let head = app.store.ledger_head().await?;
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        public_key: app.ledger.public_key_hex(),
        epoch_ms: app.config.ledger_epoch_ms,
    };
    let mut first = serde_json::to_string(&header).expect("a header serializes");
    first.push('\n');
    let seals = app.store.ledger_seals(0, u32::MAX).await?;
    let state = Export {
        app,
        head,
        seals: seals.into_iter().peekable(),
        next_seq: 1,
        pending: Some(first),
        done: false,
    };
    Ok(futures_util::stream::unfold(
        state,
        move |mut state| async move {
            if let Some(chunk) = state.pending.take() {
                return Some((Ok(chunk), state));
            }
            if state.done {
                return None;
            }
            let chunk = state.next_chunk(page_entries).await.map_err(|e| {
                state.done = true;
                std::io::Error::other(e.to_string())
            });
            Some((chunk, state))
        },
    ))
}

/// Where an export stream stands.
struct Export {
    app: AppState,
    head: flotilla_store::LedgerHeadRow,
    seals: std::iter::Peekable<std::vec::IntoIter<EpochSealRow>>,
    next_seq: u64,
    pending: Option<String>,
    done: bool,
}

impl Export {
    /// The next page of entries (with the seals they close), or the signed head last.
    async fn next_chunk(&mut self, page_entries: u32) -> ApiResult<String> {
        let mut out = String::new();
        let rows = if self.next_seq <= self.head.seq {
            self.app
                .store
                .ledger_entries(self.next_seq, page_entries)
                .await?
        } else {
            Vec::new()
        };
        for row in rows.iter().take_while(|r| r.seq <= self.head.seq) {
            push_line(&mut out, &ExportLine::Entry(entry_from_row(row)?));
            while let Some(seal) = self
                .seals
                .next_if(|s| s.first_seq + s.entry_count - 1 == row.seq)
            {
                let seal: EpochSeal = serde_json::from_str(&seal.seal)
                    .map_err(|e| ApiError::Internal(format!("stored seal: {e}")))?;
                push_line(&mut out, &ExportLine::Seal(seal));
            }
            self.next_seq = row.seq + 1;
        }
        if rows.is_empty() || self.next_seq > self.head.seq {
            let hash = decode_hash(&self.head.hash)
                .ok_or_else(|| ApiError::Internal("ledger head".into()))?;
            let signed = SignedHead::sign(self.head.seq, &hash, self.app.ledger.signing_key());
            push_line(&mut out, &ExportLine::Head(signed));
            self.done = true;
        }
        Ok(out)
    }
}

fn push_line(out: &mut String, line: &ExportLine) {
    out.push_str(&serde_json::to_string(line).expect("an export line serializes"));
    out.push('\n');
}

/// What `owner`'s earning devices need staked: 200 IO x max(1, multiplier) each.
pub async fn required_stake(app: &AppState, owner: &str) -> ApiResult<u64> {
    Ok(app
        .store
        .earning_rows()
        .await?
        .iter()
        .filter(|row| row.device.account_id == owner)
        .map(|row| {
            minimum_stake_micros(
                &model_key(row.device.hardware.kind, &row.device.hardware.model),
                1,
            )
        })
        .sum())
}

/// Tallies each proposal past its close and records the tally in the ledger log.
async fn close_proposals(app: &AppState) -> ApiResult<()> {
    for proposal in app.store.proposals_to_close(now_ms()).await? {
        let options: Vec<String> = serde_json::from_str(&proposal.options)
            .map_err(|e| ApiError::Internal(format!("stored options: {e}")))?;
        let weights: BTreeMap<String, u64> = app
            .store
            .proposal_weights(&proposal.id)
            .await?
            .into_iter()
            .collect();
        let votes: BTreeMap<String, usize> = app
            .store
            .votes(&proposal.id)
            .await?
            .into_iter()
            .map(|(account, option)| (account, option as usize))
            .collect();
        let tally =
            flotilla_ledger::governance::tally(&proposal.id, options.len(), &weights, &votes);
        let body = serde_json::to_string(&tally).expect("a tally serializes");
        let record = Transfer {
            id: format!("tally-{}", proposal.id),
            kind: Kind::Governance,
            op: Op::Record { body: body.clone() },
            reference: proposal
                .title
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect(),
            linked: false,
        };
        let seq = match app.ledger.submit_one(record).await? {
            Outcome::Applied(entry) => entry.seq,
            Outcome::Duplicate { seq } => seq,
            Outcome::Refused(error) => {
                // One bad proposal must not keep the others from closing.
                tracing::warn!(proposal_id = %proposal.id, %error, "tally refused");
                continue;
            }
        };
        app.store.close_proposal(&proposal.id, &body, seq).await?;
    }
    Ok(())
}
