//! The ledger over real binaries: money moves once per idempotency key, never overdraws under
//! concurrency, survives `kill -9`, and the exported log verifies offline (and fails when
//! changed); staking, unstaking and slashing resolve on the server's clock; block rewards pay
//! each epoch's emission exactly; governance tallies land in the log.

use std::process::Command;
use std::time::Duration;

use flotilla_client::{Client, ClientError};
use flotilla_proto::api::{
    DepositRequest, Device, EntryInfo, FaucetRequest, LedgerInfo, Me, Page, ProposalCreate,
    ProposalInfo, Role, SlashRequest, StakeRequest, TransferRequest, TransferResult, VoteRequest,
    WalletInfo, WithdrawalRequest,
};
use flotilla_proto::device::DeviceState;

use crate::harness::{BIN, Coordinator, Db, eventually};
use crate::on_both_databases;

const TOKEN: u64 = 1_000_000;
const LEDGER_FLAGS: [&str; 7] = [
    "--faucet",
    "--ledger-epoch-ms",
    "1000",
    // Long enough that a loaded machine still returns a slash before its window ends.
    "--unstake-cooldown-ms",
    "3000",
    "--slash-appeal-ms",
    "3000",
];

fn cli(coordinator: &Coordinator, key: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .args(["--url", &coordinator.url, "--api-key", key])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs an offline command (no coordinator).
fn offline(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn available(wallet: &WalletInfo, purpose: &str, token: &str) -> i64 {
    wallet
        .balances
        .iter()
        .find(|b| b.purpose == purpose && b.token == token)
        .map_or(0, |b| b.available_micros)
}

async fn faucet(client: &Client, token: &str, amount_micros: u64, key: &str) -> TransferResult {
    let request = FaucetRequest {
        token: token.into(),
        amount_micros,
    };
    client
        .post_idempotent("wallet/faucet", &request, key)
        .await
        .unwrap()
}

fn api_error(result: Result<TransferResult, ClientError>) -> (u16, String, Option<String>) {
    match result {
        Err(ClientError::Api {
            status,
            code,
            field,
            ..
        }) => (status, code, field),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn money_moves_once_and_never_overdraws(db: Db) {
    let coordinator = Coordinator::start(db, &LEDGER_FLAGS).await;
    let alice = coordinator.client(Some(&coordinator.account("alice", &[Role::Renter]).await));
    let bob = coordinator.client(Some(&coordinator.account("bob", &[Role::Renter]).await));
    let bob_id = bob.get::<Me>("me").await.unwrap().account.id;

    let first = faucet(&alice, "IOSD", 100 * TOKEN, "fund-1").await;
    assert_eq!(first.status, "applied");
    let again = faucet(&alice, "IOSD", 100 * TOKEN, "fund-1").await;
    assert_eq!(
        (again.status.as_str(), again.entry.seq),
        ("duplicate", first.entry.seq)
    );
    let reused = alice
        .post_idempotent(
            "wallet/faucet",
            &FaucetRequest {
                token: "IOSD".into(),
                amount_micros: 5,
            },
            "fund-1",
        )
        .await;
    assert_eq!(api_error(reused).1, "idempotency_key_reused");
    let wallet: WalletInfo = alice.get("wallet").await.unwrap();
    assert_eq!(available(&wallet, "main", "IOSD"), 100 * TOKEN as i64);

    // Bad input names its field and moves nothing.
    let transfer = |to: &str, token: &str, amount_micros: u64| TransferRequest {
        to: to.into(),
        token: token.into(),
        amount_micros,
        reference: String::new(),
    };
    for (request, field) in [
        (transfer(&bob_id, "BTC", 1), "token"),
        (transfer(&bob_id, "IOSD", 0), "amount_micros"),
        (transfer("usr_nobody", "IOSD", 1), "to"),
        (transfer("Bob!", "IOSD", 1), "to"),
    ] {
        let (status, _, got) = api_error(
            alice
                .post_idempotent("wallet/transfers", &request, "bad")
                .await,
        );
        assert_eq!((status, got.as_deref()), (422, Some(field)));
    }
    let (status, code, _) = api_error(
        alice
            .post_idempotent(
                "wallet/transfers",
                &transfer(&bob_id, "IOSD", 101 * TOKEN),
                "big",
            )
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "insufficient_funds"));

    // 50 concurrent debits of 3 against 100: exactly 33 apply, the rest are refused whole.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let alice = alice.clone();
        let request = transfer(&bob_id, "IOSD", 3 * TOKEN);
        tasks.push(tokio::spawn(async move {
            alice
                .post_idempotent::<_, TransferResult>(
                    "wallet/transfers",
                    &request,
                    &format!("c{i}"),
                )
                .await
        }));
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(result) => {
                assert_eq!(result.status, "applied");
                applied += 1;
            }
            Err(error) => assert_eq!(api_error(Err(error)).1, "insufficient_funds"),
        }
    }
    assert_eq!(applied, 33);
    let wallet: WalletInfo = alice.get("wallet").await.unwrap();
    assert_eq!(available(&wallet, "main", "IOSD"), TOKEN as i64);
    let wallet: WalletInfo = bob.get("wallet").await.unwrap();
    assert_eq!(available(&wallet, "main", "IOSD"), 99 * TOKEN as i64);

    // Each sees only their own history.
    let history: Vec<EntryInfo> = bob.get("wallet/history?limit=500").await.unwrap();
    assert_eq!(history.len(), 33);
    assert!(history.iter().all(|e| e.kind == "transfer"));

    // Money out, and an admin's deposit in.
    let withdrawal = WithdrawalRequest {
        token: "IOSD".into(),
        amount_micros: 9 * TOKEN,
        reference: "bank:DE89".into(),
    };
    let _: TransferResult = bob
        .post_idempotent("wallet/withdrawals", &withdrawal, "w1")
        .await
        .unwrap();
    let admin = coordinator.client(Some(&coordinator.admin_key));
    let deposit = DepositRequest {
        account_id: bob_id.clone(),
        token: "IOSD".into(),
        amount_micros: 10 * TOKEN,
        reference: "usd-wire-42".into(),
    };
    let denied = bob
        .post_idempotent::<_, TransferResult>("ledger/deposits", &deposit, "d1")
        .await;
    assert_eq!(api_error(denied).0, 403);
    let _: TransferResult = admin
        .post_idempotent("ledger/deposits", &deposit, "d1")
        .await
        .unwrap();
    let wallet: WalletInfo = bob.get("wallet").await.unwrap();
    assert_eq!(available(&wallet, "main", "IOSD"), 100 * TOKEN as i64);
    let info: LedgerInfo = coordinator.client(None).get("ledger").await.unwrap();
    let iosd = info.supply.iter().find(|s| s.token == "IOSD").unwrap();
    assert_eq!(iosd.circulating_micros, (100 + 10 - 9) * TOKEN as i64);

    // Once the epoch is sealed, the first transfer proves its inclusion; the export verifies
    // with that proof, and fails once a byte changes.
    let dir = tempfile::tempdir().unwrap();
    let proof_path = dir.path().join("proof.json");
    let key = coordinator.admin_key.clone();
    let seq = first.entry.seq.to_string();
    let proof = eventually(Duration::from_secs(20), || async {
        let (ok, stdout, _) = cli(&coordinator, &key, &["ledger", "proof", &seq]);
        ok.then_some(stdout)
    })
    .await
    .expect("the first epoch is sealed and its entry proven");
    std::fs::write(&proof_path, proof).unwrap();
    let export = dir.path().join("ledger.jsonl");
    let (ok, _, stderr) = cli(
        &coordinator,
        &key,
        &["ledger", "export", export.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = offline(&[
        "ledger",
        "verify",
        export.to_str().unwrap(),
        "--proof",
        proof_path.to_str().unwrap(),
        "--key",
        &info.public_key,
    ]);
    assert!(ok && stdout.starts_with("valid:"), "{stdout} {stderr}");
    let text = std::fs::read_to_string(&export).unwrap();
    let tampered = text.replacen("bank:DE89", "bank:DE88", 1);
    assert_ne!(tampered, text);
    std::fs::write(&export, tampered).unwrap();
    let (ok, _, stderr) = offline(&["ledger", "verify", export.to_str().unwrap()]);
    assert!(!ok && stderr.contains("invalid"), "{stderr}");
}
on_both_databases!(money_moves_once_and_never_overdraws);

async fn stake_unstake_slash_and_vote(db: Db) {
    let coordinator = Coordinator::start(db, &LEDGER_FLAGS).await;
    let supplier_key = coordinator.account("sup", &[Role::Supplier]).await;
    let supplier = coordinator.client(Some(&supplier_key));
    let supplier_id = supplier.get::<Me>("me").await.unwrap().account.id;
    let renter = coordinator.client(Some(&coordinator.account("ren", &[Role::Renter]).await));
    let admin = coordinator.client(Some(&coordinator.admin_key));
    faucet(&supplier, "IO", 1_000 * TOKEN, "io").await;
    let stake = |amount: u64| StakeRequest {
        amount_micros: amount * TOKEN,
    };
    let _: TransferResult = supplier
        .post_idempotent("wallet/stake", &stake(600), "s1")
        .await
        .unwrap();
    let _: TransferResult = supplier
        .post_idempotent("wallet/unstake", &stake(200), "u1")
        .await
        .unwrap();
    let wallet: WalletInfo = supplier.get("wallet").await.unwrap();
    assert_eq!(available(&wallet, "stake", "IO"), 400 * TOKEN as i64);
    assert_eq!(available(&wallet, "main", "IO"), 400 * TOKEN as i64);
    assert_eq!(wallet.holds.len(), 1);

    // A slash is held through the appeal window, then burned; an upheld appeal returns it.
    let slash = |amount: u64| SlashRequest {
        account_id: supplier_id.clone(),
        amount_micros: amount * TOKEN,
        reason: "spoofed GPU".into(),
        evidence: "prf_x".into(),
    };
    let _: TransferResult = admin
        .post_idempotent("ledger/slashes", &slash(50), "sl1")
        .await
        .unwrap();
    let returned: TransferResult = admin
        .post_idempotent("ledger/slashes", &slash(30), "sl2")
        .await
        .unwrap();
    let _: TransferResult = admin
        .post_empty(&format!("ledger/slashes/{}/return", returned.entry.id))
        .await
        .unwrap();

    // Governance: stake counted at opening; no stake, no vote.
    let create = ProposalCreate {
        title: "Lower fees".into(),
        body: "Halve the reservation fee.".into(),
        options: vec!["yes".into(), "no".into()],
        voting_period_s: 2,
    };
    let denied = renter.post::<_, ProposalInfo>("proposals", &create).await;
    assert_eq!(denied.unwrap_err().status(), Some(403));
    let two_lines = ProposalCreate {
        title: "Lower\nfees".into(),
        ..create.clone()
    };
    let refused = supplier
        .post::<_, ProposalInfo>("proposals", &two_lines)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api { status: 422, field: Some(f), .. } if f == "title"),
        "{refused}"
    );
    let proposal: ProposalInfo = supplier.post("proposals", &create).await.unwrap();
    let voted: ProposalInfo = supplier
        .post(
            &format!("proposals/{}/votes", proposal.id),
            &VoteRequest { option: 0 },
        )
        .await
        .unwrap();
    assert_eq!(voted.my_vote, Some(0));
    let no_stake = renter
        .post::<_, ProposalInfo>(
            &format!("proposals/{}/votes", proposal.id),
            &VoteRequest { option: 1 },
        )
        .await;
    assert_eq!(no_stake.unwrap_err().status(), Some(403));

    // After the cooldown, the appeal window and the vote: all resolved on the server's clock.
    let wallet = eventually(Duration::from_secs(20), || async {
        let wallet: WalletInfo = supplier.get("wallet").await.ok()?;
        wallet.holds.is_empty().then_some(wallet)
    })
    .await
    .expect("holds resolve at expiry");
    assert_eq!(available(&wallet, "main", "IO"), 600 * TOKEN as i64);
    assert_eq!(available(&wallet, "stake", "IO"), 350 * TOKEN as i64);
    let info: LedgerInfo = coordinator.client(None).get("ledger").await.unwrap();
    let io = info.supply.iter().find(|s| s.token == "IO").unwrap();
    assert_eq!(io.burned_micros, 50 * TOKEN as i64);
    assert_eq!(io.circulating_micros, 950 * TOKEN as i64);
    let closed = eventually(Duration::from_secs(20), || async {
        let p: ProposalInfo = supplier
            .get(&format!("proposals/{}", proposal.id))
            .await
            .ok()?;
        (p.state == "closed").then_some(p)
    })
    .await
    .expect("the proposal closes with a tally");
    assert_eq!(closed.winner, Some(0));
    // Weight is the stake when it opened: 600 less the 200 unstaking and the 50 slashed.
    assert_eq!(closed.option_weights_micros, Some(vec![350 * TOKEN, 0]));
    assert!(closed.tally_seq.is_some());
}
on_both_databases!(stake_unstake_slash_and_vote);

/// A staked supplier's proven device earns each epoch's whole emission, to the base unit.
async fn block_rewards_pay_each_epoch_exactly(db: Db) {
    let coordinator = Coordinator::start(
        db,
        &[
            "--faucet",
            "--ledger-epoch-ms",
            "1000",
            "--allow-simulated-devices",
        ],
    )
    .await;
    let supplier_key = coordinator.account("sup", &[Role::Supplier]).await;
    let supplier = coordinator.client(Some(&supplier_key));
    faucet(&supplier, "IO", 5_000 * TOKEN, "io").await;
    let _: TransferResult = supplier
        .post_idempotent(
            "wallet/stake",
            &StakeRequest {
                amount_micros: 2_000 * TOKEN,
            },
            "s",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier_key).await;
    let _worker = coordinator.worker(dir.path(), Some(&token), "H100x1");
    eventually(Duration::from_secs(30), || async {
        let page: Page<Device> = supplier.get("devices").await.ok()?;
        page.items
            .iter()
            .any(|d| d.state == DeviceState::Idle)
            .then_some(())
    })
    .await
    .expect("the device proves and goes idle");
    let rewards = eventually(Duration::from_secs(20), || async {
        let history: Vec<EntryInfo> = supplier.get("wallet/history?limit=500").await.ok()?;
        let rewards: Vec<EntryInfo> = history.into_iter().filter(|e| e.kind == "reward").collect();
        (rewards.len() >= 2).then_some(rewards)
    })
    .await
    .expect("two epochs of rewards");
    let public = coordinator.client(None);
    for reward in &rewards {
        // reward-EPOCH-DEVICE; the epoch's record says what was emitted and paid.
        let epoch = reward.id.split('-').nth(1).unwrap();
        let record: flotilla_ledger::InclusionProof =
            eventually(Duration::from_secs(20), || async {
                public
                    .get(&format!("ledger/entries/rewards-{epoch}/proof"))
                    .await
                    .ok()
            })
            .await
            .expect("the epoch's record is sealed");
        let flotilla_ledger::Effect::Record { body } = &record.entry.effect else {
            panic!("a rewards record");
        };
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["paid_micros"], body["emission_micros"]);
        assert_eq!(body["paid_micros"].as_u64(), Some(reward.amount_micros));
        assert!(reward.amount_micros > 0);
    }
}
on_both_databases!(block_rewards_pay_each_epoch_exactly);

/// `kill -9` in the middle of a stream of transfers: every acknowledged transfer is still
/// there after restart (a retry answers `duplicate` with the same entry) and the log verifies.
async fn committed_transfers_survive_kill_9(db: Db) {
    let coordinator = Coordinator::start(db, &LEDGER_FLAGS).await;
    let key = coordinator.account("alice", &[Role::Renter]).await;
    let bob = coordinator.account("bob", &[Role::Renter]).await;
    let alice = coordinator.client(Some(&key));
    let bob_id = coordinator
        .client(Some(&bob))
        .get::<Me>("me")
        .await
        .unwrap()
        .account
        .id;
    faucet(&alice, "IOSD", 1_000 * TOKEN, "fund").await;
    let stream = {
        let alice = alice.clone();
        let bob_id = bob_id.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..100_000u64 {
                let request = TransferRequest {
                    to: bob_id.clone(),
                    token: "IOSD".into(),
                    amount_micros: 1 + i % 7,
                    reference: format!("t{i}"),
                };
                match alice
                    .post_idempotent::<_, TransferResult>(
                        "wallet/transfers",
                        &request,
                        &format!("k{i}"),
                    )
                    .await
                {
                    Ok(result) => acknowledged.push((i, request, result.entry.seq)),
                    Err(_) => return acknowledged,
                }
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let coordinator = coordinator.restart(&LEDGER_FLAGS);
    let acknowledged = stream.await.unwrap();
    assert!(
        acknowledged.len() > 10,
        "only {} transfers went through",
        acknowledged.len()
    );
    let alice = coordinator.client(Some(&key));
    for (i, request, seq) in acknowledged.iter().step_by(7) {
        let again: TransferResult = alice
            .post_idempotent("wallet/transfers", request, &format!("k{i}"))
            .await
            .unwrap();
        assert_eq!(
            (again.status.as_str(), again.entry.seq),
            ("duplicate", *seq)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("ledger.jsonl");
    let (ok, _, stderr) = cli(
        &coordinator,
        &key,
        &["ledger", "export", export.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = offline(&["ledger", "verify", export.to_str().unwrap()]);
    assert!(ok, "{stdout} {stderr}");
}
on_both_databases!(committed_transfers_survive_kill_9);

/// Sums the IOSD the renter, the supplier and the treasury hold.
async fn iosd_of(client: &Client) -> i64 {
    let wallet: WalletInfo = client.get("wallet").await.unwrap();
    available(&wallet, "main", "IOSD")
}

/// A paid rental of one hour (100 ms minutes here) at 6 IOSD/h: the escrow holds the actual
/// cost, each minute up pays the supplier 99,750 and the treasury 2,500, minutes down pay
/// nothing, and whatever is left returns to the renter. `kill_worker` kills the supplier's
/// machine a second into the rental.
/// A coordinator with one supplier's H100 priced at 6 IOSD/h, and a renter holding 100 IOSD.
struct RentalMarket {
    coordinator: Coordinator,
    renter: Client,
    supplier: Client,
    worker: crate::harness::Proc,
    _dir: tempfile::TempDir,
}

async fn rental_market(db: Db, extra: &[&str]) -> RentalMarket {
    let mut flags = vec![
        "--faucet",
        "--allow-simulated-devices",
        "--ledger-epoch-ms",
        "1000",
        "--schedule-interval-ms",
        "100",
    ];
    flags.extend_from_slice(extra);
    let coordinator = Coordinator::start(db, &flags).await;
    let supplier_key = coordinator.account("sup", &[Role::Supplier]).await;
    let renter = coordinator.client(Some(&coordinator.account("ren", &[Role::Renter]).await));
    let supplier = coordinator.client(Some(&supplier_key));
    let dir = tempfile::tempdir().unwrap();
    let token = coordinator.token(&supplier_key).await;
    let worker = coordinator.worker(dir.path(), Some(&token), "H100x1");
    crate::market::price_idle_devices(&coordinator, &supplier_key, 1, 6 * TOKEN).await;
    faucet(&renter, "IOSD", 100 * TOKEN, "f").await;
    RentalMarket {
        coordinator,
        renter,
        supplier,
        worker,
        _dir: dir,
    }
}

async fn paid_rental(db: Db, kill_worker: bool) -> (i64, i64) {
    let RentalMarket {
        coordinator,
        renter,
        supplier,
        mut worker,
        _dir,
    } = rental_market(db, &["--rent-minute-ms", "100"]).await;

    let too_big = flotilla_proto::api::RequestSpec {
        hours: Some(100),
        budget_per_hour: Some(10 * TOKEN),
        ..crate::market::one_node(1, "")
    };
    let refused = renter
        .post::<_, flotilla_proto::api::RequestInfo>("requests", &too_big)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    let free = flotilla_proto::api::RequestSpec {
        hours: Some(1),
        budget_per_hour: Some(0),
        ..crate::market::one_node(1, "")
    };
    let refused = renter
        .post::<_, flotilla_proto::api::RequestInfo>("requests", &free)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api { status: 422, field: Some(f), .. } if f == "budget_per_hour"),
        "{refused}"
    );
    let spec = flotilla_proto::api::RequestSpec {
        hours: Some(1),
        budget_per_hour: Some(10 * TOKEN),
        ..crate::market::one_node(1, "")
    };
    let created: flotilla_proto::api::RequestInfo = renter.post("requests", &spec).await.unwrap();
    let placed = crate::market::until_placed(&renter, &created.id).await;
    // 6 IOSD of rent and 60 x 2,250 of renter's fee moved into escrow; the rest of the hold
    // (10 IOSD budget) came back.
    assert!(placed.escrow_micros.unwrap() <= 6_135_000);
    if kill_worker {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        worker.kill();
    }
    let ended = eventually(Duration::from_secs(30), || async {
        let info: flotilla_proto::api::RequestInfo =
            renter.get(&format!("requests/{}", created.id)).await.ok()?;
        (info.state == "completed" && info.escrow_micros == Some(0)).then_some(info)
    })
    .await
    .expect("the rental runs its hour and returns what is left");
    assert_eq!(ended.metered_minutes, Some(60));
    let (renter_left, supplier_got) = (iosd_of(&renter).await, iosd_of(&supplier).await);
    let info: LedgerInfo = coordinator.client(None).get("ledger").await.unwrap();
    let iosd = info.supply.iter().find(|s| s.token == "IOSD").unwrap();
    assert_eq!(iosd.circulating_micros, 100 * TOKEN as i64);
    // Whole minutes only: the supplier's share of each, and the renter paid the same minutes.
    assert_eq!(supplier_got % 99_750, 0, "{supplier_got}");
    let minutes = supplier_got / 99_750;
    assert_eq!(renter_left, 100 * TOKEN as i64 - minutes * 102_250);
    (minutes, renter_left)
}

async fn a_paid_rental_pays_every_minute_up(db: Db) {
    let (minutes, _) = paid_rental(db, false).await;
    assert_eq!(minutes, 60);
}
on_both_databases!(a_paid_rental_pays_every_minute_up);

async fn a_paid_rental_does_not_charge_minutes_down(db: Db) {
    let (minutes, _) = paid_rental(db, true).await;
    assert!((1..60).contains(&minutes), "{minutes} minutes paid");
}
on_both_databases!(a_paid_rental_does_not_charge_minutes_down);

/// A paid request that ended with money still in its escrow (a cancel whose refund was lost,
/// simulated by ending it in the database) gets its escrow back from the reconciler.
async fn the_reconciler_returns_escrow_left_behind(db: Db) {
    let market = rental_market(db, &[]).await;
    let (coordinator, renter) = (&market.coordinator, &market.renter);
    let spec = flotilla_proto::api::RequestSpec {
        hours: Some(2),
        budget_per_hour: Some(6 * TOKEN),
        ..crate::market::one_node(1, "")
    };
    let created: flotilla_proto::api::RequestInfo = renter.post("requests", &spec).await.unwrap();
    crate::market::until_placed(renter, &created.id).await;
    // The escrow is funded by the ledger writer's next batch after the placement is recorded.
    let funded = eventually(Duration::from_secs(10), || async {
        let info: flotilla_proto::api::RequestInfo =
            renter.get(&format!("requests/{}", created.id)).await.ok()?;
        (info.escrow_micros? > 12 * TOKEN as i64).then_some(())
    })
    .await;
    assert!(
        funded.is_some(),
        "the placed request's escrow holds its cost"
    );
    let store = flotilla_store::Store::open(&coordinator.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE requests SET state = 'cancelled', ended_at_ms = $1 WHERE id = $2")
        .bind(flotilla_proto::time::now_unix_ms())
        .bind(&created.id)
        .execute(store.pool())
        .await
        .unwrap();
    let ended = eventually(Duration::from_secs(20), || async {
        let info: flotilla_proto::api::RequestInfo =
            renter.get(&format!("requests/{}", created.id)).await.ok()?;
        (info.escrow_micros == Some(0)).then_some(info)
    })
    .await
    .expect("the reconciler empties the escrow");
    assert_eq!(ended.state, "cancelled");
    // Nothing ran a whole rent minute: everything came back.
    assert_eq!(iosd_of(renter).await, 100 * TOKEN as i64);
}
on_both_databases!(the_reconciler_returns_escrow_left_behind);
