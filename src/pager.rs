//! Pages a human when taking a host out failed: a PagerDuty Events API v2 incident and a
//! Slack-compatible JSON webhook, each retried with backoff until the caller's deadline.
//!
//! Hand-written because the Events API is one POST. The two targets are independent: both
//! are always tried, at the same time, so that a dead PagerDuty does not eat the webhook's
//! time (or the other way round). The routing key is a credential (anyone holding it can
//! open incidents), so it appears only in request bodies: never in logs, `Debug` or errors.
//! A routing key kept in a file or in SSM is read when the first page is sent, within that
//! page's deadline, and kept: building a pager costs nothing and talks to nobody.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::metrics::{Event, Metrics};
use crate::retry::{self, RetryError};
use crate::secret::{Secret, SecretReader, SharedStore, Source};
use crate::text::{cut_bytes, error_chain, one_line};

/// The pager's settings (`[pager]`), as the config built them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the routing key is: inline, a file, or an SSM parameter.
    pub pagerduty_routing_key: Option<Secret>,
    pub pagerduty_url: Url,
    /// A Slack-style webhook URL carries its secret in its path: a secret, shown by its
    /// origin only ([`webhook_origin`]).
    pub webhook_url: Option<SecretString>,
    /// What the webhook hears of: failures only (pages), or every take-out.
    pub webhook_events: WebhookEvents,
    /// What reads a routing key kept in SSM. The config leaves it `None`; the commands set
    /// it when `pagerduty_routing_key_ssm` is used.
    pub parameter_store: Option<SharedStore>,
}

/// What the webhook is told about (`pager.webhook_events`). PagerDuty hears of failures only,
/// whatever this says: it wakes people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookEvents {
    /// Pages only: a take-out or registration that failed, and its resolution.
    #[default]
    Failures,
    /// Pages, and every take-out (a reap's too) that went well, with its timeline.
    All,
}

impl WebhookEvents {
    /// The word the config takes.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvents::Failures => "failures",
            WebhookEvents::All => "all",
        }
    }
}

/// A take-out that went well, for a webhook that hears of every one.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub instance_id: String,
    pub host_id: Option<String>,
    pub group: Option<String>,
    /// Where the termination came from (`sqs`, `reaper`, ...).
    pub source: String,
    /// Its lifecycle action was completed (or there was none).
    pub hook_completed: bool,
    /// What drover did, in order: (RFC 3339 time, event).
    pub timeline: Vec<(String, String)>,
}

/// What PagerDuty takes as a routing key, for the error when a key is not that.
pub const ROUTING_KEY_SHAPE: &str =
    "must be the 32-character integration key of an Events API v2 service";

/// Whether `key` has the shape of an Events API v2 routing key (32 characters): PagerDuty
/// refuses anything else with a 400.
pub fn routing_key_is_valid(key: &SecretString) -> bool {
    key.expose_secret().len() == 32
}

/// Scheme, host and port of a webhook URL, the only part of it ever shown.
pub fn webhook_origin(url: &SecretString) -> String {
    match Url::parse(url.expose_secret()) {
        Ok(u) => shown_url(&u, false),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// Paging as the workflow sees it; [`Pager`] is the real one.
pub trait Paging: Send + Sync + 'static {
    /// Whether a page goes anywhere.
    fn is_configured(&self) -> bool;

    /// Opens (or updates) the incident of `incident.instance_id`.
    fn trigger(
        &self,
        incident: &Incident,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), PagerError>> + Send;

    /// Resolves the incident of that kind about `instance_id`: a later attempt succeeded.
    fn resolve(
        &self,
        kind: IncidentKind,
        instance_id: &str,
        summary: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), PagerError>> + Send;

    /// Tells of a take-out that went well, where someone asked to hear of every one
    /// (`pager.webhook_events = "all"`); nowhere by default.
    fn report(
        &self,
        report: &Report,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), PagerError>> + Send {
        let _ = (report, deadline);
        std::future::ready(Ok(()))
    }
}

/// Bound on one attempt; the caller's deadline bounds them all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between attempts: PagerDuty's throttling clears within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// PagerDuty's limits. Counted in bytes, which also keeps them in characters.
const MAX_SUMMARY: usize = 1024;
const MAX_DEDUP_KEY: usize = 255;
/// How much of an error answer goes into our error.
const MAX_ANSWER: usize = 300;
const REDACTED: &str = "[REDACTED]";

/// PagerDuty's severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    /// The word the Events API expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// What an incident is about. Each kind has its own dedup key per instance, so that a boot
/// that succeeds on retry resolves the boot's incident and never a take-out's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncidentKind {
    /// Taking a host out of Rancher (or answering its termination) failed.
    #[default]
    TakeOut,
    /// Registering the instance with Rancher failed.
    Boot,
    /// A reaper sweep found more dead hosts than it may take out at once: a mass death
    /// (an Availability Zone lost, a bad image) wants a person's eyes. About an environment,
    /// not an instance: [`Incident::instance_id`] holds the Rancher environment (project)
    /// id, so that the sweeps of every drover there fold into one incident.
    Reap,
}

/// What happened, for a human woken at night.
#[derive(Debug, Clone)]
pub struct Incident {
    pub kind: IncidentKind,
    pub instance_id: String,
    pub host_id: Option<String>,
    pub group: Option<String>,
    pub hostname: Option<String>,
    /// The step that failed, e.g. "deactivate", "remove", "complete lifecycle action".
    pub failed_step: String,
    /// The error, one line.
    pub error: String,
    pub severity: Severity,
    /// What drover did, in order: (RFC 3339 time, event). Goes to custom_details.
    pub timeline: Vec<(String, String)>,
    /// Extra facts (lifecycle result sent, source of the termination, Rancher URL, ...).
    pub details: BTreeMap<String, String>,
}

/// Why a page did not get through. Names the target; never holds the routing key.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    /// An answer retrying cannot fix: 400 means PagerDuty finds the event invalid.
    #[error("{target} refused the event: {status} {message}")]
    Rejected {
        target: String,
        status: u16,
        message: String,
    },
    /// Throttled (429) or server trouble (5xx): worth another try.
    #[error("{target} answered {status} {message}")]
    Unavailable {
        target: String,
        status: u16,
        message: String,
    },
    /// No answer at all (connection, TLS, timeout): worth another try.
    #[error("{target}: {detail}")]
    Transport { target: String, detail: String },
    /// The routing key could not be had (from its file or SSM parameter), or is not one.
    #[error("PagerDuty: {0}")]
    RoutingKey(String),
    /// The deadline passed before the target accepted.
    #[error("{target}: not accepted within {budget:.1?}; last error: {last}")]
    OutOfTime {
        target: String,
        budget: Duration,
        last: String,
    },
    #[error("pager: {0}")]
    Setup(String),
    /// More than one target failed.
    #[error("{}", join(.0))]
    Several(Vec<PagerError>),
}

impl PagerError {
    /// Throttling, server trouble and transport failures pass; the rest do not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PagerError::Unavailable { .. } | PagerError::Transport { .. }
        )
    }
}

fn join(errors: &[PagerError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One place a page goes, with the name errors and logs use for it. The URL is a secret
/// (a webhook's path may be); the name shows what may be shown.
#[derive(Debug, Clone)]
struct Target {
    url: SecretString,
    name: String,
}

/// PagerDuty is configured only together with its key.
#[derive(Debug)]
struct PagerDuty {
    target: Target,
    routing_key: RoutingKey,
}

/// The routing key: where it is, and its value once read (kept: it is read once).
#[derive(Debug)]
struct RoutingKey {
    reader: SecretReader,
    value: tokio::sync::OnceCell<SecretString>,
}

impl RoutingKey {
    /// The value, read before `deadline` the first time.
    async fn get(&self, deadline: Instant) -> Result<&SecretString, PagerError> {
        self.value
            .get_or_try_init(|| async {
                let key = self
                    .reader
                    .read(deadline)
                    .await
                    .map_err(|e| PagerError::RoutingKey(e.to_string()))?;
                if !routing_key_is_valid(&key) {
                    return Err(PagerError::RoutingKey(format!(
                        "{} {ROUTING_KEY_SHAPE}",
                        self.reader.secret()
                    )));
                }
                Ok(key)
            })
            .await
    }
}

/// Sends pages to PagerDuty and the webhook, whichever are configured.
#[derive(Debug)]
pub struct Pager {
    http: reqwest::Client,
    pagerduty: Option<PagerDuty>,
    webhook: Option<Target>,
    webhook_events: WebhookEvents,
    /// Where pages sent and failed are counted.
    metrics: Metrics,
}

/// One HTTP client for every `Pager` of the process (`run` has two: the workflow's and the
/// reaper's), on the shared TLS config: its settings are the same for all, and a clone
/// shares the pool.
fn http_client() -> Result<reqwest::Client, PagerError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .tls_backend_preconfigured(crate::tls::client_config()?)
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
                // A redirect could carry the routing key in the body to another server; the
                // Events API URL is exact, so a 3xx is reported instead.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| error_chain(&e))
        })
        .clone()
        .map_err(PagerError::Setup)
}

impl Pager {
    /// Takes the process's pager HTTP client; talks to nobody yet.
    pub fn new(config: &Settings) -> Result<Pager, PagerError> {
        let http = http_client()?;
        let pagerduty = config
            .pagerduty_routing_key
            .as_ref()
            .filter(|k| !matches!(k.source(), Source::Inline(v) if v.expose_secret().is_empty()))
            .map(|key| PagerDuty {
                target: Target {
                    url: SecretString::from(config.pagerduty_url.to_string()),
                    name: format!("PagerDuty {}", shown_url(&config.pagerduty_url, true)),
                },
                routing_key: RoutingKey {
                    value: match key.source() {
                        Source::Inline(v) => tokio::sync::OnceCell::new_with(Some(v.clone())),
                        _ => tokio::sync::OnceCell::new(),
                    },
                    reader: SecretReader::new(
                        key.clone(),
                        config.parameter_store.as_ref().map(|s| s.0.clone()),
                    ),
                },
            });
        let webhook = config.webhook_url.as_ref().map(|url| Target {
            url: url.clone(),
            // Slack-style webhook URLs carry their secret in the path: show the server only.
            name: format!("webhook {}", webhook_origin(url)),
        });
        Ok(Pager {
            http,
            pagerduty,
            webhook,
            webhook_events: config.webhook_events,
            metrics: Metrics::off(),
        })
    }

    /// Counts the pages sent and failed in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Pager {
        self.metrics = metrics;
        self
    }

    /// Posts `body` until the target accepts, refuses for good, or `deadline` passes.
    async fn send(
        &self,
        target: &Target,
        what: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<(), PagerError> {
        retry::until(
            what,
            deadline,
            MAX_BACKOFF,
            PagerError::is_transient,
            || self.post_once(target, body),
        )
        .await
        .map_err(|e| match e {
            RetryError::Failed(e) => e,
            RetryError::OutOfTime { budget, last, .. } => PagerError::OutOfTime {
                target: target.name.clone(),
                budget,
                last,
            },
        })
    }

    async fn post_once(&self, target: &Target, body: &Value) -> Result<(), PagerError> {
        let resp = self
            .http
            .post(target.url.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| PagerError::Transport {
                target: target.name.clone(),
                // The target's name already says where; the URL may hold a webhook secret.
                detail: self.scrub(&error_chain(&e.without_url())),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // Only to explain the refusal: a body that cannot be read explains nothing.
        let bytes = resp.bytes().await.unwrap_or_default();
        let message = self.scrub(&describe_answer(status, &bytes));
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(PagerError::Unavailable {
                target: target.name.clone(),
                status: status.as_u16(),
                message,
            })
        } else {
            Err(PagerError::Rejected {
                target: target.name.clone(),
                status: status.as_u16(),
                message,
            })
        }
    }

    /// Takes the routing key out of text from elsewhere, in case a server echoes it back.
    fn scrub(&self, text: &str) -> String {
        match self
            .pagerduty
            .as_ref()
            .and_then(|pd| pd.routing_key.value.get())
        {
            Some(key) if !key.expose_secret().is_empty() => {
                text.replace(key.expose_secret(), REDACTED)
            }
            _ => text.to_string(),
        }
    }
}

impl Paging for Pager {
    /// Whether a page goes anywhere: a routing key or a webhook is set.
    fn is_configured(&self) -> bool {
        self.pagerduty.is_some() || self.webhook.is_some()
    }

    /// Triggers a PagerDuty incident (dedup_key "drover-<instance id>", "drover-boot-<instance
    /// id>" for a boot) and posts the same
    /// facts to the webhook; retries 429/5xx/network errors with backoff until `deadline`,
    /// never past it; 400 is not retried. Both targets are tried even if one fails. Ok when
    /// every configured target accepted.
    async fn trigger(&self, incident: &Incident, deadline: Instant) -> Result<(), PagerError> {
        let summary = summary(incident);
        let instance = incident.instance_id.as_str();
        if !self.is_configured() {
            tracing::warn!(
                instance_id = instance,
                "no pager configured ([pager] pagerduty_routing_key, webhook_url): nobody is paged about: {summary}"
            );
            return Ok(());
        }
        let key = dedup_key(incident.kind, instance);
        let timestamp = now_rfc3339();
        let pagerduty = async {
            let pd = self.pagerduty.as_ref()?;
            let routing_key = match pd.routing_key.get(deadline).await {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            let event = trigger_event(routing_key, incident, &key, &summary, &timestamp);
            Some(
                self.send(&pd.target, "PagerDuty trigger", &event, deadline)
                    .await,
            )
        };
        let webhook = async {
            let target = self.webhook.as_ref()?;
            let body = json!({
                "text": summary,
                "drover": facts(incident, &key, &summary, &timestamp),
            });
            Some(self.send(target, "webhook trigger", &body, deadline).await)
        };
        let (pagerduty, webhook) = tokio::join!(pagerduty, webhook);
        let paged = finish("page", instance, [pagerduty, webhook]);
        self.metrics.record(Event::Page {
            delivered: paged.is_ok(),
        });
        paged
    }

    /// Resolves the incident of `instance_id` (a later attempt succeeded) on PagerDuty, and
    /// tells the webhook.
    async fn resolve(
        &self,
        kind: IncidentKind,
        instance_id: &str,
        summary: &str,
        deadline: Instant,
    ) -> Result<(), PagerError> {
        if !self.is_configured() {
            tracing::debug!(instance_id, "no pager configured: nothing to resolve");
            return Ok(());
        }
        let key = dedup_key(kind, instance_id);
        let pagerduty = async {
            let pd = self.pagerduty.as_ref()?;
            let routing_key = match pd.routing_key.get(deadline).await {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            // The Events API wants nothing else for a resolve.
            let event = json!({
                "routing_key": routing_key.expose_secret(),
                "dedup_key": key,
                "event_action": "resolve",
            });
            Some(
                self.send(&pd.target, "PagerDuty resolve", &event, deadline)
                    .await,
            )
        };
        let webhook = async {
            let target = self.webhook.as_ref()?;
            let text = cut_bytes(
                &one_line(
                    &format!("drover: resolved {instance_id}: {summary}"),
                    usize::MAX,
                ),
                MAX_SUMMARY,
                "…",
            );
            let body = json!({
                "text": text,
                "drover": {
                    "event": "resolve",
                    "dedup_key": key,
                    "instance_id": instance_id,
                    "summary": summary,
                    "timestamp": now_rfc3339(),
                },
            });
            Some(self.send(target, "webhook resolve", &body, deadline).await)
        };
        let (pagerduty, webhook) = tokio::join!(pagerduty, webhook);
        finish("resolve the page", instance_id, [pagerduty, webhook])
    }

    /// Posts the take-out and its timeline to the webhook when `webhook_events` is `all`.
    async fn report(&self, report: &Report, deadline: Instant) -> Result<(), PagerError> {
        let Some(target) = self
            .webhook
            .as_ref()
            .filter(|_| self.webhook_events == WebhookEvents::All)
        else {
            return Ok(());
        };
        let text = report_text(report);
        let body = json!({
            "text": text,
            "drover": {
                "event": "take-out",
                "summary": text,
                "timestamp": now_rfc3339(),
                "instance_id": report.instance_id,
                "host_id": report.host_id,
                "group": report.group,
                "source": report.source,
                "hook_completed": report.hook_completed,
                "timeline": report
                    .timeline
                    .iter()
                    .map(|(at, event)| json!({"at": at, "event": event}))
                    .collect::<Vec<_>>(),
            },
        });
        let sent = self.send(target, "webhook report", &body, deadline).await;
        match &sent {
            Ok(()) => tracing::info!(
                instance_id = %report.instance_id,
                "told the webhook of the take-out"
            ),
            Err(e) => tracing::warn!(
                instance_id = %report.instance_id,
                "could not tell the webhook of the take-out: {e}"
            ),
        }
        sent
    }
}

/// The one line a webhook shows first for a take-out that went well.
fn report_text(report: &Report) -> String {
    let host = non_blank(&report.host_id).unwrap_or("no host");
    let group = non_blank(&report.group)
        .map(|g| format!(", group {g}"))
        .unwrap_or_default();
    let text = format!(
        "drover: {} ({host}{group}) taken out of Rancher (source {})",
        report.instance_id, report.source
    );
    cut_bytes(&one_line(&text, usize::MAX), MAX_SUMMARY, "…")
}

/// Logs every target that failed, loudly, and folds the outcomes into one result.
fn finish(
    what: &str,
    instance_id: &str,
    outcomes: [Option<Result<(), PagerError>>; 2],
) -> Result<(), PagerError> {
    let mut errors = Vec::new();
    for outcome in outcomes.into_iter().flatten() {
        if let Err(e) = outcome {
            tracing::error!(instance_id, "could not {what} about {instance_id}: {e}");
            errors.push(e);
        }
    }
    match errors.len() {
        0 => {
            tracing::info!(instance_id, "{what} about {instance_id}: delivered");
            Ok(())
        }
        1 => Err(errors.remove(0)),
        _ => Err(PagerError::Several(errors)),
    }
}

/// "drover-<instance id>" ("drover-boot-<instance id>" for a boot), at most 255 bytes
/// (PagerDuty's limit), cut at a char boundary.
pub fn dedup_key(kind: IncidentKind, instance_id: &str) -> String {
    let key = match kind {
        IncidentKind::TakeOut => format!("drover-{instance_id}"),
        IncidentKind::Boot => format!("drover-boot-{instance_id}"),
        IncidentKind::Reap => format!("drover-reap-{instance_id}"),
    };
    cut_bytes(&key, MAX_DEDUP_KEY, "")
}

/// The one line a pager shows first, at most 1024 bytes.
fn summary(incident: &Incident) -> String {
    let hostname = non_blank(&incident.hostname);
    let host_id = non_blank(&incident.host_id);
    let mut aside = Vec::new();
    let host = match (hostname, host_id) {
        (Some(name), id) => {
            aside.push(incident.instance_id.as_str());
            aside.extend(id);
            name
        }
        (None, Some(id)) => {
            aside.push(incident.instance_id.as_str());
            id
        }
        (None, None) => incident.instance_id.as_str(),
    };
    let group = non_blank(&incident.group).map(|g| format!("group {g}"));
    aside.extend(group.as_deref());
    let aside = if aside.is_empty() {
        String::new()
    } else {
        format!(" ({})", aside.join(", "))
    };
    let text = match incident.kind {
        IncidentKind::TakeOut => format!(
            "drover: taking host {host}{aside} out of Rancher failed at {}: {}",
            incident.failed_step, incident.error
        ),
        IncidentKind::Boot => format!(
            "drover: registering instance {host}{aside} with Rancher failed at {}: {}",
            incident.failed_step, incident.error
        ),
        IncidentKind::Reap => format!(
            "drover: in Rancher environment {}, {}",
            incident.instance_id, incident.error
        ),
    };
    cut_bytes(&one_line(&text, usize::MAX), MAX_SUMMARY, "…")
}

fn trigger_event(
    routing_key: &SecretString,
    incident: &Incident,
    key: &str,
    summary: &str,
    timestamp: &str,
) -> Value {
    // Extra facts first, so that none of them can overwrite the core ones.
    let mut details: Map<String, Value> = incident
        .details
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    details.insert("instance_id".into(), json!(incident.instance_id));
    details.insert("host_id".into(), json!(incident.host_id));
    details.insert("hostname".into(), json!(incident.hostname));
    details.insert("group".into(), json!(incident.group));
    details.insert("failed_step".into(), json!(incident.failed_step));
    details.insert("error".into(), json!(incident.error));
    details.insert("timeline".into(), timeline(incident));

    let source = non_blank(&incident.hostname).unwrap_or(&incident.instance_id);
    let mut payload = json!({
        "summary": summary,
        "source": source,
        "severity": incident.severity.as_str(),
        "timestamp": timestamp,
        "component": "drover",
        "class": incident.failed_step,
        "custom_details": details,
    });
    if let (Some(group), Some(obj)) = (non_blank(&incident.group), payload.as_object_mut()) {
        obj.insert("group".into(), json!(group));
    }
    json!({
        "routing_key": routing_key.expose_secret(),
        "event_action": "trigger",
        "dedup_key": key,
        "client": "drover",
        "payload": payload,
    })
}

/// The facts of a trigger as the webhook gets them.
fn facts(incident: &Incident, key: &str, summary: &str, timestamp: &str) -> Value {
    json!({
        "event": "trigger",
        "dedup_key": key,
        "summary": summary,
        "timestamp": timestamp,
        "severity": incident.severity.as_str(),
        "instance_id": incident.instance_id,
        "host_id": incident.host_id,
        "hostname": incident.hostname,
        "group": incident.group,
        "failed_step": incident.failed_step,
        "error": incident.error,
        "timeline": timeline(incident),
        "details": incident.details,
    })
}

fn timeline(incident: &Incident) -> Value {
    Value::Array(
        incident
            .timeline
            .iter()
            .map(|(at, event)| json!({"at": at, "event": event}))
            .collect(),
    )
}

/// PagerDuty's `message` and `errors`, or the start of whatever else came back.
fn describe_answer(status: StatusCode, bytes: &[u8]) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let field = |v: &Value, name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    let text = match parsed {
        Some(v) if v.is_object() => {
            let message = field(&v, "message")
                .or_else(|| field(&v, "status"))
                .or_else(|| field(&v, "error"))
                .unwrap_or_else(|| reason.to_string());
            let errors: Vec<&str> = v
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if errors.is_empty() {
                message
            } else {
                format!("{message}: {}", errors.join("; "))
            }
        }
        _ => {
            let raw = String::from_utf8_lossy(bytes);
            if raw.trim().is_empty() {
                reason.to_string()
            } else {
                raw.into_owned()
            }
        }
    };
    cut_bytes(&one_line(&text, usize::MAX), MAX_ANSWER, "…")
}

/// Scheme, host and port, and the path only when asked: never credentials or a query.
fn shown_url(url: &Url, with_path: bool) -> String {
    let origin = url.origin().ascii_serialization();
    if with_path {
        format!("{origin}{}", url.path())
    } else {
        origin
    }
}

fn non_blank(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.trim().is_empty())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use testbed::pager::PagerServer;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    /// One short: the stand-in, like PagerDuty, answers 400.
    const SHORT_KEY: &str = "0123456789abcdef0123456789abcde";

    fn config(server: &PagerServer, key: Option<&str>, webhook: bool) -> Settings {
        let key = key.map(|k| Source::Inline(SecretString::from(k.to_string())));
        config_with(server, key, webhook)
    }

    fn config_with(server: &PagerServer, key: Option<Source>, webhook: bool) -> Settings {
        Settings {
            pagerduty_routing_key: key.map(|k| Secret::new("pager.pagerduty_routing_key", k)),
            pagerduty_url: Url::parse(&server.enqueue_url()).expect("enqueue URL"),
            webhook_url: webhook.then(|| SecretString::from(server.webhook_url())),
            webhook_events: WebhookEvents::Failures,
            parameter_store: None,
        }
    }

    fn pager(server: &PagerServer, key: Option<&str>, webhook: bool) -> Pager {
        Pager::new(&config(server, key, webhook)).expect("pager")
    }

    fn incident() -> Incident {
        Incident {
            kind: IncidentKind::TakeOut,
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            host_id: Some("1h42".into()),
            group: Some("web-asg".into()),
            hostname: Some("ip-10-0-1-5".into()),
            failed_step: "deactivate".into(),
            error: "Rancher POST http://r/v2-beta/projects/1a5/hosts/1h42?action=deactivate answered 500 Error: boom".into(),
            severity: Severity::Critical,
            timeline: vec![
                ("2026-11-23T12:00:00Z".into(), "termination notice from SQS".into()),
                ("2026-11-23T12:00:01Z".into(), "deactivate failed".into()),
            ],
            details: BTreeMap::from([
                ("lifecycle_result".to_string(), "ABANDON".to_string()),
                ("instance_id".to_string(), "must not win".to_string()),
            ]),
        }
    }

    fn in_secs(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    /// PagerDuty's Events API; faults there leave the webhook alone.
    fn enqueue() -> testbed::http::Match {
        testbed::http::Match::path(testbed::pager::ENQUEUE)
    }

    fn enqueue_statuses(server: &PagerServer) -> Vec<u16> {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/v2/enqueue")
            .map(|r| r.status)
            .collect()
    }

    #[tokio::test]
    async fn trigger_reaches_pagerduty_with_the_facts() {
        let server = PagerServer::start().await;
        let pager = pager(&server, Some(KEY), false);
        assert!(pager.is_configured());
        pager
            .trigger(&incident(), in_secs(10))
            .await
            .expect("accepted");
        let events = server.events();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e["routing_key"], KEY);
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], "drover-i-0a1b2c3d4e5f60718");
        assert_eq!(e["client"], "drover");
        let p = &e["payload"];
        let summary = p["summary"].as_str().expect("summary");
        for part in [
            "i-0a1b2c3d4e5f60718",
            "ip-10-0-1-5",
            "1h42",
            "group web-asg",
            "failed at deactivate",
            "answered 500",
        ] {
            assert!(summary.contains(part), "{part} in {summary}");
        }
        assert!(summary.starts_with("drover: taking host ip-10-0-1-5 ("));
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["source"], "ip-10-0-1-5");
        assert_eq!(p["component"], "drover");
        assert_eq!(p["group"], "web-asg");
        assert_eq!(p["class"], "deactivate");
        let ts = p["timestamp"].as_str().expect("timestamp");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        let d = &p["custom_details"];
        assert_eq!(d["instance_id"], "i-0a1b2c3d4e5f60718");
        assert_eq!(d["host_id"], "1h42");
        assert_eq!(d["group"], "web-asg");
        assert_eq!(d["failed_step"], "deactivate");
        assert_eq!(d["error"], incident().error);
        assert_eq!(d["lifecycle_result"], "ABANDON");
        assert_eq!(
            d["timeline"],
            json!([
                {"at": "2026-11-23T12:00:00Z", "event": "termination notice from SQS"},
                {"at": "2026-11-23T12:00:01Z", "event": "deactivate failed"},
            ])
        );
        assert!(server.webhooks().is_empty());
    }

    #[tokio::test]
    async fn webhook_receives_the_facts() {
        let server = PagerServer::start().await;
        let pager = pager(&server, Some(KEY), true);
        pager
            .trigger(&incident(), in_secs(10))
            .await
            .expect("accepted");
        let hooks = server.webhooks();
        assert_eq!(hooks.len(), 1);
        let h = &hooks[0];
        let summary = server.events()[0]["payload"]["summary"].clone();
        assert_eq!(h["text"], summary);
        let d = &h["drover"];
        assert_eq!(d["event"], "trigger");
        assert_eq!(d["dedup_key"], "drover-i-0a1b2c3d4e5f60718");
        assert_eq!(d["instance_id"], "i-0a1b2c3d4e5f60718");
        assert_eq!(d["host_id"], "1h42");
        assert_eq!(d["hostname"], "ip-10-0-1-5");
        assert_eq!(d["group"], "web-asg");
        assert_eq!(d["failed_step"], "deactivate");
        assert_eq!(d["severity"], "critical");
        assert_eq!(d["details"]["lifecycle_result"], "ABANDON");
        assert_eq!(d["timeline"][1]["event"], "deactivate failed");
        assert!(!h.to_string().contains(KEY));

        // A webhook alone is a pager too.
        let only_hook = self::pager(&server, None, true);
        assert!(only_hook.is_configured());
        only_hook
            .trigger(&incident(), in_secs(10))
            .await
            .expect("accepted");
        assert_eq!(server.webhooks().len(), 2);
        assert_eq!(server.events().len(), 1);
    }

    #[tokio::test]
    async fn a_take_out_is_reported_to_the_webhook_only_when_it_asked_for_all() {
        let server = PagerServer::start().await;
        let report = Report {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            host_id: Some("1h42".into()),
            group: Some("web-asg".into()),
            source: "sqs".into(),
            hook_completed: true,
            timeline: vec![("2026-01-01T00:00:00.000Z".into(), "host 1h42 out".into())],
        };
        let failures_only = pager(&server, Some(KEY), true);
        failures_only
            .report(&report, in_secs(10))
            .await
            .expect("nothing to send");
        assert!(server.webhooks().is_empty());

        let mut settings = config(&server, Some(KEY), true);
        settings.webhook_events = WebhookEvents::All;
        let all = Pager::new(&settings).expect("pager");
        all.report(&report, in_secs(10)).await.expect("accepted");
        let hooks = server.webhooks();
        assert_eq!(hooks.len(), 1);
        let d = &hooks[0]["drover"];
        assert_eq!(d["event"], "take-out");
        assert_eq!(d["instance_id"], "i-0a1b2c3d4e5f60718");
        assert_eq!(d["host_id"], "1h42");
        assert_eq!(d["source"], "sqs");
        assert_eq!(d["timeline"][0]["event"], "host 1h42 out");
        assert!(hooks[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("taken out")));
        // PagerDuty hears of failures only.
        assert!(server.events().is_empty());
    }

    #[tokio::test]
    async fn pages_sent_and_failed_are_counted() {
        let server = PagerServer::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("drover.prom");
        let metrics = Metrics::to_textfile(Some(&path));
        let pager = pager(&server, Some(KEY), false).with_metrics(metrics.clone());
        pager.trigger(&incident(), in_secs(10)).await.expect("sent");
        let refused = self::pager(&server, Some(SHORT_KEY), false).with_metrics(metrics);
        assert!(refused.trigger(&incident(), in_secs(10)).await.is_err());
        let text = std::fs::read_to_string(&path).expect("textfile");
        assert!(
            text.contains("drover_pages_total{outcome=\"sent\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("drover_pages_total{outcome=\"failed\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn throttling_is_retried_then_accepted() {
        let server = PagerServer::start().await;
        server.fail(enqueue(), testbed::http::Fault::Status(429), 2);
        let pager = pager(&server, Some(KEY), false);
        pager
            .trigger(&incident(), in_secs(20))
            .await
            .expect("accepted on the third attempt");
        assert_eq!(enqueue_statuses(&server), vec![429, 429, 202]);
        assert_eq!(server.events().len(), 1);
    }

    #[tokio::test]
    async fn invalid_event_is_not_retried_and_the_webhook_is_still_told() {
        let server = PagerServer::start().await;
        let pager = pager(&server, Some(SHORT_KEY), true);
        let err = pager
            .trigger(&incident(), in_secs(20))
            .await
            .expect_err("400");
        assert!(
            matches!(err, PagerError::Rejected { status: 400, .. }),
            "{err:?}"
        );
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(text.contains("PagerDuty http://127.0.0.1:"), "{text}");
        assert!(text.contains("'routing_key' must be 32"), "{text}");
        assert_eq!(enqueue_statuses(&server), vec![400]);
        assert_eq!(server.webhooks().len(), 1);
    }

    #[tokio::test]
    async fn both_targets_failing_names_both() {
        let server = PagerServer::start().await;
        let mut cfg = config(&server, Some(SHORT_KEY), false);
        cfg.webhook_url = Some(SecretString::from(format!("{}/nowhere", server.url())));
        let pager = Pager::new(&cfg).expect("pager");
        let err = pager
            .trigger(&incident(), in_secs(20))
            .await
            .expect_err("both refuse");
        let PagerError::Several(errors) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(errors.len(), 2);
        let text = err.to_string();
        assert!(text.contains("PagerDuty") && text.contains("400"), "{text}");
        assert!(text.contains("webhook") && text.contains("404"), "{text}");
        // The webhook's path may be its secret: only the server is named.
        assert!(!text.contains("nowhere"), "{text}");
    }

    #[tokio::test]
    async fn the_deadline_bounds_retries() {
        let server = PagerServer::start().await;
        server.fail(enqueue(), testbed::http::Fault::Status(503), 1000);
        let pager = pager(&server, Some(KEY), false);
        let started = std::time::Instant::now();
        let err = pager
            .trigger(&incident(), in_secs(2))
            .await
            .expect_err("never accepted");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(took >= Duration::from_millis(1900), "took {took:?}");
        assert!(matches!(err, PagerError::OutOfTime { .. }), "{err:?}");
        assert!(err.to_string().contains("503"), "{err}");
        assert!(enqueue_statuses(&server).len() > 1);
        assert!(server.events().is_empty());
    }

    #[tokio::test]
    async fn resolve_sends_only_the_three_fields() {
        let server = PagerServer::start().await;
        let pager = pager(&server, Some(KEY), true);
        pager
            .resolve(
                IncidentKind::TakeOut,
                "i-0a1b2c3d4e5f60718",
                "taken out on retry",
                in_secs(10),
            )
            .await
            .expect("accepted");
        let events = server.events();
        assert_eq!(
            events,
            vec![json!({
                "routing_key": KEY,
                "dedup_key": "drover-i-0a1b2c3d4e5f60718",
                "event_action": "resolve",
            })]
        );
        let hooks = server.webhooks();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0]["drover"]["event"], "resolve");
        assert_eq!(hooks[0]["drover"]["instance_id"], "i-0a1b2c3d4e5f60718");
        assert_eq!(hooks[0]["drover"]["summary"], "taken out on retry");
        let text = hooks[0]["text"].as_str().expect("text");
        assert!(
            text.contains("resolved") && text.contains("taken out on retry"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn nothing_configured_pages_nobody() {
        let server = PagerServer::start().await;
        let pager = pager(&server, None, false);
        assert!(!pager.is_configured());
        pager
            .trigger(&incident(), in_secs(1))
            .await
            .expect("nothing to do");
        pager
            .resolve(IncidentKind::TakeOut, "i-1", "fine", in_secs(1))
            .await
            .expect("nothing to do");
        assert!(server.requests().is_empty());
        // An empty key is no key.
        assert!(!self::pager(&server, Some(""), false).is_configured());
    }

    #[test]
    fn long_summary_is_cut_at_a_char_boundary() {
        let mut long = incident();
        long.error = "é".repeat(2000);
        let s = summary(&long);
        assert!(s.len() <= MAX_SUMMARY, "{}", s.len());
        assert!(s.len() > MAX_SUMMARY - 8);
        assert!(s.ends_with('…'));
        assert!(s.starts_with("drover: taking host ip-10-0-1-5"));

        let mut multiline = incident();
        multiline.error = "first\nsecond\r\n  third".into();
        assert!(summary(&multiline).ends_with(": first second third"));

        let key = dedup_key(IncidentKind::TakeOut, &"ü".repeat(300));
        assert!(key.len() <= MAX_DEDUP_KEY && key.starts_with("drover-ü"));
        assert_eq!(dedup_key(IncidentKind::TakeOut, "i-1"), "drover-i-1");
        assert_eq!(dedup_key(IncidentKind::Boot, "i-1"), "drover-boot-i-1");
        assert_eq!(dedup_key(IncidentKind::Reap, "1a5"), "drover-reap-1a5");
    }

    #[test]
    fn a_reap_page_is_about_the_environment() {
        let mut mass = incident();
        mass.kind = IncidentKind::Reap;
        mass.instance_id = "1a5".into();
        mass.host_id = None;
        mass.hostname = None;
        mass.error = "12 hosts lost their instances".into();
        assert_eq!(
            summary(&mass),
            "drover: in Rancher environment 1a5, 12 hosts lost their instances"
        );
    }

    #[tokio::test]
    async fn a_cut_summary_is_accepted() {
        let server = PagerServer::start().await;
        let pager = pager(&server, Some(KEY), false);
        let mut long = incident();
        long.error = "x".repeat(5000);
        pager.trigger(&long, in_secs(10)).await.expect("accepted");
        let summary = server.events()[0]["payload"]["summary"].clone();
        assert_eq!(summary.as_str().map(str::len), Some(MAX_SUMMARY));
    }

    #[test]
    fn summary_without_hostname_or_group() {
        let mut bare = incident();
        bare.hostname = None;
        bare.group = None;
        assert!(summary(&bare).starts_with(
            "drover: taking host 1h42 (i-0a1b2c3d4e5f60718) out of Rancher failed at deactivate: "
        ));
        bare.host_id = Some(" ".into());
        assert!(summary(&bare).starts_with(
            "drover: taking host i-0a1b2c3d4e5f60718 out of Rancher failed at deactivate: "
        ));
    }

    #[tokio::test]
    async fn a_routing_key_from_a_file_is_read_at_the_first_page_and_kept() {
        let server = PagerServer::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pagerduty.key");
        let pager = Pager::new(&config_with(
            &server,
            Some(Source::File(path.clone())),
            true,
        ))
        .expect("pager");
        assert!(pager.is_configured(), "a key to come is a key");

        // Not there: the webhook still gets the page; the error names the key and the file.
        let err = pager
            .trigger(&incident(), in_secs(2))
            .await
            .expect_err("no routing key yet");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "pager.pagerduty_routing_key_file {} did not appear within 2s",
                path.display()
            )),
            "{text}"
        );
        assert_eq!(server.webhooks().len(), 1);
        assert!(server.events().is_empty());

        std::fs::write(&path, format!("{KEY}\n")).expect("write");
        pager
            .trigger(&incident(), in_secs(10))
            .await
            .expect("read now");
        assert_eq!(server.events()[0]["routing_key"], KEY);
        // Kept: the file going away changes nothing.
        std::fs::remove_file(&path).expect("remove");
        pager
            .resolve(
                IncidentKind::TakeOut,
                "i-0a1b2c3d4e5f60718",
                "fine",
                in_secs(10),
            )
            .await
            .expect("kept");
        assert_eq!(server.events()[1]["routing_key"], KEY);

        // A file holding no routing key is refused, naming the key.
        let short = dir.path().join("short.key");
        std::fs::write(&short, SHORT_KEY).expect("write");
        let pager =
            Pager::new(&config_with(&server, Some(Source::File(short)), false)).expect("pager");
        let err = pager
            .trigger(&incident(), in_secs(5))
            .await
            .expect_err("not a routing key");
        assert!(
            err.to_string().contains("pager.pagerduty_routing_key_file")
                && err.to_string().contains("32-character")
                && !err.to_string().contains(SHORT_KEY),
            "{err}"
        );
        assert_eq!(server.events().len(), 2, "nothing sent with it");
    }

    /// Captured log output of the current thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        }
    }

    #[tokio::test]
    async fn the_routing_key_stays_out_of_debug_errors_and_logs() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // With a single scoped subscriber alive, tracing-core decides a log line's interest
        // with the subscriber of whichever thread reaches it first: another test's thread,
        // which has none, would switch the line off for good. A second one makes it ask all.
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

        let server = PagerServer::start().await;
        let good = pager(&server, Some(KEY), true);
        let short = pager(&server, Some(SHORT_KEY), true);
        for (p, key) in [(&good, KEY), (&short, SHORT_KEY)] {
            let shown = format!("{p:?}");
            assert!(!shown.contains(key), "{shown}");
            assert!(shown.contains("PagerDuty http://127.0.0.1:"), "{shown}");
        }

        let mut errors = Vec::new();
        // Refused for good.
        errors.extend(short.trigger(&incident(), in_secs(10)).await.err());
        errors.extend(
            short
                .resolve(IncidentKind::TakeOut, "i-1", "ok", in_secs(10))
                .await
                .err(),
        );
        // Out of time, with retries logged.
        server.fail(enqueue(), testbed::http::Fault::Status(503), 1000);
        errors.extend(good.trigger(&incident(), in_secs(1)).await.err());
        // Nobody listening.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let mut cfg = config(&server, Some(KEY), false);
        cfg.pagerduty_url = Url::parse(&format!("http://{closed}/v2/enqueue")).expect("URL");
        let unreachable = Pager::new(&cfg).expect("pager");
        errors.extend(unreachable.trigger(&incident(), in_secs(1)).await.err());
        assert_eq!(errors.len(), 4, "{errors:?}");

        for e in &errors {
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !shown.contains(KEY) && !shown.contains(SHORT_KEY),
                    "{shown}"
                );
            }
        }
        // A server echoing the key back does not get it into our errors.
        assert_eq!(good.scrub(&format!("bad key {KEY}")), "bad key [REDACTED]");

        let logs = captured.text();
        assert!(!logs.contains(KEY) && !logs.contains(SHORT_KEY), "{logs}");
        assert!(logs.contains("ERROR"), "{logs}");
        assert!(logs.contains("could not page about i-0a1b2c3d4e5f60718: PagerDuty"));
        assert!(logs.contains("could not resolve the page about i-1: PagerDuty"));
        assert!(logs.contains("WARN"), "retries are logged: {logs}");
    }
}
