-- The market: a supplier's asking price per device, and where each worker is.
-- price_per_hour is in IOSD base units (6 decimals); NULL means the device is not offered.
ALTER TABLE devices ADD COLUMN price_per_hour BIGINT;
ALTER TABLE workers ADD COLUMN region TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN country TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN tier TEXT NOT NULL DEFAULT 'low';
