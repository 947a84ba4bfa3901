//! The dashboard: server-rendered pages (maud) on the coordinator's address, with one small
//! script (pages that keep themselves current, [`live_sections`]) and nothing to build. Three
//! faces: `/explorer` (public, no login: `explorer`, `fleet`, `ledger`), `/cloud` (renters:
//! `cloud`, `market`) and `/worker` (suppliers: `worker`, `earnings`).
//!
//! Pages read through the same handlers as the API, so a page shows what the API answers and
//! every ownership check is the API's. A login opens a session that stands for the API key it
//! was opened with ([`session`]): its cookie is HttpOnly and SameSite=Strict (and Secure when
//! the page came over TLS, ours or a proxy's in front), it ends when the key is revoked, and
//! every form carries the session's CSRF token, checked before anything changes.

mod chart;
mod cloud;
mod earnings;
mod explorer;
mod fleet;
mod ledger;
mod market;
mod session;
mod worker;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::AppState;
use crate::error::ApiError;

pub use session::SESSION_TTL_MS;

/// The dashboard's routes, merged beside the API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/explorer") }))
        .route("/explorer", get(explorer::home))
        .route("/explorer/epochs.csv", get(explorer::epochs_csv))
        .route("/explorer/clusters", get(fleet::clusters))
        .route("/explorer/devices", get(fleet::devices))
        .route("/explorer/proposals", get(ledger::proposals))
        .route(
            "/explorer/verify",
            get(ledger::verify_page).post(ledger::verify),
        )
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/cloud", get(cloud::home))
        .route("/cloud/market", get(market::market))
        .route("/cloud/deploy", get(cloud::deploy_form).post(cloud::deploy))
        .route("/cloud/deploy/quote", post(cloud::deploy_quote))
        .route("/cloud/clusters", get(cloud::clusters_list))
        .route("/cloud/clusters/{id}", get(cloud::cluster))
        .route("/cloud/clusters/{id}/extend", post(cloud::extend))
        .route("/cloud/clusters/{id}/terminate", post(cloud::terminate))
        .route("/worker", get(worker::home))
        .route("/worker/earnings", get(earnings::earnings))
        .route("/worker/entries/{id}", get(earnings::entry))
        .route(
            "/worker/staking",
            get(earnings::staking).post(earnings::change_stake),
        )
        .route("/worker/devices/{id}", get(worker::device))
        .route("/worker/devices/{id}/remove", post(worker::remove))
        .route("/worker/devices/{id}/pause", post(worker::pause))
        .route("/worker/devices/{id}/resume", post(worker::resume))
        .route("/worker/devices/{id}/rename", post(worker::rename))
        .route("/worker/enrollment-tokens", post(worker::enrollment_token))
}

/// Which face a page belongs to, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Face {
    Explorer,
    Cloud,
    Worker,
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;padding:.75rem 1rem;background:#10243e;color:#fff}
header a{color:#cfe3ff;text-decoration:none}header a.here{color:#fff;font-weight:600}
header .who{margin-left:auto}header form{display:inline}
main{max-width:72rem;margin:0 auto;padding:1rem}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:1rem;margin-bottom:1rem;overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eef0f3;white-space:nowrap}
pre{background:#0d1117;color:#e6edf3;padding:.75rem;border-radius:6px;overflow-x:auto;max-height:24rem}
.muted{color:#5b6470}.error{color:#a40e26}
button{background:#10243e;color:#fff;border:0;border-radius:4px;padding:.45rem .9rem;cursor:pointer}
button.danger{background:#a40e26}
input,select{padding:.4rem;border:1px solid #c5cbd3;border-radius:4px;width:min(28rem,100%)}
@media (max-width:600px){main{padding:.5rem}th,td{padding:.3rem}}
";

/// A whole page: the face's navigation, who is signed in (with a logout form), the body.
fn page(
    title: &str,
    face: Face,
    signed_in: Option<&session::Signed>,
    body: Markup,
) -> Html<String> {
    let here = |this: Face| if this == face { "here" } else { "" };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Flotilla" }
                // No favicon request (and no console error for its 404).
                link rel="icon" href="data:,";
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "Flotilla" }
                    a class=(here(Face::Explorer)) href="/explorer" { "Explorer" }
                    a class=(here(Face::Cloud)) href="/cloud" { "Cloud" }
                    a class=(here(Face::Worker)) href="/worker" { "Worker" }
                    span class="who" {
                        @if let Some(signed) = signed_in {
                            (signed.caller.auth.account.name) " "
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(signed.csrf);
                                button type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/login" { "Log in" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string())
}

/// An API refusal as a page: a missing login goes to the login form, the rest show their
/// status and message (a stranger's cluster is a 404 here too).
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if matches!(self.0, ApiError::Unauthenticated) {
            return Redirect::to("/login").into_response();
        }
        if let ApiError::Internal(detail) = &self.0 {
            tracing::error!(error = %detail, "internal error answering a page");
        }
        let status = self.0.status();
        let body = html! { p class="error" { (self.0.to_string()) } };
        let mut response = page(
            status.canonical_reason().unwrap_or("Error"),
            Face::Explorer,
            None,
            body,
        )
        .into_response();
        *response.status_mut() = status;
        response
    }
}

pub type PageResult = Result<Response, PageError>;

/// A POST that worked: back to `to`, as a GET.
fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The script that keeps a page's sections current without a reload: every `interval_ms`
/// while the tab is visible it fetches the page again and swaps in the sections named (never
/// one the user is typing in), never two requests at once, backing off to
/// [`LIVE_BACKOFF_MS_MAX`] on errors. It stops for good once a section carries
/// `data-live-stop` (a cluster that ended). A page left open all day costs one request per
/// interval while visible and none while hidden.
fn live_sections(section_ids: &[&str], interval_ms: u32) -> Markup {
    let ids = serde_json::to_string(section_ids).expect("strings serialize");
    let script = format!(
        r##"(() => {{
  const ids = {ids}, delayMin = {interval_ms}, delayMax = {LIVE_BACKOFF_MS_MAX};
  let delay = delayMin;
  async function refresh() {{
    if (!document.hidden) {{
      try {{
        const response = await fetch(location.href, {{credentials: "same-origin"}});
        if (!response.ok) throw new Error(String(response.status));
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const id of ids) {{
          const now = document.getElementById(id), next = fresh.getElementById(id);
          if (now && next && !now.contains(document.activeElement)) now.replaceWith(next);
        }}
        delay = delayMin;
      }} catch (error) {{
        delay = Math.min(delay * 2, delayMax);
      }}
    }}
    if (document.querySelector("[data-live-stop]")) return;
    setTimeout(refresh, delay);
  }}
  if (!document.querySelector("[data-live-stop]")) setTimeout(refresh, delay);
}})();"##
    );
    html! { script { (maud::PreEscaped(script)) } }
}

/// Longest wait between a live page's refreshes after errors.
const LIVE_BACKOFF_MS_MAX: u32 = 60_000;

/// Base units (signed or not) as a decimal amount of tokens; past `i64::MAX`, that.
fn amount(micros: impl TryInto<i64>) -> String {
    flotilla_ledger::format_micros(micros.try_into().unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_page_refreshes_the_sections_it_names_at_its_interval() {
        let script = live_sections(&["summary", "logs"], 2_000).into_string();
        assert!(script.starts_with("<script>"), "{script}");
        assert!(
            script
                .contains(r#"const ids = ["summary","logs"], delayMin = 2000, delayMax = 60000;"#),
            "{script}"
        );
        assert!(script.contains("data-live-stop"), "it can stop");
        assert!(script.contains("document.hidden"), "it rests while hidden");
    }
}
