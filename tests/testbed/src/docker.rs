//! A private Docker engine per test, with a stand-in `rancher/agent` image.
//!
//! Each engine is its own `dockerd` with socket, data root and identity under `/tmp/tb-*`,
//! in a mount namespace of its own whose /var/lib is overlaid by the engine's directory, so
//! that what the agent binds there (`/var/lib/rancher`) never reaches the machine.
//! No image can be pulled on these machines, so the agent image is built from busybox and
//! imported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{CreateImageOptions, ListContainersOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;

/// The image drover runs by default; [`DockerEngine::launch`] imports the stand-in under it.
pub const AGENT_IMAGE: &str = "rancher/agent:v1.2.11";

/// The stand-in agent's entrypoint (busybox sh). `run` is the long-running `rancher-agent`;
/// anything else (the registration URL) is the bootstrap, which the real agent finishes in a
/// few seconds; this one lingers 15 s so that the Rancher stand-in's watcher sees it even on
/// a loaded machine (it is auto-removed when it exits). Sleeping in the background and `wait`ing lets the TERM trap fire at once, so
/// that `docker stop` and engine shutdown do not wait for the kill timeout.
const AGENT_SCRIPT: &str = r#"#!/bin/sh
# Stand-in for rancher/agent: "run" is the resident agent, anything else the bootstrap.
trap 'exit 0' TERM INT
if [ "$1" = run ]; then
  while :; do sleep 1 & wait $!; done
fi
sleep 15 & wait $!
exit 0
"#;

/// Run under `unshare --mount`: lays the bed's layer (`$1`, work dir `$2`) over /var/lib,
/// then becomes the command that follows.
const PRIVATE_VAR_LIB: &str = r#"set -e
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$1,workdir=$2" /var/lib
shift 2
exec "$@""#;

/// The stand-in agent image's entrypoint.
pub const AGENT_ENTRYPOINT: [&str; 1] = ["/bin/agent"];

/// Busybox applets linked into the stand-in image, enough for the script and for poking
/// around with `docker exec`.
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "env", "ls", "ps", "true", "false", "test", "[", "id",
    "hostname", "mkdir", "rm", "kill",
];

/// One container of the engine, the fields tests assert on.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The image as given at creation, e.g. `rancher/agent:v1.2.11`.
    pub image: String,
    /// `created`, `running`, `exited`, `restarting`, ...
    pub state: String,
    pub running: bool,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub binds: Vec<String>,
    pub privileged: bool,
    pub auto_remove: bool,
    /// `no`, `always`, `unless-stopped`, `on-failure` (empty when unset).
    pub restart_policy: String,
    pub network_mode: String,
}

/// A `dockerd` of our own. Dropping it stops the daemon and removes its directory.
pub struct DockerEngine {
    /// Removed on drop; `None` only after drop has taken it.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    /// The running daemon's record (see [`crate::pids`]), with `child`.
    recorded: Option<crate::pids::Recorded>,
}

fn other<E: std::fmt::Display>(what: &str, e: E) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl DockerEngine {
    /// Creates the engine's directory and fixes its socket path without starting `dockerd`,
    /// so that a test can start drover first and bring Docker up later.
    pub fn reserve() -> std::io::Result<DockerEngine> {
        // Unix socket paths are limited to 108 bytes: stay directly under /tmp.
        let dir = tempfile::Builder::new().prefix("tb-").tempdir_in("/tmp")?;
        let root = dir.path().to_path_buf();
        let socket = root.join("d.sock");
        // The engine ID (`docker info`) comes from a trust key, by default the machine-wide
        // /etc/docker/key.json; a key of our own gives every engine its own identity.
        let config = serde_json::json!({ "deprecated-key-path": root.join("key.json") });
        std::fs::write(root.join("daemon.json"), config.to_string())?;
        Ok(DockerEngine {
            dir: Some(dir),
            root,
            socket,
            child: None,
            recorded: None,
        })
    }

    /// Starts `dockerd` (again, after [`stop`](Self::stop): same data root, same identity)
    /// and waits until it answers a ping.
    pub async fn start(&mut self) -> std::io::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_none() {
                return Ok(());
            }
            self.child = None;
        }
        // A pid file left by a killed daemon makes the next one refuse to start.
        let _ = std::fs::remove_file(self.root.join("d.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))?;
        // The engine gets a mount namespace of its own with /var/lib over a layer of the
        // bed's: the agent's bind of /var/lib/rancher (and anything else the engine creates
        // there) lands under our directory and never on the machine. Plain `exec` keeps
        // the child's pid the daemon's.
        let upper = self.root.join("var-lib");
        let work = self.root.join("var-lib.work");
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(PRIVATE_VAR_LIB)
            .arg("sh")
            .arg(&upper)
            .arg(&work)
            .arg("dockerd")
            .arg("--config-file")
            .arg(self.root.join("daemon.json"))
            .arg("--host")
            .arg(self.docker_host())
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("d.pid"))
            // These machines allow no network but loopback: no bridge, no iptables.
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            // Containers stopped at shutdown get this long before SIGKILL.
            .args(["--shutdown-timeout", "3"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| other("spawning dockerd (under unshare)", e))?;
        self.recorded = Some(crate::pids::record(child.id(), "dockerd", &self.root));
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "dockerd exited with {status} while starting; log:\n{}",
                    self.log_tail()
                )));
            }
            if self.ping().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "dockerd did not answer within 30 s; log:\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`reserve`](Self::reserve) + [`start`](Self::start) + the stand-in agent image as
    /// [`AGENT_IMAGE`].
    pub async fn launch() -> std::io::Result<DockerEngine> {
        let mut engine = DockerEngine::reserve()?;
        engine.start().await?;
        engine.import_agent_image(AGENT_IMAGE).await?;
        Ok(engine)
    }

    /// Builds the stand-in agent image (busybox and the script at `/bin/agent` as entrypoint)
    /// and imports it as `tag`. About a tenth of a second.
    pub async fn import_agent_image(&self, tag: &str) -> std::io::Result<()> {
        let tar = self.agent_image_tar().await?;
        let (repo, image_tag) = split_tag(tag);
        let options = CreateImageOptions {
            from_src: Some("-".to_string()),
            repo: Some(repo.to_string()),
            tag: Some(image_tag.to_string()),
            changes: vec![format!("ENTRYPOINT {AGENT_ENTRYPOINT:?}")],
            ..Default::default()
        };
        let docker = self.client().await.map_err(|e| other("connecting", e))?;
        let mut progress =
            docker.create_image(Some(options), Some(bollard::body_full(tar.into())), None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| other("importing the agent image", e))?;
        }
        Ok(())
    }

    /// The stand-in agent image's root as a tar (run it with [`AGENT_ENTRYPOINT`]): what
    /// [`import_agent_image`](Self::import_agent_image) imports and the registry stand-in
    /// serves.
    pub async fn agent_image_tar(&self) -> std::io::Result<Vec<u8>> {
        let build = tempfile::Builder::new()
            .prefix("image-")
            .tempdir_in(&self.root)?;
        let bin = build.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .map_err(|e| other("copying /bin/busybox (busybox-static) into the image", e))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        for dir in ["tmp", "etc", "var/lib/rancher"] {
            std::fs::create_dir_all(build.path().join(dir))?;
        }
        let agent = bin.join("agent");
        std::fs::write(&agent, AGENT_SCRIPT)?;
        std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

        let tar = tokio::process::Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(build.path())
            .args(["-cf", "-", "."])
            .output()
            .await
            .map_err(|e| other("running tar", e))?;
        if !tar.status.success() {
            return Err(std::io::Error::other(format!(
                "tar failed: {}",
                String::from_utf8_lossy(&tar.stderr)
            )));
        }
        Ok(tar.stdout)
    }

    /// The engine's unix socket (it exists only while `dockerd` runs).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the engine wrote under /var/lib (its private layer): `rancher/` once a bootstrap
    /// container bound `/var/lib/rancher`.
    pub fn private_var_lib(&self) -> PathBuf {
        self.root.join("var-lib")
    }

    /// The engine's directory: `dockerd.log`, data and exec roots.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `unix:///tmp/tb-XXXXXX/d.sock`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Whether `dockerd` is running (it may still be starting).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A client for this engine, with the API version negotiated down to the engine's
    /// (Debian's Engine 20.10 speaks 1.41; bollard defaults to 1.53).
    pub async fn client(&self) -> Result<Docker, bollard::errors::Error> {
        connect(&self.socket).await
    }

    async fn ping(&self) -> bool {
        let attempt = async { self.client().await?.ping().await };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Ok(_))
        )
    }

    /// Every container, running or not, inspected. Empty when the engine does not answer.
    pub async fn containers(&self) -> Vec<ContainerInfo> {
        let Ok(docker) = self.client().await else {
            return Vec::new();
        };
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let Ok(list) = docker.list_containers(Some(options)).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            // A container may go away between list and inspect (auto-remove).
            if let Some(info) = inspect(&docker, &id).await {
                out.push(info);
            }
        }
        out
    }

    /// The container with this name (or id), inspected.
    pub async fn container(&self, name: &str) -> Option<ContainerInfo> {
        let docker = self.client().await.ok()?;
        inspect(&docker, name).await
    }

    /// Removes every container, running or not: the engine as a fresh host has it.
    pub async fn remove_all_containers(&self) {
        let Ok(docker) = self.client().await else {
            return;
        };
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let Ok(list) = docker.list_containers(Some(options)).await else {
            return;
        };
        for id in list.into_iter().filter_map(|c| c.id) {
            let remove = bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = docker.remove_container(&id, Some(remove)).await;
        }
    }

    /// Stops `dockerd`: SIGTERM (it stops its containers, which trap TERM), up to 10 s, then
    /// SIGKILL. The directory stays, so [`start`](Self::start) brings the same engine back.
    pub fn stop(&mut self) {
        // Removed once the daemon is gone, whichever way this returns.
        let _recorded = self.recorded.take();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        // A killed dockerd leaves its containerd behind; it would hold the data root.
        let containerd_pid = self.root.join("exec/containerd/containerd.pid");
        if let Ok(text) = std::fs::read_to_string(containerd_pid) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// The last lines of `dockerd.log`, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Lazily unmounts whatever a killed daemon left mounted under our directory, so that
    /// removing it does not fail half-way.
    fn unmount_leftovers(&self) {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
            return;
        };
        let root = self.root.to_string_lossy().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .filter(|point| point.starts_with(&root))
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(point)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        self.stop();
        self.unmount_leftovers();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Connects to the engine at `socket` and negotiates the API version.
pub async fn connect(socket: &Path) -> Result<Docker, bollard::errors::Error> {
    let path = socket.to_string_lossy();
    Docker::connect_with_unix(&path, 120, API_DEFAULT_VERSION)?
        .negotiate_version()
        .await
}

/// `repo:tag` → (`repo`, `tag`); a port in the registry part is not a tag.
fn split_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

async fn inspect(docker: &Docker, id: &str) -> Option<ContainerInfo> {
    let c = docker.inspect_container(id, None).await.ok()?;
    let config = c.config.unwrap_or_default();
    let host = c.host_config.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    Some(ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        running: state.running.unwrap_or(false),
        state: state
            .status
            .unwrap_or(ContainerStateStatusEnum::EMPTY)
            .to_string(),
        args: c.args.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        binds: host.binds.unwrap_or_default(),
        privileged: host.privileged.unwrap_or(false),
        auto_remove: host.auto_remove.unwrap_or(false),
        restart_policy: host
            .restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        network_mode: host.network_mode.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::CreateContainerOptions;

    #[test]
    fn tags_split_at_the_last_colon_outside_the_registry() {
        assert_eq!(
            split_tag("rancher/agent:v1.2.11"),
            ("rancher/agent", "v1.2.11")
        );
        assert_eq!(split_tag("rancher/agent"), ("rancher/agent", "latest"));
        assert_eq!(split_tag("reg:5000/agent"), ("reg:5000/agent", "latest"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn engine_runs_the_stand_in_agent_image() {
        let mut engine = DockerEngine::launch().await.expect("launch");
        assert!(engine.socket().to_string_lossy().starts_with("/tmp/tb-"));
        assert!(engine.docker_host().starts_with("unix:///tmp/tb-"));
        let docker = engine.client().await.expect("client");
        let image = docker
            .inspect_image(AGENT_IMAGE)
            .await
            .expect("image imported");
        assert_eq!(
            image.config.and_then(|c| c.entrypoint),
            Some(vec!["/bin/agent".to_string()])
        );

        // The long-running agent, as the bootstrap starts it (minus --privileged).
        let body = ContainerCreateBody {
            image: Some(AGENT_IMAGE.to_string()),
            cmd: Some(vec!["run".to_string()]),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_string()),
                restart_policy: Some(bollard::models::RestartPolicy {
                    name: Some(bollard::models::RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some("rancher-agent".to_string()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .expect("create");
        docker
            .start_container("rancher-agent", None)
            .await
            .expect("start");

        // A bootstrap-like one exits by itself after about fifteen seconds.
        let body = ContainerCreateBody {
            image: Some(AGENT_IMAGE.to_string()),
            cmd: Some(vec!["http://127.0.0.1:1/v1/scripts/X".to_string()]),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some("boot".to_string()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .expect("create");
        docker.start_container("boot", None).await.expect("start");

        let agent = engine.container("rancher-agent").await.expect("agent");
        assert!(agent.running);
        assert_eq!(agent.args, vec!["run"]);
        assert_eq!(agent.restart_policy, "always");
        assert_eq!(agent.network_mode, "host");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let boot = engine.container("boot").await.expect("boot");
            if boot.state == "exited" {
                break;
            }
            assert!(Instant::now() < deadline, "bootstrap still {}", boot.state);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(engine.containers().await.len(), 2);

        // Stopping and starting again gives the same engine, agent restarted.
        let id = docker.info().await.expect("info").id;
        let started = Instant::now();
        engine.stop();
        assert!(started.elapsed() < Duration::from_secs(9), "slow stop");
        assert!(engine.containers().await.is_empty());
        engine.start().await.expect("restart");
        let docker = engine.client().await.expect("client");
        assert_eq!(docker.info().await.expect("info").id, id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !engine
            .container("rancher-agent")
            .await
            .is_some_and(|c| c.running)
        {
            assert!(Instant::now() < deadline, "agent not restarted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let dir = engine.dir().to_path_buf();
        drop(engine);
        assert!(!dir.exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn engines_have_their_own_identity_and_start_late() {
        let mut late = DockerEngine::reserve().expect("reserve");
        assert!(!late.socket().exists());
        let (a, b) = tokio::join!(DockerEngine::launch(), late.start());
        let a = a.expect("launch");
        b.expect("start");
        let id_a = a.client().await.unwrap().info().await.unwrap().id;
        let id_b = late.client().await.unwrap().info().await.unwrap().id;
        assert!(id_a.is_some());
        assert_ne!(id_a, id_b);
    }
}
