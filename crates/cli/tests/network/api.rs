//! The HTTP API: ownership (BOLA), API keys, bad input, audit log, OpenAPI and metrics.

use std::time::Duration;

use flotilla_proto::api::{
    ApiKeyInfo, AuditEvent, CreateApiKeyRequest, CreatedApiKey, Device, EnrollmentTokenInfo, Me,
    Page, Role, Scope, Worker,
};
use flotilla_proto::device::DeviceState;
use flotilla_proto::id::secret_hash;
use sqlx::Row;

use crate::harness::{Coordinator, Db, eventually};
use crate::on_both_databases;

async fn supplier_b_cannot_touch_supplier_a_objects(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier_a = coordinator.account("supplier-a", &[Role::Supplier]).await;
    let supplier_b = coordinator.account("supplier-b", &[Role::Supplier]).await;
    let dir = tempfile::tempdir().unwrap();
    let _worker = coordinator.worker(
        dir.path(),
        Some(&coordinator.token(&supplier_a).await),
        "RTX 4090x2",
    );
    let a = coordinator.client(Some(&supplier_a));
    let devices = eventually(Duration::from_secs(20), || async {
        let page: Page<Device> = a.get("devices").await.ok()?;
        (page.items.len() == 2 && page.items.iter().all(|d| d.state == DeviceState::Idle))
            .then_some(page.items)
    })
    .await
    .expect("supplier a's devices appear");
    let device_id = devices[0].id.clone();
    let worker_id = devices[0].worker_id.clone();
    let tokens: Page<EnrollmentTokenInfo> = a.get("enrollment-tokens").await.unwrap();
    let token_id = tokens.items[0].id.clone();
    let keys: Page<ApiKeyInfo> = a.get("api-keys").await.unwrap();
    let key_id = keys.items[0].id.clone();

    let b = coordinator.client(Some(&supplier_b));
    let b_devices: Page<Device> = b.get("devices").await.unwrap();
    let b_workers: Page<Worker> = b.get("workers").await.unwrap();
    assert!(
        b_devices.items.is_empty() && b_workers.items.is_empty(),
        "lists show only the caller's objects"
    );
    let gets = [
        format!("devices/{device_id}"),
        format!("workers/{worker_id}"),
        format!("enrollment-tokens/{token_id}"),
        "devices/dev_aaaaaaaaaaaaaaaaaaaa".to_owned(),
        "devices/not-an-id".to_owned(),
    ];
    for path in &gets {
        let error = b.get::<serde_json::Value>(path).await.unwrap_err();
        assert_eq!(error.status(), Some(404), "GET {path}: {error}");
    }
    let rename = serde_json::json!({ "name": "stolen" });
    let posts = [
        (format!("devices/{device_id}/rename"), true),
        (format!("devices/{device_id}/pause"), false),
        (format!("devices/{device_id}/resume"), false),
        (format!("devices/{device_id}/remove"), false),
        (format!("workers/{worker_id}/rename"), true),
        (format!("workers/{worker_id}/pause"), false),
        (format!("workers/{worker_id}/resume"), false),
        (format!("workers/{worker_id}/remove"), false),
        (format!("enrollment-tokens/{token_id}/revoke"), false),
        (format!("api-keys/{key_id}/revoke"), false),
    ];
    for (path, with_name) in &posts {
        let result = if *with_name {
            b.post::<_, serde_json::Value>(path, &rename).await
        } else {
            b.post_empty::<serde_json::Value>(path).await
        };
        let error = result.unwrap_err();
        assert_eq!(error.status(), Some(404), "POST {path}: {error}");
    }
    // Nothing changed for supplier a.
    let after: Page<Device> = a.get("devices").await.unwrap();
    assert_eq!(after.items.len(), 2);
    assert!(
        after
            .items
            .iter()
            .all(|d| d.state == DeviceState::Idle && d.name != "stolen")
    );
    let me: Me = a.get("me").await.unwrap();
    assert_eq!(me.key_id, key_id, "a's key still works");

    // The owner can do all of it.
    let paused: Device = a
        .post_empty(&format!("devices/{device_id}/pause"))
        .await
        .unwrap();
    assert_eq!(paused.state, DeviceState::Paused);
    let again = a
        .post_empty::<Device>(&format!("devices/{device_id}/pause"))
        .await
        .unwrap();
    assert_eq!(
        again.state,
        DeviceState::Paused,
        "pausing twice is harmless"
    );
    let resumed: Device = a
        .post_empty(&format!("devices/{device_id}/resume"))
        .await
        .unwrap();
    assert_eq!(resumed.state, DeviceState::Idle);
    let renamed: Device = a
        .post(&format!("devices/{device_id}/rename"), &rename)
        .await
        .unwrap();
    assert_eq!(renamed.name, "stolen");
    let _: Device = a
        .post_empty(&format!("devices/{device_id}/remove"))
        .await
        .unwrap();
    let left: Page<Device> = a.get("devices").await.unwrap();
    assert_eq!(left.items.len(), 1);
    // A renter cannot use supplier endpoints at all.
    let renter = coordinator.account("renter", &[Role::Renter]).await;
    let forbidden = coordinator
        .client(Some(&renter))
        .get::<serde_json::Value>("devices")
        .await
        .unwrap_err();
    assert_eq!(forbidden.status(), Some(403));
}
on_both_databases!(supplier_b_cannot_touch_supplier_a_objects);

async fn api_keys_are_hashed_scoped_revocable_and_expire(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let owner = coordinator
        .account("owner", &[Role::Supplier, Role::Renter])
        .await;
    let client = coordinator.client(Some(&owner));
    let read_only: CreatedApiKey = client
        .post(
            "api-keys",
            &CreateApiKeyRequest {
                name: "ro".into(),
                scopes: vec![Scope::Read],
                expires_in_s: None,
            },
        )
        .await
        .unwrap();
    let short: CreatedApiKey = client
        .post(
            "api-keys",
            &CreateApiKeyRequest {
                name: "short".into(),
                scopes: vec![Scope::Read, Scope::Write],
                expires_in_s: Some(1),
            },
        )
        .await
        .unwrap();
    assert!(read_only.secret.starts_with("flt_"));

    // Stored hashed: no column of any key row holds a secret, and the hash is there.
    let store = flotilla_store::Store::open(&coordinator.database_url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT id, prefix, secret_hash, name, scopes FROM api_keys")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let hashes: Vec<String> = rows
        .iter()
        .map(|r| r.get::<String, _>("secret_hash"))
        .collect();
    for secret in [&owner, &read_only.secret, &short.secret] {
        assert!(hashes.contains(&secret_hash(secret)));
        for row in &rows {
            for column in ["id", "prefix", "secret_hash", "name", "scopes"] {
                let value: String = row.get(column);
                assert!(
                    !value.contains(&secret[4..]),
                    "column {column} holds a secret"
                );
            }
        }
    }
    let audit = sqlx::query("SELECT detail FROM audit_events")
        .fetch_all(store.pool())
        .await
        .unwrap();
    for row in &audit {
        let detail: String = row.get("detail");
        for secret in [&owner, &read_only.secret, &short.secret] {
            assert!(
                !detail.contains(&secret[4..]),
                "audit detail holds a secret: {detail}"
            );
        }
    }
    store.close().await;

    // Read scope cannot write.
    let ro = coordinator.client(Some(&read_only.secret));
    let _: Me = ro.get("me").await.unwrap();
    let denied = ro
        .post::<_, serde_json::Value>(
            "api-keys",
            &CreateApiKeyRequest {
                name: "x".into(),
                scopes: vec![Scope::Read],
                expires_in_s: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(403));

    // A key never outlives the key that made it.
    let child: CreatedApiKey = coordinator
        .client(Some(&short.secret))
        .post(
            "api-keys",
            &CreateApiKeyRequest {
                name: "child".into(),
                scopes: vec![Scope::Read],
                expires_in_s: None,
            },
        )
        .await
        .unwrap();
    assert!(
        child.key.expires_at.is_some(),
        "an expiring key cannot mint a permanent one"
    );

    // Revoked keys are refused.
    let _: ApiKeyInfo = client
        .post_empty(&format!("api-keys/{}/revoke", read_only.key.id))
        .await
        .unwrap();
    assert_eq!(ro.get::<Me>("me").await.unwrap_err().status(), Some(401));

    // Expired keys are refused.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        coordinator
            .client(Some(&short.secret))
            .get::<Me>("me")
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    let child_after = coordinator
        .client(Some(&child.secret))
        .get::<Me>("me")
        .await
        .unwrap_err();
    assert_eq!(child_after.status(), Some(401));
    // No key, a malformed key, a made-up key.
    for key in [
        None,
        Some("nope"),
        Some("flt_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ] {
        assert_eq!(
            coordinator
                .client(key)
                .get::<Me>("me")
                .await
                .unwrap_err()
                .status(),
            Some(401)
        );
    }
    // Only an admin creates admins.
    let request = serde_json::json!({ "name": "evil", "roles": ["admin"] });
    let error = coordinator
        .client(None)
        .post::<_, serde_json::Value>("accounts", &request)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403));
    let admin = coordinator.client(Some(&coordinator.admin_key));
    let _: serde_json::Value = admin.post("accounts", &request).await.unwrap();
}
on_both_databases!(api_keys_are_hashed_scoped_revocable_and_expire);

async fn bad_input_gets_a_json_error_naming_the_field(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let supplier = coordinator.account("supplier", &[Role::Supplier]).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/api/v1/{path}", coordinator.url);
    let cases: Vec<(reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        (
            http.post(url("accounts"))
                .json(&serde_json::json!({ "name": "x", "roles": ["renter"], "admin": true })),
            400,
            Some("admin"),
        ),
        (
            http.post(url("accounts"))
                .json(&serde_json::json!({ "name": "", "roles": ["renter"] })),
            422,
            Some("name"),
        ),
        (
            http.post(url("accounts"))
                .json(&serde_json::json!({ "name": "x", "roles": [] })),
            422,
            Some("roles"),
        ),
        (
            http.post(url("accounts"))
                .json(&serde_json::json!({ "name": "x", "roles": ["god"] })),
            400,
            Some("roles[0]"),
        ),
        (
            http.post(url("accounts"))
                .body("{\"name\":")
                .header("content-type", "application/json"),
            400,
            Some("name"),
        ),
        (
            http.post(url("accounts"))
                .body("name=x")
                .header("content-type", "text/plain"),
            400,
            None,
        ),
        (
            http.post(url("accounts"))
                .body(vec![b'a'; 100_000])
                .header("content-type", "application/json"),
            413,
            None,
        ),
        (
            http.get(url("devices?limit=0")).bearer_auth(&supplier),
            422,
            Some("limit"),
        ),
        (
            http.get(url("devices?limit=abc")).bearer_auth(&supplier),
            400,
            None,
        ),
        (
            http.get(url("devices?cursor=zz")).bearer_auth(&supplier),
            422,
            Some("cursor"),
        ),
        (
            http.get(url("devices?bogus=1")).bearer_auth(&supplier),
            400,
            None,
        ),
        (
            http.post(url("enrollment-tokens"))
                .bearer_auth(&supplier)
                .json(&serde_json::json!({ "expires_in_s": 0 })),
            422,
            Some("expires_in_s"),
        ),
        (http.get(url("no-such-route")), 404, None),
        (
            http.delete(url("devices")).bearer_auth(&supplier),
            405,
            None,
        ),
        (http.get(url("workers/connect")), 400, None),
        (
            http.get(url("devices/%FF")).bearer_auth(&supplier),
            404,
            None,
        ),
    ];
    for (request, status, field) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{response:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        let error = &body["error"];
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{body}"
        );
        assert_eq!(error["field"].as_str(), field, "{body}");
    }
    let accounts: Page<ApiKeyInfo> = coordinator
        .client(Some(&supplier))
        .get("api-keys")
        .await
        .unwrap();
    assert_eq!(accounts.items.len(), 1, "bad requests stored nothing");
}
on_both_databases!(bad_input_gets_a_json_error_naming_the_field);

async fn lists_paginate_with_opaque_cursors(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let supplier = coordinator.account("supplier", &[Role::Supplier]).await;
    for _ in 0..5 {
        coordinator.token(&supplier).await;
    }
    let client = coordinator.client(Some(&supplier));
    let mut seen = Vec::new();
    let mut path = "enrollment-tokens?limit=2".to_owned();
    loop {
        let page: Page<EnrollmentTokenInfo> = client.get(&path).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|t| t.id));
        match page.next_cursor {
            Some(cursor) => path = format!("enrollment-tokens?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (5, 5));
}
on_both_databases!(lists_paginate_with_opaque_cursors);

async fn audit_log_records_actions_for_admins_only(db: Db) {
    let coordinator = Coordinator::start(db, &["--allow-simulated-devices"]).await;
    let supplier = coordinator.account("supplier", &[Role::Supplier]).await;
    let client = coordinator.client(Some(&supplier));
    let _: Me = client.post_empty("login").await.unwrap();
    let created: CreatedApiKey = client
        .post(
            "api-keys",
            &CreateApiKeyRequest {
                name: "k".into(),
                scopes: vec![Scope::Read],
                expires_in_s: None,
            },
        )
        .await
        .unwrap();
    let _: ApiKeyInfo = client
        .post_empty(&format!("api-keys/{}/revoke", created.key.id))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _worker = coordinator.worker(
        dir.path(),
        Some(&coordinator.token(&supplier).await),
        "H100",
    );
    let device = eventually(Duration::from_secs(20), || async {
        let page: Page<Device> = client.get("devices").await.ok()?;
        page.items.into_iter().next()
    })
    .await
    .unwrap();
    let _: Device = client
        .post_empty(&format!("devices/{}/remove", device.id))
        .await
        .unwrap();

    assert_eq!(
        client
            .get::<serde_json::Value>("audit-events")
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );
    let admin = coordinator.client(Some(&coordinator.admin_key));
    let events: Page<AuditEvent> = admin.get("audit-events?limit=100").await.unwrap();
    let actions: Vec<&str> = events.items.iter().map(|e| e.action.as_str()).collect();
    for wanted in [
        "account.create",
        "login",
        "api_key.create",
        "api_key.revoke",
        "enrollment_token.create",
        "worker.enroll",
        "device.remove",
    ] {
        assert!(
            actions.contains(&wanted),
            "{wanted} missing from {actions:?}"
        );
    }
    let removal = events
        .items
        .iter()
        .find(|e| e.action == "device.remove")
        .unwrap();
    assert_eq!(removal.target_id.as_deref(), Some(device.id.as_str()));
    assert_eq!(removal.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(removal.actor_account_id.is_some());
    assert!(
        events.items.windows(2).all(|w| w[0].at >= w[1].at),
        "newest first"
    );
}
on_both_databases!(audit_log_records_actions_for_admins_only);

async fn health_openapi_and_metrics_are_served(db: Db) {
    let coordinator = Coordinator::start(db, &[]).await;
    let client = coordinator.client(None);
    let health: flotilla_proto::api::Health = client.get("health").await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(
        health.database,
        if db == Db::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    let openapi: serde_json::Value = client.get("openapi.json").await.unwrap();
    let paths = openapi["paths"].as_object().unwrap();
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{id}/pause",
        "/api/v1/workers/enroll",
        "/api/v1/enrollment-tokens",
        "/api/v1/audit-events",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(openapi["components"]["schemas"]["Device"].is_object());
    let metrics = reqwest::get(format!("{}/metrics", coordinator.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "flotilla_api_requests_total",
        "flotilla_worker_heartbeats_total",
        "flotilla_devices",
        "flotilla_api_request_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
on_both_databases!(health_openapi_and_metrics_are_served);

/// A client that connects and never finishes a request's head, or never sends one, is cut off
/// after `--http-header-read-timeout-ms`; others are served meanwhile.
async fn a_client_that_never_finishes_its_request_head_is_cut_off(db: Db) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let coordinator = Coordinator::start(db, &["--http-header-read-timeout-ms", "300"]).await;
    let address = coordinator.url.strip_prefix("http://").unwrap();
    let mut dribbling = tokio::net::TcpStream::connect(address).await.unwrap();
    dribbling
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let health: serde_json::Value = coordinator.client(None).get("health").await.unwrap();
    assert!(health.is_object(), "{health}");
    for (name, connection) in [("dribbling", &mut dribbling), ("silent", &mut silent)] {
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), connection.read_to_end(&mut answer))
                .await;
        assert!(closed.is_ok(), "the {name} connection is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("200 OK"), "{name}: {answer}");
    }
    // A bound outside its range is refused at start.
    let refused = std::process::Command::new(crate::harness::BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--http-header-read-timeout-ms", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("http_header_read_timeout_ms"), "{stderr}");
}

on_both_databases!(a_client_that_never_finishes_its_request_head_is_cut_off);
