//! Worker, the suppliers' face: devices with their state, price, latest telemetry and tunnel
//! traffic, with Rename, Pause and Resume; a device's page with charts of its telemetry
//! history, its work history (the cluster node runs it served), its proof-of-compute attempts
//! with their transcripts, and Remove; and Add device, which makes an enrollment token and
//! shows the exact command to run. Earnings and staking are in `earnings.rs`.
//! Reads and changes go through the API's handlers with the session's caller.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use flotilla_proto::api::{
    CreateEnrollmentTokenRequest, Device, ProofInfo, RenameRequest, TelemetryPoint,
};
use flotilla_proto::time::rfc3339_opt;
use flotilla_store::RunRow;
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{CsrfForm, Signed};
use super::{Face, PageResult, amount, chart, live_sections, page, see_other};
use crate::AppState;
use crate::api::devices::{self, DeviceListQuery, DeviceShowQuery};
use crate::api::proofs::{self, ProofListQuery};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathId, QueryParams};

/// Devices listed (the first page).
const DEVICES_SHOWN: u32 = 200;
/// Telemetry points charted on a device's page.
const HISTORY_POINTS_SHOWN: u32 = 120;
/// A device's node runs listed on its page (the newest).
const DEVICE_RUNS_SHOWN_MAX: u32 = 50;
/// A device's proof-of-compute attempts listed on its page.
const DEVICE_PROOFS_SHOWN_MAX: u32 = 50;

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

/// How often the devices list and a device's page (state, charts) refresh themselves.
const DEVICES_REFRESH_MS: u32 = 10_000;
const DEVICE_REFRESH_MS: u32 = 15_000;

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
        (live_sections(&["devices"], DEVICES_REFRESH_MS))
        p { a href="/worker/earnings" id="earnings-link" { "Earnings: rent and block rewards" } " · "
            a href="/worker/staking" id="staking-link" { "Staking" } }
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

fn charts(history: &[TelemetryPoint]) -> Markup {
    let series =
        |f: &dyn Fn(&TelemetryPoint) -> f64| -> Vec<f64> { history.iter().map(f).collect() };
    let memory = series(&|p| p.memory_used_bytes_avg as f64);
    let memory_max = memory.iter().copied().fold(1.0, f64::max);
    let traffic = series(&|p| (p.net_rx_bytes + p.net_tx_bytes) as f64);
    let traffic_max = traffic.iter().copied().fold(1.0, f64::max);
    html! {
        (chart::evenly("Utilization, %", &series(&|p| f64::from(p.utilization_pct_avg)), 100.0))
        (chart::evenly("Temperature, °C (max)", &series(&|p| f64::from(p.temperature_c_max.unwrap_or(0))), 100.0))
        (chart::evenly("Power, W", &series(&|p| f64::from(p.power_w_avg.unwrap_or(0))), 1000.0))
        (chart::evenly("Memory used, bytes", &memory, memory_max))
        (chart::evenly("Network traffic, bytes", &traffic, traffic_max))
    }
}

/// The node runs a device served, newest first: the cluster, rank, attempt, how it ended.
fn runs_section(runs: &[RunRow]) -> Markup {
    html! {
        section id="work" {
            h2 { "Work history" }
            table {
                thead { tr { th { "Cluster" } th { "Rank" } th { "Attempt" } th { "State" } th { "Exit" } th { "Started" } th { "Ended" } } }
                tbody {
                    @for run in runs {
                        tr {
                            td { code { (run.cluster_id) } }
                            td { (run.node_rank) }
                            td { (run.attempt) }
                            td { (run.state) @if !run.reason.is_empty() && run.reason != run.state { " (" (run.reason) ")" } }
                            td { (run.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                            td { (rfc3339_opt(run.started_at_ms).unwrap_or_default()) }
                            td { (rfc3339_opt(run.ended_at_ms).unwrap_or_default()) }
                        }
                    }
                }
            }
            @if runs.is_empty() { p class="muted" { "No cluster node has run here yet." } }
        }
    }
}

/// A device's proof-of-compute attempts, each linking to its public transcript.
fn proofs_section(proofs: &[ProofInfo]) -> Markup {
    html! {
        section id="proofs" {
            h2 { "Proof of compute" }
            table {
                thead { tr { th { "When" } th { "Class" } th { "Result" } th { "Took" } th { "Transcript" } } }
                tbody {
                    @for proof in proofs {
                        tr {
                            td { (proof.created_at) }
                            td { (proof.class) }
                            td { @if proof.passed { "passed" } @else { "failed: " (proof.reason) } }
                            td { (proof.elapsed_ms) " ms" }
                            td { a class="transcript" href={ "/api/v1/proofs/" (proof.id) "/transcript" } { (proof.id) } }
                        }
                    }
                }
            }
            @if proofs.is_empty() { p class="muted" { "No proof attempted yet." } }
        }
    }
}

pub async fn device(State(app): State<AppState>, signed: Signed, PathId(id): PathId) -> PageResult {
    let query = DeviceShowQuery {
        history_points: Some(HISTORY_POINTS_SHOWN),
    };
    let detail = devices::show_device(
        State(app.clone()),
        signed.caller.clone(),
        PathId(id.clone()),
        QueryParams(query),
    )
    .await?
    .0;
    // The device is the caller's (the API answered); the query filters by account again.
    let runs = app
        .store
        .device_runs(signed.caller.account_id(), &id, DEVICE_RUNS_SHOWN_MAX)
        .await
        .map_err(ApiError::from)?;
    let query = ProofListQuery {
        limit: Some(DEVICE_PROOFS_SHOWN_MAX),
        cursor: None,
        device_id: Some(id),
    };
    let proofs = proofs::list_proofs(State(app), QueryParams(query)).await?.0;
    let device = &detail.device;
    let body = html! {
        section id="summary" {
            p { (device.model) " · state " strong class="state" { (device.state) } " · worker "
                code { (device.worker_id) } " · last seen "
                (device.last_seen_at.as_deref().unwrap_or("never")) }
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
        (live_sections(&["summary", "charts"], DEVICE_REFRESH_MS))
        (runs_section(&runs))
        (proofs_section(&proofs.items))
        section id="remove" {
            form method="post" action={ "/worker/devices/" (device.id) "/remove" } {
                input type="hidden" name="csrf" value=(signed.csrf);
                button class="danger" type="submit" { "Remove this device" }
            }
            p class="muted" { "Its worker's reports of it are ignored from then on." }
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

pub async fn remove(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let _removed = devices::remove_device(State(app), signed.caller.clone(), PathId(id)).await?;
    Ok(see_other("/worker"))
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
