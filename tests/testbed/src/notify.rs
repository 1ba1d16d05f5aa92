//! What drover tells systemd, read where systemd would: a Unix datagram socket named by
//! `NOTIFY_SOCKET`. drover sends `READY=1` once it is registered and watching (and early,
//! while it waits in a warm pool), `STOPPING=1` when it begins to stop, `STATUS=...` and
//! `EXTEND_TIMEOUT_USEC=...`; tests synchronise on these instead of scraping its log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `sun_path` holds 108 bytes, the terminating NUL included.
const SUN_PATH_MAX: usize = 107;

/// One assignment drover sent, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`.
    Ready,
    /// `STOPPING=1`.
    Stopping,
    /// `STATUS=...`.
    Status(String),
    /// `EXTEND_TIMEOUT_USEC=...`.
    ExtendTimeoutUsec(u64),
    /// Anything else, as sent.
    Other(String),
}

impl Notice {
    fn parse(line: &str) -> Notice {
        match line.split_once('=') {
            Some(("READY", "1")) => Notice::Ready,
            Some(("STOPPING", "1")) => Notice::Stopping,
            Some(("STATUS", status)) => Notice::Status(status.to_string()),
            Some(("EXTEND_TIMEOUT_USEC", usec)) => match usec.parse() {
                Ok(usec) => Notice::ExtendTimeoutUsec(usec),
                Err(_) => Notice::Other(line.to_string()),
            },
            _ => Notice::Other(line.to_string()),
        }
    }
}

/// A bound notification socket and the notices received on it; removed when dropped.
pub struct NotifySocket {
    path: PathBuf,
    notices: Arc<Mutex<Vec<Notice>>>,
    received: watch::Receiver<usize>,
    task: JoinHandle<()>,
    /// A short directory of its own, when the one asked for is too deep for `sun_path`.
    _short: Option<tempfile::TempDir>,
}

fn lock(notices: &Mutex<Vec<Notice>>) -> MutexGuard<'_, Vec<Notice>> {
    notices.lock().unwrap_or_else(|e| e.into_inner())
}

impl NotifySocket {
    /// Binds `<dir>/<name>` (or the same name in a fresh directory under `/tmp`, when that
    /// path would not fit a socket address) and starts reading. Must be called within a
    /// tokio runtime.
    pub fn bind(dir: &Path, name: &str) -> std::io::Result<NotifySocket> {
        let mut path = dir.join(name);
        let mut short = None;
        if path.as_os_str().len() > SUN_PATH_MAX {
            let tmp = tempfile::Builder::new()
                .prefix("tb-n-")
                .tempdir_in("/tmp")?;
            path = tmp.path().join(name);
            short = Some(tmp);
        }
        if path.as_os_str().len() > SUN_PATH_MAX {
            return Err(std::io::Error::other(format!(
                "{}: too long for a socket address",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        let notices = Arc::new(Mutex::new(Vec::new()));
        let (tx, received) = watch::channel(0usize);
        let task = tokio::spawn({
            let notices = notices.clone();
            async move {
                // systemd accepts datagrams of any size drover could send; so does this.
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = socket.recv(&mut buf).await {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let count = {
                        let mut all = lock(&notices);
                        all.extend(text.lines().filter(|l| !l.is_empty()).map(Notice::parse));
                        all.len()
                    };
                    tx.send_replace(count);
                }
            }
        });
        Ok(NotifySocket {
            path,
            notices,
            received,
            task,
            _short: short,
        })
    }

    /// What `NOTIFY_SOCKET` is set to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every notice so far, in order.
    pub fn notices(&self) -> Vec<Notice> {
        lock(&self.notices).clone()
    }

    /// Whether a notice satisfying `pred` has been received.
    pub fn seen(&self, pred: impl Fn(&Notice) -> bool) -> bool {
        lock(&self.notices).iter().any(pred)
    }

    /// Resolves once another datagram has arrived (at once if one arrived since the last
    /// call); never, once the reader has stopped.
    pub async fn changed(&mut self) {
        if self.received.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reads_what_sd_notify_sends_and_keeps_paths_short() {
        let deep = tempfile::tempdir().expect("dir");
        let long = deep.path().join("x".repeat(120));
        std::fs::create_dir_all(&long).expect("deep dir");
        let mut socket = NotifySocket::bind(&long, "n.sock").expect("bind");
        assert!(socket.path().as_os_str().len() <= SUN_PATH_MAX);
        let sender = std::os::unix::net::UnixDatagram::unbound().expect("socket");
        sender.connect(socket.path()).expect("connect");
        sender.send(b"READY=1\n").expect("send");
        sender
            .send(b"STATUS=watching for termination\nEXTEND_TIMEOUT_USEC=360000000\n")
            .expect("send");
        sender.send(b"STOPPING=1\nWHATEVER=x\n").expect("send");
        let all = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if socket.notices().len() == 5 {
                    return socket.notices();
                }
                socket.changed().await;
            }
        })
        .await
        .expect("notices");
        assert_eq!(
            all,
            [
                Notice::Ready,
                Notice::Status("watching for termination".into()),
                Notice::ExtendTimeoutUsec(360_000_000),
                Notice::Stopping,
                Notice::Other("WHATEVER=x".into()),
            ]
        );
        let path = socket.path().to_path_buf();
        drop(socket);
        assert!(!path.exists(), "removed when dropped");
    }
}
