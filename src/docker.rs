//! Talks to the local Docker engine about the `rancher/agent` containers: waits for the
//! engine, pulls the image, starts the bootstrap container exactly as Rancher's own command
//! does, and finds (or stops) the long-running `rancher-agent` container.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::cluster::LocalAgent;
use crate::retry::{poll_until, Check, Pace, RetryError};

/// The long-running container the bootstrap leaves behind.
pub const AGENT_CONTAINER: &str = "rancher-agent";
/// Where the agent expects the engine's socket and keeps its identity.
const SOCKET_IN_CONTAINER: &str = "/var/run/docker.sock";
const RANCHER_STATE_DIR: &str = "/var/lib/rancher";
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Label on the bootstrap container so that an operator can tell who started it.
const BOOTSTRAP_LABEL: &str = "io.drover.bootstrap";
/// Held while a bootstrap container is created and started, and while the agent is
/// stopped: the two never interleave, in this process, whichever is cut short.
static BOOTSTRAP_CALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("Docker engine at {host} did not answer within {waited:?}: {detail}")]
    NotReady {
        host: String,
        waited: Duration,
        detail: String,
    },
    #[error("Docker engine at {host}: cannot connect: {detail}")]
    Connect { host: String, detail: String },
    #[error("Docker {what}: {detail}")]
    Call { what: String, detail: String },
    #[error("pulling {image} failed: {detail}")]
    Pull { image: String, detail: String },
}

/// The bootstrap container's inputs, all of which reach the agent unchanged.
#[derive(Debug, Clone)]
pub struct BootstrapSpec {
    pub image: String,
    /// The token's `registrationUrl`, the container's only argument. A secret: it lets
    /// anyone add hosts to the environment.
    pub registration_url: SecretString,
    pub agent_ip: Ipv4Addr,
    /// Already in `CATTLE_HOST_LABELS` form.
    pub host_labels: String,
    pub privileged: bool,
    pub instance_id: String,
}

/// A container as far as drover cares.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
}

impl ContainerInfo {
    /// Running, or about to run again under its `--restart=always` policy.
    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "restarting")
    }
}

/// A connected, version-negotiated engine.
#[derive(Clone, Debug)]
pub struct AgentDocker {
    docker: Docker,
    host: String,
    socket: PathBuf,
}

/// Where the engine is: `DOCKER_HOST`, or the default socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            host: std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}")),
        }
    }
}

/// Waits for the engine start short and grow: at boot it comes up within seconds.
const ENGINE_POLL: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(2));

fn call_err(what: &str, e: bollard::errors::Error) -> DockerError {
    DockerError::Call {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl AgentDocker {
    async fn connect_once(host: &str) -> Result<AgentDocker, DockerError> {
        let docker = Docker::connect_with_host(host).map_err(|e| DockerError::Connect {
            host: host.to_string(),
            detail: e.to_string(),
        })?;
        let docker = docker.with_timeout(Duration::from_secs(30));
        // Debian's engine speaks API 1.41 while bollard defaults to a newer one.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Connect {
                host: host.to_string(),
                detail: e.to_string(),
            })?;
        docker.ping().await.map_err(|e| DockerError::Connect {
            host: host.to_string(),
            detail: e.to_string(),
        })?;
        let socket = host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Ok(AgentDocker {
            docker,
            host: host.to_string(),
            socket,
        })
    }

    /// Connects, waiting for the engine until `deadline`: at boot it may start after drover.
    pub async fn wait_ready(
        settings: &Settings,
        deadline: Instant,
    ) -> Result<AgentDocker, DockerError> {
        let host = &settings.host;
        let started = Instant::now();
        let logged = std::sync::atomic::AtomicBool::new(false);
        let connected = poll_until("the Docker engine", deadline, ENGINE_POLL, || async {
            match AgentDocker::connect_once(host).await {
                Ok(d) => Ok::<_, DockerError>(Check::Done(d)),
                Err(e) => {
                    if logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!("Docker engine not ready yet: {e}");
                    } else {
                        tracing::info!("waiting for the Docker engine at {host}: {e}");
                    }
                    Ok(Check::NotYet(e.to_string()))
                }
            }
        })
        .await;
        connected.map_err(|e| match e {
            RetryError::Failed(e) => e,
            RetryError::OutOfTime { last, .. } => DockerError::NotReady {
                host: host.clone(),
                waited: started.elapsed(),
                detail: last,
            },
        })
    }

    /// One quick check, for `drover check`.
    pub async fn probe(settings: &Settings) -> Result<(AgentDocker, String), DockerError> {
        let d = AgentDocker::connect_once(&settings.host).await?;
        let version = d
            .docker
            .version()
            .await
            .map_err(|e| call_err("version", e))?;
        let v = format!(
            "engine {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        );
        Ok((d, v))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The container named `rancher-agent`, running or not.
    pub async fn agent_container(&self) -> Result<Option<ContainerInfo>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("name".to_string(), vec![format!("^/{AGENT_CONTAINER}$")]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| call_err("listing containers", e))?;
        Ok(list.into_iter().next().map(|c| ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: AGENT_CONTAINER.to_string(),
            image: c.image.unwrap_or_default(),
            state: c
                .state
                .map(|s| s.to_string())
                .unwrap_or_default()
                .to_ascii_lowercase(),
        }))
    }

    /// Pulls `image` unless the engine already has it.
    pub async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(call_err(&format!("inspecting image {image}"), e)),
        }
        tracing::info!("pulling {image}");
        let reference = ImageRef::parse(image).map_err(|detail| DockerError::Pull {
            image: image.to_string(),
            detail,
        })?;
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference.repository)
            .tag(reference.pull_tag())
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| DockerError::Pull {
                image: image.to_string(),
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Starts the bootstrap container as the Rancher UI's command does:
    /// `docker run --rm [--privileged] -v <socket>:/var/run/docker.sock
    /// -v /var/lib/rancher:/var/lib/rancher -e CATTLE_AGENT_IP -e CATTLE_HOST_LABELS IMAGE URL`.
    pub async fn start_bootstrap(&self, spec: &BootstrapSpec) -> Result<String, DockerError> {
        // On a task of its own, holding BOOTSTRAP_CALLS: a registration cut short drops this
        // future, but the engine carries out a create or start already sent, and the
        // take-out's stop must see the container that makes (see `stop_agent`).
        let this = self.clone();
        let spec = spec.clone();
        let started = tokio::spawn(async move {
            let _calls = BOOTSTRAP_CALLS.lock().await;
            this.create_and_start_bootstrap(&spec).await
        });
        started.await.map_err(|e| DockerError::Call {
            what: "starting the bootstrap container".into(),
            detail: e.to_string(),
        })?
    }

    async fn create_and_start_bootstrap(
        &self,
        spec: &BootstrapSpec,
    ) -> Result<String, DockerError> {
        let binds = vec![
            // The agent must reach the same engine drover talks to.
            format!("{}:{SOCKET_IN_CONTAINER}", self.socket.display()),
            format!("{RANCHER_STATE_DIR}:{RANCHER_STATE_DIR}"),
        ];
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(vec![spec.registration_url.expose_secret().to_string()]),
            env: Some(vec![
                format!("CATTLE_AGENT_IP={}", spec.agent_ip),
                format!("CATTLE_HOST_LABELS={}", spec.host_labels),
            ]),
            labels: Some(HashMap::from([(
                BOOTSTRAP_LABEL.to_string(),
                spec.instance_id.clone(),
            )])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                privileged: Some(spec.privileged),
                auto_remove: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(|e| call_err("creating the bootstrap container", e))?;
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| call_err("starting the bootstrap container", e))?;
        Ok(created.id)
    }

    /// The running bootstrap containers drover started (by their label).
    async fn running_bootstraps(&self) -> Result<Vec<String>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![BOOTSTRAP_LABEL.to_string()]);
        let options = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| call_err("listing bootstrap containers", e))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Stops a container; `false` when it was gone already.
    async fn stop_container(&self, id: &str, what: &str) -> Result<bool, DockerError> {
        let options = StopContainerOptionsBuilder::default().t(10).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(call_err(&format!("stopping {what}"), e)),
        }
    }

    /// Stops the bootstrap containers drover started and `rancher-agent`, so that a removed
    /// host stops reconnecting and a registration under way starts nothing more. The
    /// bootstraps go first (one may be about to start an agent), and are looked for once
    /// more after the agent. `false` when nothing was running.
    pub async fn stop_agent(&self) -> Result<bool, DockerError> {
        // A bootstrap being created or started finishes first, so that it is stopped too;
        // bounded, since an engine that hangs must not hold the stop up.
        let _calls = tokio::time::timeout(Duration::from_secs(20), BOOTSTRAP_CALLS.lock()).await;
        let mut stopped = false;
        for id in self.running_bootstraps().await? {
            stopped |= self.stop_container(&id, "the bootstrap container").await?;
        }
        if let Some(c) = self.agent_container().await?.filter(|c| c.is_running()) {
            stopped |= self.stop_container(&c.id, AGENT_CONTAINER).await?;
        }
        for id in self.running_bootstraps().await? {
            stopped |= self.stop_container(&id, "the bootstrap container").await?;
        }
        Ok(stopped)
    }
}

/// The `rancher-agent` container as the workflow sees it: the engine is connected when the
/// agent is to be stopped (at the end of a take-out it may have been away for a while).
#[derive(Debug, Clone)]
pub struct DockerAgent {
    settings: Settings,
}

impl DockerAgent {
    pub fn new(settings: Settings) -> DockerAgent {
        DockerAgent { settings }
    }
}

impl LocalAgent for DockerAgent {
    async fn stop(&self) -> Result<bool, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let docker = AgentDocker::wait_ready(&self.settings, deadline)
            .await
            .map_err(|e| e.to_string())?;
        docker.stop_agent().await.map_err(|e| e.to_string())
    }
}

/// An image reference as the engine's pull takes it: `[registry[:port]/]repo[:tag][@digest]`.
///
/// Written out rather than taken from a crate: the split is all drover needs (the engine
/// validates the names), and the reference crates bring a registry client with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Registry and repository: `reg.local:5000/rancher/agent`.
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    /// `sha256:` and 64 hex digits.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Splits `image`; refuses a malformed digest or an empty part, naming what is wrong.
    pub fn parse(image: &'a str) -> Result<ImageRef<'a>, String> {
        let (name, digest) = match image.split_once('@') {
            Some((name, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| format!("digest {digest:?} is not sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("digest {digest:?} is not sha256:<64 hex digits>"));
                }
                (name, Some(digest))
            }
            None => (image, None),
        };
        // A colon after the last slash starts the tag; one before it is a registry's port.
        let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repository, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
            None => (name, None),
        };
        if repository.is_empty() || repository.ends_with('/') {
            return Err(format!("{image:?} names no repository"));
        }
        if tag == Some("") {
            return Err(format!("{image:?} has an empty tag"));
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{image:?} holds a space or a control character"));
        }
        Ok(ImageRef {
            repository,
            tag,
            digest,
        })
    }

    /// The pull's `tag` parameter: the digest when there is one (the engine then pulls
    /// exactly that manifest and a tag beside it is only a name), else the tag, else
    /// `latest`, as `docker pull` does.
    pub fn pull_tag(&self) -> &'a str {
        self.digest.or(self.tag).unwrap_or("latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(image: &str) -> (&str, Option<&str>, Option<&str>, &str) {
        let r = ImageRef::parse(image).expect(image);
        (r.repository, r.tag, r.digest, r.pull_tag())
    }

    #[test]
    fn image_references_split_into_repository_tag_and_digest() {
        assert_eq!(
            parts("rancher/agent:v1.2.11"),
            ("rancher/agent", Some("v1.2.11"), None, "v1.2.11")
        );
        assert_eq!(
            parts("rancher/agent"),
            ("rancher/agent", None, None, "latest")
        );
        assert_eq!(
            parts("reg.local:5000/rancher/agent:v1"),
            ("reg.local:5000/rancher/agent", Some("v1"), None, "v1")
        );
        assert_eq!(
            parts("reg.local:5000/agent"),
            ("reg.local:5000/agent", None, None, "latest")
        );
        let by_digest = format!("rancher/agent@{DIGEST}");
        assert_eq!(
            parts(&by_digest),
            ("rancher/agent", None, Some(DIGEST), DIGEST)
        );
        let both = format!("rancher/agent:v1.2.11@{DIGEST}");
        assert_eq!(
            parts(&both),
            ("rancher/agent", Some("v1.2.11"), Some(DIGEST), DIGEST)
        );
        let port_and_digest = format!("127.0.0.1:5000/rancher/agent@{DIGEST}");
        assert_eq!(
            parts(&port_and_digest),
            ("127.0.0.1:5000/rancher/agent", None, Some(DIGEST), DIGEST)
        );
        let all = format!("reg.local:5000/rancher/agent:v1@{DIGEST}");
        assert_eq!(
            parts(&all),
            (
                "reg.local:5000/rancher/agent",
                Some("v1"),
                Some(DIGEST),
                DIGEST
            )
        );
    }

    #[test]
    fn malformed_image_references_say_why() {
        for (image, why) in [
            ("rancher/agent@sha256:abc", "64 hex"),
            ("rancher/agent@md5:0123", "sha256"),
            ("rancher/agent@", "sha256"),
            ("rancher/agent:", "empty tag"),
            (":v1", "no repository"),
            ("reg.local:5000/:v1", "no repository"),
            ("rancher/agent:v1 extra", "space"),
        ] {
            let e = ImageRef::parse(image).expect_err(image);
            assert!(e.contains(why), "{image}: {e}");
        }
    }
}
