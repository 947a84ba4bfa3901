//! Workers enroll, their devices appear, a killed worker goes down and comes back.

use std::time::Duration;

use flotilla_proto::api::{Device, Page, Role, Worker};
use flotilla_proto::device::DeviceState;

use crate::harness::{Coordinator, Db, HEARTBEAT_GRACE_MS, eventually};
use crate::on_both_databases;

async fn devices(coordinator: &Coordinator, key: &str) -> Vec<Device> {
    let page: Page<Device> = coordinator
        .client(Some(key))
        .get("devices?limit=500")
        .await
        .unwrap();
    page.items
}

async fn three_workers_enroll_and_a_killed_one_goes_down_and_comes_back(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers = Vec::new();
    for dir in &dirs {
        let token = coordinator.token(&supplier).await;
        workers.push(coordinator.worker(dir.path(), Some(&token), "RTX 4090x2"));
    }
    let all_idle = eventually(Duration::from_secs(20), || async {
        let devices = devices(&coordinator, &supplier).await;
        (devices.len() == 6 && devices.iter().all(|d| d.state == DeviceState::Idle))
            .then_some(devices)
    })
    .await
    .expect("six simulated devices from three workers become idle");
    assert!(
        all_idle
            .iter()
            .all(|d| d.simulated && d.model == "NVIDIA GeForce RTX 4090")
    );
    let workers_page: Page<Worker> = coordinator
        .client(Some(&supplier))
        .get("workers")
        .await
        .unwrap();
    assert_eq!(workers_page.items.len(), 3);
    assert!(
        workers_page
            .items
            .iter()
            .all(|w| w.connected && w.device_count == 2)
    );
    let keys: Vec<_> = workers_page
        .items
        .iter()
        .map(|w| w.public_key.clone())
        .collect();
    assert_eq!(
        keys.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "each worker has its own key"
    );

    // SIGKILL the first worker: its devices go down within the grace period (plus the sweep).
    let victim_id = std::fs::read_to_string(dirs[0].path().join("enrollment.json")).unwrap();
    let victim_id: serde_json::Value = serde_json::from_str(&victim_id).unwrap();
    let victim_id = victim_id["worker_id"].as_str().unwrap().to_owned();
    workers[0].kill();
    let killed_at = std::time::Instant::now();
    let down = eventually(Duration::from_millis(HEARTBEAT_GRACE_MS * 3), || async {
        let devices = devices(&coordinator, &supplier).await;
        let (theirs, others): (Vec<_>, Vec<_>) =
            devices.into_iter().partition(|d| d.worker_id == victim_id);
        (theirs.iter().all(|d| d.state == DeviceState::Down)
            && others.iter().all(|d| d.state == DeviceState::Idle))
        .then_some(theirs.len())
    })
    .await
    .expect("the killed worker's devices go down and no other device does");
    assert_eq!(down, 2);
    assert!(
        killed_at.elapsed() >= Duration::from_millis(HEARTBEAT_GRACE_MS / 2),
        "not marked down before the grace period"
    );

    // Restart it without a token: same key, same worker, devices back to idle.
    workers[0] = coordinator.worker(dirs[0].path(), None, "RTX 4090x2");
    eventually(Duration::from_secs(15), || async {
        let devices = devices(&coordinator, &supplier).await;
        (devices.len() == 6 && devices.iter().all(|d| d.state == DeviceState::Idle)).then_some(())
    })
    .await
    .expect("the restarted worker's devices return to idle");
}
on_both_databases!(three_workers_enroll_and_a_killed_one_goes_down_and_comes_back);

async fn telemetry_history_is_recorded_and_bounded(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let _worker = coordinator.worker(dir.path(), Some(&token), "H100");
    let client = coordinator.client(Some(&supplier));
    let detail = eventually(Duration::from_secs(20), || async {
        let page: Page<Device> = client.get("devices").await.ok()?;
        let device = page.items.first()?.clone();
        let detail: flotilla_proto::api::DeviceDetail = client
            .get(&format!("devices/{}?history_points=3", device.id))
            .await
            .ok()?;
        (detail.history.len() == 3 && detail.device.telemetry.is_some()).then_some(detail)
    })
    .await
    .expect("one-second buckets of history appear");
    assert!(
        detail
            .history
            .windows(2)
            .all(|w| w[0].bucket_start < w[1].bucket_start),
        "oldest first"
    );
    assert!(
        detail
            .history
            .iter()
            .all(|p| p.samples >= 1 && p.utilization_pct_avg <= 100 && p.bucket_s == 1)
    );
    let error = client
        .get::<serde_json::Value>(&format!(
            "devices/{}?history_points=100000",
            detail.device.id
        ))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(422));
}
on_both_databases!(telemetry_history_is_recorded_and_bounded);

async fn workers_reconnect_by_themselves_after_the_coordinator_restarts(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let _worker = coordinator.worker(dir.path(), Some(&token), "A100-80GBx2");
    eventually(Duration::from_secs(20), || async {
        let devices = devices(&coordinator, &supplier).await;
        (devices.len() == 2 && devices.iter().all(|d| d.state == DeviceState::Idle)).then_some(())
    })
    .await
    .expect("devices up before the restart");

    let coordinator = coordinator.restart(&["--allow-simulated-devices"]);
    let client = coordinator.client(Some(&supplier));
    // Right after the restart nothing is marked down: the coordinator was the one away.
    let devices_now = devices(&coordinator, &supplier).await;
    assert!(
        devices_now.iter().all(|d| d.state == DeviceState::Idle),
        "{devices_now:?}"
    );
    eventually(Duration::from_secs(20), || async {
        let page: Page<Worker> = client.get("workers").await.ok()?;
        page.items
            .first()
            .is_some_and(|w| w.connected)
            .then_some(())
    })
    .await
    .expect("the worker reconnects with its backoff");
    // And stays up well past the grace period.
    tokio::time::sleep(Duration::from_millis(HEARTBEAT_GRACE_MS * 2)).await;
    let devices = devices(&coordinator, &supplier).await;
    assert!(
        devices.len() == 2 && devices.iter().all(|d| d.state == DeviceState::Idle),
        "{devices:?}"
    );
}
on_both_databases!(workers_reconnect_by_themselves_after_the_coordinator_restarts);

async fn a_restarted_worker_keeps_its_pause_and_unreported_devices_go_down(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let client = coordinator.client(Some(&supplier));
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let mut worker = coordinator.worker(dir.path(), Some(&token), "RTX 4090x2");
    let before = eventually(Duration::from_secs(20), || async {
        let devices = devices(&coordinator, &supplier).await;
        (devices.len() == 2 && devices.iter().all(|d| d.state == DeviceState::Idle))
            .then_some(devices)
    })
    .await
    .expect("two idle devices");
    let worker_id = before[0].worker_id.clone();
    let _: serde_json::Value = client
        .post_empty(&format!("workers/{worker_id}/pause"))
        .await
        .unwrap();

    // The machine comes back with one GPU fewer.
    worker.kill();
    let _worker = coordinator.worker(dir.path(), None, "RTX 4090x1");
    let after = eventually(Duration::from_secs(20), || async {
        let devices = devices(&coordinator, &supplier).await;
        let mut states: Vec<_> = devices.iter().map(|d| d.state).collect();
        states.sort_by_key(|s| s.as_str());
        (states == [DeviceState::Down, DeviceState::Paused]).then_some(devices)
    })
    .await
    .expect("the reported device stays paused; the missing one goes down");
    let paused = after
        .iter()
        .find(|d| d.state == DeviceState::Paused)
        .unwrap();
    let detail: flotilla_proto::api::WorkerDetail =
        client.get(&format!("workers/{worker_id}")).await.unwrap();
    assert!(detail.worker.connected);
    assert_eq!(
        paused.hardware.hardware_id,
        before
            .iter()
            .find(|d| d.id == paused.id)
            .unwrap()
            .hardware
            .hardware_id
    );
}
on_both_databases!(a_restarted_worker_keeps_its_pause_and_unreported_devices_go_down);

async fn idle_devices_prove_again_at_random_times_and_stay_idle(db: Db) {
    let coordinator = Coordinator::start(
        db,
        &[
            "--allow-simulated-devices",
            "--proof-recheck-interval-ms",
            "400",
        ],
    )
    .await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let _worker = coordinator.worker(dir.path(), Some(&token), "L40S");
    let public = coordinator.client(None);
    let proofs = eventually(Duration::from_secs(20), || async {
        let page: Page<flotilla_proto::api::ProofInfo> = public.get("proofs").await.ok()?;
        (page.items.len() >= 3).then_some(page.items)
    })
    .await
    .expect("the admission proof and at least two re-checks");
    assert!(
        proofs.iter().all(|p| p.passed && p.class == "cpu"),
        "{proofs:?}"
    );
    let devices = devices(&coordinator, &supplier).await;
    assert_eq!(devices[0].state, DeviceState::Idle);
    assert!(proofs.iter().all(|p| p.device_id == devices[0].id));
}
on_both_databases!(idle_devices_prove_again_at_random_times_and_stay_idle);

async fn devices_no_longer_reported_age_from_down_to_inactive(db: Db) {
    let coordinator = Coordinator::start(
        db,
        &["--allow-simulated-devices", "--inactive-after-ms", "2500"],
    )
    .await;
    let supplier = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier).await;
    let mut worker = coordinator.worker(dir.path(), Some(&token), "RTX 4090x2");
    eventually(Duration::from_secs(20), || async {
        let devices = devices(&coordinator, &supplier).await;
        (devices.len() == 2 && devices.iter().all(|d| d.state == DeviceState::Idle)).then_some(())
    })
    .await
    .expect("two idle devices");
    worker.kill();
    let _worker = coordinator.worker(dir.path(), None, "RTX 4090x1");
    eventually(Duration::from_secs(20), || async {
        let devices = devices(&coordinator, &supplier).await;
        let mut states: Vec<_> = devices.iter().map(|d| d.state).collect();
        states.sort_by_key(|s| s.as_str());
        (states == [DeviceState::Idle, DeviceState::Inactive]).then_some(())
    })
    .await
    .expect("the unreported device goes inactive while its worker stays up");
}
on_both_databases!(devices_no_longer_reported_age_from_down_to_inactive);
