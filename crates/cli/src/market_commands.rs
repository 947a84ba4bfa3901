//! Market commands: `flotilla offers`, `flotilla market prices|set-price|set-location`, and
//! `flotilla requests create|list|show|cancel`.

use anyhow::{Context, Result};
use clap::Subcommand;
use flotilla_proto::api::{
    Device, ModelPriceInfo, OffersResponse, Page, RequestInfo, RequestSpec, SetLocationRequest,
    SetPriceRequest, WorkerDetail,
};
use flotilla_scheduler::PRICE_UNITS_PER_USD;
use flotilla_scheduler::explain::format_price;
use flotilla_scheduler::query::parse_decimal;

use crate::client_commands::Connection;
use crate::output::{Format, gib, opt, print};

#[derive(Debug, clap::Args)]
pub struct OffersArgs {
    #[command(flatten)]
    connection: Connection,
    /// A query such as 'gpu=rtx4090 count>=4 vram>=24 price<0.40 region in [eu,us] tier>=high
    /// reliability>0.98'; empty lists everything.
    #[arg(default_value = "")]
    query: String,
    /// price, reliability, vram, count or value.
    #[arg(long, default_value = "price")]
    sort: String,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// For "why no match?": GPUs needed on one worker.
    #[arg(long, default_value_t = 1)]
    gpus_per_node: u32,
    /// For "why no match?": workers needed.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
}

#[derive(Debug, Subcommand)]
pub enum MarketCommand {
    /// The price index: median ask, hired share and trend per model.
    Prices(Connection),
    /// Set a device's asking price in USD per hour (exact, up to 6 decimals), or `none` to
    /// withdraw it from the market.
    SetPrice {
        #[command(flatten)]
        connection: Connection,
        device: String,
        price_usd: String,
    },
    /// Set where a worker is and its connectivity tier.
    SetLocation {
        #[command(flatten)]
        connection: Connection,
        worker: String,
        /// Such as eu-west.
        #[arg(long)]
        region: String,
        /// ISO 3166 alpha-2, such as de.
        #[arg(long)]
        country: String,
        /// low, medium, high or ultra.
        #[arg(long)]
        tier: String,
    },
}

/// Percent-encodes a query-string value (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub async fn offers(args: OffersArgs) -> Result<()> {
    let path = format!(
        "offers?q={}&sort={}&limit={}&gpus_per_node={}&nodes={}",
        encode(&args.query),
        encode(&args.sort),
        args.limit,
        args.gpus_per_node,
        args.nodes
    );
    let found: OffersResponse = args.connection.client()?.get(&path).await?;
    if args.connection.output == Format::Json {
        print(Format::Json, &found, &[], vec![]);
        return Ok(());
    }
    if let Some(explanation) = &found.explanation {
        println!(
            "no match: {} of {} offers pass; {} workers have enough for a node ({} needed)",
            explanation.offers_matching,
            explanation.offers_total,
            explanation.nodes_matching,
            explanation.nodes_needed
        );
        for removed in &explanation.removed {
            println!("  {} removed {} offers", removed.constraint, removed.offers);
        }
        match explanation.relaxations.first() {
            Some(best) => println!("cheapest relaxation: {}", best.summary),
            None => println!("no single relaxation matches"),
        }
        for other in explanation.relaxations.iter().skip(1) {
            println!("  or {}", other.summary);
        }
        return Ok(());
    }
    let rows = found
        .offers
        .iter()
        .map(|o| {
            let model = if o.simulated {
                format!("{} (simulated)", o.model)
            } else {
                o.model.clone()
            };
            vec![
                o.worker_id.clone(),
                model,
                o.count.to_string(),
                gib(o.memory_bytes),
                o.price_usd.clone(),
                o.region.clone(),
                o.country.clone(),
                o.tier.clone(),
                format!("{:.4}", f64::from(o.reliability_ppm) / 1e6),
            ]
        })
        .collect();
    print(
        Format::Table,
        &found,
        &[
            "WORKER",
            "GPU",
            "COUNT",
            "VRAM",
            "USD/H",
            "REGION",
            "COUNTRY",
            "TIER",
            "RELIABILITY",
        ],
        rows,
    );
    Ok(())
}

pub async fn market(command: MarketCommand) -> Result<()> {
    match command {
        MarketCommand::Prices(connection) => {
            let prices: Vec<ModelPriceInfo> = connection.client()?.get("market/prices").await?;
            let rows = prices
                .iter()
                .map(|p| {
                    vec![
                        p.model.clone(),
                        p.devices.to_string(),
                        p.hired.to_string(),
                        p.median_ask_usd.clone(),
                        format_price(p.cheapest_ask_per_hour),
                        format!("{:.1}%", f64::from(p.hired_ppm) / 1e4),
                        opt(p.trend_ppm.map(|t| format!("{:+.1}%", t as f64 / 1e4))),
                    ]
                })
                .collect();
            print(
                connection.output,
                &prices,
                &[
                    "GPU",
                    "DEVICES",
                    "HIRED",
                    "MEDIAN USD/H",
                    "CHEAPEST",
                    "HIRED %",
                    "TREND",
                ],
                rows,
            );
            Ok(())
        }
        MarketCommand::SetPrice {
            connection,
            device,
            price_usd,
        } => {
            let price_per_hour = if price_usd == "none" {
                None
            } else {
                Some(
                    parse_decimal(&price_usd, PRICE_UNITS_PER_USD.ilog10()).with_context(|| {
                        format!("{price_usd:?} is not a price in USD with at most 6 decimals")
                    })?,
                )
            };
            let updated: Device = connection
                .client()?
                .post(
                    &format!("devices/{device}/price"),
                    &SetPriceRequest { price_per_hour },
                )
                .await?;
            let price = opt(updated.price_per_hour.map(format_price));
            print(
                connection.output,
                &updated,
                &["DEVICE", "MODEL", "USD/H"],
                vec![vec![updated.id.clone(), updated.model.clone(), price]],
            );
            Ok(())
        }
        MarketCommand::SetLocation {
            connection,
            worker,
            region,
            country,
            tier,
        } => {
            let request = SetLocationRequest {
                region,
                country,
                tier,
            };
            let updated: WorkerDetail = connection
                .client()?
                .post(&format!("workers/{worker}/location"), &request)
                .await?;
            let w = &updated.worker;
            print(
                connection.output,
                &updated,
                &["WORKER", "REGION", "COUNTRY", "TIER"],
                vec![vec![
                    w.id.clone(),
                    w.region.clone(),
                    w.country.clone(),
                    w.tier.clone(),
                ]],
            );
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Ask for GPUs: NODES workers with GPUS_PER_NODE matching GPUs each, placed whole.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        #[arg(long, default_value_t = 1)]
        gpus_per_node: u32,
        /// Constraints in the offer search language.
        #[arg(long, default_value = "")]
        query: String,
        /// urgent, normal or deferrable.
        #[arg(long, default_value = "normal")]
        priority: String,
        /// Deferrable: wait for offers at or under this price (USD per GPU hour)...
        #[arg(long)]
        target_price: Option<String>,
        /// ...until this many seconds from now.
        #[arg(long)]
        deadline_s: Option<u64>,
        /// The most the whole placement may cost per hour, in USD.
        #[arg(long)]
        budget: Option<String>,
        /// Let nodes be in different regions.
        #[arg(long)]
        spread: bool,
        /// Your region, for latency.
        #[arg(long)]
        renter_region: Option<String>,
        /// Rent for this many hours, paid in IOSD from escrow (needs --budget).
        #[arg(long)]
        hours: Option<u32>,
    },
    List(Connection),
    /// Where a request runs, or why it waits and what to relax.
    Show {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    Cancel {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// Rate a request that ran, 1 to 5 stars.
    Feedback {
        #[command(flatten)]
        connection: Connection,
        id: String,
        stars: u8,
    },
}

fn usd(text: &str, what: &str) -> Result<u64> {
    parse_decimal(text, PRICE_UNITS_PER_USD.ilog10())
        .with_context(|| format!("{what} {text:?} is not a price in USD with at most 6 decimals"))
}

fn request_rows(requests: &[RequestInfo]) -> Vec<Vec<String>> {
    requests
        .iter()
        .map(|r| {
            let nodes: Vec<String> = r
                .nodes
                .iter()
                .map(|n| format!("{}x{}", n.worker_id, n.device_ids.len()))
                .collect();
            vec![
                r.id.clone(),
                r.state.clone(),
                format!("{}x{}", r.spec.nodes, r.spec.gpus_per_node),
                if nodes.is_empty() {
                    opt(r.waiting_because.clone())
                } else {
                    nodes.join(" ")
                },
            ]
        })
        .collect()
}

const REQUEST_HEADERS: [&str; 4] = ["REQUEST", "STATE", "SHAPE", "PLACED ON / WAITING BECAUSE"];

fn print_request(output: Format, request: &RequestInfo) {
    print(
        output,
        request,
        &REQUEST_HEADERS,
        request_rows(std::slice::from_ref(request)),
    );
}

pub async fn requests(command: RequestsCommand) -> Result<()> {
    match command {
        RequestsCommand::Create {
            connection,
            nodes,
            gpus_per_node,
            query,
            priority,
            target_price,
            deadline_s,
            budget,
            spread,
            renter_region,
            hours,
        } => {
            let spec = RequestSpec {
                nodes,
                gpus_per_node,
                query,
                budget_per_hour: budget.as_deref().map(|b| usd(b, "--budget")).transpose()?,
                priority: Some(priority),
                target_price_per_hour: target_price
                    .as_deref()
                    .map(|p| usd(p, "--target-price"))
                    .transpose()?,
                deadline_s,
                colocation: Some(if spread { "spread" } else { "one_region" }.to_owned()),
                renter_region,
                hours,
                containers: false,
                io_price_micros: None,
            };
            let created: RequestInfo = connection.client()?.post("requests", &spec).await?;
            print_request(connection.output, &created);
            Ok(())
        }
        RequestsCommand::List(connection) => {
            let page: Page<RequestInfo> = connection.client()?.get("requests?limit=500").await?;
            print(
                connection.output,
                &page,
                &REQUEST_HEADERS,
                request_rows(&page.items),
            );
            Ok(())
        }
        RequestsCommand::Show { connection, id } => {
            let request: RequestInfo = connection.client()?.get(&format!("requests/{id}")).await?;
            print_request(connection.output, &request);
            if connection.output == Format::Table
                && let Some(best) = request
                    .explanation
                    .as_ref()
                    .and_then(|e| e.relaxations.first())
            {
                println!("cheapest relaxation: {}", best.summary);
            }
            Ok(())
        }
        RequestsCommand::Feedback {
            connection,
            id,
            stars,
        } => {
            let request: RequestInfo = connection
                .client()?
                .post(
                    &format!("requests/{id}/feedback"),
                    &flotilla_proto::api::FeedbackRequest { stars },
                )
                .await?;
            print_request(connection.output, &request);
            Ok(())
        }
        RequestsCommand::Cancel { connection, id } => {
            let request: RequestInfo = connection
                .client()?
                .post_empty(&format!("requests/{id}/cancel"))
                .await?;
            print_request(connection.output, &request);
            Ok(())
        }
    }
}
