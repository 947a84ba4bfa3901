//! The Marketplace (Cloud): the market price per model, offers filtered by the search language
//! and sorted, and, when a filter finds nothing, why and what to relax. Public data, the
//! same as `GET /offers` and `GET /market/prices`.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;

use super::session::MaybeSigned;
use super::{Face, PageResult, amount, page};
use crate::AppState;
use crate::api::market::OfferQuery;
use crate::extract::{ClientIp, QueryParams};

/// A price change in ppm as a signed percentage with one decimal.
fn trend_words(ppm: i64) -> String {
    let sign = if ppm < 0 { "-" } else { "+" };
    let tenths = ppm.unsigned_abs() / 1_000;
    format!("{sign}{}.{}%", tenths / 10, tenths % 10)
}

/// Offers listed at most.
const OFFERS_SHOWN: u32 = 100;
const SORTS: &[&str] = &["price", "reliability", "vram", "count", "value"];

#[derive(Debug, Default, Deserialize)]
pub struct MarketForm {
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
}

pub async fn market(
    State(app): State<AppState>,
    ip: ClientIp,
    MaybeSigned(signed): MaybeSigned,
    QueryParams(form): QueryParams<MarketForm>,
) -> PageResult {
    let sort = if form.sort.is_empty() {
        "price".to_owned()
    } else {
        form.sort.clone()
    };
    let query = OfferQuery {
        q: Some(form.q.clone()),
        sort: Some(sort.clone()),
        limit: Some(OFFERS_SHOWN),
        gpus_per_node: None,
        nodes: None,
    };
    let prices = crate::api::market::market_prices(State(app.clone()), ip.clone())
        .await?
        .0;
    let found = crate::api::market::list_offers(State(app), ip, QueryParams(query))
        .await?
        .0;
    let body = html! {
        section id="search" {
            form method="get" action="/cloud/market" {
                p {
                    label for="q" { "Filter (such as " code { "gpu=h100 region=eu price<2.5" } ")" } br;
                    input id="q" name="q" value=(form.q);
                }
                p {
                    label for="sort" { "Sort by" } br;
                    select id="sort" name="sort" {
                        @for option in SORTS { option value=(option) selected[*option == sort] { (option) } }
                    }
                }
                button type="submit" { "Search" }
            }
        }
        section id="prices" {
            h2 { "Market price per model" }
            table {
                thead { tr { th { "Model" } th { "Median ask / h (IOSD)" } th { "Cheapest / h" } th { "Offered" } th { "Hired" } th { "Trend (1 h)" } } }
                tbody {
                    @for price in &prices {
                        tr data-model=(price.model) {
                            td { (price.model) }
                            td class="median" { (price.median_ask_usd) }
                            td { (amount(price.cheapest_ask_per_hour)) }
                            td { (price.devices) }
                            td { (price.hired) }
                            td { (price.trend_ppm.map(trend_words).unwrap_or_else(|| "-".to_owned())) }
                        }
                    }
                }
            }
        }
        section id="offers" {
            h2 { "Offers" }
            @if found.offers.is_empty() {
                p class="error" id="no-match" { "Nothing matches." }
                @if let Some(why) = &found.explanation {
                    ul {
                        @for removal in &why.removed {
                            li { (removal.constraint) " removes " (removal.offers) " offer(s)" }
                        }
                    }
                    @for relax in &why.relaxations { p { "Try: " (relax.summary) } }
                }
            } @else {
                table {
                    thead { tr { th { "Model" } th { "GPUs" } th { "Price / h" } th { "Region" } th { "Tier" } th { "Reliability" } } }
                    tbody {
                        @for offer in &found.offers {
                            tr {
                                td { (offer.model) }
                                td { (offer.count) }
                                td { (offer.price_usd) }
                                td { (offer.region) " " (offer.country) }
                                td { (offer.tier) }
                                td { (offer.reliability_ppm / 10_000) "%" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Marketplace", Face::Cloud, signed.as_ref(), body).into_response())
}

#[cfg(test)]
mod tests {
    use super::trend_words;

    #[test]
    fn trends_read_as_signed_percentages() {
        assert_eq!(trend_words(100_000), "+10.0%");
        assert_eq!(trend_words(-25_000), "-2.5%");
        assert_eq!(trend_words(0), "+0.0%");
        assert_eq!(trend_words(999), "+0.0%");
    }
}
