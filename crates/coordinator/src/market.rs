//! The market as the scheduler sees it: a snapshot built from the database's priced, idle or
//! hired devices and their workers' locations, the cached view that public reads share, and
//! the price index kept for trends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::device::{DeviceKind, DeviceState, model_key};
use flotilla_scheduler::prices::ModelPrice;
use flotilla_scheduler::{DeviceOffer, DeviceStatus, NodeOffer, PPM, Snapshot, Tier};
use flotilla_store::{MarketRow, WorkerStats};

/// How old the index a trend is measured against must be.
pub const PRICE_TREND_INTERVAL_MS: i64 = 3_600_000;

/// A snapshot and which (node, model) offers are simulated devices.
#[derive(Debug)]
pub struct MarketView {
    pub snapshot: Snapshot,
    pub simulated: std::collections::HashSet<(usize, String)>,
}

/// Reliability inputs of one worker: uptime in ppm (full until anything was observed),
/// requests completed and lost, and average feedback.
fn reliability(stats: Option<&WorkerStats>) -> (u32, (u32, u32), Option<u32>) {
    let Some(stats) = stats else {
        return (PPM, (0, 0), None);
    };
    let uptime_ppm = (u128::from(stats.up_ms.min(stats.observed_ms)) * u128::from(PPM))
        .checked_div(u128::from(stats.observed_ms))
        .map_or(PPM, |ppm| ppm as u32);
    let feedback = (stats.feedback_sum_milli / u64::from(stats.feedback_count.max(1))) as u32;
    (
        uptime_ppm,
        (stats.completed, stats.failed),
        (stats.feedback_count > 0).then_some(feedback),
    )
}

/// The market now, from the database.
pub async fn load(store: &flotilla_store::Store) -> Result<MarketView, flotilla_store::StoreError> {
    let rows = store.market_rows().await?;
    let stats = store.worker_stats().await?;
    Ok(snapshot(rows, &stats))
}

/// Builds the snapshot: one node per worker, its priced devices in it.
pub fn snapshot(
    rows: Vec<MarketRow>,
    stats: &std::collections::HashMap<String, WorkerStats>,
) -> MarketView {
    let mut by_worker: BTreeMap<String, (NodeOffer, Vec<String>)> = BTreeMap::new();
    for row in rows {
        let hardware = &row.device.hardware;
        let is_gpu = hardware.kind == DeviceKind::Gpu;
        let class = flotilla_proof::class_for(&hardware.model, is_gpu, hardware.simulated);
        let (node, simulated) = by_worker
            .entry(row.device.worker_id.clone())
            .or_insert_with(|| {
                let (uptime_ppm, (completed, failed), feedback_milli) =
                    reliability(stats.get(&row.device.worker_id));
                (
                    NodeOffer {
                        worker_id: row.device.worker_id.clone(),
                        supplier_id: row.device.account_id.clone(),
                        region: row.region.clone(),
                        country: row.country.clone(),
                        tier: Tier::parse(&row.tier).unwrap_or(Tier::Low),
                        uptime_ppm,
                        completed,
                        failed,
                        feedback_milli,
                        supplier_hired: 0,
                        containers: row.containers,
                        devices: Vec::new(),
                    },
                    Vec::new(),
                )
            });
        let model = model_key(hardware.kind, &hardware.model);
        if hardware.simulated {
            simulated.push(model.clone());
        }
        let status = match row.device.state {
            DeviceState::Idle => DeviceStatus::Idle,
            DeviceState::Hired => DeviceStatus::Hired,
            _ => DeviceStatus::Unavailable,
        };
        node.devices.push(DeviceOffer {
            device_id: row.device.id.clone(),
            model,
            memory_bytes: hardware.memory_bytes,
            perf_ops_per_s: class.int8_ops_per_s,
            price_per_hour: row.price_per_hour,
            status,
            // Only proof of compute makes a device idle or hired.
            verified: true,
            paused: false,
        });
    }
    let mut hired_by_supplier: BTreeMap<String, u32> = BTreeMap::new();
    for (node, _) in by_worker.values() {
        let hired = node
            .devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Hired)
            .count();
        *hired_by_supplier
            .entry(node.supplier_id.clone())
            .or_default() += hired as u32;
    }
    let mut simulated = std::collections::HashSet::new();
    let nodes = by_worker
        .into_values()
        .enumerate()
        .map(|(index, (mut node, models))| {
            node.supplier_hired = hired_by_supplier[&node.supplier_id];
            simulated.extend(models.into_iter().map(|m| (index, m)));
            node
        })
        .collect();
    MarketView {
        snapshot: Snapshot { nodes },
        simulated,
    }
}

/// After this long a cached view is rebuilt in the background while readers keep using it.
pub const MARKET_VIEW_REFRESH_MS: u64 = 2_000;
/// A cached view older than this is never served: the reader waits for a new one. Only
/// workers' uptime and other coordinators' writes can be this stale; a write through this
/// coordinator's store that changes what is offered (a device's state or price, a worker's
/// location, a renter's feedback) makes the next read build a new view.
pub const MARKET_VIEW_AGE_MS_MAX: u64 = 30_000;

/// The market view that public reads (offers, prices, the Explorer) share, so a page does not
/// rebuild the whole snapshot from the database on every request. The scheduler reads its own,
/// fresh view.
#[derive(Debug, Default)]
pub struct MarketCache {
    current: Mutex<Option<CachedView>>,
    /// Held while a view is built, so readers that find none wait for one build.
    building: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct CachedView {
    view: Arc<MarketView>,
    /// The store's market version read before the view was loaded.
    version: u64,
    built_at: Instant,
}

/// What a reader may do with the cached view.
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    Fresh,
    /// Serve it, and rebuild in the background.
    Aging,
    /// Do not serve it.
    Outdated,
}

fn freshness(cached_version: u64, version: u64, age: Duration) -> Freshness {
    if cached_version != version || age >= Duration::from_millis(MARKET_VIEW_AGE_MS_MAX) {
        Freshness::Outdated
    } else if age >= Duration::from_millis(MARKET_VIEW_REFRESH_MS) {
        Freshness::Aging
    } else {
        Freshness::Fresh
    }
}

impl MarketCache {
    /// The market now, as of the last change this store wrote.
    pub async fn view(
        self: &Arc<Self>,
        store: &flotilla_store::Store,
    ) -> Result<Arc<MarketView>, flotilla_store::StoreError> {
        if let Some(view) = self.servable(store) {
            return Ok(view);
        }
        let _building = self.building.lock().await;
        // Another reader may have built it while this one waited.
        if let Some(view) = self.servable(store) {
            return Ok(view);
        }
        self.rebuild(store).await
    }

    /// The cached view if it may be served, starting a background rebuild when it ages.
    fn servable(self: &Arc<Self>, store: &flotilla_store::Store) -> Option<Arc<MarketView>> {
        let cached = self.current.lock().expect("market cache lock").clone()?;
        match freshness(
            cached.version,
            store.market_version(),
            cached.built_at.elapsed(),
        ) {
            Freshness::Fresh => Some(cached.view),
            Freshness::Aging => {
                self.refresh_in_background(store.clone());
                Some(cached.view)
            }
            Freshness::Outdated => None,
        }
    }

    fn refresh_in_background(self: &Arc<Self>, store: flotilla_store::Store) {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            // Someone is already building one.
            let Ok(_building) = cache.building.try_lock() else {
                return;
            };
            if let Err(error) = cache.rebuild(&store).await {
                tracing::warn!(%error, "market view refresh failed; readers keep the last one");
            }
        });
    }

    async fn rebuild(
        &self,
        store: &flotilla_store::Store,
    ) -> Result<Arc<MarketView>, flotilla_store::StoreError> {
        // Read before loading: a change written during the load makes the next read rebuild.
        let version = store.market_version();
        let view = Arc::new(load(store).await?);
        *self.current.lock().expect("market cache lock") = Some(CachedView {
            view: Arc::clone(&view),
            version,
            built_at: Instant::now(),
        });
        Ok(view)
    }
}

/// A price index and when it was taken.
type DatedIndex = (i64, Vec<ModelPrice>);

/// The last price index old enough to measure a trend against, and the newest.
#[derive(Debug, Default)]
pub struct PriceHistory {
    /// (baseline, newest).
    inner: Mutex<(Option<DatedIndex>, Option<DatedIndex>)>,
}

impl PriceHistory {
    /// The index to measure against now, after recording `current` as of `now_ms`.
    pub fn baseline(&self, now_ms: i64, current: &[ModelPrice]) -> Vec<ModelPrice> {
        let mut inner = self.inner.lock().expect("price history lock");
        let (baseline, newest) = &mut *inner;
        if let Some((at, _)) = newest
            && now_ms - *at >= PRICE_TREND_INTERVAL_MS
        {
            *baseline = newest.take();
        }
        if newest.is_none() {
            *newest = Some((now_ms, current.to_vec()));
        }
        baseline
            .as_ref()
            .map(|(_, prices)| prices.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_view_is_served_until_the_market_changes_or_it_grows_old() {
        let ms = Duration::from_millis;
        assert_eq!(freshness(3, 3, ms(0)), Freshness::Fresh);
        assert_eq!(
            freshness(3, 3, ms(MARKET_VIEW_REFRESH_MS - 1)),
            Freshness::Fresh
        );
        assert_eq!(
            freshness(3, 3, ms(MARKET_VIEW_REFRESH_MS)),
            Freshness::Aging
        );
        assert_eq!(
            freshness(3, 3, ms(MARKET_VIEW_AGE_MS_MAX)),
            Freshness::Outdated
        );
        assert_eq!(
            freshness(3, 4, ms(0)),
            Freshness::Outdated,
            "a device's state or price changed"
        );
    }

    #[test]
    fn reliability_comes_from_uptime_and_feedback() {
        assert_eq!(
            reliability(None),
            (PPM, (0, 0), None),
            "nothing observed yet"
        );
        let stats = WorkerStats {
            up_ms: 900,
            observed_ms: 1_000,
            completed: 3,
            failed: 1,
            feedback_sum_milli: 9_000,
            feedback_count: 2,
        };
        assert_eq!(reliability(Some(&stats)), (900_000, (3, 1), Some(4_500)));
        let unobserved = WorkerStats::default();
        assert_eq!(reliability(Some(&unobserved)).0, PPM);
    }
}
