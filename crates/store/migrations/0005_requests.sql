-- Renters' requests for GPUs, and the devices each placement holds.
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    -- The request as the renter wrote it (JSON).
    spec TEXT NOT NULL,
    -- queued, placed or cancelled.
    state TEXT NOT NULL,
    -- Why a queued request waits (JSON), empty before the first pass.
    reason TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    placed_at_ms BIGINT,
    ended_at_ms BIGINT
);
CREATE INDEX requests_account ON requests (account_id, id);
CREATE INDEX requests_state ON requests (state, created_at_ms);

CREATE TABLE placements (
    request_id TEXT NOT NULL REFERENCES requests (id),
    device_id TEXT NOT NULL REFERENCES devices (id),
    worker_id TEXT NOT NULL,
    node_index BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    price_per_hour BIGINT NOT NULL,
    released_at_ms BIGINT,
    PRIMARY KEY (request_id, device_id, attempt)
);
CREATE INDEX placements_device ON placements (device_id);
