//! The device lifecycle as a pure function: a state, the state to return to after `down`, and
//! an event go in; the next pair or a refusal comes out. Every state change in the coordinator
//! goes through [`transition`], so the rules live in one place and are tested here.

use DeviceState::*;
use flotilla_proto::device::DeviceState;

/// Something that happens to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Its hardware was verified (the admission step; proof of compute takes it over).
    Admitted,
    /// Its hardware is not accepted by the network.
    Rejected,
    Hired,
    Released,
    /// The supplier took it off the market.
    Paused,
    Resumed,
    /// Its worker was silent past the grace period.
    HeartbeatsMissed,
    /// Its worker spoke again.
    HeartbeatResumed,
    /// It stayed down past the inactivity period.
    DownTooLong,
    /// It was blocked for cause.
    Blocked,
}

/// A device's state together with the state it returns to when it comes back from `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub state: DeviceState,
    pub before_down: Option<DeviceState>,
}

/// Why an event does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a device that is {state} cannot be {event}")]
pub struct TransitionRefused {
    pub state: DeviceState,
    pub event: &'static str,
}

impl DeviceEvent {
    fn past_tense(self) -> &'static str {
        match self {
            DeviceEvent::Admitted => "admitted",
            DeviceEvent::Rejected => "rejected",
            DeviceEvent::Hired => "hired",
            DeviceEvent::Released => "released",
            DeviceEvent::Paused => "paused",
            DeviceEvent::Resumed => "resumed",
            DeviceEvent::HeartbeatsMissed => "marked down",
            DeviceEvent::HeartbeatResumed => "brought back",
            DeviceEvent::DownTooLong => "made inactive",
            DeviceEvent::Blocked => "blocked",
        }
    }
}

/// The next lifecycle, `Ok(None)` when the event changes nothing (e.g. a heartbeat from a
/// device that is up), or a refusal.
pub fn transition(
    now: Lifecycle,
    event: DeviceEvent,
) -> Result<Option<Lifecycle>, TransitionRefused> {
    let to = |state| {
        Ok(Some(Lifecycle {
            state,
            before_down: None,
        }))
    };
    let down_returning_to = |state| {
        Ok(Some(Lifecycle {
            state: now.state,
            before_down: Some(state),
        }))
    };
    let refused = Err(TransitionRefused {
        state: now.state,
        event: event.past_tense(),
    });
    match (event, now.state) {
        (DeviceEvent::Blocked, Blocked) => Ok(None),
        (DeviceEvent::Blocked, _) => to(Blocked),
        (_, Blocked) => refused,

        (DeviceEvent::Admitted, Pending) => to(Idle),
        (DeviceEvent::Rejected, Pending) => to(Unsupported),

        (DeviceEvent::Hired, Idle) => to(Hired),
        (DeviceEvent::Released, Hired) => to(Idle),
        // Work that ends (or moves away) while its device is down leaves it to come back idle,
        // not hired by nobody.
        (DeviceEvent::Released, Down | Inactive) => match now.before_down {
            Some(Hired) => down_returning_to(Idle),
            _ => refused,
        },

        (DeviceEvent::Paused, Idle) => to(Paused),
        (DeviceEvent::Paused, Paused) => Ok(None),
        // A down device paused by its supplier comes back paused.
        (DeviceEvent::Paused, Down | Inactive) => match now.before_down {
            Some(Idle | Paused) => down_returning_to(Paused),
            _ => refused,
        },
        (DeviceEvent::Resumed, Paused) => to(Idle),
        (DeviceEvent::Resumed, Idle) => Ok(None),
        (DeviceEvent::Resumed, Down | Inactive) => match now.before_down {
            Some(Paused | Idle) => down_returning_to(Idle),
            _ => refused,
        },

        (DeviceEvent::HeartbeatsMissed, Pending | Idle | Hired | Paused) => Ok(Some(Lifecycle {
            state: Down,
            before_down: Some(now.state),
        })),
        (DeviceEvent::HeartbeatsMissed, _) => Ok(None),
        (DeviceEvent::HeartbeatResumed, Down | Inactive) => to(now.before_down.unwrap_or(Pending)),
        (DeviceEvent::HeartbeatResumed, _) => Ok(None),
        (DeviceEvent::DownTooLong, Down) => Ok(Some(Lifecycle {
            state: Inactive,
            before_down: now.before_down,
        })),
        (DeviceEvent::DownTooLong, _) => Ok(None),
        _ => refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(state: DeviceState) -> Lifecycle {
        Lifecycle {
            state,
            before_down: None,
        }
    }

    fn down_from(state: DeviceState) -> Lifecycle {
        Lifecycle {
            state: Down,
            before_down: Some(state),
        }
    }

    #[test]
    fn the_happy_path() {
        let idle = transition(at(Pending), DeviceEvent::Admitted)
            .unwrap()
            .unwrap();
        assert_eq!(idle, at(Idle));
        let hired = transition(idle, DeviceEvent::Hired).unwrap().unwrap();
        assert_eq!(
            transition(hired, DeviceEvent::Released).unwrap().unwrap(),
            at(Idle)
        );
    }

    #[test]
    fn a_device_back_from_down_returns_to_its_earlier_state() {
        for earlier in [Pending, Idle, Hired, Paused] {
            let down = transition(at(earlier), DeviceEvent::HeartbeatsMissed)
                .unwrap()
                .unwrap();
            assert_eq!(down, down_from(earlier));
            let inactive = transition(down, DeviceEvent::DownTooLong).unwrap().unwrap();
            assert_eq!(inactive.state, Inactive);
            assert_eq!(
                transition(down, DeviceEvent::HeartbeatResumed)
                    .unwrap()
                    .unwrap(),
                at(earlier)
            );
            assert_eq!(
                transition(inactive, DeviceEvent::HeartbeatResumed)
                    .unwrap()
                    .unwrap(),
                at(earlier)
            );
        }
    }

    #[test]
    fn a_device_released_while_down_comes_back_idle() {
        let down = transition(at(Hired), DeviceEvent::HeartbeatsMissed)
            .unwrap()
            .unwrap();
        let released = transition(down, DeviceEvent::Released).unwrap().unwrap();
        assert_eq!((released.state, released.before_down), (Down, Some(Idle)));
        let back = transition(released, DeviceEvent::HeartbeatResumed)
            .unwrap()
            .unwrap();
        assert_eq!(back.state, Idle);
        let idle_down = transition(at(Idle), DeviceEvent::HeartbeatsMissed)
            .unwrap()
            .unwrap();
        assert!(transition(idle_down, DeviceEvent::Released).is_err());
    }

    #[test]
    fn heartbeats_do_not_move_devices_that_are_up() {
        for state in [Pending, Idle, Hired, Paused, Unsupported] {
            assert_eq!(
                transition(at(state), DeviceEvent::HeartbeatResumed),
                Ok(None)
            );
        }
        assert_eq!(
            transition(down_from(Idle), DeviceEvent::HeartbeatsMissed),
            Ok(None)
        );
    }

    #[test]
    fn pausing_rules() {
        assert_eq!(
            transition(at(Idle), DeviceEvent::Paused).unwrap().unwrap(),
            at(Paused)
        );
        assert_eq!(
            transition(at(Paused), DeviceEvent::Resumed)
                .unwrap()
                .unwrap(),
            at(Idle)
        );
        assert!(
            transition(at(Hired), DeviceEvent::Paused).is_err(),
            "hired work is not cut off"
        );
        assert!(transition(at(Pending), DeviceEvent::Paused).is_err());
        let paused_while_down = transition(down_from(Idle), DeviceEvent::Paused)
            .unwrap()
            .unwrap();
        assert_eq!(paused_while_down, down_from(Paused));
        let back = transition(paused_while_down, DeviceEvent::HeartbeatResumed)
            .unwrap()
            .unwrap();
        assert_eq!(back, at(Paused));
    }

    #[test]
    fn blocked_is_final() {
        for state in DeviceState::ALL {
            let blocked = transition(at(state), DeviceEvent::Blocked).unwrap();
            assert_eq!(blocked.map(|l| l.state).unwrap_or(state), Blocked);
        }
        for event in [
            DeviceEvent::Admitted,
            DeviceEvent::Resumed,
            DeviceEvent::Hired,
            DeviceEvent::Paused,
        ] {
            assert!(transition(at(Blocked), event).is_err());
        }
        assert!(transition(at(Blocked), DeviceEvent::HeartbeatResumed).is_err());
    }

    #[test]
    fn every_state_and_event_has_an_answer_without_panicking() {
        let events = [
            DeviceEvent::Admitted,
            DeviceEvent::Rejected,
            DeviceEvent::Hired,
            DeviceEvent::Released,
            DeviceEvent::Paused,
            DeviceEvent::Resumed,
            DeviceEvent::HeartbeatsMissed,
            DeviceEvent::HeartbeatResumed,
            DeviceEvent::DownTooLong,
            DeviceEvent::Blocked,
        ];
        for state in DeviceState::ALL {
            // A valid lifecycle remembers a state exactly when it is down or inactive.
            let remembered: &[Option<DeviceState>] = if matches!(state, Down | Inactive) {
                &[Some(Idle), Some(Hired), Some(Paused)]
            } else {
                &[None]
            };
            for &before_down in remembered {
                for event in events {
                    if let Ok(Some(next)) = transition(Lifecycle { state, before_down }, event) {
                        assert_eq!(
                            next.before_down.is_some(),
                            matches!(next.state, Down | Inactive)
                        );
                    }
                }
            }
        }
    }
}
