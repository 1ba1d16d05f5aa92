//! Serving an axum router on a loopback port, and the request log every stand-in keeps.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// One request a stand-in answered.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string, empty when there was none.
    pub query: String,
    /// For awsQuery stand-ins the `Action`, for others empty.
    pub action: String,
    pub status: u16,
    /// Time since the stand-in started.
    pub at: Duration,
}

/// A shared, append-only log of requests.
#[derive(Clone)]
pub struct RequestLog {
    started: Instant,
    entries: Arc<Mutex<Vec<LoggedRequest>>>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            started: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl RequestLog {
    pub fn record(&self, method: &str, path: &str, query: &str, action: &str, status: u16) {
        let entry = LoggedRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            action: action.to_string(),
            status,
            at: self.started.elapsed(),
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    pub fn entries(&self) -> Vec<LoggedRequest> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
