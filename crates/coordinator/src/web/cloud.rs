//! Cloud, the renters' face: balances and clusters, the clusters list (state, paid time left,
//! rent so far), and a cluster's page with its nodes, their port links, the latest logs,
//! Extend and Terminate. Every read and change goes through the API's handlers with the
//! session's caller, so ownership is checked the API's way (another renter's cluster is a 404).

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use flotilla_proto::api::{ClusterSpec, ExtendRequest, LogQuery, PageQuery};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{CsrfForm, Signed};
use super::{Face, PageResult, amount, live_sections, page, see_other};
use crate::AppState;
use crate::api::clusters;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathId, QueryParams};

/// How often a live cluster's page refreshes itself; the home page, less often.
const CLUSTER_REFRESH_MS: u32 = 2_000;
const HOME_REFRESH_MS: u32 = 10_000;

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
    let spending = crate::api::ledger::spending(State(app.clone()), signed.caller.clone())
        .await?
        .0;
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
        section id="spending" {
            h2 { "Spent this month" }
            p {
                @for (i, token) in spending.tokens.iter().enumerate() {
                    @if i > 0 { " · " }
                    strong class="spent" data-token=(token.token) { (amount(token.spent_micros)) } " " (token.token)
                }
            }
            p class="muted" { "Paid into clusters' escrows since " (spending.since.get(..10).unwrap_or_default()) " (UTC)"
                ", less what came back" @if !spending.complete { " (still adding up: reload for the rest)" } "." }
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
            p { a href="/cloud/deploy" id="deploy" { "Deploy a cluster" } " · "
                a href="/cloud/market" { "Marketplace" } " · "
                a href="/cloud/clusters" id="all-clusters" { "All clusters" } }
        }
        (live_sections(&["balances", "spending", "clusters"], HOME_REFRESH_MS))
    };
    Ok(page("Cloud", Face::Cloud, Some(&signed), body).into_response())
}

/// Clusters listed on the clusters page (the first, in id order).
const CLUSTERS_LISTED_MAX: u32 = 200;

/// Paid minutes left: the hours bought less the minutes metered so far.
fn minutes_left(hours: u32, metered_minutes: u64) -> u64 {
    (u64::from(hours) * 60).saturating_sub(metered_minutes)
}

/// The rent metered so far, IOSD base units: the nodes' hourly prices for each metered minute
/// (a minute a node was down was not charged, so this is the most it can be).
fn rent_so_far_micros(rent_per_hour: u64, metered_minutes: u64) -> u64 {
    let micros = u128::from(rent_per_hour) * u128::from(metered_minutes) / 60;
    u64::try_from(micros).unwrap_or(u64::MAX)
}

fn duration_words(minutes: u64) -> String {
    format!("{} h {:02} min", minutes / 60, minutes % 60)
}

/// Every cluster of the renter's with its state, paid time left and rent so far.
pub async fn clusters_list(State(app): State<AppState>, signed: Signed) -> PageResult {
    let query = PageQuery {
        limit: Some(CLUSTERS_LISTED_MAX),
        cursor: None,
    };
    let listed = clusters::list_clusters(State(app), signed.caller.clone(), QueryParams(query))
        .await?
        .0;
    let body = html! {
        section id="clusters" {
            table {
                thead { tr { th { "Cluster" } th { "Name" } th { "Type" } th { "State" } th { "Nodes" }
                    th { "Time left" } th { "Rent so far (IOSD, at most)" } th { "Escrow" } } }
                tbody {
                    @for cluster in &listed.items {
                        @let live = cluster.state == "running" || cluster.state == "deploying";
                        tr {
                            td { a href={ "/cloud/clusters/" (cluster.id) } { (cluster.id) } }
                            td { (cluster.name) }
                            td { (cluster.kind) }
                            td class="state" { (cluster.state) }
                            td { (cluster.spec.nodes) }
                            td { @if live { (duration_words(minutes_left(cluster.spec.hours, cluster.metered_minutes))) } @else { "-" } }
                            td { (amount(rent_so_far_micros(cluster.rent_per_hour, cluster.metered_minutes))) }
                            td { (amount(cluster.escrow_micros)) " " (cluster.spec.token) }
                        }
                    }
                }
            }
            @if listed.items.is_empty() { p class="muted" { "No clusters yet." } }
            @if listed.next_cursor.is_some() { p class="muted" { "The first " (CLUSTERS_LISTED_MAX) " are shown." } }
        }
    };
    Ok(page("Clusters", Face::Cloud, Some(&signed), body).into_response())
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
        section id="summary" data-live-stop[!live] {
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
        @if live {
            // Outside #summary, which the live script swaps, so a typed value stays.
            section id="extend" {
                form method="post" action={ "/cloud/clusters/" (info.id) "/extend" } {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    input type="hidden" name="from_hours" value=(info.spec.hours);
                    input name="hours" inputmode="numeric" placeholder="hours" aria-label="hours to add";
                    " " button type="submit" { "Extend" }
                }
                p class="muted" { (duration_words(minutes_left(info.spec.hours, info.metered_minutes)))
                    " of paid time left; rent so far at most "
                    (amount(rent_so_far_micros(info.rent_per_hour, info.metered_minutes))) " IOSD." }
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
        section id="ports" {
            h2 { "Ports" }
            @if info.port_links.is_empty() {
                p class="muted" { "A service's declared ports are linked here while it runs." }
            }
            ul {
                @for link in &info.port_links {
                    li { "node " (link.node_rank) ", port " (link.port)
                         @if let Some(name) = &link.name { " (" (name) ")" }
                         ": " a href=(link.path) { (link.path) } }
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
        (live_sections(&["summary", "nodes", "ports", "logs"], CLUSTER_REFRESH_MS))
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

#[derive(Debug, Default, Deserialize)]
pub struct ExtendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    hours: String,
    /// The paid hours the page showed: a form sent twice extends once.
    #[serde(default)]
    from_hours: Option<u32>,
}

/// Adds hours to a live cluster: the API quotes and holds them, or says why not.
pub async fn extend(
    State(app): State<AppState>,
    signed: Signed,
    PathId(id): PathId,
    Form(form): Form<ExtendForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let hours = form
        .hours
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid("hours", "must be a whole number"))?;
    let request = ExtendRequest {
        hours,
        from_hours: form.from_hours,
    };
    let _extended = clusters::extend_cluster(
        State(app),
        signed.caller.clone(),
        PathId(id.clone()),
        JsonBody(request),
    )
    .await?;
    Ok(see_other(&format!("/cloud/clusters/{id}")))
}

/// The deploy wizard's fields. The command is one shell line, run as `sh -c LINE`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeployForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    nodes: String,
    #[serde(default)]
    gpus_per_node: String,
    /// A model key from the market, or empty for any.
    #[serde(default)]
    gpu: String,
    /// Regions or continents, comma separated; empty for anywhere.
    #[serde(default)]
    regions: String,
    /// The lowest connectivity tier, or empty for any.
    #[serde(default)]
    tier: String,
    /// More of the search language (price, memory, reliability...).
    #[serde(default)]
    query: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    ports: String,
    /// `yes`: JupyterLab on a Ray cluster's head.
    #[serde(default)]
    jupyter: String,
    /// Fixed when the quote is shown: deploying twice from one quote makes one cluster.
    #[serde(default)]
    nonce: String,
}

impl DeployForm {
    /// The search-language query from the model, regions and tier fields and any more filters.
    fn query(&self) -> Result<String, ApiError> {
        let mut clauses = Vec::new();
        let gpu = self.gpu.trim();
        if !gpu.is_empty() {
            if !gpu.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ApiError::invalid("gpu", "must be a model from the market"));
            }
            clauses.push(format!("gpu={gpu}"));
        }
        let regions: Vec<&str> = self
            .regions
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        if !regions.iter().all(|r| crate::api::market::is_region(r)) {
            return Err(ApiError::invalid(
                "regions",
                "must be regions or continents such as eu-west or us, comma separated",
            ));
        }
        if !regions.is_empty() {
            clauses.push(format!("region in [{}]", regions.join(",")));
        }
        let tier = self.tier.trim();
        if !tier.is_empty() {
            if flotilla_scheduler::Tier::parse(tier).is_none() {
                return Err(ApiError::invalid(
                    "tier",
                    "must be low, medium, high or ultra",
                ));
            }
            clauses.push(format!("tier>={tier}"));
        }
        let more = self.query.trim();
        if !more.is_empty() {
            clauses.push(more.to_owned());
        }
        Ok(clauses.join(" "))
    }

    fn spec(&self) -> Result<ClusterSpec, ApiError> {
        let number = |field: &'static str, text: &str| -> Result<u32, ApiError> {
            text.trim()
                .parse()
                .map_err(|_| ApiError::invalid(field, "must be a whole number"))
        };
        let ports = self
            .ports
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse().map_err(|_| {
                    ApiError::invalid("ports", "must be port numbers, comma separated")
                })
            })
            .collect::<Result<Vec<u16>, ApiError>>()?;
        // A Ray cluster runs no command of its own: an empty line is no command.
        let command = if self.command.trim().is_empty() {
            Vec::new()
        } else {
            vec!["sh".into(), "-c".into(), self.command.clone()]
        };
        Ok(ClusterSpec {
            kind: self.kind.clone(),
            gpus_per_node: number("gpus_per_node", &self.gpus_per_node)?,
            query: self.query()?,
            hours: number("hours", &self.hours)?,
            token: self.token.clone(),
            ports,
            jupyter: self.jupyter == "yes",
            ..ClusterSpec::new(self.name.trim(), number("nodes", &self.nodes)?, command)
        })
    }
}

/// The wizard's fields, filled with `form`'s values; `models` are the GPU models offered now.
/// `fixed` makes them read-only (the quote step carries them to Deploy unchanged).
fn deploy_fields(form: &DeployForm, models: &[String], fixed: bool) -> Markup {
    let text = |label: &str, name: &str, value: &str, hint: &str| {
        html! {
            p {
                label for=(name) { (label) } br;
                input id=(name) name=(name) value=(value) placeholder=(hint) readonly[fixed];
            }
        }
    };
    let choice = |label: &str, name: &str, value: &str, options: &[&str]| {
        html! {
            p {
                label for=(name) { (label) } br;
                select id=(name) name=(name) disabled[fixed] {
                    @for option in options {
                        option value=(option) selected[*option == value] {
                            @if option.is_empty() { "any" } @else { (option) }
                        }
                    }
                }
                @if fixed { input type="hidden" name=(name) value=(value); }
            }
        }
    };
    // "" is "any"; the chosen model stays listed even if it is no longer offered.
    let mut gpus: Vec<&str> = vec![""];
    gpus.extend(models.iter().map(String::as_str));
    if !gpus.contains(&form.gpu.as_str()) {
        gpus.push(&form.gpu);
    }
    let mut tiers = vec![""];
    tiers.extend(flotilla_scheduler::Tier::ALL.map(flotilla_scheduler::Tier::as_str));
    html! {
        (text("Name", "name", &form.name, "train"))
        (choice("Type", "kind", &form.kind, &["batch", "service", "ray"]))
        (text("Nodes", "nodes", &form.nodes, "1"))
        (text("GPUs per node", "gpus_per_node", &form.gpus_per_node, "1"))
        (choice("GPU model (empty: any)", "gpu", &form.gpu, &gpus))
        (text("Regions (empty: anywhere)", "regions", &form.regions, "eu, us-east"))
        (choice("Connectivity tier at least (empty: any)", "tier", &form.tier, &tiers))
        (text("More filters (search language)", "query", &form.query, "price<2.5 vram>=80"))
        (text("Hours", "hours", &form.hours, "1"))
        (choice("Pay with", "token", &form.token, &["IOSD", "IO"]))
        (text("Command (run as sh -c; none for ray)", "command", &form.command, "python train.py"))
        (text("Ports (service)", "ports", &form.ports, "8888"))
        (choice("Jupyter on the head (ray)", "jupyter", &form.jupyter, &["no", "yes"]))
    }
}

/// The models offered now, for the wizard's choice.
async fn offered_models(app: &AppState) -> Result<Vec<String>, ApiError> {
    let market = app.market.view(&app.store).await?;
    let index = flotilla_scheduler::prices::price_index(&market.snapshot, &[]);
    Ok(index.into_iter().map(|price| price.model).collect())
}

pub async fn deploy_form(State(app): State<AppState>, signed: Signed) -> PageResult {
    let models = offered_models(&app).await?;
    let form = DeployForm {
        kind: "batch".into(),
        nodes: "1".into(),
        gpus_per_node: "1".into(),
        hours: "1".into(),
        token: "IOSD".into(),
        jupyter: "no".into(),
        ..DeployForm::default()
    };
    let body = html! {
        section id="wizard" {
            form method="post" action="/cloud/deploy/quote" {
                input type="hidden" name="csrf" value=(signed.csrf);
                (deploy_fields(&form, &models, false))
                button type="submit" { "Quote" }
            }
        }
    };
    Ok(page("Deploy", Face::Cloud, Some(&signed), body).into_response())
}

/// The quote for the wizard's spec, and Deploy; or why nothing matches.
pub async fn deploy_quote(
    State(app): State<AppState>,
    signed: Signed,
    Form(form): Form<DeployForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let spec = form.spec()?;
    let quote = clusters::quote_cluster(State(app), signed.caller.clone(), JsonBody(spec))
        .await?
        .0;
    let fixed = DeployForm {
        nonce: super::session::random_hex(),
        ..form
    };
    let body = html! {
        section id="quote" {
            @if quote.placeable {
                p { "Rent " (amount(quote.rent_micros)) " + fees " (amount(quote.fee_micros))
                    " = " strong id="total" { (amount(quote.total_micros)) " " (quote.token) }
                    " held in escrow for " (quote.hours) " h; unused time is returned." }
            } @else {
                p class="error" id="no-match" { "Nothing matches now: "
                    (quote.waiting_because.clone().unwrap_or_else(|| "nothing is offered".into())) }
                @if let Some(relax) = quote.explanation.as_ref().and_then(|e| e.relaxations.first()) {
                    p { "Try: " (relax.summary) }
                }
            }
        }
        section id="wizard" {
            form method="post" action="/cloud/deploy" {
                input type="hidden" name="csrf" value=(signed.csrf);
                input type="hidden" name="nonce" value=(fixed.nonce);
                (deploy_fields(&fixed, &[], true))
                @if quote.placeable { button type="submit" { "Deploy" } }
            }
            p { a href="/cloud/deploy" { "Start over" } }
        }
    };
    Ok(page("Deploy: quote", Face::Cloud, Some(&signed), body).into_response())
}

/// Deploys the quoted spec (once per quote) and goes to the new cluster's page.
pub async fn deploy(
    State(app): State<AppState>,
    signed: Signed,
    Form(form): Form<DeployForm>,
) -> PageResult {
    signed.check_csrf(&form.csrf)?;
    let spec = form.spec()?;
    let mut headers = HeaderMap::new();
    if let Ok(key) = HeaderValue::from_str(&format!("web-{}", form.nonce)) {
        headers.insert("idempotency-key", key);
    }
    let (_, created) =
        clusters::deploy_cluster(State(app), signed.caller.clone(), headers, JsonBody(spec))
            .await?;
    Ok(see_other(&format!("/cloud/clusters/{}", created.0.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kind: &str, command: &str, jupyter: &str) -> DeployForm {
        DeployForm {
            name: "train".into(),
            kind: kind.into(),
            nodes: "2".into(),
            gpus_per_node: "1".into(),
            hours: "3".into(),
            token: "IOSD".into(),
            command: command.into(),
            jupyter: jupyter.into(),
            ..DeployForm::default()
        }
    }

    #[test]
    fn time_left_and_rent_so_far_follow_the_metered_minutes() {
        assert_eq!(minutes_left(2, 30), 90);
        assert_eq!(minutes_left(1, 75), 0);
        assert_eq!(duration_words(90), "1 h 30 min");
        assert_eq!(rent_so_far_micros(1_200_000, 30), 600_000);
        assert_eq!(rent_so_far_micros(u64::MAX, u64::MAX), u64::MAX);
    }

    fn refused_field(form: &DeployForm) -> String {
        match form.query() {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn the_wizards_model_regions_and_tier_become_the_query() {
        let mut chosen = form("batch", "nvidia-smi", "no");
        assert_eq!(chosen.query().unwrap(), "", "any GPU, anywhere");
        chosen.gpu = "h100".into();
        chosen.regions = " eu-west, us ,".into();
        chosen.tier = "high".into();
        chosen.query = " price<2.5 ".into();
        let query = chosen.query().unwrap();
        assert_eq!(
            query,
            "gpu=h100 region in [eu-west,us] tier>=high price<2.5"
        );
        assert!(flotilla_scheduler::query::parse(&query).is_ok(), "{query}");
        chosen.regions = "eu; drop".into();
        assert_eq!(refused_field(&chosen), "regions");
        chosen.regions.clear();
        chosen.tier = "best".into();
        assert_eq!(refused_field(&chosen), "tier");
        chosen.tier.clear();
        chosen.gpu = "h100 count>=8".into();
        assert_eq!(refused_field(&chosen), "gpu");
    }

    #[test]
    fn the_wizard_makes_a_ray_cluster_with_jupyter_and_no_command() {
        let spec = form("ray", "  ", "yes").spec().unwrap();
        assert_eq!((spec.kind.as_str(), spec.nodes, spec.hours), ("ray", 2, 3));
        assert!(spec.command.is_empty() && spec.jupyter);
        crate::clusters::check_spec(&spec).unwrap();
    }

    #[test]
    fn the_wizard_runs_a_batch_line_through_the_shell_and_needs_one() {
        let spec = form("batch", "python train.py", "no").spec().unwrap();
        assert_eq!(spec.command, ["sh", "-c", "python train.py"]);
        assert!(!spec.jupyter);
        let empty = form("batch", "", "no").spec().unwrap();
        let error = crate::clusters::check_spec(&empty).unwrap_err();
        assert!(format!("{error:?}").contains("command"), "{error:?}");
        let jupyter = form("batch", "true", "yes").spec().unwrap();
        let error = crate::clusters::check_spec(&jupyter).unwrap_err();
        assert!(format!("{error:?}").contains("jupyter"), "{error:?}");
    }
}
