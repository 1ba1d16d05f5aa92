//! SQS calls on the lifecycle queue.

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;

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
