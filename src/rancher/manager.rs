//! Rancher 1.x (Cattle) as a [`Cluster`]: hosts found by their instance label,
//! registration tokens (created in a fresh environment), and each take-out step read off the
//! host's own state and the actions the server offers, so that what is done is skipped.
//! Evacuation (v2-beta) is Rancher's `host.evacuate` event, created by drover and watched
//! until it is `created` or no non-system container is left on the host: the step ends
//! only once the containers are gone (see `Rancher1::evacuate`).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::time::Instant;

use super::client::{
    hosts_of_instance, Host, HostEvent, Instance, RancherClient, RancherError, RegistrationToken,
    ResolvedApi,
};
use crate::cluster::{
    runs_a_drover, AgentRegistration, Cluster, ClusterError, ClusterHost, EnvHost, Happened, Step,
    StepDone, StepEvent, StepFailed, GONE,
};
use crate::retry::{self, poll_until, Check, Pace, RetryError};

/// Polls of a host's transition start short and grow to a few seconds; the look right after
/// an action comes at once (see [`Rancher1::take_step`]).
const HOST_POLL: Pace = Pace::new(Duration::from_millis(50), Duration::from_secs(3));
/// A registration token being created is active within a second or two.
const TOKEN_POLL: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(2));
/// Polls of an evacuation: each container takes seconds to stop and go.
const EVACUATION_POLL: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(3));
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
    /// The connected labelled hosts of the last full listing, whichever call (or clone) made
    /// it.
    connected_labelled_last_listed: std::sync::Arc<Mutex<Option<usize>>>,
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
        Rancher1 {
            client,
            connected_labelled_last_listed: std::sync::Arc::new(Mutex::new(None)),
        }
    }

    /// Every host of the environment, counting the connected labelled ones on the way.
    async fn list_hosts(&self, deadline: Instant) -> Result<Vec<Host>, ClusterError> {
        let hosts = retry::until(
            "listing hosts",
            deadline,
            Duration::from_secs(5),
            RancherError::is_transient,
            || self.client.hosts(),
        )
        .await?;
        let api = self.client.api();
        let connected_labelled = hosts
            .iter()
            .filter(|h| runs_a_drover(h.instance_id(), h.agent_contact(api)))
            .count();
        *self
            .connected_labelled_last_listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connected_labelled);
        Ok(hosts)
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

    /// Lists the non-system containers still on host `host_id`, by name; `None` when the
    /// server no longer knows the host.
    async fn containers_left(
        &self,
        host_id: &str,
        deadline: Instant,
    ) -> Result<Option<Vec<String>>, RetryError<RancherError>> {
        let instances = retry::until(
            "listing the host's containers",
            deadline,
            RETRY_MAX,
            RancherError::is_transient,
            || self.client.host_instances(host_id),
        )
        .await?;
        Ok(instances.map(|list| {
            list.iter()
                .filter(|i| i.is_left())
                .map(Instance::label)
                .collect()
        }))
    }

    /// Evacuates the host and waits until that is done: its `host.evacuate` event
    /// `created`, or no non-system container left on it, before `deadline` (the take-out's).
    ///
    /// Rancher's `?action=evacuate` only records such an event and answers with the host
    /// unchanged, and the event's process deactivates the host before its containers are
    /// gone; so drover creates the event itself and watches it. An evacuation under way (a
    /// take-out resumed after a restart) is followed, not started again; an inactive host
    /// with nothing left on it needs none. A host that cannot be evacuated is taken out
    /// without: on `/v1` (no evacuation there), or when Rancher does not offer it for the
    /// host's state; a host out already or gone needs nothing. See [`evacuation`].
    async fn evacuate(&self, host_id: &str, deadline: Instant) -> Result<StepDone, StepFailed> {
        let log = Mutex::new(StepLog {
            state: "unknown".into(),
            events: Vec::new(),
        });
        let with_log = |f: &dyn Fn(&mut StepLog)| {
            if let Ok(mut l) = log.lock() {
                f(&mut l)
            }
        };
        let ended = |result: Result<String, String>| {
            let log = log.lock().map(|mut l| StepLog {
                state: l.state.clone(),
                events: std::mem::take(&mut l.events),
            });
            let log = log.unwrap_or_else(|_| StepLog {
                state: "unknown".into(),
                events: Vec::new(),
            });
            match result {
                Ok(state) => Ok(StepDone {
                    state,
                    events: log.events,
                }),
                Err(error) => Err(StepFailed {
                    state: log.state,
                    error,
                    events: log.events,
                }),
            }
        };
        let gone = || {
            with_log(&|l| l.note(Happened::Gone));
            ended(Ok(GONE.to_string()))
        };
        let skipped = |why: &str| {
            tracing::warn!("host {host_id} not evacuated: {why}");
            with_log(&|l| l.note(Happened::Noted(format!("not evacuated: {why}"))));
            let state = log.lock().map(|l| l.state.clone()).unwrap_or_default();
            ended(Ok(state))
        };
        if self.client.api() == ResolvedApi::V1 {
            return skipped(
                "Rancher's /v1 API has no evacuation (lifecycle.evacuate needs /v2-beta)",
            );
        }

        // A host settling (deactivating, activating) is waited for: what comes next depends
        // on where it lands.
        let settled = poll_until("the host to settle", deadline, HOST_POLL, || async {
            let host = self.read_host(host_id, deadline).await?;
            if let Some(h) = &host {
                with_log(&|l| l.seen(&h.state));
                if evacuation(h) == Evacuation::Wait {
                    return Ok(Check::NotYet(h.state.clone()));
                }
            }
            Ok(Check::Done(host))
        })
        .await;
        let host = match settled {
            Ok(Some(host)) => host,
            Ok(None) => return gone(),
            Err(e) => return ended(Err(poll_error(e, "the host was still settling"))),
        };
        match evacuation(&host) {
            Evacuation::Go => {}
            Evacuation::Moot | Evacuation::Wait => return ended(Ok(host.state)),
            Evacuation::Skip(why) => return skipped(&why),
        }

        let found = retry::until(
            "listing the host's evacuation events",
            deadline,
            RETRY_MAX,
            RancherError::is_transient,
            || self.client.evacuations_of(host_id),
        )
        .await;
        let under_way = match found {
            Ok(events) => events.into_iter().rev().find(HostEvent::is_under_way),
            Err(e) => return ended(Err(e.to_string())),
        };
        let event = match under_way {
            Some(event) => {
                with_log(&|l| {
                    l.note(Happened::Noted(format!(
                        "evacuation event {} already {}",
                        event.id, event.state
                    )))
                });
                event
            }
            None => {
                // Nothing is scheduled onto an inactive host: with nothing left on it, there
                // is nothing to evacuate. An active one is evacuated whatever it runs now, so
                // that Rancher deactivates it before anything new lands there.
                if host.state != "active" {
                    match self.containers_left(host_id, deadline).await {
                        Ok(None) => return gone(),
                        Ok(Some(left)) if left.is_empty() => {
                            with_log(&|l| {
                                l.note(Happened::Noted("no container left on the host".into()))
                            });
                            return ended(Ok(host.state));
                        }
                        Ok(Some(_)) => {}
                        Err(e) => return ended(Err(e.to_string())),
                    }
                }
                with_log(&|l| {
                    l.note(Happened::Sent {
                        action: "evacuate".into(),
                        from: host.state.clone(),
                    })
                });
                let created = retry::until(
                    "creating the evacuation event",
                    deadline,
                    RETRY_MAX,
                    RancherError::is_transient,
                    || self.client.create_evacuation(host_id),
                )
                .await;
                match created {
                    Ok(event) => {
                        with_log(&|l| {
                            l.note(Happened::Noted(format!(
                                "evacuation event {} {}",
                                event.id, event.state
                            )))
                        });
                        event
                    }
                    Err(e) => return ended(Err(e.to_string())),
                }
            }
        };

        // What the watch saw last, for its events and for the error should time run out.
        let watch = Mutex::new(Watch {
            event_state: event.state.clone(),
            left: None,
        });
        let watching = |f: &dyn Fn(&mut Watch, &mut StepLog)| {
            if let (Ok(mut w), Ok(mut l)) = (watch.lock(), log.lock()) {
                f(&mut w, &mut l)
            }
        };
        let polled: Result<Option<String>, RetryError<RetryError<RancherError>>> =
            poll_until("the evacuation", deadline, EVACUATION_POLL, || async {
                let now = retry::until(
                    "reading the evacuation event",
                    deadline,
                    RETRY_MAX,
                    RancherError::is_transient,
                    || self.client.host_event(&event.id),
                )
                .await?;
                let state = now.map_or_else(|| "no longer known".to_string(), |e| e.state);
                watching(&|w, l| {
                    if w.event_state != state {
                        l.note(Happened::Noted(format!(
                            "evacuation event {} {state}",
                            event.id
                        )));
                        w.event_state.clone_from(&state);
                    }
                });
                let Some(host) = self.read_host(host_id, deadline).await? else {
                    return Ok(Check::Done(None));
                };
                with_log(&|l| l.seen(&host.state));
                if state == "created" {
                    return Ok(Check::Done(Some(host.state)));
                }
                // An event that ended otherwise (or went) leaves the containers as the proof.
                let Some(left) = self.containers_left(host_id, deadline).await? else {
                    return Ok(Check::Done(None));
                };
                let n = left.len();
                watching(&|w, l| {
                    if w.left.as_ref().map(Vec::len) != Some(n) {
                        l.note(Happened::Noted(containers_on_host(&left)));
                        w.left = Some(left.clone());
                    }
                });
                if n == 0 {
                    return Ok(Check::Done(Some(host.state)));
                }
                Ok(Check::NotYet(format!(
                    "event {state}, {n} non-system containers left"
                )))
            })
            .await;
        match polled {
            Ok(Some(state)) => {
                with_log(&|l| l.note(Happened::Noted("evacuation finished".into())));
                ended(Ok(state))
            }
            Ok(None) => gone(),
            // Out of time between looks, or in the middle of one (a request cut short at
            // the deadline): the same unfinished evacuation.
            Err(
                RetryError::OutOfTime { .. } | RetryError::Failed(RetryError::OutOfTime { .. }),
            ) => {
                let (event_state, left) = watch
                    .lock()
                    .map(|w| (w.event_state.clone(), w.left.clone()))
                    .unwrap_or_default();
                let error = RancherError::EvacuationUnfinished {
                    host_id: host_id.to_string(),
                    event: format!("evacuation event {} still {event_state}", event.id),
                    left,
                };
                ended(Err(error.to_string()))
            }
            Err(RetryError::Failed(e)) => ended(Err(e.to_string())),
        }
    }
}

/// What an evacuation's watch saw last.
struct Watch {
    event_state: String,
    /// The non-system containers on the host at the last look; `None` before the first.
    left: Option<Vec<String>>,
}

/// The containers still on a host, as a timeline line.
fn containers_on_host(left: &[String]) -> String {
    match left {
        [] => "no container left on the host".to_string(),
        [one] => format!("1 non-system container on the host: {one}"),
        many => format!(
            "{} non-system containers on the host: {}",
            many.len(),
            many.join(", ")
        ),
    }
}

/// A failed or timed-out wait on the host, as a step's error.
fn poll_error(e: RetryError<RetryError<RancherError>>, what: &str) -> String {
    match e {
        RetryError::Failed(e) => e.to_string(),
        RetryError::OutOfTime { last, .. } => {
            format!("lifecycle.drain_timeout ran out while {what} (host {last})")
        }
    }
}

/// What evacuating a host calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Evacuation {
    /// Out of the environment already, or on its way out: nothing to evacuate.
    Moot,
    /// Settling (`deactivating`, `activating`): look again.
    Wait,
    /// Evacuate, or follow the evacuation under way.
    Go,
    /// Not evacuated, and why: the take-out goes on without.
    Skip(String),
}

/// What evacuating `host` calls for, from its state and the actions the server offers.
/// Rancher offers evacuation only for a host `active` or `inactive`; drover does not try it
/// for a host whose agent is not connected (`reconnecting`, `disconnected`): nobody would
/// stop its containers, and the wait would only spend the whole budget and leave a ghost.
fn evacuation(host: &Host) -> Evacuation {
    let state = host.effective_state();
    match state {
        "removing" | "removed" | "purging" | "purged" => Evacuation::Moot,
        "deactivating" | "activating" => Evacuation::Wait,
        "reconnecting" | "disconnected" => Evacuation::Skip(format!(
            "its agent is {state}, so nothing would stop its containers"
        )),
        "registering" => {
            Evacuation::Skip("it is still registering, so nothing runs on it yet".into())
        }
        _ if host.offers("evacuate") => Evacuation::Go,
        // A server that sends no actions map: the table of reference.md.
        "active" | "inactive" if host.actions.is_empty() => Evacuation::Go,
        _ => Evacuation::Skip(format!(
            "Rancher does not offer evacuation for a host {state}"
        )),
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
        let hosts = hosts_of_instance(self.list_hosts(deadline).await?, instance_id);
        Ok(hosts.into_iter().map(to_cluster_host).collect())
    }

    async fn hosts(&self, deadline: Instant) -> Result<Vec<EnvHost>, ClusterError> {
        let hosts = self.list_hosts(deadline).await?;
        let api = self.client.api();
        Ok(hosts
            .into_iter()
            .map(|h| EnvHost {
                agent: h.agent_contact(api),
                state: h.effective_state().to_string(),
                instance_id: h.instance_id().map(str::to_string),
                group: h.group().map(str::to_string),
                region: h.region().map(str::to_string),
                id: h.id,
                hostname: h.hostname,
            })
            .collect())
    }

    fn connected_labelled_last_listed(&self) -> Option<usize> {
        *self
            .connected_labelled_last_listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// A stand-in whose evacuations take a moment, with one active host running two
    /// containers of its own and one of Rancher's.
    async fn server_with_containers(
        container_delay: Duration,
        v2beta: bool,
    ) -> (testbed::rancher::RancherServer, String) {
        let server = testbed::rancher::RancherServer::start(testbed::rancher::RancherOptions {
            transition_delay: Duration::from_millis(20),
            container_delay,
            v2beta,
            ..Default::default()
        })
        .await;
        let id = active_host(&server);
        for (name, system) in [("web-1", false), ("network-agent", true), ("web-2", false)] {
            server.add_container(
                &id,
                testbed::rancher::ContainerSpec {
                    name: name.into(),
                    system,
                },
            );
        }
        (server, id)
    }

    /// The non-system containers of `host` that are not removed.
    fn still_there(server: &testbed::rancher::RancherServer, host: &str) -> Vec<String> {
        server
            .containers(host)
            .into_iter()
            .filter(|c| !c.system && c.state != "removed")
            .map(|c| c.name)
            .collect()
    }

    #[tokio::test]
    async fn an_evacuation_ends_once_its_event_is_created_and_is_not_done_twice() {
        let (server, id) = server_with_containers(Duration::from_millis(50), true).await;
        let rancher = rancher(&server).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let done = rancher
            .take_step(&id, Step::Evacuate, deadline)
            .await
            .expect("evacuated");
        assert!(still_there(&server, &id).is_empty());
        let system = server.containers(&id);
        assert!(
            system.iter().any(|c| c.system && c.state == "running"),
            "{system:?}"
        );
        assert_eq!(
            done.state, "inactive",
            "Rancher deactivates an evacuated host"
        );
        let said = said(&done.events);
        assert_eq!(
            &said[..2],
            ["evacuate (host active)", "evacuation event 1ee1 creating"],
            "{said:?}"
        );
        assert_eq!(said.last().map(String::as_str), Some("evacuation finished"));
        assert!(
            said.iter().any(|s| s == "evacuation event 1ee1 created"),
            "{said:?}"
        );
        let events = server.host_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(!events[0].by_action, "drover creates the event itself");
        assert_eq!(events[0].host_id, id);

        // Done is done: an inactive host with nothing left on it needs no second event.
        let again = rancher
            .take_step(&id, Step::Evacuate, deadline)
            .await
            .expect("nothing to do");
        assert_eq!(said_of(&again), ["no container left on the host"]);
        assert_eq!(server.host_events().len(), 1);
        rancher
            .take_step(&id, Step::Remove, deadline)
            .await
            .expect("removed");
        assert!(server.removed_with_containers().is_empty());
    }

    fn said_of(done: &StepDone) -> Vec<String> {
        said(&done.events)
    }

    #[tokio::test]
    async fn a_resumed_evacuation_follows_the_event_under_way() {
        let (server, id) = server_with_containers(Duration::from_millis(50), true).await;
        let rancher = rancher(&server).await;
        // A take-out that created its event, then stopped (a restart).
        let first = rancher.client.create_evacuation(&id).await.expect("event");
        let done = rancher
            .take_step(
                &id,
                Step::Evacuate,
                Instant::now() + Duration::from_secs(20),
            )
            .await
            .expect("evacuated");
        let said = said_of(&done);
        let following = format!("evacuation event {} already creating", first.id);
        assert!(said.contains(&following), "{said:?}");
        assert!(
            !said.iter().any(|s| s.starts_with("evacuate (")),
            "{said:?}"
        );
        assert_eq!(server.host_events().len(), 1, "no second event");
        assert!(still_there(&server, &id).is_empty());
    }

    #[tokio::test]
    async fn an_evacuation_out_of_time_fails_the_step_and_says_what_is_left() {
        let (server, id) = server_with_containers(Duration::from_secs(30), true).await;
        let failed = rancher(&server)
            .await
            .take_step(&id, Step::Evacuate, Instant::now() + Duration::from_secs(1))
            .await
            .expect_err("the containers take longer than the budget");
        let error = &failed.error;
        assert!(
            error.contains("drain_timeout")
                && error.contains(&format!("evacuating host {id}"))
                && error.contains("evacuation event 1ee1 still creating")
                && error.contains("2 non-system containers still on it (web-1, web-2)"),
            "{error}"
        );
        assert_eq!(still_there(&server, &id), ["web-1", "web-2"]);
        assert!(server.removed_with_containers().is_empty());
    }

    #[tokio::test]
    async fn v1_has_no_evacuation_and_the_host_is_left_as_it_is() {
        let (server, id) = server_with_containers(Duration::from_millis(50), false).await;
        let done = rancher(&server)
            .await
            .take_step(&id, Step::Evacuate, Instant::now() + Duration::from_secs(5))
            .await
            .expect("skipped, not failed");
        assert_eq!(
            said_of(&done),
            ["not evacuated: Rancher's /v1 API has no evacuation (lifecycle.evacuate needs /v2-beta)"]
        );
        assert_eq!(server.host(&id).expect("host").history, ["active"]);
        assert_eq!(still_there(&server, &id), ["web-1", "web-2"]);
        assert!(server.requests().iter().all(|r| r.method == "GET"));
    }

    #[tokio::test]
    async fn a_host_whose_agent_is_gone_is_not_evacuated() {
        let (server, id) = server_with_containers(Duration::from_millis(50), true).await;
        server.set_host_state(&id, "active", Some("disconnected"));
        let done = rancher(&server)
            .await
            .take_step(&id, Step::Evacuate, Instant::now() + Duration::from_secs(5))
            .await
            .expect("skipped");
        assert_eq!(
            said_of(&done),
            ["not evacuated: its agent is disconnected, so nothing would stop its containers"]
        );
        assert!(server.host_events().is_empty());
    }

    #[test]
    fn what_an_evacuation_calls_for_follows_the_state() {
        assert_eq!(
            evacuation(&host("active", &["deactivate", "evacuate"])),
            Evacuation::Go
        );
        assert_eq!(
            evacuation(&host("inactive", &["activate", "evacuate", "remove"])),
            Evacuation::Go
        );
        assert_eq!(evacuation(&host("active", &[])), Evacuation::Go);
        for settling in ["deactivating", "activating"] {
            assert_eq!(
                evacuation(&host(settling, &[])),
                Evacuation::Wait,
                "{settling}"
            );
        }
        for out in ["removing", "removed", "purging", "purged"] {
            assert_eq!(
                evacuation(&host(out, &["purge"])),
                Evacuation::Moot,
                "{out}"
            );
        }
        for skipped in ["registering", "disconnected", "reconnecting", "error"] {
            assert!(
                matches!(
                    evacuation(&host(skipped, &["deactivate", "remove"])),
                    Evacuation::Skip(_)
                ),
                "{skipped}"
            );
        }
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
