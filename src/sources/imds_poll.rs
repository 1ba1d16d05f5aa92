//! The IMDS sources: the instance's target lifecycle state turning `Terminated` (or
//! `Warmed:*` after being in service: a scale-in that sends the instance back to its warm
//! pool, where it is stopped), and a pending Spot interruption, all polled every
//! `lifecycle.imds_poll`. Costs no AWS API call while idle.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::imds::{Imds, SpotAction};
use crate::lifecycle::is_warm_pool_state;
use crate::work::{Source, Termination, Work};

/// One IMDS read in a poll may take this long before the poll moves on.
const READ_BUDGET: Duration = Duration::from_secs(3);

/// The termination a Spot notice means, if it means one: urgent, with the notice's time as
/// the hard deadline (two minutes from now when the time is unreadable).
pub fn spot_termination(own_instance: &str, action: &SpotAction) -> Option<Termination> {
    if !matches!(action.action.as_str(), "terminate" | "stop" | "hibernate") {
        return None;
    }
    tracing::warn!(action = %action.action, time = %action.time, "Spot interruption notice");
    let mut t = Termination::new(own_instance, Source::Spot);
    t.urgent = true;
    t.deadline = humantime::parse_rfc3339_weak(&action.time)
        .ok()
        .or_else(|| SystemTime::now().checked_add(Duration::from_secs(120)));
    Some(t)
}

/// The termination a change of the target lifecycle state from `before` to `now` means.
pub fn state_termination(
    own_instance: &str,
    before: Option<&str>,
    now: &str,
) -> Option<Termination> {
    if now == "Terminated" {
        tracing::info!("target lifecycle state is Terminated");
        return Some(Termination::new(own_instance, Source::ImdsTargetState));
    }
    // Into the pool from service; an instance that starts in the pool is not registered.
    if is_warm_pool_state(now) && !before.is_some_and(is_warm_pool_state) {
        tracing::info!("target lifecycle state is {now}: the instance goes back to its warm pool");
        return Some(Termination::new(own_instance, Source::WarmPool));
    }
    None
}

/// Polls until `stop` is cancelled; sends each kind of termination once. `initial` is the
/// target lifecycle state at start.
pub async fn watch(
    imds: Imds,
    own_instance: String,
    interval: Duration,
    initial: Option<String>,
    tx: mpsc::Sender<Work>,
    stop: CancellationToken,
) {
    let mut last_state = initial;
    let mut sent_state = false;
    let mut sent_spot = false;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut failed = None;
        if !sent_state {
            match imds.target_lifecycle_state_within(READ_BUDGET).await {
                Ok(Some(state)) => {
                    if let Some(t) = state_termination(&own_instance, last_state.as_deref(), &state)
                    {
                        sent_state = send(&tx, t).await;
                    }
                    last_state = Some(state);
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        if !sent_spot {
            match imds.spot_action(READ_BUDGET).await {
                Ok(Some(action)) => {
                    if let Some(t) = spot_termination(&own_instance, &action) {
                        sent_spot = send(&tx, t).await;
                    }
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => failures = 0,
            Some(e) => {
                failures += 1;
                if failures == 1 || failures % 60 == 0 {
                    tracing::warn!("polling IMDS failed ({failures} in a row): {e}");
                }
            }
        }
    }
}

/// Sends a termination whose outcome this source does not wait for: the workflow records
/// it, and a later source (or a restart) resumes it.
async fn send(tx: &mpsc::Sender<Work>, termination: Termination) -> bool {
    tx.send(Work::Terminate {
        termination,
        reply: None,
    })
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminated_and_a_return_to_the_pool_are_terminations() {
        let t = |before, now| state_termination("i-1", before, now).map(|t| t.source);
        assert_eq!(
            t(Some("InService"), "Terminated"),
            Some(Source::ImdsTargetState)
        );
        assert_eq!(t(None, "Terminated"), Some(Source::ImdsTargetState));
        assert_eq!(
            t(Some("InService"), "Warmed:Stopped"),
            Some(Source::WarmPool)
        );
        assert_eq!(t(None, "Warmed:Hibernated"), Some(Source::WarmPool));
        // Started in the pool: nothing was registered, nothing to take out.
        assert_eq!(t(Some("Warmed:Running"), "Warmed:Stopped"), None);
        assert_eq!(t(Some("Warmed:Stopped"), "InService"), None);
        assert_eq!(t(Some("InService"), "InService"), None);
    }
}
