//! Rancher 1.x (Cattle) as a [`Cluster`]: hosts found by their instance label,
//! registration tokens (created in a fresh environment), and each take-out step read off the
//! host's own state and the actions the server offers, so that what is done is skipped.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::time::Instant;

use super::client::{Host, RancherClient, RancherError, RegistrationToken, ResolvedApi};
use crate::cluster::{
    AgentRegistration, Cluster, ClusterError, ClusterHost, EnvHost, Happened, Step, StepDone,
    StepEvent, StepFailed, GONE,
};
use crate::retry::{self, poll_until, Check, Pace, RetryError};

/// Polls of a host's transition start short and grow to a few seconds; the look right after
/// an action comes at once (see [`Rancher1::take_step`]).
const HOST_POLL: Pace = Pace::new(Duration::from_millis(50), Duration::from_secs(3));
/// A registration token being created is active within a second or two.
const TOKEN_POLL: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(2));
/// The longest wait between retries of a failed request.
const RETRY_MAX: Duration = Duration::from_secs(3);

impl From<RetryError<RancherError>> for ClusterError {
    fn from(e: RetryError<RancherError>) -> Self {
        match e {
            RetryError::Failed(e) => ClusterError::Backend(Box::new(e)),
            out => ClusterError::OutOfTime(out.to_string()),
        }
    }
}

/// How far out of the environment a host in `state` is: 0 in it, 1 deactivated, 2 removed
/// (it has left every list), 3 purged.
fn how_far_out(state: &str) -> u8 {
    match state {
        "inactive" | "error" | "removing" => 1,
        "removed" | "purging" => 2,
        "purged" => 3,
        _ => 0,
    }
}

/// How far out `step` brings a host.
fn target(step: Step) -> u8 {
    match step {
        Step::Evacuate => 0,
        Step::Deactivate => 1,
        Step::Remove => 2,
        Step::Purge => 3,
    }
}

/// What to do next about a host, for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The step's end is reached.
    Done,
    /// The host is on its way somewhere: look again later.
    Wait,
    Act(&'static str),
}

/// The next thing to do with `host` on the way through `step`, given the actions the server
/// offers: a step first takes whatever earlier step the host still needs (a host someone
/// activated again is deactivated again before removal).
fn next(host: &Host, step: Step) -> Next {
    let state = host.state.as_str();
    if how_far_out(state) >= target(step) {
        return Next::Done;
    }
    match state {
        "purging" | "removing" | "deactivating" => Next::Wait,
        "removed" => Next::Act("purge"),
        _ if host.offers("deactivate") => Next::Act("deactivate"),
        _ if host.offers("remove") => Next::Act("remove"),
        // A server that sends no actions map: the table of reference.md.
        "inactive" | "error" => Next::Act("remove"),
        "active" | "registering" | "activating" | "reconnecting" | "disconnected" => {
            Next::Act("deactivate")
        }
        _ => Next::Wait,
    }
}

/// Rancher 1.x through its API.
#[derive(Debug, Clone)]
pub struct Rancher1 {
    client: RancherClient,
}

fn to_cluster_host(h: Host) -> ClusterHost {
    ClusterHost {
        active: h.is_active(),
        state: h.effective_state().to_string(),
        id: h.id,
        hostname: h.hostname,
    }
}

/// What a step saw and did, kept while it runs (the poll's looks share it).
struct StepLog {
    state: String,
    events: Vec<StepEvent>,
}

impl StepLog {
    fn note(&mut self, what: Happened) {
        tracing::debug!("{what}");
        self.events.push(StepEvent {
            at: SystemTime::now(),
            what,
        });
    }

    /// A state read off the server: an event when it changed, not for the first look.
    fn seen(&mut self, state: &str) {
        if state != self.state {
            if self.state != "unknown" {
                self.note(Happened::Became(state.to_string()));
            }
            self.state = state.to_string();
        }
    }
}

impl Rancher1 {
    pub fn new(client: RancherClient) -> Rancher1 {
        Rancher1 { client }
    }

    async fn read_host(
        &self,
        host_id: &str,
        deadline: Instant,
    ) -> Result<Option<Host>, RetryError<RancherError>> {
        retry::until(
            "reading the host",
            deadline,
            RETRY_MAX,
            RancherError::is_transient,
            || self.client.host(host_id),
        )
        .await
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
        let waited: Result<_, RetryError<RetryError<RancherError>>> =
            poll_until("the registration token", deadline, TOKEN_POLL, || async {
            let token = retry::until(
                "reading the registration token",
                deadline,
                Duration::from_secs(5),
                RancherError::is_transient,
                || self.client.registration_token(id),
            )
            .await?;
            if token.is_usable() {
                return Ok(Check::Done(token));
            }
            tracing::debug!(token = %id, state = %token.state, "waiting for the registration token");
            Ok(Check::NotYet(token.state))
        })
        .await;
        match waited {
            Ok(token) => Ok(token),
            Err(RetryError::Failed(e)) => Err(e.into()),
            Err(RetryError::OutOfTime { last, .. }) => Err(ClusterError::OutOfTime(format!(
                "registration token {id} still {last:?} when the time ran out"
            ))),
        }
    }

    /// Evacuates when the server offers it (v2-beta, a host `active` or `inactive`), once.
    /// The server only records the request and answers with the host unchanged.
    async fn evacuate(&self, host_id: &str, deadline: Instant) -> Result<StepDone, StepFailed> {
        let mut log = StepLog {
            state: "unknown".into(),
            events: Vec::new(),
        };
        let failed = |log: StepLog, error: String| StepFailed {
            state: log.state,
            error,
            events: log.events,
        };
        if self.client.api() == ResolvedApi::V1 {
            return Ok(StepDone {
                state: log.state,
                events: log.events,
            });
        }
        let host = match self.read_host(host_id, deadline).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                log.note(Happened::Gone);
                return Ok(StepDone {
                    state: GONE.into(),
                    events: log.events,
                });
            }
            Err(e) => return Err(failed(log, e.to_string())),
        };
        log.seen(&host.state);
        if host.offers("evacuate") {
            log.note(Happened::Sent {
                action: "evacuate".into(),
                from: host.state.clone(),
            });
            let sent = retry::until(
                "evacuate",
                deadline,
                RETRY_MAX,
                RancherError::is_transient,
                || self.client.host_action(host_id, "evacuate"),
            )
            .await;
            match sent {
                Ok(after) => log.seen(&after.state),
                Err(RetryError::Failed(e)) if e.is_not_found() => {
                    log.note(Happened::Gone);
                    return Ok(StepDone {
                        state: GONE.into(),
                        events: log.events,
                    });
                }
                // Not valid in the state the host has now: nothing to evacuate from there.
                Err(RetryError::Failed(e)) if e.status() == Some(422) => {
                    tracing::info!("evacuate not available now ({e})");
                }
                Err(e) => return Err(failed(log, e.to_string())),
            }
        }
        Ok(StepDone {
            state: log.state,
            events: log.events,
        })
    }
}

impl Cluster for Rancher1 {
    fn describe(&self) -> String {
        format!(
            "rancher {} project {}",
            self.client.api().path(),
            self.client.project_id()
        )
    }

    async fn find_hosts(
        &self,
        instance_id: &str,
        deadline: Instant,
    ) -> Result<Vec<ClusterHost>, ClusterError> {
        let hosts = retry::until(
            "listing hosts",
            deadline,
            Duration::from_secs(5),
            RancherError::is_transient,
            || self.client.find_hosts_by_instance(instance_id),
        )
        .await?;
        Ok(hosts.into_iter().map(to_cluster_host).collect())
    }

    async fn hosts(&self, deadline: Instant) -> Result<Vec<EnvHost>, ClusterError> {
        let hosts = retry::until(
            "listing hosts",
            deadline,
            Duration::from_secs(5),
            RancherError::is_transient,
            || self.client.hosts(),
        )
        .await?;
        let api = self.client.api();
        Ok(hosts
            .into_iter()
            .map(|h| EnvHost {
                agent: h.agent_contact(api),
                state: h.effective_state().to_string(),
                instance_id: h.instance_id().map(str::to_string),
                group: h.group().map(str::to_string),
                id: h.id,
                hostname: h.hostname,
            })
            .collect())
    }

    async fn host(
        &self,
        host_id: &str,
        deadline: Instant,
    ) -> Result<Option<ClusterHost>, ClusterError> {
        Ok(self
            .read_host(host_id, deadline)
            .await?
            .filter(|h| h.state != "purged")
            .map(to_cluster_host))
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
            url: token
                .registration_url
                .unwrap_or_else(|| SecretString::from(String::new())),
            image: token.image,
            token_id: token.id,
        })
    }

    /// Reads the host, takes the action its state and offered actions call for, and polls
    /// until the step's end. The look right after an action comes at once: a fast server has
    /// finished the transition by then, and waiting out a poll for nothing at every step was
    /// most of a fast take-out.
    async fn take_step(
        &self,
        host_id: &str,
        step: Step,
        deadline: Instant,
    ) -> Result<StepDone, StepFailed> {
        if step == Step::Evacuate {
            return self.evacuate(host_id, deadline).await;
        }
        let log = Mutex::new(StepLog {
            state: "unknown".into(),
            events: Vec::new(),
        });
        let with_log = |f: &dyn Fn(&mut StepLog)| {
            if let Ok(mut l) = log.lock() {
                f(&mut l)
            }
        };
        let gone = || {
            with_log(&|l| l.note(Happened::Gone));
            Check::Done(GONE.to_string())
        };
        let polled = poll_until(step.name(), deadline, HOST_POLL, || async {
            let Some(host) = self.read_host(host_id, deadline).await? else {
                return Ok(gone());
            };
            with_log(&|l| l.seen(&host.state));
            let action = match next(&host, step) {
                Next::Done => return Ok(Check::Done(host.state)),
                Next::Wait => return Ok(Check::NotYet(host.state)),
                Next::Act(action) => action,
            };
            with_log(&|l| {
                l.note(Happened::Sent {
                    action: action.to_string(),
                    from: host.state.clone(),
                })
            });
            let sent = retry::until(
                action,
                deadline,
                RETRY_MAX,
                RancherError::is_transient,
                || self.client.host_action(host_id, action),
            )
            .await;
            match sent {
                // The answer shows the transition begun; no event for it.
                Ok(after) => with_log(&|l| l.state.clone_from(&after.state)),
                Err(RetryError::Failed(e)) if e.is_not_found() => return Ok(gone()),
                // Not valid in the state the host has now: someone moved it meanwhile. Read
                // it again and take the step that fits.
                Err(RetryError::Failed(e)) if e.status() == Some(422) => {
                    tracing::info!("{action} not available now ({e}); reading the host again");
                }
                Err(e) => return Err(e),
            }
            let Some(host) = self.read_host(host_id, deadline).await? else {
                return Ok(gone());
            };
            with_log(&|l| l.seen(&host.state));
            Ok(match next(&host, step) {
                Next::Done => Check::Done(host.state),
                _ => Check::NotYet(host.state),
            })
        })
        .await;
        let log = log.into_inner().unwrap_or_else(|e| e.into_inner());
        match polled {
            Ok(state) => Ok(StepDone {
                state,
                events: log.events,
            }),
            Err(RetryError::Failed(e)) => Err(StepFailed {
                state: log.state,
                error: e.to_string(),
                events: log.events,
            }),
            Err(RetryError::OutOfTime { .. }) => Err(StepFailed {
                state: log.state,
                error: "lifecycle.drain_timeout ran out while the host was still on its way".into(),
                events: log.events,
            }),
        }
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
        let settings = super::super::Settings {
            url: url::Url::parse(&server.url()).expect("url"),
            project_id: server.project_id().to_string(),
            access_key: server.access_key().to_string(),
            secret_key: crate::secret::Secret::new(
                "rancher.secret_key",
                crate::secret::Source::Inline(SecretString::from(server.secret_key().to_string())),
            ),
            api_version: super::super::ApiVersion::Auto,
            ca_file: None,
            request_timeout: Duration::from_secs(5),
        };
        let key = SecretString::from(server.secret_key().to_string());
        Rancher1::new(
            RancherClient::connect(&settings, key)
                .await
                .expect("connect"),
        )
    }

    fn active_host(server: &testbed::rancher::RancherServer) -> String {
        server.add_host(testbed::rancher::HostSpec {
            hostname: "ip-10-0-1-23".into(),
            labels: [(
                crate::labels::INSTANCE_ID_LABEL.to_string(),
                "i-0a1b2c3d4e5f60718".to_string(),
            )]
            .into_iter()
            .collect(),
            state: "active".into(),
            agent_state: Some("active".into()),
            agent_ip: "10.0.1.23".into(),
        })
    }

    /// A stand-in whose transitions take a moment, with one active host.
    async fn server_with_a_host() -> (testbed::rancher::RancherServer, String) {
        let server = testbed::rancher::RancherServer::start(testbed::rancher::RancherOptions {
            transition_delay: Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        let id = active_host(&server);
        (server, id)
    }

    fn said(events: &[StepEvent]) -> Vec<String> {
        events.iter().map(|e| e.what.to_string()).collect()
    }

    #[tokio::test]
    async fn each_step_says_what_it_did_and_a_done_step_does_nothing() {
        let (server, id) = server_with_a_host().await;
        let rancher = rancher(&server).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let done = rancher
            .take_step(&id, Step::Deactivate, deadline)
            .await
            .expect("deactivated");
        assert_eq!(done.state, "inactive");
        assert_eq!(
            said(&done.events),
            ["deactivate (host active)", "host inactive"]
        );
        let again = rancher
            .take_step(&id, Step::Deactivate, deadline)
            .await
            .expect("still inactive");
        assert_eq!(again.state, "inactive");
        assert!(again.events.is_empty(), "{:?}", again.events);
        let removed = rancher
            .take_step(&id, Step::Remove, deadline)
            .await
            .expect("removed");
        assert_eq!(
            said(&removed.events),
            ["remove (host inactive)", "host removed"]
        );
        let purged = rancher
            .take_step(&id, Step::Purge, deadline)
            .await
            .expect("purged");
        assert_eq!(purged.state, "purged");
        assert_eq!(server.host(&id).expect("host").state, "purged");
    }

    #[tokio::test]
    async fn a_purge_that_keeps_failing_fails_the_purge_step_with_the_host_removed() {
        let (server, id) = server_with_a_host().await;
        let purge = testbed::http::Match::action("purge").method("POST");
        server.fail(purge, testbed::http::Fault::Status(500), 1000);
        let rancher = rancher(&server).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        rancher
            .take_step(&id, Step::Remove, deadline)
            .await
            .expect("removed");
        let failed = rancher
            .take_step(&id, Step::Purge, deadline)
            .await
            .expect_err("purge refused");
        assert_eq!(failed.state, "removed");
        assert_eq!(server.host(&id).expect("host").state, "removed");
    }

    #[tokio::test]
    async fn a_host_stuck_before_removed_fails_the_remove_step() {
        let (server, id) = server_with_a_host().await;
        server.stick(&id, "removing");
        let deadline = Instant::now() + Duration::from_secs(1);
        let err = rancher(&server)
            .await
            .take_step(&id, Step::Remove, deadline)
            .await
            .expect_err("stuck in removing");
        assert_eq!(err.state, "removing");
        assert!(err.error.contains("drain_timeout"), "{err}");
    }

    #[tokio::test]
    async fn a_host_rancher_forgot_is_gone() {
        let server = testbed::rancher::RancherServer::start(Default::default()).await;
        let done = rancher(&server)
            .await
            .take_step(
                "1h999",
                Step::Deactivate,
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .expect("gone is done");
        assert_eq!(done.state, GONE);
        assert_eq!(said(&done.events), ["host no longer known to Rancher"]);
    }

    #[test]
    fn the_next_action_follows_the_state_and_the_offered_actions() {
        let d = Step::Deactivate;
        let r = Step::Remove;
        let p = Step::Purge;
        assert_eq!(
            next(&host("active", &["deactivate", "evacuate"]), d),
            Next::Act("deactivate")
        );
        assert_eq!(
            next(&host("inactive", &["remove", "activate"]), d),
            Next::Done
        );
        assert_eq!(
            next(&host("inactive", &["remove", "activate"]), r),
            Next::Act("remove")
        );
        // A host activated again is deactivated again on the way to removal.
        assert_eq!(
            next(&host("active", &["deactivate"]), r),
            Next::Act("deactivate")
        );
        assert_eq!(next(&host("removed", &["purge"]), r), Next::Done);
        assert_eq!(next(&host("removed", &["purge"]), p), Next::Act("purge"));
        assert_eq!(next(&host("purging", &[]), r), Next::Done);
        for waiting in ["deactivating", "removing", "purging"] {
            assert_eq!(next(&host(waiting, &[]), p), Next::Wait, "{waiting}");
        }
        assert_eq!(next(&host("purged", &[]), p), Next::Done);
        // v2-beta shows a disconnected agent in place of active; deactivate is still offered.
        assert_eq!(
            next(&host("disconnected", &["deactivate"]), d),
            Next::Act("deactivate")
        );
        // Without an actions map, the table of the reference decides.
        assert_eq!(next(&host("active", &[]), d), Next::Act("deactivate"));
        assert_eq!(next(&host("error", &[]), r), Next::Act("remove"));
        assert_eq!(
            next(&host("activating", &["deactivate"]), d),
            Next::Act("deactivate")
        );
    }
}
