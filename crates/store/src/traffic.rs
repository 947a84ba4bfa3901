//! Tunnel traffic: what renters' connections to nodes carried, kept per run and per device.

use std::collections::HashMap;

use flotilla_proto::api::TunnelTraffic;

use crate::{Result, Store, col, to_i64, to_u64};

impl Store {
    /// Adds `traffic` to each subject's figures (a run id, device ids), in one transaction.
    pub async fn add_tunnel_traffic(
        &self,
        subjects: &[String],
        traffic: TunnelTraffic,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for subject in subjects {
            sqlx::query(
                "INSERT INTO tunnel_traffic (subject, connections, bytes_to_node, bytes_from_node, \
                 connected_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject) DO UPDATE SET \
                 connections = tunnel_traffic.connections + excluded.connections, \
                 bytes_to_node = tunnel_traffic.bytes_to_node + excluded.bytes_to_node, \
                 bytes_from_node = tunnel_traffic.bytes_from_node + excluded.bytes_from_node, \
                 connected_ms = tunnel_traffic.connected_ms + excluded.connected_ms",
            )
            .bind(subject)
            .bind(to_i64(traffic.connections))
            .bind(to_i64(traffic.bytes_to_node))
            .bind(to_i64(traffic.bytes_from_node))
            .bind(to_i64(traffic.connected_ms))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The figures of these subjects that have any.
    pub async fn tunnel_traffic(
        &self,
        subjects: &[String],
    ) -> Result<HashMap<String, TunnelTraffic>> {
        let mut figures = HashMap::new();
        let sql = "SELECT subject, connections, bytes_to_node, bytes_from_node, connected_ms \
                 FROM tunnel_traffic WHERE subject IN ({ids})";
        for row in self.rows_in(sql, subjects).await? {
            let traffic = TunnelTraffic {
                connections: to_u64(col(&row, "connections")?),
                bytes_to_node: to_u64(col(&row, "bytes_to_node")?),
                bytes_from_node: to_u64(col(&row, "bytes_from_node")?),
                connected_ms: to_u64(col(&row, "connected_ms")?),
            };
            figures.insert(col(&row, "subject")?, traffic);
        }
        Ok(figures)
    }
}
