//! The supplier's money: Earnings (rent and block rewards over time as a chart, each line
//! linking to its ledger entry and that entry's inclusion proof), a ledger entry's page (its
//! fields, and its inclusion proof checked here against the ledger's key), and Staking (the
//! staked IO, what the devices need staked, unstakes in their cooldown, and Stake and Unstake
//! forms). Everything goes through the API's handlers with the session's caller.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use flotilla_proto::api::{EntryInfo, StakeRequest};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{Signed, random_hex};
use super::{Face, PageResult, amount, chart, page, see_other};
use crate::AppState;
use crate::api::ledger::{self, HistoryQuery};
use crate::error::ApiError;
use crate::extract::{ClientIp, JsonBody, PathId, QueryParams};

/// Ledger entries read for the earnings page (the newest).
const EARNINGS_ENTRIES_READ_MAX: u32 = 200;

/// The entries that paid `account_id` rent or block rewards.
fn earned<'a>(entries: &'a [EntryInfo], account_id: &str) -> Vec<&'a EntryInfo> {
    let own = format!("{account_id}:");
    entries
        .iter()
        .filter(|e| e.kind == "rent" || e.kind == "reward")
        .filter(|e| e.credit.as_deref().is_some_and(|c| c.starts_with(&own)))
        .collect()
}

/// Per token, the running total after each entry, oldest first: (entry time in ms, total base
/// units). `earned` is newest first, as the history answers.
fn running_totals(earned: &[&EntryInfo]) -> BTreeMap<String, Vec<(i64, u64)>> {
    let mut series: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for entry in earned.iter().rev() {
        let at_ms = entry
            .entry
            .get("at_ms")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let token = entry.token.clone().unwrap_or_default();
        let line = series.entry(token).or_default();
        let total = line.last().map_or(0, |(_, t)| *t);
        line.push((at_ms, total.saturating_add(entry.amount_micros)));
    }
    series
}

fn earnings_chart(token: &str, line: &[(i64, u64)]) -> Markup {
    let total = line.last().map_or(0, |(_, t)| *t);
    // From nothing at the first entry's time, so one entry still draws a line.
    let start = line.first().map(|(x, _)| (*x as f64, 0.0));
    let points: Vec<(f64, f64)> = start
        .into_iter()
        .chain(line.iter().map(|(x, y)| (*x as f64, *y as f64)))
        .collect();
    let label = format!("{token} earned over time, up to {}", amount(total));
    chart::line(&label, &points, total as f64)
}

/// Rent and block rewards paid to the supplier: a running total per token over time, then the
/// entries, newest first, each linking to its ledger entry and its inclusion proof.
pub async fn earnings(State(app): State<AppState>, signed: Signed) -> PageResult {
    let query = HistoryQuery {
        before: None,
        limit: Some(EARNINGS_ENTRIES_READ_MAX),
    };
    let entries = ledger::history(State(app), signed.caller.clone(), QueryParams(query))
        .await?
        .0;
    let earned = earned(&entries, signed.caller.account_id());
    let series = running_totals(&earned);
    let body = html! {
        section id="totals" {
            @for (token, line) in &series {
                p { strong { (amount(line.last().map_or(0, |(_, t)| *t))) " " (token) }
                    " earned in the entries below" }
                (earnings_chart(token, line))
            }
            @if series.is_empty() { p class="muted" { "No rent or block rewards yet." } }
        }
        section id="earnings" {
            table {
                thead { tr { th { "When" } th { "Kind" } th { "Amount" } th { "For" } th { "Ledger entry" } th { "Inclusion proof" } } }
                tbody {
                    @for entry in &earned {
                        tr {
                            td { (entry.at) }
                            td { (entry.kind) }
                            td { (amount(entry.amount_micros)) " " (entry.token.as_deref().unwrap_or("")) }
                            td { (entry.reference) }
                            td { a class="entry" href={ "/worker/entries/" (entry.seq) } { "#" (entry.seq) } }
                            td { a class="proof" href={ "/api/v1/ledger/entries/" (entry.id) "/proof" } { "proof" } }
                        }
                    }
                }
            }
            p class="muted" { "From the newest " (EARNINGS_ENTRIES_READ_MAX) " entries of the wallet." }
        }
        p { a href="/worker/staking" { "Staking" } }
    };
    Ok(page("Earnings", Face::Worker, Some(&signed), body).into_response())
}

/// Whether the entry's inclusion proof checks out under the ledger's key, in words.
async fn inclusion(app: &AppState, ip: ClientIp, seq: u64) -> Result<String, ApiError> {
    match ledger::entry_proof(State(app.clone()), ip, PathId(seq.to_string())).await {
        Ok(proof) => {
            let key = app.ledger.signing_key().verifying_key();
            Ok(match proof.0.verify(&key) {
                Ok(()) => format!(
                    "verified: in epoch {} part {}, root {}",
                    proof.0.seal.epoch, proof.0.seal.part, proof.0.seal.root
                ),
                Err(error) => format!("does not verify: {error}"),
            })
        }
        Err(ApiError::Conflict { message, .. }) => Ok(message),
        Err(error) => Err(error),
    }
}

/// One ledger entry of the caller's, with its inclusion proof checked. The history answers
/// only entries that touched the caller's accounts, so another's entry is a 404.
pub async fn entry(
    State(app): State<AppState>,
    signed: Signed,
    ip: ClientIp,
    PathId(seq): PathId,
) -> PageResult {
    let seq: u64 = seq.parse().map_err(|_| ApiError::NotFound("entry"))?;
    let query = HistoryQuery {
        before: Some(seq.saturating_add(1)),
        limit: Some(1),
    };
    let entries = ledger::history(
        State(app.clone()),
        signed.caller.clone(),
        QueryParams(query),
    )
    .await?
    .0;
    let entry = entries
        .into_iter()
        .find(|e| e.seq == seq)
        .ok_or(ApiError::NotFound("entry"))?;
    let verdict = inclusion(&app, ip, seq).await?;
    let body = html! {
        section id="entry" {
            table {
                tbody {
                    tr { th { "Sequence" } td { (entry.seq) } }
                    tr { th { "Transfer id" } td { code { (entry.id) } } }
                    tr { th { "When" } td { (entry.at) } }
                    tr { th { "Kind" } td { (entry.kind) " (" (entry.effect) ")" } }
                    tr { th { "Amount" } td { (amount(entry.amount_micros)) " " (entry.token.as_deref().unwrap_or("")) } }
                    tr { th { "From" } td { code { (entry.debit.as_deref().unwrap_or("")) } } }
                    tr { th { "To" } td { code { (entry.credit.as_deref().unwrap_or("")) } } }
                    tr { th { "For" } td { (entry.reference) } }
                    tr { th { "Hash" } td { code { (entry.hash) } } }
                }
            }
        }
        section id="inclusion" {
            h2 { "Inclusion proof" }
            p id="verdict" { (verdict) }
            p { a class="proof" href={ "/api/v1/ledger/entries/" (entry.seq) "/proof" } { "The proof as JSON" }
                " (check it on the " a href="/explorer/verify" { "Explorer" } ")" }
        }
    };
    Ok(page(
        &format!("Ledger entry {seq}"),
        Face::Worker,
        Some(&signed),
        body,
    )
    .into_response())
}

/// A stake or unstake form: an amount of IO in tokens, fixed to one transfer by its nonce.
#[derive(Debug, Default, Deserialize)]
pub struct StakeForm {
    #[serde(default)]
    csrf: String,
    /// `stake` or `unstake`.
    #[serde(default)]
    action: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    nonce: String,
}

impl StakeForm {
    /// The request, and the idempotency key that makes a resubmitted form apply once.
    fn request(&self) -> Result<(StakeRequest, HeaderMap), ApiError> {
        let amount_micros = flotilla_ledger::parse_micros(self.amount.trim())
            .map_err(|e| ApiError::invalid("amount", e.0))?;
        let mut headers = HeaderMap::new();
        if !self.nonce.is_empty()
            && let Ok(key) = HeaderValue::from_str(&format!("web-{}-{}", self.action, self.nonce))
        {
            headers.insert("idempotency-key", key);
        }
        Ok((StakeRequest { amount_micros }, headers))
    }
}

fn stake_form(action: &str, label: &str, csrf: &str) -> Markup {
    html! {
        form id={ (action) "-form" } method="post" action="/worker/staking" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="action" value=(action);
            input type="hidden" name="nonce" value=(random_hex());
            input name="amount" inputmode="decimal" placeholder="IO, like 12.5" aria-label={ (label) " amount" };
            " " button type="submit" { (label) }
        }
    }
}

/// The supplier's stake: staked, required by its devices, unstakes in their cooldown and
/// slashes in their appeal window, the IO free to stake, and the forms.
pub async fn staking(State(app): State<AppState>, signed: Signed) -> PageResult {
    let stake = ledger::stake_info(State(app.clone()), signed.caller.clone())
        .await?
        .0;
    let wallet = ledger::wallet(State(app), signed.caller.clone()).await?.0;
    let free = wallet
        .balances
        .iter()
        .find(|b| b.purpose == "main" && b.token == "IO")
        .map_or(0, |b| b.available_micros);
    let body = html! {
        section id="stake" {
            p { "Staked: " strong id="staked" { (amount(stake.staked_micros)) " IO" }
                " · your devices need " (amount(stake.required_micros)) " IO staked to earn block rewards"
                " · free to stake: " (amount(free)) " IO" }
            @if stake.staked_micros < i64::try_from(stake.required_micros).unwrap_or(i64::MAX) {
                p class="error" { "Stake more to earn block rewards." }
            }
            (stake_form("stake", "Stake", &signed.csrf))
            p {}
            (stake_form("unstake", "Unstake", &signed.csrf))
            p class="muted" { "Unstaked IO returns to your wallet after the cooldown." }
        }
        section id="holds" {
            h2 { "Held stake" }
            table {
                thead { tr { th { "Amount (IO)" } th { "What" } th { "Until" } } }
                tbody {
                    @for hold in &stake.holds {
                        tr {
                            td { (amount(hold.amount_micros)) }
                            td { (if hold.credit.ends_with(":main:IO") { "unstaking" } else { "slashed, in its appeal window" }) }
                            td { (hold.expires_at) }
                        }
                    }
                }
            }
            @if stake.holds.is_empty() { p class="muted" { "Nothing is held." } }
        }
    };
    Ok(page("Staking", Face::Worker, Some(&signed), body).into_response())
}

/// Stake or Unstake (the form's `action`), through the API, once per form by its nonce.
pub async fn change_stake(
    State(app): State<AppState>,
    signed: Signed,
    Form(form): Form<StakeForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let (request, headers) = form.request()?;
    let caller = signed.caller.clone();
    let _entry = match form.action.as_str() {
        "stake" => ledger::stake(State(app), caller, headers, JsonBody(request)).await?,
        "unstake" => ledger::unstake(State(app), caller, headers, JsonBody(request)).await?,
        _ => return Err(ApiError::invalid("action", "must be stake or unstake").into()),
    };
    Ok(see_other("/worker/staking"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: &str, credit: &str, token: &str, micros: u64) -> EntryInfo {
        EntryInfo {
            seq,
            id: format!("t{seq}"),
            at: String::new(),
            kind: kind.into(),
            reference: String::new(),
            effect: "move".into(),
            debit: Some(format!("system:emission:{token}")),
            credit: Some(credit.into()),
            token: Some(token.into()),
            amount_micros: micros,
            hash: String::new(),
            entry: serde_json::json!({ "at_ms": seq as i64 * 1_000 }),
        }
    }

    #[test]
    fn only_rent_and_rewards_paid_to_the_account_count() {
        let entries = [
            entry(5, "reward", "usr_a:main:IO", "IO", 7),
            entry(4, "rent", "usr_b:main:IOSD", "IOSD", 3),
            entry(3, "transfer", "usr_a:main:IOSD", "IOSD", 9),
            entry(2, "rent", "usr_ab:main:IOSD", "IOSD", 1),
            entry(1, "rent", "usr_a:main:IOSD", "IOSD", 2),
        ];
        let seqs: Vec<u64> = earned(&entries, "usr_a").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 1]);
    }

    #[test]
    fn running_totals_go_oldest_first_per_token() {
        let entries = [
            entry(4, "rent", "usr_a:main:IOSD", "IOSD", 5),
            entry(3, "reward", "usr_a:main:IO", "IO", 10),
            entry(2, "rent", "usr_a:main:IOSD", "IOSD", 2),
            entry(1, "rent", "usr_a:main:IOSD", "IOSD", 1),
        ];
        let series = running_totals(&earned(&entries, "usr_a"));
        assert_eq!(series["IOSD"], [(1_000, 1), (2_000, 3), (4_000, 8)]);
        assert_eq!(series["IO"], [(3_000, 10)]);
    }

    #[test]
    fn a_stake_form_names_its_amount_and_applies_once_per_nonce() {
        let form = StakeForm {
            csrf: String::new(),
            action: "stake".into(),
            amount: " 12.5 ".into(),
            nonce: "abc".into(),
        };
        let (request, headers) = form.request().unwrap();
        assert_eq!(request.amount_micros, 12_500_000);
        assert_eq!(headers["idempotency-key"], "web-stake-abc");
        let bad = StakeForm {
            amount: "twelve".into(),
            ..StakeForm::default()
        };
        let error = bad.request().unwrap_err();
        assert!(format!("{error:?}").contains("amount"), "{error:?}");
        let fresh = StakeForm {
            amount: "1".into(),
            ..StakeForm::default()
        };
        assert!(fresh.request().unwrap().1.is_empty());
    }
}
