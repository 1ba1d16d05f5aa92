//! Termination sources: each notices a termination its own way and sends the same
//! [`Work`](crate::work::Work) value through the one door into the workflow. A new source
//! is a new producer here; nothing else changes.
//!
//! - [`startup`]: what the state at start calls for (an unfinished take-out to resume, an
//!   instance already terminating, a Spot notice already out).
//! - [`imds_poll`]: the target lifecycle state turning `Terminated`, a Spot notice.
//! - [`queue`]: lifecycle-hook messages in SQS; settles each message by the outcome.
//! - [`signal`]: SIGTERM and SIGINT, and the decision what a stop means for the host.
//! - [`reaper`]: sweeps of the environment for hosts whose instance died without a clean
//!   stop, and warmed instances terminated from the pool with no one to answer for them.

pub mod imds_poll;
#[cfg(feature = "aws")]
pub mod queue;
pub mod reaper;
pub mod signal;
pub mod startup;
