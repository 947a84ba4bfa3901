//! Cloud, the renters' face: balances and clusters, and a cluster's page with its nodes, their
//! port links, the latest logs and Terminate. Every read and change goes through the API's
//! handlers with the session's caller, so ownership is checked the API's way (another renter's
//! cluster is a 404).

use axum::Form;
use axum::extract::State;
use axum::response::IntoResponse;
use flotilla_proto::api::{LogQuery, PageQuery};
use maud::html;

use super::session::{CsrfForm, Signed};
use super::{Face, PageResult, amount, page, see_other};
use crate::AppState;
use crate::api::clusters;
use crate::extract::{PathId, QueryParams};

/// Log lines shown on a cluster's page (the latest).
const LOG_LINES_SHOWN: u32 = 200;
/// Clusters listed on the home page (the newest).
const CLUSTERS_SHOWN: u32 = 50;

pub async fn home(State(app): State<AppState>, signed: Signed) -> PageResult {
    let wallet = crate::api::ledger::wallet(State(app.clone()), signed.caller.clone())
        .await?
        .0;
    let query = PageQuery {
        limit: Some(CLUSTERS_SHOWN),
        cursor: None,
    };
    let listed = clusters::list_clusters(State(app), signed.caller.clone(), QueryParams(query))
        .await?
        .0;
    let body = html! {
        section id="balances" {
            h2 { "Balances" }
            table {
                thead { tr { th { "Account" } th { "Available" } th { "Held" } } }
                tbody {
                    @for balance in &wallet.balances {
                        tr {
                            td { (balance.purpose) " " (balance.token) }
                            td { (amount(balance.available_micros)) }
                            td { (amount(balance.held_micros)) }
                        }
                    }
                }
            }
        }
        section id="clusters" {
            h2 { "Clusters" }
            table {
                thead { tr { th { "Cluster" } th { "Name" } th { "State" } th { "Nodes" } th { "Escrow" } } }
                tbody {
                    @for cluster in &listed.items {
                        tr {
                            td { a href={ "/cloud/clusters/" (cluster.id) } { (cluster.id) } }
                            td { (cluster.name) }
                            td class="state" { (cluster.state) }
                            td { (cluster.spec.nodes) }
                            td { (amount(cluster.escrow_micros)) " " (cluster.spec.token) }
                        }
                    }
                }
            }
            @if listed.items.is_empty() {
                p class="muted" { "No clusters yet: " code { "flotilla deploy --nodes 1 -- nvidia-smi" } }
            }
        }
    };
    Ok(page("Cloud", Face::Cloud, Some(&signed), body).into_response())
}

pub async fn cluster(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
) -> PageResult {
    let info = clusters::show_cluster(
        State(app.clone()),
        signed.caller.clone(),
        PathId(id.clone()),
    )
    .await?
    .0;
    let query = LogQuery {
        after: None,
        node: None,
        limit: Some(LOG_LINES_SHOWN),
    };
    let logs = clusters::cluster_logs(
        State(app),
        signed.caller.clone(),
        PathId(id),
        QueryParams(query),
    )
    .await?
    .0;
    let live = info.state == "running" || info.state == "deploying";
    let body = html! {
        section id="summary" {
            p { "State: " strong class="state" { (info.state) } " · " (info.kind) " · "
                (info.spec.nodes) " node(s) · " (info.spec.hours) " h · escrow "
                (amount(info.escrow_micros)) " " (info.spec.token) }
            @if let Some(why) = info.waiting_because.as_ref().or(info.ended_because.as_ref()) {
                p class="muted" { (why) }
            }
            @if live {
                form method="post" action={ "/cloud/clusters/" (info.id) "/terminate" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    button class="danger" type="submit" { "Terminate" }
                }
            }
        }
        section id="nodes" {
            h2 { "Nodes" }
            table {
                thead { tr { th { "Rank" } th { "Attempt" } th { "State" } th { "Exit" } th { "Devices" } th { "Tunnel traffic" } } }
                tbody {
                    @for node in &info.nodes {
                        tr {
                            td { (node.rank) }
                            td { (node.attempt) }
                            td { (node.state) }
                            td { (node.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                            td { (node.device_ids.join(", ")) }
                            td { (node.tunnel.connections) " conn, " (node.tunnel.bytes_to_node) " B in, "
                                 (node.tunnel.bytes_from_node) " B out" }
                        }
                    }
                }
            }
        }
        @if !info.port_links.is_empty() {
            section id="ports" {
                h2 { "Ports" }
                ul {
                    @for link in &info.port_links {
                        li { "node " (link.node_rank) ", port " (link.port) ": "
                             a href=(link.path) { (link.path) } }
                    }
                }
            }
        }
        section id="logs" {
            h2 { "Logs" }
            pre {
                @for line in &logs.lines {
                    "[" (line.node_rank) "] " (line.text) "\n"
                }
            }
        }
    };
    Ok(page(
        &format!("Cluster {}", info.name),
        Face::Cloud,
        Some(&signed),
        body,
    )
    .into_response())
}

pub async fn terminate(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let _ended =
        clusters::terminate_cluster(State(app), signed.caller.clone(), PathId(id.clone())).await?;
    Ok(see_other(&format!("/cloud/clusters/{id}")))
}
