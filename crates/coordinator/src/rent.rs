//! Paid rentals: a request with `hours` is paid from escrow, minute by minute, for the time its
//! nodes are up only.
//!
//! - Submitted: `budget_per_hour x hours` plus the renter's fee is held on the renter's IOSD,
//!   or IO for a cluster paid in IO ([`Payment`]) (hold `escrow-REQ`, voided if the request
//!   never runs).
//! - Placed: the actual cost (the placement's prices x hours, plus fee) is posted from the hold
//!   into the request's escrow account; the rest of the hold returns.
//! - Each rent minute (`--rent-minute-ms`, a minute by default) the upkeep pays every node whose
//!   devices are all hired (up and verified) at that moment: the minute's rent less the
//!   supplier's fee to the supplier, both fees to the treasury. A node down is not charged;
//!   a minute its live worker was not heard through yet waits for the next heartbeat.
//! - After `hours`, or on cancel, or when the escrow cannot pay a minute (a costlier
//!   replacement), the request ends and what is left in escrow returns to the renter.
//!
//! Every transfer's id derives from the request, node and minute, so metering twice (two
//! coordinators, a restart) pays once.

use std::collections::{BTreeMap, HashMap};

use flotilla_ledger::rent::{NodeMinute, minute_transfers, quote};
use flotilla_ledger::{AccountId, Kind, Op, Outcome, Token, Transfer, TransferError};
use flotilla_proto::api::RequestSpec;
use flotilla_proto::device::DeviceState;
use flotilla_store::{PlacementRow, REQUEST_PLACED, RequestRow};

use crate::error::{ApiError, ApiResult};
use crate::ledger::LedgerError;
use crate::{AppState, now_ms};

/// Longest rental, in hours (30 days).
pub const HOURS_MAX: u32 = 720;
/// How long a paid request's hold waits for a placement before it returns.
pub const QUEUED_HOLD_MS: i64 = 7 * 24 * 3_600_000;
/// Placed requests metered per upkeep tick at most.
const METERED_PER_TICK_MAX: u32 = 1_000;
/// Ended requests one reconciler run looks at, at most, and how far back.
const RECONCILED_PER_RUN_MAX: u32 = 1_000;
const RECONCILE_WINDOW_MS: i64 = 24 * 3_600_000;

fn hold_id(request_id: &str) -> String {
    format!("escrow-{request_id}")
}

/// What a paid request pays with: IOSD, or IO at the price fixed when it was made. Offers are
/// priced in IOSD; paid in IO, each node's hourly price converts (rounded up) and every amount
/// derives from those prices, so the quote, the hold and the minutes agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub token: Token,
    io_price_micros: Option<u64>,
}

impl Payment {
    pub fn of(spec: &RequestSpec) -> Payment {
        Payment {
            token: if spec.io_price_micros.is_some() {
                Token::Io
            } else {
                Token::Iosd
            },
            io_price_micros: spec.io_price_micros,
        }
    }

    /// An IOSD price or amount in the paying token; none past the ledger's largest amount.
    pub fn amount(&self, iosd_micros: u64) -> Option<u64> {
        match self.io_price_micros {
            Some(io_price_micros) => {
                flotilla_ledger::rent::iosd_in_io(iosd_micros, io_price_micros)
            }
            None => Some(iosd_micros),
        }
    }

    /// Quotes IOSD node prices for `hours` in the paying token.
    pub fn quote(
        &self,
        node_prices_iosd: &[u64],
        hours: u32,
        fees: &flotilla_ledger::rent::FeePolicy,
    ) -> Option<flotilla_ledger::rent::Quote> {
        let prices = node_prices_iosd
            .iter()
            .map(|price| self.amount(*price))
            .collect::<Option<Vec<u64>>>()?;
        quote(&prices, u64::from(hours), self.token, fees)
    }

    /// The request's escrow account.
    pub fn escrow(&self, request_id: &str) -> AccountId {
        AccountId::escrow(request_id, self.token)
    }

    /// A stored request's payment (IOSD when its spec does not parse).
    pub fn of_row(row: &RequestRow) -> Payment {
        let spec = serde_json::from_str::<RequestSpec>(&row.spec).unwrap_or_default();
        Payment::of(&spec)
    }
}

fn refusal_to_api(outcome: Outcome) -> ApiResult<()> {
    match outcome {
        Outcome::Applied(_) | Outcome::Duplicate { .. } => Ok(()),
        Outcome::Refused(TransferError::InsufficientFunds { .. }) => Err(ApiError::conflict(
            "insufficient_funds",
            "the rental's budget times its hours, plus fees, is more than the funds available",
        )),
        Outcome::Refused(TransferError::Invalid { problem, .. }) => {
            Err(ApiError::invalid("budget_per_hour", problem))
        }
        Outcome::Refused(error) => Err(ApiError::Internal(error.to_string())),
    }
}

/// Holds a paid request's most it can cost, before the request is stored.
pub async fn hold_budget(
    app: &AppState,
    request_id: &str,
    renter: &str,
    spec: &RequestSpec,
) -> ApiResult<()> {
    let (Some(hours), Some(budget)) = (spec.hours, spec.budget_per_hour) else {
        return Ok(());
    };
    let too_large = || ApiError::invalid("budget_per_hour", "times hours is too large");
    let payment = Payment::of(spec);
    let most = payment
        .quote(&[budget], hours, &app.config.fees)
        .ok_or_else(too_large)?;
    // The fee is rounded up per node and minute, so a placement on several nodes may cost up
    // to one base unit more per node-minute than the budget's own quote.
    let rounding = u64::from(spec.nodes) * 60 * u64::from(hours);
    let amount = most
        .total_micros
        .checked_add(rounding)
        .filter(|a| *a <= flotilla_ledger::book::AMOUNT_MAX)
        .ok_or_else(too_large)?;
    let hold = Transfer::new(
        hold_id(request_id),
        Kind::Escrow,
        Op::Hold {
            debit: AccountId::main(renter, payment.token),
            credit: payment.escrow(request_id),
            amount,
            expires_at_ms: now_ms().saturating_add(QUEUED_HOLD_MS),
            on_expiry: flotilla_ledger::OnExpiry::Void,
        },
        request_id.to_owned(),
    );
    refusal_to_api(app.ledger.submit_one(hold).await?)
}

/// Each node's price per hour (its devices' sum), by node index.
pub(crate) fn node_prices(placements: &[PlacementRow]) -> BTreeMap<u32, u64> {
    let mut prices = BTreeMap::new();
    for placement in placements {
        *prices.entry(placement.node_index).or_insert(0) += placement.price_per_hour;
    }
    prices
}

/// Moves a placed request's actual cost from its hold into its escrow. False when the hold
/// could not pay (it expired): the caller gives the devices back.
pub async fn fund_placement(
    app: &AppState,
    request_id: &str,
    spec: &RequestSpec,
    placements: &[PlacementRow],
) -> Result<bool, LedgerError> {
    let Some(hours) = spec.hours else {
        return Ok(true);
    };
    let prices: Vec<u64> = node_prices(placements).into_values().collect();
    let Some(cost) = Payment::of(spec).quote(&prices, hours, &app.config.fees) else {
        return Ok(false);
    };
    let post = Transfer::new(
        format!("fund-{request_id}"),
        Kind::Escrow,
        Op::Post {
            hold: hold_id(request_id),
            amount: Some(cost.total_micros),
        },
        request_id.to_owned(),
    );
    let outcome = app.ledger.submit_one(post).await?;
    Ok(matches!(
        outcome,
        Outcome::Applied(_) | Outcome::Duplicate { .. }
    ))
}

/// Gives a queued paid request's hold back (it never ran).
pub async fn release_hold(app: &AppState, request_id: &str) -> Result<(), LedgerError> {
    let void = Transfer::new(
        format!("unhold-{request_id}"),
        Kind::Refund,
        Op::Void {
            hold: hold_id(request_id),
        },
        request_id.to_owned(),
    );
    app.ledger.submit_one(void).await.map(drop)
}

/// Returns what is left in a request's escrow to its renter.
pub async fn refund(app: &AppState, row: &RequestRow) -> ApiResult<()> {
    let payment = Payment::of_row(row);
    let left = crate::ledger::balance(&app.store, &payment.escrow(&row.id))
        .await?
        .available();
    let Ok(amount @ 1..) = u64::try_from(left) else {
        return Ok(());
    };
    // Named by the amount too: a later refund of what arrived after this one (a placement
    // funded as it was cancelled) is another transfer, not a conflicting retry.
    let back = Transfer::moving(
        format!("refund-{}-{amount}", row.id),
        Kind::Refund,
        payment.escrow(&row.id),
        AccountId::main(&row.account_id, payment.token),
        amount,
    )
    .with_reference(row.id.clone());
    refusal_to_api(app.ledger.submit_one(back).await?)
}

/// Meters every placed paid request up to now; ends those whose hours are over.
pub async fn meter_all(app: &AppState) -> ApiResult<()> {
    for row in app
        .store
        .requests_in_state(REQUEST_PLACED, METERED_PER_TICK_MAX)
        .await?
    {
        let Ok(spec) = serde_json::from_str::<RequestSpec>(&row.spec) else {
            continue;
        };
        if spec.hours.is_none() {
            continue;
        }
        if !meter(app, &row, &spec, now_ms(), Rounding::EndedMinutes).await? {
            continue;
        }
        let devices: Vec<String> = app
            .store
            .placements(&row.id)
            .await?
            .into_iter()
            .map(|p| p.device_id)
            .collect();
        if app.store.complete_request(&row.id, now_ms()).await? {
            crate::scheduling::release(app, &devices).await;
            refund(app, &row).await?;
            crate::clusters::request_expired(app, &row.id).await?;
            tracing::info!(request_id = %row.id, "paid rental ended");
        }
    }
    Ok(())
}

/// Which minutes a metering pays: those ended (while the rental runs), or also the one under
/// way (when it ends: a started minute counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    EndedMinutes,
    StartedMinutes,
}

/// Pays the request's minutes up to `now_ms` (see [`Rounding`]) not metered yet. A node's
/// minute is paid only if its devices are hired now and its worker was heard within a
/// heartbeat interval of the minute's end (or of now, for the minute under way): a supplier is
/// not paid past its last heartbeat, nor the renter charged for it. A minute that a live worker
/// (session open, heard within the heartbeat grace) has not been heard through yet waits for
/// the next metering rather than going unpaid: a heartbeat late under load loses no money. At
/// settlement ([`Rounding::StartedMinutes`]) nothing can wait, so a live worker's node is paid
/// to the end. True when the rental is over: all its minutes metered, or its escrow could not
/// pay one.
pub async fn meter(
    app: &AppState,
    row: &RequestRow,
    spec: &RequestSpec,
    now_ms: i64,
    rounding: Rounding,
) -> ApiResult<bool> {
    let (Some(hours), Some(placed_at_ms)) = (spec.hours, row.placed_at_ms) else {
        return Ok(false);
    };
    let total = u64::from(hours) * 60;
    let clock = MinuteClock {
        placed_at_ms,
        minute_ms: i64::try_from(app.config.rent_minute_ms).unwrap_or(i64::MAX),
        now_ms,
    };
    let upto = clock.minutes(rounding).min(total);
    if upto <= row.metered_minutes {
        return Ok(upto == total);
    }
    let grace_ms = i64::try_from(app.config.heartbeat_grace_ms).unwrap_or(i64::MAX);
    let interval_ms = i64::try_from(app.config.heartbeat_interval_ms).unwrap_or(i64::MAX);
    let placements = app.store.placements(&row.id).await?;
    let owners = suppliers(app, &placements).await?;
    let payment = Payment::of(spec);
    let mut nodes = Vec::new();
    for (node_index, price) in node_prices(&placements) {
        let node: Vec<&PlacementRow> = placements
            .iter()
            .filter(|p| p.node_index == node_index)
            .collect();
        let up = node.iter().all(|p| {
            app.fleet
                .lifecycle(&p.device_id)
                .is_some_and(|l| l.state == DeviceState::Hired)
        });
        let (Some(supplier), Some(price)) = (
            owners.get(&node[0].worker_id),
            payment.amount(price).filter(|_| up),
        ) else {
            continue;
        };
        let (session_open, heard_ms) = app.fleet.worker_view(&node[0].worker_id);
        let heard_ms = heard_ms.unwrap_or(i64::MIN);
        nodes.push(NodeMeter {
            node_index,
            supplier: supplier.clone(),
            price_per_hour: price,
            live: session_open && now_ms < heard_ms.saturating_add(grace_ms),
            heard_upto: clock.heard_upto(heard_ms.saturating_add(interval_ms), upto),
        });
    }
    let settling = rounding == Rounding::StartedMinutes;
    let ready = ready_upto(&nodes, row.metered_minutes, upto, settling);
    let mut groups: Vec<Vec<Transfer>> = Vec::new();
    for node in &nodes {
        let paid_upto = if settling && node.live {
            ready
        } else {
            node.heard_upto.min(ready)
        };
        for minute in row.metered_minutes..paid_upto {
            let paid = NodeMinute {
                escrow_owner: row.id.clone(),
                supplier: node.supplier.clone(),
                node_index: node.node_index,
                minute,
                price_per_hour: node.price_per_hour,
                token: payment.token,
            };
            groups.push(minute_transfers(&paid, &app.config.fees));
        }
    }
    let mut out_of_escrow = false;
    for submission in pack(groups) {
        for outcome in app.ledger.submit(submission).await? {
            out_of_escrow |= matches!(
                outcome,
                Outcome::Refused(TransferError::InsufficientFunds { .. })
            );
        }
    }
    if ready > row.metered_minutes {
        app.store.set_metered_minutes(&row.id, ready).await?;
    }
    Ok(ready == total || out_of_escrow)
}

/// A rental's rent minutes on the wall clock.
#[derive(Debug, Clone, Copy)]
struct MinuteClock {
    placed_at_ms: i64,
    minute_ms: i64,
    now_ms: i64,
}

impl MinuteClock {
    /// Minutes since placement: those ended, or also the one under way.
    fn minutes(&self, rounding: Rounding) -> u64 {
        let since_ms = self.now_ms.saturating_sub(self.placed_at_ms).max(0);
        let minutes = match rounding {
            Rounding::EndedMinutes => since_ms / self.minute_ms,
            Rounding::StartedMinutes => {
                since_ms.saturating_add(self.minute_ms - 1) / self.minute_ms
            }
        };
        u64::try_from(minutes).unwrap_or(0)
    }

    /// How many of the first `upto` minutes a worker heard until `heard_until_ms` (its last
    /// heartbeat plus an interval) covers: all of them when that reaches now (the minute under
    /// way included), else those ended by then.
    fn heard_upto(&self, heard_until_ms: i64, upto: u64) -> u64 {
        if heard_until_ms >= self.now_ms {
            return upto;
        }
        let covered_ms = heard_until_ms.saturating_sub(self.placed_at_ms).max(0);
        u64::try_from(covered_ms / self.minute_ms)
            .unwrap_or(0)
            .min(upto)
    }
}

/// One node of a rental as a metering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeMeter {
    node_index: u32,
    supplier: String,
    price_per_hour: u64,
    /// Its worker's session is open and was heard within the heartbeat grace.
    live: bool,
    /// Minutes before this one are heard through.
    heard_upto: u64,
}

/// How far a metering may settle: to `upto`, except that a live node not heard through a minute
/// holds it back (unless settling, when nothing can wait). Never below `metered`.
fn ready_upto(nodes: &[NodeMeter], metered: u64, upto: u64, settling: bool) -> u64 {
    if settling {
        return upto;
    }
    nodes
        .iter()
        .filter(|n| n.live)
        .map(|n| n.heard_upto)
        .fold(upto, u64::min)
        .max(metered)
}

/// The reconciler: money of paid requests that ended must not stay behind. For requests that
/// ended within [`RECONCILE_WINDOW_MS`], returns what is left in escrow (a refund that failed,
/// a placement funded as it was cancelled) and voids a hold still open (a request that ended
/// before placement).
pub async fn reconcile(app: &AppState) -> ApiResult<()> {
    let since_ms = now_ms().saturating_sub(RECONCILE_WINDOW_MS);
    for row in app
        .store
        .requests_ended_since(since_ms, RECONCILED_PER_RUN_MAX)
        .await?
    {
        let paid = serde_json::from_str::<RequestSpec>(&row.spec).is_ok_and(|s| s.hours.is_some());
        if !paid {
            continue;
        }
        let left = crate::ledger::balance(&app.store, &Payment::of_row(&row).escrow(&row.id))
            .await?
            .available();
        if left > 0 {
            tracing::info!(request_id = %row.id, "reconciler returns an ended request's escrow");
            refund(app, &row).await?;
        }
        let open = app
            .store
            .ledger_open_holds(&row.account_id)
            .await?
            .into_iter()
            .any(|h| h.id == hold_id(&row.id));
        if open {
            release_hold(app, &row.id).await?;
        }
    }
    Ok(())
}

/// Packs linked groups into submissions without splitting a group.
fn pack(groups: Vec<Vec<Transfer>>) -> Vec<Vec<Transfer>> {
    let mut submissions: Vec<Vec<Transfer>> = Vec::new();
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let fits = submissions
            .last()
            .is_some_and(|s| s.len() + group.len() <= crate::ledger::SUBMISSION_TRANSFERS_MAX);
        if fits {
            submissions.last_mut().expect("checked").extend(group);
        } else {
            submissions.push(group);
        }
    }
    submissions
}

/// The account owning each placement's worker.
async fn suppliers(
    app: &AppState,
    placements: &[PlacementRow],
) -> ApiResult<HashMap<String, String>> {
    let mut owners = HashMap::new();
    for placement in placements {
        if owners.contains_key(&placement.worker_id) {
            continue;
        }
        if let Some(owner) = app.store.worker_owner(&placement.worker_id).await? {
            owners.insert(placement.worker_id.clone(), owner);
        }
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: MinuteClock = MinuteClock {
        placed_at_ms: 1_000,
        minute_ms: 500,
        now_ms: 3_200,
    };

    fn node(live: bool, heard_upto: u64) -> NodeMeter {
        NodeMeter {
            node_index: 0,
            supplier: "s".into(),
            price_per_hour: 1,
            live,
            heard_upto,
        }
    }

    #[test]
    fn minutes_count_ended_or_started_ones() {
        assert_eq!(CLOCK.minutes(Rounding::EndedMinutes), 4);
        assert_eq!(CLOCK.minutes(Rounding::StartedMinutes), 5);
        let before = MinuteClock {
            now_ms: 500,
            ..CLOCK
        };
        assert_eq!(before.minutes(Rounding::StartedMinutes), 0);
    }

    #[test]
    fn a_worker_covers_the_minutes_ended_before_it_was_last_heard() {
        // Heard until 2,600: minutes 0..3 (ending 1,500, 2,000, 2,500) are covered.
        assert_eq!(CLOCK.heard_upto(2_600, 4), 3);
        assert_eq!(CLOCK.heard_upto(2_499, 4), 2);
        assert_eq!(CLOCK.heard_upto(0, 4), 0);
        // Heard until now: every minute, the one under way too.
        assert_eq!(CLOCK.heard_upto(3_200, 5), 5);
        assert_eq!(CLOCK.heard_upto(3_000, 5), 4);
        assert_eq!(CLOCK.heard_upto(2_999, 5), 3);
    }

    #[test]
    fn a_live_worker_not_heard_yet_holds_the_minute_back() {
        let nodes = [node(true, 4), node(true, 2), node(false, 0)];
        // The lost node (not live) holds nothing back; the late one holds minute 2.
        assert_eq!(ready_upto(&nodes, 1, 4, false), 2);
        // Never behind what was metered, and settling waits for no one.
        assert_eq!(ready_upto(&nodes, 3, 4, false), 3);
        assert_eq!(ready_upto(&nodes, 1, 5, true), 5);
        assert_eq!(ready_upto(&[], 0, 4, false), 4);
    }
}
