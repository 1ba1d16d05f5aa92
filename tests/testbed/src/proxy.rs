//! Fault proxies in front of the stand-ins: a TCP proxy that resets connections (what a
//! load balancer restart or a dropped NAT entry looks like to a client), an HTTP proxy in
//! front of moto with the shared fault layer (SQS errors, latency, the request log), a
//! Unix-socket proxy in front of a Docker engine that can be down for a while (an engine
//! restart), and a plain forward proxy (`HTTP_PROXY`) that logs what went through it. The
//! TCP and Docker proxies work on connections, below HTTP: they keep their own controls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// A TCP proxy to one `target`, which can reset connections with an RST.
pub struct ResetProxy {
    addr: SocketAddr,
    shared: Arc<ResetShared>,
    task: tokio::task::JoinHandle<()>,
}

struct ResetShared {
    /// The next this-many accepted connections are reset at once.
    reset_next: AtomicUsize,
    /// Bumped by [`ResetProxy::reset_open`]: every open connection is reset.
    generation: watch::Sender<u64>,
    resets: AtomicUsize,
}

impl ResetProxy {
    pub async fn start(target: SocketAddr) -> std::io::Result<ResetProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(ResetShared {
            reset_next: AtomicUsize::new(0),
            generation: watch::channel(0).0,
            resets: AtomicUsize::new(0),
        });
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let shared = shared.clone();
                    tokio::spawn(async move { relay(inbound, target, shared).await });
                }
            }
        });
        Ok(ResetProxy { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` connections are reset as soon as they are accepted.
    pub fn reset_next(&self, n: usize) {
        self.shared.reset_next.store(n, Ordering::SeqCst);
    }

    /// Every connection open now is reset, mid-request or idle in a pool.
    pub fn reset_open(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Connections reset so far.
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }
}

impl Drop for ResetProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(stream: TcpStream, shared: &ResetShared) {
    // Linger 0: close sends RST, not FIN.
    let socket = socket2::SockRef::from(&stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(stream);
    shared.resets.fetch_add(1, Ordering::SeqCst);
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, shared: Arc<ResetShared>) {
    let take = shared
        .reset_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if take.is_ok() {
        reset(inbound, &shared);
        return;
    }
    let mut generation = shared.generation.subscribe();
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        reset(inbound, &shared);
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = generation.changed() => reset(inbound, &shared),
    }
}

/// An HTTP proxy in front of moto (a real SQS) with the shared fault layer, so that SQS
/// can fail the way it does now and then: `fail(Match::action("ReceiveMessage"),
/// Fault::Status(500), n)` answers 500 `InternalError`.
pub struct SqsFaultProxy {
    server: crate::http::Server,
    faults: crate::http::Faults,
}

struct SqsFaultShared {
    target: String,
    client: reqwest::Client,
}

impl SqsFaultProxy {
    pub async fn start(moto_url: &str) -> std::io::Result<SqsFaultProxy> {
        let shared = Arc::new(SqsFaultShared {
            target: moto_url.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(std::io::Error::other)?,
        });
        let faults = crate::http::Faults::default();
        let router = Router::new().fallback(forward).with_state(shared);
        let server = crate::http::Server::start(faults.serve(router, render_sqs)).await?;
        Ok(SqsFaultProxy { server, faults })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Injected faults, latency and the log of drover's SQS calls, each with its action
    /// (see [`crate::http::fault_api!`]): an injected fault answers with SQS's JSON error.
    pub fn faults(&self) -> &crate::http::Faults {
        &self.faults
    }

    /// Failures injected so far.
    pub fn injected(&self) -> usize {
        self.requests().iter().filter(|r| r.injected).count()
    }
}

crate::http::fault_api!(SqsFaultProxy);

/// An injected fault, as SQS answers it in the JSON protocol the SDK speaks.
fn render_sqs(fault: crate::http::Fault, _req: &crate::http::Incoming<'_>) -> Response {
    let (status, code, message) = match fault {
        crate::http::Fault::Status(500) => (
            500,
            "InternalError".to_string(),
            "We encountered an internal error. Please try again.".to_string(),
        ),
        crate::http::Fault::Status(503) => (
            503,
            "ServiceUnavailable".to_string(),
            "The request has failed due to a temporary failure of the server.".to_string(),
        ),
        crate::http::Fault::Status(status) => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            (
                status,
                reason.split_whitespace().collect(),
                reason.to_string(),
            )
        }
        crate::http::Fault::Throttling => (
            400,
            "RequestThrottled".to_string(),
            "Rate exceeded".to_string(),
        ),
        crate::http::Fault::ValidationError => (
            400,
            "InvalidParameterValue".to_string(),
            "An invalid or out-of-range value was supplied for the input parameter.".to_string(),
        ),
    };
    let body = serde_json::json!({
        "__type": format!("com.amazonaws.sqs#{code}"),
        "message": message,
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/x-amz-json-1.0")],
        body.to_string(),
    )
        .into_response()
}

async fn forward(
    State(shared): State<Arc<SqsFaultShared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", shared.target);
    relay_request(&shared.client, method, url, &headers, body).await
}

/// Sends one request on to `url` and hands back the answer as it came.
async fn relay_request(
    client: &reqwest::Client,
    method: Method,
    url: String,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = client.request(method, url).body(body);
    for (name, value) in headers {
        if name != "host" && name != "content-length" && name != "proxy-connection" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let headers = answer.headers().clone();
            let body = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// A plain HTTP forward proxy, the kind `HTTP_PROXY` names: it takes requests in absolute
/// form (`GET http://host:port/path`), sends them on and logs the `host:port` each was for.
/// It speaks no `CONNECT`: the stand-ins are plain HTTP.
pub struct ForwardProxy {
    server: crate::http::Server,
    seen: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct ForwardShared {
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ForwardProxy {
    pub async fn start() -> std::io::Result<ForwardProxy> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = ForwardShared {
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(std::io::Error::other)?,
            seen: seen.clone(),
        };
        let router = Router::new().fallback(forward_absolute).with_state(shared);
        let server = crate::http::Server::start(router).await?;
        Ok(ForwardProxy { server, seen })
    }

    /// `http://127.0.0.1:PORT`, for `HTTP_PROXY`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The `host:port` of every request that came through, in order.
    pub fn authorities(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn forward_absolute(
    State(shared): State<ForwardShared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A request in origin form (`GET /path`) was sent to the proxy as if it were the server.
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return (StatusCode::BAD_REQUEST, "not a proxy request").into_response();
    };
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push(authority);
    }
    relay_request(&shared.client, method, uri.to_string(), &headers, body).await
}

/// A Unix-socket proxy in front of a Docker engine's socket, which can be taken down (the
/// socket is gone, as while dockerd restarts) and brought back.
pub struct DockerSocketProxy {
    path: PathBuf,
    engine: PathBuf,
    up: Arc<AtomicBool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DockerSocketProxy {
    /// Listens at `path` (not yet: call [`up`](Self::up)) and forwards to `engine`.
    pub fn new(path: &Path, engine: &Path) -> DockerSocketProxy {
        DockerSocketProxy {
            path: path.to_path_buf(),
            engine: engine.to_path_buf(),
            up: Arc::new(AtomicBool::new(false)),
            task: Mutex::new(None),
        }
    }

    /// `unix://PATH`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn up(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)?;
        let engine = self.engine.clone();
        self.up.store(true, Ordering::SeqCst);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let engine = engine.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = UnixStream::connect(&engine).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        if let Ok(mut slot) = self.task.lock() {
            if let Some(old) = slot.replace(task) {
                old.abort();
            }
        }
        Ok(())
    }

    /// The socket goes away: new connections are refused until [`up`](Self::up).
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut slot) = self.task.lock() {
            if let Some(task) = slot.take() {
                task.abort();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerSocketProxy {
    fn drop(&mut self) {
        self.down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Fault, Match};
    use aws_sdk_sqs::error::ProvideErrorMetadata;

    #[tokio::test(flavor = "multi_thread")]
    async fn sqs_faults_come_before_moto_and_the_rest_goes_through() {
        let moto = crate::moto::MotoServer::start().await.expect("moto_server");
        let queue = moto.create_queue("proxied", None).await;
        let proxy = SqsFaultProxy::start(&moto.url()).await.expect("proxy");
        proxy.fail(Match::action("ReceiveMessage"), Fault::Status(500), 1);
        proxy.fail(Match::action("SendMessage"), Fault::Throttling, 1);
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .endpoint_url(proxy.url())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let err = sqs
            .receive_message()
            .queue_url(&queue)
            .send()
            .await
            .expect_err("injected 500");
        assert_eq!(err.code(), Some("InternalError"), "{err:?}");
        let err = sqs
            .send_message()
            .queue_url(&queue)
            .message_body("m")
            .send()
            .await
            .expect_err("throttled");
        assert_eq!(err.code(), Some("RequestThrottled"), "{err:?}");
        sqs.send_message()
            .queue_url(&queue)
            .message_body("m")
            .send()
            .await
            .expect("through to moto");
        assert_eq!(moto.approximate_counts(&queue).await, (1, 0));
        let actions: Vec<(String, u16, bool)> = proxy
            .requests()
            .into_iter()
            .map(|r| (r.action, r.status, r.injected))
            .collect();
        assert_eq!(
            actions,
            [
                ("ReceiveMessage".to_string(), 500, true),
                ("SendMessage".to_string(), 400, true),
                ("SendMessage".to_string(), 200, false),
            ]
        );
        assert_eq!(proxy.injected(), 2);
    }
}
