//! The vocabulary of Auto Scaling lifecycle actions (transitions, states, results) and the
//! small trait through which the workflow reads a group and answers an action. No I/O: the
//! Auto Scaling client implements the trait, the workflow's tests fake it.

use std::collections::HashMap;
use std::future::Future;

/// The transition of a termination lifecycle hook.
pub const TERMINATING_TRANSITION: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// The transition of a launching lifecycle hook.
pub const LAUNCHING_TRANSITION: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

/// The answer to a lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    /// The word the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// Whether a target lifecycle state (from IMDS) means a warm pool: do not register.
pub fn is_warm_pool_state(state: &str) -> bool {
    state.starts_with("Warmed:")
}

/// Which of a group's two kinds of lifecycle hook an action belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `EC2_INSTANCE_LAUNCHING`: the instance waits in `Pending:Wait` (or
    /// `Warmed:Pending:Wait` on its way into a warm pool).
    Launching,
    /// `EC2_INSTANCE_TERMINATING`: the instance waits in `Terminating:Wait`.
    Terminating,
}

impl Transition {
    /// The name the API gives the transition.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Launching => LAUNCHING_TRANSITION,
            Transition::Terminating => TERMINATING_TRANSITION,
        }
    }

    /// A word for logs and pages.
    pub fn noun(self) -> &'static str {
        match self {
            Transition::Launching => "launching",
            Transition::Terminating => "termination",
        }
    }
}

/// Which launching hook to complete (`lifecycle.launch_hook_name`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LaunchHook {
    /// `""`: the group's `EC2_INSTANCE_LAUNCHING` hook, if it has one.
    #[default]
    FromGroup,
    /// A hook by name; it must be a launching hook of the group.
    Named(String),
    /// `"none"`: never complete one.
    Off,
}

/// Where an instance stands in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembership {
    pub group: String,
    pub lifecycle_state: Option<String>,
}

impl GroupMembership {
    /// `Terminating`, `Terminating:Wait` or `Terminating:Proceed`.
    pub fn is_terminating(&self) -> bool {
        self.lifecycle_state
            .as_deref()
            .is_some_and(|s| s.starts_with("Terminating"))
    }

    /// On its way into service: `Pending`, `Pending:Wait` (a launching hook holds it).
    pub fn is_launching(&self) -> bool {
        matches!(
            self.lifecycle_state.as_deref(),
            Some("Pending" | "Pending:Wait")
        )
    }

    /// On its way into a warm pool: `Warmed:Pending`, `Warmed:Pending:Wait`.
    pub fn is_entering_warm_pool(&self) -> bool {
        matches!(
            self.lifecycle_state.as_deref(),
            Some("Warmed:Pending" | "Warmed:Pending:Wait")
        )
    }
}

/// The state in which a warmed instance's termination hook holds it: terminated from the
/// pool, stopped or not, with nothing running that could answer.
pub const WARMED_TERMINATING_WAIT: &str = "Warmed:Terminating:Wait";

/// An instance in a group's warm pool, as `DescribeWarmPool` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmedInstance {
    pub instance_id: String,
    pub lifecycle_state: Option<String>,
}

/// How many instance ids one `DescribeAutoScalingInstances` call takes.
pub const DESCRIBE_INSTANCES_LIMIT: usize = 50;

/// A lifecycle hook of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleHook {
    pub name: String,
    pub transition: String,
    pub heartbeat_timeout_secs: Option<i32>,
}

/// Which lifecycle action a call is about: the instance's, in that group and hook. Always
/// by instance id, never by a message's token (see the workflow's hook module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionRef<'a> {
    pub group: &'a str,
    pub hook: &'a str,
    pub instance_id: &'a str,
}

/// What the workflow needs to know about a failed call.
pub trait CallFailure: std::error::Error + Send + Sync + 'static {
    /// Throttling, server trouble, or no answer at all: worth another try.
    fn is_transient(&self) -> bool;
    /// `No active Lifecycle Action found`: the instance is not waiting on the hook, either
    /// not yet or no more.
    fn is_no_active_action(&self) -> bool;
}

/// Auto Scaling, as far as lifecycle actions go.
pub trait LifecycleActions: Send + Sync + 'static {
    type Error: CallFailure;

    /// The instance's group and state; `None` when no group lists it.
    fn membership(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<GroupMembership>, Self::Error>> + Send;

    /// The group and state of each of `instance_ids` that some group lists; an instance
    /// left out is in no group (never was, or its termination is over). Batched by
    /// [`DESCRIBE_INSTANCES_LIMIT`]; any failed call fails the whole answer, since a part of
    /// one would read as "gone" for the rest.
    fn memberships(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, GroupMembership>, Self::Error>> + Send;

    /// The instances in `group`'s warm pool (none when it has no pool).
    fn warm_pool(
        &self,
        group: &str,
    ) -> impl Future<Output = Result<Vec<WarmedInstance>, Self::Error>> + Send;

    /// The group's lifecycle hooks.
    fn hooks(
        &self,
        group: &str,
    ) -> impl Future<Output = Result<Vec<LifecycleHook>, Self::Error>> + Send;

    /// `CompleteLifecycleAction` by instance id.
    fn complete(
        &self,
        action: ActionRef<'_>,
        result: LifecycleResult,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// `RecordLifecycleActionHeartbeat` by instance id: restarts the hook's timeout.
    fn heartbeat(
        &self,
        action: ActionRef<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_pool_states() {
        assert!(is_warm_pool_state("Warmed:Stopped"));
        assert!(is_warm_pool_state("Warmed:Running"));
        assert!(!is_warm_pool_state("InService"));
        assert!(!is_warm_pool_state("Terminated"));
    }

    #[test]
    fn terminating_states() {
        let m = |s: &str| GroupMembership {
            group: "g".into(),
            lifecycle_state: Some(s.into()),
        };
        assert!(m("Terminating:Wait").is_terminating());
        assert!(m("Terminating").is_terminating());
        assert!(!m("InService").is_terminating());
        assert!(!m("Warmed:Terminating:Wait").is_terminating());
    }
}
