//! SSM Parameter Store: `GetParameter` with `WithDecryption`, the client behind
//! [`ParameterStore`] for the `*_ssm` secret keys. A SecureString parameter, or a Secrets
//! Manager secret through `/aws/reference/secretsmanager/<id>`.
//!
//! The value lives only in memory, as a `SecretString`; errors carry the service's code and
//! message, which never hold it.

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::Client;
use futures_util::future::BoxFuture;
use secrecy::SecretString;
use std::time::Duration;
use tokio::sync::OnceCell;

use crate::aws::describe;
use crate::secret::{ParameterStore, StoreError, StoreFailure};
use crate::text::one_line;

/// The SSM client.
#[derive(Debug, Clone)]
pub struct Ssm {
    client: Client,
}

impl Ssm {
    pub fn new(config: &aws_config::SdkConfig) -> Ssm {
        Ssm {
            client: Client::new(config),
        }
    }

    /// One `GetParameter` of `name`, decrypted.
    pub async fn parameter(&self, name: &str) -> Result<SecretString, StoreError> {
        let out = self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(classify)?;
        match out.parameter.and_then(|p| p.value) {
            Some(value) => Ok(SecretString::from(value)),
            None => Err(StoreError {
                kind: StoreFailure::Refused,
                detail: "GetParameter answered without a value".into(),
            }),
        }
    }
}

impl ParameterStore for Ssm {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretString, StoreError>> {
        Box::pin(self.parameter(name))
    }
}

/// What a failed `GetParameter` means for retrying it.
fn classify<E>(err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code();
            // The service's own words (`describe` never quotes the raw answer).
            let detail = describe(&err);
            StoreError {
                kind: kind_of(code, status),
                detail: one_line(&detail, 300),
            }
        }
        // No answer, a cut answer, or no credentials yet (an instance profile lags the first
        // seconds of boot): all worth another try.
        _ => StoreError {
            kind: StoreFailure::Transient,
            detail: one_line(&describe(&err), 300),
        },
    }
}

/// The kind of a service error, by its code, else its HTTP status.
fn kind_of(code: Option<&str>, status: u16) -> StoreFailure {
    match code {
        Some(c) if c.contains("AccessDenied") || c == "UnauthorizedOperation" => {
            StoreFailure::Denied
        }
        // KMS refusing the decryption for the parameter's key is a permission too.
        Some("KMSAccessDeniedException" | "InvalidKeyId") => StoreFailure::Denied,
        Some("ParameterNotFound" | "ParameterVersionNotFound" | "ResourceNotFoundException") => {
            StoreFailure::NotFound
        }
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable"
            // Temporary credentials that ran out are renewed by the provider; a role made
            // seconds ago is not known everywhere yet.
            | "ExpiredTokenException"
            | "RequestExpired"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId",
        ) => StoreFailure::Transient,
        _ if status == 429 || status >= 500 => StoreFailure::Transient,
        _ => StoreFailure::Refused,
    }
}

/// An SSM client made for each read: region from `AWS_REGION` (or `AWS_DEFAULT_REGION`),
/// else from IMDS (found once); endpoint from `AWS_ENDPOINT_URL_SSM` or
/// `AWS_ENDPOINT_URL`; credentials by the standard chain. A secret is read at start and
/// again only when Rancher refuses the key, so the client is dropped after each read: kept,
/// its HTTPS client and connection pool stayed resident for the life of the host (about
/// 0.2 MiB, BENCHMARKS.md 2026-12-02). A secret that is never read from SSM costs nothing.
#[derive(Debug, Default)]
pub struct SsmOnDemand {
    region: OnceCell<String>,
}

/// How long finding the region in IMDS may take on one attempt; the next read tries again.
const REGION_BUDGET: Duration = Duration::from_secs(20);

impl SsmOnDemand {
    pub fn new() -> SsmOnDemand {
        SsmOnDemand::default()
    }

    async fn ssm(&self) -> Result<Ssm, StoreError> {
        let region = self
            .region
            .get_or_try_init(|| async {
                match crate::aws::env_region() {
                    Some(region) => Ok(region),
                    None => crate::imds::Imds::from_env()
                        .region(REGION_BUDGET)
                        .await
                        .map_err(|e| StoreError {
                            kind: StoreFailure::Transient,
                            detail: format!("finding the region for SSM in IMDS: {e}"),
                        }),
                }
            })
            .await?;
        Ok(Ssm::new(&crate::aws::sdk_config(region).await))
    }
}

impl ParameterStore for SsmOnDemand {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretString, StoreError>> {
        Box::pin(async move { self.ssm().await?.parameter(name).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_trouble() {
        for (code, status, kind) in [
            (Some("AccessDeniedException"), 400, StoreFailure::Denied),
            (Some("ParameterNotFound"), 400, StoreFailure::NotFound),
            (Some("ThrottlingException"), 400, StoreFailure::Transient),
            (Some("InternalServerError"), 500, StoreFailure::Transient),
            (None, 503, StoreFailure::Transient),
            (Some("ValidationException"), 400, StoreFailure::Refused),
            (
                Some("UnrecognizedClientException"),
                400,
                StoreFailure::Transient,
            ),
            (Some("KMSAccessDeniedException"), 400, StoreFailure::Denied),
        ] {
            assert_eq!(kind_of(code, status), kind, "{code:?} {status}");
        }
    }
}
