-- Lookups of a GPU by its hardware id across workers, to flag the same UUID reported twice.
CREATE INDEX devices_hardware ON devices (hardware_id);
