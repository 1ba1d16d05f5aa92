//! The values that carry work into the one consumer, and the answers it gives back.
//!
//! A source (SQS, the IMDS target state, a Spot notice, a signal, the `deregister` command,
//! the resume of an unfinished take-out) knows only how to notice something and what to do
//! with its own input afterwards (delete a message, hand it back, stop); the workflow knows
//! only how to do the work. A [`Work`] value and its reply are all they share.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where a termination came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sqs,
    ImdsTargetState,
    Spot,
    Signal,
    Command,
    /// A take-out that a previous drover started and did not finish.
    Resume,
    /// Scale-in with instance reuse: the instance leaves service for the warm pool, where
    /// it is stopped; its launching hook holds it in `Warmed:Pending:Wait`.
    WarmPool,
    /// A reaper sweep: a host whose instance died without a clean stop, or a warmed
    /// instance terminated from the pool that no one else can answer for.
    Reaper,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Sqs => "sqs",
            Source::ImdsTargetState => "imds-target-state",
            Source::Spot => "spot-interruption",
            Source::Signal => "signal",
            Source::Command => "deregister",
            Source::Resume => "resume",
            Source::WarmPool => "warm-pool-return",
            Source::Reaper => "reaper",
        })
    }
}

/// How handling a termination ended, as far as its source needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host is out (or was never here) and the lifecycle action is completed, or there
    /// was none to complete. An SQS message may be deleted.
    Done,
    /// Taking the host out failed, but the lifecycle action was completed with the
    /// `on_failure` result and someone was paged. The message may be deleted.
    FailedButCompleted,
    /// The lifecycle action could not be completed: the message stays, so that its next
    /// delivery tries again.
    NotCompleted,
    /// A peer's termination whose host is not in this environment (or peers are not
    /// handled here): hand the message back at once.
    NotHere,
}

impl Outcome {
    /// Whether the source's input (an SQS message) may now be deleted.
    pub fn settles_message(self) -> bool {
        matches!(self, Outcome::Done | Outcome::FailedButCompleted)
    }
}

/// A termination of one instance. Derived `Debug` is safe: the token is a secret.
#[derive(Debug, Clone)]
pub struct Termination {
    pub instance_id: String,
    /// The Auto Scaling group, when the source knows it.
    pub group: Option<String>,
    /// The lifecycle hook, when the source knows it.
    pub hook: Option<String>,
    /// The lifecycle action token, when the source knows it. Never sent back to AWS (see
    /// the workflow's hook module): kept for the record of what the message said.
    pub token: Option<SecretString>,
    pub source: Source,
    /// A hard end (a Spot interruption's time): work past it is pointless.
    pub deadline: Option<SystemTime>,
    /// Skip evacuation and go straight to taking the host out (a Spot interruption leaves
    /// about two minutes).
    pub urgent: bool,
    /// The instance's hosts as the source found them in its own listing (a reaper sweep),
    /// so that the workflow need not list the environment again; `Some(empty)`: it has none
    /// here. `None`: the source did not look.
    pub hosts: Option<Vec<String>>,
}

impl Termination {
    /// A termination with only the instance known.
    pub fn new(instance_id: impl Into<String>, source: Source) -> Termination {
        Termination {
            instance_id: instance_id.into(),
            group: None,
            hook: None,
            token: None,
            source,
            deadline: None,
            urgent: false,
            hosts: None,
        }
    }
}

/// A host the registration made active, and the stale hosts of the same instance it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub host_id: String,
    /// Hosts labelled with this instance that are not active and not the one registered:
    /// an earlier boot's host never taken out, a registration that ran twice.
    pub stale: Vec<String>,
    /// The host was active already: nothing was started.
    pub already_active: bool,
}

/// A registration that failed: at which step, and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinFailed {
    pub step: String,
    pub error: String,
}

/// The registration itself (Rancher, Docker), as the command built it: the workflow runs
/// it, between looking up the launching action and answering it, and drops it (cutting it
/// short) when a termination of this instance comes first.
pub struct Join(pub Pin<Box<dyn Future<Output = Result<Joined, JoinFailed>> + Send>>);

impl fmt::Debug for Join {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Join(..)")
    }
}

impl Join {
    pub fn new(
        registration: impl Future<Output = Result<Joined, JoinFailed>> + Send + 'static,
    ) -> Join {
        Join(Box::pin(registration))
    }
}

/// How a launch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchOutcome {
    /// The host is active in the cluster; the launching action, if one waited, completed
    /// with `CONTINUE`.
    Registered { host_id: String },
    /// Nothing to register: the instance enters (or waits in) a warm pool; a launching
    /// action holding it there was completed with `CONTINUE`.
    NotRegistered,
    /// Registration failed: paged, and a waiting launching action answered `ABANDON`.
    Failed(String),
    /// A termination of this instance, or a stop, came first: registration was cut short.
    Interrupted,
}

/// One piece of work for the consumer.
#[derive(Debug)]
pub enum Work {
    /// Join this instance to the cluster and answer its launching action: `CONTINUE` once
    /// the host is active, `ABANDON` when registration fails. Without `join` the instance is
    /// not to be registered (it enters a warm pool), and only the action is answered.
    Launch {
        join: Option<Join>,
        /// When registration gives up (`agent.register_timeout` from its start).
        deadline: Instant,
        reply: oneshot::Sender<LaunchOutcome>,
    },
    /// Take an instance's host out and answer its lifecycle action. The first termination
    /// of an instance starts the work; later ones join it and get the same outcome.
    Terminate {
        termination: Termination,
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// The machine is stopping this drover. With a termination (the signal source decided
    /// the machine goes away), this instance's host is taken out first; without one it
    /// stays, but a take-out of this instance under way is still waited for. The reply is
    /// that take-out's outcome, `None` when there was none.
    Stop {
        take_out: Option<Termination>,
        reply: oneshot::Sender<Option<Outcome>>,
    },
}

impl Work {
    /// A termination whose outcome the sender waits for.
    pub fn terminate(termination: Termination) -> (Work, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let work = Work::Terminate {
            termination,
            reply: Some(tx),
        };
        (work, rx)
    }

    /// A launch whose outcome the sender waits for.
    pub fn launch(
        join: Option<Join>,
        deadline: Instant,
    ) -> (Work, oneshot::Receiver<LaunchOutcome>) {
        let (tx, rx) = oneshot::channel();
        (
            Work::Launch {
                join,
                deadline,
                reply: tx,
            },
            rx,
        )
    }

    /// The stop decision, and the wait for what it leads to.
    pub fn stop(take_out: Option<Termination>) -> (Work, oneshot::Receiver<Option<Outcome>>) {
        let (tx, rx) = oneshot::channel();
        (
            Work::Stop {
                take_out,
                reply: tx,
            },
            rx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let mut t = Termination::new("i-0abc", Source::Sqs);
        t.token = Some(SecretString::from("secret-token-value".to_string()));
        let (work, _reply) = Work::terminate(t);
        let shown = format!("{work:?}");
        assert!(shown.contains("i-0abc"));
        assert!(!shown.contains("secret-token-value"), "{shown}");
    }

    #[test]
    fn only_completed_outcomes_settle_messages() {
        assert!(Outcome::Done.settles_message());
        assert!(Outcome::FailedButCompleted.settles_message());
        assert!(!Outcome::NotCompleted.settles_message());
        assert!(!Outcome::NotHere.settles_message());
    }
}
