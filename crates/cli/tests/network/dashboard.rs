//! The dashboard in real headless Chromium: the public Explorer shows the API's supply (by
//! model and by country) and prices and nothing private; a renter logs in with an API key,
//! sees the market prices, deploys through the wizard, sees the cluster running with its port
//! link and logs, and terminates it, and the refund and the month's spending show; a form
//! without its
//! CSRF token and another renter's look at the cluster are refused; over the coordinator's own
//! HTTPS the login's cookie is Secure. Screenshots of each page at 1280 and 390 px go to
//! `target/test-artifacts/dashboard`.

use std::time::Duration;

use flotilla_proto::api::{ClusterInfo, CountrySupplyInfo, ModelPriceInfo, Role, SpendingInfo};

use crate::browser::Browser;
use crate::clusters::{Market, iosd_available, market, sandbox_ready, until_state};
use crate::harness::{Coordinator, Db, TEST_CERT_SPKI_SHA256, TLS_FLAGS, eventually};
use crate::on_both_databases;

/// Whether the page fits the window's width (tables scroll inside their sections).
async fn fits_width(browser: &Browser) -> bool {
    let fits = browser
        .script("return document.documentElement.scrollWidth <= window.innerWidth;")
        .await;
    fits == true
}

/// Screenshots at both widths, checking the page fits each; back at 1280 after.
async fn both_widths(browser: &Browser, name: &str) {
    for (width, height) in [(390, 844), (1280, 900)] {
        browser.resize(width, height).await;
        assert!(fits_width(browser).await, "{name} fits {width} px");
        browser.screenshot(&format!("{name}-{width}")).await;
    }
}

/// A browser and a one-worker market; none where the sandbox or the browser is missing.
async fn browser_and_market(db: Db) -> Option<(Browser, Market)> {
    if !sandbox_ready() {
        return None;
    }
    let browser = Browser::start().await?;
    Some((browser, market(db, 1).await))
}

/// Logs `key` in through the form with a plain HTTP client; the session cookie. (Keys and
/// tokens are letters, digits and `_`: nothing to escape in the form body.)
async fn session_cookie(url: &str, key: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http.get(format!("{url}/login")).send().await.unwrap();
    let set = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let csrf_cookie = set.split(';').next().unwrap().to_owned();
    let csrf = csrf_cookie.split_once('=').unwrap().1.to_owned();
    let logged_in = http
        .post(format!("{url}/login"))
        .header("cookie", &csrf_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("api_key={key}&csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logged_in.status(), 303);
    let session = logged_in.headers()["set-cookie"].to_str().unwrap();
    session.split(';').next().unwrap().to_owned()
}

/// Logs `key` in through the form and waits for the face it lands on.
async fn log_in(browser: &Browser, url: &str, key: &str, lands_on: &str) {
    browser.goto(&format!("{url}/login")).await;
    browser.type_into("#api_key", key).await;
    browser.click("main button[type=submit]").await;
    browser.wait_url(lands_on).await;
}

async fn a_renter_deploys_through_the_wizard_and_terminates_on_the_dashboard(db: Db) {
    let Some((browser, market)) = browser_and_market(db).await else {
        return;
    };
    let url = market.coordinator.url.clone();
    // The Explorer, without a login: the API's supply and prices.
    browser.goto(&format!("{url}/explorer")).await;
    let source = browser.source().await;
    let prices: Vec<ModelPriceInfo> = market
        .coordinator
        .client(None)
        .get("market/prices")
        .await
        .unwrap();
    assert!(!prices.is_empty());
    for price in &prices {
        let row = format!(
            "<td>{}</td><td>{}</td><td>{}</td>",
            price.model, price.devices, price.hired
        );
        assert!(source.contains(&row), "{row} in {source}");
    }
    let supply: Vec<CountrySupplyInfo> = market
        .coordinator
        .client(None)
        .get("market/supply")
        .await
        .unwrap();
    let offered: u64 = prices.iter().map(|p| p.devices).sum();
    assert_eq!(supply.iter().map(|c| c.total.devices).sum::<u64>(), offered);
    for country in &supply {
        assert!(country.total.suppliers >= 1, "{country:?}");
        let row = format!(
            "<td class=\"suppliers\">{}</td><td class=\"devices\">{}</td><td class=\"hired\">{}</td><td class=\"idle\">{}</td>",
            country.total.suppliers, country.total.devices, country.total.hired, country.total.idle
        );
        assert!(source.contains(&row), "{row} in {source}");
    }
    both_widths(&browser, "explorer").await;

    // Log in with the renter's key and deploy through the wizard: type, nodes, GPUs, hours,
    // token and command, then the quote, then Deploy.
    log_in(&browser, &url, &market.renter_key, "/cloud").await;
    both_widths(&browser, "cloud").await;
    let iosd_at_start = iosd_available(&market.renter).await;
    // The Marketplace: a filter that matches lists the offer; one that does not says why.
    browser
        .goto(&format!("{url}/cloud/market?q=gpu%3Dh100"))
        .await;
    for price in &prices {
        let median = browser
            .text(&format!(
                "#prices tr[data-model=\"{}\"] .median",
                price.model
            ))
            .await;
        assert_eq!(median, price.median_ask_usd, "{}", price.model);
    }
    let offers = browser.text("#offers table").await;
    assert!(offers.to_lowercase().contains("h100"), "{offers}");
    both_widths(&browser, "market").await;
    browser
        .goto(&format!("{url}/cloud/market?q=gpu%3Da100"))
        .await;
    assert_eq!(browser.text("#no-match").await, "Nothing matches.");
    assert!(browser.text("#offers").await.contains("removes"));
    browser.goto(&format!("{url}/cloud")).await;
    browser.click("#deploy").await;
    browser.type_into("#name", "web").await;
    browser.click("#kind option[value=service]").await;
    browser
        .type_into("#command", "echo hello-from-the-wizard; sleep 600")
        .await;
    browser.type_into("#ports", "8888").await;
    browser.click("#wizard button[type=submit]").await;
    let total = browser.text("#total").await;
    assert!(total.ends_with("IOSD"), "{total}");
    both_widths(&browser, "quote").await;
    browser.click("#wizard button[type=submit]").await;
    let shown = eventually(Duration::from_secs(10), || async {
        let at = browser.url().await;
        at.split("/cloud/clusters/").nth(1).map(str::to_owned)
    })
    .await
    .expect("Deploy goes to the cluster's page");
    let cluster = until_state(&market.renter, &shown, "running", 30).await;
    assert_eq!(
        cluster.spec.command[2],
        "echo hello-from-the-wizard; sleep 600"
    );
    // The page updates itself, without a reload: running, its port's link and its logs.
    browser.wait_text("#summary .state", "running").await;
    let page = eventually(Duration::from_secs(20), || async {
        let page = browser.source().await;
        page.contains("hello-from-the-wizard").then_some(page)
    })
    .await
    .expect("the node's output shows in the logs");
    assert!(
        browser.url().await.ends_with(&cluster.id),
        "never left the page"
    );
    assert!(
        page.contains(&format!("/t/{}/0/8888/", cluster.id)),
        "{page}"
    );
    // Fetched anonymously, the Explorer holds nothing private.
    let public = reqwest::get(format!("{url}/explorer"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The sealed epochs export as CSV, one line each, as the API lists them.
    let epochs: Vec<flotilla_proto::api::EpochInfo> = market
        .coordinator
        .client(None)
        .get("ledger/epochs?limit=500")
        .await
        .unwrap();
    let csv = reqwest::get(format!("{url}/explorer/epochs.csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,part,entries,rewards_paid_micros,root")
    );
    assert_eq!(lines.count(), epochs.len());
    for private in [
        market.renter_key.as_str(),
        cluster.id.as_str(),
        "hello-from-the-wizard",
        "flotilla_session",
        "Log out",
    ] {
        assert!(!public.contains(private), "the Explorer shows {private}");
    }
    // The Explorer's other pages, anonymous too: the live cluster by its public facts only.
    let mut pages = Vec::new();
    for path in ["clusters", "devices", "proposals", "verify"] {
        let answer = reqwest::get(format!("{url}/explorer/{path}"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "/explorer/{path}");
        pages.push(answer.text().await.unwrap());
    }
    assert!(pages[0].contains(&cluster.id), "{}", pages[0]);
    for page in &pages {
        for private in [
            market.renter_key.as_str(),
            "hello-from-the-wizard",
            "flotilla_session",
            "Log out",
        ] {
            assert!(!page.contains(private), "the Explorer shows {private}");
        }
    }
    both_widths(&browser, "cluster").await;

    // A form without its CSRF token changes nothing; another renter's session sees a 404.
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = format!(
        "flotilla_session={}",
        browser.cookie("flotilla_session").await
    );
    let forged = raw
        .post(format!("{url}/cloud/clusters/{}/terminate", cluster.id))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let still: ClusterInfo = market
        .renter
        .get(&format!("clusters/{}", cluster.id))
        .await
        .unwrap();
    assert_eq!(still.state, "running");
    let other_key = market
        .coordinator
        .account("other", &[flotilla_proto::api::Role::Renter])
        .await;
    let other = session_cookie(&url, &other_key).await;
    let peek = raw
        .get(format!("{url}/cloud/clusters/{}", cluster.id))
        .header("cookie", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(peek.status(), 404);

    // Extend on the page: an hour more is paid for.
    browser.type_into("#extend input[name=hours]", "1").await;
    browser.click("#extend button[type=submit]").await;
    let extended = eventually(Duration::from_secs(10), || async {
        let now: ClusterInfo = market
            .renter
            .get(&format!("clusters/{}", cluster.id))
            .await
            .ok()?;
        (now.spec.hours == cluster.spec.hours + 1).then_some(())
    })
    .await;
    assert!(extended.is_some(), "Extend adds an hour");
    browser.wait_text("#summary .state", "running").await;

    // Terminate on the page: the cluster ends and the unused escrow comes back.
    let before = iosd_available(&market.renter).await;
    browser.click("button.danger").await;
    browser.wait_text("#summary .state", "terminated").await;
    let refunded = eventually(Duration::from_secs(10), || async {
        (iosd_available(&market.renter).await > before).then_some(())
    })
    .await;
    assert!(refunded.is_some(), "the refund reaches the balance");
    // The month's spending is what left the balance: the escrow and the extension, less the
    // refund (every last refund in, so the two agree).
    let spent = eventually(Duration::from_secs(10), || async {
        let spending: SpendingInfo = market.renter.get("wallet/spending").await.ok()?;
        let iosd = spending
            .tokens
            .iter()
            .find(|t| t.token == "IOSD")?
            .spent_micros;
        (iosd == iosd_at_start - iosd_available(&market.renter).await).then_some(iosd)
    })
    .await
    .expect("the month's spending matches the balance's change");
    assert!(spent > 0, "{spent}");
    browser.goto(&format!("{url}/cloud")).await;
    assert!(browser.source().await.contains("terminated"));
    assert_eq!(
        browser
            .text("#spending strong.spent[data-token=IOSD]")
            .await,
        flotilla_ledger::format_micros(spent)
    );

    // The supplier, logged in after the renter logs out, sees the rent among its earnings,
    // each line linking to its ledger entry's inclusion proof.
    browser.click("header form button[type=submit]").await;
    browser.wait_url("/explorer").await;
    log_in(&browser, &url, &market.supplier_key, "/worker").await;
    browser.click("#earnings-link").await;
    let earnings = browser.text("#earnings tbody").await;
    assert!(earnings.contains("rent"), "{earnings}");
    both_widths(&browser, "earnings").await;
    let proof_path = browser
        .script("return document.querySelector('#earnings a.proof').getAttribute('href');")
        .await;
    let proof = reqwest::get(format!("{url}{}", proof_path.as_str().unwrap()))
        .await
        .unwrap();
    // The link names a real entry: its proof, or, until its hour's epoch is sealed, a 409
    // saying so (an unknown entry would be a 404).
    let status = proof.status();
    let answer: serde_json::Value = proof.json().await.unwrap();
    assert!(
        status.is_success() || (status == 409 && answer["error"]["code"] == "not_sealed"),
        "{status} {answer}"
    );
    // The line's ledger entry page checks the same proof; a sealed proof pasted into the
    // Explorer's form verifies there.
    let entry_path = browser
        .script("return document.querySelector('#earnings a.entry').getAttribute('href');")
        .await;
    browser
        .goto(&format!("{url}{}", entry_path.as_str().unwrap()))
        .await;
    let verdict = browser.text("#verdict").await;
    assert!(
        verdict.starts_with("verified") || verdict.contains("not sealed"),
        "{verdict}"
    );
    if status.is_success() {
        browser.goto(&format!("{url}/explorer/verify")).await;
        let pasted = serde_json::to_string(&answer.to_string()).unwrap();
        browser
            .script(&format!(
                "document.querySelector('#proof').value = {pasted};"
            ))
            .await;
        browser.click("#verify button[type=submit]").await;
        let checked = eventually(Duration::from_secs(10), || async {
            let text = browser
                .script(
                    "const v = document.querySelector('#verdict'); return v ? v.textContent : '';",
                )
                .await;
            text.as_str().filter(|t| !t.is_empty()).map(str::to_owned)
        })
        .await
        .expect("the form answers");
        assert!(checked.starts_with("Verified: entry"), "{checked}");
    }
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.quit().await;
}
on_both_databases!(a_renter_deploys_through_the_wizard_and_terminates_on_the_dashboard);

/// The supplier's face: the device is listed; rename and pause work through their forms; the
/// device's page charts its telemetry; Add device shows a command that enrolls a machine.
async fn a_supplier_renames_pauses_and_adds_a_device_on_the_dashboard(db: Db) {
    let Some((browser, market)) = browser_and_market(db).await else {
        return;
    };
    let url = market.coordinator.url.clone();
    let supplier_key = market
        .coordinator
        .account("sup2", &[flotilla_proto::api::Role::Supplier])
        .await;
    let token = market.coordinator.token(&supplier_key).await;
    let dir = tempfile::tempdir().unwrap();
    let _first = market
        .coordinator
        .worker(dir.path(), Some(&token), "H100x1");
    let supplier = market.coordinator.client(Some(&supplier_key));
    let device = eventually(Duration::from_secs(20), || async {
        let page: flotilla_proto::api::Page<flotilla_proto::api::Device> =
            supplier.get("devices").await.ok()?;
        page.items
            .into_iter()
            .find(|d| d.state == flotilla_proto::device::DeviceState::Idle)
    })
    .await
    .expect("the device proves itself and goes idle");

    log_in(&browser, &url, &supplier_key, "/worker").await;
    assert!(browser.source().await.contains(&device.name));
    both_widths(&browser, "worker").await;

    // Rename on the device's page; its charts are there.
    browser
        .goto(&format!("{url}/worker/devices/{}", device.id))
        .await;
    browser
        .script("document.querySelector('input[name=name]').value = '';")
        .await;
    browser.type_into("input[name=name]", "rack-7").await;
    browser.click("#summary button[type=submit]").await;
    let renamed = eventually(Duration::from_secs(10), || async {
        let detail: flotilla_proto::api::DeviceDetail =
            supplier.get(&format!("devices/{}", device.id)).await.ok()?;
        (detail.device.name == "rack-7").then_some(())
    })
    .await;
    assert!(renamed.is_some(), "the device is renamed");
    // Once its telemetry history has points, the page charts them.
    let recorded = eventually(Duration::from_secs(10), || async {
        let detail: flotilla_proto::api::DeviceDetail =
            supplier.get(&format!("devices/{}", device.id)).await.ok()?;
        (!detail.history.is_empty()).then_some(())
    })
    .await;
    assert!(recorded.is_some(), "telemetry is recorded");
    browser
        .goto(&format!("{url}/worker/devices/{}", device.id))
        .await;
    let charted = browser.source().await;
    assert!(
        charted.contains("rack-7") && charted.contains("<svg"),
        "{charted}"
    );
    both_widths(&browser, "device").await;
    // Its proof of compute is listed, linking to the public transcript; its work history too.
    assert!(browser.text("#proofs tbody").await.contains("passed"));
    let transcript = browser
        .script("return document.querySelector('#proofs a.transcript').getAttribute('href');")
        .await;
    let fetched = reqwest::get(format!("{url}{}", transcript.as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(browser.text("#work h2").await, "Work history");

    // Staking: IO from the faucet, staked through the form.
    let _: serde_json::Value = supplier
        .post_idempotent(
            "wallet/faucet",
            &flotilla_proto::api::FaucetRequest {
                token: "IO".into(),
                amount_micros: 10_000_000,
            },
            "stake-io",
        )
        .await
        .unwrap();
    browser.goto(&format!("{url}/worker/staking")).await;
    browser
        .type_into("#stake-form input[name=amount]", "2.5")
        .await;
    browser.click("#stake-form button[type=submit]").await;
    browser.wait_text("#staked", "2.5 IO").await;
    both_widths(&browser, "staking").await;

    // Pause from the list.
    browser.goto(&format!("{url}/worker")).await;
    browser.click("#devices button[type=submit]").await;
    browser.wait_text("#devices .state", "paused").await;

    // Add device: the command shown enrolls another machine.
    browser.click("#add button[type=submit]").await;
    let command = browser.text("#command").await;
    let args: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    assert_eq!(&args[..2], ["flotilla", "worker"], "{command}");
    let data = tempfile::tempdir().unwrap();
    let data_at = args.iter().position(|a| a == "--data").unwrap();
    let mut shown: Vec<String> = args[1..data_at + 1].to_vec();
    shown.push(data.path().display().to_string());
    let child = std::process::Command::new(crate::harness::BIN)
        .args(&shown)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _second = crate::harness::Proc { child };
    let enrolled = eventually(Duration::from_secs(30), || async {
        let page: flotilla_proto::api::Page<flotilla_proto::api::Worker> =
            supplier.get("workers").await.ok()?;
        (page.items.len() == 2).then_some(())
    })
    .await;
    assert!(enrolled.is_some(), "the shown command enrolls a worker");
    // Remove on the device's page: the device leaves the list.
    browser
        .goto(&format!("{url}/worker/devices/{}", device.id))
        .await;
    browser.click("#remove button[type=submit]").await;
    browser.wait_url("/worker").await;
    let listed: flotilla_proto::api::Page<flotilla_proto::api::Device> =
        supplier.get("devices").await.unwrap();
    assert!(listed.items.iter().all(|d| d.id != device.id), "removed");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.quit().await;
}
on_both_databases!(a_supplier_renames_pauses_and_adds_a_device_on_the_dashboard);

/// Over the coordinator's own HTTPS, a real browser logs in and out: the session cookie is
/// Secure (so it would never travel over plain HTTP) and HttpOnly, and the pages load. The
/// browser trusts the test certificate by its key alone, nothing else.
async fn a_renter_logs_in_over_https_in_a_real_browser(db: Db) {
    let trust = format!("--ignore-certificate-errors-spki-list={TEST_CERT_SPKI_SHA256}");
    let Some(browser) = Browser::start_with(&[&trust]).await else {
        return;
    };
    let coordinator = Coordinator::start(db, &TLS_FLAGS).await;
    assert!(coordinator.url.starts_with("https://"));
    let renter = coordinator.account("ren", &[Role::Renter]).await;
    log_in(&browser, &coordinator.url, &renter, "/cloud").await;
    let session = browser.cookie_object("flotilla_session").await;
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert!(browser.url().await.starts_with("https://"));
    assert!(browser.source().await.contains("ren"));
    assert!(browser.console_errors().await.is_empty());
    browser.screenshot("cloud-over-https").await;
    browser.quit().await;
}

on_both_databases!(a_renter_logs_in_over_https_in_a_real_browser);
