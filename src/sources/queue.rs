//! The SQS source: long-polls the lifecycle queue shared by the environment's hosts.
//!
//! A message is deleted only once its hook is completed (or known to be completed); a
//! peer's message whose host is not here is handed back at once (visibility 0) and never
//! deleted; a malformed one is logged and left to the queue's redrive policy, never
//! deleted and never retried in a tight loop.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::message::{self, LifecycleMessage};
use crate::sqs::{ReceivedMessage, Sqs};
use crate::termination::{Outcome, Source, Termination};

/// How long a message being worked on stays hidden from other hosts, renewed while the
/// work goes on, so that a slow take-out is not started again elsewhere.
const KEEP_HIDDEN_SECS: i32 = 90;
const RENEW_EVERY: Duration = Duration::from_secs(30);
/// Longest wait between receives after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Polls `queue_url` until `stop` is cancelled.
pub async fn watch(
    sqs: Sqs,
    queue_url: String,
    tx: mpsc::Sender<Termination>,
    stop: CancellationToken,
) {
    tracing::info!(queue = %queue_url, "watching the lifecycle queue");
    let mut backoff = Duration::from_secs(1);
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = sqs.receive(&queue_url, 10, 20) => r,
        };
        match received {
            Ok(messages) => {
                backoff = Duration::from_secs(1);
                for m in messages {
                    tokio::spawn(settle(sqs.clone(), queue_url.clone(), m, tx.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(
                    "receiving from the lifecycle queue failed: {e}; retrying in {backoff:?}"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Acts on one delivery and settles it: delete, hand back, or leave.
async fn settle(sqs: Sqs, queue_url: String, m: ReceivedMessage, tx: mpsc::Sender<Termination>) {
    let action = match message::parse(&m.body) {
        Err(e) => {
            tracing::warn!(
                message_id = %m.message_id,
                receive_count = m.receive_count,
                "malformed lifecycle message ({e}); left for the queue's redrive policy: {}",
                message::excerpt_for_log(&m.body, 300)
            );
            return;
        }
        Ok(LifecycleMessage::Test { group }) => {
            tracing::info!(
                group = group.as_deref().unwrap_or("?"),
                "test notification; deleting it"
            );
            delete(&sqs, &queue_url, &m).await;
            return;
        }
        Ok(LifecycleMessage::Action { action, .. }) => action,
    };
    if !action.is_termination() {
        // Some other hook's business (a launch hook): not ours to delete.
        tracing::info!(transition = %action.transition, instance_id = %action.instance_id, "not a termination; handing it back");
        hand_back(&sqs, &queue_url, &m).await;
        return;
    }
    let mut t = Termination::new(action.instance_id.clone(), Source::Sqs);
    t.group = Some(action.group);
    t.hook = Some(action.hook);
    t.token = action.token;
    let (t, reply) = t.with_reply();
    if tx.send(t).await.is_err() {
        // Shutting down: let the message come back for the next drover.
        hand_back(&sqs, &queue_url, &m).await;
        return;
    }
    let keeper = keep_hidden(&sqs, &queue_url, &m);
    let outcome = tokio::select! {
        o = reply => o.unwrap_or(Outcome::NotCompleted),
        () = keeper => Outcome::NotCompleted,
    };
    match outcome {
        o if o.settles_message() => delete(&sqs, &queue_url, &m).await,
        Outcome::NotHere => hand_back(&sqs, &queue_url, &m).await,
        _ => {
            // The hook is not completed: let the message come back and be tried again.
            tracing::warn!(message_id = %m.message_id, "lifecycle action not completed; the message will be delivered again");
            let _ = sqs.set_visibility(&queue_url, &m.receipt, 30).await;
        }
    }
}

/// Renews the message's invisibility until dropped (never returns on its own).
async fn keep_hidden(sqs: &Sqs, queue_url: &str, m: &ReceivedMessage) {
    loop {
        if let Err(e) = sqs
            .set_visibility(queue_url, &m.receipt, KEEP_HIDDEN_SECS)
            .await
        {
            tracing::warn!("cannot keep message {} hidden: {e}", m.message_id);
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn delete(sqs: &Sqs, queue_url: &str, m: &ReceivedMessage) {
    for attempt in 1..=3 {
        match sqs.delete(queue_url, &m.receipt).await {
            Ok(()) => {
                // The receive count says how often the fleet saw the message before it was
                // settled: 1 is the norm, a count near the redrive limit needs a look.
                tracing::info!(
                    message_id = %m.message_id,
                    receive_count = m.receive_count,
                    "deleted the lifecycle message"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "deleting message {} failed (attempt {attempt}): {e}",
                    m.message_id
                );
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
        }
    }
}

async fn hand_back(sqs: &Sqs, queue_url: &str, m: &ReceivedMessage) {
    if let Err(e) = sqs.set_visibility(queue_url, &m.receipt, 0).await {
        tracing::warn!("handing message {} back failed: {e}", m.message_id);
    }
}
