//! The scheduler: decides who gets which GPUs.
//!
//! Pure: an immutable [`Snapshot`] of offers and a queue of [`Request`]s go in, a [`Plan`]
//! (placements, and a reason for each request left waiting) comes out. No IO, no clock reads
//! (the caller passes `now_ms`), no global state, and the same input always gives the same plan,
//! so the coordinator, the simulator and the tests all run the same code.
//!
//! - [`market`]: the index over free devices and gang placement of one request.
//! - [`score`]: the documented weighted score that ranks what the constraints leave.
//! - [`plan`]: queue order (priority classes, aging, renters taking turns), the plan, and
//!   replacement of failed nodes.
//! - [`query`]: the offer search language; [`offers`]: the search itself.
//! - [`explain`]: "why no match?" and the cheapest relaxation.
//! - [`prices`]: the per-model market price index.
//! - [`simulate`]: a deterministic discrete-event simulation of the market.
//!
//! Invariants: a placement only uses devices that are idle, verified and unpaused, never more
//! than exist, never over a request's price limit or budget, and places every node of a request
//! or none.

pub mod explain;
mod hash;
pub mod market;
pub mod offers;
pub mod plan;
pub mod prices;
pub mod query;
pub mod score;
pub mod simulate;
pub mod synthetic;
pub mod types;

pub use plan::{LostShape, plan, plan_replacement, plan_replacement_like, queue_order};
pub use types::*;

#[cfg(test)]
mod tests;
