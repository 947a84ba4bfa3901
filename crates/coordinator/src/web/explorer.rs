//! The Explorer: what anyone may see without logging in. Supply and prices by GPU model and
//! supply by country (verified suppliers, devices hired and idle), the
//! ledger's supply and its sealed epochs with their signed roots and block rewards (also as
//! CSV), with links to the live clusters and the devices (`fleet.rs`), governance and the
//! inclusion-proof check (`ledger.rs`). It shows only what the public API shows: no account
//! names, keys, renters' commands or logs.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::html;

use super::session::MaybeSigned;
use super::{Face, PageResult, amount, live_sections, page};
use crate::AppState;
use crate::api::ledger::EpochQuery;
use crate::extract::{ClientIp, QueryParams};

/// How often the Explorer's supply, tokens and epochs refresh themselves.
const EXPLORER_REFRESH_MS: u32 = 15_000;
/// Sealed epochs listed, newest last.
const EPOCHS_SHOWN: u32 = 20;
/// Sealed epochs in the CSV export, at most (the API's own page limit).
const EPOCHS_EXPORTED_MAX: u32 = 500;

/// The sealed epochs as CSV: number, part, entries, block rewards paid (IO base units), root.
pub async fn epochs_csv(State(app): State<AppState>, ip: ClientIp) -> PageResult {
    let query = EpochQuery {
        from: None,
        limit: Some(EPOCHS_EXPORTED_MAX),
    };
    let epochs = crate::api::ledger::epochs(State(app), ip, QueryParams(query))
        .await?
        .0;
    let mut csv = String::from("epoch,part,entries,rewards_paid_micros,root\n");
    for epoch in &epochs {
        let rewards = epoch
            .rewards_paid_micros
            .map(|r| r.to_string())
            .unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            epoch.epoch, epoch.part, epoch.entry_count, rewards, epoch.root
        ));
    }
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (
            axum::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"flotilla-epochs.csv\"",
        ),
    ];
    Ok((headers, csv).into_response())
}

pub async fn home(
    State(app): State<AppState>,
    ip: ClientIp,
    MaybeSigned(signed): MaybeSigned,
) -> PageResult {
    let prices = crate::api::market::market_prices(State(app.clone()), ip.clone())
        .await?
        .0;
    let supply = crate::api::market::market_supply(State(app.clone()), ip.clone())
        .await?
        .0;
    let ledger = crate::api::ledger::ledger_info(State(app.clone()), ip.clone())
        .await?
        .0;
    let query = EpochQuery {
        from: None,
        limit: Some(EPOCHS_SHOWN),
    };
    let epochs = crate::api::ledger::epochs(State(app), ip, QueryParams(query))
        .await?
        .0;
    let devices: u64 = prices.iter().map(|p| p.devices).sum();
    let hired: u64 = prices.iter().map(|p| p.hired).sum();
    let body = html! {
        p id="explore" { a href="/explorer/clusters" { "Clusters" } " · " a href="/explorer/devices" { "Devices" }
            " · " a href="/explorer/proposals" { "Governance" } " · "
            a href="/explorer/verify" { "Check an inclusion proof" } }
        section id="supply" {
            h2 { "Supply" }
            p { strong { (devices) } " devices offered, " strong { (hired) } " hired, "
                strong { (devices - hired.min(devices)) } " idle." }
            table {
                thead { tr { th { "Model" } th { "Devices" } th { "Hired" } th { "Median ask / h (IOSD)" } th { "Cheapest / h" } } }
                tbody {
                    @for price in &prices {
                        tr {
                            td { (price.model) }
                            td { (price.devices) }
                            td { (price.hired) }
                            td { (price.median_ask_usd) }
                            td { (amount(price.cheapest_ask_per_hour)) }
                        }
                    }
                }
            }
            @if prices.is_empty() { p class="muted" { "Nothing is offered yet." } }
            h3 { "By country" }
            table id="supply-by-country" {
                thead { tr { th { "Country" } th { "Verified suppliers" } th { "Devices" } th { "Hired" } th { "Idle" } th { "By model: devices (hired)" } } }
                tbody {
                    @for country in &supply {
                        tr data-country=(country.country) {
                            td { @if country.country.is_empty() { "not given" } @else { (country.country.to_uppercase()) } }
                            td class="suppliers" { (country.total.suppliers) }
                            td class="devices" { (country.total.devices) }
                            td class="hired" { (country.total.hired) }
                            td class="idle" { (country.total.idle) }
                            td {
                                @for (i, model) in country.models.iter().enumerate() {
                                    @if i > 0 { " · " }
                                    (model.model) " " (model.count.devices) " (" (model.count.hired) ")"
                                }
                            }
                        }
                    }
                }
            }
        }
        section id="tokens" {
            h2 { "Tokens" }
            table {
                thead { tr { th { "Token" } th { "Minted" } th { "Burned" } th { "Circulating" } } }
                tbody {
                    @for supply in &ledger.supply {
                        tr {
                            td { (supply.token) }
                            td { (amount(supply.minted_micros)) }
                            td { (amount(supply.burned_micros)) }
                            td { (amount(supply.circulating_micros)) }
                        }
                    }
                }
            }
            p class="muted" { "Ledger head " (ledger.head_seq) ", hash " code { (ledger.head_hash) }
                "; epochs are signed with " code { (ledger.public_key) } "." }
        }
        section id="epochs" {
            h2 { "Sealed epochs" }
            table {
                thead { tr { th { "Epoch" } th { "Part" } th { "Entries" } th { "Block rewards (IO)" } th { "Merkle root" } } }
                tbody {
                    @for epoch in &epochs {
                        tr {
                            td { (epoch.epoch) }
                            td { (epoch.part) }
                            td { (epoch.entry_count) }
                            td { (epoch.rewards_paid_micros.map(amount).unwrap_or_default()) }
                            td { code { (epoch.root) } }
                        }
                    }
                }
            }
            @if epochs.is_empty() { p class="muted" { "No epoch is sealed yet." } }
            p { a href="/explorer/epochs.csv" id="epochs-csv" { "Every sealed epoch and its block rewards, as CSV" } }
        }
        (live_sections(&["supply", "tokens", "epochs"], EXPLORER_REFRESH_MS))
    };
    Ok(page("Explorer", Face::Explorer, signed.as_ref(), body).into_response())
}
