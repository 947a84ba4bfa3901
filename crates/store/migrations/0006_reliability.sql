-- What a worker's reliability is measured from: time connected out of time observed, and
-- renters' feedback on the requests it served (thousandths of a star, 1,000 to 5,000).
ALTER TABLE workers ADD COLUMN up_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN observed_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN feedback_milli BIGINT;
-- A placement row released because its worker failed (work lost), not because the request ended.
ALTER TABLE placements ADD COLUMN lost BIGINT NOT NULL DEFAULT 0;
