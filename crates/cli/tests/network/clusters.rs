//! Clusters through the real binaries: deploy from the CLI, nodes run sandboxed on workers, logs
//! stream back, the ledger pays the minutes that ran and returns the rest, and one renter
//! cannot touch another's cluster.

use std::process::Command;
use std::time::Duration;

use flotilla_client::{Client, ClientError};
use flotilla_proto::api::{
    ClusterInfo, ClusterQuote, ClusterSpec, FaucetRequest, LogPage, Role, WalletInfo,
};

use crate::harness::{BIN, Coordinator, Db, Proc, eventually};
use crate::on_both_databases;

const TOKEN: u64 = 1_000_000;

/// Whether bubblewrap runs here; without it (and unless the test command requires it) the
/// tests that run nodes say so and stop.
pub(crate) fn sandbox_ready() -> bool {
    let present = Command::new("bwrap").arg("--version").output().is_ok();
    assert!(
        present || std::env::var("FLOTILLA_REQUIRE_SANDBOX").as_deref() != Ok("1"),
        "FLOTILLA_REQUIRE_SANDBOX=1 but bwrap is missing"
    );
    if !present {
        eprintln!("bwrap is not installed: the cluster test did not run");
    }
    present
}

pub(crate) struct Market {
    pub(crate) coordinator: Coordinator,
    pub(crate) renter_key: String,
    pub(crate) renter: Client,
    pub(crate) supplier: Client,
    pub(crate) supplier_key: String,
    pub(crate) _workers: Vec<Proc>,
    pub(crate) _dirs: Vec<tempfile::TempDir>,
}

/// A coordinator with `workers` one-GPU workers of one supplier at 6 IOSD an hour, and a
/// renter holding 100 IOSD.
pub(crate) async fn market(db: Db, workers: usize) -> Market {
    market_with(db, workers, "500", &[]).await
}

async fn market_with_minute(db: Db, workers: usize, rent_minute_ms: &str) -> Market {
    market_with(db, workers, rent_minute_ms, &[]).await
}

/// The market coordinator's flags (a restart passes them again).
pub(crate) fn market_flags(rent_minute_ms: &str) -> Vec<&str> {
    vec![
        "--faucet",
        "--allow-simulated-devices",
        "--schedule-interval-ms",
        "100",
        "--rent-minute-ms",
        rent_minute_ms,
        "--io-price-micros",
        "2000000",
    ]
}

pub(crate) async fn market_with(
    db: Db,
    workers: usize,
    rent_minute_ms: &str,
    worker_flags: &[&str],
) -> Market {
    market_flagged(db, workers, &market_flags(rent_minute_ms), worker_flags).await
}

/// A market whose coordinator starts with `coordinator_flags` and whose `workers` one-GPU
/// workers start with `worker_flags`.
pub(crate) async fn market_flagged(
    db: Db,
    workers: usize,
    coordinator_flags: &[&str],
    worker_flags: &[&str],
) -> Market {
    let coordinator = Coordinator::start(db, coordinator_flags).await;
    market_from(coordinator, workers, |coordinator, dir, token, _| {
        coordinator.worker_with(dir, Some(token), "H100x1", worker_flags)
    })
    .await
}

/// A market on `coordinator` with `workers` one-GPU workers, each started by `start` (given
/// its data directory, enrollment token and index).
pub(crate) async fn market_from(
    coordinator: Coordinator,
    workers: usize,
    start: impl Fn(&Coordinator, &std::path::Path, &str, usize) -> Proc,
) -> Market {
    let supplier_key = coordinator.account("sup", &[Role::Supplier]).await;
    let renter_key = coordinator.account("ren", &[Role::Renter]).await;
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    for index in 0..workers {
        let dir = tempfile::tempdir().unwrap();
        // The sandbox runs as nobody, which must pass through to the run directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let token = coordinator.token(&supplier_key).await;
        procs.push(start(&coordinator, dir.path(), &token, index));
        dirs.push(dir);
    }
    crate::market::price_idle_devices(&coordinator, &supplier_key, workers, 6 * TOKEN).await;
    let renter = coordinator.client(Some(&renter_key));
    let _: serde_json::Value = renter
        .post_idempotent(
            "wallet/faucet",
            &FaucetRequest {
                token: "IOSD".into(),
                amount_micros: 100 * TOKEN,
            },
            "f",
        )
        .await
        .unwrap();
    Market {
        supplier: coordinator.client(Some(&supplier_key)),
        supplier_key,
        coordinator,
        renter_key,
        renter,
        _workers: procs,
        _dirs: dirs,
    }
}

pub(crate) fn cli(coordinator: &Coordinator, key: &str, args: &[&str]) -> (bool, String, String) {
    // The connection goes before `--`: what follows is the nodes' command.
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let output = Command::new(BIN)
        .args(&args[..split])
        .args(["--url", &coordinator.url, "--api-key", key])
        .args(coordinator.ca_flags())
        .args(&args[split..])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) async fn iosd_available(client: &Client) -> i64 {
    available(client, "IOSD").await
}

async fn available(client: &Client, token: &str) -> i64 {
    let wallet: WalletInfo = client.get("wallet").await.unwrap();
    let suffix = format!(":main:{token}");
    wallet
        .balances
        .iter()
        .find(|b| b.account.ends_with(&suffix))
        .map_or(0, |b| b.available_micros)
}

pub(crate) async fn until_state(
    client: &Client,
    id: &str,
    state: &str,
    limit_s: u64,
) -> ClusterInfo {
    eventually(Duration::from_secs(limit_s), || async {
        let info: ClusterInfo = client.get(&format!("clusters/{id}")).await.ok()?;
        (info.state == state).then_some(info)
    })
    .await
    .unwrap_or_else(|| panic!("cluster {id} reaches {state}"))
}

pub(crate) async fn all_logs(client: &Client, id: &str) -> LogPage {
    client.get(&format!("clusters/{id}/logs")).await.unwrap()
}

pub(crate) fn spec(nodes: u32, command: &[&str]) -> ClusterSpec {
    ClusterSpec::new(
        "job",
        nodes,
        command.iter().map(|s| s.to_string()).collect(),
    )
}

async fn three_node_batch_cluster_runs_logs_and_pays(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let market = market(db, 3).await;
    let before = iosd_available(&market.renter).await;
    let script = "echo rank $FLOTILLA_NODE_RANK of $FLOTILLA_NODE_COUNT attempt $FLOTILLA_ATTEMPT; \
                  echo secret=$TOKEN_X >/dev/null; echo to-stderr >&2; sleep 1";
    let (ok, stdout, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &[
            "deploy",
            "--nodes",
            "3",
            "--gpus-per-node",
            "1",
            "--hours",
            "1",
            "--yes",
            "--secret-env",
            "TOKEN_X=hunter2",
            "--output",
            "json",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert!(ok, "deploy failed: {stderr}");
    assert!(stderr.contains("Quote:"), "the quote is shown: {stderr}");
    let deployed: ClusterInfo = serde_json::from_str(&stdout).expect("deploy prints the cluster");
    assert!(!stdout.contains("hunter2"), "a secret is never shown back");
    assert_eq!(deployed.secret_env_names, vec!["TOKEN_X".to_owned()]);
    // A follower started while the cluster runs prints everything and stops once it ended.
    let follower = Command::new(BIN)
        .args(["clusters", "logs", &deployed.id, "--follow"])
        .args([
            "--url",
            &market.coordinator.url,
            "--api-key",
            &market.renter_key,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = until_state(&market.renter, &deployed.id, "completed", 60).await;
    let followed = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    for rank in 0..3 {
        assert!(
            followed.contains(&format!("[{rank}] rank {rank} of 3")),
            "{followed}"
        );
    }
    assert_eq!(done.nodes.len(), 3);
    assert!(
        done.nodes
            .iter()
            .all(|n| n.state == "exited" && n.exit_code == Some(0)),
        "{:?}",
        done.nodes
    );
    let workers: std::collections::BTreeSet<&str> =
        done.nodes.iter().map(|n| n.worker_id.as_str()).collect();
    assert_eq!(workers.len(), 3, "one node per worker");

    let logs = all_logs(&market.renter, &deployed.id).await;
    for rank in 0..3u32 {
        let mine: String = logs
            .lines
            .iter()
            .filter(|l| l.node_rank == rank)
            .map(|l| l.text.as_str())
            .collect();
        assert!(
            mine.contains(&format!("rank {rank} of 3 attempt 1")),
            "{mine}"
        );
        assert!(mine.contains("to-stderr"), "{mine}");
    }
    assert!(logs.ended);
    let (ok, text, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &["clusters", "logs", &deployed.id, "--node", "2"],
    );
    assert!(ok, "{stderr}");
    assert!(text.contains("[2] rank 2 of 3"), "{text}");
    assert!(!text.contains("rank 0 of 3"), "{text}");

    // The renter rates node 2's supplier; the offers of that worker carry the rating.
    let (ok, _, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &[
            "clusters",
            "rate",
            &deployed.id,
            "--node",
            "2",
            "--stars",
            "2",
            "--comment",
            "slow",
        ],
    );
    assert!(ok, "{stderr}");
    let bad = flotilla_proto::api::RateNodesRequest {
        ratings: vec![flotilla_proto::api::NodeRating {
            node_rank: 0,
            stars: 9,
            comment: String::new(),
        }],
    };
    let (status, _, field) = api_error(
        market
            .renter
            .post::<_, ClusterInfo>(&format!("clusters/{}/ratings", deployed.id), &bad)
            .await,
    );
    assert_eq!((status, field.as_deref()), (422, Some("stars")));
    let rated = &done.nodes[2].worker_id;
    let offers: flotilla_proto::api::OffersResponse =
        market.coordinator.client(None).get("offers").await.unwrap();
    let offer = offers
        .offers
        .iter()
        .find(|o| &o.worker_id == rated)
        .unwrap();
    assert_eq!(offer.feedback_milli, Some(2_000));
    let shown: ClusterInfo = market
        .renter
        .get(&format!("clusters/{}", deployed.id))
        .await
        .unwrap();
    assert_eq!(shown.nodes[2].rating_stars, Some(2));

    // Money: the minutes that ran went to the supplier, the rest came back.
    let settled = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = market
            .renter
            .get(&format!("clusters/{}", deployed.id))
            .await
            .ok()?;
        (info.escrow_micros == 0).then_some(info)
    })
    .await
    .expect("the escrow empties");
    assert!(settled.metered_minutes >= 1);
    let spent = before - iosd_available(&market.renter).await;
    let earned = iosd_available(&market.supplier).await;
    // 3 nodes at 6 IOSD an hour: 100,000 base units of rent per node-minute; the renter pays
    // 2.25% on top in IOSD, the supplier gives 0.25%.
    let minutes = i64::try_from(settled.metered_minutes).unwrap();
    assert_eq!(
        spent,
        3 * minutes * 102_250,
        "renter charged for {minutes} minutes"
    );
    assert_eq!(
        earned,
        3 * minutes * 99_750,
        "supplier paid for {minutes} minutes"
    );
    // The month's spending, through the CLI, is exactly that charge.
    let (ok, text, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &["wallet", "spending", "--output", "json"],
    );
    assert!(ok, "{stderr}");
    let spending: flotilla_proto::api::SpendingInfo = serde_json::from_str(&text).unwrap();
    let iosd = spending.tokens.iter().find(|t| t.token == "IOSD").unwrap();
    assert_eq!((iosd.spent_micros, spending.complete), (spent, true));
}
on_both_databases!(three_node_batch_cluster_runs_logs_and_pays);

/// Rent paid in IO: offers are priced in IOSD and convert at the coordinator's IO price (2
/// IOSD per IO here), fixed at deploy; the supplier is paid in IO and the renter's IOSD is
/// untouched. An unknown token is refused.
async fn a_cluster_paid_in_io_pays_its_supplier_in_io(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let market = market(db, 1).await;
    let _: serde_json::Value = market
        .renter
        .post_idempotent(
            "wallet/faucet",
            &FaucetRequest {
                token: "IO".into(),
                amount_micros: 100 * TOKEN,
            },
            "f-io",
        )
        .await
        .unwrap();
    let (iosd_before, io_before) = (
        iosd_available(&market.renter).await,
        available(&market.renter, "IO").await,
    );
    let job = ClusterSpec {
        token: "IO".into(),
        ..spec(1, &["sh", "-c", "sleep 2"])
    };
    let quote: ClusterQuote = market.renter.post("clusters/quote", &job).await.unwrap();
    assert_eq!(quote.io_price_micros, Some(2 * TOKEN));
    // One node at 6 IOSD an hour for an hour: 3 IO of rent.
    assert_eq!(quote.rent_micros, 3 * TOKEN);
    assert!(quote.total_micros > quote.rent_micros);
    let deployed: ClusterInfo = market.renter.post("clusters", &job).await.unwrap();
    until_state(&market.renter, &deployed.id, "completed", 30).await;
    // The refund follows the end.
    let emptied = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = market
            .renter
            .get(&format!("clusters/{}", deployed.id))
            .await
            .ok()?;
        (info.escrow_micros == 0).then_some(())
    })
    .await;
    assert!(emptied.is_some(), "what was not used went back");
    let spent = io_before - available(&market.renter, "IO").await;
    let earned = available(&market.supplier, "IO").await;
    assert!(earned > 0, "the supplier is paid in IO");
    assert!(
        spent > earned,
        "the renter pays the rent and its fee: {spent} vs {earned}"
    );
    assert!(
        spent < quote.total_micros as i64,
        "only the minutes up are charged"
    );
    assert_eq!(iosd_available(&market.renter).await, iosd_before);
    let refused = market
        .renter
        .post::<_, ClusterQuote>(
            "clusters/quote",
            &ClusterSpec {
                token: "BTC".into(),
                ..job
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api { status: 422, field: Some(f), .. } if f == "token"),
        "{refused}"
    );
}
on_both_databases!(a_cluster_paid_in_io_pays_its_supplier_in_io);

fn api_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String, Option<String>) {
    match result.unwrap_err() {
        ClientError::Api {
            status,
            code,
            field,
            ..
        } => (status, code, field),
        other => panic!("expected an API error, got {other}"),
    }
}

async fn bad_specs_funds_and_other_renters_are_refused(db: Db) {
    let market = market(db, 1).await;
    let renter = &market.renter;
    let cases: Vec<(&str, ClusterSpec)> = vec![
        (
            "nodes",
            ClusterSpec {
                nodes: 0,
                ..spec(1, &["true"])
            },
        ),
        (
            "type",
            ClusterSpec {
                kind: "cron".into(),
                ..spec(1, &["true"])
            },
        ),
        ("command", spec(1, &[])),
        (
            "hours",
            ClusterSpec {
                hours: 0,
                ..spec(1, &["true"])
            },
        ),
        (
            "token",
            ClusterSpec {
                token: "BTC".into(),
                ..spec(1, &["true"])
            },
        ),
        (
            "name",
            ClusterSpec {
                name: "a b".into(),
                ..spec(1, &["true"])
            },
        ),
        (
            "memory_mib",
            ClusterSpec {
                memory_mib: Some(1),
                ..spec(1, &["true"])
            },
        ),
        (
            "env",
            ClusterSpec {
                env: [("FLOTILLA_NODE_RANK".to_owned(), "9".to_owned())].into(),
                ..spec(1, &["true"])
            },
        ),
        (
            "image",
            ClusterSpec {
                image: Some("../../v1.45/containers".into()),
                ..spec(1, &["true"])
            },
        ),
    ];
    for (field, bad) in cases {
        let (status, _, named) = api_error(renter.post::<_, ClusterInfo>("clusters", &bad).await);
        assert_eq!((status, named.as_deref()), (422, Some(field)), "{field}");
    }
    let (status, code, _) = api_error(
        renter
            .post::<_, ClusterInfo>(
                "clusters",
                &ClusterSpec {
                    query: "gpu=a100".into(),
                    ..spec(1, &["true"])
                },
            )
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "no_match"));
    let (ok, _, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &["deploy", "--query", "gpu=a100", "--yes", "--", "true"],
    );
    assert!(!ok && stderr.contains("no devices match"), "{stderr}");

    // An image goes only to workers that run containers; this one does not.
    let image = ClusterSpec {
        image: Some("busybox:1".into()),
        ..spec(1, &["true"])
    };
    match renter.post::<_, ClusterInfo>("clusters", &image).await {
        Err(ClientError::Api {
            status: 409,
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "no_match");
            assert!(message.contains("container engine"), "{message}");
        }
        other => panic!("an image without a container worker: {other:?}"),
    }

    // A renter without funds is refused before anything is held.
    let poor_key = market.coordinator.account("poor", &[Role::Renter]).await;
    let poor = market.coordinator.client(Some(&poor_key));
    let (status, code, _) = api_error(
        poor.post::<_, ClusterInfo>("clusters", &spec(1, &["true"]))
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "insufficient_funds"));
    let wallet: WalletInfo = poor.get("wallet").await.unwrap();
    assert!(wallet.holds.is_empty());
    let listed: flotilla_proto::api::Page<ClusterInfo> = poor.get("clusters").await.unwrap();
    assert!(listed.items.is_empty());

    if !sandbox_ready() {
        return;
    }
    // One deploy per idempotency key.
    let service = ClusterSpec {
        kind: "service".into(),
        ..spec(1, &["sleep", "600"])
    };
    let first: ClusterInfo = renter
        .post_idempotent("clusters", &service, "once")
        .await
        .unwrap();
    let again: ClusterInfo = renter
        .post_idempotent("clusters", &service, "once")
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    let mine: flotilla_proto::api::Page<ClusterInfo> = renter.get("clusters").await.unwrap();
    assert_eq!(mine.items.len(), 1);

    // Another renter sees nothing of it.
    let id = &first.id;
    assert_eq!(
        poor.get::<ClusterInfo>(&format!("clusters/{id}"))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(
        poor.get::<LogPage>(&format!("clusters/{id}/logs"))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    let extend = flotilla_proto::api::ExtendRequest {
        hours: 1,
        from_hours: None,
    };
    assert_eq!(
        poor.post::<_, ClusterInfo>(&format!("clusters/{id}/extend"), &extend)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(
        poor.post_empty::<ClusterInfo>(&format!("clusters/{id}/terminate"))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );

    // Terminate stops it and returns the hold.
    let before = iosd_available(renter).await;
    let ended: ClusterInfo = renter
        .post_empty(&format!("clusters/{id}/terminate"))
        .await
        .unwrap();
    assert_eq!(ended.state, "terminated");
    assert_eq!(ended.escrow_micros, 0);
    assert!(iosd_available(renter).await > before);
    let (status, code, _) = api_error(
        renter
            .post_empty::<ClusterInfo>(&format!("clusters/{id}/terminate"))
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "not_active"));
}
on_both_databases!(bad_specs_funds_and_other_renters_are_refused);

/// The worker id a worker process enrolled as, from its data directory.
/// The position among the market's workers of the worker with `worker_id`.
pub(crate) fn worker_index(market: &Market, worker_id: &str) -> usize {
    market
        ._dirs
        .iter()
        .position(|dir| worker_id_of(dir) == worker_id)
        .expect("the node's worker is one of ours")
}

pub(crate) fn worker_id_of(dir: &tempfile::TempDir) -> String {
    let text = std::fs::read_to_string(dir.path().join("enrollment.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["worker_id"].as_str().unwrap().to_owned()
}

/// A worker that stops answering (SIGSTOP) past the heartbeat grace loses its node: the run is
/// fenced, the rank runs again elsewhere with the next attempt, and the cluster completes. When
/// the old worker wakes, its late report about the fenced run is refused.
async fn a_lost_node_runs_again_elsewhere_and_its_late_report_is_refused(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let market = market(db, 3).await;
    let count = "i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo tick $i; sleep 0.2; done; \
                 echo done rank $FLOTILLA_NODE_RANK attempt $FLOTILLA_ATTEMPT";
    let deployed: ClusterInfo = market
        .renter
        .post("clusters", &spec(2, &["sh", "-c", count]))
        .await
        .unwrap();
    let running = until_state(&market.renter, &deployed.id, "running", 30).await;
    let victim_worker = running.nodes[1].worker_id.clone();
    let victim = worker_index(&market, &victim_worker);
    market._workers[victim].signal("STOP");
    let done = until_state(&market.renter, &deployed.id, "completed", 60).await;
    let rank1 = &done.nodes[1];
    assert_eq!(rank1.attempt, 2, "{:?}", done.nodes);
    assert_ne!(rank1.worker_id, victim_worker);
    assert_eq!(done.nodes[0].attempt, 1);
    let logs = all_logs(&market.renter, &deployed.id).await;
    let rank1_attempt2: String = logs
        .lines
        .iter()
        .filter(|l| l.node_rank == 1 && l.attempt == 2)
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        rank1_attempt2.contains("done rank 1 attempt 2"),
        "{rank1_attempt2}"
    );

    market._workers[victim].signal("CONT");
    let refused = eventually(Duration::from_secs(30), || async {
        let metrics = reqwest::get(format!("{}/metrics", market.coordinator.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics.contains("run_fenced").then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the woken worker's report about its fenced run is refused"
    );
}
on_both_databases!(a_lost_node_runs_again_elsewhere_and_its_late_report_is_refused);

/// A failing node restarts while the spec's retries last, then fails the cluster; a node over
/// its memory limit is killed and reported; a service runs until its hours (extended once) run
/// out, then expires and stops.
async fn retries_memory_limits_extension_and_expiry(db: Db) {
    if !sandbox_ready() {
        return;
    }
    // A rent minute of 100 ms: an hour is 6 s.
    let market = market_with_minute(db, 2, "100").await;
    let renter = &market.renter;
    // A spec file in TOML, deployed from the CLI: the first attempt fails, the retry passes.
    let files = tempfile::tempdir().unwrap();
    let job = files.path().join("second-try.toml");
    std::fs::write(
        &job,
        r#"
name = "second-try"
type = "batch"
nodes = 1
hours = 1
retries = 1
command = ["sh", "-c", "echo try $FLOTILLA_ATTEMPT; [ $FLOTILLA_ATTEMPT -ge 2 ]"]
env = { GREETING = "hello" }
"#,
    )
    .unwrap();
    let file = job.to_str().unwrap();
    let (ok, stdout, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &["deploy", "--file", file, "--yes", "--output", "json"],
    );
    assert!(ok, "{stderr}");
    let retried: ClusterInfo = serde_json::from_str(&stdout).unwrap();
    assert_eq!(retried.spec.env["GREETING"], "hello");
    let broken = files.path().join("broken.toml");
    std::fs::write(&broken, "name = \"x\"\nnodes = \"two\"\n").unwrap();
    let (ok, _, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &["deploy", "--file", broken.to_str().unwrap(), "--yes"],
    );
    assert!(!ok && stderr.contains("is not a cluster spec"), "{stderr}");
    let done = until_state(renter, &retried.id, "completed", 30).await;
    assert_eq!(done.nodes[0].attempt, 2);

    let no_retry = spec(1, &["sh", "-c", "exit 7"]);
    let failing: ClusterInfo = renter.post("clusters", &no_retry).await.unwrap();
    let failed = until_state(renter, &failing.id, "failed", 30).await;
    assert_eq!(failed.nodes[0].exit_code, Some(7));
    assert!(failed.ended_because.unwrap().contains("code 7"));
    let refunded = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = renter.get(&format!("clusters/{}", failing.id)).await.ok()?;
        (info.escrow_micros == 0).then_some(())
    })
    .await;
    assert!(refunded.is_some(), "a failed cluster's escrow returns");

    // 200 MB held in a shell variable, under a 32 MiB limit.
    let hungry = ClusterSpec {
        memory_mib: Some(32),
        ..spec(
            1,
            &[
                "sh",
                "-c",
                "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
            ],
        )
    };
    let hungry: ClusterInfo = renter.post("clusters", &hungry).await.unwrap();
    let killed = until_state(renter, &hungry.id, "failed", 30).await;
    assert_ne!(killed.nodes[0].exit_code, Some(0), "{:?}", killed.nodes);
    let logs = all_logs(renter, &hungry.id).await;
    assert!(logs.lines.iter().all(|l| !l.text.contains("survived")));

    // A service of one hour, extended by one.
    let service = ClusterSpec {
        kind: "service".into(),
        ports: vec![8888],
        ..spec(1, &["sleep", "3600"])
    };
    let service: ClusterInfo = renter.post("clusters", &service).await.unwrap();
    until_state(renter, &service.id, "running", 30).await;
    let escrow_before = until_state(renter, &service.id, "running", 1)
        .await
        .escrow_micros;
    let from_one_hour = flotilla_proto::api::ExtendRequest {
        hours: 1,
        from_hours: Some(1),
    };
    let extended: ClusterInfo = renter
        .post(&format!("clusters/{}/extend", service.id), &from_one_hour)
        .await
        .unwrap();
    assert_eq!(extended.spec.hours, 2);
    assert!(
        extended.escrow_micros > escrow_before + 5_000_000,
        "an hour's rent is held"
    );
    // The same extension sent again (a form submitted twice) is refused and pays nothing.
    let wallet_before = iosd_available(renter).await;
    let (status, code, _) = api_error(
        renter
            .post::<_, ClusterInfo>(&format!("clusters/{}/extend", service.id), &from_one_hour)
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "stale"));
    assert_eq!(iosd_available(renter).await, wallet_before);
    let unchanged: ClusterInfo = renter
        .get(&format!("clusters/{}", service.id))
        .await
        .unwrap();
    assert_eq!(unchanged.spec.hours, 2);
    let expired = until_state(renter, &service.id, "expired", 60).await;
    assert_eq!(expired.metered_minutes, 120);
    assert_eq!(expired.nodes[0].state, "stopped");
    assert_eq!(expired.escrow_micros, 0);
}
on_both_databases!(retries_memory_limits_extension_and_expiry);

/// The Docker engine the test command started (`FLOTILLA_TEST_DOCKER_HOST`, a `unix://` URL)
/// and the image it built there; without one (and unless the test command requires it) the
/// container test says so and stops.
pub(crate) fn container_engine() -> Option<(String, String)> {
    let host = std::env::var("FLOTILLA_TEST_DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty());
    let image = std::env::var("FLOTILLA_TEST_IMAGE")
        .ok()
        .filter(|i| !i.is_empty());
    match (host, image) {
        (Some(host), Some(image)) => Some((host.trim_start_matches("unix://").to_owned(), image)),
        _ => {
            assert!(
                std::env::var("FLOTILLA_REQUIRE_CONTAINERS").as_deref() != Ok("1"),
                "FLOTILLA_REQUIRE_CONTAINERS=1 but no engine was given"
            );
            eprintln!("no container engine: the container cluster test did not run");
            None
        }
    }
}

/// The same 3-node batch cluster with an image runs on the container driver: each node in its
/// own container, ranks and logs as on the exec driver, the work directory at /work, the
/// worker's key out of reach.
async fn three_node_cluster_runs_on_the_container_driver(db: Db) {
    let Some((socket, image)) = container_engine() else {
        return;
    };
    let market = market_with(db, 3, "500", &["--docker-socket", &socket]).await;
    let script = "echo rank $FLOTILLA_NODE_RANK of $FLOTILLA_NODE_COUNT uid $(id -u); \
                  echo hi > /work/out && cat /work/out; \
                  ls /var/run/docker.sock 2>/dev/null || echo no-socket; echo to-stderr >&2";
    let (ok, stdout, stderr) = cli(
        &market.coordinator,
        &market.renter_key,
        &[
            "deploy", "--nodes", "3", "--hours", "1", "--yes", "--image", &image, "--output",
            "json", "--", "sh", "-c", script,
        ],
    );
    assert!(ok, "deploy failed: {stderr}");
    let deployed: ClusterInfo = serde_json::from_str(&stdout).unwrap();
    assert_eq!(deployed.spec.image.as_deref(), Some(image.as_str()));
    let done = until_state(&market.renter, &deployed.id, "completed", 60).await;
    assert!(
        done.nodes.iter().all(|n| n.exit_code == Some(0)),
        "{:?}",
        done.nodes
    );
    let logs = all_logs(&market.renter, &deployed.id).await;
    for rank in 0..3u32 {
        let mine: String = logs
            .lines
            .iter()
            .filter(|l| l.node_rank == rank)
            .map(|l| l.text.as_str())
            .collect();
        for expected in [
            format!("rank {rank} of 3 uid 65534"),
            "hi".to_owned(),
            "no-socket".to_owned(),
            "to-stderr".to_owned(),
        ] {
            assert!(mine.contains(&expected), "{expected} missing from {mine}");
        }
    }
    let settled = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = market
            .renter
            .get(&format!("clusters/{}", deployed.id))
            .await
            .ok()?;
        (info.escrow_micros == 0).then_some(info)
    })
    .await;
    assert!(settled.is_some(), "the escrow's rest returns");
}
on_both_databases!(three_node_cluster_runs_on_the_container_driver);

/// Chaos: a 4-node batch job counts to a target, keeping its count in a checkpoint directory
/// (written by rename, as a checkpoint taken mid-write would otherwise hold an empty file).
/// Two of its workers are killed (SIGKILL) while it runs. The cluster completes with the
/// output of an uninterrupted run, the replaced ranks resume from their checkpoints, the
/// renter pays exactly the node-minutes the suppliers were paid, and no supplier is paid past
/// its worker's last heartbeat.
async fn a_checkpointed_job_survives_two_killed_workers(db: Db) {
    if !sandbox_ready() {
        return;
    }
    let coordinator = Coordinator::start(
        db,
        &[
            "--faucet",
            "--allow-simulated-devices",
            "--schedule-interval-ms",
            "100",
            "--rent-minute-ms",
            "500",
            "--checkpoint-interval-ms",
            "200",
        ],
    )
    .await;
    // One supplier per worker, so each worker's pay is seen apart.
    let mut suppliers = Vec::new();
    let mut workers = Vec::new();
    let mut dirs = Vec::new();
    for index in 0..6 {
        let key = coordinator
            .account(&format!("sup{index}"), &[Role::Supplier])
            .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let token = coordinator.token(&key).await;
        workers.push(coordinator.worker(dir.path(), Some(&token), "H100x1"));
        crate::market::price_idle_devices(&coordinator, &key, 1, 6 * TOKEN).await;
        suppliers.push(coordinator.client(Some(&key)));
        dirs.push(dir);
    }
    let renter_key = coordinator.account("ren", &[Role::Renter]).await;
    let renter = coordinator.client(Some(&renter_key));
    let _: serde_json::Value = renter
        .post_idempotent(
            "wallet/faucet",
            &FaucetRequest {
                token: "IOSD".into(),
                amount_micros: 100 * TOKEN,
            },
            "f",
        )
        .await
        .unwrap();
    let before = iosd_available(&renter).await;
    let count = "mkdir -p /work/ckpt; n=$(cat /work/ckpt/n 2>/dev/null || echo 0); \
                 echo resumed from $n; \
                 while [ $n -lt 40 ]; do n=$((n+1)); echo $n > /work/ckpt/n.new; \
                 mv /work/ckpt/n.new /work/ckpt/n; sleep 0.1; done; \
                 echo rank $FLOTILLA_NODE_RANK counted to $n";
    let job = ClusterSpec {
        checkpoint_path: Some("ckpt".into()),
        ..spec(4, &["sh", "-c", count])
    };
    let deployed_at_ms = flotilla_proto::time::now_unix_ms();
    let deployed: ClusterInfo = renter.post("clusters", &job).await.unwrap();
    let running = until_state(&renter, &deployed.id, "running", 30).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut killed_at_ms = std::collections::HashMap::new();
    for rank in [1usize, 2] {
        let victim = &running.nodes[rank].worker_id;
        let index = dirs
            .iter()
            .position(|d| &worker_id_of(d) == victim)
            .unwrap();
        workers[index].kill();
        killed_at_ms.insert(index, flotilla_proto::time::now_unix_ms());
    }
    let done = until_state(&renter, &deployed.id, "completed", 90).await;
    let logs = all_logs(&renter, &deployed.id).await;
    let text_of = |rank: u32, attempt: u32| -> String {
        logs.lines
            .iter()
            .filter(|l| l.node_rank == rank && l.attempt == attempt)
            .map(|l| l.text.as_str())
            .collect()
    };
    for node in &done.nodes {
        let newest = text_of(node.rank, node.attempt);
        assert!(
            newest.contains(&format!("rank {} counted to 40", node.rank)),
            "rank {}: {newest}",
            node.rank
        );
    }
    for rank in [1u32, 2] {
        assert_eq!(done.nodes[rank as usize].attempt, 2, "{:?}", done.nodes);
        let resumed = text_of(rank, 2);
        let from: u32 = resumed
            .split("resumed from ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("rank {rank} attempt 2: {resumed}"));
        assert!(
            from > 0,
            "rank {rank} resumed from its checkpoint, not from 0"
        );
    }

    // Money: what the renter paid is exactly the node-minutes the suppliers were paid.
    let _settled = eventually(Duration::from_secs(10), || async {
        let info: ClusterInfo = renter
            .get(&format!("clusters/{}", deployed.id))
            .await
            .ok()?;
        (info.escrow_micros == 0).then_some(info)
    })
    .await
    .expect("the escrow empties");
    let spent = before - iosd_available(&renter).await;
    let mut earned_total = 0;
    for (index, supplier) in suppliers.iter().enumerate() {
        let earned = iosd_available(supplier).await;
        assert_eq!(earned % 99_750, 0, "whole node-minutes");
        earned_total += earned;
        if let Some(killed_ms) = killed_at_ms.get(&index) {
            // Placed after the deploy; paid at most for minutes ending within a heartbeat
            // interval (200 ms) of its last heartbeat, which was before the kill.
            let minutes_max = (killed_ms + 200 - deployed_at_ms) / 500 + 1;
            assert!(
                earned <= minutes_max * 99_750,
                "worker {index} earned {earned} for at most {minutes_max} minutes up"
            );
        }
    }
    assert_eq!(
        spent * 99_750,
        earned_total * 102_250,
        "spent {spent}, earned {earned_total}"
    );
}
on_both_databases!(a_checkpointed_job_survives_two_killed_workers);
