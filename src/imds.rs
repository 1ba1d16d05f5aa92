//! Reads this instance's identity and lifecycle signals from IMDSv2.
//!
//! The token dance, 401 handling and per-request retries come from `aws_config::imds`;
//! this module adds one typed method per path, `Ok(None)` for 404, and an overall bound on
//! retries, because at boot IMDS may not answer yet and a hung boot step is worse than a
//! failed one.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::imds::client::error::ImdsError as SdkImdsError;
use backon::Retryable;
use serde::Deserialize;

/// The instance tag Auto Scaling puts on its members.
const GROUP_TAG: &str = "aws:autoscaling:groupName";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "IMDS refused or did not answer the IMDSv2 token request for {path}: {detail}. \
         IMDS may be disabled for this instance, or its hop limit too low for where drover runs \
         (it must run on the host, not in a bridged container)"
    )]
    Token { path: String, detail: String },
    #[error("IMDS answered {status} for {path}")]
    Status { path: String, status: u16 },
    #[error("IMDS could not be reached for {path}: {detail}")]
    Unreachable { path: String, detail: String },
    #[error("IMDS answered {path} with something unexpected: {detail}")]
    Invalid { path: String, detail: String },
    #[error("IMDS did not answer {path} within {} (last error: {last})", crate::retry::rounded(*budget))]
    GaveUp {
        path: String,
        budget: Duration,
        last: Box<ImdsError>,
    },
}

impl ImdsError {
    /// Worth retrying: IMDS may not be up yet, or may answer 5xx for a moment.
    fn is_transient(&self) -> bool {
        match self {
            ImdsError::Status { status, .. } => *status >= 500 || *status == 429,
            ImdsError::Unreachable { .. } | ImdsError::Token { .. } => true,
            ImdsError::Invalid { .. } | ImdsError::GaveUp { .. } => false,
        }
    }
}

/// What drover needs to know about the instance it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub local_ipv4: Option<Ipv4Addr>,
    pub public_ipv4: Option<Ipv4Addr>,
    pub hostname: String,
    pub instance_type: String,
    pub ami_id: String,
    pub availability_zone: String,
    pub region: String,
    /// From the instance tags, when instance metadata tags are enabled; `None` says only
    /// that IMDS did not tell (ask Auto Scaling then).
    pub autoscaling_group: Option<String>,
    pub target_lifecycle_state: Option<String>,
}

/// A pending Spot interruption (`spot/instance-action`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpotAction {
    pub action: String,
    pub time: String,
}

/// IMDSv2 client for this instance.
#[derive(Clone, Debug)]
pub struct Imds {
    client: aws_config::imds::Client,
}

impl Default for Imds {
    fn default() -> Self {
        Imds::new()
    }
}

impl Imds {
    /// The endpoint comes from `AWS_EC2_METADATA_SERVICE_ENDPOINT` (or the AWS profile),
    /// the SDK's own rule.
    pub fn new() -> Imds {
        let client = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            // Our own bounded retry loop decides how long to keep trying.
            .max_attempts(2)
            .build();
        Imds { client }
    }

    /// One path under `/latest/`; 404 is `Ok(None)`.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let full = format!("/latest/{path}");
        match self.client.get(full.clone()).await {
            Ok(value) => Ok(Some(value.as_ref().to_string())),
            Err(SdkImdsError::ErrorResponse(resp)) if resp.response().status().as_u16() == 404 => {
                Ok(None)
            }
            Err(SdkImdsError::ErrorResponse(resp)) => Err(ImdsError::Status {
                path: full,
                status: resp.response().status().as_u16(),
            }),
            Err(e @ SdkImdsError::FailedToLoadToken(_)) => Err(ImdsError::Token {
                path: full,
                detail: error_chain(&e),
            }),
            Err(e) => Err(ImdsError::Unreachable {
                path: full,
                detail: error_chain(&e),
            }),
        }
    }

    /// Like [`Imds::get`], retrying transient failures with backoff until `budget` is spent.
    pub async fn get_within(
        &self,
        path: &str,
        budget: Duration,
    ) -> Result<Option<String>, ImdsError> {
        let attempt = || async { self.get(path).await };
        let retried = attempt
            .retry(crate::retry::backoff(Duration::from_secs(5)))
            .when(ImdsError::is_transient)
            .notify(|err, wait| {
                tracing::warn!("IMDS not ready ({err}); retrying in {wait:?}");
            });
        match tokio::time::timeout(budget, retried).await {
            Ok(result) => result,
            Err(_) => {
                // One last quick answer gives the caller the real reason.
                let last = match tokio::time::timeout(Duration::from_secs(3), self.get(path)).await
                {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => e,
                    Err(_) => ImdsError::Unreachable {
                        path: format!("/latest/{path}"),
                        detail: "no answer".into(),
                    },
                };
                Err(ImdsError::GaveUp {
                    path: format!("/latest/{path}"),
                    budget,
                    last: Box::new(last),
                })
            }
        }
    }

    async fn required(&self, path: &str, budget: Duration) -> Result<String, ImdsError> {
        match self.get_within(path, budget).await? {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(ImdsError::Invalid {
                path: format!("/latest/{path}"),
                detail: "missing or empty".into(),
            }),
        }
    }

    /// Everything about the instance, each path retried within `budget` overall.
    pub async fn identity(&self, budget: Duration) -> Result<InstanceIdentity, ImdsError> {
        let deadline = tokio::time::Instant::now() + budget;
        let left = || {
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(500))
        };
        // The first answer proves IMDS is up; the rest then come quickly.
        let instance_id = self.required("meta-data/instance-id", left()).await?;
        let local_ipv4 = self
            .get_within("meta-data/local-ipv4", left())
            .await?
            .map(|v| parse_ipv4("meta-data/local-ipv4", &v))
            .transpose()?;
        let public_ipv4 = self
            .get_within("meta-data/public-ipv4", left())
            .await?
            .map(|v| parse_ipv4("meta-data/public-ipv4", &v))
            .transpose()?;
        let hostname = self
            .get_within("meta-data/local-hostname", left())
            .await?
            .unwrap_or_default();
        let instance_type = self.required("meta-data/instance-type", left()).await?;
        let ami_id = self.required("meta-data/ami-id", left()).await?;
        let availability_zone = self
            .required("meta-data/placement/availability-zone", left())
            .await?;
        let region = match self
            .get_within("meta-data/placement/region", left())
            .await?
        {
            Some(r) if !r.trim().is_empty() => r.trim().to_string(),
            // Older instances lack placement/region: the zone minus its letter.
            _ => availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_string(),
        };
        let autoscaling_group = self.instance_tag(GROUP_TAG, left()).await?;
        let target_lifecycle_state = self.target_lifecycle_state_within(left()).await?;
        Ok(InstanceIdentity {
            instance_id,
            local_ipv4,
            public_ipv4,
            hostname,
            instance_type,
            ami_id,
            availability_zone,
            region,
            autoscaling_group,
            target_lifecycle_state,
        })
    }

    /// An instance tag; `None` when tags are not enabled in metadata or the tag is absent.
    pub async fn instance_tag(
        &self,
        key: &str,
        budget: Duration,
    ) -> Result<Option<String>, ImdsError> {
        Ok(self
            .get_within(&format!("meta-data/tags/instance/{key}"), budget)
            .await?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()))
    }

    /// `autoscaling/target-lifecycle-state`; `None` until the first transition.
    pub async fn target_lifecycle_state_within(
        &self,
        budget: Duration,
    ) -> Result<Option<String>, ImdsError> {
        Ok(self
            .get_within("meta-data/autoscaling/target-lifecycle-state", budget)
            .await?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()))
    }

    /// `spot/instance-action`; `None` when no interruption is pending.
    pub async fn spot_action(&self, budget: Duration) -> Result<Option<SpotAction>, ImdsError> {
        let path = "meta-data/spot/instance-action";
        match self.get_within(path, budget).await? {
            None => Ok(None),
            Some(body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| ImdsError::Invalid {
                    path: format!("/latest/{path}"),
                    detail: format!("not the expected JSON: {e}"),
                }),
        }
    }
}

fn parse_ipv4(path: &str, value: &str) -> Result<Ipv4Addr, ImdsError> {
    value.trim().parse().map_err(|_| ImdsError::Invalid {
        path: format!("/latest/{path}"),
        detail: format!("{:?} is not an IPv4 address", shorten(value, 40)),
    })
}

/// Cuts outside text to a length that keeps a log line readable.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether a target lifecycle state means a warm pool (do not register).
pub fn is_warm_pool_state(state: &str) -> bool {
    state.starts_with("Warmed:")
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
    fn shorten_keeps_short_text() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
    }

    #[test]
    fn spot_action_parses() {
        let a: SpotAction =
            serde_json::from_str(r#"{"action":"terminate","time":"2026-11-23T12:00:00Z"}"#)
                .expect("parses");
        assert_eq!(a.action, "terminate");
    }
}
