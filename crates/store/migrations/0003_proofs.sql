-- Proof-of-compute transcripts: public, kept as evidence, one row per attempt.
CREATE TABLE proofs (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id),
    account_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    class TEXT NOT NULL,
    passed BIGINT NOT NULL,
    reason TEXT NOT NULL,
    elapsed_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    transcript TEXT NOT NULL
);
CREATE INDEX proofs_device ON proofs (device_id, id);
