-- Paid rentals: the minutes of a placed request already metered (paid or found down).
ALTER TABLE requests ADD COLUMN metered_minutes BIGINT NOT NULL DEFAULT 0;
