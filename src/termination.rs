//! The one value every termination source produces, and the answer the workflow gives back.
//!
//! A source (SQS, the IMDS target state, a Spot notice, a signal, the `deregister` command)
//! knows only how to notice a termination and what to do with its own input afterwards
//! (delete a message, hand it back); the workflow knows only how to take a host out. The
//! `Termination` value and its `Outcome` are all they share.

use std::fmt;
use std::time::SystemTime;

use tokio::sync::oneshot;

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

/// A termination of one instance.
pub struct Termination {
    pub instance_id: String,
    /// The Auto Scaling group, when the source knows it.
    pub group: Option<String>,
    /// The lifecycle hook, when the source knows it.
    pub hook: Option<String>,
    /// The lifecycle action token, when the source knows it. A credential of sorts: not in
    /// `Debug`.
    pub token: Option<String>,
    pub source: Source,
    /// A hard end (a Spot interruption's time): work past it is pointless.
    pub deadline: Option<SystemTime>,
    /// Skip evacuation and go straight to taking the host out (a Spot interruption leaves
    /// about two minutes).
    pub urgent: bool,
    /// Where the workflow reports the outcome; `None` when the source does not care.
    pub reply: Option<oneshot::Sender<Outcome>>,
}

impl fmt::Debug for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Termination")
            .field("instance_id", &self.instance_id)
            .field("group", &self.group)
            .field("hook", &self.hook)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("source", &self.source)
            .field("deadline", &self.deadline)
            .field("urgent", &self.urgent)
            .finish_non_exhaustive()
    }
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
            reply: None,
        }
    }

    /// Attaches a reply channel and returns its receiving end.
    pub fn with_reply(mut self) -> (Termination, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        self.reply = Some(tx);
        (self, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let mut t = Termination::new("i-0abc", Source::Sqs);
        t.token = Some("secret-token-value".into());
        let shown = format!("{t:?}");
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
