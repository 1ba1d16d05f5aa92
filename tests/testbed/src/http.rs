//! Serving a stand-in's axum router on a loopback port, and the one layer every HTTP
//! stand-in shares: injected faults, latency and the request log ([`Faults`]).
//!
//! Every stand-in (Rancher, Auto Scaling, IMDS, PagerDuty, the SQS fault proxy) wraps its
//! router in [`Faults::serve`] and offers the same four methods through [`fault_api!`]:
//! `fail(Match, Fault, times)`, `set_latency(d)`, `requests()`, `heal()`. What differs is only how an
//! injected [`Fault`] is rendered: each stand-in answers it with the body its real service
//! sends (Rancher's JSON error, awsQuery XML, SQS's JSON error, the IMDS error page).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A stand-in's HTTP server on `127.0.0.1:<random port>`; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `127.0.0.1:0` and serves `router` on the current tokio runtime.
    pub async fn start(router: Router) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Server {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Graceful shutdown waits for open keep-alive connections; abort so that a dropped
        // stand-in really stops answering.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One request a stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string, empty when there was none.
    pub query: String,
    /// What the request asks for, as [`Match::action`] sees it: the AWS action (awsQuery
    /// `Action`, or the JSON protocol's `X-Amz-Target` operation), Rancher's `?action=`;
    /// empty for others.
    pub action: String,
    /// The status answered; 0 while the request is still unanswered (a hung token request).
    pub status: u16,
    /// Answered with an injected fault rather than by the stand-in itself.
    pub injected: bool,
    /// When it arrived, since the stand-in started.
    pub at: Duration,
}

/// Which requests an injected fault applies to: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    method: Option<String>,
    path: Option<String>,
    path_end: Option<String>,
    query: Option<String>,
    action: Option<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests whose path (without the query) contains `part`, e.g. `/hosts` for every
    /// host collection and host of Rancher, or `/latest/api/token`.
    pub fn path(part: &str) -> Match {
        Match {
            path: Some(part.to_string()),
            ..Match::default()
        }
    }

    /// Requests whose path (without the query) ends with `suffix`: `/hosts` for Rancher's
    /// host listings and not for one host (`/hosts/1h3`) or its containers.
    pub fn path_end(suffix: &str) -> Match {
        Match {
            path_end: Some(suffix.to_string()),
            ..Match::default()
        }
    }

    /// Only requests whose raw query string contains `part`, e.g. `marker=` for the pages
    /// after a collection's first, `action=purge` for one Rancher action.
    pub fn query(mut self, part: &str) -> Match {
        self.query = Some(part.to_string());
        self
    }

    /// Requests for the action `name` exactly: `CompleteLifecycleAction`, `ReceiveMessage`,
    /// Rancher's `deactivate` (see [`LoggedRequest::action`]).
    pub fn action(name: &str) -> Match {
        Match {
            action: Some(name.to_string()),
            ..Match::default()
        }
    }

    /// Only requests with this method (`GET`, `POST`, ...).
    pub fn method(mut self, method: &str) -> Match {
        self.method = Some(method.to_string());
        self
    }

    fn matches(&self, req: &Incoming<'_>) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(req.method.as_str()))
            && self.path.as_deref().is_none_or(|p| req.path.contains(p))
            && self
                .path_end
                .as_deref()
                .is_none_or(|p| req.path.ends_with(p))
            && self.query.as_deref().is_none_or(|q| req.query.contains(q))
            && self.action.as_deref().is_none_or(|a| a == req.action)
    }
}

/// A failure to answer instead of the stand-in's own answer. Each stand-in renders it with
/// the body its real service sends for it (see each stand-in's `render`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status with the service's own error body for it: Rancher's JSON error
    /// (`ServiceUnavailable` for 503), awsQuery `ServiceUnavailable` for 503, SQS's
    /// `InternalError` for 500, the IMDS error page, PagerDuty's status body.
    Status(u16),
    /// The service's rate limit: awsQuery 400 `Throttling` "Rate exceeded", SQS 400
    /// `RequestThrottled`, 429 from Rancher, PagerDuty and IMDS.
    Throttling,
    /// The service refusing the call as invalid now: Auto Scaling's 400 `ValidationError`
    /// "No active Lifecycle Action found with instance ID ..." (or "... with token ..."), as
    /// when the action is already done; Rancher's 422 `ActionNotAvailable`; 400 elsewhere.
    ValidationError,
}

impl Fault {
    /// The status a stand-in without a more specific rendering answers.
    pub fn status(self) -> u16 {
        match self {
            Fault::Status(status) => status,
            Fault::Throttling => 429,
            Fault::ValidationError => 400,
        }
    }
}

/// A request as the fault layer and a stand-in's renderer see it.
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a str,
    pub action: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// How a stand-in answers an injected fault.
pub type Render = fn(Fault, &Incoming<'_>) -> Response;

struct Rule {
    matching: Match,
    fault: Fault,
    remaining: usize,
}

#[derive(Default)]
struct Layer {
    rules: Vec<Rule>,
    latency: Duration,
    /// Entries with a sequence number, so that an answer finds its own entry.
    log: Vec<(u64, LoggedRequest)>,
    next: u64,
}

/// Injected faults, latency and the request log of one stand-in; cheap to clone (shared).
#[derive(Clone)]
pub struct Faults {
    started: Instant,
    layer: Arc<Mutex<Layer>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            started: Instant::now(),
            layer: Arc::new(Mutex::new(Layer::default())),
        }
    }
}

/// Bodies larger than this are refused: no stand-in's client sends anything near it.
const MAX_BODY: usize = 16 * 1024 * 1024;

impl Faults {
    fn lock(&self) -> MutexGuard<'_, Layer> {
        self.layer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `times` requests that `matching` selects are answered with `fault` before
    /// the stand-in (or its authentication) sees them. Rules apply in the order added; a
    /// request uses up one failure of the first rule that matches it.
    pub fn fail(&self, matching: Match, fault: Fault, times: usize) {
        if times > 0 {
            self.lock().rules.push(Rule {
                matching,
                fault,
                remaining: times,
            });
        }
    }

    /// Every request waits this long before it is answered (or failed).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The fault schedule ends: every failure still pending is dropped and the latency is
    /// zero again, so that from now on the stand-in answers as itself (a schedule added
    /// with `times = usize::MAX` lasts until this). The request log stays.
    pub fn heal(&self) {
        let mut layer = self.lock();
        layer.rules.clear();
        layer.latency = Duration::ZERO;
    }

    /// The instant every [`LoggedRequest::at`] counts from: when this layer was made.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.iter().map(|(_, e)| e.clone()).collect()
    }

    /// `router` with this layer in front of it: every request is logged, delayed by the
    /// latency, and answered with an injected fault (rendered by `render`) when a rule
    /// matches it.
    pub fn serve(&self, router: Router, render: Render) -> Router {
        router.layer(axum::middleware::from_fn_with_state(
            (self.clone(), render),
            through,
        ))
    }

    fn arrived(&self, method: &Method, path: &str, query: &str, action: &str) -> u64 {
        let at = self.started.elapsed();
        let mut layer = self.lock();
        let seq = layer.next;
        layer.next += 1;
        layer.log.push((
            seq,
            LoggedRequest {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                action: action.to_string(),
                status: 0,
                injected: false,
                at,
            },
        ));
        seq
    }

    fn answered(&self, seq: u64, status: u16, injected: bool) {
        let mut layer = self.lock();
        if let Some((_, entry)) = layer.log.iter_mut().rev().find(|(s, _)| *s == seq) {
            entry.status = status;
            entry.injected = injected;
        }
    }

    /// Uses up one failure of the first rule matching `req`.
    fn take(&self, req: &Incoming<'_>) -> Option<Fault> {
        let mut layer = self.lock();
        let rule = layer
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && r.matching.matches(req))?;
        rule.remaining -= 1;
        let fault = rule.fault;
        layer.rules.retain(|r| r.remaining > 0);
        Some(fault)
    }
}

/// What a request asks for (see [`LoggedRequest::action`]).
fn action_of(headers: &HeaderMap, query: &str, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or("").to_string();
    }
    let from = |text: &[u8], names: &[&str]| {
        url::form_urlencoded::parse(text)
            .find(|(k, _)| names.contains(&k.as_ref()))
            .map(|(_, v)| v.into_owned())
    };
    if let Some(action) = from(query.as_bytes(), &["Action", "action"]) {
        return action;
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    if json {
        return String::new();
    }
    from(body, &["Action"]).unwrap_or_default()
}

async fn through(
    State((faults, render)): State<(Faults, Render)>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let action = action_of(&parts.headers, &query, &body);
    let seq = faults.arrived(&parts.method, &path, &query, &action);
    let latency = faults.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let incoming = Incoming {
        method: &parts.method,
        path: &path,
        query: &query,
        action: &action,
        headers: &parts.headers,
        body: &body,
    };
    let injected = faults.take(&incoming).map(|f| render(f, &incoming));
    let (response, was_injected) = match injected {
        Some(response) => (response, true),
        None => (
            next.run(Request::from_parts(parts, Body::from(body))).await,
            false,
        ),
    };
    faults.answered(seq, response.status().as_u16(), was_injected);
    response
}

/// The fault API of a stand-in, the same on every one: `fail`, `set_latency`, `requests`,
/// `heal`, delegating to the [`Faults`] its `faults()` returns.
macro_rules! fault_api {
    ($server:ty) => {
        impl $server {
            /// The next `times` requests that `matching` selects answer `fault`, as this
            /// service would, before anything else looks at them (see
            /// [`Faults::fail`](crate::http::Faults::fail)).
            pub fn fail(
                &self,
                matching: $crate::http::Match,
                fault: $crate::http::Fault,
                times: usize,
            ) {
                self.faults().fail(matching, fault, times)
            }

            /// Every request waits `latency` before it is answered (or failed).
            pub fn set_latency(&self, latency: std::time::Duration) {
                self.faults().set_latency(latency)
            }

            /// Every request received so far, in order of arrival, with its final status
            /// (0 while unanswered).
            pub fn requests(&self) -> Vec<$crate::http::LoggedRequest> {
                self.faults().requests()
            }

            /// Ends the fault schedule: pending failures dropped, latency zero (see
            /// [`Faults::heal`](crate::http::Faults::heal)).
            pub fn heal(&self) {
                self.faults().heal()
            }
        }
    };
}
pub(crate) use fault_api;

#[cfg(test)]
mod tests {
    use super::*;

    fn render(fault: Fault, req: &Incoming<'_>) -> Response {
        let status = StatusCode::from_u16(fault.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        (status, format!("injected for {}", req.action)).into_response()
    }

    async fn serve() -> (Faults, Server) {
        let faults = Faults::default();
        let router = Router::new().fallback(|| async { "fine" });
        let server = Server::start(faults.serve(router, render))
            .await
            .expect("bind");
        (faults, server)
    }

    #[tokio::test]
    async fn rules_match_in_order_and_run_out() {
        let (faults, server) = serve().await;
        faults.fail(Match::action("Poll").method("POST"), Fault::Throttling, 1);
        faults.fail(Match::path("/b"), Fault::Status(503), 2);
        let http = reqwest::Client::new();
        let post = |path: &str, body: &'static str| {
            http.post(format!("{}{path}", server.url()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
        };
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(status(post("/a", "Action=Poll").await.expect("a")), 429);
        assert_eq!(status(post("/a", "Action=Poll").await.expect("a")), 200);
        assert_eq!(status(post("/a/b", "Action=Other").await.expect("b")), 503);
        let get = http.get(format!("{}/b?action=x", server.url())).send();
        assert_eq!(status(get.await.expect("b")), 503);
        assert_eq!(status(post("/b", "").await.expect("b")), 200);
        let log = faults.requests();
        let seen: Vec<(&str, u16, bool)> = log
            .iter()
            .map(|r| (r.action.as_str(), r.status, r.injected))
            .collect();
        assert_eq!(
            seen,
            [
                ("Poll", 429, true),
                ("Poll", 200, false),
                ("Other", 503, true),
                ("x", 503, true),
                ("", 200, false)
            ]
        );
        assert_eq!(log[3].query, "action=x");
        assert_eq!(log[3].method, "GET");
    }

    #[tokio::test]
    async fn path_ends_queries_and_healing() {
        let (faults, server) = serve().await;
        faults.fail(Match::path_end("/hosts"), Fault::Status(500), 1);
        faults.fail(
            Match::path_end("/hosts").query("marker="),
            Fault::Status(503),
            usize::MAX,
        );
        faults.set_latency(Duration::from_millis(50));
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{}{path}", server.url())).send();
        let status = |r: reqwest::Response| r.status().as_u16();
        // One host, or its containers, is not a listing.
        assert_eq!(
            status(get("/v1/projects/1a5/hosts/1h1").await.expect("host")),
            200
        );
        assert_eq!(
            status(get("/v1/projects/1a5/hosts").await.expect("list")),
            500
        );
        assert_eq!(
            status(get("/v1/projects/1a5/hosts").await.expect("list")),
            200
        );
        let next = "/v1/projects/1a5/hosts?limit=2&marker=m3";
        assert_eq!(status(get(next).await.expect("page")), 503);
        assert_eq!(status(get(next).await.expect("page")), 503);
        faults.heal();
        assert_eq!(faults.lock().latency, Duration::ZERO, "latency healed too");
        assert_eq!(status(get(next).await.expect("page")), 200);
        assert_eq!(faults.requests().len(), 6, "the log stays");
        assert!(faults.started() <= Instant::now());
    }

    #[tokio::test]
    async fn json_targets_and_latency() {
        let (faults, server) = serve().await;
        faults.set_latency(Duration::from_millis(200));
        let started = Instant::now();
        let answer = reqwest::Client::new()
            .post(server.url())
            .header("x-amz-target", "AmazonSQS.ReceiveMessage")
            .header("content-type", "application/x-amz-json-1.0")
            .body(r#"{"Action":"NotThis"}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status().as_u16(), 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(faults.requests()[0].action, "ReceiveMessage");
    }
}
