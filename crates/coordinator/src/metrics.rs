//! Prometheus metrics, named `flotilla_<subsystem>_<name>_<unit>`, served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub api_requests: Family<Labels, Counter>,
    pub api_request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub workers_connected: Gauge,
    pub heartbeats: Counter,
    pub messages_rejected: Family<Labels, Counter>,
    pub enrollments: Counter,
    pub devices: Family<Labels, Gauge>,
    pub device_transitions: Family<Labels, Counter>,
    pub telemetry_buckets_written: Counter,
    pub telemetry_buckets_dropped: Counter,
    /// Bytes carried through worker tunnels, by direction (to_node, from_node).
    pub tunnel_bytes: Family<Labels, Counter>,
    pub tunnel_connections: Counter,
    /// Workers' tunnel connections open, every lane counted; set when scraped.
    pub tunnel_lanes: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let api_requests = Family::<Labels, Counter>::default();
        registry.register(
            "flotilla_api_requests",
            "HTTP requests answered",
            api_requests.clone(),
        );
        let api_request_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
                request_histogram as fn() -> Histogram,
            );
        registry.register(
            "flotilla_api_request_duration_seconds",
            "Time to answer an HTTP request",
            api_request_duration.clone(),
        );
        let workers_connected = Gauge::default();
        registry.register(
            "flotilla_worker_sessions_connected",
            "Workers with a live control session",
            workers_connected.clone(),
        );
        let tunnel_lanes = Gauge::default();
        registry.register(
            "flotilla_worker_tunnel_lanes",
            "Workers' tunnel connections open, every lane counted",
            tunnel_lanes.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "flotilla_worker_heartbeats",
            "Heartbeats accepted",
            heartbeats.clone(),
        );
        let messages_rejected = Family::<Labels, Counter>::default();
        registry.register(
            "flotilla_worker_messages_rejected",
            "Worker messages refused, by reason",
            messages_rejected.clone(),
        );
        let enrollments = Counter::default();
        registry.register(
            "flotilla_worker_enrollments",
            "Workers enrolled",
            enrollments.clone(),
        );
        let devices = Family::<Labels, Gauge>::default();
        registry.register("flotilla_devices", "Devices by state", devices.clone());
        let device_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "flotilla_device_transitions",
            "Device state changes, by target state",
            device_transitions.clone(),
        );
        let telemetry_buckets_written = Counter::default();
        registry.register(
            "flotilla_telemetry_buckets_written",
            "Telemetry history rows written",
            telemetry_buckets_written.clone(),
        );
        let telemetry_buckets_dropped = Counter::default();
        registry.register(
            "flotilla_telemetry_buckets_dropped",
            "Telemetry history rows dropped because the write queue was full",
            telemetry_buckets_dropped.clone(),
        );
        let tunnel_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "flotilla_tunnel_bytes",
            "Bytes carried between renters and their nodes, by direction",
            tunnel_bytes.clone(),
        );
        let tunnel_connections = Counter::default();
        registry.register(
            "flotilla_tunnel_connections",
            "Renters' connections to their nodes, ended",
            tunnel_connections.clone(),
        );
        Metrics {
            tunnel_bytes,
            tunnel_connections,
            tunnel_lanes,
            registry,
            api_requests,
            api_request_duration,
            workers_connected,
            heartbeats,
            messages_rejected,
            enrollments,
            devices,
            device_transitions,
            telemetry_buckets_written,
            telemetry_buckets_dropped,
        }
    }

    /// Counts one ended tunnelled connection.
    pub fn tunnel_bytes(&self, to_node: u64, from_node: u64) {
        self.tunnel_connections.inc();
        for (direction, bytes) in [("to_node", to_node), ("from_node", from_node)] {
            self.tunnel_bytes
                .get_or_create(&vec![("direction", direction.to_owned())])
                .inc_by(bytes);
        }
    }

    pub fn rejected(&self, reason: &str) {
        self.messages_rejected
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
