//! Reads this instance's identity and lifecycle signals from IMDSv2.
//!
//! A small client of its own rather than `aws_config::imds`: drover polls two paths every
//! few seconds for the life of the host, and the SDK's request pipeline made those polls
//! most of its idle CPU (see BENCHMARKS.md). IMDSv2 is two requests: a token `PUT`, then
//! `GET`s carrying it. This module caches the token, fetches a fresh one on expiry or 401,
//! has one typed method per path, `Ok(None)` for 404, and an overall bound on retries,
//! because at boot IMDS may not answer yet and a hung boot step is worse than a failed one.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::text::{error_chain, shorten};

/// The instance tag Auto Scaling puts on its members.
const GROUP_TAG: &str = "aws:autoscaling:groupName";
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const DEFAULT_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";
const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The longest life IMDS gives a token (6 hours): one `PUT` covers thousands of polls.
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token this close to its end is replaced before use, so that no request races expiry.
const TOKEN_MARGIN: Duration = Duration::from_secs(120);
/// IMDS is a link-local service: it answers in milliseconds or not at all. A hop limit too
/// low for where drover runs shows up as a token `PUT` that never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// No metadata drover reads is anywhere near this; a longer answer is not IMDS.
const MAX_BODY: usize = 64 * 1024;

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
    #[error("AWS_EC2_METADATA_SERVICE_ENDPOINT is not an http(s) URL: {0:?}")]
    Endpoint(String),
    #[error("cannot set up the HTTP client for IMDS: {0}")]
    Setup(String),
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
            ImdsError::Invalid { .. }
            | ImdsError::Endpoint(_)
            | ImdsError::Setup(_)
            | ImdsError::GaveUp { .. } => false,
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

/// A session token and when to stop using it. Its value is a credential for the metadata
/// service: a secret.
#[derive(Debug)]
struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// Where IMDS is: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` picks the IPv6 address, else the usual
/// `169.254.169.254`: the SDK's own rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoint: String,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        let endpoint = match var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
            Some(url) => url,
            None => match var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
                Some(mode) if mode.trim().eq_ignore_ascii_case("ipv6") => {
                    DEFAULT_ENDPOINT_IPV6.to_string()
                }
                _ => DEFAULT_ENDPOINT.to_string(),
            },
        };
        Settings { endpoint }
    }
}

/// IMDSv2 client for this instance. Clones share the token.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: Result<String, String>,
    token: Arc<Mutex<Option<Token>>>,
}

/// One HTTP client for every `Imds`: building one sets up TLS and a connection pool, and
/// the polling source makes a new `Imds` now and then. Building fails when the system has
/// no CA certificates at all (the TLS backend loads them up front, even for a client that
/// only ever speaks plain HTTP): an error, never a panic (`Client::default()` panics then).
fn http() -> Result<&'static reqwest::Client, ImdsError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // IMDS speaks plain HTTP, but reqwest sets up TLS for every client: the shared
            // config costs no second copy of the roots.
            let tls = crate::tls::client_config()?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                // IMDS refuses requests that went through a proxy, and is never behind one.
                .no_proxy()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| error_chain(&e))
        })
        .as_ref()
        .map_err(|e| ImdsError::Setup(e.clone()))
}

impl Imds {
    /// A client of the IMDS the environment names (see [`Settings`]).
    pub fn from_env() -> Imds {
        Imds::with_endpoint(&Settings::from_env().endpoint)
    }

    /// A client of the IMDS at `url` (`http://host[:port]`).
    pub fn with_endpoint(url: &str) -> Imds {
        Imds {
            endpoint: parse_endpoint(url),
            token: Arc::new(Mutex::new(None)),
        }
    }

    /// One path under `/latest/`; 404 is `Ok(None)`.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let full = format!("/latest/{path}");
        let endpoint = self
            .endpoint
            .as_ref()
            .map_err(|bad| ImdsError::Endpoint(bad.clone()))?;
        let url = format!("{endpoint}{full}");
        let mut token = self.token(&full, endpoint).await?;
        let mut refreshed = false;
        loop {
            let response = http()?
                .get(&url)
                .header(TOKEN_HEADER, token.expose_secret())
                .send()
                .await
                .map_err(|e| ImdsError::Unreachable {
                    path: full.clone(),
                    detail: error_chain(&e),
                })?;
            match response.status().as_u16() {
                200 => return read_text(response, &full).await.map(Some),
                404 => return Ok(None),
                // The token expired or IMDS restarted: one more try with a fresh one.
                401 if !refreshed => {
                    self.forget_token();
                    token = self.token(&full, endpoint).await?;
                    refreshed = true;
                }
                status => {
                    if status == 401 {
                        self.forget_token();
                    }
                    return Err(ImdsError::Status { path: full, status });
                }
            }
        }
    }

    fn forget_token(&self) {
        if let Ok(mut cached) = self.token.lock() {
            *cached = None;
        }
    }

    /// The cached token, or a new one from IMDS.
    async fn token(&self, path: &str, endpoint: &str) -> Result<SecretString, ImdsError> {
        if let Ok(cached) = self.token.lock() {
            if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
                return Ok(token.value.clone());
            }
        }
        let refused = |detail: String| ImdsError::Token {
            path: path.to_string(),
            detail,
        };
        let response = http()?
            .put(format!("{endpoint}{TOKEN_PATH}"))
            .header(TTL_HEADER, TOKEN_TTL.as_secs())
            .send()
            .await
            .map_err(|e| refused(error_chain(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(refused(format!("it answered {status}")));
        }
        // IMDS echoes the life it granted; trust it over what was asked for.
        let ttl = response
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(TOKEN_TTL, Duration::from_secs);
        let value = read_text(response, TOKEN_PATH).await?;
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refused(
                "the token it sent is empty or not printable".into(),
            ));
        }
        let token = SecretString::from(value.to_string());
        if let Ok(mut cached) = self.token.lock() {
            *cached = Some(Token {
                value: token.clone(),
                renew_at: Instant::now() + ttl.saturating_sub(TOKEN_MARGIN.min(ttl / 2)),
            });
        }
        Ok(token)
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

    /// The instance's region, retried within `budget`.
    pub async fn region(&self, budget: Duration) -> Result<String, ImdsError> {
        let deadline = tokio::time::Instant::now() + budget;
        let zone = self
            .required("meta-data/placement/availability-zone", budget)
            .await?;
        self.region_of(
            &zone,
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
    }

    async fn region_of(
        &self,
        availability_zone: &str,
        budget: Duration,
    ) -> Result<String, ImdsError> {
        Ok(
            match self
                .get_within("meta-data/placement/region", budget)
                .await?
            {
                Some(r) if !r.trim().is_empty() => r.trim().to_string(),
                // Older instances lack placement/region: the zone minus its letter.
                _ => availability_zone
                    .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                    .to_string(),
            },
        )
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
        let region = self.region_of(&availability_zone, left()).await?;
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

/// `http(s)://host[:port][/prefix]`, which the paths are appended to as text. A query or a
/// fragment would swallow them (`http://host/?x` + `/latest/api/token` asks for `/`), and
/// credentials have no business in it: all refused. What is kept is the URL as the parser
/// read it (it drops control characters, which the text with a path appended would keep).
pub(crate) fn parse_endpoint(url: &str) -> Result<String, String> {
    match url::Url::parse(url.trim()) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none() =>
        {
            Ok(u.as_str().trim_end_matches('/').to_string())
        }
        _ => Err(shorten(url, 80)),
    }
}

/// The body as text, refusing what is too long or not UTF-8 rather than trusting it.
async fn read_text(mut response: reqwest::Response, path: &str) -> Result<String, ImdsError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ImdsError::Invalid {
                        path: path.to_string(),
                        detail: format!("an answer longer than {MAX_BODY} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ImdsError::Unreachable {
                    path: path.to_string(),
                    detail: error_chain(&e),
                })
            }
        }
    }
    String::from_utf8(body).map_err(|_| ImdsError::Invalid {
        path: path.to_string(),
        detail: "an answer that is not UTF-8".into(),
    })
}

pub(crate) fn parse_ipv4(path: &str, value: &str) -> Result<Ipv4Addr, ImdsError> {
    value.trim().parse().map_err(|_| ImdsError::Invalid {
        path: format!("/latest/{path}"),
        detail: format!("{:?} is not an IPv4 address", shorten(value, 40)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use testbed::imds::{ImdsOptions, ImdsServer};

    fn token_puts(imds: &ImdsServer) -> usize {
        imds.requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path == TOKEN_PATH)
            .count()
    }

    #[tokio::test]
    async fn one_token_serves_every_read() {
        let server = ImdsServer::start(ImdsOptions::default()).await;
        let imds = Imds::with_endpoint(&server.url());
        let identity = imds
            .identity(Duration::from_secs(5))
            .await
            .expect("identity");
        assert_eq!(identity.instance_id, "i-0a1b2c3d4e5f60718");
        assert_eq!(identity.local_ipv4, Some(Ipv4Addr::new(10, 0, 1, 23)));
        assert_eq!(identity.autoscaling_group.as_deref(), Some("crawlers"));
        assert_eq!(
            identity.target_lifecycle_state, None,
            "404 until the first transition"
        );
        // A clone shares the token.
        let again = imds.clone();
        assert_eq!(
            again
                .spot_action(Duration::from_secs(1))
                .await
                .expect("spot"),
            None
        );
        assert!(server.metadata_gets() >= 8);
        assert_eq!(token_puts(&server), 1);
    }

    #[tokio::test]
    async fn an_expired_token_is_replaced_and_the_read_still_answers() {
        let server = ImdsServer::start(ImdsOptions::default()).await;
        let imds = Imds::with_endpoint(&format!("{}/", server.url()));
        server.set_target_lifecycle_state(Some("InService"));
        let state = || imds.target_lifecycle_state_within(Duration::from_secs(2));
        assert_eq!(state().await.expect("state").as_deref(), Some("InService"));
        server.expire_tokens();
        server.set_target_lifecycle_state(Some("Terminated"));
        assert_eq!(state().await.expect("state").as_deref(), Some("Terminated"));
        assert_eq!(token_puts(&server), 2);
        let refused = server.requests().iter().filter(|r| r.status == 401).count();
        assert_eq!(refused, 1, "one 401, then the fresh token");
    }

    #[tokio::test]
    async fn server_errors_are_retried_within_the_budget() {
        let server = ImdsServer::start(ImdsOptions::default()).await;
        let imds = Imds::with_endpoint(&server.url());
        // The token PUT and the first GET fail, then IMDS recovers.
        let any = testbed::http::Match::any();
        server.fail(any, testbed::http::Fault::Status(500), 2);
        let id = imds
            .get_within("meta-data/instance-id", Duration::from_secs(10))
            .await
            .expect("answers after the 500s");
        assert_eq!(id.as_deref(), Some("i-0a1b2c3d4e5f60718"));
        let failed = server.requests().iter().filter(|r| r.status == 500).count();
        assert_eq!(failed, 2);
    }

    #[tokio::test]
    async fn a_token_request_that_never_answers_is_bounded_and_explained() {
        let server = ImdsServer::start(ImdsOptions::default()).await;
        server.set_token_hang(true);
        let imds = Imds::with_endpoint(&server.url());
        let started = Instant::now();
        let err = imds
            .get_within("meta-data/instance-id", Duration::from_secs(3))
            .await
            .expect_err("no token, no answer");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded");
        let text = err.to_string();
        assert!(text.contains("within 3s"), "{text}");
        assert!(text.contains("hop limit"), "{text}");
    }

    #[tokio::test]
    async fn a_bad_endpoint_fails_at_once_and_names_the_variable() {
        for bad in ["169.254.169.254", "ftp://x", "not a url"] {
            let imds = Imds::with_endpoint(bad);
            let err = imds
                .get_within("meta-data/instance-id", Duration::from_secs(30))
                .await
                .expect_err("bad endpoint");
            assert!(matches!(err, ImdsError::Endpoint(_)), "{bad}: {err}");
            assert!(err
                .to_string()
                .contains("AWS_EC2_METADATA_SERVICE_ENDPOINT"));
        }
    }

    #[tokio::test]
    async fn the_token_never_shows_in_debug_output() {
        let server = ImdsServer::start(ImdsOptions::default()).await;
        let imds = Imds::with_endpoint(&server.url());
        imds.get("meta-data/instance-id").await.expect("read");
        let token = imds
            .token
            .lock()
            .expect("lock")
            .as_ref()
            .map(|t| t.value.expose_secret().to_string())
            .expect("a cached token");
        assert!(token.len() > 20);
        let shown = format!("{imds:?}");
        assert!(!shown.contains(&token), "{shown}");
    }

    /// A bare HTTP server that answers every request with `body`.
    async fn answering(body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            }
        });
        (url, task)
    }

    #[tokio::test]
    async fn an_answer_that_is_not_text_or_too_long_is_refused() {
        let bodies = [
            (b"\xff\xfe".to_vec(), "UTF-8"),
            (vec![b'a'; MAX_BODY + 1], "longer"),
        ];
        for (body, expected) in bodies {
            let (url, server) = answering(body).await;
            let err = Imds::with_endpoint(&url)
                .get("meta-data/instance-id")
                .await
                .expect_err("refused");
            assert!(err.to_string().contains(expected), "{err}");
            server.abort();
        }
    }

    /// Found by fuzzing (fuzz/ target imds_answers): an endpoint with a query or a fragment
    /// was taken, and every path appended to it landed in the query (`http://host?x` +
    /// `/latest/api/token` asks for `/`); one with a control character the URL parser drops
    /// was taken as written, and no request URL made from it parsed.
    #[test]
    fn endpoints_that_would_swallow_the_path_are_refused() {
        for bad in [
            "http://127.0.0.1:1338?",
            "http://127.0.0.1:?.1:43/",
            "http://169.254.169.254/#",
            "http://169.254.169.254/latest?x=1",
            "http://user:pass@169.254.169.254",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        for (good, kept) in [
            ("http://169.254.169.254", "http://169.254.169.254"),
            (" http://[fd00:ec2::254]/ ", "http://[fd00:ec2::254]"),
            ("http://127.0.0.1:1338/imds/", "http://127.0.0.1:1338/imds"),
            // The parser drops a trailing NUL; kept, it broke every request URL.
            ("http://169.254.169.254\0", "http://169.254.169.254"),
            ("HTTP://Instance-Data:80/", "http://instance-data"),
        ] {
            assert_eq!(parse_endpoint(good).as_deref(), Ok(kept));
        }
    }

    #[test]
    fn spot_action_parses() {
        let a: SpotAction =
            serde_json::from_str(r#"{"action":"terminate","time":"2026-11-23T12:00:00Z"}"#)
                .expect("parses");
        assert_eq!(a.action, "terminate");
    }
}
