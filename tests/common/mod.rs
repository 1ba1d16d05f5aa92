//! Shared helpers for the end-to-end tests: a test bed per test, and running the built
//! `drover` binary against it with a clean environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use testbed::autoscaling::{AutoScalingServer, HookSpec};
use testbed::docker::DockerEngine;
use testbed::imds::{ImdsOptions, ImdsServer};
use testbed::pager::PagerServer;
use testbed::rancher::{RancherOptions, RancherServer};

/// A distinctive secret, so that a leak anywhere is easy to find.
pub const SECRET: &str = "s3cr3t-DroverTestSecretKey-9f8e7d";
pub const ACCESS: &str = "DROVERTESTACCESS";
pub const ROUTING_KEY: &str = "R0UT1NGKEYdroverTEST0123456789ab";
pub const GROUP: &str = "crawlers";
pub const HOOK: &str = "drain";
/// Every line `drover check` prints, by name.
pub const CHECKS: [&str; 7] = [
    "config",
    "imds",
    "docker",
    "rancher",
    "sqs",
    "autoscaling",
    "pager",
];

/// How the Docker engine of a bed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerMode {
    /// Running, with the agent image, before drover starts.
    Running,
    /// Dir and socket decided, engine not started: the test starts it.
    Later,
}

pub struct BedOptions {
    pub imds: ImdsOptions,
    pub rancher: RancherOptions,
    pub docker: DockerMode,
    /// The termination hook's heartbeat timeout.
    pub hook_timeout: Duration,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            imds: ImdsOptions::default(),
            rancher: RancherOptions {
                secret_key: SECRET.into(),
                access_key: ACCESS.into(),
                token_create_delay: Duration::from_millis(800),
                register_delay: Duration::from_millis(800),
                ..RancherOptions::default()
            },
            docker: DockerMode::Running,
            hook_timeout: Duration::from_secs(300),
        }
    }
}

/// Every stand-in of the test bed, a private Docker engine, and a scratch dir for the
/// config and the state dir.
pub struct Bed {
    pub imds: ImdsServer,
    pub rancher: RancherServer,
    pub asg: AutoScalingServer,
    pub pager: PagerServer,
    pub docker: DockerEngine,
    pub dir: tempfile::TempDir,
    pub instance_id: String,
    /// Extra TOML appended to the generated config.
    pub extra_config: String,
    /// Extra environment for drover.
    pub extra_env: Vec<(String, String)>,
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
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

pub fn drover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drover"))
}

impl Bed {
    pub async fn start() -> Bed {
        Bed::with(BedOptions::default()).await
    }

    pub async fn with(opts: BedOptions) -> Bed {
        let instance_id = opts.imds.instance_id.clone();
        let imds = ImdsServer::start(opts.imds).await;
        let rancher = RancherServer::start(opts.rancher).await;
        let asg = AutoScalingServer::start().await;
        asg.add_group(
            GROUP,
            vec![HookSpec {
                name: HOOK.into(),
                transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
                heartbeat_timeout: opts.hook_timeout,
                default_result: "ABANDON".into(),
            }],
        );
        asg.add_instance(GROUP, &instance_id, "m5.large", "us-east-1b");
        let pager = PagerServer::start().await;
        let docker = match opts.docker {
            DockerMode::Running => DockerEngine::launch().await.expect("docker engine starts"),
            DockerMode::Later => DockerEngine::reserve().expect("docker dir"),
        };
        rancher.watch_docker(docker.socket());
        let dir = tempfile::Builder::new()
            .prefix("drover-test-")
            .tempdir()
            .expect("temp dir");
        let secret_file = dir.path().join("rancher.secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret file");
        set_mode(&secret_file, 0o600);
        Bed {
            imds,
            rancher,
            asg,
            pager,
            docker,
            dir,
            instance_id,
            extra_config: String::new(),
            extra_env: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("drover.toml")
    }

    /// The config drover runs with; `extra_config` is appended (later keys of a repeated
    /// table are not allowed in TOML, so tests override through `--set` or the env instead).
    pub fn config_text(&self) -> String {
        format!(
            r#"[rancher]
url = "{rancher}"
project_id = "{project}"
access_key = "{ACCESS}"
secret_key_file = "{secret}"

[agent]
labels = {{ role = "crawling", env = "prod" }}
# Privileged containers cannot start on the test machines.
privileged = false
register_timeout = "60s"

[pager]
pagerduty_url = "{pager}"

[state]
dir = "{state}"

[log]
level = "debug"
{extra}
"#,
            rancher = self.rancher.url(),
            project = self.rancher.project_id(),
            secret = self.dir.path().join("rancher.secret").display(),
            pager = self.pager.enqueue_url(),
            state = self.state_dir().display(),
            extra = self.extra_config,
        )
    }

    pub fn write_config(&self) {
        std::fs::write(self.config_path(), self.config_text()).expect("config");
        set_mode(&self.config_path(), 0o600);
    }

    /// The binary with a clean environment pointing every endpoint at the bed.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.write_config();
        let mut cmd = tokio::process::Command::new(drover_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("DROVER_CONFIG", self.config_path())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.url())
            .env("AWS_ENDPOINT_URL_AUTO_SCALING", self.asg.url())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("DOCKER_HOST", self.docker.docker_host())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts drover in the background, its stderr collected line by line.
    pub fn spawn(&self, args: &[&str]) -> Running {
        Running::spawn(self.command(args))
    }

    /// Registers the host and returns its id.
    pub async fn register(&self) -> String {
        self.drover(&["register"]).await.assert_code(0);
        let mine = self.my_hosts();
        assert_eq!(mine.len(), 1, "{mine:?}");
        mine[0].id.clone()
    }

    /// Runs drover to completion (bounded: a hung drover fails the test, it never hangs it).
    pub async fn drover(&self, args: &[&str]) -> Run {
        run_bounded(self.command(args), Duration::from_secs(120)).await
    }

    /// The registration record drover wrote, if any.
    pub fn registration(&self) -> Option<serde_json::Value> {
        let path = self.state_dir().join("registration.json");
        let text = std::fs::read_to_string(path).ok()?;
        Some(serde_json::from_str(&text).expect("registration.json is JSON"))
    }

    /// Hosts of this instance that are not removed or purged.
    pub fn my_hosts(&self) -> Vec<testbed::rancher::HostSnapshot> {
        self.rancher
            .hosts()
            .into_iter()
            .filter(|h| h.labels.get("aws.instance_id") == Some(&self.instance_id))
            .filter(|h| h.state != "removed" && h.state != "purged")
            .collect()
    }
}

pub async fn run_bounded(mut cmd: tokio::process::Command, limit: Duration) -> Run {
    let child = cmd.spawn().expect("drover starts");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("drover output");
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => panic!("drover did not finish within {limit:?}"),
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file under `dir`, as text (lossy), for leak checks.
pub fn all_files_text(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&all_files_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

/// A drover running in the background.
pub struct Running {
    child: tokio::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(mut cmd: tokio::process::Command) -> Running {
        use tokio::io::AsyncBufReadExt;
        let mut child = cmd.spawn().expect("drover starts");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            readers.push(tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("lines").push(line);
                }
            }));
        }
        Running {
            child,
            lines,
            readers,
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits until a line contains `needle`; panics with the output after `limit`.
    pub async fn wait_for(&self, needle: &str, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < end {
            if self.output().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {needle:?} within {limit:?} in:\n{}", self.output());
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
    }

    /// Waits for the exit (bounded) and returns the code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let code = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait").code(),
            Err(_) => panic!("drover did not exit within {limit:?}:\n{}", self.output()),
        };
        // The last lines may still be on their way through the pipes.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        code
    }
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lifecycle message as Auto Scaling sends it straight to SQS.
pub fn direct_message(instance_id: &str, token: &str) -> String {
    testbed::autoscaling::termination_message(GROUP, HOOK, instance_id, token)
}
