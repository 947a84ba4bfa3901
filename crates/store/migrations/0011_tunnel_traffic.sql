-- What renters' tunnelled connections carried, by subject: a run id (one node's run) or a
-- device id (every node the device held, added up). Rows only grow.
CREATE TABLE tunnel_traffic (
    subject TEXT PRIMARY KEY,
    connections BIGINT NOT NULL,
    bytes_to_node BIGINT NOT NULL,
    bytes_from_node BIGINT NOT NULL,
    connected_ms BIGINT NOT NULL
);
