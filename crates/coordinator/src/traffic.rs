//! Tunnel traffic: every renter connection through a worker's tunnel is counted (bytes each
//! way, duration) as it flows, and when it ends the figures are added to its run and to the
//! devices of its node, for the cluster's and the device's pages. Counting happens in the
//! stream wrapper ([`Metered`]); the database writes happen on one task fed by a bounded queue,
//! so a slow database never slows a connection (past the queue, figures are dropped and
//! counted in the metrics).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use flotilla_proto::api::TunnelTraffic;
use flotilla_store::RunRow;
use flotilla_tunnel::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

use crate::AppState;
use crate::tunnels::NodeSlot;

/// Ended connections' figures waiting to be written, at most.
pub const TRAFFIC_RECORDS_QUEUED_MAX: usize = 4_096;
/// Records merged into one write round, at most.
const TRAFFIC_RECORDS_PER_WRITE_MAX: usize = 512;

/// One ended connection's figures, and the node they belong to.
#[derive(Debug, Clone)]
pub struct TrafficRecord {
    pub run_id: String,
    pub cluster_id: String,
    pub node_index: u32,
    pub traffic: TunnelTraffic,
}

/// A stream to a node that counts what passes and reports it when dropped.
pub struct Metered {
    stream: Stream,
    /// The node's slot, held as long as the connection.
    _slot: NodeSlot,
    record: TrafficRecord,
    opened_at: Instant,
    sink: mpsc::Sender<TrafficRecord>,
}

impl Metered {
    pub fn new(
        stream: Stream,
        slot: NodeSlot,
        run: &RunRow,
        sink: mpsc::Sender<TrafficRecord>,
    ) -> Metered {
        let record = TrafficRecord {
            run_id: run.id.clone(),
            cluster_id: run.cluster_id.clone(),
            node_index: run.node_index,
            traffic: TunnelTraffic {
                connections: 1,
                ..TunnelTraffic::default()
            },
        };
        Metered {
            stream,
            _slot: slot,
            record,
            opened_at: Instant::now(),
            sink,
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let mut record = self.record.clone();
        record.traffic.connected_ms = self.opened_at.elapsed().as_millis() as u64;
        if self.sink.try_send(record).is_err() {
            tracing::warn!(run_id = %self.record.run_id, "tunnel traffic queue full; a connection's figures are dropped");
        }
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.record.traffic.bytes_from_node += read;
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.record.traffic.bytes_to_node += written as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The queue's two ends.
pub fn queue() -> (mpsc::Sender<TrafficRecord>, mpsc::Receiver<TrafficRecord>) {
    mpsc::channel(TRAFFIC_RECORDS_QUEUED_MAX)
}

/// Writes ended connections' figures until shutdown, then what is still queued.
pub async fn record(
    app: AppState,
    mut records: mpsc::Receiver<TrafficRecord>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(TRAFFIC_RECORDS_PER_WRITE_MAX);
    loop {
        let stopping = tokio::select! {
            received = records.recv_many(&mut batch, TRAFFIC_RECORDS_PER_WRITE_MAX) => received == 0,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stopping {
            break;
        }
        write(&app, std::mem::take(&mut batch)).await;
    }
    records.close();
    while records
        .recv_many(&mut batch, TRAFFIC_RECORDS_PER_WRITE_MAX)
        .await
        > 0
    {
        write(&app, std::mem::take(&mut batch)).await;
    }
}

/// Adds a batch's figures to their runs and their nodes' devices.
async fn write(app: &AppState, batch: Vec<TrafficRecord>) {
    for (node, traffic) in merged(batch) {
        app.metrics
            .tunnel_bytes(traffic.bytes_to_node, traffic.bytes_from_node);
        let placements = match app.store.placements(&node.cluster_id).await {
            Ok(placements) => placements,
            Err(error) => {
                tracing::warn!(%error, "tunnel traffic not recorded");
                continue;
            }
        };
        let devices = placements
            .into_iter()
            .filter(|p| p.node_index == node.node_index)
            .map(|p| p.device_id);
        let subjects: Vec<String> = std::iter::once(node.run_id.clone())
            .chain(devices)
            .collect();
        if let Err(error) = app.store.add_tunnel_traffic(&subjects, traffic).await {
            tracing::warn!(%error, "tunnel traffic not recorded");
        }
    }
}

/// The node a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NodeKey {
    run_id: String,
    cluster_id: String,
    node_index: u32,
}

/// One sum per node.
fn merged(batch: Vec<TrafficRecord>) -> HashMap<NodeKey, TunnelTraffic> {
    let mut sums: HashMap<NodeKey, TunnelTraffic> = HashMap::new();
    for record in batch {
        let key = NodeKey {
            run_id: record.run_id,
            cluster_id: record.cluster_id,
            node_index: record.node_index,
        };
        let sum = sums.entry(key).or_default();
        *sum = sum.plus(record.traffic);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str, bytes_to_node: u64) -> TrafficRecord {
        TrafficRecord {
            run_id: run_id.into(),
            cluster_id: "clu_x".into(),
            node_index: 0,
            traffic: TunnelTraffic {
                connections: 1,
                bytes_to_node,
                bytes_from_node: 2 * bytes_to_node,
                connected_ms: 10,
            },
        }
    }

    #[test]
    fn a_batch_sums_per_node() {
        let sums = merged(vec![
            record("run_a", 5),
            record("run_b", 1),
            record("run_a", 7),
        ]);
        let key = |run: &str| NodeKey {
            run_id: run.into(),
            cluster_id: "clu_x".into(),
            node_index: 0,
        };
        assert_eq!(
            sums[&key("run_a")],
            TunnelTraffic {
                connections: 2,
                bytes_to_node: 12,
                bytes_from_node: 24,
                connected_ms: 20
            }
        );
        assert_eq!(sums[&key("run_b")].connections, 1);
        assert_eq!(sums.len(), 2);
    }
}
