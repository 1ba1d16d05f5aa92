//! The lifecycle actions of an instance, launching or terminating: finding its group and
//! hook, confirming a termination, keeping the action alive with heartbeats while drover
//! works, and completing it exactly when Auto Scaling is ready to take the answer.
//!
//! Always by instance id, never by a message's token: tokens travel in the queue, and a
//! forged message could pair one instance with another's token. By instance id, drover
//! answers only the action of the instance it took out.

use std::time::Duration;

use tokio::time::Instant;

use crate::lifecycle::{
    ActionRef, CallFailure, GroupMembership, LifecycleActions, LifecycleResult, Transition,
};
use crate::retry::{self, poll_until, Check, Pace, RetryError};

/// The hook's default when `DescribeLifecycleHooks` does not say.
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Looks at the group before completing start short: the group lags IMDS by seconds.
const COMPLETE_POLL: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(5));
/// Longest wait between retries of a failed Describe call.
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HookError<E: std::error::Error + 'static> {
    #[error(transparent)]
    AutoScaling(E),
    #[error("group {group} has no {} hook named {hook:?}", .transition.noun())]
    NoSuchHook {
        group: String,
        hook: String,
        transition: Transition,
    },
    #[error("{0}")]
    OutOfTime(String),
    #[error("{instance_id} is {state} in its group, not waiting on a lifecycle action")]
    NotWaiting { instance_id: String, state: String },
}

impl<E: CallFailure> HookError<E> {
    fn is_transient(&self) -> bool {
        matches!(self, HookError::AutoScaling(e) if e.is_transient())
    }
}

/// The lifecycle action to answer, named by instance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub heartbeat_timeout: Duration,
    pub transition: Transition,
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

/// What Auto Scaling says about the lifecycle action to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookLookup {
    Found(HookTarget),
    /// Certainly nothing to complete: no group, no termination hook, not terminating.
    NoAction,
    /// Auto Scaling could not tell; an action may be waiting.
    Unknown(String),
}

/// How a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Completed,
    /// Someone (a peer, an earlier drover, the timeout) already completed it.
    AlreadyDone,
}

/// The instance's place in its group, transient failures retried until `deadline`.
pub async fn membership<L: LifecycleActions>(
    asg: &L,
    instance_id: &str,
    deadline: Instant,
) -> Result<Option<GroupMembership>, RetryError<L::Error>> {
    retry::until(
        "asking Auto Scaling about the instance",
        deadline,
        RETRY_MAX,
        L::Error::is_transient,
        || asg.membership(instance_id),
    )
    .await
}

/// Why the group does not confirm that `instance_id` is terminating, if it does not. A
/// queue message is only a claim: anyone who can send to the queue could forge one, so
/// drover acts only when the group itself shows the instance terminating. `claimed_group`
/// is the group the message names: it must be the instance's.
pub async fn unconfirmed_termination<L: LifecycleActions>(
    asg: &L,
    instance_id: &str,
    claimed_group: Option<&str>,
    deadline: Instant,
) -> Option<String> {
    match membership(asg, instance_id, deadline).await {
        Ok(Some(m)) if claimed_group.is_some_and(|g| g != m.group) => Some(format!(
            "the message names group {}, but {instance_id} is in group {}",
            claimed_group.unwrap_or_default(),
            m.group
        )),
        Ok(Some(m)) if m.is_terminating() => None,
        Ok(Some(m)) => Some(format!(
            "group {} shows {instance_id} {}, not terminating",
            m.group,
            m.lifecycle_state.as_deref().unwrap_or("?")
        )),
        // In no group: a plain host, one detached, or an instance long gone. A message
        // cannot tell these apart from a forgery, and a host is never taken out on a claim
        // alone; the message goes to the dead-letter queue for a person to see.
        Ok(None) => Some(format!(
            "{instance_id} is in no Auto Scaling group, so nothing confirms it is terminating"
        )),
        Err(e) => Some(format!("cannot confirm it with Auto Scaling: {e}")),
    }
}

/// The lifecycle action of `transition` to answer for `instance_id`: its group (the
/// message's, else from Auto Scaling) and the hook of that transition there. A hook the
/// message names is used only when the group lists it with that transition: a message is a
/// claim, the group is the fact.
pub async fn resolve_target<L: LifecycleActions>(
    asg: &L,
    transition: Transition,
    instance_id: &str,
    group: Option<&str>,
    hook: Option<&str>,
    configured_hook: Option<&str>,
) -> Result<Option<HookTarget>, HookError<L::Error>> {
    let group = match group {
        Some(g) => g.to_string(),
        None => match asg
            .membership(instance_id)
            .await
            .map_err(HookError::AutoScaling)?
        {
            Some(m) => m.group,
            None => return Ok(None),
        },
    };
    let hooks = asg.hooks(&group).await.map_err(HookError::AutoScaling)?;
    let of_transition = |name: &str| {
        hooks
            .iter()
            .find(|h| h.name == name && h.transition == transition.as_str())
    };
    let chosen = match (hook.and_then(of_transition), configured_hook) {
        (Some(named), _) => Some(named),
        (None, Some(name)) => match of_transition(name) {
            Some(h) => Some(h),
            None => {
                return Err(HookError::NoSuchHook {
                    group,
                    hook: name.to_string(),
                    transition,
                })
            }
        },
        (None, None) => hooks.iter().find(|h| h.transition == transition.as_str()),
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
        transition,
    }))
}

/// [`resolve_target`] with transient failures retried until `deadline`, as a lookup: not
/// knowing is not "nothing to do", because an action may be waiting.
pub async fn look_up<L: LifecycleActions>(
    asg: &L,
    transition: Transition,
    instance_id: &str,
    group: Option<&str>,
    hook: Option<&str>,
    configured_hook: Option<&str>,
    deadline: Instant,
) -> HookLookup {
    let found = retry::until(
        "finding the lifecycle hook",
        deadline,
        RETRY_MAX,
        HookError::is_transient,
        || resolve_target(asg, transition, instance_id, group, hook, configured_hook),
    )
    .await;
    match found {
        Ok(Some(target)) => HookLookup::Found(target),
        Ok(None) => HookLookup::NoAction,
        Err(e) => HookLookup::Unknown(format!("cannot tell the lifecycle hook: {e}")),
    }
}

/// Sends heartbeats every [`HookTarget::heartbeat_interval`], for as long as it is polled
/// (it never ends on its own). Before the instance reaches its wait state a heartbeat is
/// refused; that is expected and ignored.
pub async fn keep_alive<L: LifecycleActions>(asg: &L, target: &HookTarget) {
    let interval = target.heartbeat_interval();
    loop {
        tokio::time::sleep(interval).await;
        match asg.heartbeat(target.action_ref()).await {
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

/// Where an instance's lifecycle state leaves an action of one transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not at the wait state yet: look again.
    Before,
    /// Waiting for the answer.
    Waiting,
    /// Past it: answered by someone, or timed out.
    Past,
    /// A state from which no action of this transition comes.
    Elsewhere,
}

/// The stage of a `transition` action for an instance in `state` (`None`: in no group).
fn stage(transition: Transition, state: Option<&str>) -> Stage {
    let Some(state) = state else {
        return Stage::Past;
    };
    match transition {
        // A scale-in with instance reuse sends the instance back to the warm pool instead of
        // terminating it, and the termination hook holds it in Warmed:Pending:Wait.
        Transition::Terminating => match state {
            "Terminating:Wait" | "Warmed:Terminating:Wait" | "Warmed:Pending:Wait" => {
                Stage::Waiting
            }
            "Terminating:Proceed"
            | "Terminated"
            | "Warmed:Terminating:Proceed"
            | "Warmed:Terminated"
            | "Warmed:Pending:Proceed"
            | "Warmed:Stopped"
            | "Warmed:Running"
            | "Warmed:Hibernated" => Stage::Past,
            "Pending" | "Pending:Wait" | "Pending:Proceed" | "InService" | "Terminating"
            | "Warmed:Terminating" | "Warmed:Pending" => Stage::Before,
            _ => Stage::Elsewhere,
        },
        Transition::Launching => match state {
            "Pending:Wait" | "Warmed:Pending:Wait" => Stage::Waiting,
            "Pending" | "Warmed:Pending" => Stage::Before,
            // Answered (CONTINUE goes on into service or into the pool; ABANDON terminates),
            // or timed out with the hook's default result.
            "Pending:Proceed"
            | "InService"
            | "Warmed:Pending:Proceed"
            | "Warmed:Stopped"
            | "Warmed:Running"
            | "Warmed:Hibernated" => Stage::Past,
            s if s.starts_with("Terminating") || s.starts_with("Warmed:Terminat") => Stage::Past,
            _ => Stage::Elsewhere,
        },
    }
}

/// Completes the action with `result` before `deadline`, and never before the group shows
/// the instance waiting on it (`Terminating:Wait`, `Pending:Wait`, `Warmed:Pending:Wait`).
///
/// IMDS says `Terminated` seconds before the group catches up, and a message can arrive
/// before the group reaches the wait state. Asking first keeps drover from answering an
/// action that is not there yet, and tells "not yet" from "already done", which the
/// service's `No active Lifecycle Action` leaves ambiguous.
pub async fn complete<L: LifecycleActions>(
    asg: &L,
    target: &HookTarget,
    result: LifecycleResult,
    deadline: Instant,
) -> Result<Completion, HookError<L::Error>> {
    let instance_id = target.instance_id.as_str();
    let completed = poll_until(
        "completing the lifecycle action",
        deadline,
        COMPLETE_POLL,
        || async {
            let m = match asg.membership(instance_id).await {
                Ok(m) => m,
                Err(e) if e.is_transient() => {
                    tracing::warn!("asking Auto Scaling before completing failed: {e}; retrying");
                    return Ok(Check::NotYet(e.to_string()));
                }
                Err(e) => return Err(HookError::AutoScaling(e)),
            };
            let state = m.as_ref().and_then(|m| m.lifecycle_state.as_deref());
            match stage(target.transition, state) {
                // Gone from the group, or past the wait: someone answered, or it timed out.
                Stage::Past => Ok(Check::Done(Completion::AlreadyDone)),
                Stage::Waiting => match asg.complete(target.action_ref(), result).await {
                    Ok(()) => Ok(Check::Done(Completion::Completed)),
                    // Answered by someone else between the two calls: the next look at the
                    // group says so.
                    Err(e) if e.is_no_active_action() || e.is_transient() => {
                        tracing::warn!("completing the lifecycle action failed: {e}; retrying");
                        Ok(Check::NotYet(e.to_string()))
                    }
                    Err(e) => Err(HookError::AutoScaling(e)),
                },
                Stage::Before => {
                    let state = state.unwrap_or("?");
                    tracing::info!(
                        state,
                        "the group does not hold the instance at the hook yet; waiting to answer"
                    );
                    Ok(Check::NotYet(format!("instance {instance_id} is {state}")))
                }
                Stage::Elsewhere => Err(HookError::NotWaiting {
                    instance_id: instance_id.to_string(),
                    state: state.unwrap_or("of unknown state").to_string(),
                }),
            }
        },
    )
    .await;
    completed.map_err(|e| match e {
        RetryError::Failed(e) => e,
        RetryError::OutOfTime { budget, last, .. } => HookError::OutOfTime(format!(
            "lifecycle action of {instance_id} not completed within {}: {last}",
            retry::rounded(budget)
        )),
    })
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
            transition: Transition::Terminating,
        }
    }

    #[test]
    fn heartbeats_come_at_most_a_third_apart() {
        assert_eq!(target(300).heartbeat_interval(), Duration::from_secs(100));
        assert_eq!(target(30).heartbeat_interval(), Duration::from_secs(10));
        assert_eq!(target(1).heartbeat_interval(), Duration::from_secs(1));
    }

    #[test]
    fn each_transition_waits_in_its_own_state() {
        use Stage::*;
        let t = Transition::Terminating;
        assert_eq!(stage(t, Some("Terminating:Wait")), Waiting);
        assert_eq!(stage(t, Some("InService")), Before);
        assert_eq!(stage(t, Some("Terminated")), Past);
        assert_eq!(stage(t, None), Past);
        assert_eq!(stage(t, Some("Standby")), Elsewhere);
        assert_eq!(stage(t, Some("Warmed:Terminating:Wait")), Waiting);
        // Back to the pool on scale-in: the termination hook holds it there.
        assert_eq!(stage(t, Some("Warmed:Pending:Wait")), Waiting);
        assert_eq!(stage(t, Some("Warmed:Stopped")), Past);
        let l = Transition::Launching;
        assert_eq!(stage(l, Some("Pending")), Before);
        assert_eq!(stage(l, Some("Pending:Wait")), Waiting);
        assert_eq!(stage(l, Some("Warmed:Pending:Wait")), Waiting);
        assert_eq!(stage(l, Some("InService")), Past);
        assert_eq!(stage(l, Some("Warmed:Stopped")), Past);
        assert_eq!(stage(l, Some("Terminating:Wait")), Past);
        assert_eq!(stage(l, Some("Standby")), Elsewhere);
    }
}
