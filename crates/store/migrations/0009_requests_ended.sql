-- The rent reconciler reads the requests that ended lately.
CREATE INDEX requests_ended ON requests (ended_at_ms);
