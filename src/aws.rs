//! The shared AWS SDK configuration: region from `AWS_REGION` or IMDS, credentials by the
//! standard chain, endpoints overridable by `AWS_ENDPOINT_URL[_<SERVICE>]`, and one HTTPS
//! client for every AWS call of the process.

use std::sync::OnceLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime::client::defaults::default_http_client_plugin_v2;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponentsBuilder;
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Loads the SDK config. `fallback_region` (from IMDS) is used only when the environment
/// names none.
pub async fn sdk_config(fallback_region: &str) -> SdkConfig {
    let region = Region::new(env_region().unwrap_or_else(|| fallback_region.to_string()));
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    if let Some(client) = https_client() {
        loader = loader.http_client(client);
    }
    loader
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

/// The process's one HTTPS client for AWS: the SDK's own default (rustls with aws-lc, the
/// system's roots, `HTTPS_PROXY`/`NO_PROXY` from the environment), taken once from the runtime
/// plugin every SDK client would otherwise build it from. Left to itself the SDK builds one
/// per service client and one for the credentials chain, each loading the system's root
/// certificates into a TLS config of its own and keeping a connection pool of its own:
/// `run` holds two Auto Scaling clients and an SQS client, and every SSM read built one
/// more. Taken from the plugin rather than built here, so that the binary holds one copy of
/// the client's code, not a second one for a builder of our own.
fn https_client() -> Option<SharedHttpClient> {
    static CLIENT: OnceLock<Option<SharedHttpClient>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let plugin = default_http_client_plugin_v2(BehaviorVersion::latest())?;
            plugin
                .runtime_components(&RuntimeComponentsBuilder::new("drover"))
                .http_client()
        })
        .clone()
}

/// The region `AWS_REGION` (or `AWS_DEFAULT_REGION`) names, if any.
pub fn env_region() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
}

/// The error as one readable line: for a service's answer, its code, message and HTTP
/// status; for anything else (no answer, a timeout, no credentials), each cause in its own
/// words, joined by ": ". Never the SDK's `Debug` of the raw response, which
/// `DisplayErrorContext` appends and which put every header of the answer into `drover
/// check` and the logs.
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = err {
        let status = service.raw().status().as_u16();
        let e = service.err();
        return match (e.code(), e.message()) {
            (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
            (Some(code), None) => format!("{code} (HTTP {status})"),
            (None, _) => format!("HTTP {status}: {}", causes(e)),
        };
    }
    causes(err)
}

/// Each error in the chain in its own words, skipping one that repeats what an earlier one
/// said (SDK errors often wrap a cause whose text they already hold).
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut said: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let words = e.to_string();
        if !words.is_empty() && !said.iter().any(|s| s.contains(&words)) {
            said.push(words);
        }
        next = e.source();
    }
    said.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    #[derive(Debug)]
    struct ServiceSaid(ErrorMetadata);

    impl std::fmt::Display for ServiceSaid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "service said no")
        }
    }
    impl std::error::Error for ServiceSaid {}
    impl ProvideErrorMetadata for ServiceSaid {
        fn meta(&self) -> &ErrorMetadata {
            &self.0
        }
    }

    fn answer(status: u16) -> Response {
        let mut raw = Response::new(
            StatusCode::try_from(status).expect("a status"),
            SdkBody::from("{\"secret-looking\": \"body\"}"),
        );
        raw.headers_mut().insert("x-amzn-requestid", "req-1");
        raw
    }

    #[test]
    fn a_service_error_is_its_code_message_and_status_only() {
        let meta = ErrorMetadata::builder()
            .code("QueueDoesNotExist")
            .message("The specified queue does not exist.")
            .build();
        let err = SdkError::service_error(ServiceSaid(meta), answer(400));
        let line = describe(&err);
        assert_eq!(
            line,
            "QueueDoesNotExist: The specified queue does not exist. (HTTP 400)"
        );
    }

    #[test]
    fn a_service_error_without_a_code_says_the_status_and_the_cause() {
        let err =
            SdkError::service_error(ServiceSaid(ErrorMetadata::builder().build()), answer(503));
        assert_eq!(describe(&err), "HTTP 503: service said no");
    }

    #[test]
    fn no_answer_is_the_chain_of_causes_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err: SdkError<ServiceSaid, HttpResponse> = SdkError::timeout_error(io);
        let line = describe(&err);
        assert!(line.contains("connection refused"), "{line}");
        assert!(
            !line.contains('\n') && !line.contains("Response {"),
            "{line}"
        );
    }
}
