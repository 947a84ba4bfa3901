-- Clusters: a request (same id) plus the work its nodes run; each node's runs; their output.
CREATE TABLE clusters (
    id TEXT PRIMARY KEY REFERENCES requests (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- The spec as deployed (JSON), secret values removed.
    spec TEXT NOT NULL,
    -- Secret environment values (JSON object): sent to nodes only, never answered.
    secret_env TEXT NOT NULL,
    -- deploying, running, completed, failed, terminated, expired.
    state TEXT NOT NULL,
    ended_because TEXT NOT NULL,
    -- Hash of the caller's Idempotency-Key, or NULL.
    idempotency_key TEXT,
    created_at_ms BIGINT NOT NULL,
    running_at_ms BIGINT,
    ended_at_ms BIGINT
);
CREATE INDEX clusters_account ON clusters (account_id, id);
CREATE UNIQUE INDEX clusters_idempotency ON clusters (account_id, idempotency_key);
CREATE INDEX clusters_state ON clusters (state);

-- One attempt of one node: the unit a worker runs. A new attempt (restart, replacement) is a
-- new row; the old one's reports are refused once it is not the worker's live run.
CREATE TABLE node_runs (
    id TEXT PRIMARY KEY,
    cluster_id TEXT NOT NULL REFERENCES clusters (id),
    node_rank BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    worker_id TEXT NOT NULL,
    -- The placement node (placements.node_index) this run holds.
    node_index BIGINT NOT NULL,
    -- assigned, running, exited, failed, stopped, lost.
    state TEXT NOT NULL,
    exit_code BIGINT,
    reason TEXT NOT NULL,
    log_bytes BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    ended_at_ms BIGINT
);
CREATE UNIQUE INDEX node_runs_cluster ON node_runs (cluster_id, node_rank, attempt);
CREATE INDEX node_runs_worker ON node_runs (worker_id, state);

-- AUTO_KEY: see `Backend::dialect`.
CREATE TABLE node_logs (
    seq AUTO_KEY,
    cluster_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    node_rank BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    stream TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX node_logs_cluster ON node_logs (cluster_id, seq);
CREATE INDEX node_logs_run ON node_logs (run_id, seq);

-- A renter's rating of one node's supplier, after the cluster ended; one per rank.
CREATE TABLE node_ratings (
    cluster_id TEXT NOT NULL REFERENCES clusters (id),
    node_rank BIGINT NOT NULL,
    worker_id TEXT NOT NULL,
    stars BIGINT NOT NULL,
    comment TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, node_rank)
);
CREATE INDEX node_ratings_worker ON node_ratings (worker_id);

-- The latest checkpoint of each node of a cluster (a tar.gz of its checkpoint directory),
-- kept while the cluster lives. BYTES_TYPE: see `Backend::dialect`.
CREATE TABLE checkpoints (
    cluster_id TEXT NOT NULL REFERENCES clusters (id),
    node_rank BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    data BYTES_TYPE NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, node_rank)
);

-- Whether a worker said at its hello that it runs container images (1) or not (0).
ALTER TABLE workers ADD COLUMN containers BIGINT NOT NULL DEFAULT 0;
