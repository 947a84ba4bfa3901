//! The Explorer's governance and audit pages: proposals and their results (never who opened
//! or voted), and a form that checks an inclusion proof pasted as JSON against this ledger's
//! key, server-side, with the ledger's own verifier. Checking changes nothing, so the form
//! carries no CSRF token and needs no login.

use axum::Form;
use axum::extract::State;
use axum::response::IntoResponse;
use ed25519_dalek::VerifyingKey;
use flotilla_ledger::InclusionProof;
use flotilla_ledger::governance::Tally;
use flotilla_proto::time::rfc3339;
use flotilla_store::ProposalRow;
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{MaybeSigned, Signed};
use super::{Face, PageResult, amount, page};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::ClientIp;

/// Proposals listed (the newest).
const PROPOSALS_SHOWN_MAX: u32 = 100;
/// Longest inclusion proof the form reads, in bytes (a proof of an entry in an epoch of
/// 2^18 entries is under 4 KiB).
const PROOF_TEXT_BYTES_MAX: usize = 64 * 1024;

/// A proposal's public facts: its text, options, window and, once closed, the tally.
fn proposal(row: &ProposalRow) -> Markup {
    let options: Vec<String> = serde_json::from_str(&row.options).unwrap_or_default();
    let tally: Option<Tally> = row
        .tally
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let weight = |i: usize| {
        tally
            .as_ref()
            .and_then(|t| t.option_weights.get(i))
            .map(|w| format!("{} IO", amount(*w)))
    };
    html! {
        article class="proposal" {
            h2 { (row.title) }
            p class="muted" { "Opened " (rfc3339(row.opened_at_ms)) ", "
                @if tally.is_some() { "closed " } @else { "open until " } (rfc3339(row.closes_at_ms)) }
            details { summary { "The proposal" } p { (row.body) } }
            ul {
                @for (i, option) in options.iter().enumerate() {
                    li { (option)
                        @if let Some(weight) = weight(i) { ": " (weight) }
                        @if tally.as_ref().and_then(|t| t.winner) == Some(i) { " " strong { "(passed)" } } }
                }
            }
            @if let Some(tally) = &tally {
                p { (tally.voters) " voters"
                    @if tally.winner.is_none() { "; no option won" }
                    @if let Some(seq) = row.tally_seq {
                        "; the tally is ledger entry "
                        a href={ "/api/v1/ledger/entries/" (seq) "/proof" } { "#" (seq) } } }
            }
        }
    }
}

pub async fn proposals(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSigned(signed): MaybeSigned,
) -> PageResult {
    crate::api::market::limit_reads(&app.limits.market_reads, &ip)?;
    let rows = app
        .store
        .proposals(PROPOSALS_SHOWN_MAX)
        .await
        .map_err(ApiError::from)?;
    let body = html! {
        section id="proposals" {
            @for row in &rows { (proposal(row)) }
            @if rows.is_empty() { p class="muted" { "No proposal yet." } }
            p class="muted" { "Votes weigh the stake each account held when the proposal opened." }
        }
    };
    Ok(page("Governance", Face::Explorer, signed.as_ref(), body).into_response())
}

/// Reads a pasted inclusion proof and checks it: its path up to its seal's root, and the
/// seal's signature under `key`. The proof on success; otherwise what is wrong, in words.
fn check_proof(text: &str, key: &VerifyingKey) -> Result<InclusionProof, String> {
    if text.len() > PROOF_TEXT_BYTES_MAX {
        return Err(format!(
            "a proof is at most {PROOF_TEXT_BYTES_MAX} bytes; this is {}",
            text.len()
        ));
    }
    let proof: InclusionProof = serde_json::from_str(text.trim())
        .map_err(|e| format!("this is not an inclusion proof: {e}"))?;
    proof.verify(key).map_err(|e| e.to_string())?;
    Ok(proof)
}

fn verify_form(text: &str) -> Markup {
    html! {
        form method="post" action="/explorer/verify" {
            p { label for="proof" { "Inclusion proof (JSON, as "
                code { "/api/v1/ledger/entries/ID/proof" } " answers it)" } br;
                textarea id="proof" name="proof" rows="10" style="width:100%" { (text) } }
            button type="submit" { "Check" }
        }
    }
}

/// The form, with the last check's verdict above it when there is one.
fn verify_response(signed: Option<&Signed>, verdict: Option<Markup>, text: &str) -> PageResult {
    let body = html! { section id="verify" { @if let Some(verdict) = verdict { (verdict) } (verify_form(text)) } };
    let title = "Check an inclusion proof";
    Ok(page(title, Face::Explorer, signed, body).into_response())
}

pub async fn verify_page(MaybeSigned(signed): MaybeSigned) -> PageResult {
    verify_response(signed.as_ref(), None, "")
}

#[derive(Debug, Default, Deserialize)]
pub struct ProofForm {
    #[serde(default)]
    proof: String,
}

pub async fn verify(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSigned(signed): MaybeSigned,
    Form(form): Form<ProofForm>,
) -> PageResult {
    crate::api::market::limit_reads(&app.limits.market_reads, &ip)?;
    let key = app.ledger.signing_key().verifying_key();
    let verdict = html! {
        @match check_proof(&form.proof, &key) {
            Ok(proof) => p id="verdict" class="ok" { "Verified: entry " (proof.entry.seq) " ("
                (serde_json::to_value(proof.entry.kind).ok().and_then(|k| k.as_str().map(str::to_owned)).unwrap_or_default())
                ") is in epoch " (proof.seal.epoch) " part " (proof.seal.part) ", whose root "
                code { (proof.seal.root) } " this ledger signed." },
            Err(why) => p id="verdict" class="error" { "Not verified: " (why) },
        }
    };
    verify_response(signed.as_ref(), Some(verdict), &form.proof)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use flotilla_ledger::{EpochSeal, Kind, book::Effect, book::Entry};

    use super::*;

    fn proof_text(key: &SigningKey) -> String {
        let entries: Vec<Entry> = (1..=3)
            .map(|seq| Entry {
                seq,
                id: format!("t{seq}"),
                at_ms: 1_000 * seq as i64,
                kind: Kind::Transfer,
                reference: String::new(),
                effect: Effect::Record {
                    body: format!("fact {seq}"),
                },
                prev_hash: String::new(),
            })
            .collect();
        let seal = EpochSeal::sign(0, 0, &entries, key);
        serde_json::to_string(&InclusionProof::build(&entries, 1, seal)).unwrap()
    }

    #[test]
    fn a_sealed_entrys_proof_verifies_under_the_ledgers_key_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let text = proof_text(&key);
        let proof = check_proof(&format!("\n{text}\n"), &key.verifying_key()).unwrap();
        assert_eq!(proof.entry.seq, 2);
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(check_proof(&text, &other).is_err());
    }

    #[test]
    fn an_altered_or_malformed_or_huge_proof_is_refused_in_words() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let altered = proof_text(&key).replace("fact 2", "fact 9");
        let why = check_proof(&altered, &key.verifying_key()).unwrap_err();
        assert!(why.contains("entry 2"), "{why}");
        let why = check_proof("{\"entry\": 1}", &key.verifying_key()).unwrap_err();
        assert!(why.starts_with("this is not an inclusion proof"), "{why}");
        let huge = " ".repeat(PROOF_TEXT_BYTES_MAX + 1);
        let why = check_proof(&huge, &key.verifying_key()).unwrap_err();
        assert!(why.contains("at most"), "{why}");
    }
}
