//! The IMDS sources: the instance's target lifecycle state turning `Terminated`, and a
//! pending Spot interruption, both polled every `lifecycle.imds_poll`. Costs no AWS API
//! call while idle.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::imds::{Imds, SpotAction};
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

/// Polls until `stop` is cancelled; sends each kind of termination once.
pub async fn watch(
    imds: Imds,
    own_instance: String,
    interval: Duration,
    tx: mpsc::Sender<Work>,
    stop: CancellationToken,
) {
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
                Ok(Some(state)) if state == "Terminated" => {
                    tracing::info!("target lifecycle state is Terminated");
                    let t = Termination::new(own_instance.clone(), Source::ImdsTargetState);
                    sent_state = send(&tx, t).await;
                }
                Ok(_) => {}
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
