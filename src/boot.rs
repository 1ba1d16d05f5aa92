//! The boot workflow: join this instance to the cluster once, and prove it joined.
//!
//! Idempotent by construction: a host the cluster already shows active for this instance,
//! or a running `rancher-agent` container whose host the cluster knows, means nothing is
//! started again; only the wait for `active` and the record in the state dir happen.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{Cluster, ClusterError, ClusterHost};
use crate::config::{AgentIp, Config};
use crate::docker::{AgentDocker, BootstrapSpec, DockerError};
use crate::imds::InstanceIdentity;
use crate::labels::{cattle_host_labels, Automatic};
use crate::retry::{poll_until, Check, Pace, RetryError};
use crate::state::{now_rfc3339, Registration, StateDir, StateError, REGISTRATION_FILE};

/// Listings of the hosts, until this instance's is listed, start short and grow:
/// registration takes seconds, and a listing carries every host of the environment.
const LIST_POLL: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(2));
/// Once the host is listed, it alone is read this often: the launching action is answered
/// the moment the host is active (BENCHMARKS.md), at the cost of one small GET a tick for
/// the few seconds a registration takes.
const HOST_POLL: Duration = Duration::from_millis(40);
/// Even then, the hosts are listed again this often, for another host of the instance.
const RELIST: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{step}: {source}")]
    Cluster {
        step: &'static str,
        source: ClusterError,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("agent.agent_ip is {setting} but IMDS reports no {setting} address for this instance")]
    NoAgentIp { setting: &'static str },
    #[error(
        "host {host_id} is {state} in Rancher; drover registers hosts but does not reactivate \
         one that was taken out (remove it in Rancher, or activate it)"
    )]
    HostTakenOut { host_id: String, state: String },
    #[error("host for this instance not active within {waited:?} ({last})")]
    NotActive { waited: Duration, last: String },
}

impl RegisterError {
    /// The step of the registration that failed, for a page.
    pub fn step(&self) -> &'static str {
        match self {
            RegisterError::Cluster { step, .. } => step,
            RegisterError::Docker(DockerError::Pull { .. }) => "pull the agent image",
            RegisterError::Docker(_) => "start the agent (Docker)",
            RegisterError::State(_) => "record the registration",
            RegisterError::NoAgentIp { .. } => "find the agent's address",
            RegisterError::HostTakenOut { .. } => "host taken out in Rancher",
            RegisterError::NotActive { .. } => "wait for the host to become active",
        }
    }
}

/// The cluster error of a step, with the step named.
fn at(step: &'static str) -> impl FnOnce(ClusterError) -> RegisterError {
    move |source| RegisterError::Cluster { step, source }
}

/// How the boot step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The cluster already showed this instance's host active: nothing was started.
    AlreadyActive { host_id: String, stale: Vec<String> },
    /// The host became active, with or without starting the bootstrap container.
    Registered {
        host_id: String,
        started_bootstrap: bool,
        /// Other hosts of this instance, not active: for the caller to take out.
        stale: Vec<String>,
    },
}

/// The hosts of `hosts` other than `host_id` that are not active.
fn stale_of(hosts: &[ClusterHost], host_id: &str) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.id != host_id && !h.active)
        .map(|h| h.id.clone())
        .collect()
}

/// The automatic labels' values for this instance.
fn automatic<'a>(identity: &'a InstanceIdentity, group: Option<&'a str>) -> Automatic<'a> {
    Automatic {
        instance_id: &identity.instance_id,
        instance_type: &identity.instance_type,
        availability_zone: &identity.availability_zone,
        region: &identity.region,
        autoscaling_group: group,
        ami_id: &identity.ami_id,
    }
}

fn agent_ip(setting: &AgentIp, identity: &InstanceIdentity) -> Result<Ipv4Addr, RegisterError> {
    match setting {
        AgentIp::Literal(ip) => Ok(*ip),
        AgentIp::LocalIpv4 => identity.local_ipv4.ok_or(RegisterError::NoAgentIp {
            setting: "local-ipv4",
        }),
        AgentIp::PublicIpv4 => identity.public_ipv4.ok_or(RegisterError::NoAgentIp {
            setting: "public-ipv4",
        }),
    }
}

/// States from which a host will not become active by waiting.
fn is_taken_out(state: &str) -> bool {
    matches!(
        state,
        "inactive" | "deactivating" | "removing" | "removed" | "purging" | "purged"
    )
}

/// Joins the instance to the cluster and waits until its host is active, all before
/// `deadline`; records the host in the state dir.
pub async fn register<C: Cluster>(
    config: &Config,
    docker: &crate::docker::Settings,
    identity: &InstanceIdentity,
    group: Option<&str>,
    cluster: &C,
    deadline: Instant,
) -> Result<RegisterOutcome, RegisterError> {
    let started = Instant::now();
    let span = tracing::Span::current();
    let hosts = cluster
        .find_hosts(&identity.instance_id, deadline)
        .await
        .map_err(at("look the host up in Rancher"))?;
    let existing = hosts.first();
    if let Some(host) = existing {
        // Recorded once: tracing appends a field recorded twice.
        span.record("host_id", host.id.as_str());
        if host.active {
            tracing::info!(
                "host already active in {}; nothing to start",
                cluster.describe()
            );
            record(config, identity, &host.id)?;
            return Ok(RegisterOutcome::AlreadyActive {
                host_id: host.id.clone(),
                stale: stale_of(&hosts, &host.id),
            });
        }
        if is_taken_out(&host.state) {
            return Err(RegisterError::HostTakenOut {
                host_id: host.id.clone(),
                state: host.state.clone(),
            });
        }
        tracing::info!(state = %host.state, "host known to Rancher but not active yet");
    }

    let docker = AgentDocker::wait_ready(docker, deadline).await?;
    tracing::info!("Docker engine ready at {}", docker.host());
    let agent = docker.agent_container().await?;
    tracing::debug!(?agent, "looked for the rancher-agent container");
    let agent_running = agent.as_ref().is_some_and(|c| c.is_running());
    let existing = existing.cloned();
    // A running agent whose host the server knows is registering already; one whose host is
    // gone belongs to a deleted host and a new bootstrap replaces it.
    let started_bootstrap = if agent_running && existing.is_some() {
        tracing::info!("rancher-agent container already running; not starting another");
        false
    } else {
        if agent_running {
            tracing::info!("rancher-agent container runs but Rancher has no host for this instance; registering again");
        }
        let ip = agent_ip(&config.agent.agent_ip, identity)?;
        let registration = cluster
            .registration(deadline)
            .await
            .map_err(at("get a registration token"))?;
        tracing::info!(token = %registration.token_id, "got a registration URL");
        docker.ensure_image(&config.agent.image).await?;
        let spec = BootstrapSpec {
            image: config.agent.image.clone(),
            registration_url: registration.url,
            agent_ip: ip,
            host_labels: cattle_host_labels(&config.agent.labels, &automatic(identity, group)),
            privileged: config.agent.privileged,
            instance_id: identity.instance_id.clone(),
        };
        let id = docker.start_bootstrap(&spec).await?;
        tracing::info!(
            container = %short_id(&id),
            image = %spec.image,
            agent_ip = %ip,
            labels = %spec.host_labels,
            "started the rancher/agent bootstrap container"
        );
        true
    };

    let (host, stale) = wait_active(
        cluster,
        &identity.instance_id,
        deadline,
        started,
        existing.is_none(),
    )
    .await?;
    tracing::info!("host active in Rancher after {:.1?}", started.elapsed());
    record(config, identity, &host.id)?;
    Ok(RegisterOutcome::Registered {
        host_id: host.id,
        started_bootstrap,
        stale,
    })
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Waits until a host of the instance is active; that host, and the others (not active)
/// as stale. Listings at [`LIST_POLL`] until a host of the instance is listed, then that
/// host alone every [`HOST_POLL`] (and a listing every [`RELIST`]).
async fn wait_active<C: Cluster>(
    cluster: &C,
    instance_id: &str,
    deadline: Instant,
    started: Instant,
    record_host_id: bool,
) -> Result<(ClusterHost, Vec<String>), RegisterError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    struct Watch {
        /// The host being registered, once listed, and the others seen with it.
        candidate: Option<String>,
        others: Vec<ClusterHost>,
        next_list: Instant,
        list_every: Duration,
        last_state: String,
    }
    let recorded = AtomicBool::new(!record_host_id);
    let watch = Mutex::new(Watch {
        candidate: None,
        others: Vec::new(),
        next_list: Instant::now(),
        list_every: LIST_POLL.first,
        last_state: String::from("not listed yet"),
    });
    let lock = || watch.lock().unwrap_or_else(|e| e.into_inner());
    let span = tracing::Span::current();
    let seen = |host: &ClusterHost| -> Result<(), RegisterError> {
        // Recorded once: tracing appends a field recorded twice.
        if !recorded.swap(true, Ordering::Relaxed) {
            span.record("host_id", host.id.as_str());
        }
        let mut w = lock();
        if host.state != w.last_state {
            tracing::info!(state = %host.state, "waiting for the host to become active");
            w.last_state.clone_from(&host.state);
        }
        if is_taken_out(&host.state) {
            return Err(RegisterError::HostTakenOut {
                host_id: host.id.clone(),
                state: host.state.clone(),
            });
        }
        Ok(())
    };
    let waited = poll_until(
        "the host to become active",
        deadline,
        Pace::new(HOST_POLL, HOST_POLL),
        || async {
            let (candidate, list) = {
                let w = lock();
                (w.candidate.clone(), Instant::now() >= w.next_list)
            };
            if list {
                let hosts = cluster
                    .find_hosts(instance_id, deadline)
                    .await
                    .map_err(at("wait for the host to become active"))?;
                let mut w = lock();
                w.next_list = Instant::now()
                    + if w.candidate.is_some() {
                        RELIST
                    } else {
                        w.list_every
                    };
                w.list_every = (w.list_every * 2).min(LIST_POLL.max);
                let Some(host) = hosts.first().cloned() else {
                    return Ok(Check::NotYet("not listed yet".to_string()));
                };
                drop(w);
                if host.active {
                    seen(&host)?;
                    let stale = stale_of(&hosts, &host.id);
                    return Ok(Check::Done((host, stale)));
                }
                seen(&host)?;
                let mut w = lock();
                w.candidate = Some(host.id.clone());
                w.others = hosts.into_iter().skip(1).collect();
                return Ok(Check::NotYet(host.state));
            }
            let Some(id) = candidate else {
                return Ok(Check::NotYet("not listed yet".to_string()));
            };
            let host = cluster
                .host(&id, deadline)
                .await
                .map_err(at("wait for the host to become active"))?;
            let Some(host) = host else {
                // Gone meanwhile: back to listings.
                let mut w = lock();
                w.candidate = None;
                w.next_list = Instant::now();
                return Ok(Check::NotYet("not listed yet".to_string()));
            };
            seen(&host)?;
            if host.active {
                let mut hosts = vec![host.clone()];
                hosts.extend(lock().others.iter().cloned());
                let stale = stale_of(&hosts, &host.id);
                return Ok(Check::Done((host, stale)));
            }
            Ok(Check::NotYet(host.state))
        },
    )
    .await;
    let last = || lock().last_state.clone();
    waited.map_err(|e| match e {
        RetryError::Failed(RegisterError::Cluster {
            source: ClusterError::OutOfTime(_),
            ..
        }) => RegisterError::NotActive {
            waited: started.elapsed(),
            last: format!("last state: {}; Rancher not answering", last()),
        },
        RetryError::Failed(e) => e,
        RetryError::OutOfTime { .. } => RegisterError::NotActive {
            waited: started.elapsed(),
            last: format!("last state: {}", last()),
        },
    })
}

fn record(config: &Config, identity: &InstanceIdentity, host_id: &str) -> Result<(), StateError> {
    let state = StateDir::new(&config.state.dir);
    // A registered host keeps its record as it was: running register again changes nothing.
    let previous: Option<Registration> = state.read_json(REGISTRATION_FILE).unwrap_or_else(|e| {
        tracing::warn!("{e}; writing a new record");
        None
    });
    if previous.is_some_and(|p| p.instance_id == identity.instance_id && p.host_id == host_id) {
        return Ok(());
    }
    state.write_json(
        REGISTRATION_FILE,
        &Registration {
            instance_id: identity.instance_id.clone(),
            host_id: host_id.to_string(),
            registered_at: now_rfc3339(),
            rancher_url: config.rancher.url.to_string(),
            project_id: config.rancher.project_id.clone(),
        },
    )?;
    tracing::info!(
        "recorded the registration in {}",
        state.path().join(REGISTRATION_FILE).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> InstanceIdentity {
        InstanceIdentity {
            instance_id: "i-0abc".into(),
            local_ipv4: Some(Ipv4Addr::new(10, 0, 1, 23)),
            public_ipv4: None,
            hostname: "ip-10-0-1-23".into(),
            instance_type: "m5.large".into(),
            ami_id: "ami-1".into(),
            availability_zone: "us-east-1b".into(),
            region: "us-east-1".into(),
            autoscaling_group: Some("crawlers".into()),
            target_lifecycle_state: None,
        }
    }

    #[test]
    fn agent_ip_comes_from_the_setting() {
        let id = identity();
        assert_eq!(
            agent_ip(&AgentIp::LocalIpv4, &id).expect("local"),
            Ipv4Addr::new(10, 0, 1, 23)
        );
        assert!(agent_ip(&AgentIp::PublicIpv4, &id).is_err());
        let lit = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(agent_ip(&AgentIp::Literal(lit), &id).expect("literal"), lit);
    }
}
