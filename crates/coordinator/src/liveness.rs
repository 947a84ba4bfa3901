//! Failure detection as a pure decision per device: given its lifecycle, when it last changed,
//! and when its worker was last heard from, does it go `down` or `inactive` now? The fleet's
//! sweep loop feeds every device through [`decide`] and applies what comes out.

use flotilla_proto::device::DeviceState;

use crate::device_state::{DeviceEvent, Lifecycle, transition};

/// The bounds the decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessBounds {
    /// Silence after which a device goes down.
    pub grace_ms: i64,
    /// Time down after which a device goes inactive.
    pub inactive_after_ms: i64,
}

/// The device's next lifecycle, if the sweep changes it.
pub fn decide(
    lifecycle: Lifecycle,
    state_changed_at_ms: i64,
    worker_last_seen_ms: i64,
    now_ms: i64,
    bounds: LivenessBounds,
) -> Option<Lifecycle> {
    let event = match lifecycle.state {
        DeviceState::Down if now_ms - state_changed_at_ms > bounds.inactive_after_ms => {
            DeviceEvent::DownTooLong
        }
        _ if now_ms - worker_last_seen_ms > bounds.grace_ms => DeviceEvent::HeartbeatsMissed,
        _ => return None,
    };
    transition(lifecycle, event).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    const BOUNDS: LivenessBounds = LivenessBounds {
        grace_ms: 1_000,
        inactive_after_ms: 10_000,
    };

    fn at(state: DeviceState) -> Lifecycle {
        let before_down = matches!(state, Down | Inactive).then_some(Idle);
        Lifecycle { state, before_down }
    }

    #[test]
    fn silence_past_grace_means_down_and_exactly_grace_does_not() {
        let down = decide(at(Idle), 0, 0, 1_001, BOUNDS).unwrap();
        assert_eq!(
            down,
            Lifecycle {
                state: Down,
                before_down: Some(Idle)
            }
        );
        assert_eq!(decide(at(Idle), 0, 0, 1_000, BOUNDS), None);
        assert_eq!(
            decide(at(Hired), 0, 900, 1_001, BOUNDS),
            None,
            "heard from recently"
        );
        assert_eq!(decide(at(Paused), 0, 0, 1_001, BOUNDS).unwrap().state, Down);
    }

    #[test]
    fn long_down_means_inactive_and_refused_devices_never_go_down() {
        assert_eq!(
            decide(at(Down), 0, 0, 20_000, BOUNDS).unwrap().state,
            Inactive
        );
        assert_eq!(decide(at(Down), 15_000, 0, 20_000, BOUNDS), None);
        assert_eq!(decide(at(Unsupported), 0, 0, 20_000, BOUNDS), None);
        assert_eq!(decide(at(Blocked), 0, 0, 20_000, BOUNDS), None);
        assert_eq!(decide(at(Inactive), 0, 0, 20_000, BOUNDS), None);
    }
}
