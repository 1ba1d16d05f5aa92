//! A small client for the Rancher 1.x (Cattle) API: registration tokens and hosts, in `/v1`
//! and `/v2-beta`, scoped to one environment (project).
//!
//! Hand-written because no maintained crate speaks Cattle. Every request has a timeout,
//! every error carries the server's `code` and `message`, and links from the server are
//! never followed to another origin (they would carry our credentials there).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::cluster::AgentContact;
use crate::labels::{GROUP_LABEL, INSTANCE_ID_LABEL, REGION_LABEL};
use crate::secret::{Secret, SecretReader};
use crate::text::{error_chain, one_line, redact_string_values};

/// Which Rancher API root to talk to, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V2Beta,
    /// The newest the server offers.
    Auto,
}

/// The client's settings (`[rancher]`), as the config built them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: Url,
    pub project_id: String,
    pub access_key: String,
    /// Where the secret key is; its value is read by whoever connects
    /// (`commands::connect_rancher`) and handed to [`RancherClient::connect`].
    pub secret_key: Secret,
    pub api_version: ApiVersion,
    pub ca_file: Option<std::path::PathBuf>,
    /// Bound on every single request to the server.
    pub request_timeout: Duration,
}

/// Hard cap on pages when listing, so that a server looping its `next` links cannot hang us.
const MAX_PAGES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RancherError {
    #[error("Rancher {method} {url} answered {status} {code}: {message}")]
    Api {
        method: String,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Rancher {method} {url}: {detail}")]
    Transport {
        method: String,
        url: String,
        detail: String,
        timed_out: bool,
    },
    #[error("Rancher {method} {url}: unexpected answer: {detail}")]
    Decode {
        method: String,
        url: String,
        detail: String,
    },
    #[error("rancher.ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("Rancher: {0}")]
    Protocol(String),
    /// Something only `/v2-beta` has (evacuation), asked of a client speaking `/v1`.
    #[error("Rancher {what} needs the /v2-beta API; this client speaks /v1")]
    NeedsV2Beta { what: &'static str },
    /// An evacuation still under way when its budget ran out: its event as last seen, and
    /// the non-system containers still on the host (`None`: never listed).
    #[error(
        "lifecycle.drain_timeout ran out evacuating host {host_id}: {event}; {}",
        containers_left(left.as_deref())
    )]
    EvacuationUnfinished {
        host_id: String,
        event: String,
        left: Option<Vec<String>>,
    },
}

/// The containers an unfinished evacuation left, for its error: a few names, then a count.
fn containers_left(left: Option<&[String]>) -> String {
    const SHOWN: usize = 5;
    match left {
        None => "its containers were not listed yet".to_string(),
        Some([]) => "no container left on it".to_string(),
        Some(names) => {
            let mut text = format!(
                "{} non-system container{} still on it ({}",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names
                    .iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if names.len() > SHOWN {
                text.push_str(&format!(" and {} more", names.len() - SHOWN));
            }
            text.push(')');
            text
        }
    }
}

impl RancherError {
    pub fn status(&self) -> Option<u16> {
        match self {
            RancherError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Busy (409), throttled, server trouble and transport failures pass; the rest do not.
    pub fn is_transient(&self) -> bool {
        match self {
            RancherError::Api { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            RancherError::Transport { .. } => true,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// The API root actually in use, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedApi {
    V1,
    V2Beta,
}

impl ResolvedApi {
    pub fn path(self) -> &'static str {
        match self {
            ResolvedApi::V1 => "v1",
            ResolvedApi::V2Beta => "v2-beta",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Collection<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "fieldName")]
    field_name: Option<String>,
}

/// A registration token. Its URL lets anyone add hosts to the environment: a secret, never
/// in `Debug` or a log line (logs name a token by its id).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationToken {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub registration_url: Option<SecretString>,
    #[serde(default)]
    pub image: Option<String>,
}

impl RegistrationToken {
    pub fn is_usable(&self) -> bool {
        self.state == "active"
            && self
                .registration_url
                .as_ref()
                .is_some_and(|u| !u.expose_secret().is_empty())
    }
}

/// A host as Rancher reports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "labels_as_strings")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub agent_state: Option<String>,
    #[serde(default)]
    pub agent_ip_address: Option<String>,
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
}

/// Labels are strings in practice; tolerate a server that sends numbers or booleans.
fn labels_as_strings<'de, D>(de: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Option<BTreeMap<String, serde_json::Value>> = Option::deserialize(de)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            serde_json::Value::Null => None,
            other => Some((k, other.to_string())),
        })
        .collect())
}

impl Host {
    /// The state as one word, the same in both API versions: v2-beta already reports the
    /// agent's state in place of `active`; v1 shows the raw state and leaves `agentState` aside.
    pub fn effective_state(&self) -> &str {
        match self.agent_state.as_deref() {
            Some(agent) if self.state == "active" && !agent.is_empty() && agent != "active" => {
                agent
            }
            _ => &self.state,
        }
    }

    /// Active and its agent connected.
    pub fn is_active(&self) -> bool {
        self.effective_state() == "active"
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.labels.get(INSTANCE_ID_LABEL).map(String::as_str)
    }

    /// The `aws.autoscaling_group` label.
    pub fn group(&self) -> Option<&str> {
        self.labels.get(GROUP_LABEL).map(String::as_str)
    }

    /// The `aws.region` label.
    pub fn region(&self) -> Option<&str> {
        self.labels.get(REGION_LABEL).map(String::as_str)
    }

    /// The agent's contact as `api` reports it. v1 keeps `state` as it is (`active`) and
    /// says it in `agentState`; v2-beta puts `agentState` in place of `state` for an active
    /// host, and still carries `agentState` (an `inactive` host keeps its own `state`).
    /// Either way only the server's two words count: anything else is connected.
    pub fn agent_contact(&self, api: ResolvedApi) -> AgentContact {
        let said = match api {
            ResolvedApi::V1 => self.agent_state.as_deref(),
            ResolvedApi::V2Beta => match self.state.as_str() {
                s @ ("reconnecting" | "disconnected") => Some(s),
                _ => self.agent_state.as_deref(),
            },
        };
        match said {
            Some("disconnected") => AgentContact::Disconnected,
            Some("reconnecting") => AgentContact::Reconnecting,
            _ => AgentContact::Connected,
        }
    }

    pub fn offers(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }
}

/// The type of the external host event that evacuates a host (v2-beta).
pub const EVACUATE_EVENT: &str = "host.evacuate";

/// An external host event (v2-beta): drover creates a `host.evacuate` one to evacuate a host
/// and watches it to know when the evacuation is done.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEvent {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub host_id: Option<String>,
}

impl HostEvent {
    /// Its process is done: for `host.evacuate`, every non-system container is gone.
    pub fn is_finished(&self) -> bool {
        self.state == "created"
    }

    /// Its process is still under way (Cattle's states before `created`).
    pub fn is_under_way(&self) -> bool {
        matches!(self.state.as_str(), "requested" | "creating")
    }
}

/// A container on a host, as the host's `instances` link lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Instance {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: String,
    /// Rancher's own containers (network agent, health checks): evacuation leaves them.
    #[serde(default)]
    pub system: Option<bool>,
}

impl Instance {
    /// A container evacuation takes off the host, not gone yet.
    pub fn is_left(&self) -> bool {
        self.system != Some(true)
            && !matches!(self.state.as_str(), "removed" | "purging" | "purged")
    }

    /// Its name (else its id), short and on one line, for logs.
    pub fn label(&self) -> String {
        let name = self.name.as_deref().filter(|n| !n.is_empty());
        one_line(name.unwrap_or(&self.id), 60)
    }
}

/// The environment (project) a key belongs to.
#[derive(Debug, Clone, Deserialize)]
pub struct Project {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

/// Rancher client bound to one server, API version and environment. Clones share the
/// secret key, so that a key read again after a 401 serves every clone.
#[derive(Debug, Clone)]
pub struct RancherClient {
    http: reqwest::Client,
    base: Url,
    api: ResolvedApi,
    project_id: String,
    access_key: String,
    /// Never printed: `SecretString`'s `Debug` shows `[REDACTED]`.
    secret_key: Arc<RwLock<SecretString>>,
    /// Reads the secret key again from its source when Rancher answers 401: a key rotated
    /// while drover runs. `None`: the key cannot change (inline), or nobody set one.
    rereader: Option<Arc<Rereader>>,
}

/// The re-reading of a rotated key: one at a time, so that many requests refused at once
/// read the source once.
#[derive(Debug)]
struct Rereader {
    reader: SecretReader,
    busy: tokio::sync::Mutex<()>,
    /// Bound on one re-read (an SSM read with its retries).
    budget: Duration,
}

impl RancherClient {
    /// Builds the client with the secret key's value and, for `api_version = "auto"`, asks
    /// the server which roots it has.
    pub async fn connect(
        config: &Settings,
        secret_key: SecretString,
    ) -> Result<RancherClient, RancherError> {
        let mut client = RancherClient::new(config, secret_key, ResolvedApi::V1)?;
        client.api = match config.api_version {
            ApiVersion::V1 => ResolvedApi::V1,
            ApiVersion::V2Beta => ResolvedApi::V2Beta,
            ApiVersion::Auto => client.newest_api().await?,
        };
        Ok(client)
    }

    /// A client for a known API version, without talking to the server.
    pub fn new(
        config: &Settings,
        secret_key: SecretString,
        api: ResolvedApi,
    ) -> Result<RancherClient, RancherError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            // Redirects would take our Basic credentials along; a Rancher URL is exact.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            // A CA of the operator's on top of the system's roots: a TLS config of its own.
            let ca_err = |detail: String| RancherError::CaFile {
                path: path.display().to_string(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("holds no PEM certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        } else {
            builder = builder.tls_backend_preconfigured(
                crate::tls::client_config().map_err(RancherError::Protocol)?,
            );
        }
        let http = builder
            .build()
            .map_err(|e| RancherError::Protocol(e.to_string()))?;
        let mut base = config.url.clone();
        // `https://r.example.com/` and `https://r.example.com` mean the same server.
        let trimmed = base.path().trim_end_matches('/').to_string();
        base.set_path(&trimmed);
        base.set_query(None);
        Ok(RancherClient {
            http,
            base,
            api,
            project_id: config.project_id.clone(),
            access_key: config.access_key.clone(),
            secret_key: Arc::new(RwLock::new(secret_key)),
            rereader: None,
        })
    }

    /// The client that, when Rancher answers 401, reads the secret key again with `reader`
    /// (within `budget`) and, when it changed, retries the request once with the new one.
    /// A secret that cannot change (inline) needs none.
    pub fn with_rereader(mut self, reader: SecretReader, budget: Duration) -> RancherClient {
        if reader.secret().can_change() {
            self.rereader = Some(Arc::new(Rereader {
                reader,
                busy: tokio::sync::Mutex::new(()),
                budget,
            }));
        }
        self
    }

    fn current_key(&self) -> SecretString {
        self.secret_key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a 401 with `refused`: the key to try again with, when its source now holds
    /// another one (or another request already found it); `None` to give up.
    async fn rotated_key(&self, refused: &SecretString) -> Option<SecretString> {
        let rereader = self.rereader.as_ref()?;
        let _one_at_a_time = rereader.busy.lock().await;
        let now = self.current_key();
        if now.expose_secret() != refused.expose_secret() {
            return Some(now);
        }
        let deadline = tokio::time::Instant::now() + rereader.budget;
        match rereader.reader.read(deadline).await {
            Ok(fresh) if fresh.expose_secret() != refused.expose_secret() => {
                tracing::info!(
                    "Rancher refused the secret key (401) and {} holds another one now: using it",
                    rereader.reader.secret()
                );
                *self.secret_key.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                Some(fresh)
            }
            Ok(_) => {
                tracing::debug!(
                    "Rancher refused the secret key (401); {} still holds the same one",
                    rereader.reader.secret()
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    "Rancher refused the secret key (401), and reading it again failed: {e}"
                );
                None
            }
        }
    }

    pub fn api(&self) -> ResolvedApi {
        self.api
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// `v2-beta` when the server has it (Rancher 1.2 and later), else `v1`.
    async fn newest_api(&self) -> Result<ResolvedApi, RancherError> {
        let url = self.url(&["v2-beta"])?;
        match self
            .request::<serde_json::Value>(Method::GET, url, None)
            .await
        {
            Ok(_) => Ok(ResolvedApi::V2Beta),
            Err(e) if e.is_not_found() => {
                // Make sure v1 answers at all, so that a wrong URL fails here, clearly.
                self.request::<serde_json::Value>(Method::GET, self.url(&["v1"])?, None)
                    .await?;
                Ok(ResolvedApi::V1)
            }
            Err(e) => Err(e),
        }
    }

    fn url(&self, segments: &[&str]) -> Result<Url, RancherError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| RancherError::Protocol("rancher.url cannot be a base URL".into()))?;
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        Ok(url)
    }

    fn project_url(&self, rest: &[&str]) -> Result<Url, RancherError> {
        let mut segments = vec![self.api.path(), "projects", self.project_id.as_str()];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// One request; a 401 is retried once with the key its source holds now, when that
    /// is another one (a key rotated while drover runs).
    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<T, RancherError> {
        let key = self.current_key();
        let (status, bytes) = self.send(&method, &url, body.as_ref(), &key).await?;
        let (status, bytes) = if status == StatusCode::UNAUTHORIZED {
            match self.rotated_key(&key).await {
                Some(fresh) => self.send(&method, &url, body.as_ref(), &fresh).await?,
                None => (status, bytes),
            }
        } else {
            (status, bytes)
        };
        if !status.is_success() {
            return Err(api_error(&method, url.as_str(), status, &bytes));
        }
        decode(&method, url.as_str(), &bytes)
    }

    async fn send(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        key: &SecretString,
    ) -> Result<(StatusCode, Vec<u8>), RancherError> {
        let shown_url = url.as_str();
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .basic_auth(&self.access_key, Some(key.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(method, shown_url, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(method, shown_url, e))?;
        Ok((status, bytes.to_vec()))
    }

    /// Every item of a collection, following `pagination.next` on the same server only.
    async fn list<T: DeserializeOwned>(&self, first: Url) -> Result<Vec<T>, RancherError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(RancherError::Protocol(format!(
                    "more than {MAX_PAGES} pages listing {}",
                    self.base
                )));
            }
            let page: Collection<T> = self.request(Method::GET, url, None).await?;
            out.extend(page.data);
            next = next_page(&self.base, page.pagination.and_then(|p| p.next))?;
        }
        Ok(out)
    }

    /// The environment the key works in; proves the key and the project id.
    pub async fn project(&self) -> Result<Project, RancherError> {
        let url = self.url(&[self.api.path(), "projects", &self.project_id])?;
        self.request(Method::GET, url, None).await
    }

    pub async fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, RancherError> {
        self.list(self.project_url(&["registrationtokens"])?).await
    }

    pub async fn registration_token(&self, id: &str) -> Result<RegistrationToken, RancherError> {
        self.request(
            Method::GET,
            self.project_url(&["registrationtokens", id])?,
            None,
        )
        .await
    }

    /// `POST {}` on the collection: 201 with a token still `registering`.
    pub async fn create_registration_token(&self) -> Result<RegistrationToken, RancherError> {
        self.request(
            Method::POST,
            self.project_url(&["registrationtokens"])?,
            Some(serde_json::json!({})),
        )
        .await
    }

    /// Every host of the environment (removed and purged ones drop out of lists).
    pub async fn hosts(&self) -> Result<Vec<Host>, RancherError> {
        // The server's page size (100 by default); pages are followed.
        self.list(self.project_url(&["hosts"])?).await
    }

    /// One host by id; `None` when the server does not know it.
    pub async fn host(&self, id: &str) -> Result<Option<Host>, RancherError> {
        match self
            .request(Method::GET, self.project_url(&["hosts", id])?, None)
            .await
        {
            Ok(h) => Ok(Some(h)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The host drover registered for `instance_id`, by label only: hostnames repeat.
    /// When several match (a re-registration left an old one behind), the active one wins.
    pub async fn find_host_by_instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<Host>, RancherError> {
        Ok(hosts_of_instance(self.hosts().await?, instance_id)
            .into_iter()
            .next())
    }

    /// Every host labelled with `instance_id` still in the environment, active ones first.
    pub async fn find_hosts_by_instance(
        &self,
        instance_id: &str,
    ) -> Result<Vec<Host>, RancherError> {
        Ok(hosts_of_instance(self.hosts().await?, instance_id))
    }

    /// The containers on host `id` (its `instances` link); `None` when the server does not
    /// know the host.
    pub async fn host_instances(&self, id: &str) -> Result<Option<Vec<Instance>>, RancherError> {
        match self
            .list(self.project_url(&["hosts", id, "instances"])?)
            .await
        {
            Ok(list) => Ok(Some(list)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn needs_v2beta(&self, what: &'static str) -> Result<(), RancherError> {
        match self.api {
            ResolvedApi::V2Beta => Ok(()),
            ResolvedApi::V1 => Err(RancherError::NeedsV2Beta { what }),
        }
    }

    /// Starts evacuating host `id`: `POST .../externalhostevents`
    /// `{"eventType":"host.evacuate","hostId":id}`, which answers with the event `creating`
    /// (v2-beta only).
    pub async fn create_evacuation(&self, id: &str) -> Result<HostEvent, RancherError> {
        self.needs_v2beta("evacuation")?;
        let body = serde_json::json!({ "eventType": EVACUATE_EVENT, "hostId": id });
        self.request(
            Method::POST,
            self.project_url(&["externalhostevents"])?,
            Some(body),
        )
        .await
    }

    /// One external host event by id; `None` when the server does not know it.
    pub async fn host_event(&self, id: &str) -> Result<Option<HostEvent>, RancherError> {
        self.needs_v2beta("evacuation")?;
        match self
            .request(
                Method::GET,
                self.project_url(&["externalhostevents", id])?,
                None,
            )
            .await
        {
            Ok(e) => Ok(Some(e)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `host.evacuate` events of host `id`, oldest first. Filtered on the server and
    /// again here: a server ignores filter names it does not know.
    pub async fn evacuations_of(&self, id: &str) -> Result<Vec<HostEvent>, RancherError> {
        self.needs_v2beta("evacuation")?;
        let mut url = self.project_url(&["externalhostevents"])?;
        url.query_pairs_mut()
            .append_pair("hostId", id)
            .append_pair("eventType", EVACUATE_EVENT);
        let events: Vec<HostEvent> = self.list(url).await?;
        Ok(events
            .into_iter()
            .filter(|e| {
                e.host_id.as_deref() == Some(id) && e.event_type.as_deref() == Some(EVACUATE_EVENT)
            })
            .collect())
    }

    /// `POST .../hosts/{id}?action={action}`: the host in its transitioning state.
    pub async fn host_action(&self, id: &str, action: &str) -> Result<Host, RancherError> {
        let mut url = self.project_url(&["hosts", id])?;
        url.query_pairs_mut().append_pair("action", action);
        self.request(Method::POST, url, Some(serde_json::json!({})))
            .await
    }
}

/// The hosts registered for `instance_id` among `hosts`: labelled with it and not out of
/// the environment already; active ones before any other, in the server's order otherwise.
pub(crate) fn hosts_of_instance(hosts: Vec<Host>, instance_id: &str) -> Vec<Host> {
    let mut matches: Vec<Host> = hosts
        .into_iter()
        .filter(|h| h.instance_id() == Some(instance_id))
        .filter(|h| !matches!(h.state.as_str(), "removed" | "purged" | "purging"))
        .collect();
    matches.sort_by_key(|h| !h.is_active());
    matches
}

/// The page after this one: the collection's `pagination.next`, resolved against `base`, and
/// only on the same server (a link elsewhere would take our credentials along).
pub(crate) fn next_page(base: &Url, link: Option<String>) -> Result<Option<Url>, RancherError> {
    let Some(link) = link.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let link = Url::parse(&link)
        .or_else(|_| base.join(&link))
        .map_err(|e| RancherError::Protocol(format!("bad pagination link: {e}")))?;
    if link.origin() != base.origin() {
        return Err(RancherError::Protocol(format!(
            "pagination link points to another server ({}); not following it",
            one_line(&link.origin().ascii_serialization(), 100)
        )));
    }
    Ok(Some(link))
}

/// The fields of a registration token that let anyone add hosts to the environment
/// (`registrationUrl`, `token`, `command`, `windowsCommand`): never shown in an error.
const CREDENTIAL_KEYS: [&str; 4] = ["registrationUrl", "token", "command", "Command"];

/// A successful answer's body as `T`.
pub(crate) fn decode<T: DeserializeOwned>(
    method: &Method,
    url: &str,
    bytes: &[u8],
) -> Result<T, RancherError> {
    serde_json::from_slice(bytes).map_err(|e| RancherError::Decode {
        method: method.to_string(),
        url: url.to_string(),
        // serde's message quotes the value it did not expect, at any length; the body may be
        // anything at all. Both are cut to one short line (and not `{:?}`-quoted, which would
        // make a line of escapes out of a body of odd characters).
        detail: format!(
            "{} (body: {})",
            one_line(&e.to_string(), 200),
            body_excerpt(bytes)
        ),
    })
}

/// The start of an answer's body for an error message: one line of at most 200 characters,
/// its credentials redacted.
fn body_excerpt(bytes: &[u8]) -> String {
    // Redacting a cut body hides a value cut short too.
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    one_line(&redact_string_values(&head, &CREDENTIAL_KEYS), 200)
}

/// One page of a collection: its items and the raw `pagination.next` link.
pub(crate) fn decode_page<T: DeserializeOwned>(
    method: &Method,
    url: &str,
    bytes: &[u8],
) -> Result<(Vec<T>, Option<String>), RancherError> {
    let page: Collection<T> = decode(method, url, bytes)?;
    Ok((page.data, page.pagination.and_then(|p| p.next)))
}

fn transport_error(method: &Method, url: &str, e: reqwest::Error) -> RancherError {
    let timed_out = e.is_timeout();
    RancherError::Transport {
        method: method.to_string(),
        url: url.to_string(),
        // The URL is already in the message; without it the chain stays short.
        detail: error_chain(&e.without_url()),
        timed_out,
    }
}

pub(crate) fn api_error(
    method: &Method,
    url: &str,
    status: StatusCode,
    bytes: &[u8],
) -> RancherError {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice(bytes).ok();
    // What the server sends ends up in one log line: short, and without line breaks (an
    // HTML error page from a proxy has plenty).
    let (code, message) = match parsed {
        Some(body) => {
            let code = body
                .code
                .map(|c| one_line(&c, 60))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").to_string());
            let mut message = one_line(&body.message.unwrap_or_default(), 200);
            let field = body.field_name.map(|f| one_line(&f, 60));
            if let Some(field) = field.filter(|f| !f.is_empty()) {
                if message.is_empty() {
                    message = format!("field {field}");
                } else {
                    message = format!("{message} (field {field})");
                }
            }
            (code, message)
        }
        None => (
            status.canonical_reason().unwrap_or("Error").to_string(),
            body_excerpt(bytes),
        ),
    };
    let message = if message.is_empty() {
        match status.as_u16() {
            401 => "the access key or secret key is wrong".to_string(),
            404 => "not found".to_string(),
            _ => "no message".to_string(),
        }
    } else {
        message
    };
    RancherError::Api {
        method: method.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(json: serde_json::Value) -> Host {
        serde_json::from_value(json).expect("host parses")
    }

    #[test]
    fn v1_active_host_with_disconnected_agent_is_not_active() {
        let h = host(
            serde_json::json!({"id":"1h1","state":"active","agentState":"disconnected","labels":{}}),
        );
        assert_eq!(h.effective_state(), "disconnected");
        assert!(!h.is_active());
        let h = host(serde_json::json!({"id":"1h1","state":"active","agentState":null}));
        assert!(h.is_active());
        // v2-beta already folds agentState into state.
        let h = host(
            serde_json::json!({"id":"1h1","state":"reconnecting","agentState":"reconnecting"}),
        );
        assert_eq!(h.effective_state(), "reconnecting");
        let h =
            host(serde_json::json!({"id":"1h1","state":"inactive","agentState":"disconnected"}));
        assert_eq!(h.effective_state(), "inactive");
    }

    #[test]
    fn the_agent_is_read_as_each_api_version_reports_it() {
        use serde_json::json;
        use AgentContact::*;
        let cases = [
            // v1: state stays active, agentState says it.
            (
                ResolvedApi::V1,
                json!({"id":"1h1","state":"active","agentState":"disconnected"}),
                Disconnected,
            ),
            (
                ResolvedApi::V1,
                json!({"id":"1h1","state":"active","agentState":"reconnecting"}),
                Reconnecting,
            ),
            (
                ResolvedApi::V1,
                json!({"id":"1h1","state":"active","agentState":null}),
                Connected,
            ),
            (
                ResolvedApi::V1,
                json!({"id":"1h1","state":"inactive","agentState":"disconnected"}),
                Disconnected,
            ),
            // v2-beta: folded into state for an active host.
            (
                ResolvedApi::V2Beta,
                json!({"id":"1h1","state":"disconnected","agentState":"disconnected"}),
                Disconnected,
            ),
            (
                ResolvedApi::V2Beta,
                json!({"id":"1h1","state":"disconnected"}),
                Disconnected,
            ),
            (
                ResolvedApi::V2Beta,
                json!({"id":"1h1","state":"reconnecting","agentState":"reconnecting"}),
                Reconnecting,
            ),
            (
                ResolvedApi::V2Beta,
                json!({"id":"1h1","state":"inactive","agentState":"disconnected"}),
                Disconnected,
            ),
            (
                ResolvedApi::V2Beta,
                json!({"id":"1h1","state":"active","agentState":"active"}),
                Connected,
            ),
            (
                ResolvedApi::V2Beta,
                json!({"id":"1h1","state":"active"}),
                Connected,
            ),
        ];
        for (api, json, want) in cases {
            let shown = json.to_string();
            assert_eq!(host(json).agent_contact(api), want, "{api:?} {shown}");
        }
    }

    #[test]
    fn labels_tolerate_non_strings() {
        let h = host(
            serde_json::json!({"id":"1h1","state":"active","labels":{"a":"b","n":3,"z":null}}),
        );
        assert_eq!(h.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(h.labels.get("n").map(String::as_str), Some("3"));
        assert!(!h.labels.contains_key("z"));
        let h = host(serde_json::json!({"id":"1h1","state":"active","labels":null}));
        assert!(h.labels.is_empty());
    }

    #[test]
    fn api_errors_carry_code_and_message() {
        let body = br#"{"type":"error","status":422,"code":"ActionNotAvailable","message":null,"fieldName":"action"}"#;
        let e = api_error(
            &Method::POST,
            "http://r/v2-beta/x",
            StatusCode::UNPROCESSABLE_ENTITY,
            body,
        );
        let text = e.to_string();
        assert!(
            text.contains("422")
                && text.contains("ActionNotAvailable")
                && text.contains("field action"),
            "{text}"
        );
        assert!(!e.is_transient());
        let e = api_error(&Method::GET, "http://r", StatusCode::CONFLICT, b"{}");
        assert!(e.is_transient());
        let e = api_error(
            &Method::GET,
            "http://r",
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert!(e.is_transient());
        assert!(e.to_string().contains("bad gateway"));
        let e = api_error(&Method::GET, "http://r", StatusCode::UNAUTHORIZED, b"");
        assert!(e.to_string().contains("secret key is wrong"));
    }

    /// Found by fuzzing (fuzz/ target rancher_json): the body of an error answer went into
    /// the error, and so into a log line, as it came: a proxy's HTML page with its line
    /// breaks, control characters, a `message` of any length.
    #[test]
    fn api_errors_are_one_short_line() {
        let html = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>nginx</body>\r\n</html>\r\n";
        let e = api_error(&Method::GET, "http://r", StatusCode::BAD_GATEWAY, html);
        let text = e.to_string();
        assert!(!text.contains(['\r', '\n']), "{text:?}");
        assert!(
            text.contains("502 Bad Gateway</title></head> <body>nginx"),
            "{text}"
        );
        let body = serde_json::json!({
            "code": "Conflict\nFAKE LOG LINE",
            "message": "x".repeat(100_000),
            "fieldName": "a\u{1}b",
        });
        let e = api_error(
            &Method::GET,
            "http://r",
            StatusCode::CONFLICT,
            body.to_string().as_bytes(),
        );
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.chars().count() < 500, "{} chars", text.chars().count());
        assert!(text.contains("Conflict FAKE LOG LINE") && text.contains("(field a b)"));
    }

    /// Found by fuzzing (fuzz/ target rancher_json): a registration token the client could
    /// not decode was quoted in the error, registration URL and all.
    #[test]
    fn decode_errors_never_show_registration_credentials() {
        let body = serde_json::json!({
            "type": "registrationToken",
            "state": "active",
            "token": "SECRETTOKEN0123456789",
            "registrationUrl": "http://r/v1/scripts/SECRETTOKEN0123456789",
            "command": "sudo docker run rancher/agent:v1.2.11 http://r/v1/scripts/SECRETTOKEN0123456789",
        })
        .to_string();
        let escaped_slashes = body.replace('/', "\\/");
        let cut = &body[..body.len() - 20];
        for text in [body.as_str(), escaped_slashes.as_str(), cut] {
            let err = decode::<RegistrationToken>(&Method::POST, "http://r", text.as_bytes())
                .expect_err("no id");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("SECRETTOKEN"), "{shown}");
            assert!(
                shown.contains("<redacted>") || shown.contains("missing field"),
                "{shown}"
            );
        }
    }

    /// Found by fuzzing (fuzz/ target rancher_json): an answer that did not decode was
    /// quoted with `{:?}`, so a body of odd characters made a line of a thousand escapes; and
    /// serde's message quotes a value of any length.
    #[test]
    fn decode_errors_are_one_short_line() {
        let odd = "\u{11}".repeat(300);
        let long = format!("{{\"data\":\"{}\"}}", "y".repeat(100_000));
        for body in [odd, long] {
            let err = decode::<Collection<Host>>(&Method::GET, "http://r", body.as_bytes())
                .expect_err("not a collection");
            let text = err.to_string();
            assert!(text.chars().count() < 600, "{} chars", text.chars().count());
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
    }

    #[test]
    fn pagination_links_stay_on_the_server() {
        let base = Url::parse("https://r.example.com/rancher").expect("url");
        let next = |l: &str| next_page(&base, Some(l.to_string()));
        assert_eq!(
            next("/v1/hosts?marker=m5")
                .expect("relative")
                .map(String::from),
            Some("https://r.example.com/v1/hosts?marker=m5".to_string())
        );
        assert!(next("https://r.example.com:444/v1/hosts").is_err());
        assert!(next("//evil.example.net/v1/hosts").is_err());
        assert!(next("").expect("empty").is_none());
        // Found by fuzzing (fuzz/ target rancher_json): the other server's name went into
        // the error at any length.
        let far = format!("https://{}.example.net/v1/hosts", "a".repeat(5000));
        let err = next(&far).expect_err("another server");
        assert!(err.to_string().chars().count() < 300, "{err}");
        assert!(next_page(&base, None).expect("none").is_none());
    }

    #[test]
    fn picking_prefers_the_active_host_and_skips_removed_ones() {
        let hosts: Vec<Host> = serde_json::from_value(serde_json::json!([
            {"id":"1h1","state":"removed","labels":{"aws.instance_id":"i-1"}},
            {"id":"1h2","state":"inactive","labels":{"aws.instance_id":"i-1"}},
            {"id":"1h3","state":"active","labels":{"aws.instance_id":"i-1"}},
            {"id":"1h4","state":"active","labels":{"aws.instance_id":"i-2"}},
        ]))
        .expect("hosts");
        assert_eq!(
            hosts_of_instance(hosts.clone(), "i-1")
                .first()
                .map(|h| h.id.clone()),
            Some("1h3".into())
        );
        assert_eq!(
            hosts_of_instance(hosts[..2].to_vec(), "i-1")
                .first()
                .map(|h| h.id.clone()),
            Some("1h2".into())
        );
        assert_eq!(
            hosts_of_instance(hosts.clone(), "i-1")
                .iter()
                .map(|h| h.id.as_str())
                .collect::<Vec<_>>(),
            ["1h3", "1h2"]
        );
        assert!(hosts_of_instance(hosts, "i-3").is_empty());
    }

    fn key() -> SecretString {
        SecretString::from("s3cr3t-value".to_string())
    }

    fn config_with_ca(ca: Option<std::path::PathBuf>) -> Settings {
        Settings {
            url: Url::parse("https://rancher.example.com/").expect("url"),
            project_id: "1a5".into(),
            access_key: "AK".into(),
            secret_key: Secret::new(
                "rancher.secret_key",
                crate::secret::Source::File("/etc/drover/rancher.secret".into()),
            ),
            api_version: ApiVersion::Auto,
            ca_file: ca,
            request_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn extra_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").expect("write");
        let err = RancherClient::new(&config_with_ca(Some(bad)), key(), ResolvedApi::V1)
            .expect_err("garbage CA refused");
        assert!(err.to_string().contains("rancher.ca_file"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = RancherClient::new(&config_with_ca(Some(missing)), key(), ResolvedApi::V1)
            .expect_err("missing CA refused");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn urls_keep_a_path_prefix_and_client_debug_hides_the_secret() {
        let mut cfg = config_with_ca(None);
        cfg.url = Url::parse("https://example.com/rancher/").expect("url");
        let client = RancherClient::new(&cfg, key(), ResolvedApi::V2Beta).expect("client");
        assert_eq!(
            client.project_url(&["hosts", "1h5"]).expect("url").as_str(),
            "https://example.com/rancher/v2-beta/projects/1a5/hosts/1h5"
        );
        assert!(!format!("{client:?}").contains("s3cr3t-value"));
    }

    /// A key rotated while drover runs: after a 401 the client reads its source again and
    /// retries once with the new key; an unchanged source means the 401 stands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_401_reads_the_key_again_and_retries_once_with_a_rotated_one() {
        let server = testbed::rancher::RancherServer::start(Default::default()).await;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("rancher.secret");
        std::fs::write(&file, server.secret_key()).expect("write");
        let secret = Secret::new(
            "rancher.secret_key",
            crate::secret::Source::File(file.clone()),
        );
        let settings = Settings {
            url: Url::parse(&server.url()).expect("url"),
            project_id: server.project_id().to_string(),
            access_key: server.access_key().to_string(),
            secret_key: secret.clone(),
            api_version: ApiVersion::Auto,
            ca_file: None,
            request_timeout: Duration::from_secs(5),
        };
        let key = SecretString::from(server.secret_key());
        let client = RancherClient::connect(&settings, key)
            .await
            .expect("connect")
            .with_rereader(SecretReader::new(secret, None), Duration::from_secs(5));
        let clone = client.clone();
        client.project().await.expect("the first key works");

        // Rotated in Rancher, not yet at the source: the 401 stands, after one re-read.
        server.set_secret_key("rotated-0123456789");
        let err = client.project().await.expect_err("refused");
        assert_eq!(err.status(), Some(401), "{err}");

        // Now at the source too: the request goes through, for every clone.
        std::fs::write(&file, "rotated-0123456789\n").expect("rotate");
        let before = server.requests().len();
        client.project().await.expect("the rotated key works");
        let statuses: Vec<u16> = server.requests()[before..]
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, vec![401, 200], "one retry with the new key");
        let before = server.requests().len();
        clone.hosts().await.expect("the clone has the new key");
        assert_eq!(server.requests().len(), before + 1, "no 401 first");
        assert!(!format!("{client:?}").contains("rotated-0123456789"));
    }

    #[test]
    fn token_debug_hides_the_url() {
        let t: RegistrationToken = serde_json::from_value(serde_json::json!({
            "id":"1c3","state":"active","registrationUrl":"http://r/v1/scripts/SECRETTOKEN","image":"rancher/agent:v1.2.11"
        }))
        .expect("parses");
        assert!(t.is_usable());
        assert!(!format!("{t:?}").contains("SECRETTOKEN"));
    }
}
