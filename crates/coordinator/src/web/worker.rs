//! Worker, the suppliers' face: devices with their state, price, latest telemetry and tunnel
//! traffic, with Rename, Pause and Resume; a device's page with charts of its telemetry
//! history; and Add device, which makes an enrollment token and shows the exact command to run.
//! Reads and changes go through the API's handlers with the session's caller.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use flotilla_proto::api::{CreateEnrollmentTokenRequest, Device, RenameRequest, TelemetryPoint};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{CsrfForm, Signed};
use super::{Face, PageResult, amount, page, see_other};
use crate::AppState;
use crate::api::devices::{self, DeviceListQuery, DeviceShowQuery};
use crate::extract::{JsonBody, PathId, QueryParams};

/// Devices listed (the first page).
const DEVICES_SHOWN: u32 = 200;
/// Telemetry points charted on a device's page.
const HISTORY_POINTS_SHOWN: u32 = 120;
/// A chart's drawing size, in SVG units.
const CHART_WIDTH: f64 = 600.0;
const CHART_HEIGHT: f64 = 120.0;

fn device_row(device: &Device, csrf: &str) -> Markup {
    let action = |verb: &str| format!("/worker/devices/{}/{verb}", device.id);
    let paused = device.state == flotilla_proto::device::DeviceState::Paused;
    html! {
        tr {
            td { a href={ "/worker/devices/" (device.id) } { (device.name) } }
            td { (device.model) }
            td class="state" { (device.state) }
            td { (device.price_per_hour.map(amount).unwrap_or_else(|| "-".into())) }
            td { (device.telemetry.as_ref().map(|t| format!("{}%", t.utilization_pct)).unwrap_or_default()) }
            td {
                form method="post" action=(action(if paused { "resume" } else { "pause" })) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { (if paused { "Resume" } else { "Pause" }) }
                }
            }
        }
    }
}

pub async fn home(State(app): State<AppState>, signed: Signed) -> PageResult {
    let query = DeviceListQuery {
        limit: Some(DEVICES_SHOWN),
        cursor: None,
        worker_id: None,
    };
    let listed = devices::list_devices(State(app), signed.caller.clone(), QueryParams(query))
        .await?
        .0;
    let body = html! {
        section id="devices" {
            h2 { "Devices" }
            table {
                thead { tr { th { "Name" } th { "Model" } th { "State" } th { "Ask / h (IOSD)" } th { "Utilization" } th {} } }
                tbody { @for device in &listed.items { (device_row(device, &signed.csrf)) } }
            }
            @if listed.items.is_empty() { p class="muted" { "No devices yet: add one below." } }
        }
        p { a href="/worker/earnings" id="earnings-link" { "Earnings: rent and block rewards" } }
        section id="add" {
            h2 { "Add a device" }
            form method="post" action="/worker/enrollment-tokens" {
                input type="hidden" name="csrf" value=(signed.csrf);
                button type="submit" { "Make an enrollment token" }
            }
        }
    };
    Ok(page("Worker", Face::Worker, Some(&signed), body).into_response())
}

/// A line chart of `values` (oldest first) scaled to `max`.
fn chart(label: &str, values: &[f64], max: f64) -> Markup {
    let step = CHART_WIDTH / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = CHART_HEIGHT - (v / max.max(1.0)).clamp(0.0, 1.0) * CHART_HEIGHT;
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect();
    html! {
        figure {
            figcaption { (label) }
            svg viewBox={ "0 0 " (CHART_WIDTH) " " (CHART_HEIGHT) } width="100%" height="120"
                preserveAspectRatio="none" role="img" aria-label=(label) {
                polyline fill="none" stroke="#10243e" stroke-width="2" points=(points.join(" ")) {}
            }
        }
    }
}

fn charts(history: &[TelemetryPoint]) -> Markup {
    let series =
        |f: &dyn Fn(&TelemetryPoint) -> f64| -> Vec<f64> { history.iter().map(f).collect() };
    let memory = series(&|p| p.memory_used_bytes_avg as f64);
    let memory_max = memory.iter().copied().fold(1.0, f64::max);
    let traffic = series(&|p| (p.net_rx_bytes + p.net_tx_bytes) as f64);
    let traffic_max = traffic.iter().copied().fold(1.0, f64::max);
    html! {
        (chart("Utilization, %", &series(&|p| f64::from(p.utilization_pct_avg)), 100.0))
        (chart("Temperature, °C (max)", &series(&|p| f64::from(p.temperature_c_max.unwrap_or(0))), 100.0))
        (chart("Power, W", &series(&|p| f64::from(p.power_w_avg.unwrap_or(0))), 1000.0))
        (chart("Memory used, bytes", &memory, memory_max))
        (chart("Network traffic, bytes", &traffic, traffic_max))
    }
}

pub async fn device(State(app): State<AppState>, signed: Signed, PathId(id): PathId) -> PageResult {
    let query = DeviceShowQuery {
        history_points: Some(HISTORY_POINTS_SHOWN),
    };
    let detail = devices::show_device(
        State(app),
        signed.caller.clone(),
        PathId(id),
        QueryParams(query),
    )
    .await?
    .0;
    let device = &detail.device;
    let body = html! {
        section id="summary" {
            p { (device.model) " · state " strong class="state" { (device.state) } " · worker "
                code { (device.worker_id) } }
            p { "Tunnelled connections to its nodes: " (device.tunnel.connections) ", "
                (device.tunnel.bytes_to_node) " B in, " (device.tunnel.bytes_from_node) " B out." }
            form method="post" action={ "/worker/devices/" (device.id) "/rename" } {
                input type="hidden" name="csrf" value=(signed.csrf);
                input name="name" value=(device.name) aria-label="name";
                " " button type="submit" { "Rename" }
            }
        }
        section id="charts" {
            h2 { "Telemetry" }
            @if detail.history.is_empty() { p class="muted" { "No telemetry recorded yet." } }
            @else { (charts(&detail.history)) }
        }
    };
    Ok(page(
        &format!("Device {}", device.name),
        Face::Worker,
        Some(&signed),
        body,
    )
    .into_response())
}

pub async fn pause(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let _paused = devices::pause_device(State(app), signed.caller.clone(), PathId(id)).await?;
    Ok(see_other("/worker"))
}

pub async fn resume(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let _resumed = devices::resume_device(State(app), signed.caller.clone(), PathId(id)).await?;
    Ok(see_other("/worker"))
}

#[derive(Debug, Deserialize)]
pub struct RenameForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

pub async fn rename(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
    Form(form): Form<RenameForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let request = RenameRequest { name: form.name };
    let _renamed = devices::rename_device(
        State(app),
        signed.caller.clone(),
        PathId(id.clone()),
        JsonBody(request),
    )
    .await?;
    Ok(see_other(&format!("/worker/devices/{id}")))
}

/// Makes an enrollment token and shows, once, the command that enrolls a machine with it.
pub async fn enrollment_token(
    State(app): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let request = CreateEnrollmentTokenRequest {
        name: None,
        expires_in_s: None,
    };
    let (_, created) =
        crate::api::enrollment::create_token(State(app), signed.caller.clone(), JsonBody(request))
            .await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("COORDINATOR");
    let command = format!(
        "flotilla worker --coordinator http://{host} --token {} --data /var/lib/flotilla",
        created.secret
    );
    let body = html! {
        section id="enroll" {
            p { "Run this on the machine to add (the token works once and is shown only now):" }
            pre id="command" { (command) }
            p { a href="/worker" { "Back to the devices" } }
        }
    };
    Ok(page("Add a device", Face::Worker, Some(&signed), body).into_response())
}

/// Ledger entries listed on the earnings page (the newest).
const EARNINGS_SHOWN: u32 = 200;

/// Rent and block rewards paid to the supplier, newest first, each with its ledger entry and a
/// link to its inclusion proof; totals per token over the entries shown.
pub async fn earnings(State(app): State<AppState>, signed: Signed) -> PageResult {
    let query = crate::api::ledger::HistoryQuery {
        before: None,
        limit: Some(EARNINGS_SHOWN),
    };
    let entries =
        crate::api::ledger::history(State(app), signed.caller.clone(), QueryParams(query))
            .await?
            .0;
    let own = format!("{}:", signed.caller.account_id());
    let earned: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "rent" || e.kind == "reward")
        .filter(|e| e.credit.as_deref().is_some_and(|c| c.starts_with(&own)))
        .collect();
    let mut totals: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for entry in &earned {
        let token = entry.token.as_deref().unwrap_or("");
        *totals.entry(token).or_default() += entry.amount_micros;
    }
    let body = html! {
        section id="totals" {
            @for (token, total) in &totals { p { strong { (amount(*total)) " " (token) } " earned in the entries below" } }
            @if totals.is_empty() { p class="muted" { "No rent or block rewards yet." } }
        }
        section id="earnings" {
            table {
                thead { tr { th { "When" } th { "Kind" } th { "Amount" } th { "For" } th { "Ledger entry" } } }
                tbody {
                    @for entry in &earned {
                        tr {
                            td { (entry.at) }
                            td { (entry.kind) }
                            td { (amount(entry.amount_micros)) " " (entry.token.as_deref().unwrap_or("")) }
                            td { (entry.reference) }
                            td { a class="proof" href={ "/api/v1/ledger/entries/" (entry.id) "/proof" } { "#" (entry.seq) " proof" } }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Earnings", Face::Worker, Some(&signed), body).into_response())
}
