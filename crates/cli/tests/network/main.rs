//! Integration tests that drive the real `flotilla` binary over loopback, on SQLite and on
//! PostgreSQL.

mod harness;

mod api;
mod browser;
mod clusters;
mod dashboard;
mod dev;
mod fleet;
mod ledger;
mod market;
mod mesh;
mod protocol;
mod tls;
mod tunnels;
