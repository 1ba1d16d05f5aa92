//! Completing an instance's termination lifecycle action: finding the group and hook,
//! keeping the action alive with heartbeats while drover works, and completing it exactly
//! when Auto Scaling is ready to take the answer.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::autoscaling::{ActionRef, AutoScaling, AutoScalingError, TERMINATING_TRANSITION};

/// The hook's default when `DescribeLifecycleHooks` does not say.
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    AutoScaling(#[from] AutoScalingError),
    #[error("group {group} has no termination hook named {hook:?}")]
    NoSuchHook { group: String, hook: String },
    #[error("lifecycle action of {instance_id} not completed within {}: {last}", crate::retry::rounded(*budget))]
    OutOfTime {
        instance_id: String,
        budget: Duration,
        last: String,
    },
    #[error("{instance_id} is {state} in its group, not waiting on a lifecycle action")]
    NotWaiting { instance_id: String, state: String },
}

/// The lifecycle action to complete, named by instance id, never by the message's token:
/// tokens travel in the queue, and a forged message could pair one instance with another's
/// token. By instance id, drover answers only the action of the instance it took out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub heartbeat_timeout: Duration,
}

impl HookTarget {
    fn action_ref(&self) -> ActionRef<'_> {
        ActionRef {
            group: &self.group,
            hook: &self.hook,
            instance_id: &self.instance_id,
        }
    }

    /// Heartbeats come at most a third of the timeout apart, so that two can be lost.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.heartbeat_timeout / 3).max(Duration::from_secs(1))
    }
}

/// How a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Completed,
    /// Someone (a peer, an earlier drover, the timeout) already completed it.
    AlreadyDone,
}

/// The lifecycle action to answer for `instance_id`: its group (the message's, else from
/// Auto Scaling) and the termination hook there. A hook the message names is used only when
/// the group lists it as a termination hook: a message is a claim, the group is the fact.
pub async fn resolve_target(
    asg: &AutoScaling,
    instance_id: &str,
    group: Option<&str>,
    hook: Option<&str>,
    configured_hook: Option<&str>,
) -> Result<Option<HookTarget>, LifecycleError> {
    let group = match group {
        Some(g) => g.to_string(),
        None => match asg.membership(instance_id).await? {
            Some(m) => m.group,
            None => return Ok(None),
        },
    };
    let hooks = asg.hooks(&group).await?;
    let terminating = |name: &str| {
        hooks
            .iter()
            .find(|h| h.name == name && h.transition == TERMINATING_TRANSITION)
    };
    let chosen = match (hook.and_then(terminating), configured_hook) {
        (Some(named), _) => Some(named),
        (None, Some(name)) => match terminating(name) {
            Some(h) => Some(h),
            None => {
                return Err(LifecycleError::NoSuchHook {
                    group,
                    hook: name.to_string(),
                })
            }
        },
        (None, None) => hooks
            .iter()
            .find(|h| h.transition == TERMINATING_TRANSITION),
    };
    let Some(chosen) = chosen else {
        return Ok(None);
    };
    Ok(Some(HookTarget {
        hook: chosen.name.clone(),
        heartbeat_timeout: chosen
            .heartbeat_timeout_secs
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        group,
        instance_id: instance_id.to_string(),
    }))
}

/// Sends heartbeats until `stop` is cancelled. Before the instance reaches
/// `Terminating:Wait` a heartbeat is refused; that is expected and ignored.
pub async fn keep_alive(asg: AutoScaling, target: HookTarget, stop: CancellationToken) {
    let interval = target.heartbeat_interval();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match asg.heartbeat(&target.action_ref()).await {
            Ok(()) => tracing::debug!(hook = %target.hook, "lifecycle heartbeat sent"),
            Err(e) if e.is_no_active_action() => {
                tracing::debug!(
                    "heartbeat refused, the instance is not waiting on the hook yet: {e}"
                )
            }
            Err(e) => tracing::warn!("lifecycle heartbeat failed: {e}"),
        }
    }
}

/// Completes the action with `result` before `deadline`, and never before the group shows
/// the instance in `Terminating:Wait`.
///
/// IMDS says `Terminated` seconds before the group catches up, and a message can arrive
/// before the group reaches the wait state. Asking first keeps drover from answering an
/// action that is not there yet, and tells "not yet" from "already done", which the
/// service's `No active Lifecycle Action` leaves ambiguous.
pub async fn complete(
    asg: &AutoScaling,
    target: &HookTarget,
    result: &str,
    deadline: Instant,
) -> Result<Completion, LifecycleError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut last: String;
    loop {
        match asg.membership(&target.instance_id).await {
            // Gone from the group, or past the wait: someone answered, or it timed out.
            Ok(None) => return Ok(Completion::AlreadyDone),
            Ok(Some(m)) => match m.lifecycle_state.as_deref() {
                Some("Terminating:Proceed" | "Terminated") => return Ok(Completion::AlreadyDone),
                Some("Terminating:Wait") => {
                    match asg.complete(&target.action_ref(), result).await {
                        Ok(()) => return Ok(Completion::Completed),
                        // Answered by someone else between the two calls: the next look
                        // at the group says so.
                        Err(e) if e.is_no_active_action() || e.is_transient() => {
                            tracing::warn!("completing the lifecycle action failed: {e}; retrying");
                            last = e.to_string();
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(
                    state @ ("Pending" | "Pending:Wait" | "Pending:Proceed" | "InService"
                    | "Terminating"),
                ) => {
                    tracing::info!(
                        state,
                        "the group is not at Terminating:Wait yet; waiting to answer"
                    );
                    last = format!("instance {} is {state}", target.instance_id);
                }
                other => {
                    return Err(LifecycleError::NotWaiting {
                        instance_id: target.instance_id.clone(),
                        state: other.unwrap_or("of unknown state").to_string(),
                    })
                }
            },
            Err(e) if e.is_transient() => {
                tracing::warn!("asking Auto Scaling before completing failed: {e}; retrying");
                last = e.to_string();
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() + delay >= deadline {
            return Err(LifecycleError::OutOfTime {
                instance_id: target.instance_id.clone(),
                budget: deadline.saturating_duration_since(started),
                last,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(timeout: u64) -> HookTarget {
        HookTarget {
            group: "g".into(),
            hook: "h".into(),
            instance_id: "i-1".into(),
            heartbeat_timeout: Duration::from_secs(timeout),
        }
    }

    #[test]
    fn heartbeats_come_at_most_a_third_apart() {
        assert_eq!(target(300).heartbeat_interval(), Duration::from_secs(100));
        assert_eq!(target(30).heartbeat_interval(), Duration::from_secs(10));
        assert_eq!(target(1).heartbeat_interval(), Duration::from_secs(1));
    }
}
