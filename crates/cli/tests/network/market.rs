//! The market over real binaries: suppliers price devices and place workers, renters search
//! offers with the query language, get "why no match?" when nothing fits, and read prices.

use std::process::Command;
use std::time::Duration;

use flotilla_proto::api::{
    Device, ModelPriceInfo, OffersResponse, Page, RequestInfo, RequestSpec, Role,
    SetLocationRequest, SetPriceRequest, Worker, WorkerDetail,
};
use flotilla_proto::device::DeviceState;

use crate::harness::{BIN, Coordinator, Db, eventually};
use crate::on_both_databases;

/// Runs the CLI against the coordinator; (exit success, stdout, stderr).
fn cli(coordinator: &Coordinator, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .args(["--url", &coordinator.url])
        .env_remove("FLOTILLA_API_KEY")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn offers_are_searched_explained_and_priced(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let owner = coordinator.client(Some(&supplier));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut workers = Vec::new();
    for (dir, gpus) in dirs.iter().zip(["RTX 4090x2", "H100x1"]) {
        let token = coordinator.token(&supplier).await;
        workers.push(coordinator.worker(dir.path(), Some(&token), gpus));
    }
    let devices = eventually(Duration::from_secs(30), || async {
        let page: Page<Device> = owner.get("devices").await.ok()?;
        (page.items.len() == 3 && page.items.iter().all(|d| d.state == DeviceState::Idle))
            .then_some(page.items)
    })
    .await
    .expect("three devices prove and go idle");

    // Nothing is offered until the supplier prices it.
    let empty: OffersResponse = coordinator.client(None).get("offers").await.unwrap();
    assert!(empty.offers.is_empty());

    let page: Page<Worker> = owner.get("workers").await.unwrap();
    for worker in &page.items {
        let region = if worker.device_count == 2 {
            "eu-west"
        } else {
            "us-east"
        };
        let request = SetLocationRequest {
            region: region.into(),
            country: "de".into(),
            tier: "high".into(),
        };
        let detail: WorkerDetail = owner
            .post(&format!("workers/{}/location", worker.id), &request)
            .await
            .unwrap();
        assert_eq!(detail.worker.region, region);
    }
    for device in &devices {
        let price = if device.model.contains("4090") {
            410_000
        } else {
            2_000_000
        };
        let priced: Device = owner
            .post(
                &format!("devices/{}/price", device.id),
                &SetPriceRequest {
                    price_per_hour: Some(price),
                },
            )
            .await
            .unwrap();
        assert_eq!(priced.price_per_hour, Some(price));
    }

    // The query language, from the CLI, without any key: the market is public.
    let (ok, table, _) = cli(
        &coordinator,
        &[
            "offers",
            "gpu=rtx4090 count>=2 price<0.50",
            "--sort",
            "price",
        ],
    );
    assert!(ok);
    assert!(
        table.contains("rtx4090 (simulated)") && table.contains("0.41"),
        "{table}"
    );
    let (ok, json, _) = cli(&coordinator, &["offers", "vram>=80", "-o", "json"]);
    assert!(ok);
    let found: OffersResponse = serde_json::from_str(&json).unwrap();
    assert_eq!(found.offers.len(), 1);
    assert_eq!(
        (
            found.offers[0].model.as_str(),
            found.offers[0].region.as_str()
        ),
        ("h100", "us-east")
    );

    // Why no match: region removes the 4090s, and dropping it is the cheapest relaxation.
    let (ok, why, _) = cli(&coordinator, &["offers", "gpu=rtx4090 region=us"]);
    assert!(ok, "no match is an answer, not an error");
    assert!(why.contains("region in [us] removed 2 offers"), "{why}");
    assert!(
        why.contains("cheapest relaxation: drop region in [us]: 2 offers from 0.41/h"),
        "{why}"
    );

    // A malformed query names the column and what was expected; nothing else happens.
    let (ok, _, error) = cli(&coordinator, &["offers", "gpu=rtx4090 price<"]);
    assert!(!ok);
    assert!(
        error.contains("at column 19: expected a price in USD, found the end of the query"),
        "{error}"
    );
    let (ok, _, error) = cli(&coordinator, &["offers", "--sort", "cheapness"]);
    assert!(!ok && error.contains("sort"), "{error}");

    // Prices: the median ask per model.
    let prices: Vec<ModelPriceInfo> = coordinator.client(None).get("market/prices").await.unwrap();
    let rtx = prices.iter().find(|p| p.model == "rtx4090").unwrap();
    assert_eq!(
        (
            rtx.devices,
            rtx.median_ask_per_hour,
            rtx.median_ask_usd.as_str()
        ),
        (2, 410_000, "0.41")
    );

    // Bad input: out-of-range prices and malformed locations, with the field named.
    let refused = owner
        .post::<_, Device>(
            &format!("devices/{}/price", devices[0].id),
            &SetPriceRequest {
                price_per_hour: Some(0),
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("price_per_hour"), "{refused}");
    let refused = owner
        .post::<_, WorkerDetail>(
            &format!("workers/{}/location", page.items[0].id),
            &SetLocationRequest {
                region: "EU West".into(),
                country: "de".into(),
                tier: "high".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("region"), "{refused}");
    // Another supplier cannot price these devices.
    let other = coordinator.account("supplier-b", &[Role::Supplier]).await;
    let refused = coordinator
        .client(Some(&other))
        .post::<_, Device>(
            &format!("devices/{}/price", devices[0].id),
            &SetPriceRequest {
                price_per_hour: Some(1),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(404));
    // Withdrawn devices leave the market.
    for device in &devices {
        let _: Device = owner
            .post(
                &format!("devices/{}/price", device.id),
                &SetPriceRequest {
                    price_per_hour: None,
                },
            )
            .await
            .unwrap();
    }
    let gone: OffersResponse = coordinator.client(None).get("offers").await.unwrap();
    assert!(gone.offers.is_empty());
}
on_both_databases!(offers_are_searched_explained_and_priced);

/// A request for one node of `gpus_per_node` GPUs matching `query`, normal priority.
pub(crate) fn one_node(gpus_per_node: u32, query: &str) -> RequestSpec {
    RequestSpec {
        nodes: 1,
        gpus_per_node,
        query: query.into(),
        budget_per_hour: None,
        priority: None,
        target_price_per_hour: None,
        deadline_s: None,
        colocation: None,
        renter_region: None,
        hours: None,
        containers: false,
        io_price_micros: None,
    }
}

/// Waits until the request is placed, and returns it.
pub(crate) async fn until_placed(
    client: &flotilla_client::Client,
    request_id: &str,
) -> RequestInfo {
    eventually(Duration::from_secs(10), || async {
        let info: RequestInfo = client.get(&format!("requests/{request_id}")).await.ok()?;
        (info.state == "placed").then_some(info)
    })
    .await
    .unwrap_or_else(|| panic!("request {request_id} is placed"))
}

async fn requests_are_placed_whole_wait_with_a_reason_and_cancel(db: Db) {
    let coordinator = Coordinator::start(
        db,
        &["--allow-simulated-devices", "--schedule-interval-ms", "100"],
    )
    .await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let owner = coordinator.client(Some(&supplier));
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let _worker = coordinator.worker(dir.path(), Some(&token), "RTX 4090x2");
    price_idle_devices(&coordinator, &supplier, 2, 410_000).await;
    let renter = coordinator.account("renter-a", &[Role::Renter]).await;
    let client = coordinator.client(Some(&renter));
    let spec = one_node(2, "gpu=rtx4090 price<0.50");
    let first: RequestInfo = client.post("requests", &spec).await.unwrap();
    let placed = until_placed(&client, &first.id).await;
    assert_eq!((placed.attempt, placed.nodes.len()), (1, 1));
    assert_eq!(
        placed.nodes[0].device_ids.len(),
        2,
        "both GPUs on the one worker"
    );
    assert_eq!(placed.nodes[0].price_per_hour, 820_000);
    let hired: Page<Device> = owner.get("devices").await.unwrap();
    assert!(hired.items.iter().all(|d| d.state == DeviceState::Hired));

    // The same again cannot fit: it waits, says why, and suggests nothing (all are taken).
    let second: RequestInfo = client.post("requests", &spec).await.unwrap();
    let waiting = eventually(Duration::from_secs(10), || async {
        let info: RequestInfo = client.get(&format!("requests/{}", second.id)).await.ok()?;
        info.waiting_because.is_some().then_some(info)
    })
    .await
    .expect("the second request waits with a reason");
    assert_eq!(waiting.state, "queued");
    assert_eq!(
        waiting.waiting_because.as_deref(),
        Some("no free offer matches its constraints")
    );
    assert_eq!(waiting.explanation.unwrap().offers_matching, 0);

    // The list (a page read in a few queries) says what each request's own answer says.
    let listed: Page<RequestInfo> = client.get("requests").await.unwrap();
    assert_eq!(listed.items.len(), 2);
    for item in &listed.items {
        let one: RequestInfo = client.get(&format!("requests/{}", item.id)).await.unwrap();
        assert_eq!(
            (&item.state, &item.nodes),
            (&one.state, &one.nodes),
            "{}",
            item.id
        );
    }
    assert!(
        listed
            .items
            .iter()
            .any(|i| i.nodes.len() == 1 && i.nodes[0].device_ids.len() == 2)
    );

    // Bad requests name the field; other renters cannot see or cancel this one.
    for (bad, field) in [
        (
            RequestSpec {
                gpus_per_node: 0,
                ..spec.clone()
            },
            "gpus_per_node",
        ),
        (
            RequestSpec {
                query: "gpu=".into(),
                ..spec.clone()
            },
            "query",
        ),
        (
            RequestSpec {
                priority: Some("deferrable".into()),
                ..spec.clone()
            },
            "priority",
        ),
    ] {
        let error = client
            .post::<_, RequestInfo>("requests", &bad)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(field), "{error}");
    }
    let stranger = coordinator.account("renter-b", &[Role::Renter]).await;
    let hidden = coordinator
        .client(Some(&stranger))
        .post_empty::<RequestInfo>(&format!("requests/{}/cancel", first.id))
        .await
        .unwrap_err();
    assert_eq!(hidden.status(), Some(404));
    let forbidden = owner
        .post::<_, RequestInfo>("requests", &spec)
        .await
        .unwrap_err();
    assert_eq!(
        forbidden.status(),
        Some(403),
        "suppliers do not rent without the renter role"
    );

    // Cancelling the first gives its GPUs back, and the waiting one takes them.
    let cancelled: RequestInfo = client
        .post_empty(&format!("requests/{}/cancel", first.id))
        .await
        .unwrap();
    assert_eq!(cancelled.state, "cancelled");
    assert!(cancelled.nodes.is_empty(), "nothing held any more");
    until_placed(&client, &second.id).await;
    let again = client
        .post_empty::<RequestInfo>(&format!("requests/{}/cancel", first.id))
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(409));

    // Renters rate what ran; the worker's record and rating show in its offers.
    let rate = |id: String, stars: u8| {
        let client = client.clone();
        async move {
            client
                .post::<_, RequestInfo>(
                    &format!("requests/{id}/feedback"),
                    &flotilla_proto::api::FeedbackRequest { stars },
                )
                .await
        }
    };
    assert_eq!(
        rate(first.id.clone(), 4).await.unwrap().feedback_stars,
        Some(4)
    );
    let error = rate(first.id.clone(), 6).await.unwrap_err();
    assert!(error.to_string().contains("stars"), "{error}");
    let _: RequestInfo = client
        .post_empty(&format!("requests/{}/cancel", second.id))
        .await
        .unwrap();
    let found: OffersResponse = coordinator.client(None).get("offers").await.unwrap();
    assert_eq!(found.offers.len(), 1);
    assert_eq!(
        (found.offers[0].completed, found.offers[0].feedback_milli),
        (2, Some(4_000))
    );
}
on_both_databases!(requests_are_placed_whole_wait_with_a_reason_and_cancel);

/// Waits for `count` idle devices of the supplier's and prices the unpriced ones at
/// `price_per_hour`.
pub(crate) async fn price_idle_devices(
    coordinator: &Coordinator,
    supplier: &str,
    count: usize,
    price_per_hour: u64,
) {
    let owner = coordinator.client(Some(supplier));
    let devices = eventually(Duration::from_secs(30), || async {
        let page: Page<Device> = owner.get("devices").await.ok()?;
        let idle: Vec<Device> = page
            .items
            .into_iter()
            .filter(|d| d.state == DeviceState::Idle)
            .collect();
        (idle.len() >= count).then_some(idle)
    })
    .await
    .expect("devices prove and go idle");
    for device in devices.iter().filter(|d| d.price_per_hour.is_none()) {
        let _: Device = owner
            .post(
                &format!("devices/{}/price", device.id),
                &SetPriceRequest {
                    price_per_hour: Some(price_per_hour),
                },
            )
            .await
            .unwrap();
    }
}

async fn a_placed_request_moves_off_a_failed_worker(db: Db) {
    let coordinator = Coordinator::start(
        db,
        &["--allow-simulated-devices", "--schedule-interval-ms", "100"],
    )
    .await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let token = coordinator.token(&supplier).await;
    let mut first = coordinator.worker(first_dir.path(), Some(&token), "RTX 4090x1");
    price_idle_devices(&coordinator, &supplier, 1, 300_000).await;
    let renter = coordinator.account("renter-a", &[Role::Renter]).await;
    let client = coordinator.client(Some(&renter));
    let spec = one_node(1, "gpu=rtx4090");
    let request: RequestInfo = client.post("requests", &spec).await.unwrap();
    let placed = until_placed(&client, &request.id).await;
    let lost_worker = placed.nodes[0].worker_id.clone();
    let token = coordinator.token(&supplier).await;
    let _second = coordinator.worker(second_dir.path(), Some(&token), "RTX 4090x1");
    price_idle_devices(&coordinator, &supplier, 1, 300_000).await;

    first.kill();
    let moved = eventually(Duration::from_secs(15), || async {
        let info: RequestInfo = client.get(&format!("requests/{}", request.id)).await.ok()?;
        (info.attempt == 2).then_some(info)
    })
    .await
    .expect("the request moves to the other worker as attempt 2");
    assert_eq!(moved.state, "placed");
    assert_eq!(moved.nodes.len(), 1);
    assert_ne!(moved.nodes[0].worker_id, lost_worker);

    // The failed worker comes back: its device is free again, not hired by nobody.
    let lost_device = placed.nodes[0].device_ids[0].clone();
    let _back = coordinator.worker(first_dir.path(), None, "RTX 4090x1");
    let owner = coordinator.client(Some(&supplier));
    eventually(Duration::from_secs(15), || async {
        let device: flotilla_proto::api::DeviceDetail =
            owner.get(&format!("devices/{lost_device}")).await.ok()?;
        (device.device.state == DeviceState::Idle).then_some(())
    })
    .await
    .expect("the returning device is idle");
}
on_both_databases!(a_placed_request_moves_off_a_failed_worker);
