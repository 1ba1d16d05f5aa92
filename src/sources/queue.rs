//! The SQS source: long-polls the lifecycle queue shared by the environment's hosts.
//!
//! A message is deleted only once its hook is completed (or known to be completed); a
//! peer's message whose host is not here is handed back at once (visibility 0) and never
//! deleted; a malformed one is logged and left to the queue's redrive policy, never
//! deleted and never retried in a tight loop. At a stop every message received and not
//! settled is handed back at once, so that the next host takes it up without waiting out a
//! visibility timeout.

use std::time::Duration;

use backon::BackoffBuilder;
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::message::{self, LifecycleMessage};
use crate::metrics::{Event, Metrics};
use crate::retry;
use crate::sqs::{ReceivedMessage, Sqs, SqsError};
use crate::work::{Outcome, Source, Termination, Work};

/// How long a message being worked on stays hidden from other hosts, renewed while the
/// work goes on, so that a slow take-out is not started again elsewhere.
const KEEP_HIDDEN_SECS: i32 = 90;
const RENEW_EVERY: Duration = Duration::from_secs(30);
/// A message whose hook could not be completed comes back after this long.
const RETRY_AFTER_SECS: i32 = 30;
/// Longest wait between receives after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bound on settling one message (delete, hand back): a stop is never held up by SQS.
const SETTLE_BUDGET: Duration = Duration::from_secs(10);

/// The queue and the client that reads it.
#[derive(Debug, Clone)]
pub struct Queue {
    pub sqs: Sqs,
    pub url: String,
    /// Where messages received, deleted and handed back are counted.
    pub metrics: Metrics,
}

/// Polls the queue until `intake` is cancelled. Each message is settled in a task of its
/// own on `tracker`; those hand their message back when `stop` is cancelled before it is
/// settled.
pub async fn watch(
    queue: Queue,
    tx: mpsc::Sender<Work>,
    intake: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    tracing::info!(queue = %queue.url, "watching the lifecycle queue");
    let pace = retry::backoff(MAX_BACKOFF);
    let mut backoff = pace.build();
    loop {
        let received = tokio::select! {
            () = intake.cancelled() => return,
            r = queue.sqs.receive(&queue.url, 10, 20) => r,
        };
        match received {
            Ok(messages) => {
                backoff = pace.build();
                for m in messages {
                    queue.metrics.record(Event::QueueReceived);
                    tracker.spawn(settle(queue.clone(), m, tx.clone(), stop.clone()));
                }
            }
            Err(e) => {
                let wait = backoff.next().unwrap_or(MAX_BACKOFF);
                tracing::warn!(
                    "receiving from the lifecycle queue failed: {e}; retrying in {wait:.1?}"
                );
                tokio::select! {
                    () = intake.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Acts on one delivery and settles it: delete, hand back, or leave.
async fn settle(queue: Queue, m: ReceivedMessage, tx: mpsc::Sender<Work>, stop: CancellationToken) {
    let action = match message::parse(m.body.expose_secret()) {
        Err(e) => {
            tracing::warn!(
                message_id = %m.message_id,
                receive_count = m.receive_count,
                "malformed lifecycle message ({e}); left for the queue's redrive policy: {}",
                message::excerpt_for_log(m.body.expose_secret(), 300)
            );
            return;
        }
        Ok(LifecycleMessage::Test { group }) => {
            tracing::info!(
                group = group.as_deref().unwrap_or("?"),
                "test notification; deleting it"
            );
            delete(&queue, &m).await;
            return;
        }
        Ok(LifecycleMessage::Action { action, .. }) => action,
    };
    if !action.is_termination() {
        // Some other hook's business (a launch hook): not ours to delete.
        tracing::info!(transition = %action.transition, instance_id = %action.instance_id, "not a termination; handing it back");
        hand_back(&queue, &m).await;
        return;
    }
    let mut t = Termination::new(action.instance_id.clone(), Source::Sqs);
    t.group = Some(action.group);
    t.hook = Some(action.hook);
    t.token = action.token;
    let (work, reply) = Work::terminate(t);
    let sent = tokio::select! {
        sent = tx.send(work) => sent.is_ok(),
        () = stop.cancelled() => false,
    };
    if !sent {
        // Stopping: let the message come back for the next drover at once.
        hand_back(&queue, &m).await;
        return;
    }
    let outcome = tokio::select! {
        // No answer: the stop cut the work short before it decided.
        o = reply => o.ok(),
        () = keep_hidden(&queue, &m) => None,
        () = stop.cancelled() => None,
    };
    match outcome {
        Some(o) if o.settles_message() => delete(&queue, &m).await,
        Some(Outcome::NotHere) => hand_back(&queue, &m).await,
        Some(_) => {
            // The hook is not completed: let the message come back and be tried again.
            tracing::warn!(message_id = %m.message_id, "lifecycle action not completed; the message will be delivered again");
            let _ = set_visibility(&queue, &m, RETRY_AFTER_SECS).await;
        }
        None => {
            tracing::info!(message_id = %m.message_id, "stopping before the message was settled; handing it back");
            hand_back(&queue, &m).await;
        }
    }
}

/// Renews the message's invisibility for as long as it is polled (never returns).
async fn keep_hidden(queue: &Queue, m: &ReceivedMessage) {
    loop {
        if let Err(e) = set_visibility(queue, m, KEEP_HIDDEN_SECS).await {
            tracing::warn!("cannot keep message {} hidden: {e}", m.message_id);
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn set_visibility(queue: &Queue, m: &ReceivedMessage, secs: i32) -> Result<(), String> {
    match tokio::time::timeout(
        SETTLE_BUDGET,
        queue.sqs.set_visibility(&queue.url, &m.receipt, secs),
    )
    .await
    {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "ChangeMessageVisibility did not answer within {}",
            retry::rounded(SETTLE_BUDGET)
        )),
    }
}

async fn delete(queue: &Queue, m: &ReceivedMessage) {
    let deleted = retry::until(
        "deleting the lifecycle message",
        Instant::now() + SETTLE_BUDGET,
        Duration::from_secs(3),
        |_: &SqsError| true,
        || queue.sqs.delete(&queue.url, &m.receipt),
    )
    .await;
    match deleted {
        // The receive count says how often the fleet saw the message before it was
        // settled: 1 is the norm, a count near the redrive limit needs a look.
        Ok(()) => {
            queue.metrics.record(Event::QueueDeleted);
            tracing::info!(
                message_id = %m.message_id,
                receive_count = m.receive_count,
                "deleted the lifecycle message"
            )
        }
        Err(e) => tracing::warn!("deleting message {} failed: {e}", m.message_id),
    }
}

async fn hand_back(queue: &Queue, m: &ReceivedMessage) {
    match set_visibility(queue, m, 0).await {
        Ok(()) => queue.metrics.record(Event::QueueHandedBack),
        Err(e) => tracing::warn!("handing message {} back failed: {e}", m.message_id),
    }
}
