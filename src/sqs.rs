//! SQS calls on the lifecycle queue: long-poll receive, delete, visibility, depth.

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use secrecy::{ExposeSecret, SecretString};

use crate::aws::describe;

#[derive(Debug, thiserror::Error)]
#[error("SQS {operation} on {queue_url}: {detail}")]
pub struct SqsError {
    pub operation: &'static str,
    pub queue_url: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Sqs {
    client: Client,
}

impl Sqs {
    pub fn new(config: &aws_config::SdkConfig) -> Sqs {
        Sqs {
            client: Client::new(config),
        }
    }

    /// Proves the queue exists and is readable; returns its approximate depth.
    pub async fn queue_depth(&self, queue_url: &str) -> Result<u64, SqsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| SqsError {
                operation: "GetQueueAttributes",
                queue_url: queue_url.to_string(),
                detail: describe(&e),
            })?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// A received message: what drover needs to act on it and to settle it. The receipt handle
/// settles this delivery and the body carries a lifecycle action token: both secrets, out of
/// `Debug` (a body reaches a log only through `message::excerpt_for_log`, which redacts).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt: SecretString,
    pub body: SecretString,
    pub receive_count: u32,
}

impl Sqs {
    fn err(operation: &'static str, queue_url: &str, detail: String) -> SqsError {
        SqsError {
            operation,
            queue_url: queue_url.to_string(),
            detail,
        }
    }

    /// One long poll: up to `max` messages, waiting up to `wait_secs` for the first.
    pub async fn receive(
        &self,
        queue_url: &str,
        max: i32,
        wait_secs: i32,
    ) -> Result<Vec<ReceivedMessage>, SqsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .map_err(|e| Sqs::err("ReceiveMessage", queue_url, describe(&e)))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let receipt = SecretString::from(m.receipt_handle()?.to_string());
                Some(ReceivedMessage {
                    message_id: m.message_id().unwrap_or_default().to_string(),
                    receipt,
                    body: SecretString::from(m.body().unwrap_or_default().to_string()),
                    receive_count: m
                        .attributes()
                        .and_then(|a| {
                            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect())
    }

    pub async fn delete(&self, queue_url: &str, receipt: &SecretString) -> Result<(), SqsError> {
        self.client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt.expose_secret())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Sqs::err("DeleteMessage", queue_url, describe(&e)))
    }

    /// `ChangeMessageVisibility`: 0 hands the message back at once; more keeps it hidden
    /// from other hosts while drover works on it.
    pub async fn set_visibility(
        &self,
        queue_url: &str,
        receipt: &SecretString,
        seconds: i32,
    ) -> Result<(), SqsError> {
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt.expose_secret())
            .visibility_timeout(seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Sqs::err("ChangeMessageVisibility", queue_url, describe(&e)))
    }
}
