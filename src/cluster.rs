//! The cluster manager behind a small trait (find a host, hand out a registration), so that
//! a Rancher 2.x or script backend can stand beside Rancher 1.x without touching the
//! workflows; and its Rancher 1.x (Cattle) implementation.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::rancher::{Host, RancherClient, RancherError, RegistrationToken, ResolvedApi};
use crate::retry::{self, RetryError};

/// A host as the workflows see it, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHost {
    pub id: String,
    /// The backend's own word for its state (`active`, `reconnecting`, `inactive`, ...).
    pub state: String,
    pub active: bool,
    pub hostname: Option<String>,
}

/// What the agent needs to join. The URL is a credential: it is never logged.
#[derive(Clone)]
pub struct AgentRegistration {
    pub url: String,
    /// The agent image the server asks for, when it says.
    pub image: Option<String>,
    /// For logs: which token (by id) is used.
    pub token_id: String,
}

impl std::fmt::Debug for AgentRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistration")
            .field("token_id", &self.token_id)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Rancher(#[from] RancherError),
    #[error("{0}")]
    OutOfTime(String),
}

impl From<RetryError<RancherError>> for ClusterError {
    fn from(e: RetryError<RancherError>) -> Self {
        match e {
            RetryError::Failed(e) => ClusterError::Rancher(e),
            out => ClusterError::OutOfTime(out.to_string()),
        }
    }
}

/// How to take a host out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeOutPlan {
    /// Evacuate its containers first (Rancher v2-beta only).
    pub evacuate: bool,
}

/// What taking a host out did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeOutReport {
    /// `purged`; `removed` or `purging` when the purge did not finish in time (the server
    /// purges removed hosts on its own); `gone` when the server no longer knows the host.
    pub final_state: String,
}

/// Taking a host out failed at `step`.
#[derive(Debug, thiserror::Error)]
#[error("taking host {host_id} out failed at {step} (host {state}): {error}")]
pub struct TakeOutError {
    pub host_id: String,
    pub step: String,
    /// The host's last known state.
    pub state: String,
    pub error: String,
}

/// Called with a short event line as the take-out progresses, for the timeline and the
/// state dir.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// What every cluster manager backend offers the workflows.
pub trait ClusterManager: Send + Sync {
    /// A short name for logs (`rancher v2-beta`).
    fn describe(&self) -> String;

    /// The host registered for `instance_id`, found by the label drover set, never by name.
    fn find_host(
        &self,
        instance_id: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<ClusterHost>, ClusterError>> + Send;

    /// A registration for the agent, creating one if the environment has none yet.
    fn registration(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<AgentRegistration, ClusterError>> + Send;

    /// Takes the host out of the cluster for good, skipping what is already done, so that
    /// running it again (or after a crash) picks up where it stopped.
    fn take_out(
        &self,
        host_id: &str,
        plan: TakeOutPlan,
        deadline: Instant,
        progress: Progress<'_>,
    ) -> impl Future<Output = Result<TakeOutReport, TakeOutError>> + Send;
}

/// The next thing to do with a host in `state`, given the actions the server offers.
/// `None` means wait: the host is on its way somewhere.
fn next_action(host: &Host, evacuated: bool) -> Option<&'static str> {
    match host.state.as_str() {
        "purged" | "purging" | "removing" | "deactivating" => None,
        "removed" => Some("purge"),
        _ if !evacuated && host.offers("evacuate") => Some("evacuate"),
        _ if host.offers("deactivate") => Some("deactivate"),
        _ if host.offers("remove") => Some("remove"),
        // A server that sends no actions map: the table of reference.md.
        "inactive" | "error" => Some("remove"),
        "active" | "registering" | "activating" | "reconnecting" | "disconnected" => {
            Some("deactivate")
        }
        _ => None,
    }
}

/// Rancher 1.x through its API.
#[derive(Debug, Clone)]
pub struct Rancher1 {
    client: RancherClient,
}

/// Polls of a host's transition start short and grow to a few seconds. The first re-read
/// after an action comes at once: a fast server has finished the transition by then, and
/// every step of a take-out otherwise waited out a poll for nothing (3 × 200 ms of a
/// 250 ms take-out, in the benchmark).
const FIRST_POLL: Duration = Duration::from_millis(50);
const LAST_POLL: Duration = Duration::from_secs(3);

/// The wait before the next read of a host in transition.
fn next_host_poll(delay: Duration) -> Duration {
    if delay.is_zero() {
        FIRST_POLL
    } else {
        (delay * 2).min(LAST_POLL)
    }
}

/// Polls start short and grow: most transitions take a second, some take minutes.
fn next_poll(delay: Duration) -> Duration {
    (delay * 2).min(Duration::from_secs(2))
}

impl Rancher1 {
    pub fn new(client: RancherClient) -> Rancher1 {
        Rancher1 { client }
    }

    async fn tokens(&self, deadline: Instant) -> Result<Vec<RegistrationToken>, ClusterError> {
        Ok(retry::until(
            "listing registration tokens",
            deadline,
            Duration::from_secs(5),
            RancherError::is_transient,
            || self.client.registration_tokens(),
        )
        .await?)
    }

    /// Waits for a token that is still `registering` to become active.
    async fn wait_token(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<RegistrationToken, ClusterError> {
        let mut delay = Duration::from_millis(250);
        loop {
            let token = retry::until(
                "reading the registration token",
                deadline,
                Duration::from_secs(5),
                RancherError::is_transient,
                || self.client.registration_token(id),
            )
            .await?;
            if token.is_usable() {
                return Ok(token);
            }
            if Instant::now() + delay >= deadline {
                return Err(ClusterError::OutOfTime(format!(
                    "registration token {id} still {:?} when the time ran out",
                    token.state
                )));
            }
            tracing::debug!(token = %id, state = %token.state, "waiting for the registration token");
            tokio::time::sleep(delay).await;
            delay = next_poll(delay);
        }
    }
}

impl Rancher1 {
    async fn read_host(
        &self,
        host_id: &str,
        deadline: Instant,
    ) -> Result<Option<Host>, RetryError<RancherError>> {
        retry::until(
            "reading the host",
            deadline,
            Duration::from_secs(3),
            RancherError::is_transient,
            || self.client.host(host_id),
        )
        .await
    }
}

fn to_cluster_host(h: Host) -> ClusterHost {
    ClusterHost {
        active: h.is_active(),
        state: h.effective_state().to_string(),
        id: h.id,
        hostname: h.hostname,
    }
}

impl ClusterManager for Rancher1 {
    fn describe(&self) -> String {
        format!(
            "rancher {} project {}",
            self.client.api().path(),
            self.client.project_id()
        )
    }

    async fn find_host(
        &self,
        instance_id: &str,
        deadline: Instant,
    ) -> Result<Option<ClusterHost>, ClusterError> {
        let host = retry::until(
            "listing hosts",
            deadline,
            Duration::from_secs(5),
            RancherError::is_transient,
            || self.client.find_host_by_instance(instance_id),
        )
        .await?;
        Ok(host.map(to_cluster_host))
    }

    async fn take_out(
        &self,
        host_id: &str,
        plan: TakeOutPlan,
        deadline: Instant,
        progress: Progress<'_>,
    ) -> Result<TakeOutReport, TakeOutError> {
        let mut report = TakeOutReport::default();
        // Evacuate exists in v2-beta only; on v1 deactivate-remove does the job.
        let mut evacuated = !plan.evacuate || self.client.api() == ResolvedApi::V1;
        let mut state = String::from("unknown");
        let mut step = "reading the host";
        let mut delay = Duration::ZERO;
        let fail = |step: &str, state: &str, error: String| TakeOutError {
            host_id: host_id.to_string(),
            step: step.to_string(),
            state: state.to_string(),
            error,
        };
        // A removed host has left the environment: it drops out of every list, and the
        // server purges it on its own some minutes later. From then on a failure (the purge
        // refused, the budget spent) leaves the take-out done, not failed.
        let done_or = |state: &str, err: TakeOutError| {
            if matches!(state, "removed" | "purging") {
                progress(&format!(
                    "host {state}; purge not finished ({}), Rancher purges removed hosts on its own",
                    err.error
                ));
                Ok(TakeOutReport {
                    final_state: state.to_string(),
                })
            } else {
                Err(err)
            }
        };
        loop {
            let host = match self.read_host(host_id, deadline).await {
                Ok(Some(h)) => h,
                Ok(None) => {
                    progress("host no longer known to Rancher");
                    report.final_state = "gone".into();
                    return Ok(report);
                }
                Err(e) => return done_or(&state, fail(step, &state, e.to_string())),
            };
            if host.state != state {
                if state != "unknown" {
                    progress(&format!("host {}", host.state));
                }
                state = host.state.clone();
            }
            if state == "purged" {
                report.final_state = state;
                return Ok(report);
            }
            if let Some(action) = next_action(&host, evacuated) {
                step = action;
                progress(&format!("{action} (host {state})"));
                let sent = retry::until(
                    action,
                    deadline,
                    Duration::from_secs(3),
                    RancherError::is_transient,
                    || self.client.host_action(host_id, action),
                )
                .await;
                match sent {
                    Ok(after) => {
                        state = after.state;
                        if action == "evacuate" {
                            evacuated = true;
                        }
                        delay = Duration::ZERO;
                    }
                    Err(RetryError::Failed(e)) if e.is_not_found() => {
                        progress("host no longer known to Rancher");
                        report.final_state = "gone".into();
                        return Ok(report);
                    }
                    // Not valid in the state the host has now: someone (or evacuate) moved it
                    // meanwhile. Read it again and take the step that fits.
                    Err(RetryError::Failed(e)) if e.status() == Some(422) => {
                        tracing::info!("{action} not available now ({e}); reading the host again");
                        if action == "evacuate" {
                            evacuated = true;
                        }
                    }
                    Err(e) => return done_or(&state, fail(action, &state, e.to_string())),
                }
            }
            if Instant::now() + delay >= deadline {
                return done_or(
                    &state,
                    fail(
                        step,
                        &state,
                        "lifecycle.drain_timeout ran out while the host was still on its way"
                            .into(),
                    ),
                );
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            delay = next_host_poll(delay);
        }
    }

    async fn registration(&self, deadline: Instant) -> Result<AgentRegistration, ClusterError> {
        let tokens = self.tokens(deadline).await?;
        let token = if let Some(t) = tokens.iter().find(|t| t.is_usable()) {
            t.clone()
        } else if let Some(t) = tokens.iter().find(|t| t.state == "registering") {
            tracing::info!(token = %t.id, "waiting for the registration token that is being created");
            self.wait_token(&t.id, deadline).await?
        } else {
            // A fresh environment has no token until someone opens "Add Host" in the UI.
            tracing::info!("the environment has no registration token; creating one");
            let created = retry::until(
                "creating a registration token",
                deadline,
                Duration::from_secs(5),
                RancherError::is_transient,
                || self.client.create_registration_token(),
            )
            .await?;
            if created.is_usable() {
                created
            } else {
                self.wait_token(&created.id, deadline).await?
            }
        };
        Ok(AgentRegistration {
            url: token.registration_url.clone().unwrap_or_default(),
            image: token.image.clone(),
            token_id: token.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(state: &str, actions: &[&str]) -> Host {
        let actions: serde_json::Map<String, serde_json::Value> = actions
            .iter()
            .map(|a| {
                (
                    a.to_string(),
                    serde_json::Value::String(format!("http://r/?action={a}")),
                )
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": "1h1", "state": state, "actions": actions, "labels": {}
        }))
        .expect("host")
    }

    /// A Rancher 1.x client of the stand-in at `server`.
    async fn rancher(server: &testbed::rancher::RancherServer) -> Rancher1 {
        let mut config = crate::config::defaults_for_tests().rancher;
        config.url = url::Url::parse(&server.url()).expect("url");
        config.project_id = server.project_id().to_string();
        config.access_key = server.access_key().to_string();
        config.secret_key = secrecy::SecretString::from(server.secret_key().to_string());
        Rancher1::new(RancherClient::connect(&config).await.expect("connect"))
    }

    fn active_host(server: &testbed::rancher::RancherServer) -> String {
        server.add_host(testbed::rancher::HostSpec {
            hostname: "ip-10-0-1-23".into(),
            labels: [(
                crate::rancher::INSTANCE_ID_LABEL.to_string(),
                "i-0a1b2c3d4e5f60718".to_string(),
            )]
            .into_iter()
            .collect(),
            state: "active".into(),
            agent_state: Some("active".into()),
            agent_ip: "10.0.1.23".into(),
        })
    }

    #[tokio::test]
    async fn a_removed_host_is_out_even_when_the_purge_fails() {
        let server = testbed::rancher::RancherServer::start(testbed::rancher::RancherOptions {
            transition_delay: Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        let id = active_host(&server);
        let purge = testbed::http::Match::action("purge").method("POST");
        server.fail(purge, testbed::http::Fault::Status(500), 1000);
        let lines = std::sync::Mutex::new(Vec::<String>::new());
        let progress = |l: &str| lines.lock().expect("lines").push(l.to_string());
        let deadline = Instant::now() + Duration::from_secs(2);
        let report = rancher(&server)
            .await
            .take_out(&id, TakeOutPlan { evacuate: false }, deadline, &progress)
            .await
            .expect("removed is out");
        assert_eq!(report.final_state, "removed");
        assert_eq!(server.host(&id).expect("host").state, "removed");
        let lines = lines.lock().expect("lines").join("\n");
        assert!(lines.contains("purges removed hosts on its own"), "{lines}");
    }

    #[tokio::test]
    async fn a_host_stuck_before_removed_is_a_failure() {
        let server = testbed::rancher::RancherServer::start(testbed::rancher::RancherOptions {
            transition_delay: Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        let id = active_host(&server);
        server.stick(&id, "removing");
        let deadline = Instant::now() + Duration::from_secs(1);
        let err = rancher(&server)
            .await
            .take_out(&id, TakeOutPlan { evacuate: false }, deadline, &|_| {})
            .await
            .expect_err("stuck in removing");
        assert_eq!(err.state, "removing");
        assert!(err.error.contains("drain_timeout"), "{err}");
    }

    #[test]
    fn the_next_step_follows_the_state_and_the_offered_actions() {
        assert_eq!(
            next_action(&host("active", &["deactivate", "evacuate"]), false),
            Some("evacuate")
        );
        assert_eq!(
            next_action(&host("active", &["deactivate", "evacuate"]), true),
            Some("deactivate")
        );
        assert_eq!(
            next_action(&host("inactive", &["remove", "activate"]), true),
            Some("remove")
        );
        assert_eq!(
            next_action(&host("removed", &["purge"]), true),
            Some("purge")
        );
        for waiting in ["deactivating", "removing", "purging", "purged"] {
            assert_eq!(next_action(&host(waiting, &[]), true), None, "{waiting}");
        }
        // v2-beta shows a disconnected agent in place of active; deactivate is still offered.
        assert_eq!(
            next_action(&host("disconnected", &["deactivate"]), true),
            Some("deactivate")
        );
        // Without an actions map, the table of the reference decides.
        assert_eq!(next_action(&host("active", &[]), true), Some("deactivate"));
        assert_eq!(next_action(&host("error", &[]), true), Some("remove"));
        assert_eq!(
            next_action(&host("activating", &["deactivate"]), true),
            Some("deactivate")
        );
    }
}
