//! Termination sources: each notices a termination its own way and produces the same
//! [`Termination`](crate::termination::Termination) into one channel.

pub mod imds_poll;
pub mod queue;
pub mod signal;
