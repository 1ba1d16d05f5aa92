//! The shared AWS SDK configuration: region from `AWS_REGION` or IMDS, credentials by the
//! standard chain, endpoints overridable by `AWS_ENDPOINT_URL[_<SERVICE>]`.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Loads the SDK config. `fallback_region` (from IMDS) is used only when the environment
/// names none.
pub async fn sdk_config(fallback_region: &str) -> SdkConfig {
    let region = Region::new(env_region().unwrap_or_else(|| fallback_region.to_string()));
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        // Every call is bounded; drover's own loops add backoff on top of the SDK's retries.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        // Stalled-stream protection samples throughput on a 100 ms timer while a response is
        // pending, and an SQS long poll is a response pending for 20 s: on an idle host that
        // was 200 wake-ups a poll and nearly all of drover's idle CPU. The timeouts above
        // bound every call already.
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .load()
        .await
}

/// The region `AWS_REGION` (or `AWS_DEFAULT_REGION`) names, if any.
pub fn env_region() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
}

/// The error with every source, as one line (`DisplayErrorContext` shows the service's code
/// and message, which plain `Display` of an SDK error hides).
pub fn describe<E: std::error::Error>(err: &E) -> String {
    format!(
        "{}",
        aws_smithy_types::error::display::DisplayErrorContext(err)
    )
}
