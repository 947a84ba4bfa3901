//! The live fleet: which workers are connected, when each was last heard from, every device's
//! lifecycle, latest telemetry and open history bucket.
//!
//! The database is the record; this is the coordinator's working copy, loaded at start and
//! changed only through [`Fleet`] methods, which write the database first (compare-and-set on
//! the device state) and then the copy. Heartbeats touch memory only: the database sees state
//! changes, closed telemetry buckets and a periodic last-seen stamp, which is what lets one
//! coordinator carry 10,000 workers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_proto::device::{DeviceState, DeviceTelemetry};
use flotilla_proto::time::now_unix_ms;
use flotilla_store::{DeviceRow, DeviceStateChange, Store, StoreError, TelemetryBucketRow};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::device_state::{DeviceEvent, Lifecycle, TransitionRefused, transition};
use crate::liveness::{LivenessBounds, decide};
use crate::metrics::Metrics;
use crate::telemetry::{Accumulator, fold};

/// Closed telemetry buckets waiting to be written; past this the oldest are dropped (and
/// counted) rather than letting a slow database grow memory without bound.
const CLOSED_BUCKETS_MAX: usize = 200_000;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("device {0} is not one of this worker's devices")]
    DeviceNotOwned(String),
    #[error(transparent)]
    Refused(#[from] TransitionRefused),
    #[error("device {0} changed state concurrently; retry")]
    Raced(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct WorkerLive {
    last_seen_ms: i64,
    session: Option<Session>,
    device_ids: Vec<String>,
    /// Devices the worker no longer reports: down, and swept on to inactive in time.
    parked_ids: Vec<String>,
}

#[derive(Debug)]
struct Session {
    id: u64,
    /// Dropping or firing this ends the session task.
    kick: oneshot::Sender<()>,
    /// Tells the session its worker's runs changed.
    nudge: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
struct DeviceLive {
    worker_id: String,
    lifecycle: Lifecycle,
    state_changed_at_ms: i64,
    latest: Option<(i64, DeviceTelemetry)>,
    bucket: Option<Accumulator>,
}

#[derive(Debug, Default)]
struct FleetState {
    workers: HashMap<String, WorkerLive>,
    devices: HashMap<String, DeviceLive>,
    closed_buckets: VecDeque<TelemetryBucketRow>,
    next_session_id: u64,
}

/// What the API shows of a device's live side.
#[derive(Debug, Clone)]
pub struct DeviceLiveView {
    pub latest: Option<(i64, DeviceTelemetry)>,
    pub worker_last_seen_ms: i64,
}

/// The live fleet. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Fleet {
    state: Mutex<FleetState>,
    /// Serializes state changes so the database and the working copy change in one order.
    transitions: tokio::sync::Mutex<()>,
    store: Store,
    metrics: Arc<Metrics>,
    bounds: LivenessBounds,
    telemetry_bucket_s: u64,
}

fn lifecycle_of(row: &DeviceRow) -> Lifecycle {
    Lifecycle {
        state: row.state,
        before_down: row.state_before_down,
    }
}

impl Fleet {
    /// Loads every live device. Workers count as seen now: a coordinator that was down itself
    /// must not mark the whole fleet down the moment it returns.
    pub async fn load(
        store: Store,
        metrics: Arc<Metrics>,
        config: &Config,
    ) -> Result<Fleet, StoreError> {
        let now_ms = now_unix_ms();
        let mut state = FleetState::default();
        for row in store.all_live_devices().await? {
            state
                .workers
                .entry(row.worker_id.clone())
                .or_insert_with(|| WorkerLive {
                    last_seen_ms: now_ms,
                    session: None,
                    device_ids: Vec::new(),
                    parked_ids: Vec::new(),
                })
                .device_ids
                .push(row.id.clone());
            state
                .devices
                .insert(row.id.clone(), DeviceLive::from_row(&row));
        }
        let fleet = Fleet {
            state: Mutex::new(state),
            transitions: tokio::sync::Mutex::new(()),
            store,
            metrics,
            bounds: LivenessBounds {
                grace_ms: i64::try_from(config.heartbeat_grace_ms).unwrap_or(i64::MAX),
                inactive_after_ms: i64::try_from(config.inactive_after_ms).unwrap_or(i64::MAX),
            },
            telemetry_bucket_s: config.telemetry_bucket_s,
        };
        fleet.update_device_gauges();
        Ok(fleet)
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        self.state.lock().expect("fleet lock poisoned")
    }

    /// Binds a new session to a worker after Hello, replacing (and ending) any older one.
    /// Returns the session id and the receiver that fires when this session is replaced.
    pub fn open_session(
        &self,
        worker_id: &str,
        devices: &[DeviceRow],
        parked: &[DeviceRow],
        now_ms: i64,
    ) -> (u64, oneshot::Receiver<()>, Arc<tokio::sync::Notify>) {
        let (kick, kicked) = oneshot::channel();
        let nudge = Arc::new(tokio::sync::Notify::new());
        let mut state = self.lock();
        state.next_session_id += 1;
        let session_id = state.next_session_id;
        for row in devices
            .iter()
            .chain(parked)
            .filter(|row| row.removed_at_ms.is_none())
        {
            state
                .devices
                .entry(row.id.clone())
                .or_insert_with(|| DeviceLive::from_row(row));
        }
        let worker = state
            .workers
            .entry(worker_id.to_owned())
            .or_insert_with(|| WorkerLive {
                last_seen_ms: now_ms,
                session: None,
                device_ids: Vec::new(),
                parked_ids: Vec::new(),
            });
        worker.last_seen_ms = now_ms;
        worker.parked_ids = parked.iter().map(|row| row.id.clone()).collect();
        worker.device_ids = devices
            .iter()
            .filter(|row| row.removed_at_ms.is_none())
            .map(|row| row.id.clone())
            .collect();
        if let Some(old) = worker.session.replace(Session {
            id: session_id,
            kick,
            nudge: nudge.clone(),
        }) {
            let _ = old.kick.send(());
        } else {
            self.metrics.workers_connected.inc();
        }
        (session_id, kicked, nudge)
    }

    /// Tells a connected worker's session that its runs changed; nothing if it is away (its
    /// next session loads them anyway).
    pub fn nudge(&self, worker_id: &str) {
        let state = self.lock();
        if let Some(session) = state
            .workers
            .get(worker_id)
            .and_then(|w| w.session.as_ref())
        {
            session.nudge.notify_one();
        }
    }

    /// Unbinds a session that ended, unless a newer one replaced it already.
    pub fn close_session(&self, worker_id: &str, session_id: u64) {
        let mut state = self.lock();
        if let Some(worker) = state.workers.get_mut(worker_id)
            && worker.session.as_ref().is_some_and(|s| s.id == session_id)
        {
            worker.session = None;
            self.metrics.workers_connected.dec();
        }
    }

    /// Records a heartbeat. Refuses the whole beat if any device is not the worker's. Returns
    /// the devices that come back from `down`, for [`Fleet::apply_events`].
    pub fn heartbeat(
        &self,
        worker_id: &str,
        samples: &[DeviceTelemetry],
        now_ms: i64,
    ) -> Result<Vec<String>, FleetError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(worker) = state.workers.get_mut(worker_id) else {
            return Err(FleetError::DeviceNotOwned(
                samples
                    .first()
                    .map(|s| s.device_id.clone())
                    .unwrap_or_default(),
            ));
        };
        if let Some(foreign) = samples
            .iter()
            .find(|s| !worker.device_ids.contains(&s.device_id))
        {
            return Err(FleetError::DeviceNotOwned(foreign.device_id.clone()));
        }
        worker.last_seen_ms = now_ms;
        let mut returning = Vec::new();
        for device_id in &worker.device_ids {
            let Some(device) = state.devices.get_mut(device_id) else {
                continue;
            };
            if matches!(
                device.lifecycle.state,
                DeviceState::Down | DeviceState::Inactive
            ) {
                returning.push(device_id.clone());
            }
        }
        for sample in samples {
            let Some(device) = state.devices.get_mut(&sample.device_id) else {
                continue;
            };
            if let Some(closed) = fold(&mut device.bucket, sample, now_ms, self.telemetry_bucket_s)
            {
                push_bounded(&mut state.closed_buckets, closed, &self.metrics);
            }
            device.latest = Some((now_ms, sample.clone()));
        }
        self.metrics.heartbeats.inc();
        Ok(returning)
    }

    /// Applies one event to each device, writing the database first. Devices the event does
    /// not move are skipped; a refused event is an error only when `strict`.
    pub async fn apply_events(
        &self,
        device_ids: &[String],
        event: DeviceEvent,
        strict: bool,
    ) -> Result<(), FleetError> {
        let _serial = self.transitions.lock().await;
        let mut changes = Vec::new();
        {
            let state = self.lock();
            for device_id in device_ids {
                let Some(device) = state.devices.get(device_id) else {
                    continue;
                };
                match transition(device.lifecycle, event) {
                    Ok(Some(to)) => changes.push((device_id.clone(), device.lifecycle, to)),
                    Ok(None) => {}
                    Err(refused) if strict => return Err(refused.into()),
                    Err(_) => {}
                }
            }
        }
        self.commit(changes).await
    }

    /// Writes lifecycle changes (compare-and-set) and mirrors those that applied.
    async fn commit(&self, changes: Vec<(String, Lifecycle, Lifecycle)>) -> Result<(), FleetError> {
        if changes.is_empty() {
            return Ok(());
        }
        let now_ms = now_unix_ms();
        let rows: Vec<DeviceStateChange> = changes
            .iter()
            .map(|(device_id, from, to)| DeviceStateChange {
                device_id: device_id.clone(),
                from: from.state,
                to: to.state,
                state_before_down: to.before_down,
            })
            .collect();
        let applied = self.store.apply_device_state_changes(&rows, now_ms).await?;
        let mut state = self.lock();
        for change in &applied {
            if let Some(device) = state.devices.get_mut(&change.device_id) {
                device.lifecycle = Lifecycle {
                    state: change.to,
                    before_down: change.state_before_down,
                };
                if change.from != change.to {
                    device.state_changed_at_ms = now_ms;
                }
            }
            self.metrics
                .device_transitions
                .get_or_create(&vec![("to", change.to.as_str().to_owned())])
                .inc();
            tracing::info!(device_id = %change.device_id, from = %change.from, to = %change.to, "device state changed");
        }
        drop(state);
        if let Some(missed) = rows.iter().find(|row| !applied.contains(row)) {
            return Err(FleetError::Raced(missed.device_id.clone()));
        }
        Ok(())
    }

    /// One pass of failure detection over every device; also refreshes the per-state gauges
    /// (once a tick, not per change, so a burst of changes costs one count).
    /// Returns how many devices changed state.
    pub async fn sweep(&self, now_ms: i64) -> Result<usize, FleetError> {
        self.update_device_gauges();
        let _serial = self.transitions.lock().await;
        let changes: Vec<_> = {
            let state = self.lock();
            // Only silent workers can have devices to change, so workers heard from within the
            // grace period cost one comparison and no device lookups.
            let grace_ms = self.bounds.grace_ms;
            let mut changes = Vec::new();
            for worker in state
                .workers
                .values()
                .filter(|w| now_ms - w.last_seen_ms > grace_ms)
            {
                for device_id in &worker.device_ids {
                    let Some(device) = state.devices.get(device_id) else {
                        continue;
                    };
                    let decided = decide(
                        device.lifecycle,
                        device.state_changed_at_ms,
                        worker.last_seen_ms,
                        now_ms,
                        self.bounds,
                    );
                    if let Some(to) = decided {
                        changes.push((device_id.clone(), device.lifecycle, to));
                    }
                }
            }
            // Devices their worker stopped reporting are down while the worker is up; they
            // only age towards inactive.
            for device_id in state.workers.values().flat_map(|w| &w.parked_ids) {
                let Some(device) = state.devices.get(device_id) else {
                    continue;
                };
                if let Some(to) = decide(
                    device.lifecycle,
                    device.state_changed_at_ms,
                    now_ms,
                    now_ms,
                    self.bounds,
                ) {
                    changes.push((device_id.clone(), device.lifecycle, to));
                }
            }
            changes
        };
        let changed = changes.len();
        self.commit(changes).await.map(|()| changed)
    }

    /// The live view of one device.
    pub fn device_view(&self, device_id: &str) -> Option<DeviceLiveView> {
        let state = self.lock();
        let device = state.devices.get(device_id)?;
        let worker_last_seen_ms = state
            .workers
            .get(&device.worker_id)
            .map_or(0, |w| w.last_seen_ms);
        Some(DeviceLiveView {
            latest: device.latest.clone(),
            worker_last_seen_ms,
        })
    }

    /// Whether the worker has a session now, and when it was last heard from.
    pub fn worker_view(&self, worker_id: &str) -> (bool, Option<i64>) {
        let state = self.lock();
        state.workers.get(worker_id).map_or((false, None), |w| {
            (w.session.is_some(), Some(w.last_seen_ms))
        })
    }

    /// The device's lifecycle in the working copy.
    pub fn lifecycle(&self, device_id: &str) -> Option<Lifecycle> {
        self.lock().devices.get(device_id).map(|d| d.lifecycle)
    }

    /// The worker's devices, as last bound by a session.
    pub fn worker_device_ids(&self, worker_id: &str) -> Vec<String> {
        self.lock()
            .workers
            .get(worker_id)
            .map(|w| w.device_ids.clone())
            .unwrap_or_default()
    }

    /// Forgets a removed device, and ends its worker's session so that the worker reconnects
    /// and learns its new device list (otherwise it would keep reporting the removed one).
    pub fn forget_device(&self, device_id: &str) {
        let mut state = self.lock();
        if let Some(device) = state.devices.remove(device_id)
            && let Some(worker) = state.workers.get_mut(&device.worker_id)
        {
            worker.device_ids.retain(|id| id != device_id);
            worker.parked_ids.retain(|id| id != device_id);
            if let Some(session) = worker.session.take() {
                let _ = session.kick.send(());
                self.metrics.workers_connected.dec();
            }
        }
    }

    /// Forgets a removed worker and ends its session.
    pub fn forget_worker(&self, worker_id: &str) {
        let mut state = self.lock();
        if let Some(worker) = state.workers.remove(worker_id) {
            for device_id in worker.device_ids.iter().chain(&worker.parked_ids) {
                state.devices.remove(device_id);
            }
            if let Some(session) = worker.session {
                let _ = session.kick.send(());
                self.metrics.workers_connected.dec();
            }
        }
    }

    /// Takes the closed telemetry buckets, plus open buckets older than the current one, so
    /// history reaches the database even for devices that stopped reporting.
    pub fn take_closed_buckets(&self, now_ms: i64) -> Vec<TelemetryBucketRow> {
        let bucket_ms = i64::try_from(self.telemetry_bucket_s * 1000).unwrap_or(i64::MAX);
        let current_start_ms = now_ms - now_ms.rem_euclid(bucket_ms);
        let mut guard = self.lock();
        let state = &mut *guard;
        for (device_id, device) in &mut state.devices {
            if device
                .bucket
                .as_ref()
                .is_some_and(|b| b.bucket_start_ms() < current_start_ms)
                && let Some(stale) = device.bucket.take()
            {
                state
                    .closed_buckets
                    .push_back(stale.close(device_id, self.telemetry_bucket_s));
            }
        }
        std::mem::take(&mut state.closed_buckets).into()
    }

    /// Last-seen stamps of connected workers, for the periodic database write.
    pub fn connected_last_seen(&self) -> Vec<(String, i64)> {
        let state = self.lock();
        state
            .workers
            .iter()
            .filter(|(_, w)| w.session.is_some())
            .map(|(id, w)| (id.clone(), w.last_seen_ms))
            .collect()
    }

    fn update_device_gauges(&self) {
        let mut counts = [0i64; DeviceState::ALL.len()];
        for device in self.lock().devices.values() {
            counts[device.lifecycle.state as usize] += 1;
        }
        for (state, count) in DeviceState::ALL.into_iter().zip(counts) {
            self.metrics
                .devices
                .get_or_create(&vec![("state", state.as_str().to_owned())])
                .set(count);
        }
    }
}

impl DeviceLive {
    fn from_row(row: &DeviceRow) -> DeviceLive {
        DeviceLive {
            worker_id: row.worker_id.clone(),
            lifecycle: lifecycle_of(row),
            state_changed_at_ms: row.state_changed_at_ms,
            latest: None,
            bucket: None,
        }
    }
}

fn push_bounded(
    closed: &mut VecDeque<TelemetryBucketRow>,
    bucket: TelemetryBucketRow,
    metrics: &Metrics,
) {
    if closed.len() >= CLOSED_BUCKETS_MAX {
        closed.pop_front();
        metrics.telemetry_buckets_dropped.inc();
    }
    closed.push_back(bucket);
}
