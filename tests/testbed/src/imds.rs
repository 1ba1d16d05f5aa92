//! An IMDSv2-only ("required" mode) EC2 instance metadata service stand-in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;
use tokio::sync::watch;

use crate::http;

const TOKEN_PATH: &str = "/latest/api/token";
const META: &str = "/latest/meta-data/";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The real service's upper bound on a token's life (6 hours).
const MAX_TTL: u64 = 21600;

/// What the instance looks like from inside.
#[derive(Debug, Clone)]
pub struct ImdsOptions {
    pub instance_id: String,
    pub local_ipv4: String,
    /// `None`: `public-ipv4` answers 404, as on an instance without a public address.
    pub public_ipv4: Option<String>,
    pub local_hostname: String,
    pub instance_type: String,
    pub ami_id: String,
    pub availability_zone: String,
    pub region: String,
    /// `Some`: the instance is a group member and carries the `aws:autoscaling:groupName` tag.
    pub autoscaling_group: Option<String>,
    /// Instance metadata tags enabled on the instance; `false`: 404 everywhere under `tags/`.
    pub tags_enabled: bool,
    /// `None`: 404 until the first transition, as on a real instance.
    pub target_lifecycle_state: Option<String>,
}

impl Default for ImdsOptions {
    fn default() -> Self {
        ImdsOptions {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            local_ipv4: "10.0.1.23".into(),
            public_ipv4: Some("54.200.1.23".into()),
            local_hostname: "ip-10-0-1-23.ec2.internal".into(),
            instance_type: "m5.large".into(),
            ami_id: "ami-0abcdef1234567890".into(),
            availability_zone: "us-east-1b".into(),
            region: "us-east-1".into(),
            autoscaling_group: Some("crawlers".into()),
            tags_enabled: true,
            target_lifecycle_state: None,
        }
    }
}

struct Inner {
    opts: ImdsOptions,
    spot_action: Option<serde_json::Value>,
    /// Token -> when it stops being valid.
    tokens: HashMap<String, Instant>,
    token_hang: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Closed when the handle drops, so that hung token requests end with the stand-in
    /// instead of outliving it in axum's connection tasks.
    stopped: watch::Receiver<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running IMDSv2 stand-in; stops when dropped.
pub struct ImdsServer {
    shared: Arc<Shared>,
    faults: http::Faults,
    server: http::Server,
    _stop: watch::Sender<()>,
}

impl ImdsServer {
    pub async fn start(opts: ImdsOptions) -> ImdsServer {
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                opts,
                spot_action: None,
                tokens: HashMap::new(),
                token_hang: false,
            }),
            stopped,
        });
        let faults = http::Faults::default();
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = http::Server::start(faults.serve(router, render))
            .await
            .expect("bind a loopback port for the IMDS stand-in");
        ImdsServer {
            shared,
            faults,
            server,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`: what `AWS_EC2_METADATA_SERVICE_ENDPOINT` is set to.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn set_target_lifecycle_state(&self, state: Option<&str>) {
        self.shared.lock().opts.target_lifecycle_state = state.map(str::to_string);
    }

    /// E.g. `{"action":"terminate","time":"2026-11-23T12:00:00Z"}`; `None`: 404 again.
    pub fn set_spot_action(&self, action: Option<serde_json::Value>) {
        self.shared.lock().spot_action = action;
    }

    /// Injected faults, latency and the request log (see [`http::fault_api!`]): an
    /// injected fault answers with the service's error page for its status, token PUTs
    /// included.
    pub fn faults(&self) -> &http::Faults {
        &self.faults
    }

    /// The token PUT never answers: what a hop limit of 1 looks like from a bridged
    /// container. Such requests stay in the log with status 0.
    pub fn set_token_hang(&self, hang: bool) {
        self.shared.lock().token_hang = hang;
    }

    /// Every token issued so far becomes invalid: the next GET carrying one gets 401.
    pub fn expire_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// GETs (not token PUTs) answered 200.
    pub fn metadata_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.status == 200 && r.path != TOKEN_PATH)
            .count()
    }
}

http::fault_api!(ImdsServer);

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let path = uri.path();
    let hang = shared.lock().token_hang && method == Method::PUT && path == TOKEN_PATH;
    if hang {
        // The request was seen (the log shows it unanswered) but will never be answered.
        let mut stopped = shared.stopped.clone();
        while stopped.changed().await.is_ok() {}
        return error_page(503);
    }
    answer(&shared, &method, path, &headers)
}

/// An injected fault, as the service answers it: its error page for the status.
fn render(fault: http::Fault, _req: &http::Incoming<'_>) -> Response {
    error_page(fault.status())
}

fn answer(shared: &Shared, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    if path == TOKEN_PATH {
        if method != Method::PUT {
            return error_page(405);
        }
        return issue_token(shared, headers);
    }
    if method != Method::GET && method != Method::HEAD {
        return error_page(405);
    }
    // IMDSv2 required: every GET needs a live token, whatever the path.
    let now = Instant::now();
    let mut inner = shared.lock();
    inner.tokens.retain(|_, expiry| *expiry > now);
    let valid = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| inner.tokens.contains_key(t));
    if !valid {
        return error_page(401);
    }
    match lookup(&inner, path) {
        Some(body) => text(body),
        None => error_page(404),
    }
}

fn issue_token(shared: &Shared, headers: &HeaderMap) -> Response {
    // The real service refuses token requests that went through a proxy.
    if headers.contains_key("x-forwarded-for") {
        return error_page(403);
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TTL).contains(ttl));
    let Some(ttl) = ttl else {
        return error_page(400);
    };
    let token = random_token();
    shared
        .lock()
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    let mut response = text(token);
    // aws-config's client refuses a token answer without the TTL echoed back.
    response
        .headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(ttl));
    response
}

/// The body for a metadata path, `None` for 404.
fn lookup(inner: &Inner, path: &str) -> Option<String> {
    let o = &inner.opts;
    if path == "/latest/dynamic/instance-identity/document" {
        return Some(identity_document(o));
    }
    if path == "/latest/meta-data" || path == META {
        return Some(listing(o));
    }
    let key = path.strip_prefix(META)?;
    let value = match key {
        "instance-id" => o.instance_id.clone(),
        "local-ipv4" => o.local_ipv4.clone(),
        "public-ipv4" => o.public_ipv4.clone()?,
        "local-hostname" | "hostname" => o.local_hostname.clone(),
        "instance-type" => o.instance_type.clone(),
        "ami-id" => o.ami_id.clone(),
        "placement" | "placement/" => "availability-zone\nregion".into(),
        "placement/availability-zone" => o.availability_zone.clone(),
        "placement/region" => o.region.clone(),
        "autoscaling/target-lifecycle-state" => o.target_lifecycle_state.clone()?,
        "spot/instance-action" => inner.spot_action.as_ref()?.to_string(),
        // No scheduled events: the real service answers an empty list, not 404.
        "events/maintenance/scheduled" => "[]".into(),
        _ => {
            let rest = key.strip_prefix("tags/")?;
            if !o.tags_enabled {
                return None;
            }
            let tags = tags(o);
            if rest == "instance" || rest == "instance/" {
                tags.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                let name = rest.strip_prefix("instance/")?;
                tags.into_iter().find(|(k, _)| k == name)?.1
            }
        }
    };
    Some(value)
}

/// The instance's tags: `Name` (the group's name for a member, as groups usually propagate
/// it, else the instance id) and, for a group member, `aws:autoscaling:groupName`.
fn tags(o: &ImdsOptions) -> Vec<(String, String)> {
    let mut tags = vec![(
        "Name".to_string(),
        o.autoscaling_group
            .clone()
            .unwrap_or_else(|| o.instance_id.clone()),
    )];
    if let Some(group) = &o.autoscaling_group {
        tags.push(("aws:autoscaling:groupName".into(), group.clone()));
    }
    tags
}

fn listing(o: &ImdsOptions) -> String {
    let mut entries = vec![
        "ami-id",
        "autoscaling/",
        "events/",
        "hostname",
        "instance-id",
        "instance-type",
        "local-hostname",
        "local-ipv4",
        "placement/",
    ];
    if o.public_ipv4.is_some() {
        entries.push("public-ipv4");
    }
    entries.push("spot/");
    if o.tags_enabled {
        entries.push("tags/");
    }
    entries.join("\n")
}

fn identity_document(o: &ImdsOptions) -> String {
    let doc = serde_json::json!({
        "accountId": "123456789012",
        "architecture": "x86_64",
        "availabilityZone": o.availability_zone,
        "imageId": o.ami_id,
        "instanceId": o.instance_id,
        "instanceType": o.instance_type,
        "pendingTime": "2026-11-23T11:00:00Z",
        "privateIp": o.local_ipv4,
        "region": o.region,
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain"), ("server", "EC2ws")],
        body,
    )
        .into_response()
}

/// The short XHTML page the real service answers errors with.
fn error_page(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = format!(
        "{} - {}",
        code.as_u16(),
        code.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    );
    (
        code,
        [("content-type", "text/html"), ("server", "EC2ws")],
        body,
    )
        .into_response()
}

/// 56 URL-safe characters, the shape of a real IMDSv2 token.
fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..56)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imds_client(url: &str) -> aws_config::imds::Client {
        aws_config::imds::Client::builder()
            .endpoint(url)
            .expect("endpoint")
            .max_attempts(1)
            .build()
    }

    async fn token(http: &reqwest::Client, url: &str) -> String {
        http.put(format!("{url}{TOKEN_PATH}"))
            .header(TTL_HEADER, "60")
            .send()
            .await
            .expect("token PUT")
            .text()
            .await
            .expect("token body")
    }

    #[tokio::test]
    async fn real_client_reads_instance_id() {
        let imds = ImdsServer::start(ImdsOptions::default()).await;
        let client = imds_client(&imds.url());
        let id = client
            .get("/latest/meta-data/instance-id")
            .await
            .expect("instance id");
        assert_eq!(id.as_ref(), "i-0a1b2c3d4e5f60718");
        let group = client
            .get("/latest/meta-data/tags/instance/aws:autoscaling:groupName")
            .await
            .expect("group tag");
        assert_eq!(group.as_ref(), "crawlers");
        assert_eq!(imds.metadata_gets(), 2);
        let token_puts = imds
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path == TOKEN_PATH && r.status == 200)
            .count();
        assert_eq!(token_puts, 1, "the client caches its token");
    }

    #[tokio::test]
    async fn real_client_sees_404() {
        let imds = ImdsServer::start(ImdsOptions::default()).await;
        let client = imds_client(&imds.url());
        let err = client
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
            .expect_err("404 until set");
        match err {
            aws_config::imds::client::error::ImdsError::ErrorResponse(resp) => {
                assert_eq!(resp.response().status().as_u16(), 404)
            }
            other => panic!("expected an error response, got {other:?}"),
        }
        imds.set_target_lifecycle_state(Some("Terminated"));
        let state = client
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
            .expect("set now");
        assert_eq!(state.as_ref(), "Terminated");
    }

    #[tokio::test]
    async fn tokens_are_required_and_checked() {
        let imds = ImdsServer::start(ImdsOptions::default()).await;
        let url = imds.url();
        let http = reqwest::Client::new();
        let no_token = http
            .get(format!("{url}{META}instance-id"))
            .send()
            .await
            .expect("GET");
        assert_eq!(no_token.status().as_u16(), 401);

        let no_ttl = http
            .put(format!("{url}{TOKEN_PATH}"))
            .send()
            .await
            .expect("PUT");
        assert_eq!(no_ttl.status().as_u16(), 400);
        for bad in ["0", "21601", "soon"] {
            let resp = http
                .put(format!("{url}{TOKEN_PATH}"))
                .header(TTL_HEADER, bad)
                .send()
                .await
                .expect("PUT");
            assert_eq!(resp.status().as_u16(), 400, "ttl {bad}");
        }
        let proxied = http
            .put(format!("{url}{TOKEN_PATH}"))
            .header(TTL_HEADER, "60")
            .header("X-Forwarded-For", "10.0.0.1")
            .send()
            .await
            .expect("PUT");
        assert_eq!(proxied.status().as_u16(), 403);

        let resp = http
            .put(format!("{url}{TOKEN_PATH}"))
            .header(TTL_HEADER, "60")
            .send()
            .await
            .expect("PUT");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers().get(TTL_HEADER).and_then(|v| v.to_str().ok()),
            Some("60")
        );
        let tok = resp.text().await.expect("body");
        let get = |path: &'static str| {
            http.get(format!("{url}{META}{path}"))
                .header(TOKEN_HEADER, tok.clone())
                .send()
        };
        let ok = get("local-ipv4").await.expect("GET");
        assert_eq!(ok.status().as_u16(), 200);
        assert_eq!(ok.text().await.expect("body"), "10.0.1.23");
        let tags = get("tags/instance").await.expect("GET");
        assert_eq!(
            tags.text().await.expect("body"),
            "Name\naws:autoscaling:groupName"
        );
        assert_eq!(get("no/such/thing").await.expect("GET").status(), 404);
        assert_eq!(
            get("spot/instance-action").await.expect("GET").status(),
            404
        );
        imds.set_spot_action(Some(
            serde_json::json!({"action":"terminate","time":"2026-11-23T12:00:00Z"}),
        ));
        let spot: serde_json::Value = get("spot/instance-action")
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        assert_eq!(spot["action"], "terminate");

        imds.expire_tokens();
        assert_eq!(get("local-ipv4").await.expect("GET").status(), 401);
    }

    #[tokio::test]
    async fn tags_disabled_and_no_public_ip_are_404() {
        let imds = ImdsServer::start(ImdsOptions {
            tags_enabled: false,
            public_ipv4: None,
            ..ImdsOptions::default()
        })
        .await;
        let url = imds.url();
        let http = reqwest::Client::new();
        let tok = token(&http, &url).await;
        for path in [
            "tags/instance",
            "tags/instance/Name",
            "public-ipv4",
            "events/recommendations/rebalance",
        ] {
            let resp = http
                .get(format!("{url}{META}{path}"))
                .header(TOKEN_HEADER, tok.clone())
                .send()
                .await
                .expect("GET");
            assert_eq!(resp.status().as_u16(), 404, "{path}");
        }
    }

    #[tokio::test]
    async fn injected_faults_answer_then_recover() {
        let imds = ImdsServer::start(ImdsOptions::default()).await;
        let url = imds.url();
        let http = reqwest::Client::new();
        imds.fail(http::Match::any(), http::Fault::Status(500), 2);
        for _ in 0..2 {
            let resp = http
                .put(format!("{url}{TOKEN_PATH}"))
                .header(TTL_HEADER, "60")
                .send()
                .await
                .expect("PUT");
            assert_eq!(resp.status().as_u16(), 500);
        }
        let tok = token(&http, &url).await;
        let resp = http
            .get(format!("{url}{META}instance-type"))
            .header(TOKEN_HEADER, tok)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 200);
        let statuses: Vec<u16> = imds.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![500, 500, 200, 200]);
        assert_eq!(imds.metadata_gets(), 1);
    }

    #[tokio::test]
    async fn hung_token_request_times_out_the_real_client() {
        let imds = ImdsServer::start(ImdsOptions::default()).await;
        imds.set_token_hang(true);
        let client = aws_config::imds::Client::builder()
            .endpoint(imds.url())
            .expect("endpoint")
            .max_attempts(1)
            .read_timeout(Duration::from_millis(300))
            .build();
        let err = client
            .get("/latest/meta-data/instance-id")
            .await
            .expect_err("no token");
        assert!(
            matches!(
                err,
                aws_config::imds::client::error::ImdsError::FailedToLoadToken(_)
            ),
            "{err:?}"
        );
        assert_eq!(imds.requests()[0].status, 0);
    }
}
