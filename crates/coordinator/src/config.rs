//! The coordinator's configuration: typed, documented, validated before use.

use std::net::SocketAddr;

/// How the coordinator runs. Built by the CLI from flags; every field has a default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to serve HTTP and worker sessions on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Serve HTTPS on `listen` with these files; none: plain HTTP (TLS, if any, ends at a
    /// proxy in front).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Address of the tunnel listener workers dial for renters' connections; none: the
    /// listen address's host, on the next port (or a free one when `listen` picks its own).
    pub tunnel_listen: Option<SocketAddr>,
    /// `sqlite:PATH` (or a bare path) or `postgres://...`.
    pub database_url: String,
    /// Accept devices made up by `--simulate-gpu`. Off in production; `flotilla dev` sets it.
    pub allow_simulated_devices: bool,
    /// How often workers are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a worker's devices go `down`.
    pub heartbeat_grace_ms: u64,
    /// Time down after which a device becomes `inactive`.
    pub inactive_after_ms: u64,
    /// Width of one telemetry history bucket.
    pub telemetry_bucket_s: u64,
    /// How long telemetry history is kept.
    pub telemetry_retention_s: u64,
    /// Enrollment attempts allowed per client address, and per supplier, per minute.
    pub enroll_rate_per_minute: u32,
    /// Account sign-ups allowed per client address per minute.
    pub signup_rate_per_minute: u32,
    /// Enrollment tokens one account may create per minute.
    pub token_create_rate_per_minute: u32,
    /// How long a proof-of-compute challenge should take the claimed device class.
    pub proof_target_ms: u64,
    /// About how often idle devices prove their compute again (±25% at random).
    pub proof_recheck_interval_ms: u64,
    /// The share of a device class's memory a proof fills, in percent (1 to 100).
    pub proof_memory_pct: u32,
    /// How often the scheduler plans the queue.
    pub schedule_interval_ms: u64,
    /// Length of a ledger epoch: one block-reward payout and one signed Merkle root each.
    pub ledger_epoch_ms: u64,
    /// Hand out demo funds through `POST /wallet/faucet` (`flotilla dev` only).
    pub faucet: bool,
    /// How long unstaked IO waits before it is spendable again.
    pub unstake_cooldown_ms: u64,
    /// How long slashed stake is held, open to appeal, before it is burned.
    pub slash_appeal_ms: u64,
    /// Length of one metered rent minute (shorter only in tests).
    pub rent_minute_ms: u64,
    /// How often a node with a checkpoint directory uploads it.
    pub checkpoint_interval_ms: u64,
    /// Reservation fees on rent.
    pub fees: flotilla_ledger::rent::FeePolicy,
    /// The price clusters paid in IO convert at, IOSD base units per whole IO; none: rent is
    /// paid in IOSD only. Fixed per cluster when it deploys.
    pub io_price_micros: Option<u64>,
    /// A client connection silent this long gets TCP keepalive probes, one every sixth of it
    /// after; one whose probes, or whose sent bytes, go unanswered for twice this is closed
    /// (`TCP_USER_TIMEOUT`). So a renter who vanishes mid-connection (a laptop gone to sleep)
    /// gives its tunnelled connections, and its node's slots, back within about twice this,
    /// while a quiet but present one (an idle SSH session) is kept.
    pub tcp_keepalive_s: u64,
    /// Tunnelled connections one node may have open at once (standby ones included); more are
    /// refused with 409 `too_many_connections`. At most [`flotilla_tunnel::STREAMS_MAX`], a
    /// worker's streams for all its nodes together.
    pub tunnel_connections_per_node_max: usize,
    /// A tunnelled connection on which no byte moved either way for this long is closed, so
    /// one its client forgot (alive, so TCP keepalive is answered) gives its node's slot back.
    /// 0: never. (An SSH session kept open idle needs `ServerAliveInterval` below it.)
    pub tunnel_idle_timeout_s: u64,
    /// Time an HTTP client has to send a request's whole head; one slower is cut off.
    pub http_header_read_timeout_ms: u64,
    /// Cluster meshes carry all traffic through the relay (nodes are given no direct
    /// endpoints): for networks where direct UDP between suppliers is known to fail, and tests.
    pub mesh_relay_only: bool,
    /// IO emitted per year for block rewards.
    pub emission: flotilla_ledger::emission::Schedule,
    /// Where to write the first admin's API key when the database has no admin. The key is
    /// written to this file (mode 0600) and never logged.
    pub admin_key_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            tls: None,
            tunnel_listen: None,
            database_url: "sqlite:flotilla.db".to_owned(),
            allow_simulated_devices: false,
            heartbeat_interval_ms: 10_000,
            heartbeat_grace_ms: 30_000,
            inactive_after_ms: 5 * 24 * 3600 * 1000,
            telemetry_bucket_s: 60,
            telemetry_retention_s: 24 * 3600,
            enroll_rate_per_minute: 60,
            signup_rate_per_minute: 20,
            token_create_rate_per_minute: 60,
            admin_key_file: None,
            proof_target_ms: flotilla_proof::CHALLENGE_TARGET_MS,
            proof_recheck_interval_ms: 3_600_000,
            proof_memory_pct: flotilla_proof::MEMORY_PCT_DEFAULT,
            schedule_interval_ms: 1_000,
            ledger_epoch_ms: 3_600_000,
            faucet: false,
            unstake_cooldown_ms: 14 * 24 * 3_600_000,
            slash_appeal_ms: 7 * 24 * 3_600_000,
            rent_minute_ms: 60_000,
            checkpoint_interval_ms: 60_000,
            fees: flotilla_ledger::rent::FeePolicy::default(),
            io_price_micros: None,
            tcp_keepalive_s: TCP_KEEPALIVE_S_DEFAULT,
            http_header_read_timeout_ms: HTTP_HEADER_READ_TIMEOUT_MS_DEFAULT,
            tunnel_connections_per_node_max:
                crate::tunnels::TUNNEL_CONNECTIONS_PER_NODE_MAX_DEFAULT,
            tunnel_idle_timeout_s: TUNNEL_IDLE_TIMEOUT_S_DEFAULT,
            mesh_relay_only: false,
            emission: flotilla_ledger::emission::Schedule::default(),
        }
    }
}

/// The default `http_header_read_timeout_ms`.
pub const HTTP_HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The longest `http_header_read_timeout_ms`.
pub const HTTP_HEADER_READ_TIMEOUT_MS_MAX: u64 = 600_000;

/// The default `tcp_keepalive_s`: a vanished renter's connections close within two minutes.
pub const TCP_KEEPALIVE_S_DEFAULT: u64 = 60;

/// The longest `tcp_keepalive_s`: two hours, the usual system default for an idle probe.
pub const TCP_KEEPALIVE_S_MAX: u64 = 7_200;

/// The default `tunnel_idle_timeout_s`: an hour, as idle cloud tunnels commonly get.
pub const TUNNEL_IDLE_TIMEOUT_S_DEFAULT: u64 = 3_600;

/// The longest `tunnel_idle_timeout_s` other than never: a week.
pub const TUNNEL_IDLE_TIMEOUT_S_MAX: u64 = 7 * 24 * 3_600;

/// Keepalive probes a silent client connection gets per `tcp_keepalive_s`: their interval is a
/// sixth of it. (The user timeout, twice `tcp_keepalive_s`, closes the connection first.)
pub const TCP_KEEPALIVE_PROBES: u32 = 6;

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {field} {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl Config {
    /// Checks relations between fields that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.heartbeat_interval_ms < 10 {
            return fail("heartbeat_interval_ms", "must be at least 10");
        }
        if self.heartbeat_grace_ms <= self.heartbeat_interval_ms {
            return fail("heartbeat_grace_ms", "must exceed heartbeat_interval_ms");
        }
        if self.inactive_after_ms <= self.heartbeat_grace_ms {
            return fail("inactive_after_ms", "must exceed heartbeat_grace_ms");
        }
        if self.telemetry_bucket_s == 0 || self.telemetry_retention_s < self.telemetry_bucket_s {
            return fail(
                "telemetry_bucket_s",
                "must be at least 1 and at most telemetry_retention_s",
            );
        }
        if self.enroll_rate_per_minute == 0
            || self.signup_rate_per_minute == 0
            || self.token_create_rate_per_minute == 0
        {
            return fail("rate limits", "must be at least 1 per minute");
        }
        if self.schedule_interval_ms < 10 {
            return fail("schedule_interval_ms", "must be at least 10");
        }
        if self.io_price_micros == Some(0) {
            return fail("io_price_micros", "must be above zero");
        }
        if self.rent_minute_ms < 10 {
            return fail("rent_minute_ms", "must be at least 10");
        }
        if self.checkpoint_interval_ms < 100 {
            return fail("checkpoint_interval_ms", "must be at least 100");
        }
        if self.ledger_epoch_ms < 1_000 {
            return fail("ledger_epoch_ms", "must be at least 1000");
        }
        if self.fees.renter_bps > 10_000 || self.fees.supplier_bps > 10_000 {
            return fail("fees", "must be at most 10000 basis points");
        }
        if !(1..=TCP_KEEPALIVE_S_MAX).contains(&self.tcp_keepalive_s) {
            let problem = format!("must be between 1 and {TCP_KEEPALIVE_S_MAX}");
            return fail("tcp_keepalive_s", &problem);
        }
        if !(1..=HTTP_HEADER_READ_TIMEOUT_MS_MAX).contains(&self.http_header_read_timeout_ms) {
            let problem = format!("must be between 1 and {HTTP_HEADER_READ_TIMEOUT_MS_MAX}");
            return fail("http_header_read_timeout_ms", &problem);
        }
        if self.tunnel_idle_timeout_s > TUNNEL_IDLE_TIMEOUT_S_MAX {
            let problem = format!("must be at most {TUNNEL_IDLE_TIMEOUT_S_MAX} (0: never)");
            return fail("tunnel_idle_timeout_s", &problem);
        }
        if !(1..=flotilla_tunnel::STREAMS_MAX).contains(&self.tunnel_connections_per_node_max) {
            let problem = format!(
                "must be at least 1 and at most a worker's tunnel streams ({})",
                flotilla_tunnel::STREAMS_MAX
            );
            return fail("tunnel_connections_per_node_max", &problem);
        }
        if !(1..=100).contains(&self.proof_memory_pct) {
            return fail("proof_memory_pct", "must be between 1 and 100");
        }
        Ok(())
    }

    /// How often the liveness sweep runs: often enough to notice a silent worker well within
    /// its grace period.
    pub fn liveness_sweep_interval_ms(&self) -> u64 {
        (self.heartbeat_grace_ms / 4).clamp(10, 1000)
    }

    /// How long a client connection's probes or sent bytes may go unanswered before it is
    /// closed (see `tcp_keepalive_s`).
    pub fn client_unanswered_max(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2 * self.tcp_keepalive_s)
    }

    /// How long a tunnelled connection may move no byte before it is closed; none: ever.
    pub fn tunnel_idle_timeout(&self) -> Option<std::time::Duration> {
        (self.tunnel_idle_timeout_s > 0)
            .then(|| std::time::Duration::from_secs(self.tunnel_idle_timeout_s))
    }

    pub fn http_header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.http_header_read_timeout_ms)
    }

    /// TCP keepalive for client connections (see `tcp_keepalive_s`).
    pub fn client_keepalive(&self) -> socket2::TcpKeepalive {
        let interval_s = (self.tcp_keepalive_s / u64::from(TCP_KEEPALIVE_PROBES)).max(1);
        socket2::TcpKeepalive::new()
            .with_time(std::time::Duration::from_secs(self.tcp_keepalive_s))
            .with_interval(std::time::Duration::from_secs(interval_s))
            .with_retries(TCP_KEEPALIVE_PROBES)
    }

    /// How often the ledger's upkeep runs (hold expiry, rewards, seals, tallies).
    pub fn ledger_tick_ms(&self) -> u64 {
        (self.ledger_epoch_ms / 4).clamp(100, 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_relations_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let config = Config {
            heartbeat_grace_ms: 5_000,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "heartbeat_grace_ms");
        for keepalive_s in [0, TCP_KEEPALIVE_S_MAX + 1] {
            let config = Config {
                tcp_keepalive_s: keepalive_s,
                ..Config::default()
            };
            assert_eq!(config.validate().unwrap_err().field, "tcp_keepalive_s");
        }
        for connections in [0, flotilla_tunnel::STREAMS_MAX + 1] {
            let config = Config {
                tunnel_connections_per_node_max: connections,
                ..Config::default()
            };
            let error = config.validate().unwrap_err();
            assert_eq!(error.field, "tunnel_connections_per_node_max");
        }
        let forever = Config {
            tunnel_idle_timeout_s: TUNNEL_IDLE_TIMEOUT_S_MAX + 1,
            ..Config::default()
        };
        assert_eq!(
            forever.validate().unwrap_err().field,
            "tunnel_idle_timeout_s"
        );
        let never = Config {
            tunnel_idle_timeout_s: 0,
            ..Config::default()
        };
        assert_eq!(
            (never.validate(), never.tunnel_idle_timeout()),
            (Ok(()), None)
        );
    }
}
