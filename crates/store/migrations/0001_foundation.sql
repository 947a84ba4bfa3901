-- Accounts, keys, enrollment, workers, devices, telemetry history, audit log.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are BIGINT milliseconds since the
-- Unix epoch (UTC); flags are BIGINT 0/1; lists are comma-separated TEXT.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    last_used_at_ms BIGINT
);
CREATE INDEX api_keys_account ON api_keys (account_id, id);

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT,
    used_by_worker_id TEXT,
    revoked_at_ms BIGINT
);
CREATE INDEX enrollment_tokens_account ON enrollment_tokens (account_id, id);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    public_key TEXT NOT NULL UNIQUE,
    agent_version TEXT NOT NULL,
    paused BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    last_seen_at_ms BIGINT,
    removed_at_ms BIGINT
);
CREATE INDEX workers_account ON workers (account_id, id);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    worker_id TEXT NOT NULL REFERENCES workers (id),
    hardware_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    simulated BIGINT NOT NULL,
    hardware TEXT NOT NULL,
    state TEXT NOT NULL,
    state_before_down TEXT,
    state_changed_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    last_seen_at_ms BIGINT,
    removed_at_ms BIGINT,
    UNIQUE (worker_id, hardware_id)
);
CREATE INDEX devices_account ON devices (account_id, id);
CREATE INDEX devices_state ON devices (state);

CREATE TABLE telemetry (
    device_id TEXT NOT NULL REFERENCES devices (id),
    bucket_start_ms BIGINT NOT NULL,
    bucket_s BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    utilization_pct BIGINT NOT NULL,
    memory_used_bytes BIGINT NOT NULL,
    temperature_c BIGINT,
    power_w BIGINT,
    net_rx_bytes BIGINT NOT NULL,
    net_tx_bytes BIGINT NOT NULL,
    PRIMARY KEY (device_id, bucket_start_ms)
);
CREATE INDEX telemetry_bucket ON telemetry (bucket_start_ms);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor_account_id TEXT,
    actor_key_id TEXT,
    source_ip TEXT,
    action TEXT NOT NULL,
    target_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at_ms);
