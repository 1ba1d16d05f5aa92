//! Running the built drover: the one place that builds its command with a clean
//! environment (every endpoint pointing where the caller says, test credentials, nothing
//! inherited), captures its output to files in the run's directory (a pipe that nobody
//! reads never fills), reads what it tells systemd through a `NOTIFY_SOCKET`, and bounds
//! every wait, so that a hung drover fails a test and never hangs it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::notify::{Notice, NotifySocket};

/// The static AWS credentials every run gets: the stand-ins and moto accept any, and no
/// real credential chain is ever consulted.
pub const AWS_ACCESS_KEY_ID: &str = "testing";
pub const AWS_SECRET_ACCESS_KEY: &str = "testing";

/// What went wrong with a run. Its `Debug` is its text, so that `expect` in a test prints
/// drover's output readably rather than as one escaped string.
pub struct Error(String);

impl Error {
    pub fn new(text: impl Into<String>) -> Error {
        Error(text.into())
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<Error> for String {
    fn from(e: Error) -> String {
        e.0
    }
}

/// The built `drover` next to the running test binary (`target/<profile>/drover` for
/// `target/<profile>/deps/<test>`), unless `CARGO_BIN_EXE_drover` or `DROVER_BIN` names
/// it. Cargo builds it before any integration test of the drover package runs.
pub fn drover_bin() -> PathBuf {
    for var in ["DROVER_BIN", "CARGO_BIN_EXE_drover"] {
        if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("drover")
}

/// Where drover's outside systems are. `None` leaves the variable unset.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub imds: Option<String>,
    /// `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub autoscaling: Option<String>,
    /// `AWS_ENDPOINT_URL_SQS`, when a queue is used.
    pub sqs: Option<String>,
    /// `AWS_ENDPOINT_URL_SSM`, when a secret is kept in SSM.
    pub ssm: Option<String>,
    /// `AWS_ENDPOINT_URL`: every AWS service without an endpoint of its own.
    pub aws: Option<String>,
    /// `AWS_REGION`; unset, drover takes the region from IMDS, as on an instance.
    pub region: Option<String>,
    /// `DOCKER_HOST`.
    pub docker_host: Option<String>,
}

impl Endpoints {
    /// Nothing reachable: every address on 127.0.0.1 port 9 (discard: nothing answers
    /// there), a Docker socket that does not exist, region `us-east-1`.
    pub fn nowhere() -> Endpoints {
        Endpoints {
            imds: Some("http://127.0.0.1:9".into()),
            autoscaling: None,
            sqs: None,
            ssm: None,
            aws: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            docker_host: Some("unix:///nonexistent/docker.sock".into()),
        }
    }

    /// The variables, `(name, value)`, of the endpoints that are set.
    pub fn vars(&self) -> Vec<(&'static str, &str)> {
        [
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds),
            ("AWS_ENDPOINT_URL_AUTO_SCALING", &self.autoscaling),
            ("AWS_ENDPOINT_URL_SQS", &self.sqs),
            ("AWS_ENDPOINT_URL_SSM", &self.ssm),
            ("AWS_ENDPOINT_URL", &self.aws),
            ("AWS_REGION", &self.region),
            ("DOCKER_HOST", &self.docker_host),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_deref()?)))
        .collect()
    }
}

/// How one drover process is to be run. Its files (`<name>.stdout`, `<name>.stderr`, the
/// notify socket `<name>.sock`) go in `dir`, which is also its `HOME`.
#[derive(Debug, Clone)]
pub struct Launcher {
    binary: PathBuf,
    dir: PathBuf,
    name: String,
    config: Option<PathBuf>,
    endpoints: Endpoints,
    env: Vec<(OsString, OsString)>,
    args: Vec<OsString>,
    inherit_output: bool,
}

impl Launcher {
    pub fn new(binary: &Path, dir: &Path, name: &str) -> Launcher {
        Launcher {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            config: None,
            endpoints: Endpoints::default(),
            env: Vec::new(),
            args: Vec::new(),
            inherit_output: false,
        }
    }

    /// `DROVER_CONFIG`.
    pub fn config(mut self, path: &Path) -> Launcher {
        self.config = Some(path.to_path_buf());
        self
    }

    pub fn endpoints(mut self, endpoints: &Endpoints) -> Launcher {
        self.endpoints = endpoints.clone();
        self
    }

    /// One more variable, set after (so over) everything else.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launcher {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Launcher {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launcher {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<A: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = A>) -> Launcher {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// drover's output goes to this process's own stdout and stderr (the demo shows it as it
    /// comes) instead of files; [`Run`] and [`Running`] then see none of it.
    pub fn inherit_output(mut self) -> Launcher {
        self.inherit_output = true;
        self
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join(format!("{}.stdout", self.name))
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("{}.stderr", self.name))
    }

    /// The command with its clean environment, output not yet directed.
    fn command(&self, notify: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // A HOME of its own: no ~/.aws of whoever runs the tests.
            .env("HOME", &self.dir)
            .env("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET_ACCESS_KEY)
            .env("NOTIFY_SOCKET", notify);
        if let Some(config) = &self.config {
            cmd.env("DROVER_CONFIG", config);
        }
        for (name, value) in self.endpoints.vars() {
            cmd.env(name, value);
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd.args(&self.args).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// `drover <args>`, for messages.
    fn describe(&self) -> String {
        let mut words = vec!["drover".to_string()];
        words.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        words.join(" ")
    }

    /// Starts drover in the background. Must be called within a tokio runtime.
    pub fn spawn(self) -> Result<Running, Error> {
        let what = self.describe();
        let fail = |step: &str, e: std::io::Error| Error(format!("{what}: {step}: {e}"));
        let notify = NotifySocket::bind(&self.dir, &format!("{}.sock", self.name))
            .map_err(|e| fail("binding its NOTIFY_SOCKET", e))?;
        let mut cmd = self.command(notify.path());
        let (stdout, stderr) = if self.inherit_output {
            (None, None)
        } else {
            let out = self.stdout_path();
            let err = self.stderr_path();
            let create = |p: &Path| std::fs::File::create(p).map_err(|e| fail("output file", e));
            cmd.stdout(create(&out)?).stderr(create(&err)?);
            (Some(out), Some(err))
        };
        let child = cmd
            .spawn()
            .map_err(|e| fail(&format!("starting {}", self.binary.display()), e))?;
        Ok(Running {
            what,
            child,
            stdout,
            stderr,
            notify,
            code: None,
        })
    }

    /// Runs drover to its end, for at most `limit`: past it, drover is killed and the run
    /// is an error carrying its output.
    pub async fn run(self, limit: Duration) -> Result<Run, Error> {
        let mut running = self.spawn()?;
        let code = running.wait(limit).await?;
        Ok(Run {
            code,
            stdout: running.stdout(),
            stderr: running.stderr(),
            notices: running.notices(),
        })
    }
}

/// What one run of drover did.
#[derive(Debug, Clone)]
pub struct Run {
    /// `None`: killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// What it told systemd.
    pub notices: Vec<Notice>,
}

impl Run {
    /// stdout then stderr.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// A drover running in the background; killed when dropped.
pub struct Running {
    what: String,
    child: tokio::process::Child,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    notify: NotifySocket,
    /// Its exit code, once reaped.
    code: Option<Option<i32>>,
}

fn read(path: &Option<PathBuf>) -> String {
    path.as_deref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How often waits look again at what they wait for (and whether drover is still there).
const POLL: Duration = Duration::from_millis(20);

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        read(&self.stdout)
    }

    /// drover's log, so far.
    pub fn stderr(&self) -> String {
        read(&self.stderr)
    }

    /// Its log (stderr), then stdout.
    pub fn output(&self) -> String {
        let (err, out) = (self.stderr(), self.stdout());
        if out.is_empty() {
            err
        } else {
            format!("{err}\n{out}")
        }
    }

    /// The file its log goes to (none with [`Launcher::inherit_output`]).
    pub fn stderr_path(&self) -> Option<&Path> {
        self.stderr.as_deref()
    }

    /// What it told systemd so far, in order.
    pub fn notices(&self) -> Vec<Notice> {
        self.notify.notices()
    }

    fn failure(&self, what: &str) -> Error {
        Error(format!(
            "{}: {what}\n--- notices {:?}\n--- output (last 40 lines)\n{}",
            self.what,
            self.notices(),
            tail(&self.output(), 40)
        ))
    }

    /// Whether it has exited (reaping it if so), without waiting: its code (`None`:
    /// killed by a signal).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        if self.code.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.code = Some(status.code());
            }
        }
        self.code
    }

    /// Waits until `done` holds, for at most `limit`; an exit before is an error at once.
    async fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Running) -> bool,
    ) -> Result<(), Error> {
        let end = tokio::time::Instant::now() + limit;
        loop {
            if done(self) {
                return Ok(());
            }
            if let Some(code) = self.exited() {
                // What it sent just before exiting may still be on its way.
                tokio::time::sleep(POLL).await;
                if done(self) {
                    return Ok(());
                }
                return Err(self.failure(&format!("exited ({code:?}) before {what}")));
            }
            if tokio::time::Instant::now() >= end {
                return Err(self.failure(&format!("no {what} within {limit:?}")));
            }
            let _ = tokio::time::timeout(POLL, self.notify.changed()).await;
        }
    }

    /// Waits for `READY=1`: drover is registered and watches for termination (or, in a
    /// warm pool, waits there).
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), Error> {
        self.wait_until("READY=1", limit, |r| r.notify.seen(|n| *n == Notice::Ready))
            .await
    }

    /// Waits for `STOPPING=1`: drover has begun to stop.
    pub async fn wait_stopping(&mut self, limit: Duration) -> Result<(), Error> {
        self.wait_until("STOPPING=1", limit, |r| {
            r.notify.seen(|n| *n == Notice::Stopping)
        })
        .await
    }

    /// Waits for a `STATUS=` containing `text`.
    pub async fn wait_status(&mut self, text: &str, limit: Duration) -> Result<(), Error> {
        let what = format!("STATUS containing {text:?}");
        self.wait_until(&what, limit, |r| {
            r.notify
                .seen(|n| matches!(n, Notice::Status(s) if s.contains(text)))
        })
        .await
    }

    /// Waits until its output contains `needle`: for tests whose subject is what drover
    /// logs; to know that it is up, use [`wait_ready`](Self::wait_ready).
    pub async fn wait_for_output(&mut self, needle: &str, limit: Duration) -> Result<(), Error> {
        let what = format!("{needle:?} in its output");
        self.wait_until(&what, limit, |r| r.output().contains(needle))
            .await
    }

    /// Waits until `pred` holds for its output (e.g. a line logged twice); `what` names it
    /// in the error.
    pub async fn wait_output(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(), Error> {
        self.wait_until(what, limit, |r| pred(&r.output())).await
    }

    /// Sends `signal`; an error when it is gone.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), Error> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| Error(format!("{}: already exited", self.what)))?;
        let pid = i32::try_from(pid).map_err(|e| Error(e.to_string()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| Error(format!("{}: {signal}: {e}", self.what)))
    }

    /// SIGTERM, as systemd stops it, then [`wait`](Self::wait) for at most `limit`.
    pub async fn stop(&mut self, limit: Duration) -> Result<Option<i32>, Error> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.wait(limit).await
    }

    /// SIGKILL, and reap it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        if let Ok(status) = self.child.wait().await {
            self.code = Some(status.code());
        }
    }

    /// Waits for it to exit, for at most `limit`, and gives its code (`None`: killed by a
    /// signal). Past the limit it is killed, and that is the error.
    pub async fn wait(&mut self, limit: Duration) -> Result<Option<i32>, Error> {
        if let Some(code) = self.code {
            return Ok(code);
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.code = Some(status.code());
                Ok(status.code())
            }
            Ok(Err(e)) => Err(self.failure(&format!("waiting for it: {e}"))),
            Err(_) => {
                let err = self.failure(&format!("did not exit within {limit:?}"));
                self.kill().await;
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A stand-in for drover: a shell script that may talk to NOTIFY_SOCKET through Python.
    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-drover");
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// `notify A=1 B=2` sends each assignment as a datagram, as sd_notify does.
    const NOTIFY: &str = r#"notify() { python3 -c 'import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
for a in sys.argv[1:]: s.send((a + "\n").encode())' "$@"; }"#;

    #[tokio::test]
    async fn the_environment_is_clean_and_output_goes_to_files() {
        std::env::set_var("TESTBED_LEAK_CHECK", "leaked");
        let dir = tempfile::tempdir().expect("dir");
        let bin = script(dir.path(), "env | sort; echo to-stderr >&2; exit 3");
        let run = Launcher::new(&bin, dir.path(), "r1")
            .config(&dir.path().join("drover.toml"))
            .endpoints(&Endpoints::nowhere())
            .env("EXTRA", "1")
            .env("AWS_REGION", "eu-west-1")
            .run(Duration::from_secs(10))
            .await
            .expect("runs");
        assert_eq!(run.code, Some(3));
        assert_eq!(run.stderr, "to-stderr\n");
        let vars: BTreeMap<&str, &str> = run
            .stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .collect();
        assert!(!vars.contains_key("TESTBED_LEAK_CHECK"), "{vars:?}");
        assert_eq!(vars.get("EXTRA"), Some(&"1"));
        assert_eq!(vars.get("AWS_REGION"), Some(&"eu-west-1"), "extra env wins");
        assert_eq!(vars.get("AWS_ENDPOINT_URL"), Some(&"http://127.0.0.1:9"));
        assert_eq!(vars.get("AWS_ACCESS_KEY_ID"), Some(&AWS_ACCESS_KEY_ID));
        let home = dir.path().display().to_string();
        assert_eq!(vars.get("HOME"), Some(&home.as_str()));
        assert!(vars["DROVER_CONFIG"].ends_with("/drover.toml"));
        assert!(vars["NOTIFY_SOCKET"].ends_with("/r1.sock"));
        assert!(dir.path().join("r1.stdout").exists());
    }

    #[tokio::test]
    async fn ready_stopping_and_every_wait_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let bin = script(
            dir.path(),
            &format!(
                "{NOTIFY}\ntrap 'notify STOPPING=1; exit 0' TERM\nnotify READY=1 STATUS=watching\n\
                 while :; do sleep 0.1; done"
            ),
        );
        let mut running = Launcher::new(&bin, dir.path(), "r2")
            .spawn()
            .expect("starts");
        running
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
        running
            .wait_status("watching", Duration::from_secs(10))
            .await
            .expect("status");
        let err = running
            .wait(Duration::from_millis(300))
            .await
            .expect_err("still running");
        assert!(err.to_string().contains("did not exit within"), "{err}");
        assert!(running.pid().is_none(), "killed when the wait ran out");

        let mut running = Launcher::new(&bin, dir.path(), "r3")
            .spawn()
            .expect("starts");
        running
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
        running
            .signal(nix::sys::signal::Signal::SIGTERM)
            .expect("signal");
        running
            .wait_stopping(Duration::from_secs(10))
            .await
            .expect("stopping");
        assert_eq!(
            running.wait(Duration::from_secs(10)).await.expect("exit"),
            Some(0)
        );
        assert_eq!(
            running.notices(),
            [
                Notice::Ready,
                Notice::Status("watching".into()),
                Notice::Stopping
            ]
        );
    }

    #[tokio::test]
    async fn an_exit_before_ready_fails_at_once_with_the_output() {
        let dir = tempfile::tempdir().expect("dir");
        let bin = script(dir.path(), "echo 'config error: rancher.url' >&2; exit 2");
        let mut running = Launcher::new(&bin, dir.path(), "r4")
            .spawn()
            .expect("starts");
        let started = std::time::Instant::now();
        let err = running
            .wait_ready(Duration::from_secs(30))
            .await
            .expect_err("exits first");
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = format!("{err:?}");
        assert!(text.contains("exited (Some(2)) before READY=1"), "{text}");
        assert!(text.contains("config error: rancher.url"), "{text}");
    }
}
