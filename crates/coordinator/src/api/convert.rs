//! Stored rows to API bodies: milliseconds become RFC 3339, live state joins stored state.

use flotilla_proto::api::{
    Account, ApiKeyInfo, AuditEvent, Device, EnrollmentTokenInfo, EnrollmentTokenState,
    TelemetryPoint, TelemetrySnapshot, Worker, WorkerState,
};
use flotilla_proto::time::{rfc3339, rfc3339_opt};
use flotilla_store::{
    AccountRow, ApiKeyRow, AuditEventRow, DeviceRow, EnrollmentTokenRow, TelemetryBucketRow,
    WorkerRow,
};

use crate::fleet::Fleet;
use crate::now_ms;

pub fn account(row: AccountRow) -> Account {
    Account {
        id: row.id,
        name: row.name,
        roles: row.roles,
        created_at: rfc3339(row.created_at_ms),
    }
}

pub fn api_key(row: ApiKeyRow) -> ApiKeyInfo {
    ApiKeyInfo {
        id: row.id,
        name: row.name,
        prefix: row.prefix,
        scopes: row.scopes,
        created_at: rfc3339(row.created_at_ms),
        expires_at: rfc3339_opt(row.expires_at_ms),
        revoked_at: rfc3339_opt(row.revoked_at_ms),
        last_used_at: rfc3339_opt(row.last_used_at_ms),
    }
}

pub fn enrollment_token(row: EnrollmentTokenRow) -> EnrollmentTokenInfo {
    let state = if row.revoked_at_ms.is_some() {
        EnrollmentTokenState::Revoked
    } else if row.used_at_ms.is_some() {
        EnrollmentTokenState::Used
    } else if row.expires_at_ms <= now_ms() {
        EnrollmentTokenState::Expired
    } else {
        EnrollmentTokenState::Active
    };
    EnrollmentTokenInfo {
        id: row.id,
        name: row.name,
        state,
        created_at: rfc3339(row.created_at_ms),
        expires_at: rfc3339(row.expires_at_ms),
        used_at: rfc3339_opt(row.used_at_ms),
        used_by_worker_id: row.used_by_worker_id,
        revoked_at: rfc3339_opt(row.revoked_at_ms),
    }
}

pub fn worker(row: WorkerRow, fleet: &Fleet) -> Worker {
    let (connected, live_last_seen_ms) = fleet.worker_view(&row.id);
    let last_seen_ms = live_last_seen_ms
        .filter(|_| connected)
        .or(row.last_seen_at_ms);
    Worker {
        id: row.id,
        name: row.name,
        hostname: row.hostname,
        public_key: row.public_key,
        state: if row.paused {
            WorkerState::Paused
        } else {
            WorkerState::Active
        },
        connected,
        agent_version: row.agent_version,
        device_count: row.device_count,
        created_at: rfc3339(row.created_at_ms),
        last_seen_at: rfc3339_opt(last_seen_ms),
        region: row.region,
        country: row.country,
        tier: row.tier,
    }
}

pub fn device(row: DeviceRow, fleet: &Fleet) -> Device {
    let live = fleet.device_view(&row.id);
    let lifecycle = fleet.lifecycle(&row.id);
    let telemetry = live
        .as_ref()
        .and_then(|view| view.latest.as_ref())
        .map(|(at_ms, sample)| TelemetrySnapshot {
            at: rfc3339(*at_ms),
            utilization_pct: sample.utilization_pct,
            memory_used_bytes: sample.memory_used_bytes,
            temperature_c: sample.temperature_c,
            power_w: sample.power_w,
            net_rx_bytes: sample.net_rx_bytes,
            net_tx_bytes: sample.net_tx_bytes,
        });
    let last_seen_ms = live
        .map(|view| view.worker_last_seen_ms)
        .or(row.last_seen_at_ms);
    Device {
        id: row.id,
        worker_id: row.worker_id,
        name: row.name,
        kind: row.hardware.kind,
        model: row.hardware.model.clone(),
        memory_bytes: row.hardware.memory_bytes,
        simulated: row.hardware.simulated,
        state: lifecycle.map_or(row.state, |l| l.state),
        state_changed_at: rfc3339(row.state_changed_at_ms),
        price_per_hour: row.price_per_hour,
        hardware: row.hardware,
        created_at: rfc3339(row.created_at_ms),
        last_seen_at: rfc3339_opt(last_seen_ms),
        telemetry,
        // Filled from the store by the handlers that show it (`devices::with_traffic`).
        tunnel: Default::default(),
    }
}

pub fn telemetry_point(row: TelemetryBucketRow) -> TelemetryPoint {
    TelemetryPoint {
        bucket_start: rfc3339(row.bucket_start_ms),
        bucket_s: row.bucket_s,
        samples: row.samples,
        utilization_pct_avg: row.utilization_pct,
        memory_used_bytes_avg: row.memory_used_bytes,
        temperature_c_max: row.temperature_c,
        power_w_avg: row.power_w,
        net_rx_bytes: row.net_rx_bytes,
        net_tx_bytes: row.net_tx_bytes,
    }
}

pub fn audit_event(row: AuditEventRow) -> AuditEvent {
    AuditEvent {
        id: row.id,
        at: rfc3339(row.at_ms),
        actor_account_id: row.actor_account_id,
        actor_key_id: row.actor_key_id,
        source_ip: row.source_ip,
        action: row.action,
        target_id: row.target_id,
        detail: row.detail,
    }
}
