//! Fault proxies in front of the stand-ins: a TCP proxy that resets connections (what a
//! load balancer restart or a dropped NAT entry looks like to a client), an HTTP proxy in
//! front of moto that answers chosen SQS actions with a server error, and a Unix-socket
//! proxy in front of a Docker engine that can be down for a while (an engine restart).

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

/// An HTTP proxy in front of moto that answers the next `n` calls of a chosen SQS action
/// with 500 `InternalError`, the way SQS itself fails now and then.
pub struct SqsFaultProxy {
    server: crate::http::Server,
    shared: Arc<SqsFaultShared>,
}

struct SqsFaultShared {
    target: String,
    client: reqwest::Client,
    /// (action, remaining failures)
    faults: Mutex<Vec<(String, usize)>>,
    injected: AtomicUsize,
}

impl SqsFaultProxy {
    pub async fn start(moto_url: &str) -> std::io::Result<SqsFaultProxy> {
        let shared = Arc::new(SqsFaultShared {
            target: moto_url.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(std::io::Error::other)?,
            faults: Mutex::new(Vec::new()),
            injected: AtomicUsize::new(0),
        });
        let router = Router::new().fallback(forward).with_state(shared.clone());
        let server = crate::http::Server::start(router).await?;
        Ok(SqsFaultProxy { server, shared })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The next `n` calls of `action` (e.g. `ReceiveMessage`) answer 500.
    pub fn fail_next(&self, action: &str, n: usize) {
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.push((action.to_string(), n));
        }
    }

    /// Failures answered so far.
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

/// The SQS action of a request: the JSON protocol's `X-Amz-Target`, or the query
/// protocol's `Action=`.
fn sqs_action(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or("").to_string();
    }
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

async fn forward(
    State(shared): State<Arc<SqsFaultShared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = sqs_action(&headers, &body);
    let fail = shared.faults.lock().ok().is_some_and(|mut faults| {
        match faults.iter_mut().find(|(a, n)| *a == action && *n > 0) {
            Some((_, n)) => {
                *n -= 1;
                true
            }
            None => false,
        }
    });
    if fail {
        shared.injected.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"__type":"com.amazonaws.sqs#InternalError","message":"We encountered an internal error. Please try again."}"#;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/x-amz-json-1.0")],
            body,
        )
            .into_response();
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = shared
        .client
        .request(method, format!("{}{path}", shared.target))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
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
