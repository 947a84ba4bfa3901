-- The ledger: the chain's head, every entry, balances, holds, sealed epochs, the
-- coordinator's signing key, and governance.

-- One row. Every ledger write locks it first, so writers from any number of coordinators
-- append to one chain in turn.
CREATE TABLE ledger_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
INSERT INTO ledger_head (id, seq, hash, at_ms)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

-- ROWID_KEY: see `Backend::dialect`.
CREATE TABLE ledger_entries (
    seq ROWID_KEY,
    id TEXT NOT NULL UNIQUE,
    -- Hash of the transfer as asked, to tell a retry from another transfer with the same id.
    digest TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    -- Owners of the debit and credit accounts ('' for a record), for each owner's history.
    debit_owner TEXT NOT NULL,
    credit_owner TEXT NOT NULL,
    -- The entry's canonical JSON, whose hash is `hash`.
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX ledger_entries_debit_owner ON ledger_entries (debit_owner, seq);
CREATE INDEX ledger_entries_credit_owner ON ledger_entries (credit_owner, seq);

-- KEYED_TABLE: see `Backend::dialect`.
CREATE TABLE ledger_accounts (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token TEXT NOT NULL,
    posted BIGINT NOT NULL,
    held BIGINT NOT NULL
) KEYED_TABLE;
CREATE INDEX ledger_accounts_owner ON ledger_accounts (owner);

CREATE TABLE ledger_holds (
    id TEXT PRIMARY KEY,
    -- Owner of the account the hold reserves funds of.
    debit_owner TEXT NOT NULL,
    -- The hold as JSON (accounts, amount, expiry, what expiry does, resolution).
    body TEXT NOT NULL,
    is_open BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
) KEYED_TABLE;
CREATE INDEX ledger_holds_due ON ledger_holds (is_open, expires_at_ms);
CREATE INDEX ledger_holds_owner ON ledger_holds (debit_owner, is_open);

-- An epoch of more than 2^18 entries is sealed in parts.
CREATE TABLE ledger_epochs (
    epoch BIGINT NOT NULL,
    part BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    entry_count BIGINT NOT NULL,
    -- The signed seal as JSON.
    seal TEXT NOT NULL,
    -- IO emitted for the epoch's block rewards, once paid (null before).
    rewards_paid_micros BIGINT,
    PRIMARY KEY (epoch, part)
);
CREATE INDEX ledger_epochs_first_seq ON ledger_epochs (first_seq);

-- The coordinator's ledger signing key (ed25519), shared by every coordinator on this database.
CREATE TABLE ledger_keys (
    id BIGINT PRIMARY KEY,
    secret_key TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE proposals (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    -- JSON array of option labels.
    options TEXT NOT NULL,
    opened_at_ms BIGINT NOT NULL,
    closes_at_ms BIGINT NOT NULL,
    -- The tally as JSON once closed, and its ledger entry.
    tally TEXT,
    tally_seq BIGINT
);
CREATE INDEX proposals_open ON proposals (closes_at_ms);

-- Each account's stake when the proposal opened: its voting weight.
CREATE TABLE proposal_weights (
    proposal_id TEXT NOT NULL REFERENCES proposals (id),
    account_id TEXT NOT NULL,
    weight_micros BIGINT NOT NULL,
    PRIMARY KEY (proposal_id, account_id)
);

CREATE TABLE votes (
    proposal_id TEXT NOT NULL REFERENCES proposals (id),
    account_id TEXT NOT NULL,
    option_index BIGINT NOT NULL,
    voted_at_ms BIGINT NOT NULL,
    PRIMARY KEY (proposal_id, account_id)
);
