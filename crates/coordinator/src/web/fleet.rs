//! The Explorer's fleet: live clusters and every device, by their public facts only. A
//! cluster shows its id, type, node count, state, GPU models, age and health (its nodes'
//! latest runs); never its owner, name, command, environment, ports or logs. A device shows
//! its id, model, memory, state, ask and age; never its name, owner or worker. Reads are
//! counted against the caller's address like the public API's.

use axum::extract::State;
use axum::response::IntoResponse;
use flotilla_proto::api::ClusterSpec;
use flotilla_store::{ClusterRow, RUN_LOST, RUN_RUNNING, RunRow};
use maud::html;
use serde::Deserialize;

use super::session::MaybeSigned;
use super::{Face, PageResult, amount, page};
use crate::error::ApiError;
use crate::extract::{ClientIp, QueryParams};
use crate::{AppState, now_ms};

/// Live clusters listed (the oldest first).
const CLUSTERS_SHOWN_MAX: u32 = 200;
/// Devices listed per page, in id order.
const DEVICES_SHOWN_MAX: u32 = 200;

/// How long ago `since_ms` was, in the largest two units.
fn age(now_ms: i64, since_ms: i64) -> String {
    let s = (now_ms - since_ms).max(0) / 1_000;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A cluster's health from its runs: how many of its nodes' latest runs are running, and how
/// many times nodes were restarted or moved (attempts past the first) or lost.
fn health(runs: &[RunRow], nodes: u32) -> String {
    let latest = crate::clusters::latest_runs(runs);
    let running = latest.values().filter(|r| r.state == RUN_RUNNING).count();
    let restarts: u32 = latest.values().map(|r| r.attempt.saturating_sub(1)).sum();
    let lost = latest.values().filter(|r| r.state == RUN_LOST).count();
    let mut words = format!("{running}/{nodes} nodes running");
    if restarts > 0 {
        words.push_str(&format!(", {restarts} restarted or moved"));
    }
    if lost > 0 {
        words.push_str(&format!(", {lost} lost"));
    }
    words
}

/// The node count from a stored spec; nothing else of the spec is read.
fn node_count(row: &ClusterRow) -> u32 {
    serde_json::from_str::<ClusterSpec>(&row.spec).map_or(0, |spec| spec.nodes)
}

pub async fn clusters(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSigned(signed): MaybeSigned,
) -> PageResult {
    crate::api::market::limit_reads(&app.limits.market_reads, &ip)?;
    let rows = app
        .store
        .live_clusters(CLUSTERS_SHOWN_MAX)
        .await
        .map_err(ApiError::from)?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let runs = app.store.runs_of(&ids).await.map_err(ApiError::from)?;
    let models = app
        .store
        .cluster_models(&ids)
        .await
        .map_err(ApiError::from)?;
    let now = now_ms();
    let body = html! {
        section id="clusters" {
            p { strong { (rows.len()) } " live clusters"
                @if rows.len() as u32 == CLUSTERS_SHOWN_MAX { " (the oldest " (CLUSTERS_SHOWN_MAX) " shown)" } "." }
            table {
                thead { tr { th { "Cluster" } th { "Type" } th { "Nodes" } th { "State" } th { "GPU" } th { "Age" } th { "Health" } } }
                tbody {
                    @for row in &rows {
                        @let nodes = node_count(row);
                        tr {
                            td { code { (row.id) } }
                            td { (row.kind) }
                            td { (nodes) }
                            td class="state" { (row.state) }
                            td { (models.get(&row.id).map(|m| m.join(", ")).unwrap_or_default()) }
                            td { (age(now, row.created_at_ms)) }
                            td { (health(runs.get(&row.id).map_or(&[][..], Vec::as_slice), nodes)) }
                        }
                    }
                }
            }
            @if rows.is_empty() { p class="muted" { "No cluster is running now." } }
        }
    };
    Ok(page("Clusters", Face::Explorer, signed.as_ref(), body).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesQuery {
    /// The last device id of the page before.
    #[serde(default)]
    after: String,
}

pub async fn devices(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSigned(signed): MaybeSigned,
    QueryParams(query): QueryParams<DevicesQuery>,
) -> PageResult {
    crate::api::market::limit_reads(&app.limits.market_reads, &ip)?;
    let rows = app
        .store
        .public_devices(&query.after, DEVICES_SHOWN_MAX)
        .await
        .map_err(ApiError::from)?;
    let now = now_ms();
    let next = (rows.len() as u32 == DEVICES_SHOWN_MAX)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let body = html! {
        section id="devices" {
            table {
                thead { tr { th { "Device" } th { "Model" } th { "Memory" } th { "State" } th { "Ask / h (IOSD)" } th { "Age" } } }
                tbody {
                    @for row in &rows {
                        tr {
                            td { code { (row.id) } }
                            td { (row.hardware.model) @if row.hardware.simulated { " (simulated)" } }
                            td { (row.hardware.memory_bytes >> 30) " GiB" }
                            td class="state" { (row.state) }
                            td { (row.price_per_hour.map(amount).unwrap_or_else(|| "-".into())) }
                            td { (age(now, row.created_at_ms)) }
                        }
                    }
                }
            }
            @if rows.is_empty() { p class="muted" { "No devices here." } }
            @if let Some(next) = next { p { a id="next" href={ "/explorer/devices?after=" (next) } { "Next devices" } } }
        }
    };
    Ok(page("Devices", Face::Explorer, signed.as_ref(), body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rank: u32, attempt: u32, state: &str) -> RunRow {
        RunRow {
            id: format!("run_{rank}_{attempt}"),
            cluster_id: "clu_x".into(),
            node_rank: rank,
            attempt,
            worker_id: "wrk_x".into(),
            node_index: rank,
            state: state.into(),
            exit_code: None,
            reason: String::new(),
            log_bytes: 0,
            created_at_ms: 0,
            started_at_ms: None,
            ended_at_ms: None,
        }
    }

    #[test]
    fn health_counts_each_nodes_latest_run() {
        let runs = [
            run(0, 1, "running"),
            run(1, 1, "lost"),
            run(1, 2, "running"),
            run(2, 1, "lost"),
        ];
        assert_eq!(
            health(&runs, 3),
            "2/3 nodes running, 1 restarted or moved, 1 lost"
        );
        assert_eq!(health(&[], 2), "0/2 nodes running");
    }

    #[test]
    fn ages_read_in_two_units() {
        assert_eq!(age(10_000, 0), "10 s");
        assert_eq!(age(0, 5), "0 s");
        assert_eq!(age(125_000, 0), "2 min");
        assert_eq!(age(3_723_000, 0), "1 h 2 min");
        assert_eq!(age(90_000_000, 0), "1 d 1 h");
    }
}
