-- Owners' histories without an index over owners. Two indexes on (owner, seq) put every
-- entry into two B-trees at a random place each, which a batch of thousands of entries made
-- the ledger's slowest write, and slower as the ledger grew. Instead each entry points, for
-- each of its two owners, at that owner's previous entry (0: none), and each account row
-- keeps its owner's newest entry as of the row's last write, so an owner's newest entry is
-- the largest `owner_last_seq` among its accounts and its history walks back from there.
-- Writing an entry then appends one row; the account rows were written anyway.
ALTER TABLE ledger_entries ADD COLUMN debit_prev_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger_entries ADD COLUMN credit_prev_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger_accounts ADD COLUMN owner_last_seq BIGINT NOT NULL DEFAULT 0;

-- The chains of entries written before, while the owner indexes still answer.
UPDATE ledger_entries SET debit_prev_seq = COALESCE((
    SELECT MAX(p.seq) FROM ledger_entries p
    WHERE p.seq < ledger_entries.seq
      AND (p.debit_owner = ledger_entries.debit_owner OR p.credit_owner = ledger_entries.debit_owner)
), 0)
WHERE debit_owner <> '';
UPDATE ledger_entries SET credit_prev_seq = COALESCE((
    SELECT MAX(p.seq) FROM ledger_entries p
    WHERE p.seq < ledger_entries.seq
      AND (p.debit_owner = ledger_entries.credit_owner OR p.credit_owner = ledger_entries.credit_owner)
), 0)
WHERE credit_owner <> '';
UPDATE ledger_accounts SET owner_last_seq = COALESCE((
    SELECT MAX(e.seq) FROM ledger_entries e
    WHERE e.debit_owner = ledger_accounts.owner OR e.credit_owner = ledger_accounts.owner
), 0);

DROP INDEX ledger_entries_debit_owner;
DROP INDEX ledger_entries_credit_owner;
